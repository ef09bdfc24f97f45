"""Stage ``plan``: the cameras of every video (``plan/cameras.json``), their co-visibility and a plot.

Import-light: numpy, matplotlib and the planning modules are imported inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.plan.config import PlanConfig

log = logging.getLogger(__name__)


def validate(config, size) -> None:
    """Before any stage runs: the plan's size (``size``, a :class:`cvd_scene.stages.PlanSize`) and the memory
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
        from cvd_scene.plan.planning import scene_kind_from_prompt

    if config.plan.scene is not None:
        return config.plan.scene
    generate_scene = getattr(config.generate, "scene", None)
    if generate_scene:
        return generate_scene
    return scene_kind_from_prompt(config.prompt)


def imported_cameras(config):
    """The cameras of an import without poses (``generate.generator=imported``, no ``plan.cameras_file``): the
    pictures of ``generate.source`` with unknown poses, their field of view from EXIF or ``plan.fov_x_deg``
    (:func:`cvd_scene.generate.imported.unknown_cameras`); None for any other run. ``SourceError`` (a
    ``ValueError``) names the file that does not fit."""
    from cvd_scene.generate.imported import source_videos, unknown_cameras

    plan, gen = config.plan, config.generate
    if gen.generator != "imported" or plan.cameras_file or plan.re10k_files or not gen.source:
        return None
    return unknown_cameras(source_videos(gen.source), plan.fov_x_deg, plan.fps, gen.import_fps)


def build_plan(plan: PlanConfig, kind: str, seed: int = 0):
    """The :class:`cvd_scene.cameras.Cameras` of a plan config in the layout of scene ``kind``: from
    ``cameras_file``, else from ``re10k_files``, else from the pattern."""
    from cvd_scene.generate.sources import read_plan_cameras
    from cvd_scene.plan import planning

    layout = planning.scene_layout(kind)
    if plan.cameras_file:
        cams = read_plan_cameras(plan.cameras_file, plan.cameras_images, plan.cameras_downscale, plan.fps)
        extras = dict(cams.extras)
        extras.update(source=extras.get("import", {}).get("kind", "cameras.json"), file=str(plan.cameras_file),
                      scene=kind)  # fmt: skip
        return type(cams)(
            cams.world_from_cam,
            cams.K,
            cams.width,
            cams.height,
            cams.video_ids,
            cams.time_s,
            cams.fps,
            extras,
            cams.poses_known,
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
        world_from_cam = cams.world_from_cam
        extras = dict(cams.extras)
    else:
        world_from_cam = planning.plan_pattern(pattern, plan.num_videos, plan.num_frames, params)
        extras = {"source": "pattern", "pattern": pattern}
        cams = None
    if plan.perturb_m > 0 or plan.perturb_deg > 0:
        world_from_cam = planning.perturb(world_from_cam, plan.perturb_m, plan.perturb_deg, seed)
        extras.update(perturb_m=plan.perturb_m, perturb_deg=plan.perturb_deg, seed=seed)
    extras.update(scene=kind, start_m=list(params.start_m), look_at_m=list(params.look_at_m))
    if cams is not None:
        return type(cams)(world_from_cam, cams.K, cams.width, cams.height, cams.video_ids, cams.time_s, cams.fps, extras)
    return planning.make_cameras(world_from_cam, plan.width, plan.height, plan.fov_x_deg, plan.fps, extras)


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

    from cvd_scene.camera_io import write_cameras_json, write_json
    from cvd_scene.plan import covisibility as covis
    from cvd_scene.plan import planning, plots
    from cvd_scene.runfolder import RunLayout, StageRefused, StageResult

    files = RunLayout(run_dir).writing("plan", out_dir)
    plan = config.plan
    kind = scene_kind(config)
    layout = planning.scene_layout(kind)
    try:
        cams = imported_cameras(config) or build_plan(plan, kind, config.seed)
    except ValueError as e:  # a malformed pose file or cameras.json, or parameters no pattern can use
        raise StageRefused(f"plan: {e}") from None
    from cvd_scene.stages import PlanSize

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
    if not cams.poses_known:
        log.info(
            "plan: pictures without poses; field of view %.1f deg (%s); no co-visibility or trajectory plot (they "
            "need poses): register --mode free estimates the cameras",
            cams.extras["intrinsics"]["fov_x_deg"],
            cams.extras["intrinsics"]["from"],
        )
        summary = {"videos": cams.num_videos, "frames": cams.num_frames, "size": [cams.width, cams.height],
                   "source": cams.extras.get("source"), "poses": "unknown",
                   "fov_x_deg": cams.extras["intrinsics"]["fov_x_deg"]}  # fmt: skip
        return StageResult(status="finished", summary=summary, message="poses unknown: estimated at register")

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
