"""Stage ``register``: COLMAP registration of all frames (pycolmap), sparse points and pose errors vs the plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class RegisterConfig:
    """How frames are registered."""

    mode: Literal["known-poses", "free"] = "known-poses"
    """``known-poses``: triangulate with the planned cameras then bundle-adjust; ``free``: incremental mapping then a
    similarity alignment to the plan."""
    max_num_features: int = 4096
    """SIFT features per image."""
    covisibility_min: float = 0.2
    """Also match frame pairs whose planned co-visibility is at least this."""
