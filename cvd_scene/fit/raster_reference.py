"""The slow, obviously-correct oracle of the pure-torch rasteriser: a direct loop over pixels and Gaussians.

Used by the tests (values and, through autograd, gradients) and by ``benchmarks/bench_raster.py``. Only for tiny
images. Must not import nerfstudio or gsplat.
"""

from __future__ import annotations

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
