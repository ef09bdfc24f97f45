"""Stage ``fit``: a Gaussian splat (or NeRF) fitted with the nerfstudio method ``cvd-scene`` on the run folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class FitConfig:
    """How the scene is fitted."""

    method: Literal["cvd-scene", "cvd-scene-nerf"] = "cvd-scene"
    """nerfstudio method: ``cvd-scene`` (Gaussian splatting) or ``cvd-scene-nerf`` (NeRF)."""
    iterations: int = 3000
    """Training iterations."""
    eval_every_k: int = 6
    """Hold out every k-th frame of every video for evaluation."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
