"""Stage ``generate``: N videos along the plan, by the reference renderer or the CVD model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class GenerateConfig:
    """Which generator makes the videos, and its settings."""

    generator: Literal["reference", "cvd"] = "reference"
    """``reference``: the built-in CPU renderer of procedural scenes; ``cvd``: the Collaborative Video Diffusion model."""
    scene: str | None = None
    """Reference generator: scene kind (``room``, ``courtyard``, ``table``); None picks it from the prompt's words."""
    samples_per_pixel: int = 4
    """Reference generator: rays per pixel for anti-aliasing (1 = none)."""
    model: str = "tiny"
    """CVD generator: a model config name in ``configs/model/`` (``tiny``, ``tiny-trained``, ``sd15``)."""
    weights: str | None = None
    """CVD generator: a local folder of converted weights (``cvd-scene convert``) or of our saved format."""
    steps: int = 25
    """CVD generator: denoising steps."""
    guidance_scale: float = 8.5
    """CVD generator: classifier-free guidance scale."""
    negative_prompt: str = "worst quality, low quality, letterboxed"
    """CVD generator: negative prompt."""
    pairing: str = "exhaustive"
    """CVD generator: pairing strategy (``partition``, ``exhaustive``, ``covisibility``) or a named schedule preset."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Model dtype: ``auto`` is float16 on CUDA, float32 on the CPU."""
