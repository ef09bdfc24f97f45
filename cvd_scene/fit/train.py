"""The ``fit`` stage's work: nerfstudio's trainer with our method on a run folder, then evaluation and outputs.

Writes into the stage's folder:

* ``nerfstudio/<method>/run/`` - what ``ns-train`` writes (``config.yml`` rewritten to point at the final folder,
  ``dataparser_transforms.json``, ``nerfstudio_models/step-*.ckpt``): ``ns-viewer --load-config`` works on it;
* ``eval/<vid>_<NNNN>_gt.png`` and ``eval/<vid>_<NNNN>_pred.png`` - every held-out frame and its render;
* ``metrics.json`` - PSNR, SSIM, LPIPS (when its weights are on disk), depth error against
  ``generate/gt/depth`` (when it exists), Gaussians, iterations, seconds, device;
* ``gaussians.ply`` (``cvd-scene``) - the Gaussians in the run's world frame (Inria 3DGS PLY);
* ``views/rgb/<vid>/<NNNN>.png`` and ``views/depth/<vid>/<NNNN>.npy`` (both methods) - colour and z-depth in metres
  (0 where nothing was rendered) at every registered camera, for the export stage.

Imports nerfstudio (the fit subpackage is the only place that may). Training runs in this process; nothing here
starts worker processes, so no ``__main__`` guard is needed by callers.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cvd.devices import resolve_device
from cvd_scene.camera_io import read_transforms_json, write_json
from cvd_scene.fit.config import FitConfig
from cvd_scene.fit.frames import NerfstudioFrame
from cvd_scene.runfolder import RunLayout, frame_key

log = logging.getLogger(__name__)


def trainer_config(run_dir: Path, out_dir: Path, fit: FitConfig, seed: int = 0, reduced: bool = False):
    """The nerfstudio ``TrainerConfig`` of the method ``fit.method`` for ``fit.iterations`` iterations (schedules
    scaled to them, as ``ns-train`` scales them), pointed at ``run_dir``, writing under ``out_dir``, seeded with
    ``seed``; ``reduced``: the method's tiny configuration (tests)."""
    from cvd_scene.fit.methods import nerf_config, splat_config

    device = resolve_device(fit.device, "fit.device")
    if fit.method == "cvd-scene":
        config = splat_config(max_steps=fit.iterations, eval_every_k=fit.eval_every_k, reduced=reduced)
        model = config.pipeline.model
        model.sh_degree = fit.sh_degree
        model.num_random_points = fit.num_random_points
        model.max_gaussians = fit.max_gaussians
        model.appearance = fit.appearance
        model.max_train_seconds = fit.time_budget_s or 0.0
    else:  # cvd-scene-nerf (FitConfig allows no other method)
        config = nerf_config(max_steps=fit.iterations, eval_every_k=fit.eval_every_k, reduced=reduced)
        if device == "cpu" and not reduced:
            # nerfacto's hash grids run in plain torch on the CPU (no tiny-cuda-nn): measured 9.8 s per step
            # with its GPU settings, 0.75 s with these (1024 rays, fewer samples and levels).
            config.pipeline.datamanager.train_num_rays_per_batch = 1024
            model = config.pipeline.model
            model.num_proposal_samples_per_ray = (64, 32)
            model.num_nerf_samples_per_ray = 24
            model.num_levels = 12
            model.log2_hashmap_size = 17
    config.data = Path(run_dir).resolve()
    config.pipeline.datamanager.data = config.data
    config.pipeline.datamanager.dataparser.held_out_video = fit.held_out_video
    config.output_dir = Path(out_dir).resolve()
    config.experiment_name = "nerfstudio"
    config.timestamp = "run"
    config.vis = "tensorboard"
    config.viewer.quit_on_train_completion = True
    config.machine.device_type = device
    config.machine.seed = seed
    config.logging.local_writer.enable = False
    config.steps_per_save = max(fit.iterations, 1)
    config.steps_per_eval_image = 1_000_000
    config.steps_per_eval_batch = 0
    return config


@contextlib.contextmanager
def _quiet_nerfstudio():
    """nerfstudio prints through its own rich console; keep it quiet while the stage shows its progress."""
    from nerfstudio.utils.rich_utils import CONSOLE

    was = CONSOLE.quiet
    CONSOLE.quiet = not log.isEnabledFor(logging.DEBUG)
    try:
        with warnings.catch_warnings():
            # nerfstudio logs its loss tensors with float(); newer torch warns once per fit that they need grad
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
            yield
    finally:
        CONSOLE.quiet = was


@contextlib.contextmanager
def _own_event_writers():
    """nerfstudio keeps its event writers in module globals; close and drop the ones a fit adds, so a later fit
    in the same process does not write into this fit's (renamed) folder."""
    import nerfstudio.configs.base_config  # noqa: F401  (must come before nerfstudio.utils.writer)
    from nerfstudio.utils import writer

    n_writers, n_storage = len(writer.EVENT_WRITERS), len(writer.EVENT_STORAGE)
    buffer = dict(writer.GLOBAL_BUFFER)
    try:
        yield
    finally:
        for w in writer.EVENT_WRITERS[n_writers:]:
            tb = getattr(w, "tb_writer", None)
            if tb is not None:
                tb.close()
        del writer.EVENT_WRITERS[n_writers:]
        del writer.EVENT_STORAGE[n_storage:]
        writer.GLOBAL_BUFFER.clear()
        writer.GLOBAL_BUFFER.update(buffer)


class _Progress:
    """A rich progress bar on a terminal (cvd_scene.logs settings), else a log line every 10 %."""

    def __init__(self, total: int, description: str):
        from cvd_scene.logs import progress_enabled, stderr_console

        self.total, self.description = total, description
        self.bar = None
        self.next_log = 0.1
        self.t0 = time.perf_counter()
        if progress_enabled():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=True, console=stderr_console(),
            )  # fmt: skip
            self.task = self.bar.add_task(description, total=total)
            self.bar.start()

    def update(self, step: int) -> None:
        done = step + 1
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        elif done / self.total >= self.next_log:
            log.info("%s: %d/%d steps (%.0f s)", self.description, done, self.total, time.perf_counter() - self.t0)
            while self.next_log <= done / self.total:
                self.next_log += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(run_dir: Path, out_dir: Path, fit: FitConfig, seed: int = 0):
    """Run nerfstudio's trainer; returns ``(trainer, wall seconds, process CPU seconds, steps)``."""
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    config = trainer_config(run_dir, out_dir, fit, seed=seed)
    torch.manual_seed(seed)
    with _quiet_nerfstudio():
        config.save_config()
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        progress = _Progress(config.max_num_iterations, f"fit {fit.method}")
        steps = [0]

        def on_step(step: int) -> None:
            steps[0] = step + 1
            progress.update(step)

        trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], on_step))
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            trainer.train()
        finally:
            progress.close()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    return trainer, seconds, cpu_seconds, steps[0]


# ----------------------------------------------------------------------------------------------- outputs


def _render(model, camera) -> dict[str, torch.Tensor]:
    """Render one nerfstudio camera with the model in eval mode: rgb [H, W, 3], z-depth [H, W] (model frame),
    accumulation [H, W]."""
    from cvd_scene.fit.splat_model import CvdSplatModel

    with torch.no_grad():
        out = model.get_outputs_for_camera(camera)
    depth = out["depth"][..., 0]
    if not isinstance(model, CvdSplatModel):  # NeRF depth is the distance along the ray: make it z
        K = camera.get_intrinsics_matrices()[0]
        H, W = depth.shape
        v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        norm = torch.sqrt(((u - K[0, 2]) / K[0, 0]) ** 2 + ((v - K[1, 2]) / K[1, 1]) ** 2 + 1.0)
        depth = depth / norm.to(depth.device)
    return {"rgb": out["rgb"].clamp(0, 1), "depth": depth, "accumulation": out["accumulation"][..., 0]}


def _png(path: Path, rgb: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))


def evaluate_heldout(trainer, run_dir: Path, out_dir: Path, frame: NerfstudioFrame) -> dict:
    """Metrics over the held-out frames; writes each frame and its render (``eval/<vid>_<NNNN>_gt|pred.png``)."""
    from pytorch_msssim import ssim as ssim_fn

    pipeline = trainer.pipeline
    model = pipeline.model
    model.eval()
    dm = pipeline.datamanager
    dataset = dm.eval_dataset
    frames = dataset.metadata["cvd_frames"]
    psnrs, ssims, lpipss, depth_abs, depth_rel = [], [], [], [], []
    has_gt_depth = False
    run, files = RunLayout(run_dir), RunLayout.of_stage("fit", out_dir)
    for i in range(len(dataset)):
        camera = dataset.cameras[i : i + 1].to(model.device)
        gt = dataset.get_image_float32(i)[..., :3].to(model.device)  # [H, W, 3]
        out = _render(model, camera)
        pred = out["rgb"]
        mse = torch.mean((pred - gt) ** 2).clamp_min(1e-12)
        psnrs.append(float(-10.0 * torch.log10(mse)))
        a, b = gt.permute(2, 0, 1)[None], pred.permute(2, 0, 1)[None]
        ssims.append(float(ssim_fn(a, b, data_range=1.0, size_average=True)))
        lp = getattr(model, "lpips", None)
        if lp is not None:
            with torch.no_grad():
                lpipss.append(float(lp(a.clamp(0, 1), b.clamp(0, 1))))
        fi = frames[i]
        stem = files.fit_eval_stem(fi.video_id, fi.frame)
        _png(stem.with_name(stem.name + "_gt.png"), gt.cpu().numpy())
        _png(stem.with_name(stem.name + "_pred.png"), pred.cpu().numpy())
        gt_depth_path = run.gt_depth(fi.video_id, fi.frame)
        if gt_depth_path.is_file():
            has_gt_depth = True
            gt_depth = np.load(gt_depth_path).astype(np.float64)
            pred_depth = out["depth"].cpu().numpy().astype(np.float64) / frame.scale  # metres
            ok = (gt_depth > 0) & (out["accumulation"].cpu().numpy() > 0.5)
            if ok.any():
                err = np.abs(pred_depth[ok] - gt_depth[ok])
                depth_abs.append(float(err.mean()))
                depth_rel.append(float((err / gt_depth[ok]).mean()))
    metrics = {
        "heldout_frames": len(dataset),
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "lpips": float(np.mean(lpipss)) if lpipss else None,
        "psnr_per_frame": {frame_key(f.video_id, f.frame): round(p, 3) for f, p in zip(frames, psnrs)},
    }
    if has_gt_depth:
        # Over pixels with ground-truth depth that the fit covers (alpha > 0.5); None when there are none.
        metrics["depth_abs_error_m"] = float(np.mean(depth_abs)) if depth_abs else None
        metrics["depth_abs_rel_error"] = float(np.mean(depth_rel)) if depth_rel else None
    return metrics


def render_views(trainer, run_dir: Path, out_dir: Path, frame: NerfstudioFrame) -> int:
    """Colour and z-depth (metres, 0 where empty) at every registered camera into ``views/``; returns the count."""
    from cvd_scene.fit.dataparser import nerfstudio_cameras
    from cvd_scene.logs import track

    model = trainer.pipeline.model
    model.eval()
    cams = read_transforms_json(RunLayout(run_dir).register_transforms).cameras
    files = RunLayout.of_stage("fit", out_dir)
    todo = [(v, f) for v in range(cams.num_videos) for f in range(cams.num_frames) if np.all(np.isfinite(cams.world_from_cam[v, f]))]
    world_from_cam = np.stack([cams.world_from_cam[v, f] for v, f in todo])
    ns = nerfstudio_cameras(frame, world_from_cam, np.stack([cams.K[v, f] for v, f in todo]), cams.width, cams.height)
    for i, (v, f) in enumerate(track(todo, total=len(todo), description="render views")):
        out = _render(model, ns[i : i + 1].to(model.device))
        vid = cams.video_ids[v]
        _png(files.fit_view_rgb(vid, f), out["rgb"].cpu().numpy())
        depth = (out["depth"] / frame.scale).cpu().numpy().astype(np.float32)
        depth = np.where((out["accumulation"].cpu().numpy() >= 0.5) & np.isfinite(depth), depth, 0.0).astype(np.float32)
        path = files.fit_view_depth(vid, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, depth)
    return len(todo)


def _rewrite_config(config_path: Path, final_out_dir: Path) -> None:
    """Point the saved ``config.yml`` at the stage's final folder (it was written in the temporary one), with
    ``output_dir`` and ``data`` stored relative to the file's final place (:mod:`cvd_scene.fit.config_paths`), so
    a moved or copied run loads its own checkpoint and frames."""
    import yaml

    from cvd_scene.fit.config_paths import ConfigRelativePath

    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    final_out_dir = Path(final_out_dir).resolve()
    config.output_dir = final_out_dir
    final_config_dir = config.get_base_dir()  # output_dir / experiment / method / timestamp
    config.output_dir = ConfigRelativePath(final_out_dir, final_config_dir)
    data = ConfigRelativePath(config.data, final_config_dir)
    config.data = data
    if getattr(config.pipeline.datamanager, "data", None) is not None:
        config.pipeline.datamanager.data = data
    config_path.write_text(yaml.dump(config), "utf8")


def fit_run_folder(
    run_dir: Path, out_dir: Path, fit: FitConfig, seed: int = 0, final_out_dir: Path | None = None
) -> dict:
    """Train with the stage's config ``fit`` (and nerfstudio's seed ``seed``), evaluate and write every output of
    the fit stage into ``out_dir``; returns ``metrics.json``'s data.

    ``final_out_dir`` is where ``out_dir`` will be renamed to (``RUN_DIR/fit``), for the saved nerfstudio config.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    with _own_event_writers():
        return _fit(run_dir, out_dir, fit, seed, final_out_dir)


def _fit(run_dir: Path, out_dir: Path, fit: FitConfig, seed: int, final_out_dir: Path | None) -> dict:
    trainer, seconds, cpu_seconds, steps = train(run_dir, out_dir, fit, seed=seed)
    frame: NerfstudioFrame = trainer.pipeline.datamanager.train_dataparser_outputs.metadata["cvd_frame"]
    base = trainer.config.get_base_dir()
    files = RunLayout.of_stage("fit", out_dir)
    write_json(files.fit_frame, frame.to_json())
    t0 = time.perf_counter()
    metrics = evaluate_heldout(trainer, run_dir, out_dir, frame)
    metrics.update(
        method=fit.method,
        iterations=steps,
        iterations_planned=fit.iterations,
        seconds=round(seconds, 2),
        cpu_seconds=round(cpu_seconds, 2),
        seconds_per_iteration=round(seconds / max(steps, 1), 4),
        device=trainer.config.machine.device_type,
        torch_threads=torch.get_num_threads(),
        train_frames=len(trainer.pipeline.datamanager.train_dataset),
    )
    model = trainer.pipeline.model
    if fit.method == "cvd-scene":
        from cvd_scene.export.ply import write_ply
        from cvd_scene.fit.frames import gaussians_to_world

        gaussians = gaussians_to_world(model.gaussians(), frame)
        write_ply(gaussians, files.fit_gaussians, frame="run")
        metrics["gaussians"] = len(gaussians)
    else:
        metrics["gaussians"] = None
    if fit.views:
        metrics["views"] = render_views(trainer, run_dir, out_dir, frame)
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    if final_out_dir is not None:
        _rewrite_config(base / "config.yml", Path(final_out_dir))
    metrics["nerfstudio_config"] = str(base.relative_to(out_dir.resolve()) / "config.yml")
    write_json(files.fit_metrics, metrics)
    trainer.shutdown()
    return metrics
