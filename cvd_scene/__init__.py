"""cvd-scene: a text prompt to a 3D scene people can walk through in VR.

Stages (plan, generate, register, fit, export, evaluate) connected by a run folder; see docs/architecture.md.
Importing this package is cheap: heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
