"""Collaborative N-video sampling: :class:`CVDPipeline`, a diffusers ``DiffusionPipeline`` over the components of
a :class:`~cvd.model.CVDModel`, turning one prompt and N camera paths into N videos that agree with each other.

One ``__call__`` in three steps sharing one :class:`SamplingState`: :meth:`~CVDPipeline.prepare` checks the
inputs, encodes the prompt once, encodes the cameras once (Plücker rays -> pose features per UNet level), draws
the pairing schedule (:mod:`cvd.pairing`) and the initial noise; :meth:`~CVDPipeline.denoise` runs the loop: at
every step, for every evaluation of the schedule, its pairs go through the UNet in batched calls (each pair = two
rows attending to each other, times the guidance branches, which are never paired across), every video's
predictions are mixed with its weights, the scheduler steps and re-noises between recurrences; finally the VAE
decodes. The trainer's pair sampler (:func:`cvd.training.sampling.sample_pair`) is this pipeline with fixed
latents; the release's negative prompt and guidance rule live in :mod:`cvd.defaults`.

Cost model: text embeddings and pose features are computed once per call; the epipolar bias of a directed video
pair depends only on the cameras and the level grids, so it is built once per pair and cached (fp16 by default);
the prepared context of a UNet call (row partners, per-row bias and pose tokens) is cached per pair group, so a
fixed pairing (``exhaustive``) prepares its contexts once for the whole run. The loop keeps latents in float32
and runs the UNet in the model's dtype; nothing inside a UNet call reads device values on the host.

Cameras: ``world_from_cam`` [V, F, 4, 4] (OpenCV axes, metres, one world for all videos) and ``K`` [V, F, 3, 3] in
pixels of the generated image. The pose encoder sees each video's poses relative to its own first frame with
translations times ``model_units_per_metre`` (CameraCtrl); the epipolar bias uses the world poses (same scale),
so a plan whose videos do not share their first camera still gets its true fundamental matrices at frame 0
(with a warning: the model was trained on pairs that share it).

Memory (the diffusers-style switches, each also set by :meth:`CVDPipeline.set_memory_mode`):
:meth:`~CVDPipeline.enable_model_cpu_offload` (one model on the device at a time, :class:`cvd.offload.ModelOffload`),
:meth:`~CVDPipeline.enable_sequential_cpu_offload` (one layer at a time), :meth:`~CVDPipeline.enable_vae_slicing`
(one frame per VAE call), :meth:`~CVDPipeline.enable_vae_tiling` (diffusers' overlapping tiles inside the VAE)
and ``max_pairs_per_call`` (pairs per UNet call; pairs are independent rows, so the cap changes no result).
:func:`estimate_peak_memory` predicts the peak of each mode.

One video (or a model built without synchronization modules) is plain camera-controlled video: every video is
run alone, its CVSMs skipped (exactly CameraCtrl on AnimateDiff), one evaluation per step.

``fixed_frames``/``fixed_latents``: videos replaced at every evaluation by their ground truth noised to the
current timestep (with that video's initial noise, as a deterministic DDIM trajectory through the ground truth
would be); they act as partners only. This is the toy consistency measure's "fixed ground-truth partner".

``first_frame``: one picture [H, W, 3] that is frame 0 of every video (image -> scene): its latent is held at the
encoded picture, noised to the current timestep with each video's own initial noise at every evaluation (as for
fixed partners; training-free, any model), or clean at every evaluation for a model trained first-frame
conditioned (``config.first_frame == "clean"``), and put back clean before decoding, so frame 0 decodes to the
auto-encoded picture and the other frames are denoised around it.

Imports torch, diffusers, numpy and ``cvd``; must never import ``cvd_scene``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from cvd.context import CrossViewContext, LineRedraw, level_grids
from cvd.defaults import DEFAULT_NEGATIVE_PROMPT, default_guidance_scale, peak_memory_mb, reset_peak_memory
from cvd.geometry import (
    epipolar_bias_pyramid,
    infinite_homography,
    model_poses,
    relative_pose,
)
from cvd.model import CVDModel, camera_features, text_embeddings
from cvd.model_config import CVDModelConfig
from cvd.pairing import (
    DEFAULT_PRESET,
    Evaluation,
    PairingSchedule,
    PairSet,
    call_groups,
    check_weights,
    schedule_preset,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "MEMORY_MODES",
    "CVDPipeline",
    "CVDPipelineOutput",
    "MemoryEstimate",
    "SamplingState",
    "SamplingStats",
    "default_guidance_scale",
    "estimate_peak_memory",
    "estimate_row_bytes",
    "model_poses",
    "model_weight_bytes",
    "shares_first_camera",
]

_SHARED_FIRST_TOL = 1e-4

MEMORY_MODES = {
    "fast": {"offload": None, "vae_slicing": False, "vae_tiling": False, "max_pairs_per_call": None},
    "balanced": {"offload": "model", "vae_slicing": True, "vae_tiling": False, "max_pairs_per_call": 2},
    "low": {"offload": "sequential", "vae_slicing": True, "vae_tiling": True, "max_pairs_per_call": 1},
}
"""What each memory mode switches on. ``fast``: every model resident, every pair of an evaluation in one UNet
call (or as many as the device's free memory allows), 16 frames per VAE call. ``balanced``: one model on the
device at a time, at most 2 pairs per UNet call, one frame per VAE call. ``low``: one layer's weights on the device
at a time, one pair per UNet call, one frame per VAE call in overlapping tiles."""


@dataclass
class SamplingStats:
    """What one sampling run cost."""

    unet_calls: int = 0
    """UNet forward calls."""
    unet_rows: int = 0
    """Rows over all UNet calls (videos x guidance branches): compute in units of one video's denoising pass."""
    evaluations: int = 0
    """Noise estimates of all videos (steps x recurrences)."""
    wall_time_s: float = 0.0
    """The whole call (text, cameras, denoising, decoding)."""
    denoise_time_s: float = 0.0
    """The denoising loop alone (device synchronised at its end)."""
    decode_time_s: float = 0.0
    """VAE decoding."""
    peak_memory_mb: float = 0.0
    """Peak memory: CUDA memory allocated during the call on a GPU, else the process's peak resident memory."""
    memory_kind: str = ""
    """``cuda-allocated`` or ``process-rss``."""
    device: str = ""
    """Device the UNet ran on (and the GPU's name)."""
    dtype: str = ""
    """UNet dtype."""
    seed: int | None = None
    """Seed of the generator (None when a generator was passed in)."""
    pairing: dict = field(default_factory=dict)
    """The schedule used (strategy, R, Q, batching, ...)."""
    shared_first_camera: bool = True
    """Whether every video starts at one common camera (as in training)."""
    bias_cache_mb: float = 0.0
    """Memory held by the cached epipolar biases at the end."""
    max_rows_per_call: int = 0
    """Largest UNet call, in rows."""


@dataclass(eq=False)
class SamplingState:
    """One sampling run from :meth:`CVDPipeline.prepare` to :meth:`CVDPipeline.denoise` (diffusers' prepared
    latents and loop inputs, in one object): the encoded inputs, the schedule, the caches and the running latents.
    ``denoise`` updates ``latents`` and ``stats``."""

    latents: Tensor
    """[V, C, F, h, w] float32 on the execution device: the running sample (clean after ``denoise``)."""
    noise: Tensor
    """[V, C, F, h, w] float32: the initial noise (fixed partners and the held first frame are noised with it)."""
    text: Tensor
    """[branches, L, D] text tokens in the UNet dtype (``[negative, prompt]`` when guided, else ``[prompt]``)."""
    features: list[Tensor]
    """Pose features per UNet level, [V, F, C_l, h_l, w_l]."""
    K: Tensor
    """[V, F, 3, 3] float64 on the host, pixels of the generated image."""
    world_model: Tensor
    """[V, F, 4, 4] float64 on the host: ``world_from_cam`` (OpenCV axes) with translations in model units."""
    angles: Tensor
    """[V, V, F] float64: pseudo-line orientations (radians) of zero-baseline frames, per directed pair."""
    fixed: dict[int, Tensor]
    """Fixed ground-truth partners' clean latents, ``{video: [C, F, h, w]}``."""
    held: Tensor | None
    """``first_frame``'s clean latent [C, h, w], or None."""
    held_videos: list[int]
    """The videos whose frame 0 is held (every video that is not fixed)."""
    scheduler: Any
    """The diffusers scheduler, its timesteps set."""
    num_inference_steps: int
    """Denoising steps S."""
    timesteps: Tensor
    """[S] the scheduler's timesteps on the device."""
    steps_host: list[int]
    """The same timesteps as host integers."""
    plan: list[list[Evaluation]]
    """The evaluations drawn, ``[step][recurrence]``."""
    schedule: PairingSchedule
    """The pairing schedule they were drawn from."""
    generator: torch.Generator
    """The run's generator (re-noising, stochastic scheduler steps)."""
    step_kwargs: dict
    """Extra arguments of ``scheduler.step`` (``eta``, ``generator``) that it accepts."""
    guidance_scale: float
    """Classifier-free guidance scale (the default rule applied)."""
    branches: int
    """Guidance branches per video: 2 (unconditional, conditional) when guided, else 1."""
    height: int
    """Generated image height, pixels."""
    width: int
    """Generated image width, pixels."""
    grids: list[tuple[int, int]]
    """Token grid of every UNet level."""
    max_pairs: int | None
    """Pairs per UNet call at most (None: no limit)."""
    bias_cache: _LRU
    """Epipolar bias of every directed pair met so far."""
    call_plans: _LRU
    """Prepared UNet calls per pair group."""
    line_generator: torch.Generator | None
    """The per-call pseudo-line redraw's generator (``line_draw: per-call``), else None."""
    device: torch.device
    """Where the models run."""
    dtype: torch.dtype
    """UNet dtype."""
    stats: SamplingStats
    """What the run cost so far."""


@dataclass
class CVDPipelineOutput(BaseOutput):
    """Output of :class:`CVDPipeline`."""

    frames: Any
    """[V, F, H, W, 3] float32 in [0, 1] (numpy, or torch with ``output_type="pt"``); latents [V, C, F, h, w] with
    ``output_type="latent"``."""
    stats: SamplingStats
    """Cost of the run."""
    schedule: list = field(default_factory=list)
    """The evaluations drawn, ``[step][recurrence]`` -> :class:`~cvd.pairing.Evaluation` (inspection, tests)."""


# ---------------------------------------------------------------------------------------------- cameras


def _as_tensor(name: str, x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64)
    if isinstance(x, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def shares_first_camera(world_from_cam: Tensor, tol: float = _SHARED_FIRST_TOL) -> bool:
    """Whether every video's frame 0 is the same camera (pose within ``tol``, metres and rotation entries)."""
    first = world_from_cam[:, 0]  # [V, 4, 4]
    return bool((first - first[:1]).abs().max() <= tol)


# ---------------------------------------------------------------------------------------------- memory


def estimate_row_bytes(
    config: CVDModelConfig, num_frames: int, height: int, width: int, dtype: torch.dtype
) -> int:
    """A deliberately generous estimate of the device memory one UNet row (one video, one guidance branch) holds
    during a call: its per-level epipolar bias plus activations (skip connections and the largest transient
    buffers, ~30 feature maps of every level)."""
    size = torch.empty((), dtype=dtype).element_size()
    grids = level_grids(
        (height // config.vae_scale_factor, width // config.vae_scale_factor), config.num_levels
    )
    tokens = [h * w for h, w in grids]
    bias = (
        sum(n * n for n in tokens) * size
        if config.cvsm.enabled and config.epipolar_bias.mode != "none"
        else 0
    )
    acts = sum(n * c for n, c in zip(tokens, config.unet.block_out_channels)) * size * 30
    return num_frames * (bias + acts)


# Calibrated on a 2-core CPU (benchmarks/bench_memory.py: process memory of one sampling call of small
# models): feature maps held per UNet row-frame, in units of one finest-level map (tokens x channels), and the
# per-call fixed overhead.
_SKIP_MAPS = 3.0  # skip connections and the pose tokens, summed over levels with each level's size
_PEAK_MAPS = 24.0  # the largest transient (GEGLU feed-forward, resnet temporaries) at the finest level
_VAE_PEAK_MAPS = 12.0  # VAE decoding, in units of the full-resolution map of its first level's channels
_CPU_CALL_OVERHEAD = 28 * 2**20  # process memory a CPU sampling call adds whatever its size (text, scheduler, ...)


@dataclass
class MemoryEstimate:
    """Predicted peak memory of one :class:`CVDPipeline` call (bytes), and where it comes from."""

    mode: str
    """Memory mode (``fast``, ``balanced``, ``low``)."""
    rows_per_call: int
    """UNet rows of the largest call."""
    weights: int
    """Weights on the device during the denoising loop."""
    activations: int
    """UNet activations of the largest call (incl. materialised attention scores on the CPU)."""
    bias: int
    """Epipolar bias: the call's prepared per-row copy plus the cached per-pair biases."""
    decode: int
    """The decoding phase: weights on the device then plus the VAE's activations."""
    peak: int
    """max(denoising phase, decoding phase)."""

    def gib(self) -> float:
        return self.peak / 2**30


def estimate_peak_memory(
    config: CVDModelConfig,
    weight_bytes: Mapping[str, int],
    largest_layer_bytes: Mapping[str, int],
    *,
    num_videos: int,
    num_frames: int,
    height: int,
    width: int,
    mode: str = "fast",
    dtype: torch.dtype = torch.float16,
    guided: bool = True,
    device_type: str = "cuda",
    max_pairs_per_call: int | None = None,
    decode: bool = True,
) -> MemoryEstimate:
    """Predicted peak memory of one sampling call in a memory mode (:data:`MEMORY_MODES`).

    ``weight_bytes``/``largest_layer_bytes``: per model (``text_encoder``, ``pose_encoder``, ``unet``, ``vae``),
    all its weights and its largest single module's own weights, in the dtype it runs in. The denoising phase holds
    the resident weights, the largest UNet call's activations (rows = videos in pairs of the call x guidance
    branches; all pairs of an evaluation in ``fast`` mode, assuming N/2 pairs), its prepared bias and the cached
    per-pair biases (2 partners per video); the decoding phase the resident weights and one VAE call. On a CPU
    (``device_type="cpu"``) masked attention holds one float32 score matrix per row-frame at the finest level and
    a call adds a fixed ~28 MiB of process memory; on CUDA, SDPA's fused kernels materialise no scores. A model
    for planning, calibrated against process memory on the CPU (benchmarks/bench_memory.py); not a guarantee.
    """
    if mode not in MEMORY_MODES:
        raise ValueError(f"mode must be one of {sorted(MEMORY_MODES)}, got {mode!r}")
    spec = MEMORY_MODES[mode]
    size = torch.empty((), dtype=dtype).element_size()
    branches = 2 if guided else 1
    pairs = max(1, num_videos // 2)
    cap = max_pairs_per_call if max_pairs_per_call is not None else spec["max_pairs_per_call"]
    if cap is not None:
        pairs = min(pairs, cap)
    rows = 2 * pairs * branches if num_videos > 1 else branches
    rf = rows * num_frames
    f = config.vae_scale_factor
    grids = level_grids((height // f, width // f), config.num_levels)
    tokens = [h * w for h, w in grids]
    channels = config.unet.block_out_channels
    maps = sum(n * c for n, c in zip(tokens, channels))
    acts = rf * size * (_SKIP_MAPS * maps + _PEAK_MAPS * tokens[0] * channels[0])
    if device_type == "cpu":  # one float32 [N, N] per row-frame at the finest level (masked SDPA), fixed overhead
        acts += rf * tokens[0] ** 2 * 4 + _CPU_CALL_OVERHEAD
    cross = num_videos > 1 and config.cvsm.enabled and config.epipolar_bias.mode != "none"
    bias = 0
    if cross:
        per_frame = sum(n * n for n in tokens)
        bias = rf * per_frame * size + 2 * num_videos * num_frames * per_frame * config.epipolar_bias.torch_dtype.itemsize
    vae_maps = _VAE_PEAK_MAPS * height * width * config.vae.block_out_channels[0] * size
    frames_per_decode = 1 if spec["vae_slicing"] else min(16, num_videos * num_frames)
    if spec["vae_tiling"]:
        tile = config.vae.sample_size
        vae_maps = vae_maps * min(1.0, (tile * tile) / (height * width))
    vae_act = int(vae_maps * frames_per_decode)
    if spec["offload"] is None:
        resident = sum(weight_bytes.values())
        w_denoise, w_decode = resident, resident
    elif spec["offload"] == "model":
        w_denoise, w_decode = weight_bytes["unet"], weight_bytes["vae"]
    else:
        w_denoise, w_decode = largest_layer_bytes["unet"], largest_layer_bytes["vae"]
    denoise = w_denoise + int(acts) + bias
    dec = w_decode + vae_act if decode else 0
    return MemoryEstimate(
        mode=mode, rows_per_call=rows, weights=w_denoise, activations=int(acts), bias=bias, decode=dec,
        peak=max(denoise, dec),
    )


def model_weight_bytes(models: Mapping[str, nn.Module]) -> tuple[dict[str, int], dict[str, int]]:
    """Per model: all its weights and its largest module's own weights, in bytes (works on the meta device)."""
    total, largest = {}, {}
    for name, model in models.items():
        own = [
            sum(t.numel() * t.element_size() for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)
            for m in model.modules()
        ]
        total[name] = sum(own)
        largest[name] = max(own)
    return total, largest


class _LRU:
    """Least-recently-used cache bounded by bytes (values report their size through ``nbytes``)."""

    def __init__(self, capacity_bytes: float) -> None:
        self.capacity = capacity_bytes
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0

    def get(self, key):
        item = self.items.get(key)
        if item is None:
            return None
        self.items.move_to_end(key)
        return item[0]

    def put(self, key, value, nbytes: int) -> None:
        self.items[key] = (value, nbytes)
        self.items.move_to_end(key)
        self.bytes += nbytes
        while self.bytes > self.capacity and len(self.items) > 1:
            _, (_, size) = self.items.popitem(last=False)
            self.bytes -= size


# ---------------------------------------------------------------------------------------------- call plans


@dataclass(eq=False)
class _CallPlan:
    """Everything a UNet call of one pair group needs, on the device (cached and reused while the group recurs)."""

    context: CrossViewContext
    row_video: Tensor  # [B] long
    text: Tensor  # [B, L, D]
    mix: Tensor  # [V, B / branches] float32: weight of each guided row's prediction in each video's estimate
    num_rows: int
    nbytes: int


class CVDPipeline(DiffusionPipeline):
    """Collaborative Video Diffusion: N camera-controlled videos of one prompt, synchronised pair by pair.

    Build it from a model bundle (:meth:`from_model`, :meth:`from_pretrained`) or from the components. The
    components are those of :class:`~cvd.model.CVDModel`; the model config travels on ``unet.config``.
    """

    model_cpu_offload_seq = "text_encoder->pose_encoder->unet->vae"
    _optional_components: ClassVar[list[str]] = []

    def __init__(
        self,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        unet: nn.Module,
        pose_encoder: nn.Module,
        scheduler: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            pose_encoder=pose_encoder,
            scheduler=scheduler,
        )
        self._bias_cache: _LRU | None = None
        self._line_generator: torch.Generator | None = None
        self._offload = None  # cvd.offload.ModelOffload | SequentialOffload | None
        self._vae_slicing = False
        self._max_pairs_per_call: int | None = None
        self.memory_mode = "fast"

    # ------------------------------------------------------------------------------------------------ build

    @classmethod
    def from_model(cls, model) -> CVDPipeline:
        """The pipeline over a :class:`~cvd.model.CVDModel`'s components (shared, not copied)."""
        return cls(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            pose_encoder=model.pose_encoder,
            scheduler=model.scheduler,
        )

    @classmethod
    def from_pretrained(
        cls, path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, **kwargs
    ) -> CVDPipeline:  # type: ignore[override]
        """Load a model folder in our saved format (``cvd-scene convert`` or :meth:`CVDModel.save_pretrained`)."""
        return cls.from_model(CVDModel.from_pretrained(path, device=device, dtype=dtype, **kwargs).eval())

    def save_pretrained(self, path, **kwargs):  # type: ignore[override]
        """Write the components as a model folder in our saved format."""
        model = CVDModel(
            config=self.model_config,
            unet=self.unet,
            pose_encoder=self.pose_encoder,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=self.scheduler,
        )
        return model.save_pretrained(path, **kwargs)

    @property
    def model_config(self) -> CVDModelConfig:
        """The model config the UNet was built from."""
        return self.unet.config

    @property
    def device(self) -> torch.device:  # diffusers' version asks every module for ``.device``
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def _execution_device(self) -> torch.device:  # where the models run (under offload: not where they wait)
        return self._offload.device if self._offload is not None else self.unet.device

    # ------------------------------------------------------------------------------------------------ memory

    def _offload_models(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder, "pose_encoder": self.pose_encoder, "unet": self.unet, "vae": self.vae}

    def enable_model_cpu_offload(  # type: ignore[override]
        self, gpu_id: int | None = None, device: torch.device | str = "cuda", *, offload_device: torch.device | str = "cpu"
    ) -> None:
        """Keep every model on the CPU until it runs; at most one model's weights on ``device`` at a time (the
        UNet for the whole denoising loop). Saves the text encoder's, pose encoder's and VAE's weights on the
        device (about 1.0 GiB at SD1.5 size in fp16) for one move of each model per call. ``offload_device``:
        where the models wait."""
        from cvd.offload import ModelOffload

        self.disable_cpu_offload()
        device = torch.device(device)
        if gpu_id is not None and device.index is None:
            device = torch.device(device.type, gpu_id)
        self._offload = ModelOffload(
            self._offload_models(), device, offload_device, hooked=("text_encoder", "pose_encoder", "unet")
        )

    def enable_sequential_cpu_offload(  # type: ignore[override]
        self, gpu_id: int | None = None, device: torch.device | str = "cuda", *, offload_device: torch.device | str = "cpu"
    ) -> None:
        """Keep every weight on the CPU; each layer brings its own to ``device`` for its forward only. The least
        device memory (weights: one layer) and the slowest (every weight crosses the bus at every UNet call)."""
        from cvd.offload import SequentialOffload

        self.disable_cpu_offload()
        device = torch.device(device)
        if gpu_id is not None and device.index is None:
            device = torch.device(device.type, gpu_id)
        self._offload = SequentialOffload(self._offload_models(), device, offload_device)

    def disable_cpu_offload(self) -> None:
        """Remove the offload hooks; the models stay on the CPU (move the pipeline's models yourself)."""
        if self._offload is not None:
            self._offload.remove()
            self._offload.offload_all()
            self._offload = None

    def estimate_peak_memory(
        self, *, num_videos: int, num_frames: int, height: int, width: int, mode: str | None = None,
        guided: bool = True, decode: bool = True, device_type: str | None = None,
    ) -> MemoryEstimate:
        """:func:`estimate_peak_memory` for this pipeline's models and dtype (default: its current mode and
        execution device)."""
        total, largest = model_weight_bytes(self._offload_models())
        return estimate_peak_memory(
            self.model_config, total, largest, num_videos=num_videos, num_frames=num_frames, height=height,
            width=width, mode=mode or self.memory_mode, dtype=self.unet.dtype, guided=guided,
            device_type=device_type or self._execution_device.type, decode=decode,
        )

    def enable_vae_slicing(self) -> None:  # type: ignore[override]
        """Decode (and encode) one frame per VAE call instead of 16."""
        self._vae_slicing = True

    def disable_vae_slicing(self) -> None:  # type: ignore[override]
        self._vae_slicing = False

    def enable_vae_tiling(self) -> None:  # type: ignore[override]
        """Decode large frames in overlapping tiles (diffusers' ``AutoencoderKL`` tiling: tiles of the VAE's
        ``sample_size``, blended over a quarter tile): memory bounded by the tile, small seams."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:  # type: ignore[override]
        self.vae.disable_tiling()

    def set_memory_mode(self, mode: str, device: torch.device | str | None = None) -> None:
        """Switch to a memory mode of :data:`MEMORY_MODES` (``fast``, ``balanced``, ``low``). ``device``: the
        execution device of the offloading modes (default: CUDA when available, else the CPU)."""
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {sorted(MEMORY_MODES)}, got {mode!r}")
        spec = MEMORY_MODES[mode]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else self.unet.device
        self.disable_cpu_offload()
        if spec["offload"] == "model":
            self.enable_model_cpu_offload(device=device)
        elif spec["offload"] == "sequential":
            self.enable_sequential_cpu_offload(device=device)
        else:
            for m in self._offload_models().values():
                nn.Module.to(m, device=device)
        self._vae_slicing = spec["vae_slicing"]
        if spec["vae_tiling"]:
            self.enable_vae_tiling()
        else:
            self.disable_vae_tiling()
        self._max_pairs_per_call = spec["max_pairs_per_call"]
        self.memory_mode = mode

    # ------------------------------------------------------------------------------------------------ inputs

    def check_inputs(
        self,
        *,
        prompt: Any,
        negative_prompt: Any,
        world_from_cam: Tensor,
        K: Tensor,
        num_frames: int | None,
        height: Any,
        width: Any,
        num_inference_steps: Any,
        guidance_scale: Any,
        eta: Any,
        pairing: Any,
        covisibility: Any,
        generator: Any,
        seed: Any,
        latents: Any,
        fixed_frames: Any,
        fixed_latents: Any,
        max_rows_per_call: Any,
        output_type: Any = "np",
        first_frame: Any = None,
        callback_on_step_end_tensor_inputs: Any = ("latents",),
        scheduler: Any,
        max_pairs_per_call: Any = None,
    ) -> None:
        """Validate every argument; each error names the argument and its value."""
        cfg = self.model_config
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(
                f"negative_prompt must be a str or None, got {type(negative_prompt).__name__}: {negative_prompt!r}"
            )
        if (
            world_from_cam.ndim != 4
            or world_from_cam.shape[-2:] != (4, 4)
            or world_from_cam.shape[0] < 1
            or world_from_cam.shape[1] < 1
        ):
            raise ValueError(
                f"world_from_cam must be [V, F, 4, 4] with V, F >= 1, got world_from_cam.shape={tuple(world_from_cam.shape)}"
            )
        V, F = world_from_cam.shape[:2]
        if K.shape != (V, F, 3, 3):
            raise ValueError(
                f"K must be [V, F, 3, 3] = [{V}, {F}, 3, 3] (or one [3, 3]), got K.shape={tuple(K.shape)}"
            )
        for name, x in (("world_from_cam", world_from_cam), ("K", K)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or Inf")
        R = world_from_cam[..., :3, :3]
        ortho = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax(dim=(-1, -2))  # [V, F]
        det = torch.linalg.det(R)
        bottom = (
            (world_from_cam[..., 3, :] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=R.dtype)).abs().amax(-1)
        )
        bad = (ortho > 1e-4) | ((det - 1).abs() > 1e-4) | (bottom > 1e-9)
        if bool(bad.any()):
            v, f = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"world_from_cam[{v}, {f}] is not a rigid camera-to-world transform (rotation with det +1, bottom row "
                f"0 0 0 1): {world_from_cam[v, f].tolist()}"
            )
        fx, fy = K[..., 0, 0], K[..., 1, 1]
        if bool((fx <= 0).any() or (fy <= 0).any()):
            raise ValueError(
                f"K must have positive focal lengths, got fx in [{float(fx.min())}, {float(fx.max())}], "
                f"fy in [{float(fy.min())}, {float(fy.max())}]"
            )
        if num_frames is not None and (not isinstance(num_frames, int) or num_frames != F):
            raise ValueError(
                f"num_frames={num_frames!r} does not match the cameras' {F} frames (world_from_cam [V, F, 4, 4])"
            )
        limit = min(cfg.motion.max_seq_length, cfg.pose_encoder.max_frames)
        if F > limit:
            raise ValueError(f"num_frames={F}: the {cfg.name} model handles at most {limit} frames per video")
        stride = cfg.image_stride_px
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % stride:
                raise ValueError(
                    f"{name} must be a positive multiple of {stride} for the {cfg.name} model, got {name}={v!r}"
                )
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"num_inference_steps must be a positive integer, got num_inference_steps={num_inference_steps!r}"
            )
        train_steps = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
        if train_steps is not None and num_inference_steps > train_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} exceeds the scheduler's {train_steps} training steps"
            )
        if guidance_scale is not None and (
            not isinstance(guidance_scale, (int, float))
            or isinstance(guidance_scale, bool)
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (or None), got guidance_scale={guidance_scale!r}"
            )
        if not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got eta={eta!r}")
        if not isinstance(pairing, (str, PairingSchedule)):
            raise TypeError(
                f"pairing must be a preset name or a PairingSchedule, got {type(pairing).__name__}: {pairing!r}"
            )
        if covisibility is not None:
            c = np.asarray(covisibility, dtype=np.float64)
            if c.shape[:2] != (V, V) or c.ndim not in (2, 3) or (c.ndim == 3 and c.shape[2] != F):
                raise ValueError(
                    f"covisibility must be [V, V] or [V, V, F] = [{V}, {V}, {F}], got covisibility.shape={c.shape}"
                )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}: {generator!r}"
            )
        if seed is not None:
            if generator is not None:
                raise ValueError(f"pass seed or generator, not both (seed={seed!r}, generator={generator!r})")
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"seed must be a non-negative integer, got seed={seed!r}")
        h, w = (height // cfg.vae_scale_factor, width // cfg.vae_scale_factor)
        latent_shape = (V, cfg.unet.in_channels, F, h, w)
        if latents is not None and (not isinstance(latents, Tensor) or tuple(latents.shape) != latent_shape):
            raise ValueError(
                f"latents must be a tensor of shape {latent_shape}, got {getattr(latents, 'shape', latents)!r}"
            )
        if fixed_frames is not None and fixed_latents is not None:
            raise ValueError("pass fixed_frames or fixed_latents, not both")
        for name, fixed, shape in (
            ("fixed_frames", fixed_frames, (F, height, width, 3)),
            ("fixed_latents", fixed_latents, latent_shape[1:]),
        ):
            if fixed is None:
                continue
            if not isinstance(fixed, Mapping):
                raise TypeError(f"{name} must map video index -> tensor, got {type(fixed).__name__}")
            for v, x in fixed.items():
                if not isinstance(v, int) or not 0 <= v < V:
                    raise ValueError(f"{name} key {v!r} is not a video index in [0, {V})")
                if not isinstance(x, Tensor) or tuple(x.shape) != shape:
                    raise ValueError(
                        f"{name}[{v}] must be a tensor of shape {shape}, got {getattr(x, 'shape', x)!r}"
                    )
                if name == "fixed_frames" and bool((x < 0).any() or (x > 1).any()):
                    raise ValueError(
                        f"fixed_frames[{v}] must lie in [0, 1], got [{float(x.min())}, {float(x.max())}]"
                    )
            if len(fixed) >= V:
                raise ValueError(f"{name} fixes all {V} videos: nothing left to generate")
        if first_frame is not None:
            if not isinstance(first_frame, Tensor) or tuple(first_frame.shape) != (height, width, 3):
                raise ValueError(
                    f"first_frame must be a tensor of shape {(height, width, 3)} [H, W, 3], "
                    f"got {getattr(first_frame, 'shape', first_frame)!r}"
                )
            if not bool(torch.isfinite(first_frame).all()) or bool((first_frame < 0).any() or (first_frame > 1).any()):
                raise ValueError(
                    f"first_frame must lie in [0, 1], got [{float(first_frame.min())}, {float(first_frame.max())}]"
                )
        if max_rows_per_call is not None and max_rows_per_call != "auto":  # noqa: SIM102 (one check per line)
            if (
                not isinstance(max_rows_per_call, int)
                or isinstance(max_rows_per_call, bool)
                or max_rows_per_call < 4
            ):
                raise ValueError(
                    f"max_rows_per_call must be an integer >= 4 (one guided pair), 'auto' or None, "
                    f"got max_rows_per_call={max_rows_per_call!r}"
                )
        if max_pairs_per_call is not None and (
            not isinstance(max_pairs_per_call, int) or isinstance(max_pairs_per_call, bool) or max_pairs_per_call < 1
        ):
            raise ValueError(
                f"max_pairs_per_call must be a positive integer or None, got max_pairs_per_call={max_pairs_per_call!r}"
            )
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs)

    @staticmethod
    def check_output_inputs(output_type: Any, callback_on_step_end_tensor_inputs: Any) -> None:
        """Validate the arguments of what follows the denoising loop (part of :meth:`check_inputs`)."""
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got output_type={output_type!r}")
        bad_inputs = [k for k in callback_on_step_end_tensor_inputs if k != "latents"]
        if bad_inputs:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name 'latents', got {bad_inputs}")

    # ------------------------------------------------------------------------------------------------ parts

    @torch.no_grad()
    def encode_prompt(
        self, prompt: str, negative_prompt: str | None, guided: bool, device: torch.device
    ) -> Tensor:
        """[branches, L, D] text tokens in the UNet dtype: ``[negative, prompt]`` when guided, else ``[prompt]``."""
        texts = [negative_prompt or "", prompt] if guided else [prompt]
        full = self.tokenizer([prompt], padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > self.tokenizer.model_max_length:
            log.warning(
                "the prompt is longer than the text encoder's %d tokens and was truncated",
                self.tokenizer.model_max_length,
            )
        return text_embeddings(self.tokenizer, self.text_encoder, texts, device).to(self.unet.dtype)  # [branches, L, D]

    @torch.no_grad()
    def encode_cameras(
        self, K: Tensor, poses: Tensor, height: int, width: int, device: torch.device
    ) -> list[Tensor]:
        """Pose features of every UNet level, [V, F, C_l, h_l, w_l] each (once per call):
        :func:`cvd.model.camera_features` on the execution ``device``."""
        return camera_features(self.pose_encoder, K, poses, height, width, device)

    @torch.no_grad()
    def decode_latents(
        self, latents: Tensor, chunk_frames: int = 16
    ) -> Tensor:  # [V, C, F, h, w] -> [V, F, H, W, 3]
        """VAE decoding, ``chunk_frames`` frames at a time (one with VAE slicing), to float32 in [0, 1] on the CPU."""
        if self._offload is not None:
            self._offload.use("vae")
        if self._vae_slicing:
            chunk_frames = 1
        V, C, F, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(V * F, C, h, w)  # [(V F), C, h, w]
        scale = self.vae.config.scaling_factor
        vae_dtype = next(self.vae.parameters()).dtype
        out = []
        for i in range(0, V * F, chunk_frames):
            img = self.vae.decode((flat[i : i + chunk_frames] / scale).to(vae_dtype)).sample  # [n, 3, H, W]
            out.append((img.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu())  # [n, H, W, 3]
        frames = torch.cat(out)  # [(V F), H, W, 3]
        return frames.reshape(V, F, *frames.shape[1:])  # [V, F, H, W, 3]

    @torch.no_grad()
    def encode_frames(self, frames: Tensor, device: torch.device) -> Tensor:  # [F, H, W, 3] -> [C, F, h, w]
        """Latents of frames in [0, 1] (the posterior mean, scaled as the UNet expects)."""
        if self._offload is not None:
            self._offload.use("vae")
        vae_dtype = next(self.vae.parameters()).dtype
        x = frames.to(device, vae_dtype).permute(0, 3, 1, 2) * 2 - 1  # [F, 3, H, W]
        step = 1 if self._vae_slicing else len(x)
        z = torch.cat([self.vae.encode(x[i : i + step]).latent_dist.mean for i in range(0, len(x), step)])
        z = z * self.vae.config.scaling_factor  # [F, C, h, w]
        return z.float().permute(1, 0, 2, 3)  # [C, F, h, w]

    # ------------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        world_from_cam: Tensor | np.ndarray,
        K: Tensor | np.ndarray,
        *,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        pairing: str | PairingSchedule = DEFAULT_PRESET,
        recurrences: int | None = None,
        accumulations: int | None = None,
        covisibility: np.ndarray | None = None,
        scheduler: Any = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        latents: Tensor | None = None,
        fixed_frames: Mapping[int, Tensor] | None = None,
        fixed_latents: Mapping[int, Tensor] | None = None,
        first_frame: Tensor | None = None,
        max_rows_per_call: int | str | None = "auto",
        max_pairs_per_call: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[CVDPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        decode_chunk_frames: int = 16,
        cross_view: bool = True,
    ) -> CVDPipelineOutput | tuple:
        """Generate one video per camera path: :meth:`prepare`, :meth:`denoise`, then decoding.

        Args:
            prompt: The text prompt (one for all videos).
            world_from_cam: [V, F, 4, 4] camera-to-world poses (OpenCV axes, metres, one world for all videos).
            K: [V, F, 3, 3] (or one [3, 3]) intrinsics in pixels of the generated ``width`` x ``height`` image.
            negative_prompt: The guidance's negative prompt (default: the release's).
            num_frames: Frames per video; must equal F when given.
            height, width: Image size (default: the model's), multiples of the model's stride (64 for SD1.5).
            num_inference_steps: Denoising steps S.
            guidance_scale: Classifier-free guidance; <= 1 runs no unconditional branch; None: the release's
                8.5 for one or two videos, 14 for more (:func:`cvd.defaults.default_guidance_scale`).
            eta: DDIM eta (the release: 0).
            pairing: A preset name (``covisibility``, ``exhaustive``, ``partition``, ``released``, ``released-pair``,
                ``released-4``, ``released-6``) or a :class:`~cvd.pairing.PairingSchedule`.
            recurrences, accumulations: Override the schedule's R and Q.
            covisibility: [V, V, F] or [V, V] co-visibility of the plan (the ``covisibility`` strategy's weights).
            scheduler: A diffusers scheduler to use instead of the pipeline's (DDIM as released by default).
            generator, seed: Randomness (initial noise, pairing draws, pseudo-line orientations); not both.
            latents: [V, C, F, h, w] initial noise instead of drawing it.
            fixed_frames: {video: [F, H, W, 3] in [0, 1]} ground-truth partners (module docstring).
            fixed_latents: {video: [C, F, h, w]} the same, as latents.
            first_frame: [H, W, 3] in [0, 1]: a picture held as frame 0 of every video (module docstring); the
                videos should start at one common camera.
            max_rows_per_call: Rows per UNet call at most (pairs are never split); ``auto``: everything in one call
                on a CPU, a memory-budget estimate on a GPU; None: no limit.
            max_pairs_per_call: Pairs per UNet call at most (each pair is 2 rows per guidance branch); None: the
                memory mode's cap (``balanced``: 2, ``low``: 1, ``fast``: none). Pairs are independent, so the
                cap changes no result, only the peak memory and the number of calls.
            output_type: ``np``, ``pt`` or ``latent``.
            return_dict: Return :class:`CVDPipelineOutput` (else a tuple ``(frames, stats)``).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict`` after every step; a
                returned ``latents`` replaces the latents.
            callback_on_step_end_tensor_inputs: Tensors passed to the callback (``latents``).
            decode_chunk_frames: Frames per VAE decode call.
            cross_view: False runs every video alone (CVSMs skipped): the ablation without synchronization.
        """
        t_start = time.perf_counter()
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs)

        # 1.-5. Check the inputs, draw the randomness, encode the prompt and cameras, plan, draw the noise.
        state = self.prepare(
            prompt,
            world_from_cam,
            K,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            pairing=pairing,
            recurrences=recurrences,
            accumulations=accumulations,
            covisibility=covisibility,
            scheduler=scheduler,
            generator=generator,
            seed=seed,
            latents=latents,
            fixed_frames=fixed_frames,
            fixed_latents=fixed_latents,
            first_frame=first_frame,
            max_rows_per_call=max_rows_per_call,
            max_pairs_per_call=max_pairs_per_call,
            cross_view=cross_view,
        )
        # 6. Denoising loop.
        latents = self.denoise(
            state,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        stats = state.stats

        # 7. Decode.
        t_dec = time.perf_counter()
        if output_type == "latent":
            frames: Any = latents
        else:
            frames = self.decode_latents(latents, decode_chunk_frames)  # [V, F, H, W, 3]
            if output_type == "np":
                frames = frames.numpy()
        stats.decode_time_s = time.perf_counter() - t_dec
        stats.peak_memory_mb, stats.memory_kind = peak_memory_mb(state.device)
        stats.wall_time_s = time.perf_counter() - t_start
        if self._offload is not None:
            self._offload.offload_all()
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames, stats
        return CVDPipelineOutput(frames=frames, stats=stats, schedule=state.plan)

    @torch.no_grad()
    def prepare(
        self,
        prompt: str,
        world_from_cam: Tensor | np.ndarray,
        K: Tensor | np.ndarray,
        *,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        pairing: str | PairingSchedule = DEFAULT_PRESET,
        recurrences: int | None = None,
        accumulations: int | None = None,
        covisibility: np.ndarray | None = None,
        scheduler: Any = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        latents: Tensor | None = None,
        fixed_frames: Mapping[int, Tensor] | None = None,
        fixed_latents: Mapping[int, Tensor] | None = None,
        first_frame: Tensor | None = None,
        max_rows_per_call: int | str | None = "auto",
        max_pairs_per_call: int | None = None,
        cross_view: bool = True,
    ) -> SamplingState:
        """Everything before the denoising loop (the arguments as in :meth:`__call__`): check the inputs, draw the
        randomness, encode the prompt and the cameras once, draw the pairing schedule, the initial noise and the
        fixed partners; the peak-memory count starts here. Returns the state :meth:`denoise` runs on."""
        cfg = self.model_config
        scheduler = scheduler if scheduler is not None else self.scheduler
        height = cfg.height_px if height is None else height
        width = cfg.width_px if width is None else width
        world_from_cam = _as_tensor("world_from_cam", world_from_cam)
        K = _as_tensor("K", K)
        if K.shape == (3, 3) and world_from_cam.ndim == 4:
            K = K.expand(*world_from_cam.shape[:2], 3, 3).clone()

        # 1. Check inputs.
        self.check_inputs(
            prompt=prompt,
            negative_prompt=negative_prompt,
            world_from_cam=world_from_cam,
            K=K,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            pairing=pairing,
            covisibility=covisibility,
            generator=generator,
            seed=seed,
            latents=latents,
            fixed_frames=fixed_frames,
            fixed_latents=fixed_latents,
            max_rows_per_call=max_rows_per_call,
            scheduler=scheduler,
            max_pairs_per_call=max_pairs_per_call,
            first_frame=first_frame,
        )
        V, F = world_from_cam.shape[:2]
        if isinstance(pairing, PairingSchedule):
            changes = {
                k: v
                for k, v in (("recurrences", recurrences), ("accumulations", accumulations))
                if v is not None
            }
            schedule = dataclasses.replace(pairing, **changes)
        else:
            schedule = schedule_preset(pairing, V, recurrences=recurrences, accumulations=accumulations)
        renoises = (schedule.recurrences > 1 or schedule.last_step_recurrences > 1) and V > 1
        if renoises and type(scheduler).__name__ != "DDIMScheduler":
            raise ValueError(
                f"recurrences={schedule.recurrences} re-noise with the DDIM formula; the scheduler is "
                f"{type(scheduler).__name__} (use DDIMScheduler or recurrences=1)"
            )
        if (fixed_frames or fixed_latents or first_frame is not None) and type(
            scheduler
        ).__name__ != "DDIMScheduler":
            raise ValueError(
                f"fixed partners and first_frame are noised with the DDIM formula; the scheduler is "
                f"{type(scheduler).__name__}"
            )
        if guidance_scale is None:
            guidance_scale = default_guidance_scale(V)
        guided = guidance_scale > 1.0
        branches = 2 if guided else 1
        device = self._execution_device
        dtype = self.unet.dtype
        reset_peak_memory(device)
        if V > 1 and not shares_first_camera(world_from_cam):
            log.warning(
                "the %d videos do not start at one common camera: CVD was trained on videos that share their first "
                "frame, so this is outside its training distribution (frame 0 uses the true fundamental matrix)",
                V,
            )
        shared_first = V == 1 or shares_first_camera(world_from_cam)
        cross_view = cross_view and V > 1 and cfg.cvsm.enabled

        # 2. Randomness: one generator for the pairing draws, pseudo-line orientations and noise.
        if generator is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
            generator = torch.Generator("cpu").manual_seed(seed)
        draw_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        step_params = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}
        rng = np.random.default_rng(draw_seed)

        # 3. Encode the prompt and the cameras once.
        text = self.encode_prompt(prompt, negative_prompt, guided, device)  # [branches, L, D]
        poses = model_poses(world_from_cam, cfg.model_units_per_metre)  # [V, F, 4, 4]
        features = self.encode_cameras(K, poses, height, width, device)  # per level [V, F, C, h, w]
        world_model = world_from_cam.clone()
        world_model[..., :3, 3] *= cfg.model_units_per_metre  # one world for all videos, model units

        # 4. Timesteps and the pairing schedule.
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        steps_host = [int(t) for t in timesteps.tolist()]
        plan = schedule.plan(V, len(steps_host), rng, covisibility, cross_view=cross_view)

        # 5. Initial noise (independent per video) and the fixed partners.
        h, w = height // cfg.vae_scale_factor, width // cfg.vae_scale_factor
        shape = (V, cfg.unet.in_channels, F, h, w)
        if latents is None:
            noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(
                device
            )
        else:
            noise = latents.to(device, torch.float32)
        latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # [V, C, F, h, w]
        fixed: dict[int, Tensor] = {}
        if fixed_latents:
            fixed = {v: x.to(device, torch.float32) for v, x in fixed_latents.items()}
        elif fixed_frames:
            fixed = {v: self.encode_frames(x, device) for v, x in fixed_frames.items()}
        held = None if first_frame is None else self.encode_frames(first_frame[None], device)[:, 0]  # [C, h, w]

        # What the loop's UNet calls need: call sizes, caches, pseudo-line orientations.
        rows_cap = self._rows_cap(max_rows_per_call, F, height, width, dtype, device)
        max_pairs = None if rows_cap is None else max(1, rows_cap // (2 * branches))
        pairs_cap = max_pairs_per_call if max_pairs_per_call is not None else self._max_pairs_per_call
        if pairs_cap is not None:
            max_pairs = pairs_cap if max_pairs is None else min(max_pairs, pairs_cap)
        bias_cache = _LRU(self._cache_budget(device))
        call_plans = _LRU(self._cache_budget(device))
        angles = torch.from_numpy(
            np.random.default_rng(draw_seed + 1).uniform(0, math.pi, (V, V, F))
        )  # [V, V, F]
        # The release's redraw: one angle per cross-view attention call, from one generator for the whole run.
        line_generator = (
            torch.Generator("cpu").manual_seed(draw_seed + 2) if cfg.epipolar_bias.effective_line_draw == "per-call" else None
        )
        stats = SamplingStats(
            seed=seed,
            pairing={"preset": pairing if isinstance(pairing, str) else None, **schedule.describe()},
            shared_first_camera=shared_first,
            dtype=str(dtype).removeprefix("torch."),
            device=_device_name(device),
        )
        return SamplingState(
            latents=latents,
            noise=noise,
            text=text,
            features=features,
            K=K,
            world_model=world_model,
            angles=angles,
            fixed=fixed,
            held=held,
            held_videos=[v for v in range(V) if v not in fixed],
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            steps_host=steps_host,
            plan=plan,
            schedule=schedule,
            generator=generator,
            step_kwargs=step_kwargs,
            guidance_scale=guidance_scale,
            branches=branches,
            height=height,
            width=width,
            grids=level_grids((h, w), cfg.num_levels),
            max_pairs=max_pairs,
            bias_cache=bias_cache,
            call_plans=call_plans,
            line_generator=line_generator,
            device=device,
            dtype=dtype,
            stats=stats,
        )

    @torch.no_grad()
    def denoise(
        self,
        state: SamplingState,
        *,
        callback_on_step_end: Callable[[CVDPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Tensor:  # [V, C, F, h, w] float32, clean latents
        """The denoising loop over a :meth:`prepare`\\ d state: at every step, for every evaluation of the schedule,
        its pairs through the UNet in batched calls, every video's predictions mixed with its weights, the
        scheduler step, re-noising between recurrences; fixed partners and the held first frame put back clean
        at the end. Updates ``state.latents`` and ``state.stats``; returns the latents. The callback as in
        :meth:`__call__`."""
        self.check_output_inputs("latent", callback_on_step_end_tensor_inputs)
        scheduler, timesteps, plan, fixed = state.scheduler, state.timesteps, state.plan, state.fixed
        latents, device, dtype, stats = state.latents, state.device, state.dtype, state.stats
        shape = tuple(latents.shape)
        V, F = shape[0], shape[2]
        guided, guidance_scale = state.branches == 2, state.guidance_scale
        # DDIM steps take the host integer (no device read); other schedulers look their timestep up by value.
        ddim = type(scheduler).__name__ == "DDIMScheduler"
        self._bias_cache, self._line_generator = state.bias_cache, state.line_generator
        try:
            t_loop = time.perf_counter()
            with self.progress_bar(total=len(state.steps_host)) as progress:
                for i, t in enumerate(state.steps_host):
                    t_dev = timesteps[i]
                    for r, evaluation in enumerate(plan[i]):
                        check_weights(evaluation)
                        self._place_fixed(latents, fixed, state.noise, scheduler, t)
                        self._hold_first_frame(
                            latents, state.held, state.held_videos, state.noise, scheduler, t,
                            clean=self.model_config.first_frame == "clean",
                        )
                        eps = torch.zeros(
                            V, math.prod(shape[1:]), device=device, dtype=torch.float32
                        )  # [V, C·F·h·w]
                        for group in call_groups(
                            evaluation, state.schedule.batching, state.max_pairs, skip_videos=list(fixed)
                        ):
                            call = self._call_plan(
                                group,
                                state.call_plans,
                                state.branches,
                                state.text,
                                state.features,
                                state.K,
                                state.world_model,
                                state.angles,
                                (state.height, state.width),
                                state.grids,
                                F,
                                device,
                                dtype,
                            )
                            x = latents.index_select(0, call.row_video)  # [B, C, F, h, w]
                            x = scheduler.scale_model_input(x, t_dev).to(dtype)
                            out = self.unet(x, t_dev, call.text, call.context).float()  # [B, C, F, h, w]
                            if guided:
                                out = out.view(-1, 2, *shape[1:])  # [B/2, 2, C, F, h, w] (uncond, cond)
                                out = out[:, 0] + guidance_scale * (out[:, 1] - out[:, 0])  # [B/2, C, F, h, w]
                            eps += call.mix @ out.reshape(out.shape[0], -1)  # [V, C·F·h·w]
                            stats.unet_calls += 1
                            stats.unet_rows += call.num_rows
                            stats.max_rows_per_call = max(stats.max_rows_per_call, call.num_rows)
                        stats.evaluations += 1
                        step_t = t if ddim else t_dev
                        latents = scheduler.step(eps.view(shape), step_t, latents, **state.step_kwargs).prev_sample
                        if r < len(plan[i]) - 1:
                            latents = self._renoise(latents, scheduler, t, state.num_inference_steps, state.generator)
                    if callback_on_step_end is not None:
                        got = callback_on_step_end(
                            self, i, t, {k: latents for k in callback_on_step_end_tensor_inputs}
                        )
                        if got and "latents" in got:
                            latents = got["latents"]
                    progress.update()
            for v, x0 in fixed.items():
                latents[v] = x0
            if state.held is not None:
                latents[state.held_videos, :, 0] = state.held
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.denoise_time_s = time.perf_counter() - t_loop
            stats.bias_cache_mb = state.bias_cache.bytes / 2**20
        finally:
            self._bias_cache, self._line_generator = None, None
        state.latents = latents
        return latents

    # ------------------------------------------------------------------------------------------------ helpers

    def _rows_cap(
        self, requested, F: int, height: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> int | None:
        if requested != "auto":
            return requested
        if device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(device)
        per_row = estimate_row_bytes(self.model_config, F, height, width, dtype)
        cap = max(4, int(0.6 * free // per_row))
        log.debug(
            "auto max_rows_per_call: %d (%.0f MiB per row, %.1f GiB free)", cap, per_row / 2**20, free / 2**30
        )
        return cap

    @staticmethod
    def _cache_budget(device: torch.device) -> float:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return 0.25 * free
        return 2 * 2**30

    @staticmethod
    def _place_fixed(latents: Tensor, fixed: dict[int, Tensor], noise: Tensor, scheduler, t: int) -> None:
        """Fixed partners: their ground truth noised to timestep ``t`` with their own initial noise (in place)."""
        if not fixed:
            return
        a = float(scheduler.alphas_cumprod[t])
        for v, x0 in fixed.items():
            latents[v] = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise[v]

    @staticmethod
    def _hold_first_frame(
        latents: Tensor, held: Tensor | None, videos: list[int], noise: Tensor, scheduler, t: int, clean: bool = False
    ) -> None:
        """``first_frame``: frame 0 of ``videos`` set to the picture's latent ``held`` [C, h, w] noised to timestep
        ``t`` with each video's own initial noise, or ``clean`` as it is (models trained first-frame conditioned,
        ``config.first_frame == "clean"``), in place."""
        if held is None:
            return
        if clean:
            latents[videos, :, 0] = held
            return
        a = float(scheduler.alphas_cumprod[t])
        latents[videos, :, 0] = math.sqrt(a) * held + math.sqrt(1 - a) * noise[videos, :, 0]

    @staticmethod
    def _renoise(latents: Tensor, scheduler, t: int, num_steps: int, generator: torch.Generator) -> Tensor:
        """Back from the DDIM step's ``t_prev`` to ``t``: ``x_t = sqrt(a_t/a_prev) x_prev + sqrt(1 - a_t/a_prev) ε``."""
        prev = t - scheduler.config.num_train_timesteps // num_steps
        a_t = float(scheduler.alphas_cumprod[t])
        a_prev = float(scheduler.alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        ratio = a_t / a_prev
        noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=torch.float32)
        return math.sqrt(ratio) * latents + math.sqrt(1 - ratio) * noise.to(latents.device)

    def _pair_biases(
        self,
        directed: list[tuple[int, int]],
        K: Tensor,
        world: Tensor,
        angles: Tensor,
        image_hw: tuple[int, int],
        grids: list[tuple[int, int]],
        device: torch.device,
    ) -> list[list[Tensor | None]]:  # [pair][level] -> [F, N, N]
        """The epipolar bias of each directed pair (queries of ``a``, keys of ``b``), cached per pair."""
        cache = self._bias_cache
        cfg = self.model_config.epipolar_bias
        found = {p: cache.get(p) for p in dict.fromkeys(directed)}
        missing = [p for p, v in found.items() if v is None]
        for i in range(0, len(missing), 4):  # a few pairs at a time bounds the float32 distance buffers
            chunk = missing[i : i + 4]
            a = torch.tensor([p[0] for p in chunk])
            b = torch.tensor([p[1] for p in chunk])
            if cfg.mode == "none":
                levels = [None] * len(grids)
            else:
                levels = epipolar_bias_pyramid(
                    K[a].to(device),
                    world[a].to(device),
                    K[b].to(device),
                    world[b].to(device),
                    image_hw,
                    grids=grids,
                    config=cfg,
                    line_angle_rad=angles[a, b].to(device),
                )  # per level [P, F, N, N]
            for j, p in enumerate(chunk):
                found[p] = [None if lv is None else lv[j] for lv in levels]
                cache.put(p, found[p], sum(x.numel() * x.element_size() for x in found[p] if x is not None))
        return [found[p] for p in directed]

    def _line_redraw(
        self,
        directed: list[tuple[int, int]],
        branches: int,
        K: Tensor,  # [V, F, 3, 3] float64, host
        world: Tensor,  # [V, F, 4, 4] float64, host, model units
        image_hw: tuple[int, int],
        grids: list[tuple[int, int]],
        num_frames: int,
    ) -> LineRedraw | None:
        """The per-call redraw of a call's zero-baseline (row, frame) entries (None unless ``line_draw`` is
        ``per-call``). Row ``s·branches + br`` holds slot ``s`` = directed pair ``directed[s]``."""
        cfg = self.model_config.epipolar_bias
        if self._line_generator is None or cfg.mode == "none":
            return None
        a = torch.tensor([p[0] for p in directed])
        b = torch.tensor([p[1] for p in directed])
        t = relative_pose(world[a], world[b])[..., :3, 3]  # [S, F, 3] key_from_query translation
        zero = torch.linalg.vector_norm(t, dim=-1) <= cfg.baseline_eps  # [S, F]
        slots, frames = zero.nonzero(as_tuple=True)
        rows = [(int(s) * branches + br) * num_frames + int(f) for s, f in zip(slots, frames) for br in range(branches)]
        H = infinite_homography(K[a[slots], frames], world[a[slots], frames], K[b[slots], frames], world[b[slots], frames])
        return LineRedraw(
            rows=torch.tensor(rows, dtype=torch.long),
            H=H.repeat_interleave(branches, dim=0),  # [R0, 3, 3] in the order of rows
            grids=tuple(grids),
            image_hw=image_hw,
            config=cfg,
            generator=self._line_generator,
        )

    def _call_plan(
        self,
        group: PairSet,
        plans: _LRU,
        branches: int,
        text: Tensor,
        features: list[Tensor],
        K: Tensor,
        world: Tensor,
        angles: Tensor,
        image_hw: tuple[int, int],
        grids: list[tuple[int, int]],
        num_frames: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> _CallPlan:
        """Rows, partners, bias, pose tokens, text and mixing weights of one UNet call (cached per group).

        Layout: video-major, branch-minor. Pair ``k = (a, b)`` gives rows ``[a_u, a_c, b_u, b_c]`` (``[a, b]``
        unguided); row ``(k, side, branch)`` attends to ``(k, 1 - side, branch)``. Solo videos: ``[v_u, v_c]``.
        """
        if group.solo:
            key = ("solo", group.solo_videos, branches)
        else:
            key = (
                tuple(group.pairs.reshape(-1).tolist()),
                tuple(np.round(group.weights, 12).reshape(-1).tolist()),
                branches,
            )
        cached = plans.get(key)
        if cached is not None:
            return cached
        V = group.num_videos
        if group.solo:
            slots = list(group.solo_videos)  # one slot per video row
            weights = [1.0] * len(slots)
            partner = None
            bias = None
            bias_slot = None
            redraw = None
        else:
            slots = group.pairs.reshape(-1).tolist()  # [a0, b0, a1, b1, ...]: video of each (pair, side)
            weights = group.weights.reshape(-1).tolist()
            n = len(slots)
            partner = [(s ^ 1) * branches + br for s in range(n) for br in range(branches)]
            directed = [(slots[s], slots[s ^ 1]) for s in range(n)]
            per_pair = self._pair_biases(directed, K, world, angles, image_hw, grids, device)
            bias = [
                None if per_pair[0][lv] is None else torch.stack([p[lv] for p in per_pair])
                for lv in range(len(grids))
            ]
            bias_slot = [s for s in range(n) for _ in range(branches)]
            redraw = self._line_redraw(directed, branches, K, world, image_hw, grids, num_frames)
        row_video = [v for v in slots for _ in range(branches)]
        row_branch = [br for _ in slots for br in range(branches)]
        context = CrossViewContext.build(
            num_rows=len(row_video),
            num_frames=num_frames,
            device=device,
            dtype=dtype,
            partner=partner,
            branch=row_branch,
            bias=bias,
            bias_slot=bias_slot,
            pose_features=features,
            pose_slot=row_video,
            redraw=redraw if bias is not None and all(b is not None for b in bias) else None,
        )
        mix = torch.zeros(V, len(slots), dtype=torch.float32)
        for s, (v, wgt) in enumerate(zip(slots, weights)):
            mix[v, s] = wgt
        row_idx = torch.tensor(row_video, dtype=torch.long)
        branch_idx = torch.tensor(row_branch, dtype=torch.long)
        if device.type == "cuda":
            mix, row_idx, branch_idx = (
                x.pin_memory().to(device, non_blocking=True) for x in (mix, row_idx, branch_idx)
            )
        else:
            mix, row_idx = mix.to(device), row_idx.to(device)
        call = _CallPlan(
            context=context,
            row_video=row_idx,
            text=text.index_select(0, branch_idx.to(text.device)),
            mix=mix,
            num_rows=len(row_video),
            nbytes=0,
        )
        call.nbytes = (
            context.bias_bytes()
            + sum(t.numel() * t.element_size() for t in context.pose_tokens or ())
            + call.text.numel() * call.text.element_size()
        )
        plans.put(key, call, call.nbytes)
        return call


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type

