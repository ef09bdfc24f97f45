"""Pretraining the small autoencoder of a model trained from scratch, and measuring it.

The autoencoder (diffusers ``AutoencoderKL`` of the model config) learns to reconstruct training frames: L1 + MSE
on pixels in [-1, 1] plus a small KL term on the latent distribution, Adam with cosine decay. Afterwards its latent
scale is set so encoded latents have unit standard deviation (``scaling_factor`` = 1 / std, as SD1.5's 0.18215).

torch and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from cvd.training.config import AutoencoderSection
from cvd.training.metrics import psnr

log = logging.getLogger(__name__)

__all__ = ["frames_to_tensor", "latent_std", "reconstruction_psnr", "train_autoencoder"]


def frames_to_tensor(frames: np.ndarray | Tensor, device: torch.device | str) -> Tensor:  # [N, 3, H, W] in [-1, 1]
    """uint8 ``[N, H, W, 3]`` frames as a float tensor in [-1, 1], channels first."""
    t = torch.as_tensor(frames).to(device)
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_autoencoder(
    vae: nn.Module,
    frames: Callable[[int], Iterator[np.ndarray]],
    config: AutoencoderSection,
    *,
    device: torch.device | str,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Train ``vae`` in place. ``frames(seed)`` yields uint8 ``[N, H, W, 3]`` batches of training frames (any N;
    they are regrouped into ``config.batch_frames``). Returns the loss log (one row per step)."""
    from tqdm.auto import tqdm

    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / max(config.steps, 1)))
    )
    gen = torch.Generator().manual_seed(seed)
    stream = _regroup(frames(seed), config.batch_frames)
    rows: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, desc="autoencoder", disable=not progress, leave=False)
    for step in range(1, config.steps + 1):
        x = frames_to_tensor(next(stream), device)  # [N, 3, H, W]
        if config.crop_px is not None:
            x = _random_crops(x, config.crop_px, gen)  # [N, 3, c, c]
        post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=gen).to(device)
        z = post.mean + post.std * eps
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        l2 = (rec - x).square().mean()
        kl = post.kl().mean() / post.mean[0].numel()
        loss = l1 + l2 + config.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            p = psnr((rec.clamp(-1, 1) + 1) / 2, (x + 1) / 2).mean().item()
        rows.append({"step": step, "loss": loss.item(), "l1": l1.item(), "psnr_db": p,
                     "seconds": time.perf_counter() - t0})
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{p:.1f}")
        if config.max_minutes is not None and time.perf_counter() - t0 > 60 * config.max_minutes:
            log.info("autoencoder: stopped at step %d after %.1f min (max_minutes)", step, config.max_minutes)
            break
    bar.close()
    vae.eval().requires_grad_(False)
    return rows


def _random_crops(x: Tensor, size: int, gen: torch.Generator) -> Tensor:  # [N, 3, H, W] -> [N, 3, s, s]
    n, _, h, w = x.shape
    if size > min(h, w):
        raise ValueError(f"autoencoder.crop_px={size} is larger than the frames ({h}x{w})")
    ys = torch.randint(0, h - size + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (n,), generator=gen).tolist()
    return torch.stack([x[i, :, y : y + size, xx : xx + size] for i, (y, xx) in enumerate(zip(ys, xs))])


def _regroup(batches: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    count = 0
    for b in batches:
        buf.append(b)
        count += len(b)
        while count >= n:
            allf = np.concatenate(buf)
            yield allf[:n]
            rest = allf[n:]
            buf, count = ([rest] if len(rest) else []), len(rest)


@torch.no_grad()
def latent_std(vae: nn.Module, frames: np.ndarray, device: torch.device | str, chunk: int = 32) -> float:
    """Standard deviation of the latent means of ``frames`` [N, H, W, 3] uint8 (unscaled)."""
    zs = [vae.encode(frames_to_tensor(frames[i : i + chunk], device)).latent_dist.mean.float().cpu()
          for i in range(0, len(frames), chunk)]
    return float(torch.cat(zs).std())


@torch.no_grad()
def reconstruction_psnr(vae: nn.Module, frames: np.ndarray, device: torch.device | str, chunk: int = 32) -> dict:
    """Mean PSNR/SSIM of ``decode(encode(frames))`` against ``frames`` [N, H, W, 3] uint8 (latent means)."""
    from cvd.training.metrics import ssim

    ps, ss = [], []
    for i in range(0, len(frames), chunk):
        x = frames_to_tensor(frames[i : i + chunk], device)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        a, b = (rec + 1) / 2, (x + 1) / 2
        ps.append(psnr(a, b).cpu())
        ss.append(ssim(a.float(), b.float()).cpu())
    return {"psnr_db": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean()), "frames": len(frames)}
