"""Export of a fitted scene for VR and web viewers: one module per format, each converting from the master
:class:`~cvd_scene.gaussians.Gaussians` (the run's Y-up metric world) in exactly one function.

Must not import nerfstudio; torch only inside the functions that render (mesh from splats).
"""

from cvd_scene.export.gltf import GltfFormatError, read_khr_glb, write_khr_glb
from cvd_scene.export.ply import PlyFormatError, read_ply, write_ply
from cvd_scene.export.splat import SplatFormatError, read_splat, write_splat
from cvd_scene.export.spz import SpzFormatError, read_spz, write_spz

__all__ = [
    "GltfFormatError",
    "PlyFormatError",
    "SplatFormatError",
    "SpzFormatError",
    "read_khr_glb",
    "read_ply",
    "read_splat",
    "read_spz",
    "write_khr_glb",
    "write_ply",
    "write_splat",
    "write_spz",
]
