"""A minimal pair sampler and the toy consistency measure of a (small) trained model.

:func:`sample_pair` runs DDIM (the model's scheduler, eta 0) for two videos that are each other's cross-view
partner, one UNet call per step on ``[uncond_A, cond_A, uncond_B, cond_B]`` (or ``[A, B]`` without guidance).
Either video can be *fixed*: its latents are replaced at every step by the ground truth noised to that step
(``sqrt(abar_t) z + sqrt(1 - abar_t) eps`` with one fixed ``eps``), so the other video is generated next to a
known partner. With ``cross_view=False`` the partner is ignored (no cross-view attention: each video alone).

:func:`toy_consistency` is the measure that works even for blurry small models: over held-out plans, give the
sampler one ground-truth video as the fixed partner and score how close the generated partner video is to its own
ground-truth render (PSNR/SSIM, all frames and frames after the shared first one), next to the same sampling
without cross-view attention and the autoencoder's reconstruction (the ceiling).

This is the training side's own loop (the N-video ``CVDPipeline`` is separate); it reuses the model's UNet call,
pose encoder, epipolar bias and scheduler. torch and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cvd.context import epipolar_biases, guided_rows
from cvd.geometry import model_poses, plucker_embedding
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
    """DDIM sampling of a pair (see the module docstring). ``fixed_latents`` [C, F, h, w] are the scaled
    ground-truth latents of ``fixed_video``. Noise is drawn on the CPU from ``generator`` (reproducible on any
    device)."""
    from diffusers import DDIMScheduler

    unet = model.unet
    device, dtype = unet.device, unet.dtype
    cfg = model.config
    K = cameras.K.to(device=device, dtype=torch.float64)
    c2w = cameras.world_from_cam.to(device=device, dtype=torch.float64)
    if K.shape[0] != 2 or c2w.shape[0] != 2 or K.shape[:2] != c2w.shape[:2]:
        raise ValueError(f"a pair needs K [2, F, 3, 3] and world_from_cam [2, F, 4, 4], got {tuple(K.shape)} {tuple(c2w.shape)}")
    if (fixed_video is None) != (fixed_latents is None):
        raise ValueError("fixed_video and fixed_latents go together")
    num_frames = K.shape[1]
    scale = cfg.vae_scale_factor
    lat_hw = (height // scale, width // scale)
    guided = guidance_scale != 1.0
    branches = 2 if guided else 1
    row_video, row_branch = guided_rows(2, branches)

    # 1. Text: the empty caption is the unconditional branch (what caption dropout trained).
    texts = model.encode_text([negative_prompt, caption] if guided else [caption]).to(dtype)  # [branches, L, D]
    text_rows = texts[torch.as_tensor(row_branch, device=texts.device)]  # [B, L, D]
    # 2. Cameras: pose features once; the epipolar bias once per level.
    rays = plucker_embedding(K.float(), relative_to_first(c2w, cfg.model_units_per_metre).float(), height, width)
    feats = [f.to(dtype) for f in model.pose_encoder(rays.to(model.pose_encoder.dtype))]
    partner = None
    bias = None
    if cross_view and cfg.cvsm.enabled:
        partner = [1, 0]
        grids = unet.level_grids(lat_hw)
        bias = epipolar_biases(K, c2w, partner, image_hw=(height, width), grids=grids, config=cfg.epipolar_bias,
                               generator=torch.Generator().manual_seed(bias_seed))
    context = unet.make_context(row_video=row_video, row_branch=row_branch, partner_video=partner,
                                num_frames=num_frames, bias=bias, pose_features=feats)
    # 3. DDIM.
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps, device=device)
    shape = (2, cfg.unet.in_channels, num_frames, *lat_hw)
    latents = torch.randn(shape, generator=generator).to(device)  # [2, C, F, h, w]
    fixed_eps = torch.randn(shape[1:], generator=generator).to(device) if fixed_video is not None else None
    for t in sched.timesteps:
        if fixed_video is not None:
            latents[fixed_video] = sched.add_noise(fixed_latents.to(device)[None], fixed_eps[None], t.reshape(1))[0]
        rows = latents[torch.as_tensor(row_video, device=device)].to(dtype)  # [B, C, F, h, w]
        tt = t.to(device).expand(len(row_video))
        eps = unet(rows, tt, text_rows, context).float()  # [B, C, F, h, w]
        eps = eps.view(2, branches, *shape[1:])
        eps = eps[:, 0] + guidance_scale * (eps[:, 1] - eps[:, 0]) if guided else eps[:, 0]
        latents = sched.step(eps, t, latents).prev_sample
    if fixed_video is not None:
        latents[fixed_video] = fixed_latents.to(device)
    return latents


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
