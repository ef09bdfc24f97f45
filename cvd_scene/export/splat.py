"""The antimatter15 ``.splat`` format: 32 bytes a splat, no header, no view-dependent colour.

Record layout (little-endian)::

    position  3 x float32   (the frame of the Gaussians as given: the export step turns them into the readers'
                            frame first, +y down, see cvd_scene.export.axes)
    scale     3 x float32   linear standard deviations, exp(log_scales)
    colour    4 x uint8     RGB = 255 * (0.5 + SH_C0 * sh_dc), A = 255 * sigmoid(opacity_logit)
    rotation  4 x uint8     w, x, y, z of q / |q|, stored as round(128 * c + 128) clipped to 0..255

Records are sorted by linear volume x opacity, largest first (what web viewers expect for progressive loading).
Quantisation: positions and scales are float32 (exact up to float32 rounding of exp/log); colour and opacity
to 1/255 (error <= 0.5/255 within [0, 1]; colours outside [0, 1] are clipped); each quaternion component to
1/128 (error <= 0.5/128 plus the clip at +1, which reads back as 127/128), i.e. orientation within about 1 degree.

Pure numpy; must not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cvd_scene.export.common import logit, normalized_quats, sigmoid, write_bytes_atomic
from cvd_scene.gaussians import SH_C0, Gaussians

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
"""One ``.splat`` record (32 bytes)."""
assert SPLAT_DTYPE.itemsize == 32


class SplatFormatError(ValueError):
    """A file that cannot be a ``.splat`` file (its size is not a multiple of 32 bytes, or it is empty)."""


def splat_order(gaussians: Gaussians) -> np.ndarray:
    """[N] indices sorting splats by exp(sum of log-scales) x opacity, largest first (stable)."""
    score = np.exp(gaussians.log_scales.astype(np.float64).sum(axis=1)) * gaussians.opacities  # [N]
    return np.argsort(-score, kind="stable")


def gaussians_to_splat_records(gaussians: Gaussians) -> np.ndarray:
    """[N] ``SPLAT_DTYPE`` records in file order: the one place where activations and quantisation happen."""
    order = splat_order(gaussians)
    g = gaussians.subset(order)
    rec = np.zeros(len(g), SPLAT_DTYPE)
    rec["position"] = g.means
    rec["scale"] = np.exp(g.log_scales.astype(np.float64)).astype(np.float32)
    rgb = 0.5 + SH_C0 * g.sh_dc.astype(np.float64)  # [N, 3]
    rgba = np.concatenate([rgb, sigmoid(g.opacity_logits)[:, None]], axis=1)  # [N, 4]
    rec["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    q = normalized_quats(g.quats_wxyz)  # [N, 4] w, x, y, z
    rec["rot"] = np.clip(np.round(q.astype(np.float64) * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return rec


def write_splat(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write ``gaussians`` as a ``.splat`` file (degree-0 colour only; higher SH bands are dropped)."""
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"write_splat needs a Gaussians, got {type(gaussians).__name__}")
    return write_bytes_atomic(path, gaussians_to_splat_records(gaussians).tobytes())


def read_splat(path: str | os.PathLike) -> Gaussians:
    """Read a ``.splat`` file into :class:`Gaussians` (SH degree 0, unit quaternions, file order)."""
    path = Path(path)
    data = path.read_bytes()
    if not data or len(data) % SPLAT_DTYPE.itemsize:
        raise SplatFormatError(
            f"{path}: {len(data)} bytes is not a positive multiple of 32; not a .splat file"
        )
    rec = np.frombuffer(data, SPLAT_DTYPE)
    scale = rec["scale"].astype(np.float64)  # [N, 3]
    if np.any(scale <= 0):
        raise SplatFormatError(f"{path}: non-positive scales; not a .splat file")
    rgba = rec["rgba"].astype(np.float64) / 255.0  # [N, 4]
    q = (rec["rot"].astype(np.float64) - 128.0) / 128.0  # [N, 4] w, x, y, z
    return Gaussians(
        means=rec["position"],
        log_scales=np.log(scale),
        quats_wxyz=normalized_quats(q),
        opacity_logits=logit(rgba[:, 3], eps=0.5 / 255.0),
        sh_dc=(rgba[:, :3] - 0.5) / SH_C0,
        sh_rest=np.zeros((len(rec), 0, 3), np.float32),
    )
