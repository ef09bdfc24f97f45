"""The generate stage's config, :class:`GenerateConfig`: imported by the run config (:mod:`cvd_scene.runconfig`)
and the stage (:mod:`cvd_scene.generate.run`), which takes the whole run config, without a cycle between them.

Pure Python: must not import numpy, torch or any stage (it takes the release's defaults from the import-light
:mod:`cvd.defaults`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cvd.defaults import DEFAULT_NEGATIVE_PROMPT
from cvd.devices import check_device


@dataclass(kw_only=True)
class GenerateConfig:
    """Which generator makes the videos, and its settings."""

    generator: Literal["reference", "cvd", "imported"] = "reference"
    """``reference``: the built-in CPU renderer of procedural scenes; ``cvd``: the Collaborative Video Diffusion model;
    ``imported``: the user's own pictures from ``source`` (``cvd-scene import``)."""
    source: str | None = None
    """Imported: a folder of pictures (one video) or of sub-folders of pictures (one video each), in file-name
    order; every frame the plan's size after its EXIF orientation, every video the plan's frame count."""
    import_fps: float | None = None
    """Imported video files: frames sampled per second of video (from t = 0); None: the cameras' ``fps``
    (``cameras.json``, default 8), so the frames fall at the cameras' times."""
    scene: str | None = None
    """Reference generator: scene kind (``room``, ``courtyard``, ``table``); None picks it from the prompt's words."""
    samples_per_pixel: int = 4
    """Reference generator: rays per pixel for anti-aliasing (1 = none)."""
    moving_objects: int | None = None
    """Reference generator: number of moving objects (0-8); None takes it from the prompt's words ("moving",
    "spinning", ... ask for one; default none, which a static-scene fit needs)."""
    texels_per_m: float | None = None
    """Reference generator: base texture resolution of the scene (texels per metre; objects use multiples); None
    uses the kind's default (room and table 90, courtyard 50). Higher: sharper close-ups, slower scene building."""
    model: str = "tiny"
    """CVD generator: a model name: ``tiny`` (random weights, for tests), ``tiny-trained`` (the committed small
    model in ``models/``), ``sd15`` (needs ``weights``); ignored when ``weights`` is given."""
    weights: str | None = None
    """CVD generator: a local folder of converted weights (``cvd-scene convert``) or of our saved format."""
    steps: int = 25
    """CVD generator: denoising steps."""
    guidance_scale: float | None = None
    """CVD generator: classifier-free guidance scale; None: the release's 8.5 for one or two videos, 14 for more."""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """CVD generator: negative prompt (default: the release's, ``cvd.defaults.DEFAULT_NEGATIVE_PROMPT``)."""
    pairing: str = "covisibility"
    """CVD generator: pairing schedule preset: ``covisibility`` (default: two co-visibility-weighted partners per
    video per step, one batched call a step), ``exhaustive`` (every pair every step), ``partition`` (one
    round-robin matching a step), ``released`` (the release's schedule for N videos), ``released-pair``,
    ``released-4``, ``released-6``."""
    recurrences: int | None = None
    """CVD generator: override the preset's recurrences R per step (re-noising in between; DDIM only)."""
    accumulations: int | None = None
    """CVD generator: override the preset's accumulations Q (pair sets averaged per evaluation)."""
    max_rows_per_call: int | None = None
    """CVD generator: most UNet rows (videos x guidance branches) per call; None: automatic (all on a CPU, a
    memory estimate on a GPU)."""
    offload: bool = False
    """CVD generator: move each model component to the GPU only while it runs (diffusers' model CPU offload)."""
    memory: Literal["fast", "balanced", "low"] = "fast"
    """CVD generator: memory mode (``cvd.pipeline.MEMORY_MODES``; peaks per mode in the README). ``fast``: every
    model on the device, all pairs of a step in one UNet call; ``balanced``: one model on the device at a time,
    2 pairs per UNet call, one frame per VAE call; ``low``: one layer's weights on the device at a time, one pair
    per call, tiled VAE decoding. Same videos in every mode (up to float rounding and VAE tile seams)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Model dtype: ``auto`` is float16 on CUDA, float32 on the CPU."""
    contact_sheet_frames: int = 8
    """Frame columns of ``contact_sheet.png`` (evenly spaced over the clip)."""
    image: str | None = None
    """CVD generator: a picture (JPEG, PNG, ...) that becomes frame 0 of every video (the plan's videos must
    start at one camera): EXIF orientation applied, scaled to cover the generated size and cropped at its
    centre, its latent held at every denoising step. The stage copies it into ``generate/`` (``input<ext>``)."""

    def __post_init__(self) -> None:
        if self.samples_per_pixel < 1:
            raise ValueError(f"samples_per_pixel must be >= 1, got {self.samples_per_pixel}")
        if self.moving_objects is not None and not 0 <= self.moving_objects <= 8:
            raise ValueError(f"moving_objects must be in 0..8 or null, got {self.moving_objects}")
        if self.scene is not None and self.scene not in ("room", "courtyard", "table"):
            raise ValueError(f"scene must be room, courtyard, table or null, got {self.scene!r}")
        if self.texels_per_m is not None and not 1.0 <= self.texels_per_m <= 2000.0:
            raise ValueError(f"texels_per_m must be in [1, 2000] or null, got {self.texels_per_m}")
        if self.import_fps is not None and not 0 < self.import_fps <= 240:
            raise ValueError(f"import_fps must be in (0, 240] or null, got {self.import_fps}")
        if self.contact_sheet_frames < 1:
            raise ValueError(f"contact_sheet_frames must be >= 1, got {self.contact_sheet_frames}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance_scale is not None and not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0 or null, got {self.guidance_scale}")
        for name in ("recurrences", "accumulations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.max_rows_per_call is not None and self.max_rows_per_call < 4:
            raise ValueError(
                f"max_rows_per_call must be >= 4 (one guided pair) or null, got {self.max_rows_per_call}"
            )
        check_device(self.device, "device")
