"""Export of a fitted scene for VR and web viewers: one module per format, each converting from the master
:class:`~cvd_scene.gaussians.Gaussians` (the run's Y-up metric world) in exactly one function.

Must not import nerfstudio; torch only inside the functions that render (mesh from splats).
"""

from cvd_scene.export.ply import PlyFormatError, read_ply, write_ply

__all__ = ["PlyFormatError", "read_ply", "write_ply"]
