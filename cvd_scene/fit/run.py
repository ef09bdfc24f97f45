"""Stage ``fit``: a Gaussian splat (or NeRF) fitted with the nerfstudio method ``cvd-scene`` on the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.fit.config import FitConfig

log = logging.getLogger(__name__)


def validate(config, size) -> None:
    """Before any stage runs: a plan ``size`` (:class:`cvd_scene.stages.PlanSize`) that leaves frames to hold out."""
    k = config.fit.eval_every_k
    if size.frames < k:
        raise ValueError(
            f"fit.eval_every_k={k} holds out frames {k - 1}, {2 * k - 1}, ... of every video, but the plan has "
            f"{size.frames} frames per video ({size.source}): nothing would be held out; set fit.eval_every_k <= "
            f"{max(2, size.frames)} or plan more frames"
        )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("fit.device is 'cuda' but torch sees no CUDA device; use fit.device=cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"fit.device must be auto, cpu or cuda, got {device!r}")
    return device


def check_registration(run_dir: Path) -> None:
    """Refuse (``StageRefused``, with the reason) when the registration failed or left nothing to fit."""
    import json

    from cvd_scene.runfolder import RunLayout, StageRefused

    record = None
    run_json = RunLayout(run_dir).run_json
    if run_json.is_file():
        try:
            record = json.loads(run_json.read_text()).get("stages", {}).get("register")
        except ValueError:
            record = None
    if record is not None and record.get("status") == "failed":
        raise StageRefused(f"stage 'fit' needs a registration, and it failed: {record.get('message') or 'no reason given'}")
    transforms = RunLayout(run_dir).register_transforms
    if not transforms.is_file():
        why = (record or {}).get("message") or "no frame was registered"
        raise StageRefused(f"stage 'fit' needs {transforms}, which is missing ({why}); run or redo the register stage")


def run_fit(config, run_dir: Path, out_dir: Path):
    """Fit the run's registered frames with the nerfstudio method ``config.fit.method`` into ``out_dir``.

    ``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`. Returns a ``StageResult`` whose summary holds
    the held-out PSNR/SSIM, the number of Gaussians, iterations, seconds and device.
    """
    import torch

    from cvd_scene.fit.train import FitSettings, fit_run_folder
    from cvd_scene.runfolder import RunLayout, StageResult

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg: FitConfig = config.fit
    check_registration(run_dir)
    if cfg.iterations < 1:
        raise ValueError(f"fit.iterations must be >= 1, got {cfg.iterations}")
    if cfg.eval_every_k < 2:
        raise ValueError(f"fit.eval_every_k must be >= 2, got {cfg.eval_every_k}")
    if not 0 <= cfg.sh_degree <= 3:
        raise ValueError(f"fit.sh_degree must be 0..3, got {cfg.sh_degree}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"fit.threads must be >= 1 or null, got {cfg.threads}")
    settings = FitSettings(
        method=cfg.method,
        iterations=cfg.iterations,
        time_budget_s=cfg.time_budget_s or 0.0,
        eval_every_k=cfg.eval_every_k,
        device=resolve_device(cfg.device),
        seed=config.seed,
        sh_degree=cfg.sh_degree,
        num_random_points=cfg.num_random_points,
        max_gaussians=cfg.max_gaussians,
        appearance=cfg.appearance,
        views=cfg.views,
    )
    threads = torch.get_num_threads()
    if cfg.threads is not None and settings.device == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        metrics = fit_run_folder(run_dir, out_dir, settings, final_out_dir=RunLayout(run_dir).stage("fit"))
    finally:
        torch.set_num_threads(threads)
    summary = {
        k: metrics.get(k)
        for k in ("method", "psnr", "ssim", "lpips", "depth_abs_error_m", "gaussians", "iterations", "seconds", "device")
        if metrics.get(k) is not None
    }
    message = (
        f"{cfg.method}: held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} after "
        f"{metrics['iterations']} iterations in {metrics['seconds']:.0f} s on {settings.device}"
    )
    if metrics.get("gaussians"):
        message += f", {metrics['gaussians']} Gaussians"
    return StageResult(status="finished", summary=summary, message=message)
