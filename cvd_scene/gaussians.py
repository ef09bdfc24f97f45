"""The Gaussian splat container shared by the fit and export stages.

Storage follows the 3DGS (Inria) parameterisation, so the PLY is a direct dump: log-scales, logit opacities,
unnormalised w-first quaternions, SH coefficients (DC and rest, channel-last here). Positions are in the run's
world frame (Y-up, metres) unless a docstring says otherwise. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SH_C0 = 0.28209479177387814
"""Degree-0 spherical-harmonic constant: colour = 0.5 + SH_C0 * f_dc."""


@dataclass
class Gaussians:
    """N 3D Gaussians with view-dependent colour."""

    means: np.ndarray
    """[N, 3] float32 centres."""
    log_scales: np.ndarray
    """[N, 3] float32 log standard deviations along the local axes."""
    quats_wxyz: np.ndarray
    """[N, 4] float32 rotations (w, x, y, z), not necessarily normalised."""
    opacity_logits: np.ndarray
    """[N] float32 logit of opacity."""
    sh_dc: np.ndarray
    """[N, 3] float32 degree-0 SH coefficients (RGB)."""
    sh_rest: np.ndarray
    """[N, K, 3] float32 higher-degree SH coefficients, K in {0, 3, 8, 15} for degree 0..3."""

    def __post_init__(self) -> None:
        n = len(self.means)
        shapes = {
            "means": (self.means, (n, 3)),
            "log_scales": (self.log_scales, (n, 3)),
            "quats_wxyz": (self.quats_wxyz, (n, 4)),
            "opacity_logits": (self.opacity_logits, (n,)),
            "sh_dc": (self.sh_dc, (n, 3)),
        }
        for name, (arr, shape) in shapes.items():
            if np.shape(arr) != shape:
                raise ValueError(f"Gaussians.{name} must be {shape}, got {np.shape(arr)}")
        if self.sh_rest.ndim != 3 or self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3:
            raise ValueError(f"Gaussians.sh_rest must be [N, K, 3], got {self.sh_rest.shape}")
        if self.sh_rest.shape[1] not in (0, 3, 8, 15):
            raise ValueError(f"Gaussians.sh_rest has {self.sh_rest.shape[1]} coefficients; SH degree 0-3 needs 0/3/8/15")
        for name in ("means", "log_scales", "quats_wxyz", "opacity_logits", "sh_dc", "sh_rest"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return {0: 0, 3: 1, 8: 2, 15: 3}[self.sh_rest.shape[1]]

    @property
    def colors(self) -> np.ndarray:
        """[N, 3] base (view-independent) colour in [0, 1]."""
        return np.clip(0.5 + SH_C0 * self.sh_dc, 0.0, 1.0)

    @property
    def opacities(self) -> np.ndarray:
        """[N] opacity in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64))).astype(np.float32)

    def subset(self, index: np.ndarray) -> Gaussians:
        """The Gaussians selected by a boolean mask or index array."""
        return Gaussians(
            self.means[index],
            self.log_scales[index],
            self.quats_wxyz[index],
            self.opacity_logits[index],
            self.sh_dc[index],
            self.sh_rest[index],
        )

    def finite_mask(self) -> np.ndarray:
        """[N] True where every parameter of a Gaussian is finite."""
        parts = [self.means, self.log_scales, self.quats_wxyz, self.opacity_logits[:, None], self.sh_dc]
        ok = np.all(np.concatenate([np.isfinite(p) for p in parts], axis=1), axis=1)
        return ok & np.all(np.isfinite(self.sh_rest.reshape(len(self), -1)), axis=1)
