"""A Gaussian rasteriser that runs on any device, with gsplat's functional API and maths.

:func:`rasterize` decides the path by the tensors' device: CUDA tensors go to ``gsplat.rasterization`` (1.4.0);
anything else goes to the pure-torch rasteriser here, which follows the same maths:

* EWA projection of each 3D Gaussian with gsplat's Jacobian (view-frustum clamp at 1.3x the half field of view)
  and its 0.3 px low-pass dilation of the 2D covariance; a 3-sigma radius for culling (``radii``);
* tile-based binning (one depth sort of the visible Gaussians, stable by tile), tiles composited in chunks of
  their depth-sorted lists, front to back, alpha = min(0.999, o * exp(-sigma)), skipped below 1/255, each pixel
  stopping before the Gaussian that would bring its transmittance to 1e-4 or less (gsplat's exclusive rule);
  a tile stops being processed when all its pixels have stopped (early termination);
* a hand-written backward (the compositing gradients in closed form, evaluated with batched matrix products).

The pure-torch path bins each Gaussian over the pixels where its alpha can reach 1/255 (an opacity-aware
ellipse box), so a pixel receives every Gaussian whose alpha there is at least 1/255. gsplat additionally cuts each
Gaussian at the 16-pixel tiles its 3-sigma square touches; the two agree except on the faint fringe of large
opaque Gaussians (alpha < 0.011 there).

Cameras: ``viewmats`` are world-to-camera 4x4 with OpenCV axes (+x right, +y down, +z forward), ``Ks`` pinhole
intrinsics in pixels with pixel centres at +0.5.

Must not import nerfstudio (benchmarks import this module without it); gsplat is imported only on the CUDA path.
Never moves tensors between devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ALPHA_MAX = 0.999
"""Upper clamp of a Gaussian's alpha at a pixel (gsplat 1.4.0's kernels)."""
ALPHA_MIN = 1.0 / 255.0
"""A Gaussian whose alpha at a pixel is below this is skipped there."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to this or below (exclusive)."""

_LOG_ALPHA_MIN = math.log(ALPHA_MIN)

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
Backend = Literal["auto", "gsplat", "torch"]


# ----------------------------------------------------------------------------------------------- public API


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, not necessarily normalised
    scales: Tensor,  # [N, 3] linear standard deviations
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, D] | [C, N, D] | SH coefficients [N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    absgrad: bool = False,
    tile_size: int | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render Gaussians into ``C`` cameras; returns ``(render [C, H, W, X], alpha [C, H, W, 1], meta)``.

    ``X`` is ``D`` for ``RGB``, 1 for ``D``/``ED`` and ``D + 1`` for ``RGB+D``/``RGB+ED`` (depth last): ``D`` is
    the accumulated z-depth, ``ED`` the expected z-depth (accumulated depth / alpha). With ``sh_degree`` the
    colours are SH coefficients ``[N, K, 3]`` evaluated towards each camera (colour = SH + 0.5, clamped at 0).
    ``meta`` holds gsplat's keys (``radii``, ``means2d``, ``depths``, ``conics``, ``width``, ``height``,
    ``n_cameras``, ...) so gsplat's densification strategies work on either path; ``means2d`` receives
    ``.absgrad`` in the backward pass when ``absgrad`` is set (on the CPU path accumulated per tile).

    ``backend``: ``auto`` picks gsplat for CUDA tensors and the pure-torch rasteriser otherwise; ``torch``
    forces the pure-torch path on any device (for comparisons); ``gsplat`` requires CUDA tensors.
    ``tile_size`` defaults to 16 for gsplat and 8 for the pure-torch path.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds)
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"render_mode must be RGB, D, ED, RGB+D or RGB+ED, got {render_mode!r}")
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    if backend == "gsplat":
        if not means.is_cuda:
            raise ValueError(
                f"backend='gsplat' needs CUDA tensors, got tensors on {means.device}; use backend='auto' or 'torch'"
            )
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
            sh_degree, backgrounds, render_mode, absgrad, tile_size or 16,
        )  # fmt: skip
    if backend != "torch":
        raise ValueError(f"backend must be auto, gsplat or torch, got {backend!r}")
    return _rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
        sh_degree, backgrounds, render_mode, absgrad, tile_size or 8,
    )  # fmt: skip


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds):
    for name, t in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities),
                    ("colors", colors), ("viewmats", viewmats), ("Ks", Ks)):  # fmt: skip
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != means.device:
            raise ValueError(f"all tensors must be on one device: means on {means.device}, {name} on {t.device}")
    N = means.shape[0]
    if means.shape != (N, 3):
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    if quats.shape != (N, 4):
        raise ValueError(f"quats must be [N, 4] (w, x, y, z), got {tuple(quats.shape)}")
    if scales.shape != (N, 3):
        raise ValueError(f"scales must be [N, 3], got {tuple(scales.shape)}")
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be [N], got {tuple(opacities.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if Ks.shape != (C, 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] with C={C}, got {tuple(Ks.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    if sh_degree is None:
        if not (colors.shape[:-1] == (N,) or colors.shape[:-1] == (C, N)):
            raise ValueError(f"colors must be [N, D] or [C, N, D] with N={N} C={C}, got {tuple(colors.shape)}")
    else:
        if not 0 <= int(sh_degree) <= 3:
            raise ValueError(f"sh_degree must be 0..3 or None, got {sh_degree}")
        if colors.ndim != 3 or colors.shape[0] != N or colors.shape[2] != 3 or colors.shape[1] < (sh_degree + 1) ** 2:
            raise ValueError(
                f"with sh_degree={sh_degree} colors must be SH coefficients [N, K>={(sh_degree + 1) ** 2}, 3], "
                f"got {tuple(colors.shape)}"
            )
    if backgrounds is not None and (backgrounds.ndim != 2 or backgrounds.shape[0] != C):
        raise ValueError(f"backgrounds must be [C, D] with C={C}, got {tuple(backgrounds.shape)}")
    return C, N


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d, sh_degree,
    backgrounds, render_mode, absgrad, tile_size,
):  # fmt: skip
    from gsplat import rasterization

    render, alpha, meta = rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=int(width),
        height=int(height),
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=backgrounds,
        render_mode=render_mode,
        absgrad=absgrad,
        rasterize_mode="classic",
    )
    meta["backend"] = "gsplat"
    return render, alpha, meta


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d, sh_degree,
    backgrounds, render_mode, absgrad, tile_size,
):  # fmt: skip
    width, height = int(width), int(height)
    C, N = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane
    )  # [C, N], [C, N, 2], [C, N], [C, N, 3]
    if sh_degree is not None:
        campos = camera_centres(viewmats)  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        rgb = eval_sh(sh_degree, dirs, colors[None, :, : (sh_degree + 1) ** 2, :])  # [C, N, 3]
        feats = torch.clamp_min(rgb + 0.5, 0.0)  # [C, N, 3]
    else:
        feats = colors.expand(C, N, colors.shape[-1]) if colors.ndim == 2 else colors  # [C, N, D]
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)  # [C, N, D + 1]
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)  # [C, D + 1]
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]  # [C, N, 1]
        backgrounds = None if backgrounds is None else backgrounds.new_zeros(C, 1)
    opac = opacities[None, :].expand(C, N)  # [C, N]
    render, alpha = composite(
        means2d, conics, feats, opac, radii, depths, width, height, tile_size=tile_size, backgrounds=backgrounds,
        absgrad=absgrad,
    )  # [C, H, W, X], [C, H, W, 1]
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "tile_width": math.ceil(width / tile_size),
        "tile_height": math.ceil(height / tile_size),
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "backend": "torch",
    }
    return render, alpha, meta


# ----------------------------------------------------------------------------------------------- projection


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (w, x, y, z), normalised first."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )  # fmt: skip
    return R.reshape(q.shape[:-1] + (3, 3))  # [..., 3, 3]


def camera_centres(viewmats: Tensor) -> Tensor:
    """Camera centres [C, 3] in the world of world-to-camera matrices [C, 4, 4] (rigid)."""
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    return -(R.transpose(1, 2) @ t[..., None])[..., 0]  # [C, 3]


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection of 3D Gaussians into pinhole cameras, as gsplat's ``fully_fused_projection``.

    Returns ``radii`` [C, N] int32 (3-sigma radius in pixels, 0 when culled: outside the depth range, degenerate,
    or its square not touching the image), ``means2d`` [C, N, 2], ``depths`` [C, N] (camera z) and ``conics``
    [C, N, 3] (the upper triangle a, b, c of the inverse of the dilated 2D covariance). Culled entries of
    ``means2d`` and ``conics`` are 0. The covariance work is done only for Gaussians a conservative bound on
    their radius does not cull.
    """
    C, N = viewmats.shape[0], means.shape[0]
    Rv = viewmats[:, :3, :3]  # [C, 3, 3]
    tv = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", Rv, means) + tv[:, None, :]  # [C, N, 3]
    depths = means_c[..., 2]  # [C, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # [C, 1]
    # The Jacobian is evaluated at the mean clamped to 1.3x the half field of view (gsplat's guard).
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)  # [C, 1]
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    with torch.no_grad():
        x, y, z = means_c.detach().unbind(-1)  # [C, N]
        in_depth = (z > near_plane) & (z < far_plane)
        zs = torch.where(in_depth, z, torch.ones_like(z))
        rx = torch.maximum(torch.minimum(x / zs, lim_x_pos), -lim_x_neg)
        ry = torch.maximum(torch.minimum(y / zs, lim_y_pos), -lim_y_neg)
        # ||J||_F^2 * max scale^2 + dilation bounds the largest eigenvalue of the 2D covariance.
        j2 = (fx / zs) ** 2 * (1 + rx * rx) + (fy / zs) ** 2 * (1 + ry * ry)
        r_bound = 3.0 * torch.sqrt(j2 * scales.detach().amax(-1)[None, :] ** 2 + eps2d + 0.1) + 1.0
        u, v = fx * x / zs + cx, fy * y / zs + cy
        candidate = in_depth & (u + r_bound > 0) & (u - r_bound < width) & (v + r_bound > 0) & (v - r_bound < height)
        cand = torch.nonzero(candidate.reshape(-1)).squeeze(1)  # [S] flat camera * N + gaussian
        ci, ni = cand // N, cand % N
    mc = means_c.reshape(-1, 3)[cand]  # [S, 3]
    R = quat_to_rotmat(quats[ni])  # [S, 3, 3]
    Mc = Rv[ci] @ (R * scales[ni][:, None, :])  # [S, 3, 3] camera-frame R diag(s)
    x, y, z = mc.unbind(-1)  # [S]
    fx, fy, cx, cy = fx[ci, 0], fy[ci, 0], cx[ci, 0], cy[ci, 0]  # [S]
    tx = z * torch.maximum(torch.minimum(x / z, lim_x_pos[ci, 0]), -lim_x_neg[ci, 0])  # [S]
    ty = z * torch.maximum(torch.minimum(y / z, lim_y_pos[ci, 0]), -lim_y_neg[ci, 0])
    # Rows of J Mc, with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    row0 = (fx / z)[:, None] * Mc[:, 0, :] - (fx * tx / (z * z))[:, None] * Mc[:, 2, :]  # [S, 3]
    row1 = (fy / z)[:, None] * Mc[:, 1, :] - (fy * ty / (z * z))[:, None] * Mc[:, 2, :]  # [S, 3]
    a = (row0 * row0).sum(-1) + eps2d  # [S] dilated 2D covariance [[a, b], [b, c]]
    b = (row0 * row1).sum(-1)
    c = (row1 * row1).sum(-1) + eps2d
    det = a * c - b * b
    det_safe = det.clamp(min=1e-10)
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [S, 3]
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [S, 2]
    with torch.no_grad():
        half = 0.5 * (a + c)
        v1 = half + torch.sqrt(torch.clamp(half * half - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(v1))  # [S]
        u, v = mean2d.unbind(-1)
        inside = (u + radius > 0) & (u - radius < width) & (v + radius > 0) & (v - radius < height)
        keep = (det > 0) & inside & torch.isfinite(radius)
        radii = torch.zeros(C * N, dtype=torch.int32, device=means.device)
        radii[cand] = torch.where(keep, radius, torch.zeros_like(radius)).to(torch.int32)
    means2d = means_c.new_zeros(C * N, 2).index_copy(0, cand, mean2d).reshape(C, N, 2)
    conics = means_c.new_zeros(C * N, 3).index_copy(0, cand, conic).reshape(C, N, 3)
    return radii.reshape(C, N), means2d, depths, conics


# ------------------------------------------------------------------------------------ spherical harmonics

_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)  # fmt: skip


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis [..., (degree+1)^2] at directions [..., 3] (normalised here), in the 3DGS sign convention."""
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, _SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _SH_C2[0] * x * y,
            _SH_C2[1] * y * z,
            _SH_C2[2] * (2.0 * zz - xx - yy),
            _SH_C2[3] * x * z,
            _SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _SH_C3[0] * y * (3.0 * xx - yy),
            _SH_C3[1] * x * y * z,
            _SH_C3[2] * y * (4.0 * zz - xx - yy),
            _SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _SH_C3[4] * x * (4.0 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy),
            _SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)  # [..., (degree+1)^2]


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour [..., 3] of SH coefficients [..., K, 3] (K >= (degree+1)^2) seen along ``dirs`` [..., 3]."""
    basis = sh_basis(degree, dirs)  # [..., B]
    return (basis[..., None] * coeffs[..., : basis.shape[-1], :]).sum(-2)  # [..., 3]


# -------------------------------------------------------------------------------------------------- binning


@dataclass
class TileBins:
    """Which Gaussians each tile composites, front to back."""

    vis_ids: Tensor
    """[V] int64 flat index ``camera * N + gaussian`` of every Gaussian that reaches a pixel."""
    pair_src: Tensor
    """[M] int64 index into ``vis_ids`` of every (tile, Gaussian) pair, grouped by tile, each tile's run in
    increasing depth."""
    pair_tiles: Tensor
    """[M] int64 global tile index ``camera * tiles_y * tiles_x + ty * tiles_x + tx`` of every pair."""
    tile_start: Tensor
    """[C * tiles_y * tiles_x] int64 offset of each tile's run in the pair arrays."""
    tile_count: Tensor
    """[C * tiles_y * tiles_x] int64 length of each tile's run."""
    tiles_x: int
    """Tiles per image row."""
    tiles_y: int
    """Tiles per image column."""
    tile_size: int
    """Tile edge in pixels."""


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int,
) -> TileBins:
    """Bin the visible Gaussians into tiles, each tile's list sorted by depth (one sort, then stable by tile).

    A Gaussian goes to every tile that holds a pixel centre where its alpha can reach 1/255: the bounding box of
    the ellipse ``sigma <= ln(255 * opacity)``.
    """
    C, N = radii.shape
    device = means2d.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    level = torch.log(255.0 * opacities.clamp_min(1e-12))  # [C, N] sigma cut-off where alpha = 1/255
    flat = torch.nonzero(((radii > 0) & (level > 0)).reshape(-1)).squeeze(1)  # [V] camera * N + gaussian
    m2 = means2d.reshape(-1, 2).index_select(0, flat).float()  # [V, 2]
    con = conics.reshape(-1, 3).index_select(0, flat).float()  # [V, 3]
    lev = level.reshape(-1).index_select(0, flat).float()  # [V]
    det = (con[:, 0] * con[:, 2] - con[:, 1] ** 2).clamp_min(1e-20)
    # Half-extents of the ellipse d^T conic d <= 2 * level: sqrt(2 * level * covariance diagonal).
    ext_x = torch.sqrt(2.0 * lev * con[:, 2] / det) * (1.0 + 1e-4) + 1e-3  # [V]
    ext_y = torch.sqrt(2.0 * lev * con[:, 0] / det) * (1.0 + 1e-4) + 1e-3
    # Pixel i (centre i + 0.5) is inside when |i + 0.5 - mean| <= extent.
    px0 = torch.ceil(m2[:, 0] - ext_x - 0.5).clamp(0, width - 1).long()
    px1 = torch.floor(m2[:, 0] + ext_x - 0.5).clamp(-1, width - 1).long()
    py0 = torch.ceil(m2[:, 1] - ext_y - 0.5).clamp(0, height - 1).long()
    py1 = torch.floor(m2[:, 1] + ext_y - 0.5).clamp(-1, height - 1).long()
    reaches = (px1 >= px0) & (py1 >= py0)
    keep = torch.nonzero(reaches).squeeze(1)
    flat, px0, px1, py0, py1 = flat[keep], px0[keep], px1[keep], py0[keep], py1[keep]
    # One depth sort (then a stable sort by camera when there are several): pairs are made front to back.
    order = torch.argsort(depths.reshape(-1).index_select(0, flat), stable=True)
    if C > 1:
        order = order[torch.argsort((flat // N)[order], stable=True)]
    flat, px0, px1, py0, py1 = flat[order], px0[order], px1[order], py0[order], py1[order]
    tx0, ty0 = px0 // tile_size, py0 // tile_size
    span_x = px1 // tile_size - tx0 + 1  # [V]
    counts = span_x * (py1 // tile_size - ty0 + 1)  # [V]
    first_tile = (flat // N) * n_tiles + ty0 * tiles_x + tx0  # [V]
    total = int(counts.sum())
    src = torch.repeat_interleave(torch.arange(len(flat), device=device), counts, output_size=total)  # [M]
    local = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts).index_select(0, src)
    sx = span_x.index_select(0, src)
    tiles = first_tile.index_select(0, src) + (local // sx) * tiles_x + local % sx  # [M]
    key = tiles.to(torch.int32) if C * n_tiles < 2**31 else tiles
    order = torch.sort(key, stable=True).indices
    pair_tiles = tiles.index_select(0, order)
    pair_src = src.index_select(0, order)
    tile_count = torch.bincount(pair_tiles, minlength=C * n_tiles)  # [C * T]
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return TileBins(flat, pair_src, pair_tiles, tile_start, tile_count, tiles_x, tiles_y, tile_size)


# ---------------------------------------------------------------------------------------------- compositing


def composite(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    *,
    tile_size: int = 8,
    backgrounds: Tensor | None = None,  # [C, D]
    absgrad: bool = False,
    chunk_sizes: tuple[int, ...] = (16,),
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of projected Gaussians (pure torch, hand-written backward).

    The pure-torch counterpart of gsplat's ``rasterize_to_pixels``: Gaussians with ``radii`` 0 are skipped,
    ``depths`` orders them. Each tile composites its depth-sorted list in chunks (sizes from ``chunk_sizes``,
    the last one repeated) and drops out once every pixel in it has stopped. Returns ``render`` [C, H, W, D]
    (background included) and ``alpha`` [C, H, W, 1].
    """
    bins = bin_gaussians(means2d.detach(), conics.detach(), opacities.detach(), radii, depths.detach(), width, height,
                         tile_size)  # fmt: skip
    if backgrounds is None:
        backgrounds = colors.new_zeros(colors.shape[0], colors.shape[-1])  # [C, D]
    render, alpha = _Composite.apply(
        means2d, conics, colors, opacities, backgrounds, bins, int(width), int(height), tuple(chunk_sizes), absgrad
    )
    return render, alpha


def _tile_basis(tile_size: int, like: Tensor) -> Tensor:
    """[P, 6] monomials (1, x, y, x^2, xy, y^2) of each pixel centre of a tile, relative to the tile centre."""
    r = torch.arange(tile_size, dtype=like.dtype, device=like.device) + 0.5 - 0.5 * tile_size
    ly, lx = torch.meshgrid(r, r, indexing="ij")  # [ts, ts] row-major: pixel p = row * ts + col
    lx, ly = lx.reshape(-1), ly.reshape(-1)  # [P]
    return torch.stack([torch.ones_like(lx), lx, ly, lx * lx, lx * ly, ly * ly], dim=-1)  # [P, 6]


def _chunks(bins: TileBins, chunk_sizes: tuple[int, ...]):
    """Yield ``(k0, size)`` chunk ranges along the depth-sorted lists until the longest list is covered."""
    k_max = int(bins.tile_count.max()) if bins.tile_count.numel() else 0
    k0, i = 0, 0
    while k0 < k_max:
        size = chunk_sizes[min(i, len(chunk_sizes) - 1)]
        yield k0, size
        k0 += size
        i += 1


class _Composite(torch.autograd.Function):
    """Tile compositing with the closed-form backward.

    For a pixel with Gaussians k = 0.. in depth order, weights w_k = alpha_k T_k (T_k the transmittance before
    k), colour C = sum_k w_k c_k + T_f bg and alpha A = 1 - T_f. With g = dL/dC, u_k = g . c_k and R_k the
    running sum of w_j u_j up to and including k:

        dL/dalpha_k = T_k u_k - (g . C - dL/dA T_f - R_k) / (1 - alpha_k)

    so the backward needs only the forward's outputs and one running sum, chunk by chunk, in forward order.
    log(alpha) is a quadratic in the pixel's tile-local coordinates, ``coef . (1, x, y, x^2, xy, y^2)``, so
    alphas come from one batched matrix product per chunk and their gradients go back through its transpose.
    Chunk tensors are laid out [tiles, pixels, Gaussians]: the depth scans run along the contiguous axis.
    """

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, bins, width, height, chunk_sizes, absgrad):
        C, N, D = colors.shape
        ts = bins.tile_size
        P = ts * ts
        n_tiles = bins.tiles_x * bins.tiles_y
        dtype, device = colors.dtype, colors.device
        vis, src = bins.vis_ids, bins.pair_src
        M = src.numel()
        # Per visible Gaussian, then per pair (mean relative to the tile centre).
        mean_v = means2d.reshape(-1, 2).index_select(0, vis)  # [V, 2]
        con_v = conics.reshape(-1, 3).index_select(0, vis)  # [V, 3]
        opa_v = opacities.reshape(-1).index_select(0, vis)  # [V]
        col_v = colors.reshape(-1, D).index_select(0, vis)  # [V, D]
        tile_in_img = bins.pair_tiles % n_tiles
        centre = torch.stack([tile_in_img % bins.tiles_x, tile_in_img // bins.tiles_x], -1).to(dtype) * ts + 0.5 * ts
        rel = mean_v.index_select(0, src) - centre  # [M, 2]
        mx, my = rel.unbind(-1)
        A, B, Cc = con_v.index_select(0, src).unbind(-1)  # [M] each
        log_o = torch.log(opa_v.clamp_min(1e-30)).index_select(0, src)
        # log(alpha) = log(o) - sigma = coef . (1, x, y, x^2, xy, y^2); row M pads chunks and never contributes.
        coef = colors.new_empty(M + 1, 6)
        coef[:M, 0] = log_o - (0.5 * A * mx * mx + B * mx * my + 0.5 * Cc * my * my)
        coef[:M, 1] = A * mx + B * my
        coef[:M, 2] = B * mx + Cc * my
        coef[:M, 3] = -0.5 * A
        coef[:M, 4] = -B
        coef[:M, 5] = -0.5 * Cc
        coef[M] = coef.new_tensor([-1e4, 0, 0, 0, 0, 0])
        col = colors.new_zeros(M + 1, D)
        col[:M] = col_v.index_select(0, src)  # [M + 1, D]
        basis = _tile_basis(ts, colors)  # [P, 6]

        n_all = C * n_tiles
        acc = colors.new_zeros(n_all, P, D)  # [C*T, P, D] accumulated colour
        T_out = colors.new_ones(n_all, P)  # [C*T, P] transmittance after the Gaussians composited so far
        T_run = T_out.clone()  # same, 0 once a pixel has stopped
        tile_done = bins.tile_count == 0  # [C*T]
        saved = []
        for k0, size in _chunks(bins, chunk_sizes):
            active = torch.nonzero(~tile_done & (bins.tile_count > k0)).squeeze(1)  # [Ta]
            Ta = active.numel()
            if Ta == 0:
                break
            k = torch.arange(size, device=device) + k0  # [Kc]
            count = bins.tile_count.index_select(0, active)  # [Ta]
            start = bins.tile_start.index_select(0, active)
            idx = torch.where(k[None, :] < count[:, None], start[:, None] + k[None, :], torch.full_like(start[:, None], M))
            flat_idx = idx.reshape(-1)  # [Ta * Kc]
            coef_c = coef.index_select(0, flat_idx).reshape(Ta, size, 6)  # [Ta, Kc, 6]
            log_alpha = torch.bmm(basis.expand(Ta, P, 6), coef_c.transpose(1, 2))  # [Ta, P, Kc]
            skipped = log_alpha < _LOG_ALPHA_MIN
            # exp is slow on very negative numbers (denormal results): clamp what is skipped anyway.
            alpha = log_alpha.clamp_min_(-20.0).exp_().clamp_max_(ALPHA_MAX)
            alpha.masked_fill_(skipped, 0.0)
            one_minus = 1.0 - alpha
            T_incl = torch.cumprod(one_minus, dim=2).mul_(T_run.index_select(0, active)[:, :, None])  # [Ta, P, Kc]
            valid = T_incl > TRANSMITTANCE_MIN
            T_excl = T_incl.div_(one_minus)  # [Ta, P, Kc] transmittance before each Gaussian
            alpha.mul_(valid)
            w = alpha * T_excl  # [Ta, P, Kc]
            c = col.index_select(0, flat_idx).reshape(Ta, size, D)  # [Ta, Kc, D]
            acc.index_add_(0, active, torch.bmm(w, c))  # [Ta, P, D]
            T_new = T_out.index_select(0, active) - w.sum(2)  # [Ta, P]
            T_out.index_copy_(0, active, T_new)
            stopped = ~valid[:, :, -1]  # [Ta, P]
            T_run.index_copy_(0, active, T_new.masked_fill(stopped, 0.0))
            tile_done.index_copy_(0, active, stopped.all(-1) | (count <= k0 + size))
            saved.append((active, flat_idx, alpha, T_excl, w))

        bg = backgrounds.repeat_interleave(n_tiles, dim=0)  # [C*T, D]
        out_tiles = acc + T_out[..., None] * bg[:, None, :]  # [C*T, P, D]
        render = _tiles_to_image(out_tiles, C, bins, width, height)  # [C, H, W, D]
        alpha_img = _tiles_to_image((1.0 - T_out)[..., None], C, bins, width, height)  # [C, H, W, 1]

        ctx.bins, ctx.saved_chunks, ctx.absgrad = bins, saved, absgrad
        ctx.shape = (C, N, D, width, height)
        ctx.save_for_backward(means2d, col, out_tiles, T_out, mx, my, A, B, Cc, opa_v)
        return render, alpha_img

    @staticmethod
    def backward(ctx, g_render, g_alpha):
        means2d, col, out_tiles, T_out, mx, my, A, B, Cc, opa_v = ctx.saved_tensors
        bins = ctx.bins
        C, N, D, _, _ = ctx.shape
        ts = bins.tile_size
        P = ts * ts
        n_tiles = bins.tiles_x * bins.tiles_y
        M = bins.pair_src.numel()
        gC = _image_to_tiles(g_render, bins)  # [C*T, P, D]
        gA = _image_to_tiles(g_alpha, bins)[..., 0]  # [C*T, P]
        Z = (gC * out_tiles).sum(-1) - gA * T_out  # [C*T, P]
        prefix = torch.zeros_like(Z)  # running sum of w u per pixel
        basis = _tile_basis(ts, gC)  # [P, 6]
        g_coef = gC.new_zeros(M + 1, 6)
        g_col = gC.new_zeros(M + 1, D)
        for active, flat_idx, alpha, T_excl, w in ctx.saved_chunks:
            Ta, _, Kc = alpha.shape
            gCa = gC.index_select(0, active)  # [Ta, P, D]
            c = col.index_select(0, flat_idx).reshape(Ta, Kc, D)  # [Ta, Kc, D]
            u = torch.bmm(gCa, c.transpose(1, 2))  # [Ta, P, Kc]
            run = torch.cumsum(w * u, dim=2).add_(prefix.index_select(0, active)[:, :, None])  # [Ta, P, Kc]
            prefix.index_copy_(0, active, run[:, :, -1])
            g_a = (Z.index_select(0, active)[:, :, None] - run).div_(1.0 - alpha)
            g_a = torch.sub(T_excl * u, g_a)  # [Ta, P, Kc] dL/dalpha
            # d alpha / d log(alpha) = alpha where alpha was not clamped (zero where skipped or stopped).
            g_log = g_a.mul_(alpha).mul_(alpha < ALPHA_MAX)  # [Ta, P, Kc]
            g_coef.index_copy_(0, flat_idx, torch.bmm(g_log.transpose(1, 2), basis.expand(Ta, P, 6)).reshape(-1, 6))
            g_col.index_copy_(0, flat_idx, torch.bmm(w.transpose(1, 2), gCa).reshape(-1, D))
        g0, g1, g2, g3, g4, g5 = g_coef[:M].unbind(-1)
        g_pair = torch.stack(
            [
                -g0 * (A * mx + B * my) + g1 * A + g2 * B,  # d/d mean x
                -g0 * (B * mx + Cc * my) + g1 * B + g2 * Cc,  # d/d mean y
                -0.5 * g0 * mx * mx + g1 * mx - 0.5 * g3,  # d/d conic a
                -g0 * mx * my + g1 * my + g2 * mx - g4,  # d/d conic b
                -0.5 * g0 * my * my + g2 * my - 0.5 * g5,  # d/d conic c
                g0,  # d/d log(opacity)
            ],
            dim=-1,
        )  # [M, 6]
        if ctx.absgrad:
            g_pair = torch.cat([g_pair, g_pair[:, :2].abs()], dim=-1)  # [M, 8]
        g_pair = torch.cat([g_pair, g_col[:M]], dim=-1)  # [M, 6 (+2) + D]
        V = bins.vis_ids.numel()
        g_vis = g_pair.new_zeros(V, g_pair.shape[1]).index_add_(0, bins.pair_src, g_pair)  # [V, ...]
        g_vis[:, 5] = torch.where(opa_v > 0, g_vis[:, 5] / opa_v.clamp_min(1e-30), torch.zeros_like(opa_v))
        g_all = g_vis.new_zeros(C * N, g_vis.shape[1]).index_copy_(0, bins.vis_ids, g_vis)  # [C*N, ...]
        g_means2d = g_all[:, 0:2].reshape(C, N, 2)
        g_conics = g_all[:, 2:5].reshape(C, N, 3)
        g_opac = g_all[:, 5].reshape(C, N)
        g_colors = g_all[:, -D:].reshape(C, N, D)
        if ctx.absgrad:
            means2d.absgrad = g_all[:, 6:8].reshape(C, N, 2)
        g_bg = (gC * T_out[..., None]).sum(1).reshape(C, n_tiles, D).sum(1)  # [C, D]
        return g_means2d, g_conics, g_colors, g_opac, g_bg, None, None, None, None, None


def _tiles_to_image(tiles: Tensor, C: int, bins: TileBins, width: int, height: int) -> Tensor:
    """[C*T, P, X] per-tile pixels -> [C, H, W, X] image (cropped to the image size)."""
    ts, tx, ty = bins.tile_size, bins.tiles_x, bins.tiles_y
    X = tiles.shape[-1]
    img = tiles.reshape(C, ty, tx, ts, ts, X).permute(0, 1, 3, 2, 4, 5).reshape(C, ty * ts, tx * ts, X)
    return img[:, :height, :width].contiguous()  # [C, H, W, X]


def _image_to_tiles(img: Tensor, bins: TileBins) -> Tensor:
    """[C, H, W, X] image -> [C*T, P, X] per-tile pixels (zero beyond the image)."""
    ts, tx, ty = bins.tile_size, bins.tiles_x, bins.tiles_y
    C, H, W, X = img.shape
    padded = img.new_zeros(C, ty * ts, tx * ts, X)
    padded[:, :H, :W] = img
    return padded.reshape(C, ty, ts, tx, ts, X).permute(0, 1, 3, 2, 4, 5).reshape(C * ty * tx, ts * ts, X)
