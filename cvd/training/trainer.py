"""The CVD trainer: hybrid posed/homography pairs, epsilon-prediction MSE (the paper; v-prediction for models whose
scheduler says so), resumable, on one CPU, one GPU or many.

One optimiser step (of ``grad_accumulation`` micro-batches of ``batch_pairs`` pairs each):

1. A micro-batch comes from :class:`~cvd.training.datasets.PairStream` (a pure function of seed, process and
   micro-step: resuming replays the same data). Its frames are encoded by the frozen autoencoder (latent means x
   the latent scale; unwarped videos are memoised).
2. Each video gets its own timestep and noise (independent per video, as the paper trains); a pair's caption is
   replaced by the empty one with probability ``caption_dropout``.
3. Posed pairs: Plücker rays of each video relative to its own first frame -> pose encoder -> camera features;
   the epipolar bias of each video against its partner. Homography pairs: no camera features; pseudo-epipolar
   lines through ``H p`` (:func:`cvd.geometry.homography_bias_pyramid`).
4. The UNet predicts the noise (or the velocity ``sqrt(abar) eps - sqrt(1 - abar) z`` when the model's scheduler has
   ``prediction_type: v_prediction``); the loss is the MSE to the true one, masked (homography pairs) to latent cells
   whose pixels all exist in the warped copy (:func:`masked_mse`).
5. AdamW with gradient clipping, warmup/constant or cosine schedule, optional EMA; autocast through
   ``accelerate`` (fp16 with a gradient scaler, or bf16) on CUDA; several GPUs through ``accelerate launch``.

Which parameters train is a config choice: the CVSMs only (the paper) or everything but the autoencoder (a small
model from scratch, whose autoencoder is pretrained first and whose word tokenizer is built from the data's
captions). Checkpoints are our saved model format plus ``trainer_state.pt`` (optimiser, schedule, EMA, step,
random states; read back with ``weights_only=True``, so resuming never runs pickled code); the final model (EMA weights when enabled) is a saved-format folder ``<output_dir>/model``. A CSV
and JSON loss log and a loss plot are written as training goes.

torch, diffusers, transformers, accelerate, numpy (matplotlib for the plot); must never import ``cvd_scene``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cvd.context import epipolar_biases
from cvd.devices import resolve_device
from cvd.geometry import homography_bias_pyramid, model_poses, plucker_embedding
from cvd.model import CVDModel, OfficialFiles
from cvd.model_config import CVDModelConfig, config_to_dict
from cvd.training.autoencoder import frames_to_tensor, latent_std, reconstruction_psnr, train_autoencoder
from cvd.training.cache import ClipCache
from cvd.training.config import TrainConfig
from cvd.training.datasets import MixedPairs, PairStream
from cvd.training.homography import min_pool_mask
from cvd.training.tokenizer import build_word_tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "Denoiser",
    "TrainResult",
    "Trainer",
    "build_model_config",
    "encode_videos",
    "loss_of_batch",
    "masked_mse",
    "official_with_fresh_cvsm",
    "plot_losses",
    "prepare_inputs",
    "read_loss_csv",
    "trainable_parameters",
]

_STATE_FILE = "trainer_state.pt"
_MEMO_BUDGET_BYTES = 1 << 30


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over the cells where ``mask`` [N, 1, F, h, w] is 1 (``pred``/``target``
    [N, C, F, h, w]); plain MSE when ``mask`` is None."""
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / (m.sum() * err.shape[1]).clamp_min(1.0)


def build_model_config(base: CVDModelConfig, config: TrainConfig) -> CVDModelConfig:
    """The model config a training run builds: ``base`` with the run's bias mode, cross-view switch and clip
    size."""
    cfg = base
    m = config.model
    if m.bias_mode is not None:
        cfg = dataclasses.replace(cfg, epipolar_bias=dataclasses.replace(cfg.epipolar_bias, mode=m.bias_mode))
    if not m.cross_view:
        cfg = dataclasses.replace(cfg, cvsm=dataclasses.replace(cfg.cvsm, enabled=False))
    if config.optim.first_frame_fraction > 0:
        cfg = dataclasses.replace(cfg, first_frame="clean")
    d = config.data
    return dataclasses.replace(cfg, num_frames=d.num_frames, height_px=d.height_px, width_px=d.width_px)


def trainable_parameters(model: CVDModel, trainable: str) -> list[tuple[str, nn.Parameter]]:
    """Set ``requires_grad`` for ``trainable`` (``cvsm`` or ``all``; the autoencoder never trains) and return the
    trained parameters as ``(component.name, parameter)`` in a fixed order."""
    model.vae.requires_grad_(False)
    if trainable == "cvsm":
        model.unet.freeze_all_but_cvsm()
        model.pose_encoder.requires_grad_(False)
        model.text_encoder.requires_grad_(False)
    elif trainable == "all":
        for m in (model.unet, model.pose_encoder, model.text_encoder):
            m.requires_grad_(True)
    else:
        raise ValueError(f"trainable must be 'cvsm' or 'all', got {trainable!r}")
    out = []
    for comp in ("unet", "pose_encoder", "text_encoder"):
        for name, p in getattr(model, comp).named_parameters():
            if p.requires_grad:
                out.append((f"{comp}.{name}", p))
    if not out:
        raise ValueError(f"nothing to train with trainable={trainable!r} (the model has no cross-view modules?)")
    return out


def official_with_fresh_cvsm(config: CVDModelConfig, files: OfficialFiles, *, device="cpu") -> CVDModel:
    """The published SD1.5 + AnimateDiff + CameraCtrl files with newly initialised sync modules (zero output
    projection), for training the CVSMs from the start as the paper did: the files are loaded (every key accounted
    for) into the model without CVSMs, then copied into a model with them; only ``.epi_modules.`` weights stay
    new."""
    import tempfile

    if not config.cvsm.enabled:
        raise ValueError("official_with_fresh_cvsm needs a config with cvsm.enabled")
    bare = dataclasses.replace(config, cvsm=dataclasses.replace(config.cvsm, enabled=False))
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "no_cvsm.ckpt"
        torch.save({"unet_trainable_dict": {}}, empty)
        base = CVDModel.from_official(bare, dataclasses.replace(files, cvd=empty), device="cpu")
    model = CVDModel.from_config(config, device="cpu", tokenizer=base.tokenizer)
    for name, module in model._weight_modules().items():
        missing, unexpected = module.load_state_dict(base._weight_modules()[name].state_dict(), strict=False)
        fresh = [k for k in missing if ".epi_modules." not in k]
        if unexpected or fresh:
            raise RuntimeError(f"{name}: copying the published weights left {fresh[:10]} missing and {unexpected[:10]} unexpected")
    return model.to(device=device)


def prepare_inputs(
    model: CVDModel,
    batch: dict,
    latents: Tensor,  # [N, C, F, h, w] scaled latents of the batch's 2B videos
    *,
    generator: torch.Generator,
    bias_seed: int,
    caption_dropout: float,
    first_frame_fraction: float = 0.0,
    scheduler=None,
) -> dict:
    """Everything one training forward needs for a collated micro-batch (:func:`~cvd.training.datasets.collate_pairs`),
    without gradients: per-video timesteps and noise and the caption dropout drawn from ``generator`` (CPU), the
    noisy latents, token ids, Plücker rays (posed pairs), the epipolar or pseudo-epipolar bias of every level
    (drawn with ``bias_seed``), partners and the latent-grid validity mask (homography pairs). With
    ``first_frame_fraction`` > 0 that share of the pairs is first-frame conditioned: frame 0 of both videos enters
    clean and the mask leaves it out of the loss (drawn after everything else, so 0 keeps the stream unchanged)."""
    from diffusers import DDPMScheduler

    mcfg = model.config
    device = latents.device
    frames = batch["frames"]  # [B, 2, F, H, W, 3] uint8
    b, _, f, h, w, _ = frames.shape
    n = 2 * b
    sched = scheduler or DDPMScheduler.from_config(model.scheduler.config)
    with torch.no_grad():
        valid = batch["valid"].reshape(n, f, h, w).to(device)
        mask = min_pool_mask(valid, mcfg.vae_scale_factor)[:, None].float()  # [N, 1, F, h', w']
        drop = torch.rand(b, generator=generator) < caption_dropout
        captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist())]
        ids = model.tokenizer([c for c in captions for _ in range(2)], padding="max_length", truncation=True,
                              max_length=model.tokenizer.model_max_length, return_tensors="pt").input_ids
        timesteps = torch.randint(0, mcfg.scheduler.num_train_timesteps, (n,), generator=generator).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        noisy = sched.add_noise(latents, noise, timesteps)
        kind = mcfg.scheduler.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:  # "sample"
            target = latents
        partner = [i ^ 1 for i in range(n)]
        bias = None
        rays = None
        posed = batch["kind"] == "posed"
        if posed:
            K = batch["K"].reshape(n, f, 3, 3).to(device)
            world_from_cam = batch["world_from_cam"].reshape(n, f, 4, 4).to(device)
            rel = model_poses(world_from_cam, mcfg.model_units_per_metre)
            rays = plucker_embedding(K.float(), rel.float(), h, w)  # [N, F, 6, H, W]
        if mcfg.cvsm.enabled and mcfg.epipolar_bias.mode != "none":
            bgen = torch.Generator().manual_seed(int(bias_seed))
            grids = model.unet.level_grids(latents.shape[-2:])
            if posed:
                bias = epipolar_biases(K, world_from_cam, partner, image_hw=(h, w), grids=grids, config=mcfg.epipolar_bias,
                                       generator=bgen)
            else:
                H = batch["homography"].reshape(n, f, 3, 3).to(device)
                bias = homography_bias_pyramid(H, (h, w), grids=grids, config=mcfg.epipolar_bias, generator=bgen)
        out = {"noisy": noisy, "timesteps": timesteps, "ids": ids.to(device), "rays": rays, "bias": bias,
               "partner": partner if mcfg.cvsm.enabled else None, "noise": noise, "target": target,
               "mask": None if posed else mask, "kind": batch["kind"]}
        if first_frame_fraction > 0:
            held = (torch.rand(b, generator=generator) < first_frame_fraction).repeat_interleave(2)  # [N], host
            if bool(held.any()):  # decided on the host: no device sync
                on = held.to(device)
                noisy[on, :, 0] = latents[on, :, 0]
                loss_mask = torch.ones_like(mask) if posed else mask.clone()
                loss_mask[on, :, 0] = 0.0
                out["mask"] = loss_mask
            out["first_frame_held"] = held
    return out


def encode_videos(model: CVDModel, frames: Tensor, autocast=None) -> Tensor:  # [N, F, H, W, 3] uint8 -> [N, C, F, h, w]
    """Scaled latent means, one autoencoder call per video (a video's latents do not depend on the batch)."""
    device = next(model.vae.parameters()).device
    out = []
    for vid in frames:
        x = frames_to_tensor(vid, device)  # [F, 3, H, W]
        with autocast() if autocast is not None else contextlib.nullcontext(), torch.no_grad():
            z = model.vae.encode(x).latent_dist.mean.float() * model.vae.config.scaling_factor  # [F, C, h, w]
        out.append(z.transpose(0, 1).contiguous())  # [C, F, h, w]
    return torch.stack(out)


def loss_of_batch(model: CVDModel, batch: dict, *, seed: int = 0) -> float:
    """The training loss of one collated micro-batch with noise, timesteps and bias drawn from ``seed`` and no
    caption dropout (a fixed yardstick for tests and sanity checks)."""
    b, two = batch["frames"].shape[:2]
    latents = encode_videos(model, batch["frames"].reshape(b * two, *batch["frames"].shape[2:]))
    inp = prepare_inputs(model, batch, latents, generator=torch.Generator().manual_seed(seed), bias_seed=seed,
                         caption_dropout=0.0)
    den = Denoiser(model)
    with torch.no_grad():
        pred = den(inp["noisy"], inp["timesteps"], inp["ids"], inp["rays"], inp["bias"], inp["partner"])
    return float(masked_mse(pred, inp["target"], inp["mask"]))


class Denoiser(nn.Module):
    """What one training forward runs (so DDP and autocast wrap exactly it): text encoder, pose encoder, UNet."""

    def __init__(self, model: CVDModel) -> None:
        super().__init__()
        self.unet = model.unet
        self.pose_encoder = model.pose_encoder
        self.text_encoder = model.text_encoder

    def forward(
        self,
        noisy: Tensor,  # [N, C, F, h, w]
        timesteps: Tensor,  # [N]
        input_ids: Tensor,  # [N, L]
        rays: Tensor | None,  # [N, F, 6, H, W] or None
        bias: list[Tensor | None] | None,  # per level [N, F, Q, K]
        partner: list[int] | None,  # [N]
    ) -> Tensor:  # [N, C, F, h, w]
        n, _, f = noisy.shape[:3]
        text = self.text_encoder(input_ids)[0]  # [N, L, D]
        feats = None if rays is None else self.pose_encoder(rays)
        ctx = self.unet.make_context(row_video=list(range(n)), partner_video=partner, num_frames=f, bias=bias,
                                     pose_features=feats)
        return self.unet(noisy, timesteps, text, ctx)


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    final_loss: float | None
    toy: dict | None = None


class Trainer:
    """Trains a CVD model on a :class:`~cvd.training.datasets.MixedPairs` source (see the module docstring).

    Args:
        config: the training config.
        model_config: the model's config (before the run's changes, see :func:`build_model_config`).
        data: the training pairs.
        held_out: held-out clips for the toy measure (and the autoencoder's reconstruction numbers).
        official: the published files (``config.model.init == "official"``).
    """

    def __init__(self, config: TrainConfig, model_config: CVDModelConfig, data: MixedPairs, *,
                 held_out: ClipCache | None = None, official: OfficialFiles | None = None) -> None:
        self.config = config
        self.base_model_config = model_config
        self.data = data
        self.held_out = held_out
        self.official = official
        self.out = Path(config.output_dir)
        self.ckpt_dir = self.out / "checkpoints"

    # ------------------------------------------------------------------------------------------- setup

    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.config
        device = resolve_device(cfg.device, "device")
        cuda = device != "cpu"
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)  # a single process trains on the current CUDA device
        mp = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[cfg.optim.mixed_precision]
        if not cuda and mp == "fp16":
            log.warning("mixed_precision=fp16 needs CUDA; training in float32 on the CPU")
            mp = "no"
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=cfg.model.trainable == "all")]
        return Accelerator(cpu=not cuda, mixed_precision=mp, kwargs_handlers=handlers)

    def _latest_checkpoint(self) -> Path | None:
        if not self.ckpt_dir.is_dir():
            return None
        done = sorted(p for p in self.ckpt_dir.glob("step-*") if (p / _STATE_FILE).is_file())
        return done[-1] if done else None

    def _build_model(self, device) -> CVDModel:
        cfg, m = self.config, self.config.model
        mcfg = build_model_config(self.base_model_config, cfg)
        if m.init == "official":
            if self.official is None:
                raise ValueError("model.init=official needs the published files (official=)")
            if self.official.cvd is None:
                return official_with_fresh_cvsm(mcfg, self.official, device=device)
            return CVDModel.from_official(mcfg, self.official, device=device)
        if m.init == "pretrained":
            return CVDModel.from_pretrained(m.weights, device=device, dtype=torch.float32, config=mcfg)
        # From scratch: word tokenizer over the data's captions, then every component random.
        captions = self.data.captions()
        tok = build_word_tokenizer(captions, m.tokenizer_max_length)
        te = dataclasses.replace(mcfg.text_encoder, vocab_size=len(tok), max_position_embeddings=m.tokenizer_max_length,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1)
        mcfg = dataclasses.replace(mcfg, text_encoder=te, tokenizer="folder")
        log.info("word tokenizer: %d tokens from %d captions", len(tok), len(captions))
        return CVDModel.from_config(mcfg, device=device, seed=cfg.seed, tokenizer=tok)

    def _autoencoder(self, model: CVDModel, device, progress: bool) -> dict:
        """Load or pretrain the autoencoder of a from-scratch model; set its latent scale."""
        from diffusers import AutoencoderKL

        cfg = self.config
        info: dict = {}
        if cfg.model.autoencoder:
            src = Path(cfg.model.autoencoder)
            if not (src / "config.json").is_file():
                raise FileNotFoundError(f"model.autoencoder={src}: not a diffusers autoencoder folder (no config.json)")
            loaded = AutoencoderKL.from_pretrained(str(src), local_files_only=True)
            model.vae.load_state_dict(loaded.state_dict())
            scale = float(loaded.config.scaling_factor)
            info["source"] = str(src)
        else:
            t0 = time.perf_counter()
            rows = train_autoencoder(model.vae, self._ae_frames, cfg.autoencoder, device=device, seed=cfg.seed,
                                     progress=progress)
            sample = np.concatenate([b for _, b in zip(range(8), self._ae_frames(cfg.seed + 7))])
            scale = 1.0 / max(latent_std(model.vae, sample, device), 1e-6)
            info.update(source="trained", steps=len(rows), seconds=round(time.perf_counter() - t0, 1),
                        final_loss=rows[-1]["loss"], final_train_psnr_db=rows[-1]["psnr_db"])
            _write_csv(self.out / "autoencoder_loss.csv", rows)
        model.vae.register_to_config(scaling_factor=scale)
        model.config = dataclasses.replace(model.config, vae=dataclasses.replace(model.config.vae, scaling_factor=scale))
        info["scaling_factor"] = scale
        if self.held_out is not None:
            frames = np.concatenate([self.held_out.video(i % self.held_out.num_clips, 1)[: cfg.data.num_frames]
                                     for i in range(min(4, self.held_out.num_clips))])
            from cvd.training.datasets import fit_clip_size

            frames, _ = fit_clip_size(frames, None, cfg.data.height_px, cfg.data.width_px)
            info["held_out"] = reconstruction_psnr(model.vae, frames, device)
        if not cfg.model.autoencoder:
            model.vae.save_pretrained(str(self.out / "autoencoder"))
        (self.out / "autoencoder.json").write_text(json.dumps(info, indent=1))
        log.info("autoencoder: %s", {k: v for k, v in info.items() if k != "source"})
        return info

    def _ae_frames(self, seed: int) -> Iterator[np.ndarray]:
        """Training frames for the autoencoder: 4 random frames of every unwarped video of the data stream."""
        stream = PairStream(self.data, batch_pairs=1, seed=seed + 100003, flip=self.config.data.flip, swap=False)
        step = 0
        while True:
            b = stream.batch(step)
            rng = np.random.default_rng([seed, step])
            step += 1
            frames, valid = b["frames"][0].numpy(), b["valid"][0].numpy()  # [2, F, H, W, 3], [2, F, H, W]
            for v in range(2):
                if valid[v].all():
                    idx = rng.choice(frames.shape[1], size=min(4, frames.shape[1]), replace=False)
                    yield frames[v, np.sort(idx)]

    # -------------------------------------------------------------------------------------------- step

    def _latents(self, model: CVDModel, frames: Tensor, keys: list, device) -> Tensor:  # -> [N, C, F, h, w]
        """Scaled latent means of the micro-batch's videos, memoised by key."""
        b, two, f, h, w, _ = frames.shape
        vids = frames.reshape(b * two, f, h, w, 3)
        out: list[Tensor | None] = [self._memo.get(k) if k is not None else None for k in keys]
        todo = [i for i, z in enumerate(out) if z is None]
        new = encode_videos(model, vids[todo], autocast=self.accelerator.autocast) if todo else []
        for z, i in zip(new, todo):
            out[i] = z
            k = keys[i]
            if k is not None and self.config.data.memoize_latents and self._memo_bytes < _MEMO_BUDGET_BYTES:
                self._memo[k] = z
                self._memo_bytes += z.numel() * z.element_size()
        return torch.stack(out)  # type: ignore[arg-type]

    def _inputs(self, model: CVDModel, batch: dict, micro: int, device) -> dict:
        latents = self._latents(model, batch["frames"], batch["keys"], device)
        return prepare_inputs(model, batch, latents, generator=self._gen, bias_seed=self._bias_seed(micro),
                              caption_dropout=self.config.optim.caption_dropout,
                              first_frame_fraction=self.config.optim.first_frame_fraction, scheduler=self._scheduler)

    def _bias_seed(self, micro: int) -> int:
        return (self.config.seed * 1_000_003 + self.accelerator.process_index * 7919 + micro) % (2**63 - 1)

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> TrainResult:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.accelerator = acc = self._accelerator()
        device = acc.device
        main = acc.is_main_process
        progress = cfg.progress and main and sys.stderr.isatty()
        self.out.mkdir(parents=True, exist_ok=True)
        t_start = time.perf_counter()

        # 1. The model: from the newest checkpoint, or built as configured (autoencoder first when from scratch).
        latest = self._latest_checkpoint() if cfg.resume else None
        state = None
        if latest is not None:
            log.info("resuming from %s", latest)
            model = CVDModel.from_pretrained(latest / "model", device=device, dtype=torch.float32)
            state = load_trainer_state(latest / _STATE_FILE)
        else:
            model = self._build_model(device)
            if cfg.model.init == "scratch":
                if main:
                    self._autoencoder(model, device, progress)
                acc.wait_for_everyone()
                if not main:  # the other processes take the autoencoder the main one wrote
                    from diffusers import AutoencoderKL

                    src = Path(cfg.model.autoencoder or self.out / "autoencoder")
                    loaded = AutoencoderKL.from_pretrained(str(src), local_files_only=True)
                    model.vae.load_state_dict(loaded.state_dict())
                    scale = float(loaded.config.scaling_factor)
                    model.vae.register_to_config(scaling_factor=scale)
                    model.config = dataclasses.replace(
                        model.config, vae=dataclasses.replace(model.config.vae, scaling_factor=scale))
        if cfg.phase == "autoencoder":
            if cfg.model.init != "scratch" or latest is not None:
                raise ValueError("phase=autoencoder trains the autoencoder of a new from-scratch model (model.init=scratch,"
                                 f" no checkpoint in {self.ckpt_dir})")
            acc.wait_for_everyone()
            return TrainResult(output_dir=self.out, model_dir=self.out / "autoencoder", steps=0,
                               seconds=time.perf_counter() - t_start, final_loss=None)
        if cfg.optim.gradient_checkpointing:
            model.unet.enable_cvsm_checkpointing(True)
        named = trainable_parameters(model, cfg.model.trainable)
        params = [p for _, p in named]
        n_train = sum(p.numel() for p in params)
        log.info("training %d tensors, %.2f M parameters (%s) on %s", len(params), n_train / 1e6,
                 cfg.model.trainable, device)
        model.vae.eval()
        from diffusers import DDPMScheduler

        self._scheduler = DDPMScheduler.from_config(model.scheduler.config)
        self._scheduler.alphas_cumprod = self._scheduler.alphas_cumprod.to(device)
        self._memo: dict[str, Tensor] = {}
        self._memo_bytes = 0

        # 2. Optimiser, schedule, EMA.
        o = cfg.optim
        opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)

        def lr_factor(s: int) -> float:
            if o.warmup_steps and s < o.warmup_steps:
                return (s + 1) / o.warmup_steps
            if o.schedule == "cosine":
                p = (s - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
                return o.min_lr_fraction + (1 - o.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        denoiser = Denoiser(model)
        denoiser, opt = acc.prepare(denoiser, opt)
        ema = [p.detach().float().clone() for p in params] if o.ema_decay > 0 else None
        self._gen = torch.Generator().manual_seed(cfg.seed * 1000 + acc.process_index)
        step = 0
        rows: list[dict] = []
        elapsed_before = 0.0
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None:
                if state.get("ema") is None:
                    raise ValueError(f"{latest}: the checkpoint has no EMA but optim.ema_decay={o.ema_decay}")
                for e, s in zip(ema, state["ema"]):
                    e.copy_(s.to(e.device))
            self._gen.set_state(state["generator"][acc.process_index])
            torch.set_rng_state(state["torch_rng"])
            if acc.scaler is not None and state.get("scaler"):
                acc.scaler.load_state_dict(state["scaler"])
            step = int(state["step"])
            elapsed_before = float(state.get("seconds", 0.0))
            rows = [r for r in read_loss_csv(self.out / "loss.csv") if int(r["step"]) <= step]
        if main:
            (self.out / "train_config.json").write_text(json.dumps(
                {"train": _jsonable(dataclasses.asdict(cfg)), "model": config_to_dict(model.config)}, indent=1))

        # 3. The loop.
        accum = o.grad_accumulation
        stream = PairStream(self.data, batch_pairs=o.batch_pairs, seed=cfg.seed, rank=acc.process_index,
                            start_step=step * accum, flip=cfg.data.flip, swap=cfg.data.swap)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.data.num_workers,
                                             persistent_workers=cfg.data.num_workers > 0)
        batches = iter(loader)
        from tqdm.auto import tqdm

        bar = tqdm(total=o.steps, initial=step, desc="training", disable=not progress)
        csv_path = self.out / "loss.csv"
        if main:
            _write_csv(csv_path, rows)
        t_loop = time.perf_counter()
        last_loss = None
        stopped_early = False
        while step < o.steps:
            losses, kinds = [], []
            for micro in range(accum):
                micro_index = step * accum + micro
                batch = next(batches)
                assert batch["step"] == micro_index, (batch["step"], micro_index)
                inp = self._inputs(model, batch, micro_index, device)
                sync = micro == accum - 1
                ctx = acc.no_sync(denoiser) if not sync and acc.num_processes > 1 else contextlib.nullcontext()
                with ctx:
                    with acc.autocast():
                        pred = denoiser(inp["noisy"], inp["timesteps"], inp["ids"], inp["rays"], inp["bias"],
                                        inp["partner"])
                    loss = masked_mse(pred, inp["target"], inp["mask"])
                    acc.backward(loss / accum)
                losses.append(loss.detach().float().item())
                kinds.append(inp["kind"])
            grad_norm = None
            if o.grad_clip > 0:
                grad_norm = float(acc.clip_grad_norm_(params, o.grad_clip))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                d = min(o.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - d)
            last_loss = float(np.mean(losses))
            seconds = elapsed_before + time.perf_counter() - t_loop
            rows.append({"step": step, "loss": last_loss, "kind": "+".join(sorted(set(kinds))),
                         "lr": sched.get_last_lr()[0], "grad_norm": grad_norm, "seconds": round(seconds, 3)})
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean([r['loss'] for r in rows[-50:]]):.4f}")
            if main and (step % cfg.log_every == 0 or step == o.steps):
                _write_csv(csv_path, rows)
            out_of_time = o.max_minutes is not None and time.perf_counter() - t_start > 60 * o.max_minutes
            if acc.num_processes > 1:
                flag = torch.tensor(float(out_of_time), device=device)
                out_of_time = bool(acc.reduce(flag, "max").item())
            if step % cfg.checkpoint_every == 0 or step == o.steps or out_of_time:
                self._save_checkpoint(model, opt, sched, ema, step, seconds)
            if out_of_time and step < o.steps:
                log.warning("stopping at step %d of %d: optim.max_minutes=%s reached", step, o.steps, o.max_minutes)
                stopped_early = True
                break
        bar.close()
        seconds = elapsed_before + time.perf_counter() - t_loop

        # 4. The final model (EMA weights when kept), the log, the plot, the toy measure.
        model_dir = self.out / "model"
        toy = None
        if main:
            _write_csv(csv_path, rows)
            if ema is not None:
                backup = [p.detach().clone() for p in params]
                with torch.no_grad():
                    for p, e in zip(params, ema):
                        p.copy_(e.to(p.dtype))
            model.save_pretrained(model_dir, dtype=getattr(torch, cfg.save_dtype), overwrite=True,
                                  sources={"trained_by": "cvd.training", "steps": step, "ema": ema is not None,
                                           "trainable": cfg.model.trainable})
            summary = _summary(rows, step, seconds, n_train, stopped_early, cfg)
            (self.out / "loss.json").write_text(json.dumps(summary, indent=1))
            plot_losses({cfg.output_dir: rows}, self.out / "loss.png")
            if cfg.eval.enabled and self.held_out is not None:
                from cvd.training.sampling import toy_consistency

                model.eval()
                e = cfg.eval
                toy = toy_consistency(model, self.held_out, num_pairs=e.num_pairs, steps=e.steps,
                                      guidance_scale=e.guidance_scale, seed=e.seed, progress=progress)
                toy["train_steps"] = step
                (self.out / "toy_measure.json").write_text(json.dumps(toy, indent=1))
                log.info("toy measure: %s", {k: round(v, 3) for k, v in toy["mean"].items()})
            if ema is not None:
                with torch.no_grad():
                    for p, b in zip(params, backup):
                        p.copy_(b)
        acc.wait_for_everyone()
        return TrainResult(output_dir=self.out, model_dir=model_dir, steps=step,
                           seconds=time.perf_counter() - t_start, final_loss=last_loss, toy=toy)

    def _save_checkpoint(self, model: CVDModel, opt, sched, ema, step: int, seconds: float) -> None:
        acc = self.accelerator
        gens = [None] * acc.num_processes
        state = self._gen.get_state()
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            gens = gather_object([state])
        else:
            gens = [state]
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return
        final = self.ckpt_dir / f"step-{step:07d}"
        tmp = self.ckpt_dir / f".tmp-step-{step:07d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "model", overwrite=True, sources={"checkpoint_step": step})
        torch.save({
            "step": step,
            "seconds": seconds,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "ema": None if ema is None else [e.cpu() for e in ema],
            "generator": gens,
            "torch_rng": torch.get_rng_state(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
        }, tmp / _STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        kept = sorted(p for p in self.ckpt_dir.glob("step-*") if p.is_dir())
        for old in kept[: max(0, len(kept) - self.config.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()


def load_trainer_state(path: Path) -> dict:
    """A checkpoint's ``trainer_state.pt``, read with ``torch.load(weights_only=True)``: tensors, numbers, strings
    and containers only, so a crafted file cannot run code. Anything else is refused with the file named."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a trainer state cvd-scene can resume from safely (read with weights_only=True: {first}); "
            "delete that checkpoint folder to resume from an earlier one, or set resume=false to start over"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{path}: not a trainer state (expected a dict with a 'step'), got {type(state).__name__}")
    return state


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = ["step", "loss", "kind", "lr", "grad_norm", "seconds"]
    if rows:
        keys = list(dict.fromkeys([*keys, *rows[0].keys()])) if "kind" in rows[0] else list(rows[0].keys())
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, path)


def read_loss_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = dict(r)
            for k in ("loss", "lr", "seconds"):
                if row.get(k) not in (None, ""):
                    row[k] = float(row[k])
            row["grad_norm"] = float(row["grad_norm"]) if row.get("grad_norm") not in (None, "") else None
            row["step"] = int(row["step"])
            out.append(row)
    return out


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) == 0:
        return values
    window = max(1, min(window, len(values)))
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty(len(values))
    for i in range(len(values)):
        lo = max(0, i - window + 1)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _summary(rows: list[dict], step: int, seconds: float, n_train: int, stopped_early: bool, cfg: TrainConfig) -> dict:
    loss = np.array([r["loss"] for r in rows], np.float64)
    tail = max(1, len(loss) // 10)
    by_kind = {}
    for kind in sorted({r["kind"] for r in rows}):
        vals = np.array([r["loss"] for r in rows if r["kind"] == kind])
        by_kind[kind] = {"steps": len(vals), "last_10pct_mean": float(vals[-max(1, len(vals) // 10):].mean())}
    return {
        "steps": step,
        "steps_planned": cfg.optim.steps,
        "stopped_early": stopped_early,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(step, 1), 4),
        "trainable_parameters": n_train,
        "effective_batch_pairs": cfg.optim.batch_pairs * cfg.optim.grad_accumulation,
        "first_10pct_mean_loss": float(loss[:tail].mean()) if len(loss) else None,
        "last_10pct_mean_loss": float(loss[-tail:].mean()) if len(loss) else None,
        "by_kind": by_kind,
    }


def plot_losses(runs: dict[str, list[dict]], path: str | os.PathLike, title: str = "training loss") -> Path:
    """A loss plot of one or more runs (``{label: rows}``, rows with ``step`` and ``loss``): raw losses faint, a
    moving average over 5 % of the steps bold, log-scaled loss axis."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no loss plot %s", path)
        return Path(path)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, (label, rows) in enumerate(runs.items()):
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows], np.float64)
        colour = f"C{i}"
        ax.plot(steps, loss, color=colour, alpha=0.15, linewidth=0.7)
        ax.plot(steps, _smooth(loss, max(5, len(loss) // 20)), color=colour, linewidth=1.8, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("MSE to the prediction target")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
