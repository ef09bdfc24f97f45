"""The training config: data sources and their mix, which model and which of its parameters train, the
optimiser, the from-scratch pieces (autoencoder pretraining, word tokenizer), the end-of-training toy measure and
where everything is written.

Presets live in ``configs/train/<name>.yaml`` (``paper``, ``tiny-cpu``, ``small-gpu``); ``cvd_scene`` reads them
strictly (unknown keys and wrong types are errors naming the key). Standard library only; must never import
``cvd_scene``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from cvd.devices import check_device

__all__ = [
    "AutoencoderSection",
    "DataSection",
    "EvalSection",
    "HomographyWarpConfig",
    "ModelSection",
    "OfficialPaths",
    "OptimSection",
    "SourceConfig",
    "TrainConfig",
]


@dataclass(kw_only=True)
class HomographyWarpConfig:
    """How the warped copy of a monocular video is made: a homography about the image centre whose parameters
    grow linearly from identity at frame 0 to a random end value at the last frame. Each end value is drawn
    uniformly in ``[-max, max]`` (scale: log-uniform in ``[1/(1+max), 1+max]``)."""

    translation_max_frac: float = 0.15
    """Largest end translation along each axis, as a fraction of the image side."""
    rotation_max_deg: float = 10.0
    """Largest end in-plane rotation, degrees."""
    scale_max: float = 0.15
    """Largest end zoom: the scale factor lies in [1/(1+scale_max), 1+scale_max]."""
    shear_max: float = 0.08
    """Largest end shear along each axis (dimensionless)."""
    perspective_max: float = 0.15
    """Largest end projective term along each axis, in units of 1/(half the image side): 0.15 moves the far
    edge's scale by about 15 %."""

    def __post_init__(self) -> None:
        for name in ("translation_max_frac", "rotation_max_deg", "scale_max", "shear_max", "perspective_max"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.perspective_max >= 1.0:
            raise ValueError(f"perspective_max must be < 1 (the image would fold), got {self.perspective_max}")


@dataclass(kw_only=True)
class SourceConfig:
    """One source of training pairs."""

    kind: Literal["cache", "re10k", "videos", "render"] = "cache"
    """``cache``: a pre-rendered clip cache file (``.npz``, :mod:`cvd.training.cache`); ``re10k``: a folder of
    RealEstate10K-style clips (a pose file per clip plus its frames or video); ``videos``: a folder of monocular
    videos (mp4) or frame folders; ``render``: pairs rendered on the fly by cvd-scene's reference renderer."""
    path: str | None = None
    """The cache file or data folder (relative paths are taken from the current directory)."""
    weight: float = 1.0
    """Relative frequency of this source among the sources of its kind (posed or homography)."""
    frame_stride: int = 1
    """re10k/videos: take every n-th frame of the clip."""
    units_per_pose_unit: float = 1.0
    """re10k: multiply the files' translations by this (their SLAM scale is arbitrary)."""
    render_samples_per_pixel: int = 1
    """render: rays per pixel of the on-the-fly renderer."""
    render_seed: int = 0
    """render: first scene seed (each draw builds a new scene from the sample's random stream)."""

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.kind != "render" and not self.path:
            raise ValueError(f"a source of kind {self.kind!r} needs a path")


@dataclass(kw_only=True)
class DataSection:
    """Where training pairs come from and how they are mixed."""

    num_frames: int = 16
    """Frames per video."""
    height_px: int = 256
    """Image height the model trains at."""
    width_px: int = 256
    """Image width the model trains at."""
    posed: list[SourceConfig] = field(default_factory=list)
    """Posed pairs (RealEstate10K folding, the clip cache, rendered plans): camera features and the true
    epipolar bias."""
    homography: list[SourceConfig] = field(default_factory=list)
    """Monocular videos made into pairs by homography warping: no camera features, pseudo-epipolar lines, loss
    masked where the warped copy has no pixels. A ``cache`` source here takes single videos of the cached clips."""
    posed_fraction: float = 0.7
    """Share of micro-batches drawn from the posed sources (the rest from the homography sources); the paper
    alternates about 7:3. Ignored when one of the two lists is empty."""
    warp: HomographyWarpConfig = field(default_factory=HomographyWarpConfig)
    """Distributions of the homography warp."""
    flip: bool = True
    """Mirror a pair left-right (images, intrinsics and poses together) half of the time."""
    swap: bool = True
    """Swap the two videos of a pair half of the time."""
    num_workers: int = 0
    """DataLoader worker processes (0: prepare batches in the training process)."""
    memoize_latents: bool = True
    """Keep the frozen autoencoder's latents of every unwarped cached video in memory (the same video is encoded
    once)."""
    held_out: str | None = None
    """A clip cache of held-out plans for the toy consistency measure (never trained on)."""

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.height_px < 8 or self.width_px < 8:
            raise ValueError(f"bad clip size: {self.num_frames=} {self.height_px=} {self.width_px=}")
        if not 0.0 <= self.posed_fraction <= 1.0:
            raise ValueError(f"posed_fraction must lie in [0, 1], got {self.posed_fraction}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass(kw_only=True)
class OfficialPaths:
    """Local paths of the published weight files (``init: official``)."""

    sd15: str
    """Stable Diffusion 1.5 as a diffusers folder (unet/, vae/, text_encoder/, tokenizer/)."""
    motion: str
    """AnimateDiff ``v3_sd15_mm.ckpt``."""
    cameractrl: str
    """``CameraCtrl.ckpt``."""
    cvd: str | None = None
    """``CVD.ckpt`` to start the sync modules from (None: they start at their zero-initialised output)."""
    adapter: str | None = None
    """AnimateDiff domain-adapter LoRA ``v3_sd15_adapter.ckpt`` (optional)."""
    base: str | None = None
    """A single-file LDM (DreamBooth) base checkpoint (optional)."""


@dataclass(kw_only=True)
class ModelSection:
    """Which model trains, from what, and which of its parameters."""

    config: str = "tiny"
    """Model config: a name in ``configs/model/`` or a path to a YAML file."""
    changes: dict[str, Any] = field(default_factory=dict)
    """Model config keys replaced before building (nested mapping, e.g. ``{unet: {block_out_channels: [..]}}``)."""
    init: Literal["scratch", "pretrained", "official"] = "scratch"
    """``scratch``: random weights (a small model we train ourselves: autoencoder first, word tokenizer over the
    data's captions, then everything else); ``pretrained``: a folder of our saved format (``weights``);
    ``official``: the published files (``official``)."""
    weights: str | None = None
    """init=pretrained: the model folder (``cvd_model.json`` + one sub-folder per component)."""
    official: OfficialPaths | None = None
    """init=official: the published files."""
    trainable: Literal["cvsm", "all"] = "cvsm"
    """``cvsm``: only the Cross-View Synchronization Modules (the paper); ``all``: every parameter except the
    autoencoder's (a small model from scratch)."""
    cross_view: bool = True
    """Build the cross-view modules (False: the ablation arm without them; needs ``trainable: all``)."""
    bias_mode: Literal["soft", "binary", "none"] | None = None
    """Epipolar bias mode replacing the model config's (``none``: plain cross-view attention)."""
    autoencoder: str | None = None
    """init=scratch: a trained autoencoder folder to reuse (diffusers ``AutoencoderKL`` folder, e.g. the
    ``autoencoder/`` another run wrote); None trains one first (``autoencoder`` section)."""
    tokenizer_max_length: int = 48
    """init=scratch: tokens per caption of the word tokenizer (also the text encoder's position table)."""

    def __post_init__(self) -> None:
        if self.init == "pretrained" and not self.weights:
            raise ValueError("model.init=pretrained needs model.weights (a folder of our saved format)")
        if self.init == "official" and self.official is None:
            raise ValueError("model.init=official needs model.official (paths of the published files)")
        if not self.cross_view and self.trainable == "cvsm":
            raise ValueError("model.cross_view=false leaves nothing to train with model.trainable=cvsm")
        if self.tokenizer_max_length < 4:
            raise ValueError(f"tokenizer_max_length must be >= 4, got {self.tokenizer_max_length}")


@dataclass(kw_only=True)
class OptimSection:
    """Optimiser and schedule (the paper: AdamW, lr 1e-4, weight decay 1e-2, clip 1.0, fp16, batch 8)."""

    steps: int = 1000
    """Optimiser steps."""
    batch_pairs: int = 1
    """Pairs per micro-batch per process."""
    grad_accumulation: int = 1
    """Micro-batches per optimiser step (effective batch = batch_pairs x grad_accumulation x processes)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup, optimiser steps."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning rate after warmup: constant (the paper) or cosine decay to ``min_lr_fraction``."""
    min_lr_fraction: float = 0.1
    """cosine: final learning rate as a fraction of ``lr``."""
    mixed_precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Autocast dtype on CUDA (fp16 uses a gradient scaler; fp32: no autocast). On the CPU fp16 falls back to fp32
    with a notice."""
    ema_decay: float = 0.0
    """Exponential moving average of the trained weights (0: none); warmed up as min(decay, (1+n)/(10+n))."""
    caption_dropout: float = 0.1
    """Probability of training a pair with the empty caption (for classifier-free guidance)."""
    first_frame_fraction: float = 0.0
    """Probability of training a pair first-frame conditioned: frame 0 of both videos (one picture: a pair starts at
    one camera) enters the UNet clean at every noise level and is left out of the loss, so the model learns to carry
    a given picture along the cameras. Above 0 the saved model samples a held first frame clean
    (``first_frame: clean`` in its ``cvd_model.json``); the other pairs keep it a text-to-video model."""
    max_minutes: float | None = None
    """Stop (and save) after this much wall time even if ``steps`` are not done."""
    gradient_checkpointing: bool = False
    """Recompute the CVSMs in the backward pass (memory for time)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_pairs < 1 or self.grad_accumulation < 1:
            raise ValueError(f"steps, batch_pairs and grad_accumulation must be >= 1, got {self.steps=} "
                             f"{self.batch_pairs=} {self.grad_accumulation=}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must lie in [0, 1], got {self.caption_dropout}")
        if not 0.0 <= self.first_frame_fraction <= 1.0:
            raise ValueError(f"first_frame_fraction must lie in [0, 1], got {self.first_frame_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")


@dataclass(kw_only=True)
class AutoencoderSection:
    """Pretraining of the small autoencoder (init=scratch, when no ``model.autoencoder`` is given)."""

    steps: int = 1000
    """Optimiser steps."""
    batch_frames: int = 16
    """Frames (or crops) per step."""
    crop_px: int | None = None
    """Train on random square crops of this side (the network is convolutional: it then encodes whole frames);
    None: whole frames."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay to 10 %)."""
    kl_weight: float = 1e-6
    """Weight of the KL term of the latent distribution."""
    max_minutes: float | None = None
    """Stop after this much wall time."""


@dataclass(kw_only=True)
class EvalSection:
    """The toy consistency measure at the end of training (needs ``data.held_out``)."""

    enabled: bool = True
    """Run it after training."""
    num_pairs: int = 8
    """Held-out pairs scored (the first video of each held-out clip is the fixed partner of another)."""
    steps: int = 25
    """DDIM steps."""
    guidance_scale: float = 1.0
    """Classifier-free guidance (1: the conditional prediction alone)."""
    seed: int = 1234
    """Seed of the sampling noise."""


@dataclass(kw_only=True)
class TrainConfig:
    """A training run of the CVD model (``cvd-scene train --config configs/train/<name>.yaml``)."""

    output_dir: str = "runs/train/default"
    """Where checkpoints, logs, the loss plot and the final model go."""
    seed: int = 0
    """Seed of the data stream, noise, timesteps and caption dropout."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; several GPUs through ``accelerate launch``."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default)."""
    data: DataSection = field(default_factory=DataSection)
    """Training data."""
    model: ModelSection = field(default_factory=ModelSection)
    """The model and its trained parameters."""
    optim: OptimSection = field(default_factory=OptimSection)
    """Optimiser and schedule."""
    autoencoder: AutoencoderSection = field(default_factory=AutoencoderSection)
    """Autoencoder pretraining (init=scratch)."""
    eval: EvalSection = field(default_factory=EvalSection)
    """The toy consistency measure after training."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many optimiser steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept (older ones are deleted)."""
    log_every: int = 10
    """Write a loss-log row every this many optimiser steps."""
    resume: bool = True
    """Continue from the newest checkpoint in ``output_dir`` when there is one."""
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Dtype of the floating weights of the final model folder (checkpoints are always float32)."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""
    phase: Literal["all", "autoencoder"] = "all"
    """``autoencoder``: stop once the autoencoder of a from-scratch model is trained and saved (so several runs,
    e.g. the arms of an ablation, can share it through ``model.autoencoder``)."""

    def __post_init__(self) -> None:
        check_device(self.device, "device")
