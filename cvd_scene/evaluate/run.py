"""Stage ``evaluate``: the CVD paper's geometric-consistency protocol (SIFT instead of SuperGlue).

Reads ``generate/frames`` and the plan, writes ``evaluate/consistency.json`` (and ``consistency.md``, the table next
to the paper's numbers, which is also logged). Where the generator left ground-truth depth (``generate/gt/depth``)
it also scores the warp measure (:mod:`cvd_scene.evaluate.warp_consistency`), which works at any sharpness; with
``evaluate.warp_known_scene`` a CVD run scores it on the prompt's reference scene, with ceiling and floor
(:mod:`cvd_scene.evaluate.known_scene`, ``warp_known_scene.png``). Import-light: numpy and pycolmap are imported
inside :func:`run_evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.evaluate.config import EvaluateConfig

__all__ = ["EvaluateConfig", "run_evaluate", "validate"]

log = logging.getLogger(__name__)


def validate(config, size) -> None:
    """Before any stage runs: the fields' own checks (:meth:`EvaluateConfig.__post_init__`) and, with
    ``evaluate.warp_known_scene``, a CVD run without a picture (:func:`cvd_scene.evaluate.known_scene.check_known_scene`)."""
    if config.evaluate.warp_known_scene:
        from cvd_scene.evaluate.known_scene import check_known_scene

        check_known_scene(config)


def run_evaluate(config, run_dir: Path, out_dir: Path):
    """Score ``run_dir/generate/frames`` against ``run_dir/plan`` into ``out_dir`` (becomes ``run_dir/evaluate``);
    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`. Returns a ``StageResult``."""
    from cvd_scene.camera_io import read_cameras_json, write_json
    from cvd_scene.evaluate.consistency import evaluate_consistency, format_table
    from cvd_scene.media import read_frames
    from cvd_scene.plan.covisibility import read_covisibility
    from cvd_scene.plan.overlap import planned_depth
    from cvd_scene.runfolder import RunLayout, StageResult

    run = RunLayout(run_dir)
    files = run.writing("evaluate", out_dir)
    plan = read_cameras_json(run.cameras)
    if not plan.poses_known:
        why = (
            "skipped: the CVD paper's protocol compares the poses estimated between frames with the planned ones, "
            "and these pictures were imported without poses"
        )
        log.info("evaluate: %s", why)
        write_json(files.consistency, {"format": "cvd-scene/consistency", "skipped": why})
        files.consistency_md.write_text(f"Geometric consistency: {why}.\n")
        return StageResult(status="finished", summary={"skipped": "no planned poses"}, message=why)
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
        from cvd_scene.evaluate.warp_consistency import read_depth, warp_consistency

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
    if config.evaluate.warp_known_scene:
        result["warp"] = _known_scene_warp(config, plan, run_dir, files)
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
        for arm in ("ceiling", "floor"):
            if arm in result["warp"]:
                summary[f"warp_{arm}_psnr"] = result["warp"][arm]["psnr"]
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


def _known_scene_warp(config, plan, run_dir: Path, files) -> dict:
    """``evaluate.warp_known_scene``: the warp measure of the CVD model on the prompt's reference scene with its
    ceiling and floor (:mod:`cvd_scene.evaluate.known_scene`), logged, and the three videos' contact sheet."""
    import numpy as np

    from cvd_scene.evaluate.known_scene import check_known_scene, known_scene_videos, score_known_scene
    from cvd_scene.media import contact_sheet
    from cvd_scene.runfolder import StageRefused

    try:
        check_known_scene(config, plan)
    except ValueError as e:
        raise StageRefused(str(e)) from None
    videos = known_scene_videos(config, plan, run_dir)
    warp = score_known_scene(videos, plan, rel_tol=config.evaluate.warp_rel_tol)
    ids = [f"{arm} {vid}" for arm in ("gt", "cvd", "solo") for vid in plan.video_ids]
    files.warp_contact_sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet = np.concatenate([videos.ceiling, videos.generated, videos.floor])  # [3 V, F, H, W, 3]
    contact_sheet(sheet, files.warp_contact_sheet, max_frames=config.generate.contact_sheet_frames, video_ids=ids)
    if warp["psnr"] is None:
        log.warning(
            "warp measure on the known %s scene: no frame pair of the plan sees a common surface; nothing scored",
            videos.info["scene_kind"],
        )
    for arm, m in (("generated", warp), ("ceiling", warp["ceiling"]), ("floor", warp["floor"])):
        if m["psnr"] is not None:
            log.info(
                "warp measure on the known %s scene, %s: PSNR %.2f dB, SSIM %.3f over %.0f %% of the pixels",
                videos.info["scene_kind"], arm, m["psnr"], m["ssim"], 100 * m["kept_fraction"],
            )  # fmt: skip
    return warp
