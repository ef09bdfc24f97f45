"""Stage ``register``: COLMAP registration of the frames and its comparison with the plan.

Import submodules directly; this package imports nothing itself.
"""
