"""What the AnimateDiff motion modules of diffusers need to behave as the trained CameraCtrl/CVD weights expect.

* :class:`PerFrameGroupNorm`: the motion module's input GroupNorm taken over each frame separately (AnimateDiff,
  CameraCtrl and CVD normalise per frame; diffusers' ``AnimateDiffTransformer3D`` normalises over all frames
  together). :func:`use_per_frame_motion_norm` swaps it into a diffusers ``UNetMotionModel`` in place; parameter
  names stay ``…motion_modules.j.norm.{weight,bias}``.
* :class:`PoseInjectionAttnProcessor`: the CameraCtrl attention processor of the first temporal self-attention
  (``attn1``) of a motion module: ``x_in = x + scale · qkv_merge(x + pose)`` before Q/K/V, then diffusers' own
  SDPA processor. The pose tokens come from the :class:`ContextSlot` the UNet sets once per call.

Imports torch and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from cvd.context import CrossViewContext

__all__ = ["ContextSlot", "PerFrameGroupNorm", "PoseInjectionAttnProcessor", "motion_modules", "use_per_frame_motion_norm"]


class ContextSlot:
    """Holds the :class:`~cvd.context.CrossViewContext` of the UNet call in progress (None between calls).

    One slot is shared by every pose-injection processor and CVSM hook of a UNet; the UNet sets it at the start
    of its forward and clears it at the end. Plain Python state: no tensors are inspected, nothing syncs.
    """

    __slots__ = ("context",)

    def __init__(self) -> None:
        self.context: CrossViewContext | None = None


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm of a ``[B, C, F, H, W]`` video taken over ``(C/G, H, W)`` of every frame separately."""

    def forward(self, x: Tensor) -> Tensor:  # [B, C, F, H, W] -> [B, C, F, H, W]
        if x.ndim != 5:
            raise ValueError(f"PerFrameGroupNorm expects [B, C, F, H, W], got {tuple(x.shape)}")
        b, c, f, h, w = x.shape
        # diffusers hands the motion module a permuted view of [(B F), C, H, W] memory: this is free then.
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)  # [(B F), C, H, W]
        y = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return y.view(b, f, c, h, w).transpose(1, 2)  # [B, C, F, H, W]


def motion_modules(unet: nn.Module) -> list[tuple[str, int, int, nn.Module]]:
    """``(kind, block index, layer index, module)`` of every motion module of a diffusers ``UNetMotionModel``
    (kind ``down`` or ``up``; the mid block has none in AnimateDiff v3)."""
    out = []
    for kind, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        for i, block in enumerate(blocks):
            for j, mm in enumerate(getattr(block, "motion_modules", [])):
                out.append((kind, i, j, mm))
    mid = getattr(getattr(unet, "mid_block", None), "motion_modules", None)
    if mid is not None and len(mid):
        raise ValueError("the UNet has a mid-block motion module; AnimateDiff v3 (and CVD) has none")
    return out


def use_per_frame_motion_norm(unet: nn.Module) -> None:
    """Replace the input GroupNorm of every motion module of a diffusers ``UNetMotionModel`` by a
    :class:`PerFrameGroupNorm` with the same parameters (in place; parameter names unchanged)."""
    for _, _, _, mm in motion_modules(unet):
        old = mm.norm
        if isinstance(old, PerFrameGroupNorm):
            continue
        new = PerFrameGroupNorm(old.num_groups, old.num_channels, eps=old.eps, affine=old.affine)
        new.weight, new.bias = old.weight, old.bias  # share the Parameters: no copy, same names
        mm.norm = new


class PoseInjectionAttnProcessor(nn.Module):
    """Attention processor of a motion module's first temporal self-attention with CameraCtrl pose injection.

    ``hidden_states`` are the normalised, position-encoded temporal tokens ``[(B h w), F, C]``; the pose tokens of
    the same layout come from ``slot.context.pose_tokens[level]``. With no context, no pose tokens or
    ``scale == 0`` it is exactly diffusers' ``AttnProcessor2_0``.
    """

    def __init__(self, channels: int, level: int, slot: ContextSlot, scale: float = 1.0) -> None:
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.qkv_merge = nn.Linear(channels, channels)
        nn.init.zeros_(self.qkv_merge.weight)
        nn.init.zeros_(self.qkv_merge.bias)
        self.level = level
        self.scale = float(scale)
        self._slot = slot
        self._attention = AttnProcessor2_0()

    def forward(
        self,
        attn: nn.Module,
        hidden_states: Tensor,  # [(B h w), F, C]
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:  # [(B h w), F, C]
        context = self._slot.context
        pose = None if context is None or context.pose_tokens is None else context.pose_tokens[self.level]
        if pose is not None and self.scale != 0.0:
            if pose.shape != hidden_states.shape:
                raise ValueError(
                    f"pose tokens of level {self.level} are {tuple(pose.shape)}, the motion module's tokens "
                    f"{tuple(hidden_states.shape)}: the context was built for another batch, frame count or size"
                )
            hidden_states = self.qkv_merge(hidden_states + pose) * self.scale + hidden_states
        return self._attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def extra_repr(self) -> str:
        return f"level={self.level}, scale={self.scale}"
