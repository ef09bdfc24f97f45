"""The slow, obviously-correct oracle of the pure-torch rasteriser: a direct loop over pixels and Gaussians.

Used by the tests (values and, through autograd, gradients) and by ``benchmarks/bench_raster.py``. Only for tiny
images. Must not import nerfstudio or gsplat.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cvd_scene.fit.raster import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN


def composite_reference(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    colors: Tensor,  # [N, D]
    opacities: Tensor,  # [N]
    radii: Tensor,  # [N]
    depths: Tensor,  # [N]
    width: int,
    height: int,
    background: Tensor | None = None,  # [D]
) -> tuple[Tensor, Tensor]:
    """One camera's image [H, W, D] and alpha [H, W, 1], one pixel at a time, Gaussians in depth order.

    At pixel centre (x + 0.5, y + 0.5): sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean - pixel;
    alpha = min(0.999, o exp(-sigma)); a Gaussian with sigma < 0 or alpha < 1/255 is skipped; the pixel stops
    before the Gaussian that would bring its transmittance to 1e-4 or less. Differentiable by autograd.
    """
    order = [int(i) for i in torch.argsort(depths.detach(), stable=True) if int(radii[i]) > 0]
    D = colors.shape[-1]
    rows = []
    alphas = []
    for y in range(height):
        row, row_alpha = [], []
        for x in range(width):
            px, py = x + 0.5, y + 0.5
            T = torch.ones((), dtype=colors.dtype, device=colors.device)
            out = torch.zeros(D, dtype=colors.dtype, device=colors.device)
            for i in order:
                dx = means2d[i, 0] - px
                dy = means2d[i, 1] - py
                sigma = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
                alpha = torch.clamp(opacities[i] * torch.exp(-sigma), max=ALPHA_MAX)
                if float(sigma.detach()) < 0.0 or float(alpha.detach()) < ALPHA_MIN:
                    continue
                next_T = T * (1.0 - alpha)
                if float(next_T.detach()) <= TRANSMITTANCE_MIN:
                    break
                out = out + colors[i] * alpha * T
                T = next_T
            if background is not None:
                out = out + T * background
            row.append(out)
            row_alpha.append((1.0 - T).reshape(1))
        rows.append(torch.stack(row))
        alphas.append(torch.stack(row_alpha))
    return torch.stack(rows), torch.stack(alphas)  # [H, W, D], [H, W, 1]


def composite_autograd(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int = 8,
    background: Tensor | None = None,  # [C, D]
) -> tuple[Tensor, Tensor]:
    """The tile compositor written with plain autograd ops (no hand-written backward, no early termination):
    the baseline that shows what :func:`cvd_scene.fit.raster.composite`'s closed-form backward saves.

    Same binning and maths; every tile's whole depth-sorted list is composited at once. Returns ``render``
    [C, H, W, D] and ``alpha`` [C, H, W, 1].
    """
    from cvd_scene.fit.raster import _tile_basis, bin_gaussians

    bins = bin_gaussians(means2d.detach(), conics.detach(), opacities.detach(), radii, depths.detach(), width,
                         height, tile_size)  # fmt: skip
    C, _, D = colors.shape
    ts, tx, ty = tile_size, bins.tiles_x, bins.tiles_y
    n_tiles = tx * ty
    src, vis = bins.pair_src, bins.vis_ids
    ids = vis[src]  # [M] flat camera * N + gaussian
    tile_in_img = bins.pair_tiles % n_tiles
    centre = torch.stack([tile_in_img % tx, tile_in_img // tx], -1).to(colors.dtype) * ts + 0.5 * ts  # [M, 2]
    rel = means2d.reshape(-1, 2)[ids] - centre
    mx, my = rel.unbind(-1)
    A, B, Cc = conics.reshape(-1, 3)[ids].unbind(-1)
    log_o = torch.log(opacities.reshape(-1)[ids].clamp_min(1e-30))
    coef = torch.stack(
        [log_o - (0.5 * A * mx * mx + B * mx * my + 0.5 * Cc * my * my), A * mx + B * my, B * mx + Cc * my,
         -0.5 * A, -B, -0.5 * Cc], dim=-1,
    )  # [M, 6]  # fmt: skip
    coef = torch.cat([coef, coef.new_tensor([[-1e4, 0, 0, 0, 0, 0]])])
    col = torch.cat([colors.reshape(-1, D)[ids], colors.new_zeros(1, D)])  # [M + 1, D]
    K = int(bins.tile_count.max()) if src.numel() else 1
    k = torch.arange(K, device=colors.device)
    idx = torch.where(k[None] < bins.tile_count[:, None], bins.tile_start[:, None] + k[None], src.numel())  # [T, K]
    basis = _tile_basis(ts, colors)  # [P, 6]
    log_alpha = torch.einsum("pj,tkj->tpk", basis, coef[idx])  # [T, P, K]
    alpha = torch.exp(log_alpha.clamp(min=-20.0)).clamp(max=ALPHA_MAX)
    alpha = torch.where(log_alpha < math.log(ALPHA_MIN), torch.zeros_like(alpha), alpha)
    T_incl = torch.cumprod(1.0 - alpha, dim=2)  # [T, P, K]
    valid = (T_incl > TRANSMITTANCE_MIN).detach()
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=2)
    w = alpha * T_excl * valid  # [T, P, K]
    acc = torch.einsum("tpk,tkd->tpd", w, col[idx])  # [T, P, D]
    T_f = 1.0 - w.sum(-1)  # [T, P]
    if background is not None:
        acc = acc + T_f[..., None] * background.repeat_interleave(n_tiles, 0)[:, None, :]
    img = acc.reshape(C, ty, tx, ts, ts, D).permute(0, 1, 3, 2, 4, 5).reshape(C, ty * ts, tx * ts, D)
    a = (1.0 - T_f).reshape(C, ty, tx, ts, ts, 1).permute(0, 1, 3, 2, 4, 5).reshape(C, ty * ts, tx * ts, 1)
    return img[:, :height, :width], a[:, :height, :width]
