"""Stage ``evaluate``: the CVD paper's geometric-consistency protocol (SIFT instead of SuperGlue).

Reads ``generate/frames`` and the plan, writes ``evaluate/consistency.json`` (and ``consistency.md``, the table next
to the paper's numbers, which is also logged). Where the generator left ground-truth depth (``generate/gt/depth``)
it also scores the warp measure (:mod:`cvd_scene.evaluate.warp_consistency`), which works at any sharpness; with
``evaluate.warp_known_scene`` a CVD run scores it on the prompt's reference scene, with ceiling and floor
(:mod:`cvd_scene.evaluate.known_scene`, ``warp_known_scene.png``). With ``evaluate.cross_video_fits`` it fits the
registered frames of all videos but one, once per video, and scores each fit on the video it did not see
(``cross_video/``, ``cross_video.png``). Import-light: numpy and pycolmap are imported
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
    if config.evaluate.cross_video_fits:
        result["cross_video_reconstruction"] = _cross_video_fits(config, run_dir, files)
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
    if result.get("cross_video_reconstruction", {}).get("psnr") is not None:
        summary["cross_video_fit_psnr"] = result["cross_video_reconstruction"]["psnr"]
        summary["cross_video_fit_gain_over_flat"] = result["cross_video_reconstruction"]["gain_over_flat"]
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


def _cross_video_fits(config, run_dir: Path, files) -> dict:
    """``evaluate.cross_video_fits``: per video, the fit stage's fit (its settings, ``evaluate.cross_video_iterations``
    iterations, no views) on the registered frames of the other videos, scored at this video's cameras. Each fit is
    made in a temporary folder; its ``metrics.json`` and ``eval/`` pictures are kept under ``cross_video/<vid>/``
    (not its checkpoint or splat), and ``cross_video.png`` is drawn."""
    import dataclasses
    import json
    import shutil
    import tempfile

    import imageio.v3 as iio
    import numpy as np

    from cvd_scene.camera_io import read_transforms_json, write_json
    from cvd_scene.fit.train import fit_run_folder
    from cvd_scene.media import contact_sheet
    from cvd_scene.runfolder import RunLayout, StageRefused, check_registration

    run = RunLayout(run_dir)
    check_registration(run_dir, "evaluate.cross_video_fits")
    cams = read_transforms_json(run.register_transforms).cameras
    registered = np.all(np.isfinite(cams.world_from_cam), axis=(-2, -1))  # [V, F]
    videos = [vid for v, vid in enumerate(cams.video_ids) if registered[v].any()]
    if len(videos) < 2:
        raise StageRefused(
            f"evaluate.cross_video_fits needs registered frames in two videos or more; {run.register_transforms} has "
            f"them in {len(videos)}"
        )
    fit = dataclasses.replace(
        config.fit, views=False, iterations=config.evaluate.cross_video_iterations or config.fit.iterations
    )
    per_video: dict[str, dict] = {}
    gt = np.zeros((len(videos), cams.num_frames, cams.height, cams.width, 3), np.uint8)
    pred = np.zeros_like(gt)
    for i, vid in enumerate(videos):
        log.info("cross-video reconstruction %d/%d: fitting every video but %s", i + 1, len(videos), vid)
        kept = RunLayout.of_stage("fit", files.cross_video_fit(vid))  # laid out as a fit folder: metrics, eval/
        with tempfile.TemporaryDirectory(prefix=".cross-video-", dir=files.stage("evaluate")) as tmp:
            fitted = RunLayout(tmp)  # the fit is written to tmp/fit
            m = fit_run_folder(run_dir, fitted.stage("fit"), dataclasses.replace(fit, held_out_video=vid), seed=config.seed)
            kept.stage("fit").mkdir(parents=True)
            shutil.move(fitted.fit_eval, kept.fit_eval)  # its scores and pictures are kept, the fit itself is not
        m.pop("nerfstudio_config", None)
        write_json(kept.fit_metrics, m)
        flat = []
        for f in range(cams.num_frames):
            stem = kept.fit_eval_stem(vid, f)
            if stem.with_name(stem.name + "_gt.png").is_file():
                gt[i, f] = iio.imread(stem.with_name(stem.name + "_gt.png"))[..., :3]
                pred[i, f] = iio.imread(stem.with_name(stem.name + "_pred.png"))[..., :3]
                flat.append(flat_psnr(gt[i, f]))
        per_video[vid] = {
            "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m.get("lpips"), "flat_psnr": float(np.mean(flat)),
            "frames": m["heldout_frames"], "train_frames": m["train_frames"], "iterations": m["iterations"],
        }  # fmt: skip
        log.info(
            "cross-video reconstruction of %s: PSNR %.2f dB (%+.2f dB over its frames' own mean colours), SSIM %.3f",
            vid, m["psnr"], m["psnr"] - per_video[vid]["flat_psnr"], m["ssim"],
        )  # fmt: skip
    sheet = np.stack([x for i in range(len(videos)) for x in (gt[i], pred[i])])
    ids = [name for vid in videos for name in (vid, f"{vid} from the others")]
    contact_sheet(sheet, files.cross_video_sheet, max_frames=config.generate.contact_sheet_frames, video_ids=ids)
    report = json.loads(run.register_report.read_text()) if run.register_report.is_file() else {}
    psnr = float(np.mean([m["psnr"] for m in per_video.values()]))
    flat_mean = float(np.mean([m["flat_psnr"] for m in per_video.values()]))
    return {
        "poses": report.get("poses", "estimated"),
        "iterations": fit.iterations,
        "method": fit.method,
        "psnr": psnr,
        "ssim": float(np.mean([m["ssim"] for m in per_video.values()])),
        "flat_psnr": flat_mean,
        "gain_over_flat": psnr - flat_mean,
        "per_video": per_video,
    }


def flat_psnr(frame) -> float:
    """PSNR of a frame (uint8 [H, W, 3]) against its own mean colour: what predicting one colour per frame scores,
    the baseline of the cross-view reconstruction (low-contrast, blurry videos score high on PSNR alone)."""
    import numpy as np

    from cvd_scene.evaluate.warp_consistency import psnr_from_mse

    x = np.asarray(frame, np.float64) / 255.0
    return psnr_from_mse(float(np.mean((x - x.mean(axis=(0, 1))) ** 2)))
