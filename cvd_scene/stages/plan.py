"""Stage ``plan``: the cameras of every video (``plan/cameras.json``), their co-visibility and a plot.

Import-light: numpy, matplotlib and the planning modules are imported inside the functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


MAX_IMAGE_SIDE_PX = 8192
"""Largest image width or height a plan may ask for (as for a cameras file)."""


@dataclass(kw_only=True)
class PlanConfig:
    """How the cameras of a run are planned. World frame: metres, +y up, floor at y = 0
    (docs/architecture.md)."""

    pattern: str = "auto"
    """Trajectory pattern (``cvd_scene.planning.PATTERNS``: look-around, orbit, forward-fan, spiral, circle,
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
    own image size and frame count)."""
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
        from cvd_scene.planning import PATTERNS, SCENE_KINDS

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


def validate(config, size) -> None:
    """Before any stage runs: the plan's size (``size``, a :class:`cvd_scene.preflight.PlanSize`) and the memory
    and time planning it needs; ``ValueError`` names the keys."""
    from cvd_scene.estimates import check_estimate, plan_estimate

    if size.videos < 1 or size.frames < 1:
        raise ValueError(f"the plan has {size.videos} videos x {size.frames} frames ({size.source}); need at least 1 x 1")
    keys = {**size.keys, "plan.covisibility_width_px": config.plan.covisibility_width_px}
    check_estimate(plan_estimate(size.videos, size.frames, size.width, size.height,
                                 config.plan.covisibility_width_px, keys))  # fmt: skip


def scene_kind(config) -> str:
    """The scene kind a run's plan frames: ``plan.scene``, else ``generate.scene``, else the prompt's words.

    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`.
    """
    try:  # the reference renderer's reading of the prompt, so plan and scene agree
        from cvd_scene.reference.scene import scene_kind_from_prompt
    except ImportError:
        from cvd_scene.planning import scene_kind_from_prompt

    if config.plan.scene is not None:
        return config.plan.scene
    generate_scene = getattr(config.generate, "scene", None)
    if generate_scene:
        return generate_scene
    return scene_kind_from_prompt(config.prompt)


def build_plan(plan: PlanConfig, kind: str, seed: int = 0):
    """The :class:`cvd_scene.cameras.Cameras` of a plan config in the layout of scene ``kind``: from
    ``cameras_file``, else from ``re10k_files``, else from the pattern."""
    from cvd_scene import planning
    from cvd_scene.camera_io import read_cameras_json

    layout = planning.scene_layout(kind)
    if plan.cameras_file:
        cams = read_cameras_json(plan.cameras_file)
        extras = dict(cams.extras)
        extras.update(source="cameras.json", file=str(plan.cameras_file), scene=kind)
        return type(cams)(
            cams.world_from_cam,
            cams.K,
            cams.width,
            cams.height,
            cams.video_ids,
            cams.time_s,
            cams.fps,
            extras,
        )
    pattern = planning.DEFAULT_PATTERN[kind] if plan.pattern == "auto" else plan.pattern
    params = planning.trajectory_params(
        layout,
        pattern,
        start_m=plan.start_m,
        look_at_m=plan.look_at_m,
        step_m=plan.step_m,
        spread_deg=plan.spread_deg,
        turn_fraction=plan.turn_fraction,
        spin_deg=plan.spin_deg,
        rise_m=plan.rise_m,
        orbit_radius_m=plan.orbit_radius_m,
        orbit_elevation_deg=plan.orbit_elevation_deg,
        orbit_arc_deg=plan.orbit_arc_deg,
        orbit_swing_deg=plan.orbit_swing_deg,
        released_offset_m=plan.released_offset_m,
    )
    if plan.re10k_files:
        cams = planning.cameras_from_re10k(
            plan.re10k_files,
            plan.width,
            plan.height,
            metres_per_unit=plan.re10k_scale_m,
            reverse=plan.re10k_reverse,
            max_frames=plan.re10k_max_frames,
            blend_videos=plan.re10k_blend_videos,
            world_from_start=planning.start_pose(params),
            fps=plan.fps,
        )
        c2w = cams.world_from_cam
        extras = dict(cams.extras)
    else:
        c2w = planning.plan_pattern(pattern, plan.num_videos, plan.num_frames, params)
        extras = {"source": "pattern", "pattern": pattern}
        cams = None
    if plan.perturb_m > 0 or plan.perturb_deg > 0:
        c2w = planning.perturb(c2w, plan.perturb_m, plan.perturb_deg, seed)
        extras.update(perturb_m=plan.perturb_m, perturb_deg=plan.perturb_deg, seed=seed)
    extras.update(scene=kind, start_m=list(params.start_m), look_at_m=list(params.look_at_m))
    if cams is not None:
        return type(cams)(c2w, cams.K, cams.width, cams.height, cams.video_ids, cams.time_s, cams.fps, extras)
    return planning.make_cameras(c2w, plan.width, plan.height, plan.fov_x_deg, plan.fps, extras)


def _reference_depth_fn(config, kind: str):
    """A ``depth_fn`` rendering the reference generator's scene of this run (its z-depth at pixel centres), or
    None when the reference renderer is not available (co-visibility then uses the proxy scene)."""
    if config.generate.generator != "reference" or not config.plan.reference_depth:
        return None
    try:
        from cvd_scene.reference import build_scene, render
    except ImportError as e:
        log.info("reference renderer not available (%s): co-visibility on the %s proxy scene", e, kind)
        return None
    scene = build_scene(config.prompt, config.seed, kind=kind)

    def depth_fn(cameras):
        return render(scene, cameras, samples_per_pixel=1, progress=False).depth  # [V, F, H, W] z-depth

    return depth_fn


def run_plan(config, run_dir: Path, out_dir: Path):
    """Stage ``plan``: write ``plan/cameras.json``, ``plan/covisibility.json``, ``plan/trajectories.png`` and
    ``plan/covisibility.png`` into ``out_dir``. ``config`` is the whole
    :class:`cvd_scene.runconfig.RunConfig`."""
    import numpy as np

    from cvd_scene import covisibility as covis
    from cvd_scene import planning, plots
    from cvd_scene.camera_io import write_cameras_json, write_json
    from cvd_scene.runfolder import RunLayout, StageRefused, StageResult

    files = RunLayout(run_dir).writing("plan", out_dir)
    plan = config.plan
    kind = scene_kind(config)
    layout = planning.scene_layout(kind)
    try:
        cams = build_plan(plan, kind, config.seed)
    except ValueError as e:  # a malformed pose file or cameras.json, or parameters no pattern can use
        raise StageRefused(f"plan: {e}") from None
    from cvd_scene.preflight import PlanSize

    validate(config, PlanSize(cams.num_videos, cams.num_frames, cams.width, cams.height, "plan",
                              {"plan.num_videos": cams.num_videos, "plan.num_frames": cams.num_frames,
                               "plan.width": cams.width, "plan.height": cams.height}))  # fmt: skip
    log.info(
        "plan: %d videos x %d frames at %dx%d (%s, scene %s)",
        cams.num_videos,
        cams.num_frames,
        cams.width,
        cams.height,
        cams.extras.get("pattern", cams.extras.get("source")),
        kind,
    )
    write_cameras_json(cams, files.cameras)

    problems = []
    start_err = planning.common_start_error(cams)
    if start_err > 1e-6:
        problems.append(
            f"videos do not share one first camera (differ by up to {start_err:.3g}); the CVD model was "
            "trained with a common first camera"
        )
    baseline = planning.min_baseline_m(cams)  # [F]
    zero = np.flatnonzero(baseline[1:] < 1e-4) + 1
    if zero.size:
        problems.append(f"two videos share a camera centre (zero baseline) at frame(s) {zero.tolist()[:8]}")
    for p in problems:
        log.warning("plan: %s", p)

    depth_fn = _reference_depth_fn(config, kind)
    try:
        result = covis.covisibility(
            cams,
            layout,
            depth_fn=depth_fn,
            sample_width_px=plan.covisibility_width_px,
            coverage_points=plan.coverage_points,
        )
    except (ImportError, OSError) as e:  # the renderer's ray caster (open3d) cannot load here
        if depth_fn is None:
            raise
        log.warning("reference depth unavailable (%s): co-visibility on the %s proxy scene", e, kind)
        result = covis.covisibility(
            cams, layout, sample_width_px=plan.covisibility_width_px, coverage_points=plan.coverage_points
        )
    write_json(files.covisibility, covis.covisibility_to_dict(result, cams.video_ids))
    plots.plot_trajectories(
        cams,
        files.trajectories_png,
        layout=layout,
        look_at_m=cams.extras.get("look_at_m"),
        title=_title(cams, kind),
    )
    plots.plot_covisibility(
        result.mean_over_frames(),
        cams.video_ids,
        files.covisibility_png,
        title=_matrix_title(cams, kind, result.depth_source),
    )
    mean = result.mean_over_frames()
    off = mean[~np.eye(len(mean), dtype=bool)]
    summary = {
        "videos": cams.num_videos,
        "frames": cams.num_frames,
        "size": [cams.width, cams.height],
        "scene": kind,
        "source": cams.extras.get("source"),
        "pattern": cams.extras.get("pattern"),
        "coverage": round(result.coverage, 4),
        "direction_coverage": round(result.direction_coverage, 4),
        "mean_covisibility": round(float(off.mean()), 4) if off.size else 1.0,
        "min_baseline_m": round(float(baseline[1:].min()), 4)
        if cams.num_frames > 1 and cams.num_videos > 1
        else None,
        "depth_source": result.depth_source,
    }
    return StageResult(status="finished", summary=summary, message="; ".join(problems))


def _title(cams, kind: str) -> str:
    what = cams.extras.get("pattern") or cams.extras.get("source", "plan")
    return f"{what} ({kind}): {cams.num_videos} videos x {cams.num_frames} frames"


def _matrix_title(cams, kind: str, depth_source: str) -> str:
    what = cams.extras.get("pattern") or cams.extras.get("source", "plan")
    frames = f"mean over frames 1-{cams.num_frames - 1}" if cams.num_frames > 1 else "frame 0"
    surface = "exact scene depth" if depth_source == "depth_fn" else f"{kind} proxy scene"
    return f"{what}, {cams.num_videos} videos: co-visibility\n({frames}, {surface})"
