"""The CVD UNet: diffusers' ``UNetMotionModel`` (SD1.5-shaped 2D UNet + AnimateDiff v3 motion modules, no
mid-block motion module) with the trained weights' per-frame motion GroupNorm, CameraCtrl pose injection in the
first temporal attention of every motion module, and a Cross-View Synchronization Module after every motion
module of the down and up blocks.

Nothing of diffusers is forked: the motion norm is swapped for a per-frame one, pose injection is an attention
processor, and each CVSM is registered on its diffusers block as ``epi_modules[j]`` (so parameter names are those
of the published ``CVD.ckpt``) and runs from a forward hook on motion module ``j``. The hooks and processors read
one :class:`~cvd.context.CrossViewContext` that :meth:`CVDUNet.forward` sets for the duration of the call.

Calling diffusers' ``set_attn_processor``/``set_default_attn_processor``/``fuse_qkv_projections`` on the inner
UNet would replace the pose-injection processors (and drop their weights): don't.

Imports torch and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from cvd.context import CrossViewContext, level_grids
from cvd.cvsm import CVSM
from cvd.model_config import CVDModelConfig
from cvd.motion import ContextSlot, PoseInjectionAttnProcessor, motion_modules, use_per_frame_motion_norm

__all__ = ["CVDUNet", "build_motion_unet", "motion_unet_kwargs"]

_MOTION_BLOCK = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlockMotion",
    "DownBlock2D": "DownBlockMotion",
    "CrossAttnUpBlock2D": "CrossAttnUpBlockMotion",
    "UpBlock2D": "UpBlockMotion",
}


def motion_unet_kwargs(config: CVDModelConfig) -> dict:
    """Keyword arguments of diffusers' ``UNetMotionModel`` for the config: what ``UNetMotionModel.from_unet2d``
    derives from the 2D UNet and an AnimateDiff v3 ``MotionAdapter`` (no mid-block motion module)."""
    u, m = config.unet, config.motion
    for t in (*u.down_block_types, *u.up_block_types):
        if t not in _MOTION_BLOCK:
            raise ValueError(f"unsupported UNet block type {t!r}; supported: {', '.join(_MOTION_BLOCK)}")
    return {
        "sample_size": u.sample_size,
        "in_channels": u.in_channels,
        "out_channels": u.out_channels,
        "down_block_types": tuple(_MOTION_BLOCK[t] for t in u.down_block_types),
        "up_block_types": tuple(_MOTION_BLOCK[t] for t in u.up_block_types),
        "block_out_channels": tuple(u.block_out_channels),
        "layers_per_block": u.layers_per_block,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": u.norm_num_groups,
        "norm_eps": u.norm_eps,
        "cross_attention_dim": u.cross_attention_dim,
        "use_linear_projection": u.use_linear_projection,
        "num_attention_heads": u.attention_head_dim,
        "motion_max_seq_length": m.max_seq_length,
        "motion_num_attention_heads": m.num_attention_heads,
        "use_motion_mid_block": False,
    }


def build_motion_unet(config: CVDModelConfig) -> nn.Module:
    """A plain diffusers ``UNetMotionModel`` of the config's shape (random weights, diffusers' own norm)."""
    from diffusers import UNetMotionModel

    return UNetMotionModel(**motion_unet_kwargs(config))


class _CVSMHook:
    """Forward hook of motion module j: runs CVSM j of the block on the motion module's output."""

    def __init__(self, cvsm: CVSM, level: int, slot: ContextSlot) -> None:
        self.cvsm = cvsm
        self.level = level
        self.slot = slot
        self.checkpoint = False

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:  # [(B F), C, h, w]
        context = self.slot.context
        if context is None or context.partner_rows is None:
            return None  # no cross-view attention in this call: the motion module's output stands
        bias = context.attention_bias(self.level)
        if self.checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.cvsm, output, context.partner_rows, bias, use_reentrant=False)
        return self.cvsm(output, context.partner_rows, bias)


class CVDUNet(nn.Module):
    """The denoising UNet of CVD. ``forward(sample, timestep, encoder_hidden_states, context)``.

    Attributes:
        unet: the diffusers ``UNetMotionModel`` (its ``state_dict`` keys are this model's weight names: diffusers'
            plus ``{down,up}_blocks.i.epi_modules.j.…`` (CVSMs) and ``…attn1.processor.qkv_merge.…`` (pose)).
        config: the model config it was built from.
    """

    def __init__(self, config: CVDModelConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = build_motion_unet(config)
        if config.motion.per_frame_norm:
            use_per_frame_motion_norm(self.unet)
        self._slot = ContextSlot()
        self._processors: list[PoseInjectionAttnProcessor] = []
        self._hooks: list[_CVSMHook] = []
        self._hook_handles = []
        levels = config.num_levels
        for kind, i, j, mm in motion_modules(self.unet):
            level = i if kind == "down" else levels - 1 - i
            channels = mm.in_channels
            processor = PoseInjectionAttnProcessor(channels, level, self._slot, config.pose_injection_scale)
            mm.transformer_blocks[0].attn1.set_processor(processor)
            self._processors.append(processor)
        if config.cvsm.enabled:
            c = config.cvsm
            for kind, blocks in (("down", self.unet.down_blocks), ("up", self.unet.up_blocks)):
                for i, block in enumerate(blocks):
                    level = i if kind == "down" else levels - 1 - i
                    block.epi_modules = nn.ModuleList(
                        CVSM(mm.in_channels, c.num_attention_heads, c.num_attentions, c.ff_mult, c.norm_num_groups, c.norm_eps)
                        for mm in block.motion_modules
                    )
                    for mm, cvsm in zip(block.motion_modules, block.epi_modules):
                        hook = _CVSMHook(cvsm, level, self._slot)
                        self._hooks.append(hook)
                        self._hook_handles.append(mm.register_forward_hook(hook))

    # ------------------------------------------------------------------------------------------------ call

    def forward(
        self,
        sample: Tensor,  # [B, C, F, h, w] noisy latents
        timestep: Tensor | float,  # [B] or scalar; pass a device tensor (a Python number costs a copy)
        encoder_hidden_states: Tensor,  # [B, L, D] text tokens of each row ([(B F), L, D] also accepted)
        context: CrossViewContext | None = None,
    ) -> Tensor:  # [B, C, F, h, w] predicted noise
        """One denoising call. Without a context (or with ``context.partner_rows`` None) the CVSMs are skipped;
        without ``context.pose_tokens`` no camera is injected. No host synchronisation happens inside."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be [B, C, F, h, w], got {tuple(sample.shape)}")
        b, _, f, _, _ = sample.shape
        if encoder_hidden_states.ndim != 3:
            raise ValueError(f"encoder_hidden_states must be [B, L, D], got {tuple(encoder_hidden_states.shape)}")
        if encoder_hidden_states.shape[0] == b:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(f, dim=0, output_size=b * f)  # [(B F), L, D]
        elif encoder_hidden_states.shape[0] != b * f:
            raise ValueError(
                f"encoder_hidden_states has {encoder_hidden_states.shape[0]} rows, expected {b} (one per row) or {b * f}"
            )
        if context is not None:
            context.check(num_rows=b, num_frames=f, num_levels=self.config.num_levels)
        self._slot.context = context
        try:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            self._slot.context = None

    def make_context(self, **kwargs) -> CrossViewContext:
        """:meth:`CrossViewContext.for_videos` on this UNet's device and dtype (same keyword arguments, minus
        ``device`` and ``dtype``)."""
        return CrossViewContext.for_videos(device=self.device, dtype=self.dtype, **kwargs)

    # ------------------------------------------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def level_grids(self, latent_hw: Sequence[int]) -> list[tuple[int, int]]:
        """Token grid of every UNet level (what the biases of a context must be built for)."""
        return level_grids(latent_hw, self.config.num_levels)

    def set_pose_injection_scale(self, scale: float) -> None:
        """Scale of the camera injection of every motion module (0: plain AnimateDiff motion)."""
        for p in self._processors:
            p.scale = float(scale)

    def cvsms(self) -> Iterator[tuple[str, CVSM]]:
        """``(name, module)`` of every CVSM, in call order of the down then up blocks."""
        for name, module in self.unet.named_modules():
            if isinstance(module, CVSM):
                yield name, module

    def cvsm_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters CVD trains (everything else is frozen in CVD training)."""
        for _, m in self.cvsms():
            yield from m.parameters()

    def freeze_all_but_cvsm(self) -> None:
        """``requires_grad`` only on the CVSM parameters."""
        self.requires_grad_(False)
        for p in self.cvsm_parameters():
            p.requires_grad_(True)

    def enable_cvsm_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each CVSM in the backward pass instead of storing its activations (training memory)."""
        for h in self._hooks:
            h.checkpoint = enabled
