"""Stage ``generate``: videos along the planned cameras (reference renderer, CVD, or imported frames).

Import submodules directly; this package imports nothing itself.
"""
