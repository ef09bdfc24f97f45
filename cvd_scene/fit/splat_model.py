"""The Gaussian splatting model of the ``cvd-scene`` method: splatfacto made for generated views, on any device.

Differences from nerfstudio's splatfacto:

* renders through :func:`cvd_scene.fit.raster.rasterize` (gsplat on CUDA tensors, the pure-torch rasteriser
  otherwise); no hard-coded device;
* starts from the registration's sparse points (``register/sparse_pc.ply``) plus optional random points;
* a per-frame (or per-video) affine colour correction applied to training renders only, centred so the neutral
  correction (used for evaluation and exports) is the average one: colour flicker between generated frames is
  absorbed there instead of by floaters;
* densification and pruning schedules sized for ~50-200 views and a few thousand iterations;
* no download at start: LPIPS only when its AlexNet weights are already on disk (a logged notice otherwise);
* an optional wall-clock budget that ends training early (the checkpoint is still written).

Imports nerfstudio and gsplat (the fit subpackage is the only place that may).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from pytorch_msssim import SSIM
from torch.nn import Parameter

from cvd_scene.fit.nsdata import CAMERA_CENTRES_KEY
from cvd_scene.fit.raster import rasterize
from cvd_scene.gaussians import Gaussians

log = logging.getLogger(__name__)


@dataclass
class CvdSplatModelConfig(SplatfactoModelConfig):
    """splatfacto's settings (defaults resized for short fits of generated views) plus the fields below."""

    SCHEDULE_FIELDS: ClassVar[dict[str, int]] = {
        "warmup_length": 0,
        "stop_split_at": 0,
        "stop_screen_size_at": 0,
        "resolution_schedule": 1,
        "sh_degree_interval": 1,
    }
    """The fields below that count steps of a 3000-iteration fit and scale with the iteration count
    (:func:`cvd_scene.fit.methods.scaled_schedule`), with the least value each may take. ``refine_every`` and
    ``reset_alpha_every`` stay: they count steps between refinements (about one pass over the views), not a share
    of the fit."""

    _target: type = field(default_factory=lambda: CvdSplatModel)
    warmup_length: int = 300
    """Steps before the first densification."""
    refine_every: int = 100
    """Steps between densification/pruning rounds."""
    resolution_schedule: int = 600
    """Train at 1/2^num_downscales resolution first, doubling every this many steps."""
    num_downscales: int = 1
    """Resolution halvings at the start (1: half resolution for the first resolution_schedule steps)."""
    cull_alpha_thresh: float = 0.05
    """Gaussians with opacity below this are pruned at each refinement."""
    reset_alpha_every: int = 30
    """Reset opacities every this many refinements (30 x 100 steps: not within a short fit)."""
    densify_grad_thresh: float = 0.0008
    """Screen-space gradient (absolute, averaged over views) above which a Gaussian is split or duplicated."""
    densify_size_thresh: float = 0.01
    """Gaussians smaller than this (nerfstudio-frame units) are duplicated, larger ones split."""
    stop_split_at: int = 2500
    """No densification after this step."""
    stop_screen_size_at: int = 0
    """Split Gaussians larger than split_screen_size on screen (and cull above cull_screen_size) until this step
    (0: never; splitting every large Gaussian multiplies the count without a gradient asking for it)."""
    sh_degree: int = 1
    """Highest SH degree (generated views carry little view dependence)."""
    sh_degree_interval: int = 1000
    """Steps between turning on each SH degree."""
    background_color: Literal["random", "black", "white"] = "random"
    """Background behind the splats during training (random discourages transparent surfaces)."""
    appearance: Literal["none", "per-frame", "per-video"] = "per-frame"
    """Affine colour correction per training frame (or per video), on training renders only."""
    appearance_reg: float = 0.01
    """Weight of the L2 pull of every colour correction towards the average one."""
    num_random_points: int = 0
    """Random points added to the sparse points (uniform in the bounding box of the cameras and points)."""
    init_opacity: float = 0.1
    """Opacity of every Gaussian at the start."""
    init_scale_neighbours: int = 3
    """Initial size: the mean distance to this many nearest points."""
    raster_tile_size: int = 8
    """Tile size of the pure-torch rasteriser (CPU); gsplat uses 16."""
    max_gaussians: int = 0
    """Densification pauses while there are at least this many Gaussians (0: no limit, or
    ``random_init_max_gaussians`` after a random start); pruning goes on."""
    num_random: int = 3000
    """Random Gaussians to start from when the dataset has no points (e.g. a nerfstudio-data folder without a PLY
    or COLMAP model; splatfacto: 50,000), inside the box of the training cameras' centres, each side at least half
    the longest: about a run folder's seed count (the demo registers 3,145 points), as an iteration's cost grows
    with the Gaussian count (measured: about 2x a run folder's on the demo scene, splatfacto's start 4.8x)."""
    random_init_max_gaussians: int = 60000
    """``max_gaussians`` after a random start when ``max_gaussians`` is 0 (the demo preset's cap): densification of
    a random start does not grow without bound."""
    max_train_seconds: float = 0.0
    """Stop training after this many seconds of wall-clock time (0: no limit)."""
    lpips: Literal["auto", "off"] = "auto"
    """LPIPS in evaluation: ``auto`` when its AlexNet weights are on disk (never downloads), ``off``."""


def lpips_weights_present() -> bool:
    """Whether torchvision's AlexNet weights (what torchmetrics' LPIPS loads) are already on disk."""
    import os

    import torchvision

    url = torchvision.models.AlexNet_Weights.DEFAULT.url
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def make_lpips(setting: str):
    """torchmetrics LPIPS when allowed and its weights are present, else None (with a logged notice)."""
    if setting == "off":
        return None
    if not lpips_weights_present():
        log.info(
            "LPIPS skipped: torchvision's AlexNet weights are not in %s/checkpoints and nothing is downloaded "
            "at run time (put alexnet-owt-7be5be79.pth there to get LPIPS)",
            torch.hub.get_dir(),
        )
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(normalize=True)


def viewmats_from_camera_to_worlds(camera_to_worlds_gl: torch.Tensor) -> torch.Tensor:
    """nerfstudio ``camera_to_worlds`` [C, 3, 4] (OpenGL axes) -> world-to-camera [C, 4, 4] (OpenCV axes)."""
    R = camera_to_worlds_gl[:, :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=camera_to_worlds_gl.device, dtype=camera_to_worlds_gl.dtype)  # [C, 3, 3]
    t = camera_to_worlds_gl[:, :3, 3:4]  # [C, 3, 1]
    Rt = R.transpose(1, 2)
    view = torch.zeros(camera_to_worlds_gl.shape[0], 4, 4, device=camera_to_worlds_gl.device, dtype=camera_to_worlds_gl.dtype)
    view[:, :3, :3] = Rt
    view[:, :3, 3:4] = -Rt @ t
    view[:, 3, 3] = 1.0
    return view  # [C, 4, 4]


def mean_neighbour_distance(points: np.ndarray, k: int) -> np.ndarray:
    """[P] mean distance of every point to its k nearest other points."""
    from scipy.spatial import cKDTree

    k = max(1, min(k, len(points) - 1))
    if len(points) < 2:
        return np.full(len(points), 0.01)
    d, _ = cKDTree(points).query(points, k=k + 1)
    return d[:, 1:].mean(axis=1)


def random_init_box(centres: torch.Tensor | None, random_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Corners [3], [3] of the box a random start fills: the box of the cameras' centres [C, 3], every side widened
    to at least half the longest (cameras on a ring or a plane still bound a volume), or splatfacto's cube of side
    ``random_scale`` about the origin when there are no centres."""
    if centres is None or len(centres) == 0:
        return -torch.ones(3) * random_scale / 2, torch.ones(3) * random_scale / 2
    lo, hi = centres.float().min(0).values.cpu(), centres.float().max(0).values.cpu()
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    half = half.clamp_min(max(float(half.max()) / 2, 1e-3))
    return mid - half, mid + half


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's :class:`DefaultStrategy` whose grow step (duplicate and split) is skipped while there are at least
    ``max_gaussians`` Gaussians; pruning, opacity resets and the running statistics go on as in the parent."""

    max_gaussians: int = 0
    """Grow only below this many Gaussians (0: no cap)."""

    def _grow_gs(self, params, optimizers, state, step) -> tuple[int, int]:
        if self.max_gaussians > 0 and len(params["means"]) >= self.max_gaussians:
            return 0, 0
        return super()._grow_gs(params, optimizers, state, step)


class CvdSplatModel(SplatfactoModel):
    """splatfacto on :func:`rasterize`, with colour corrections; see the module docstring."""

    config: CvdSplatModelConfig

    def populate_modules(self):
        cfg = self.config
        seeds = self.seed_points if not cfg.random_init else None
        pts = [] if seeds is None else [seeds[0].float()]
        cols = [] if seeds is None else [seeds[1].float() / 255.0]
        n_seed = 0 if seeds is None else len(seeds[0])
        n_random = cfg.num_random_points if n_seed else max(cfg.num_random_points, cfg.num_random)
        metadata = self.kwargs.get("metadata") or {}
        max_gaussians = cfg.max_gaussians
        if n_random:
            if n_seed:
                lo, hi = seeds[0].min(0).values, seeds[0].max(0).values
            else:
                lo, hi = random_init_box(metadata.get(CAMERA_CENTRES_KEY), cfg.random_scale)
                max_gaussians = max_gaussians or cfg.random_init_max_gaussians
                log.warning(
                    "%s: starting from %d random Gaussians %s, densification %s "
                    "(pipeline.model.num-random, pipeline.model.max-gaussians)",
                    "random_init set" if cfg.random_init else "no points in the dataset",
                    n_random,
                    "inside the cameras' bounds" if CAMERA_CENTRES_KEY in metadata else "in splatfacto's cube",
                    f"capped at {max_gaussians} Gaussians" if max_gaussians else "not capped",
                )
            gen = torch.Generator().manual_seed(0)
            pts.append(lo + (hi - lo) * torch.rand(n_random, 3, generator=gen))
            cols.append(torch.rand(n_random, 3, generator=gen))
        means = torch.cat(pts)  # [N, 3]
        rgb = torch.cat(cols).clamp(0.0, 1.0)  # [N, 3]
        N = len(means)
        dist = torch.from_numpy(mean_neighbour_distance(means.numpy().astype(np.float64), cfg.init_scale_neighbours))
        scales = torch.log(dist.float().clamp_min(1e-4))[:, None].repeat(1, 3)  # [N, 3]
        dim_sh = num_sh_bases(cfg.sh_degree)
        shs = torch.zeros(N, dim_sh, 3)
        shs[:, 0, :] = RGB2SH(rgb) if cfg.sh_degree > 0 else torch.logit(rgb, eps=1e-4)
        self.gauss_params = torch.nn.ParameterDict(
            {
                "means": Parameter(means),
                "scales": Parameter(scales),
                "quats": Parameter(random_quat_tensor(N)),
                "features_dc": Parameter(shs[:, 0, :].contiguous()),
                "features_rest": Parameter(shs[:, 1:, :].contiguous()),
                "opacities": Parameter(torch.logit(torch.full((N, 1), cfg.init_opacity))),
            }
        )
        self.camera_optimizer = cfg.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = make_lpips(cfg.lpips)
        self.step = 0
        self.crop_box = None
        if cfg.background_color == "random":
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])
        else:
            self.background_color = get_color(cfg.background_color)
        if cfg.use_bilateral_grid:
            raise ValueError("use_bilateral_grid is not supported by cvd-scene; use appearance=per-frame")

        frames = metadata.get("cvd_frames")
        if cfg.appearance == "per-video" and frames is not None:
            self._appearance_of_image = torch.tensor([f.video for f in frames], dtype=torch.long)
            n_codes = int(metadata.get("cvd_num_videos", 1))
        else:
            self._appearance_of_image = torch.arange(self.num_train_data)
            n_codes = self.num_train_data
        # Per code: 3x3 colour matrix offset (row-major) and bias; identity + 0 at the start.
        self.appearance_params = Parameter(torch.zeros(n_codes if cfg.appearance != "none" else 0, 12))

        self.strategy = CappedDefaultStrategy(
            max_gaussians=max_gaussians,
            prune_opa=cfg.cull_alpha_thresh,
            grow_grad2d=cfg.densify_grad_thresh,
            grow_scale3d=cfg.densify_size_thresh,
            grow_scale2d=cfg.split_screen_size,
            prune_scale3d=cfg.cull_scale_thresh,
            prune_scale2d=cfg.cull_screen_size,
            refine_scale2d_stop_iter=cfg.stop_screen_size_at,
            refine_start_iter=cfg.warmup_length,
            refine_stop_iter=cfg.stop_split_at,
            reset_every=cfg.reset_alpha_every * cfg.refine_every,
            refine_every=cfg.refine_every,
            pause_refine_after_reset=self.num_train_data + cfg.refine_every,
            absgrad=cfg.use_absgrad,
            revised_opacity=False,
            verbose=False,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self._train_started: float | None = None
        self.info = {}

    # ------------------------------------------------------------------------------------ training setup

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        groups = super().get_param_groups()
        if self.config.appearance != "none":
            groups["appearance"] = [self.appearance_params]
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> list[TrainingCallback]:
        cbs = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        if self.config.max_train_seconds > 0 and trainer is not None:

            def check_budget(step: int) -> None:
                now = time.perf_counter()
                if self._train_started is None:
                    self._train_started = now
                elif now - self._train_started > self.config.max_train_seconds:
                    if not trainer.stop_training:
                        log.info("time budget of %.0f s reached at step %d", self.config.max_train_seconds, step)
                    trainer.stop_training = True

            cbs.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], check_budget))
        return cbs

    # ------------------------------------------------------------------------------------------ rendering

    def _appearance(self, image_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour matrix [3, 3] and bias [3] of a training image (centred over all codes)."""
        params = self.appearance_params - self.appearance_params.mean(0, keepdim=True)  # [Q, 12]
        p = params[self._appearance_of_image[image_idx]]
        return torch.eye(3, device=p.device) + p[:9].reshape(3, 3), p[9:]

    def get_outputs(self, camera: Cameras) -> dict[str, torch.Tensor]:
        if not isinstance(camera, Cameras):
            raise TypeError(f"get_outputs needs nerfstudio Cameras, got {type(camera).__name__}")
        if self.training:
            if camera.shape[0] != 1:
                raise ValueError(f"training renders one camera at a time, got {camera.shape[0]}")
            camera_to_worlds_gl = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_worlds_gl = camera.camera_to_worlds
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(self.means).squeeze()
            if keep.sum() == 0:
                return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)
        else:
            keep = None

        def sel(t):
            return t if keep is None else t[keep]

        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        viewmats = viewmats_from_camera_to_worlds(camera_to_worlds_gl)  # [1, 4, 4]
        Ks = camera.get_intrinsics_matrices().to(self.device)  # [1, 3, 3]
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(scale)

        if self.config.sh_degree > 0:
            colors = torch.cat([sel(self.features_dc)[:, None, :], sel(self.features_rest)], dim=1)  # [N, K, 3]
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(sel(self.features_dc))  # [N, 3]
            sh_degree = None
        render, alpha, self.info = rasterize(
            sel(self.means),
            sel(self.quats),
            torch.exp(sel(self.scales)),
            torch.sigmoid(sel(self.opacities)).squeeze(-1),
            colors,
            viewmats,
            Ks,
            W,
            H,
            near_plane=0.01,
            far_plane=1e10,
            sh_degree=sh_degree,
            render_mode="RGB+ED",
            absgrad=self.config.use_absgrad,
            tile_size=None if self.means.is_cuda else self.config.raster_tile_size,
        )  # [1, H, W, 4], [1, H, W, 1]
        if self.training:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info)
        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)  # [1, H, W, 3]
        if self.training and self.config.appearance != "none" and camera.metadata and "cam_idx" in camera.metadata:
            A, b = self._appearance(int(camera.metadata["cam_idx"]))
            rgb = rgb @ A.T + b
        depth = render[..., 3:4]
        depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)  # [H, W, 1]
        if background.shape[0] == 3 and not self.training:
            background = background.expand(H, W, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    # -------------------------------------------------------------------------------------- losses, metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, torch.Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.training and self.config.appearance != "none" and len(self.appearance_params) > 1:
            centred = self.appearance_params - self.appearance_params.mean(0, keepdim=True)
            losses["appearance_reg"] = self.config.appearance_reg * (centred**2).sum(-1).mean()
        return losses

    def get_image_metrics_and_images(self, outputs, batch):
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"]
        combined = torch.cat([gt, pred], dim=1)
        gt_b = torch.moveaxis(gt, -1, 0)[None]  # [1, 3, H, W]
        pred_b = torch.moveaxis(pred, -1, 0)[None]
        metrics = {"psnr": float(self.psnr(gt_b, pred_b).item()), "ssim": float(self.ssim(gt_b, pred_b))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(gt_b, pred_b))
        return metrics, {"img": combined}

    # ------------------------------------------------------------------------------------------ exporting

    @torch.no_grad()
    def gaussians(self) -> Gaussians:
        """The fitted Gaussians in the nerfstudio frame, in the Inria parameterisation."""
        dc = self.features_dc.detach().cpu()
        if self.config.sh_degree == 0:
            dc = RGB2SH(torch.sigmoid(dc))  # colour-only fits keep logits
        return Gaussians(
            means=self.means.detach().cpu().numpy(),
            log_scales=self.scales.detach().cpu().numpy(),
            quats_wxyz=self.quats.detach().cpu().numpy(),
            opacity_logits=self.opacities.detach().cpu().numpy().reshape(-1),
            sh_dc=dc.numpy(),
            sh_rest=self.features_rest.detach().cpu().numpy(),
        )
