"""Stage ``export``: VR and web assets (3DGS PLY, .splat, SPZ, KHR_gaussian_splatting GLB, mesh GLB, camera path)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class ExportConfig:
    """Which assets are exported."""

    formats: list[str] = field(default_factory=lambda: ["ply", "splat", "spz", "glb", "mesh"])
    """Formats to write: ``ply``, ``splat``, ``spz``, ``glb`` (KHR_gaussian_splatting), ``mesh`` (mesh GLB)."""
    max_splats: int | None = None
    """Splat budget (e.g. 400000 for Quest-class headsets); the least-contributing splats are pruned first."""
