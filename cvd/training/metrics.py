"""Image similarity for the toy measures: PSNR and SSIM (Gaussian window 11, sigma 1.5, the usual constants),
batched in torch, images in [0, 1].

torch only; must never import ``cvd_scene``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim"]


def psnr(a: Tensor, b: Tensor) -> Tensor:  # [N, C, H, W] x2 in [0, 1] -> [N] dB
    """Peak signal-to-noise ratio per image (data range 1), capped at 100 dB for identical images."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"psnr needs two [N, C, H, W] images of one shape, got {tuple(a.shape)} {tuple(b.shape)}")
    mse = (a.float() - b.float()).square().flatten(1).mean(1)
    return (-10.0 * torch.log10(mse.clamp_min(1e-10))).clamp_max(100.0)


def _gaussian(size: int, sigma: float, device, dtype) -> Tensor:  # [size]
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:  # [N, C, H, W] x2 -> [N]
    """Structural similarity per image, averaged over channels and the valid (unpadded) window positions."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two [N, C, H, W] images of one shape, got {tuple(a.shape)} {tuple(b.shape)}")
    c, h, w = a.shape[1:]
    if h < window or w < window:
        raise ValueError(f"ssim needs images of at least {window}x{window}, got {h}x{w}")
    a, b = a.double(), b.double()
    g = _gaussian(window, sigma, a.device, a.dtype)
    kx = g.view(1, 1, 1, window).expand(c, 1, 1, window)
    ky = g.view(1, 1, window, 1).expand(c, 1, window, 1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1).float()
