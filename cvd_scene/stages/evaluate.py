"""Stage ``evaluate``: the CVD paper's geometric-consistency protocol (SIFT instead of SuperGlue)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class EvaluateConfig:
    """Settings of the consistency evaluation."""

    epipolar_threshold: float = 5e-4
    """A match is correct when its epipolar error (normalised image coordinates) is below this."""
