"""Stage ``evaluate``: the CVD paper's geometric-consistency protocol (SIFT instead of SuperGlue).

Reads ``generate/frames`` and the plan, writes ``evaluate/consistency.json`` (and ``consistency.md``, the table next
to the paper's numbers, which is also logged). Where the generator left ground-truth depth (``generate/gt/depth``)
it also scores the warp measure (:mod:`cvd_scene.warp_consistency`), which works at any sharpness. Import-light: numpy and pycolmap are imported inside
:func:`run_evaluate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvaluateConfig:
    """Settings of the consistency evaluation."""

    epipolar_threshold: float = 5e-4
    """A match is correct when its epipolar error (normalised image coordinates) is below this."""
    max_num_features: int = 4096
    """SIFT features per frame."""
    match_max_ratio: float = 0.8
    """Lowe ratio test of the SIFT matcher (matches are also mutual nearest neighbours)."""
    ransac_max_error_px: float = 1.0
    """RANSAC inlier threshold of the essential matrix, pixels."""
    min_baseline_fraction: float = 1e-3
    """Pairs whose planned baseline is below this fraction of the plan's extent are skipped (no translation)."""
    warp_rel_tol: float = 0.03
    """Warp measure (where ground-truth depth exists): a pixel is kept when its depth projected into the other
    view is within this fraction of the depth there (occlusion test)."""
    covisibility_min: float = 0.2
    """Pairs whose planned co-visibility (either direction) is below this are skipped and counted: an essential
    matrix from the few matches of a sliver of shared view is ill-conditioned (on the demo run, pairs sharing under
    15 % of their view gave rotation errors of 8-16 deg from 13-28 correct matches)."""

    def __post_init__(self) -> None:
        from cvd_scene.config import check_fields

        check_fields(
            self,
            {
                "epipolar_threshold": "> 0",
                "max_num_features": ">= 1",
                "match_max_ratio": "in (0, 1]",
                "ransac_max_error_px": "> 0",
                "min_baseline_fraction": ">= 0",
                "covisibility_min": "in [0, 1]",
            },
        )


def validate(config, size) -> None:
    """Before any stage runs: nothing beyond the fields' own checks (:meth:`EvaluateConfig.__post_init__`)."""


def run_evaluate(config, run_dir: Path, out_dir: Path):
    """Score ``run_dir/generate/frames`` against ``run_dir/plan`` into ``out_dir`` (becomes ``run_dir/evaluate``);
    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`. Returns a ``StageResult``."""
    from cvd_scene.camera_io import read_cameras_json, write_json
    from cvd_scene.consistency import evaluate_consistency, format_table
    from cvd_scene.covisibility import read_covisibility
    from cvd_scene.media import read_frames
    from cvd_scene.overlap import planned_depth
    from cvd_scene.runfolder import RunLayout, StageResult

    run = RunLayout(run_dir)
    files = run.writing("evaluate", out_dir)
    plan = read_cameras_json(run.cameras)
    covisibility = read_covisibility(run.covisibility, plan)
    frames = read_frames(run.frames, plan.video_ids, plan.num_frames)  # [V, F, H, W, 3]
    depth = planned_depth(run_dir, plan)
    result = evaluate_consistency(frames, plan, covisibility, config.evaluate, depth=depth, seed=config.seed)
    result["overlap_depth"] = (
        "none (fixed distances)"
        if depth is None
        else ("ground truth" if run.gt_depth_dir.is_dir() else "proxy scene")
    )
    gt_depth = run.gt_depth_dir
    if gt_depth.is_dir():
        from cvd_scene.warp_consistency import read_depth, warp_consistency

        warp = warp_consistency(
            frames, read_depth(gt_depth, plan.video_ids, plan.num_frames), plan.world_from_cam, plan.K,
            rel_tol=config.evaluate.warp_rel_tol,
        )  # fmt: skip
        result["warp"] = warp
        if warp["psnr"] is not None:
            log.info(
                "warp measure against ground-truth depth: PSNR %.2f dB, SSIM %.3f over %.0f %% of the pixels",
                warp["psnr"], warp["ssim"], 100 * warp["kept_fraction"],
            )  # fmt: skip
    write_json(files.consistency, result)
    table = format_table(result)
    files.consistency_md.write_text(table + "\n")
    log.info("geometric consistency (SIFT, the CVD paper's protocol):\n%s", table)
    summary = {}
    for key in ("cross_video", "within_video"):
        g = result[key]
        summary[f"{key}_rot_auc_5"] = g["rot_auc"][0]
        summary[f"{key}_trans_auc_5"] = g["trans_auc"][0]
        summary[f"{key}_precision"] = g["precision"]
        summary[f"{key}_pairs"] = g["pairs_scored"]
    if result.get("warp", {}).get("psnr") is not None:
        summary["warp_psnr"] = result["warp"]["psnr"]
        summary["warp_ssim"] = result["warp"]["ssim"]
    scored = sum(result[k]["pairs_scored"] for k in ("cross_video", "within_video"))
    if scored == 0:
        return StageResult(
            status="partial",
            summary=summary,
            message="no frame pair could be scored (every pair has zero baseline or no co-visibility)",
        )
    g = result["cross_video"] if result["cross_video"]["pairs_scored"] else result["within_video"]
    which = "across videos" if g is result["cross_video"] else "within videos"
    return StageResult(
        summary=summary,
        message=f"rotation AUC@5 {g['rot_auc'][0]:.1f} {which} ({g['pairs_scored']} pairs); table in evaluate/consistency.md",
    )
