"""Stage ``evaluate``: multi-view consistency of the generated videos (pose, matches, warp).

Import submodules directly; this package imports nothing itself.
"""
