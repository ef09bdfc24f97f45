"""Pseudo pairs from monocular videos: a per-frame homography that grows linearly from identity, the warped copy
and its validity mask.

Convention: a homography ``H`` maps pixel coordinates of the source (query) image to pixel coordinates of the
warped (partner) image, pixel centres at +0.5 (pixel ``(u, v)`` has centre ``(u+0.5, v+0.5)``), so the warped
image is ``B(x) = A(H^{-1} x)`` and a query pixel ``p`` of A shows what B shows at ``H p`` -- the point
:func:`cvd.geometry.homography_bias` draws its pseudo-epipolar line through.

:func:`warp_frames` is the fast warp (``grid_sample``); :func:`warp_frames_reference` the per-pixel loop it is
tested against. numpy and torch; must never import ``cvd_scene``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cvd.training.config import HomographyWarpConfig

__all__ = [
    "HomographyParams",
    "homography_from_params",
    "homography_sequence",
    "min_pool_mask",
    "sample_params",
    "warp_frames",
    "warp_frames_reference",
]


class HomographyParams(dict):
    """End values of the warp: ``tx, ty`` (fractions of the image side), ``rotation_rad``, ``log_scale``,
    ``shear_x, shear_y``, ``px, py`` (projective terms per half image side)."""


def sample_params(rng: np.random.Generator, config: HomographyWarpConfig) -> HomographyParams:
    """End values of one warp, each uniform in its configured range (scale log-uniform)."""
    def u(m: float) -> float:
        return float(rng.uniform(-m, m)) if m > 0 else 0.0

    return HomographyParams(
        tx=u(config.translation_max_frac),
        ty=u(config.translation_max_frac),
        rotation_rad=math.radians(u(config.rotation_max_deg)),
        log_scale=u(math.log1p(config.scale_max)),
        shear_x=u(config.shear_max),
        shear_y=u(config.shear_max),
        px=u(config.perspective_max),
        py=u(config.perspective_max),
    )


def homography_from_params(params: dict, t: float, height: int, width: int) -> np.ndarray:  # [3, 3]
    """The homography at fraction ``t`` in [0, 1] of the way from identity to ``params``, acting about the image
    centre: every parameter is scaled by ``t`` (so ``t = 0`` is the identity). Maps source pixels to warped
    pixels."""
    half = 0.5 * min(height, width)
    c = np.array([[1.0, 0.0, width / 2.0], [0.0, 1.0, height / 2.0], [0.0, 0.0, 1.0]])
    n = np.diag([half, half, 1.0])  # normalised coords (centre 0, half side 1) -> centred pixels
    a = t * params["rotation_rad"]
    s = math.exp(t * params["log_scale"])
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shear = np.array([[1.0, t * params["shear_x"]], [t * params["shear_y"], 1.0]])
    M = np.eye(3)
    M[:2, :2] = s * rot @ shear
    M[0, 2] = t * params["tx"] * width / half
    M[1, 2] = t * params["ty"] * height / half
    P = np.eye(3)
    P[2, 0] = t * params["px"]
    P[2, 1] = t * params["py"]
    H_norm = P @ M  # in normalised coordinates
    H = c @ n @ H_norm @ np.linalg.inv(n) @ np.linalg.inv(c)
    return H / H[2, 2]


def homography_sequence(params: dict, num_frames: int, height: int, width: int) -> np.ndarray:  # [F, 3, 3]
    """One homography per frame, growing linearly from identity at frame 0 to ``params`` at the last frame."""
    ts = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    return np.stack([homography_from_params(params, float(t), height, width) for t in ts])


def _source_coords(H: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:  # [N, H, W] x, y
    """Source pixel coordinates ``H^{-1} x`` of every warped pixel centre (float64)."""
    Hinv = torch.linalg.inv(H.to(torch.float64))  # [N, 3, 3]
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=H.device) + 0.5,
        torch.arange(width, dtype=torch.float64, device=H.device) + 0.5,
        indexing="ij",
    )
    pts = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)  # [H*W, 3]
    src = pts @ Hinv.transpose(-1, -2)  # [N, H*W, 3]
    w = src[..., 2]
    ok = w > 1e-12
    w = torch.where(ok, w, torch.ones_like(w))
    x = torch.where(ok, src[..., 0] / w, torch.full_like(w, -1e9))
    y = torch.where(ok, src[..., 1] / w, torch.full_like(w, -1e9))
    return x.reshape(-1, height, width), y.reshape(-1, height, width)


def warp_frames(
    frames: Tensor,  # [N, C, H, W] float
    H: Tensor,  # [N, 3, 3] source pixels -> warped pixels
) -> tuple[Tensor, Tensor]:  # [N, C, H, W] warped, [N, H, W] bool valid
    """``B(x) = A(H^{-1} x)`` with bilinear sampling; a pixel is valid when its source point lies inside the
    source image (pixels outside are 0)."""
    if frames.ndim != 4 or H.shape != (frames.shape[0], 3, 3):
        raise ValueError(f"frames must be [N, C, H, W] and H [N, 3, 3], got {tuple(frames.shape)} {tuple(H.shape)}")
    h, w = frames.shape[-2:]
    x, y = _source_coords(H, h, w)  # [N, H, W]
    valid = (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    grid = torch.stack([2.0 * x / w - 1.0, 2.0 * y / h - 1.0], -1).to(frames.dtype)  # [N, H, W, 2]
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out * valid[:, None].to(out.dtype)
    return out, valid


def warp_frames_reference(frames: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
    """Slow reference of :func:`warp_frames`: a loop over warped pixels, bilinear interpolation written out
    (source pixel centres at +0.5, clamped to the border), float64."""
    n, c, h, w = frames.shape
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    valid = torch.zeros(n, h, w, dtype=torch.bool)
    src = frames.double()
    for i in range(n):
        Hinv = torch.linalg.inv(H[i].double())
        for v in range(h):
            for u in range(w):
                p = Hinv @ torch.tensor([u + 0.5, v + 0.5, 1.0], dtype=torch.float64)
                if p[2] <= 1e-12:
                    continue
                x, y = float(p[0] / p[2]), float(p[1] / p[2])
                if not (0 <= x <= w and 0 <= y <= h):
                    continue
                valid[i, v, u] = True
                fx, fy = min(max(x - 0.5, 0.0), w - 1.0), min(max(y - 0.5, 0.0), h - 1.0)
                x0, y0 = math.floor(fx), math.floor(fy)
                x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                ax, ay = fx - x0, fy - y0
                out[i, :, v, u] = ((1 - ax) * (1 - ay) * src[i, :, y0, x0] + ax * (1 - ay) * src[i, :, y0, x1]
                                   + (1 - ax) * ay * src[i, :, y1, x0] + ax * ay * src[i, :, y1, x1])
    return out.to(frames.dtype), valid


def min_pool_mask(valid: Tensor, factor: int) -> Tensor:  # [..., H, W] bool -> [..., H/f, W/f] bool
    """A latent cell is valid only when every pixel it covers is (min-pooling by ``factor``)."""
    *lead, h, w = valid.shape
    if h % factor or w % factor:
        raise ValueError(f"mask size {h}x{w} is not a multiple of {factor}")
    v = valid.reshape(*lead, h // factor, factor, w // factor, factor)  # [..., h, f, w, f]
    return v.all(dim=-1).all(dim=-2)
