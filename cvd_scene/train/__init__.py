"""Training CVD models: RealEstate10K-style pose data and the training command's driver.

Import submodules directly; this package imports nothing itself.
"""
