"""The plan stage's config, :class:`PlanConfig` (``plan:`` in a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_IMAGE_SIDE_PX = 8192
"""Largest image width or height a plan may ask for (as for a cameras file)."""


@dataclass(kw_only=True)
class PlanConfig:
    """How the cameras of a run are planned. World frame: metres, +y up, floor at y = 0
    (docs/architecture.md)."""

    pattern: str = "auto"
    """Trajectory pattern (``cvd_scene.plan.planning.PATTERNS``: look-around, orbit, forward-fan, spiral, circle,
    hemisphere, interpolate) or ``auto`` (room: look-around, table: orbit, courtyard: forward-fan). Ignored
    with ``cameras_file`` or ``re10k_files``."""
    scene: str | None = None
    """Scene kind the plan frames (``room``, ``table``, ``courtyard``); None: ``generate.scene``, else the
    prompt's words."""
    num_videos: int = 4
    """Number of videos N (>= 1) of a pattern (RealEstate10K files and cameras files bring their own)."""
    num_frames: int = 12
    """Frames per video F (>= 1) of a pattern."""
    width: int = 192
    """Image width in pixels."""
    height: int = 192
    """Image height in pixels."""
    fov_x_deg: float = 60.0
    """Horizontal field of view of the planned cameras, degrees."""
    fps: float = 8.0
    """Frame rate of the videos, frames per second."""
    start_m: tuple[float, float, float] | None = None
    """Position (x, y, z metres) of the common first camera; None: the scene's natural start (room (0, 1.5,
    0), courtyard (0, 1.6, 0), table: on the orbit 1.2 m from the table's centre, 25 deg up)."""
    look_at_m: tuple[float, float, float] | None = None
    """Point (x, y, z metres) the common first camera looks at, and the orbit target; None: the scene's (room
    (0, 1.3, -1.2), table (0, 0.85, 0), courtyard (0, 1.6, -4))."""
    step_m: float | None = None
    """Metres one video moves over its clip (look-around, forward-fan; final radius of a spiral); None: the
    scene's (room 0.6, table 0.3, courtyard 3.0)."""
    spread_deg: float | None = None
    """Degrees spanned by the N video directions (360: evenly all around); None: 90 for forward-fan, else
    360."""
    turn_fraction: float | None = None
    """look-around / forward-fan: part of the clip (0-1] over which a video turns to its direction; None: 1
    for look-around, 0.5 for forward-fan."""
    spin_deg: float = 90.0
    """spiral: extra degrees every video turns over its clip."""
    rise_m: float = 0.2
    """spiral: metres every video rises over its clip."""
    orbit_radius_m: float | None = None
    """orbit: radius around ``look_at_m`` in metres; None: the start's distance (table: 1.2)."""
    orbit_elevation_deg: float | None = None
    """orbit: elevation of the start above the target, degrees; None: the start's (table: 25)."""
    orbit_arc_deg: float = 160.0
    """orbit: degrees of azimuth travelled by a video going sideways (videos spread over azimuth and
    elevation); below 180, or videos going round both ways meet at the far side (zero baseline)."""
    orbit_swing_deg: float = 20.0
    """orbit: degrees of elevation travelled by a video going up or down."""
    released_offset_m: float | None = None
    """circle / hemisphere / interpolate: metres from the start to every video's last camera (the release's
    ``camera_dist``); None: half the distance to ``look_at_m``, at most 0.8 x the start's height."""
    perturb_m: float = 0.0
    """Seeded random drift of every trajectory (standard deviation at the last frame, metres; 0 at frame
    0)."""
    perturb_deg: float = 0.0
    """Seeded random rotation drift (standard deviation at the last frame, degrees)."""
    cameras_file: str | None = None
    """Bring your own cameras: a ``cameras.json`` in the schema of docs/architecture.md, used as given (its
    own image size and frame count); or a capture's own cameras (``cvd-scene import``): a nerfstudio /
    instant-ngp ``transforms.json`` (or its folder) or a COLMAP model folder, converted into the run's world
    (up the mean of the cameras' up vectors, origin at the first camera, the capture's scale)."""
    cameras_images: str | None = None
    """COLMAP ``cameras_file``: the folder its image names are relative to; None: an ``images/`` folder next to
    the model or above it."""
    cameras_downscale: int = 1
    """Capture ``cameras_file``: read the pictures from the ``images_N/`` copies (N = this), the cameras scaled
    to them."""
    re10k_files: list[str] = field(default_factory=list)
    """RealEstate10K/CameraCtrl pose files, one video each, used as given (relative to their first pose,
    placed at the scene's start camera)."""
    re10k_scale_m: float = 1.0
    """Metres per RealEstate10K file unit."""
    re10k_reverse: bool = False
    """Play the RealEstate10K trajectories backwards (only when asked)."""
    re10k_max_frames: int | None = None
    """Use at most this many frames of every RealEstate10K file; None: all (cut to the shortest file)."""
    re10k_blend_videos: int = 0
    """With exactly two RealEstate10K files: make this many videos interpolated from the first trajectory to
    the second (SLERP rotations, linear positions); 0: one video per file."""
    covisibility_width_px: int = 48
    """Width in pixels of the grid co-visibility is sampled on (the cameras resized, aspect kept)."""
    coverage_points: int = 20000
    """Points sampled on the proxy scene's surface to measure the plan's coverage."""
    reference_depth: bool = True
    """With the reference generator, measure co-visibility on the exact scene (its depth) instead of the
    proxy."""

    def __post_init__(self) -> None:
        from cvd_scene.plan.planning import PATTERNS, SCENE_KINDS

        if self.pattern != "auto" and self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; known patterns: auto, {', '.join(PATTERNS)}")
        if self.scene is not None and self.scene not in SCENE_KINDS:
            raise ValueError(f"unknown scene kind {self.scene!r}; known kinds: {', '.join(SCENE_KINDS)}")
        for name in (
            "num_videos",
            "num_frames",
            "width",
            "height",
            "covisibility_width_px",
            "coverage_points",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("width", "height"):
            if getattr(self, name) > MAX_IMAGE_SIDE_PX:
                raise ValueError(f"{name} must be in [1, {MAX_IMAGE_SIDE_PX}], got {getattr(self, name)}")
        if not 0.0 < self.fov_x_deg < 180.0:
            raise ValueError(f"fov_x_deg must be in (0, 180), got {self.fov_x_deg}")
        if self.cameras_downscale < 1:
            raise ValueError(f"cameras_downscale must be >= 1, got {self.cameras_downscale}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.re10k_scale_m <= 0:
            raise ValueError(f"re10k_scale_m must be > 0, got {self.re10k_scale_m}")
        if self.re10k_max_frames is not None and self.re10k_max_frames < 1:
            raise ValueError(f"re10k_max_frames must be >= 1, got {self.re10k_max_frames}")
        if self.re10k_blend_videos < 0 or (self.re10k_blend_videos and len(self.re10k_files) != 2):
            n, files = self.re10k_blend_videos, len(self.re10k_files)
            raise ValueError(f"re10k_blend_videos={n} needs exactly 2 re10k_files, got {files}")
        if self.cameras_file and self.re10k_files:
            raise ValueError("give either cameras_file or re10k_files, not both")
        if self.perturb_m < 0 or self.perturb_deg < 0:
            raise ValueError(
                f"perturbation must be >= 0, got perturb_m={self.perturb_m} perturb_deg={self.perturb_deg}"
            )
