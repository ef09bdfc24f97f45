"""The export stage's config, :class:`ExportConfig` (``export:`` in a run config), and the export format names.

The library functions of the export package take this config; every check of its values is in
:meth:`ExportConfig.__post_init__`, so a bad value is refused when the config is loaded. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPLAT_FORMATS = ("ply", "splat", "spz", "glb", "sog", "cply", "viewer")
"""Formats that need Gaussians (``sog``, ``cply`` (compressed PLY) and ``viewer`` (viewer.html) through
splat-transform when it is installed)."""
FORMATS = (*SPLAT_FORMATS, "mesh")
"""Every format name ``--formats`` accepts."""
SPZ_VERSIONS = (3, 4)
"""SPZ versions the exporter writes."""


def parse_formats(formats: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Format names from ``"ply,splat"`` or a list; unknown names raise ``ValueError`` naming them."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; formats are {', '.join(FORMATS)}")
    if not items:
        raise ValueError(f"no export format given; formats are {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


@dataclass(kw_only=True)
class ExportConfig:
    """Which assets are exported."""

    formats: list[str] = field(
        default_factory=lambda: ["ply", "splat", "spz", "glb", "sog", "cply", "viewer", "mesh"]
    )
    """Formats to write: ``ply``, ``splat``, ``spz``, ``glb`` (KHR_gaussian_splatting), ``sog``, ``cply`` and
    ``viewer`` (SOG, compressed PLY and viewer.html, through splat-transform; skipped when it is not installed),
    ``mesh`` (mesh GLB and collider GLB)."""
    max_splats: int | None = None
    """Splat budget (e.g. 400000 for Quest-class headsets); the least-contributing splats are pruned first."""
    spz_versions: list[int] = field(default_factory=lambda: [3, 4])
    """SPZ versions written: 3 -> ``scene.spz`` (gzip, read by every SPZ reader), 4 -> ``scene_v4.spz`` (ZSTD,
    written when the zstandard package is installed)."""
    mesh_max_triangles: int = 200_000
    """Triangle budget of ``mesh.glb`` (quadric decimation down to it)."""
    collider_max_triangles: int = 20_000
    """Triangle budget of ``collider.glb`` (the mesh simplified for engine physics; written with the mesh)."""
    mesh_voxel_m: float | None = None
    """TSDF voxel size in metres; None: 1/384 of the scene's largest extent (at least 2 mm)."""
    mesh_min_views: float = 0.5
    """TSDF weight below which surface voxels are left out of the mesh (about: views that saw them); 1.0 drops
    every surface only one view saw (measured: 8 % fewer pixels of the views covered)."""
    mesh_render_size_px: int = 192
    """Size of the depth views rendered from the splats for the mesh when the fit left no views."""
    device: str = "auto"
    """Device that renders those views: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    camera_path_fps: float = 30.0
    """Frame rate of ``camera_path.json``."""
    camera_path_transition_s: float = 1.0
    """Seconds of the eased move between the end of one planned video and the start of the next."""
    point_cloud_max_points: int = 500_000
    """Most points in ``points.ply`` (NeRF fits)."""
    frame: str = "readers"
    """Frame of scene.ply, scene.splat and the SPZ files: ``readers`` (the run's world turned 180 degrees about z,
    what 3DGS viewers assume) or ``run`` (the run's Y-up world as it is). glTF files are always in the run's world."""

    def __post_init__(self) -> None:
        """Every check of the export settings (``ValueError`` names the key); ``formats`` normalised (lower case,
        no repeats)."""
        from cvd.devices import check_device
        from cvd_scene.config import check_fields
        from cvd_scene.export.axes import check_frame

        check_fields(
            self,
            {
                "max_splats": ">= 1 or null",
                "mesh_max_triangles": ">= 1",
                "collider_max_triangles": ">= 1",
                "mesh_voxel_m": "> 0 or null",
                "mesh_min_views": ">= 0",
                "mesh_render_size_px": "in [8, 8192]",
                "camera_path_fps": "> 0",
                "camera_path_transition_s": ">= 0",
                "point_cloud_max_points": ">= 1",
            },
        )
        self.formats = list(parse_formats(self.formats))
        if any(v not in SPZ_VERSIONS for v in self.spz_versions):
            raise ValueError(f"spz_versions may hold 3 and 4, got {list(self.spz_versions)}")
        check_frame(self.frame, "frame")
        check_device(self.device, "device")
