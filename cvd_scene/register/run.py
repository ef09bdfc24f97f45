"""Stage ``register``: COLMAP registration of all frames (pycolmap), sparse points and pose errors vs the plan.

Writes ``register/sparse/`` (COLMAP model, world frame, metres), ``register/transforms.json`` (registered frames
only), ``register/sparse_pc.ply`` and ``register/report.json``. A registration that fails is a ``failed`` stage
whose message says which videos and why (later stages refuse to run with that message). Import-light: numpy and
pycolmap are imported inside :func:`run_register`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.register.config import RegisterConfig

__all__ = ["RegisterConfig", "run_register", "validate"]

log = logging.getLogger(__name__)


def validate(config, size) -> None:
    """Before any stage runs: a plan ``size`` (:class:`cvd_scene.stages.PlanSize`) registration can work on."""
    if size.frames < 2 and (size.source == "plan" or size.videos < 2):
        key = "plan.num_frames" if size.source == "plan" else size.source
        raise ValueError(
            f"{key}: {size.videos} video(s) x {size.frames} frame: every video of a planned pattern starts at one "
            "common camera, so one frame per video gives no baseline to triangulate from; registration needs "
            "plan.num_frames >= 2"
        )


def run_register(config, run_dir: Path, out_dir: Path):
    """Register ``run_dir/generate/frames`` against ``run_dir/plan`` into ``out_dir`` (becomes ``run_dir/register``);
    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`. Returns a ``StageResult``."""
    from cvd_scene.camera_io import read_cameras_json, write_json, write_transforms_json
    from cvd_scene.plan.covisibility import read_covisibility
    from cvd_scene.plan.overlap import frame_overlap, planned_depth
    from cvd_scene.pointcloud import write_points_ply
    from cvd_scene.register.registration import register_frames
    from cvd_scene.runfolder import RunLayout, StageRefused, StageResult

    run = RunLayout(run_dir)
    files = run.writing("register", out_dir)
    cfg: RegisterConfig = config.register
    plan = read_cameras_json(run.cameras)
    if not plan.poses_known and cfg.mode != "free":
        raise StageRefused(
            f"register: {run.cameras} has no poses (pictures imported without poses): register.mode={cfg.mode} "
            "needs them; use register.mode=free (cvd-scene register RUN --mode free)"
        )
    if plan.poses_known:
        covisibility = read_covisibility(run.covisibility, plan)
        if covisibility is None:
            log.info("register: no usable %s; matching every same-index pair across videos", run.covisibility)
        overlap = frame_overlap(plan, planned_depth(run_dir, plan)) if cfg.overlap_top_k > 0 else None
    else:
        log.info("register: the pictures' poses are unknown: pairs without a plan, world levelled from the cameras")
        covisibility = overlap = None
    reg = register_frames(
        run.frames,
        plan,
        files.colmap_work,
        cfg,
        covisibility,
        overlap,
        seed=config.seed,
    )
    if reg.model is not None:
        reg.model.write(files.sparse)
        if cfg.text_model:
            reg.model.write(files.sparse_text, text=True)
    points_xyz, points_rgb = reg.points_xyz, reg.points_rgb
    if "import" in plan.extras and reg.registered.any():  # a capture's own points seed the fit too
        import numpy as np

        from cvd_scene.generate.sources import SourceFormatError, capture_points

        try:
            xyz, rgb = capture_points(plan.extras["import"])
        except SourceFormatError as e:
            log.warning("register: the capture's points are left out: %s", e)
        else:
            points_xyz, points_rgb = np.concatenate([points_xyz, xyz]), np.concatenate([points_rgb, rgb])
            reg.report["capture_points"] = len(xyz)
    write_points_ply(files.sparse_pc, points_xyz, points_rgb)
    if reg.registered.any():
        write_transforms_json(
            reg.cameras,
            files.register_transforms,
            run.relative(run.frames, run.register_transforms.parent),
            extra={"ply_file_path": run.relative(run.sparse_pc, run.register_transforms.parent)},
            mask=reg.registered,
        )
    write_json(files.register_report, reg.report)
    rep = reg.report
    summary = {
        "mode": rep["mode"],
        "registered": rep["registered"],
        "total": rep["total"],
        "points": rep["num_points"],
        "rotation_error_deg_median": rep["rotation_error_deg_median"],
        "position_error_m_median": rep["position_error_m_median"],
        "translation_direction_error_deg_median": rep["translation_direction_error_deg_median"],
        "reprojection_error_px": rep["reprojection_error_px"],
    }
    return StageResult(status=reg.status, summary=summary, message=reg.message)
