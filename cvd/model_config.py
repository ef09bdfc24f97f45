"""The model config: every shape and setting of a CVD model (SD1.5-style UNet + AnimateDiff motion modules +
CameraCtrl pose encoder + Cross-View Synchronization Modules, with VAE, text encoder, tokenizer and scheduler).

Named configs live in ``configs/model/<name>.yaml`` (``tiny``: random weights, seconds on a CPU; ``sd15``: the
shapes of the published checkpoints). Field defaults are the published SD1.5 shapes. :func:`config_from_dict`
(:func:`cvd.dataconfig.from_dict`) reads a mapping strictly (unknown keys and wrong types are errors naming the
key). Imports only the standard library, PyYAML, ``cvd.dataconfig`` and ``cvd.geometry``; must never import
``cvd_scene``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cvd.dataconfig import from_dict as config_from_dict
from cvd.dataconfig import to_dict as config_to_dict
from cvd.geometry import EpipolarBiasConfig

__all__ = [
    "CVDModelConfig",
    "CVSMConfig",
    "MotionConfig",
    "PoseEncoderConfig",
    "SchedulerConfig",
    "TextEncoderConfig",
    "UNetConfig",
    "VAEConfig",
    "config_from_dict",
    "config_to_dict",
    "load_model_config",
]


@dataclass(kw_only=True)
class UNetConfig:
    """The 2D (spatial) UNet, in the terms of diffusers' ``UNet2DConditionModel``."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    """Channels of each resolution level, finest first (one UNet level per entry)."""
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    """diffusers block type of each down level (``CrossAttnDownBlock2D`` or ``DownBlock2D``)."""
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    """diffusers block type of each up level, coarsest first (``CrossAttnUpBlock2D`` or ``UpBlock2D``)."""
    layers_per_block: int = 2
    """ResNet (+ attention, + motion module, + CVSM) layers per down level; up levels have one more."""
    cross_attention_dim: int = 768
    """Width of the text-encoder tokens the spatial cross-attention reads."""
    attention_head_dim: int = 8
    """Number of spatial attention heads (diffusers' historic name for it in SD1.5 configs)."""
    norm_num_groups: int = 32
    """GroupNorm groups of the ResNets, spatial transformers and motion modules."""
    norm_eps: float = 1e-5
    """GroupNorm epsilon of the ResNets."""
    in_channels: int = 4
    """Latent channels in."""
    out_channels: int = 4
    """Latent channels out (the predicted noise)."""
    sample_size: int = 64
    """Nominal latent side (informative for diffusers; any multiple of the UNet's stride works)."""
    use_linear_projection: bool = False
    """Spatial transformers project in/out with Linear (SD2) instead of 1x1 conv (SD1.5)."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of diffusers' ``UNet2DConditionModel`` for this UNet."""
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": tuple(self.down_block_types),
            "up_block_types": tuple(self.up_block_types),
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "use_linear_projection": self.use_linear_projection,
            "act_fn": "silu",
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "center_input_sample": False,
        }


@dataclass(kw_only=True)
class MotionConfig:
    """The AnimateDiff v3 motion modules (one temporal transformer after every down/up layer, none in the mid block)."""

    num_attention_heads: int = 8
    """Heads of each temporal self-attention."""
    max_seq_length: int = 32
    """Length of the sinusoidal temporal position table (frames per clip at most)."""
    per_frame_norm: bool = True
    """Normalise the motion module input per frame, as the trained weights expect (diffusers normalises over all
    frames together). False reproduces plain diffusers AnimateDiff."""


@dataclass(kw_only=True)
class PoseEncoderConfig:
    """The CameraCtrl pose encoder: Plücker rays -> one camera feature map per UNet level."""

    in_channels: int = 6
    """Channels per pixel of the input (Plücker: 6)."""
    downscale_factor: int = 8
    """PixelUnshuffle factor; equals the VAE's downscale so level 0 is the latent grid."""
    num_res_blocks: int = 2
    """Residual blocks (each followed by a temporal attention block) per level."""
    num_attention_heads: int = 8
    """Heads of the temporal attention blocks."""
    max_frames: int = 16
    """Length of its sinusoidal temporal position table (the published encoder: 16)."""


@dataclass(kw_only=True)
class CVSMConfig:
    """The Cross-View Synchronization Modules (one after the motion module of every down/up layer)."""

    enabled: bool = True
    """Build the CVSMs (False: a camera-controlled AnimateDiff without cross-view attention)."""
    num_attention_heads: int = 8
    """Heads of each cross-view attention."""
    num_attentions: int = 2
    """Sequential cross-view attentions per module (published: 2)."""
    ff_mult: int = 4
    """GEGLU feed-forward width as a multiple of the channels."""
    norm_num_groups: int = 32
    """Groups of the per-frame input GroupNorm."""
    norm_eps: float = 1e-6
    """Epsilon of the per-frame input GroupNorm."""


@dataclass(kw_only=True)
class TextEncoderConfig:
    """The CLIP text encoder (transformers ``CLIPTextConfig`` fields; defaults: CLIP ViT-L/14 of SD1.5)."""

    vocab_size: int = 49408
    """Token vocabulary size."""
    hidden_size: int = 768
    """Token width (= the UNet's cross_attention_dim)."""
    intermediate_size: int = 3072
    """MLP width."""
    num_hidden_layers: int = 12
    """Transformer layers."""
    num_attention_heads: int = 12
    """Attention heads."""
    max_position_embeddings: int = 77
    """Tokens per prompt."""
    hidden_act: str = "quick_gelu"
    """MLP activation."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    bos_token_id: int = 0
    """Id of the start token (as stored in the SD1.5 config)."""
    eos_token_id: int = 2
    """Id of the end token (as stored in the SD1.5 config)."""
    pad_token_id: int = 1
    """Id of the padding token (as stored in the SD1.5 config)."""

    def transformers_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(kw_only=True)
class VAEConfig:
    """The KL autoencoder (diffusers ``AutoencoderKL``; defaults: SD1.5)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels of each level; the image is downscaled by 2**(levels-1)."""
    layers_per_block: int = 2
    """ResNets per level."""
    latent_channels: int = 4
    """Latent channels."""
    norm_num_groups: int = 32
    """GroupNorm groups."""
    sample_size: int = 512
    """Nominal image side (informative)."""
    scaling_factor: float = 0.18215
    """Latents are multiplied by this after encoding (and divided before decoding)."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.sample_size,
            "scaling_factor": self.scaling_factor,
        }


@dataclass(kw_only=True)
class SchedulerConfig:
    """The DDIM noise schedule the weights were trained with (CameraCtrl/CVD inference settings)."""

    num_train_timesteps: int = 1000
    """Training timesteps."""
    beta_start: float = 0.00085
    """First beta of the schedule."""
    beta_end: float = 0.012
    """Last beta of the schedule."""
    beta_schedule: str = "linear"
    """diffusers beta schedule name."""
    steps_offset: int = 1
    """Offset added to the inference timesteps."""
    clip_sample: bool = False
    """Clip the predicted x0 to [-1, 1]."""
    set_alpha_to_one: bool = True
    """Final alpha-cumprod of 1 (diffusers' DDIM default, which the release used)."""
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    """What the UNet predicts."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(kw_only=True)
class CVDModelConfig:
    """Everything needed to build a CVD model (random weights, the published files, or our saved format)."""

    name: str = "sd15"
    """Name of the config (``tiny``, ``sd15``, ...)."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """The spatial UNet."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """The AnimateDiff motion modules."""
    pose_encoder: PoseEncoderConfig = field(default_factory=PoseEncoderConfig)
    """The CameraCtrl pose encoder."""
    cvsm: CVSMConfig = field(default_factory=CVSMConfig)
    """The Cross-View Synchronization Modules."""
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The CLIP text encoder."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """The autoencoder."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """The noise schedule."""
    tokenizer: Literal["folder", "tiny"] = "folder"
    """``folder``: the CLIP tokenizer files of the weights folder (SD1.5's ``tokenizer/``); ``tiny``: a small
    character-level CLIP tokenizer built in code (random-weight test models; needs no files)."""
    pose_injection_scale: float = 1.0
    """Scale of the camera features injected before Q/K/V of each motion module's first temporal attention
    (``x + scale · qkv_merge(x + pose)``); 0 gives plain AnimateDiff motion."""
    epipolar_bias: EpipolarBiasConfig = field(default_factory=EpipolarBiasConfig)
    """How the cross-view attention bias is built from the cameras (default: the released soft bias)."""
    model_units_per_metre: float = 1.0
    """Camera translations are multiplied by this at the camera -> model boundary (CameraCtrl/CVD were trained on
    RealEstate10K poses of arbitrary SLAM scale, where a 16-frame clip moves about 0.1-3 units)."""
    num_frames: int = 16
    """Frames per video the model was trained with."""
    height_px: int = 256
    """Image height the model was trained at."""
    width_px: int = 256
    """Image width the model was trained at."""
    first_frame: Literal["noised", "clean"] = "noised"
    """How a held first frame (``first_frame=`` of the pipeline, ``generate.image``) enters sampling: ``noised``
    to every step's noise level with the video's own noise (training-free, any model), or ``clean`` at every step
    (a model trained with ``optim.first_frame_fraction > 0``, which saw frame 0 clean and learned from the others)."""

    def __post_init__(self) -> None:
        u = self.unet
        levels = len(u.block_out_channels)
        if levels < 1:
            raise ValueError(f"unet.block_out_channels must not be empty, got {u.block_out_channels=}")
        if len(u.down_block_types) != levels or len(u.up_block_types) != levels:
            raise ValueError(
                f"unet needs one down and one up block type per level: {u.block_out_channels=} "
                f"{u.down_block_types=} {u.up_block_types=}"
            )
        for name, groups in (("unet.norm_num_groups", u.norm_num_groups), ("cvsm.norm_num_groups", self.cvsm.norm_num_groups)):
            bad = [c for c in u.block_out_channels if c % groups]
            if bad:
                raise ValueError(f"{name}={groups} must divide every channel count, got {u.block_out_channels=}")
        for name, heads in (
            ("motion.num_attention_heads", self.motion.num_attention_heads),
            ("cvsm.num_attention_heads", self.cvsm.num_attention_heads),
            ("pose_encoder.num_attention_heads", self.pose_encoder.num_attention_heads),
        ):
            bad = [c for c in u.block_out_channels if c % heads]
            if bad:
                raise ValueError(f"{name}={heads} must divide every channel count, got {u.block_out_channels=}")
        if self.pose_encoder.downscale_factor != self.vae_scale_factor:
            raise ValueError(
                f"pose_encoder.downscale_factor={self.pose_encoder.downscale_factor} must equal the VAE downscale "
                f"{self.vae_scale_factor} (2**(len(vae.block_out_channels)-1)) so pose level 0 is the latent grid"
            )
        if self.text_encoder.hidden_size != u.cross_attention_dim:
            raise ValueError(
                f"text_encoder.hidden_size={self.text_encoder.hidden_size} must equal "
                f"unet.cross_attention_dim={u.cross_attention_dim}"
            )
        if self.num_frames > min(self.motion.max_seq_length, self.pose_encoder.max_frames):
            raise ValueError(
                f"num_frames={self.num_frames} exceeds the temporal position tables "
                f"(motion.max_seq_length={self.motion.max_seq_length}, pose_encoder.max_frames={self.pose_encoder.max_frames})"
            )
        if self.first_frame not in ("noised", "clean"):
            raise ValueError(f"first_frame must be 'noised' or 'clean', got {self.first_frame!r}")
        if not self.model_units_per_metre > 0:
            raise ValueError(f"model_units_per_metre must be positive, got {self.model_units_per_metre=}")
        stride = self.vae_scale_factor * 2 ** (levels - 1)
        if self.height_px % stride or self.width_px % stride:
            raise ValueError(f"height_px/width_px must be multiples of {stride}, got {self.height_px}x{self.width_px}")

    @property
    def num_levels(self) -> int:
        """UNet resolution levels (= pose-encoder levels)."""
        return len(self.unet.block_out_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each axis."""
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def image_stride_px(self) -> int:
        """Image sides must be multiples of this (VAE downscale times the UNet's and pose encoder's 2x steps)."""
        return self.vae_scale_factor * 2 ** (self.num_levels - 1)


# ----------------------------------------------------------------------------------------------------------
# strict dict <-> dataclass (cvd must not import cvd_scene's loader)


def load_model_config(path: str | Path) -> CVDModelConfig:
    """Read a model config YAML file (e.g. ``configs/model/tiny.yaml``) strictly."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config file {path} does not exist")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    try:
        return config_from_dict(CVDModelConfig, data)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{path}: {e}") from None
