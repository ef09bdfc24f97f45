"""Stage ``fit``: a Gaussian splat (or NeRF) fitted with the nerfstudio method ``cvd-scene`` on the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.fit.config import FitConfig

log = logging.getLogger(__name__)


def validate(config, size) -> None:
    """Before any stage runs: a plan ``size`` (:class:`cvd_scene.stages.PlanSize`) that leaves frames to hold out."""
    k = config.fit.eval_every_k
    if config.fit.held_out_video is None and size.frames < k:
        raise ValueError(
            f"fit.eval_every_k={k} holds out frames {k - 1}, {2 * k - 1}, ... of every video, but the plan has "
            f"{size.frames} frames per video ({size.source}): nothing would be held out; set fit.eval_every_k <= "
            f"{max(2, size.frames)} or plan more frames"
        )


def run_fit(config, run_dir: Path, out_dir: Path):
    """Fit the run's registered frames with the nerfstudio method ``config.fit.method`` into ``out_dir``.

    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`. Returns a ``StageResult`` whose summary holds
    the held-out PSNR/SSIM, the number of Gaussians, iterations, seconds and device.
    """
    import torch

    from cvd.devices import resolve_device
    from cvd_scene.fit.train import fit_run_folder
    from cvd_scene.runfolder import RunLayout, StageResult, check_registration

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg: FitConfig = config.fit
    check_registration(run_dir)
    device = resolve_device(cfg.device, "fit.device")
    threads = torch.get_num_threads()
    if cfg.threads is not None and device == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        metrics = fit_run_folder(run_dir, out_dir, cfg, seed=config.seed, final_out_dir=RunLayout(run_dir).stage("fit"))
    finally:
        torch.set_num_threads(threads)
    summary = {
        k: metrics.get(k)
        for k in ("method", "psnr", "ssim", "lpips", "depth_abs_error_m", "gaussians", "iterations", "seconds", "device")
        if metrics.get(k) is not None
    }
    message = (
        f"{cfg.method}: held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} after "
        f"{metrics['iterations']} iterations in {metrics['seconds']:.0f} s on {metrics['device']}"
    )
    if metrics.get("gaussians"):
        message += f", {metrics['gaussians']} Gaussians"
    return StageResult(status="finished", summary=summary, message=message)
