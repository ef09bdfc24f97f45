"""Stage ``register``: COLMAP registration of all frames (pycolmap), sparse points and pose errors vs the plan.

Writes ``register/sparse/`` (COLMAP model, world frame, metres), ``register/transforms.json`` (registered frames
only), ``register/sparse_pc.ply`` and ``register/report.json``. A registration that fails is a ``failed`` stage
whose message says which videos and why (later stages refuse to run with that message). Import-light: numpy and
pycolmap are imported inside :func:`run_register`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)


def validate(config, size) -> None:
    """Before any stage runs: a plan ``size`` (:class:`cvd_scene.preflight.PlanSize`) registration can work on."""
    if size.frames < 2 and (size.source == "plan" or size.videos < 2):
        key = "plan.num_frames" if size.source == "plan" else size.source
        raise ValueError(
            f"{key}: {size.videos} video(s) x {size.frames} frame: every video of a planned pattern starts at one "
            "common camera, so one frame per video gives no baseline to triangulate from; registration needs "
            "plan.num_frames >= 2"
        )


@dataclass(kw_only=True)
class RegisterConfig:
    """How frames are registered."""

    mode: Literal["known-poses", "free", "planned"] = "known-poses"
    """``known-poses``: triangulate with the planned cameras then bundle-adjust; ``free``: incremental mapping then a
    similarity alignment to the plan; ``planned``: trust the plan's cameras (the ones the generator was conditioned
    on) for every frame, seeding points from the matches that verify and from random points inside the views."""
    fallback: Literal["none", "planned"] = "none"
    """What to do when ``known-poses`` or ``free`` registration fails: ``none`` (the stage fails: later stages refuse,
    so a failed registration of generated videos is seen), or ``planned`` (continue on the planned cameras as in
    ``mode: planned``; the report says so prominently)."""
    planned_seed_points: int = 5000
    """``planned`` (and the fallback): top the triangulated points up to this many with random points inside the
    planned views, coloured by the frames (0: triangulated points only)."""
    max_num_features: int = 4096
    """SIFT features per image."""
    covisibility_min: float = 0.2
    """Also match frame pairs whose planned co-visibility is at least this."""
    pairing: Literal["structured", "exhaustive"] = "structured"
    """``structured``: pairs from the plan's structure (neighbours within a video, the same frame index across
    videos, co-visible pairs); ``exhaustive``: every pair (slow; the baseline)."""
    sequential_overlap: int = 3
    """Match every frame with the next this many frames of its video."""
    loop_gaps: bool = True
    """Also match frames 4, 8, 16, ... apart within a video."""
    cross_neighbours: int = 1
    """Across co-visible videos, also match frame k with frames k +- 1 .. this many of the other video."""
    overlap_top_k: int = 4
    """Also match every frame with this many frames of other videos whose planned views overlap it most (at least
    ``covisibility_min``), whatever their index: videos that pass the same place at different times."""
    min_num_inliers: int = 15
    """Verified matches a frame pair needs (geometric verification)."""
    min_observations: int = 15
    """Triangulated keypoints a frame needs to count as registered."""
    min_features_per_frame: int = 30
    """Below this many SIFT features per frame on average a video is reported as blank or featureless."""
    min_registered_fraction: float = 0.5
    """Below this share of registered frames the stage fails (and later stages refuse to run)."""
    refine_poses: bool = True
    """known-poses: let bundle adjustment move the planned poses (the report says how far they moved)."""
    position_prior_fraction: float = 0.02
    """known-poses: standard deviation of the Gaussian prior keeping each camera centre near its planned place during
    bundle adjustment, as a fraction of the plan's extent (0: no prior; a similarity alignment follows anyway)."""
    free_mapper: Literal["auto", "incremental", "global"] = "auto"
    """free: ``incremental`` (COLMAP's incremental mapper), ``global`` (GLOMAP-style global mapper) or ``auto``:
    incremental, then global when frames are left out, keeping the model that registers more frames (ties: the
    incremental one). Rotation-dominant plans (look-around) leave little parallax, where global mapping copes better."""
    init_min_num_inliers: int = 100
    """free: inliers the mapper's initial pair needs (COLMAP relaxes it when no pair qualifies)."""
    init_min_tri_angle_deg: float = 16.0
    """free: triangulation angle the mapper's initial pair needs, degrees (relaxed likewise)."""
    min_tri_angle_deg: float = 1.0
    """Smallest triangulation angle of a 3D point, degrees (known-poses triangulation and the incremental mapper;
    COLMAP's default 1.5 drops the far points of rotation-dominant plans, leaving their last frames unregistered)."""
    min_baseline_fraction: float = 1e-3
    """Frame pairs whose planned baseline is below this fraction of the plan's extent have no translation direction
    and are left out of the translation-direction error."""
    keep_database: bool = False
    """Keep the COLMAP database (``register/colmap/database.db``, several MB) for inspection."""

    def __post_init__(self) -> None:
        from cvd_scene.config import check_fields

        check_fields(
            self,
            {
                "max_num_features": ">= 1",
                "covisibility_min": "in [0, 1]",
                "sequential_overlap": ">= 0",
                "cross_neighbours": ">= 0",
                "overlap_top_k": ">= 0",
                "min_num_inliers": ">= 1",
                "min_observations": ">= 1",
                "min_features_per_frame": ">= 0",
                "min_registered_fraction": "in [0, 1]",
                "position_prior_fraction": ">= 0",
                "init_min_num_inliers": ">= 1",
                "init_min_tri_angle_deg": "in [0, 180)",
                "min_tri_angle_deg": "in [0, 180)",
                "min_baseline_fraction": ">= 0",
            },
        )
    text_model: bool = False
    """Also write the COLMAP model as text (``register/sparse_text/``)."""


def run_register(config, run_dir: Path, out_dir: Path):
    """Register ``run_dir/generate/frames`` against ``run_dir/plan`` into ``out_dir`` (becomes ``run_dir/register``);
    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`. Returns a ``StageResult``."""
    from cvd_scene.camera_io import read_cameras_json, write_json, write_transforms_json
    from cvd_scene.covisibility import read_covisibility
    from cvd_scene.overlap import frame_overlap, planned_depth
    from cvd_scene.registration import register_frames, write_points_ply
    from cvd_scene.runfolder import RunLayout, StageResult

    run = RunLayout(run_dir)
    files = run.writing("register", out_dir)
    cfg: RegisterConfig = config.register
    plan = read_cameras_json(run.cameras)
    covisibility = read_covisibility(run.covisibility, plan)
    if covisibility is None:
        log.info("register: no usable %s; matching every same-index pair across videos", run.covisibility)
    overlap = frame_overlap(plan, planned_depth(run_dir, plan)) if cfg.overlap_top_k > 0 else None
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
    write_points_ply(files.sparse_pc, reg.points_xyz, reg.points_rgb)
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
