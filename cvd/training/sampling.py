"""A pair sampler and the toy consistency measure of a (small) trained model.

:func:`sample_pair` is :class:`~cvd.pipeline.CVDPipeline` on two videos that are each other's cross-view partner
(DDIM with the model's scheduler, eta 0, no pairing draws: the one pair at every step), with the trainer's
defaults: no guidance (the empty caption is the unconditional branch when ``guidance_scale > 1``) and noise drawn
on the CPU as the trainer always did (both videos, then the fixed partner's own). Either video can be *fixed*:
its latents are replaced at every step by the ground truth noised to that step (``sqrt(abar_t) z + sqrt(1 -
abar_t) eps`` with one fixed ``eps``), so the other video is generated next to a known partner. With
``cross_view=False`` the partner is ignored (no cross-view attention: each video alone).

:func:`toy_consistency` is the measure that works even for blurry small models: over held-out plans, give the
sampler one ground-truth video as the fixed partner and score how close the generated partner video is to its own
ground-truth render (PSNR/SSIM, all frames and frames after the shared first one), next to the same sampling
without cross-view attention and the autoencoder's reconstruction (the ceiling).

torch and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cvd.geometry import model_poses
from cvd.pipeline import CVDPipeline
from cvd.training.autoencoder import frames_to_tensor
from cvd.training.metrics import psnr, ssim

log = logging.getLogger(__name__)

__all__ = ["PairCameras", "decode_latents", "encode_frames", "relative_to_first", "sample_pair", "toy_consistency"]


@dataclass
class PairCameras:
    """The cameras of two videos: ``K`` [2, F, 3, 3] pixels, ``world_from_cam`` [2, F, 4, 4] in one frame."""

    K: Tensor
    world_from_cam: Tensor


def relative_to_first(world_from_cam: Tensor, units_per_metre: float) -> Tensor:  # [V, F, 4, 4] -> [V, F, 4, 4]
    """Each video's poses relative to its own first frame, translations in model units (what the pose encoder
    takes): :func:`cvd.geometry.model_poses`, the pipeline's conversion."""
    return model_poses(world_from_cam, units_per_metre)


@torch.no_grad()
def encode_frames(model, frames: np.ndarray | Tensor) -> Tensor:  # [V, F, H, W, 3] uint8 -> [V, C, F, h, w]
    """Scaled latent means of uint8 videos."""
    v, f, h, w, _ = frames.shape
    device = next(model.vae.parameters()).device
    dtype = next(model.vae.parameters()).dtype
    x = frames_to_tensor(torch.as_tensor(frames).reshape(v * f, h, w, 3), device).to(dtype)
    z = model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor  # [(V F), C, h, w]
    return z.reshape(v, f, *z.shape[1:]).transpose(1, 2).float()  # [V, C, F, h, w]


@torch.no_grad()
def decode_latents(model, latents: Tensor) -> np.ndarray:  # [V, C, F, h, w] -> [V, F, H, W, 3] float in [0, 1]
    """Frames of scaled latents."""
    v, c, f, h, w = latents.shape
    dtype = next(model.vae.parameters()).dtype
    z = latents.transpose(1, 2).reshape(v * f, c, h, w).to(dtype) / model.vae.config.scaling_factor
    x = model.vae.decode(z).sample.float().clamp(-1, 1)  # [(V F), 3, H, W]
    x = (x + 1) / 2
    return x.reshape(v, f, 3, *x.shape[-2:]).permute(0, 1, 3, 4, 2).cpu().numpy()


@torch.no_grad()
def sample_pair(
    model,
    cameras: PairCameras,
    caption: str,
    *,
    height: int,
    width: int,
    steps: int = 25,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    generator: torch.Generator | None = None,
    fixed_video: int | None = None,
    fixed_latents: Tensor | None = None,
    cross_view: bool = True,
    bias_seed: int = 0,
) -> Tensor:  # [2, C, F, h, w] scaled latents
    """DDIM sampling of a pair through :class:`~cvd.pipeline.CVDPipeline` (see the module docstring).
    ``fixed_latents`` [C, F, h, w] are the scaled ground-truth latents of ``fixed_video``. Noise is drawn on the CPU
    from ``generator`` (reproducible on any device); ``bias_seed`` seeds the pipeline's other draws (the
    pseudo-line orientations of frames without a baseline). ``guidance_scale <= 1``: the conditional prediction
    alone."""
    from diffusers import DDIMScheduler

    if cameras.K.shape[0] != 2 or cameras.world_from_cam.shape[0] != 2 or cameras.K.shape[:2] != cameras.world_from_cam.shape[:2]:
        raise ValueError(
            f"a pair needs K [2, F, 3, 3] and world_from_cam [2, F, 4, 4], got {tuple(cameras.K.shape)} "
            f"{tuple(cameras.world_from_cam.shape)}"
        )
    if (fixed_video is None) != (fixed_latents is None):
        raise ValueError("fixed_video and fixed_latents go together")
    cfg = model.config
    shape = (2, cfg.unet.in_channels, cameras.K.shape[1], height // cfg.vae_scale_factor, width // cfg.vae_scale_factor)
    noise = torch.randn(shape, generator=generator)  # [2, C, F, h, w]
    if fixed_video is not None:
        noise[fixed_video] = torch.randn(shape[1:], generator=generator)  # the fixed partner's own eps
    pipe = CVDPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        caption,
        cameras.world_from_cam,
        cameras.K,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        pairing="exhaustive",
        scheduler=DDIMScheduler.from_config(model.scheduler.config),
        seed=bias_seed,
        latents=noise,
        fixed_latents=None if fixed_video is None else {fixed_video: fixed_latents},
        max_rows_per_call=None,
        output_type="latent",
        cross_view=cross_view,
    ).frames


@torch.no_grad()
def toy_consistency(
    model,
    held_out,
    *,
    num_pairs: int = 8,
    steps: int = 25,
    guidance_scale: float = 1.0,
    seed: int = 1234,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    return_frames: bool = False,
    progress: bool = False,
) -> dict:
    """The toy consistency measure over held-out clips (a :class:`~cvd.training.cache.ClipCache`): pair ``i``
    takes clip ``i mod N``, video 0 as the fixed ground-truth partner and video ``1 + (i // N) mod (V-1)`` as
    the target. Returns means and per-pair rows of PSNR/SSIM of the target against its ground truth for
    ``partner`` (generated next to the fixed partner), ``alone`` (the same noise, cross-view attention off) and
    ``autoencoder`` (the ground truth's reconstruction), each over all frames and over frames 1.. ."""
    from tqdm.auto import tqdm

    from cvd.training.datasets import fit_clip_size

    cfg = model.config
    F = num_frames or cfg.num_frames
    H = height or cfg.height_px
    W = width or cfg.width_px
    if held_out.num_videos < 2:
        raise ValueError(f"{held_out.path}: the toy measure needs clips of at least 2 videos")
    rows, sheets = [], []
    t0 = time.perf_counter()
    for i in tqdm(range(num_pairs), desc="toy measure", disable=not progress, leave=False):
        clip = i % held_out.num_clips
        target = 1 + (i // held_out.num_clips) % (held_out.num_videos - 1)
        frames = np.stack([held_out.video(clip, 0)[:F], held_out.video(clip, target)[:F]])  # [2, F, h, w, 3]
        K = held_out.K[clip, [0, target], :F]
        frames, K = fit_clip_size(frames, K, H, W)
        cams = PairCameras(K=torch.from_numpy(np.ascontiguousarray(K)),
                           world_from_cam=torch.from_numpy(held_out.world_from_cam[clip, [0, target], :F].copy()))
        z = encode_frames(model, frames)  # [2, C, F, h, w]
        out = {}
        for name, cross in (("partner", True), ("alone", False)):
            gen = torch.Generator().manual_seed(seed + i)
            lat = sample_pair(model, cams, held_out.captions[clip], height=H, width=W, steps=steps,
                              guidance_scale=guidance_scale, generator=gen, fixed_video=0, fixed_latents=z[0],
                              cross_view=cross, bias_seed=seed + i)
            out[name] = decode_latents(model, lat[1:2])[0]  # [F, H, W, 3]
        out["autoencoder"] = decode_latents(model, z[1:2])[0]
        gt = torch.from_numpy(frames[1]).permute(0, 3, 1, 2).float() / 255.0  # [F, 3, H, W]
        row = {"clip": clip, "partner_video": 0, "target_video": target, "caption": held_out.captions[clip]}
        for name, pred in out.items():
            p = torch.from_numpy(pred).permute(0, 3, 1, 2).float()
            ps, ss = psnr(p, gt), ssim(p, gt)
            row[f"{name}_psnr_db"] = float(ps.mean())
            row[f"{name}_ssim"] = float(ss.mean())
            row[f"{name}_psnr_db_later"] = float(ps[1:].mean()) if F > 1 else float(ps.mean())
            row[f"{name}_ssim_later"] = float(ss[1:].mean()) if F > 1 else float(ss.mean())
        rows.append(row)
        if return_frames:
            sheets.append({"ground_truth": frames.astype(np.float32) / 255.0, **out})
    keys = [k for k in rows[0] if k.endswith(("_db", "_ssim", "_later"))]
    result = {
        "pairs": len(rows),
        "steps": steps,
        "guidance_scale": guidance_scale,
        "frames": F,
        "size": [H, W],
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if return_frames:
        result["frames_out"] = sheets
    return result
