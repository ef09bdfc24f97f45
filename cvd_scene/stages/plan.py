"""Stage ``plan``: the cameras of every video (``plan/cameras.json``), their co-visibility and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class PlanConfig:
    """How the cameras of a run are planned."""

    pattern: str = "look-around"
    """Trajectory pattern (see ``cvd_scene.planning.PATTERNS``), ignored with ``cameras_file`` or ``re10k_files``."""
    num_videos: int = 4
    """Number of videos N (>= 1)."""
    num_frames: int = 12
    """Frames per video F (>= 1)."""
    width: int = 192
    """Image width in pixels."""
    height: int = 192
    """Image height in pixels."""
    fov_x_deg: float = 60.0
    """Horizontal field of view of the planned cameras, degrees."""
    fps: float = 8.0
    """Frame rate of the videos."""
    cameras_file: str | None = None
    """Bring your own cameras: a ``cameras.json`` in the schema of docs/architecture.md, used as given."""
    re10k_files: list[str] = field(default_factory=list)
    """RealEstate10K/CameraCtrl pose files, one video each, used as given (relative to their first pose)."""
    re10k_scale_m: float = 1.0
    """Metres per RealEstate10K file unit."""
    re10k_reverse: bool = False
    """Play the RealEstate10K trajectories backwards."""
