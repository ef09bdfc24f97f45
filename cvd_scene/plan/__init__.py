"""Stage ``plan``: planning the cameras of every video, their co-visibility and overlap, trajectory plots.

Import submodules directly; this package imports nothing itself.
"""
