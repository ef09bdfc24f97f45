"""Cleaning and budgeting a splat set before export: non-finite splats out (counted), then a splat budget.

The budget keeps the ``max_splats`` most important splats. Importance is opacity x projected area:

- with cameras (the run's registered or planned views), the area in pixels of each splat's largest
  cross-section ellipse (pi * s_a * s_b, the two largest standard deviations) projected into every camera that
  sees its centre, clipped to the image area, summed over cameras: roughly how much of the footage it covers;
- without cameras (``export --from``), the world-space area pi * s_a * s_b itself.

Occlusion is ignored (a splat hidden behind a wall still counts); that is the price of not rendering. Ties keep
the earlier splat. The kept splats stay in their original order.

Pure numpy; must not import torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cvd_scene.cameras import Cameras
from cvd_scene.gaussians import Gaussians

log = logging.getLogger(__name__)


@dataclass
class CleanReport:
    """What cleaning and budgeting removed (written into ``export/report.json``)."""

    splats_in: int = 0
    """Splats read from the fit."""
    nonfinite_removed: int = 0
    """Splats with a NaN or infinite parameter, removed."""
    nonfinite_by_field: dict = field(default_factory=dict)
    """How many removed splats had a non-finite value in each parameter (a splat can count in several)."""
    zero_rotation_fixed: int = 0
    """Splats whose quaternion was all zeros, given the identity rotation instead."""
    max_splats: int | None = None
    """The budget asked for (None: no budget)."""
    pruned_by_budget: int = 0
    """Splats removed to meet the budget (least important first)."""
    splats_out: int = 0
    """Splats exported."""

    def as_dict(self) -> dict:
        return {
            "in": self.splats_in,
            "nonfinite_removed": self.nonfinite_removed,
            "nonfinite_by_field": self.nonfinite_by_field,
            "zero_rotation_fixed": self.zero_rotation_fixed,
            "max_splats": self.max_splats,
            "pruned_by_budget": self.pruned_by_budget,
            "out": self.splats_out,
        }


def remove_nonfinite(gaussians: Gaussians) -> tuple[Gaussians, CleanReport]:
    """Drop splats with any NaN/Inf parameter and fix all-zero quaternions; returns the rest and the counts."""
    g = gaussians
    report = CleanReport(splats_in=len(g))
    ok = g.finite_mask()  # [N]
    if not ok.all():
        for name in ("means", "log_scales", "quats_wxyz", "opacity_logits", "sh_dc", "sh_rest"):
            arr = getattr(g, name).reshape(len(g), -1)
            bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
            if bad:
                report.nonfinite_by_field[name] = bad
        report.nonfinite_removed = int(np.sum(~ok))
        log.warning("removed %d of %d splats with NaN/Inf parameters %s", report.nonfinite_removed, len(g),
                    report.nonfinite_by_field)  # fmt: skip
        g = g.subset(ok)
    zero = np.all(g.quats_wxyz == 0, axis=1)  # [N]
    if zero.any():
        g = Gaussians(g.means, g.log_scales, g.quats_wxyz.copy(), g.opacity_logits, g.sh_dc, g.sh_rest)
        g.quats_wxyz[zero] = (1.0, 0.0, 0.0, 0.0)
        report.zero_rotation_fixed = int(zero.sum())
    report.splats_out = len(g)
    return g, report


def cross_section_area(gaussians: Gaussians) -> np.ndarray:
    """[N] area pi * s_a * s_b of each splat's largest cross-section (s_a, s_b its two largest sigmas), m^2."""
    s = np.sort(gaussians.log_scales.astype(np.float64), axis=1)  # [N, 3] ascending
    return np.pi * np.exp(s[:, 1] + s[:, 2])


def importance(gaussians: Gaussians, cameras: Cameras | None = None, max_cameras: int = 64) -> np.ndarray:
    """[N] importance of each splat: opacity x projected area (see the module docstring).

    ``cameras`` may hold NaN poses (unregistered frames); those are skipped. At most ``max_cameras`` evenly
    spread cameras are used.
    """
    g = gaussians
    area_m2 = cross_section_area(g)  # [N]
    opacity = g.opacities.astype(np.float64)  # [N]
    if cameras is None:
        return opacity * area_m2
    world_from_cam = cameras.world_from_cam.reshape(-1, 4, 4)  # [V*F, 4, 4]
    K = cameras.K.reshape(-1, 3, 3)  # [V*F, 3, 3]
    valid = np.all(np.isfinite(world_from_cam.reshape(len(world_from_cam), -1)), axis=1)
    world_from_cam, K = world_from_cam[valid], K[valid]
    if len(world_from_cam) == 0:
        return opacity * area_m2
    pick = np.unique(np.linspace(0, len(world_from_cam) - 1, min(max_cameras, len(world_from_cam))).round().astype(int))
    W, H = cameras.width, cameras.height
    means = g.means.astype(np.float64)  # [N, 3]
    pixels = np.zeros(len(g))
    for i in pick:
        R, t = world_from_cam[i, :3, :3], world_from_cam[i, :3, 3]
        x_cam = (means - t) @ R  # [N, 3] = R^T (p - t)
        z = x_cam[:, 2]
        front = z > 1e-3
        zs = np.where(front, z, 1.0)
        u = K[i, 0, 0] * x_cam[:, 0] / zs + K[i, 0, 2]
        v = K[i, 1, 1] * x_cam[:, 1] / zs + K[i, 1, 2]
        inside = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        area_px = area_m2 * K[i, 0, 0] * K[i, 1, 1] / zs**2
        pixels += np.where(inside, np.minimum(area_px, W * H), 0.0)
    return opacity * pixels / len(pick)


def apply_budget(
    gaussians: Gaussians, max_splats: int | None, cameras: Cameras | None = None
) -> tuple[Gaussians, int]:
    """Keep the ``max_splats`` most important splats (original order kept); returns them and how many went."""
    if max_splats is None or len(gaussians) <= max_splats:
        return gaussians, 0
    if max_splats < 1:
        raise ValueError(f"max_splats must be at least 1, got {max_splats}")
    score = importance(gaussians, cameras)  # [N]
    keep = np.sort(np.argsort(-score, kind="stable")[:max_splats])
    return gaussians.subset(keep), len(gaussians) - max_splats


def clean_and_budget(
    gaussians: Gaussians, max_splats: int | None = None, cameras: Cameras | None = None
) -> tuple[Gaussians, CleanReport]:
    """Non-finite splats out (counted), then the budget; returns the splats to export and the counts."""
    g, report = remove_nonfinite(gaussians)
    g, report.pruned_by_budget = apply_budget(g, max_splats, cameras)
    report.max_splats = max_splats
    report.splats_out = len(g)
    if len(g) == 0:
        raise ValueError(
            f"no splats left to export: {report.splats_in} in, {report.nonfinite_removed} had NaN/Inf parameters"
        )
    return g, report
