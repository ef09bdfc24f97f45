"""The CameraCtrl pose encoder: per-pixel Plücker rays of every frame -> one camera feature map per UNet level.

Structure (the published CameraCtrl encoder for AnimateDiff v3, with its parameter names so the published
``pose_encoder_state_dict`` loads as is): PixelUnshuffle(8) (6·64 = 384 channels) -> ``encoder_conv_in`` 3x3
conv to the first level's channels -> per level ``num_res_blocks`` residual blocks (2x average-pool on the first
block of every level but the first, a 1x1 ``in_conv`` where the channels change, then 3x3 conv -> ReLU -> 1x1
conv with an identity skip), each followed by a temporal transformer block (pre-LayerNorm self-attention over the
frames with a sinusoidal position table, then a GEGLU feed-forward, each residual). The position tables are
rebuilt, not stored (the published file stores them; the loader checks and drops them).

Run it once per sample (its output does not depend on the timestep). Imports torch and diffusers; must never
import ``cvd_scene``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvd.model_config import CVDModelConfig

__all__ = ["CameraPoseEncoder", "PoseResBlock", "PoseTemporalBlock", "TemporalSelfAttention", "sinusoidal_table"]


def sinusoidal_table(length: int, channels: int) -> Tensor:  # [1, length, channels] float32
    """The AnimateDiff/CameraCtrl temporal position table: sin on even channels, cos on odd channels."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    table = torch.zeros(1, length, channels)
    table[0, :, 0::2] = torch.sin(position * div)
    table[0, :, 1::2] = torch.cos(position * div)
    return table


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention over the frame axis of ``[N, F, C]`` tokens (q/k/v without bias, output with)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:  # [N, F, C] -> [N, F, C]
        n, f, c = x.shape
        d = c // self.heads
        q = self.to_q(x).view(n, f, self.heads, d).transpose(1, 2)  # [N, heads, F, d]
        k = self.to_k(x).view(n, f, self.heads, d).transpose(1, 2)
        v = self.to_v(x).view(n, f, self.heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, F, d]
        out = out.transpose(1, 2).reshape(n, f, c)  # [N, F, C]
        return self.to_out[1](self.to_out[0](out))


class PoseTemporalBlock(nn.Module):
    """``x + attn(LN(x) + pe)`` then ``x + ff(LN(x))`` on ``[N, F, C]`` tokens (names as published)."""

    def __init__(self, channels: int, heads: int, max_frames: int) -> None:
        super().__init__()
        from diffusers.models.attention import FeedForward

        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(channels, heads)])
        self.norms = nn.ModuleList([nn.LayerNorm(channels)])
        self.ff = FeedForward(channels, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)
        self.register_buffer("pe", sinusoidal_table(max_frames, channels), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # [N, F, C] -> [N, F, C]
        f = x.shape[1]
        if f > self.pe.shape[1]:
            raise ValueError(f"the pose encoder handles at most {self.pe.shape[1]} frames, got {f}")
        h = self.norms[0](x) + self.pe[:, :f].to(x.dtype)
        x = self.attention_blocks[0](h) + x
        return self.ff(self.ff_norm(x)) + x


class PoseResBlock(nn.Module):
    """Optional 2x average-pool, optional 1x1 ``in_conv`` (channel change), then ``x + block2(relu(block1(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.in_conv = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.block1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.block2 = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # [N, C_in, h, w] -> [N, C_out, h', w']
        if self.downsample:
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.block2(F.relu(self.block1(x))) + x


class CameraPoseEncoder(nn.Module):
    """Plücker rays ``[V, F, 6, H, W]`` -> camera features, one ``[V, F, C_l, H/(8·2^l), W/(8·2^l)]`` per level."""

    def __init__(self, config: CVDModelConfig) -> None:
        super().__init__()
        pc = config.pose_encoder
        channels = tuple(config.unet.block_out_channels)
        self.channels = channels
        self.downscale_factor = pc.downscale_factor
        self.in_channels = pc.in_channels
        self.encoder_conv_in = nn.Conv2d(pc.in_channels * pc.downscale_factor**2, channels[0], 3, padding=1)
        self.encoder_down_conv_blocks = nn.ModuleList()
        self.encoder_down_attention_blocks = nn.ModuleList()
        for level, c in enumerate(channels):
            convs, attns = nn.ModuleList(), nn.ModuleList()
            for j in range(pc.num_res_blocks):
                c_in = channels[level - 1] if (j == 0 and level > 0) else c
                convs.append(PoseResBlock(c_in, c, downsample=(j == 0 and level > 0)))
                attns.append(PoseTemporalBlock(c, pc.num_attention_heads, pc.max_frames))
            self.encoder_down_conv_blocks.append(convs)
            self.encoder_down_attention_blocks.append(attns)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder_conv_in.weight.dtype

    def forward(self, plucker: Tensor) -> list[Tensor]:  # [V, F, 6, H, W] -> per level [V, F, C_l, h_l, w_l]
        if plucker.ndim != 5 or plucker.shape[2] != self.in_channels:
            raise ValueError(f"plucker must be [V, F, {self.in_channels}, H, W], got {tuple(plucker.shape)}")
        v, f, c, h, w = plucker.shape
        stride = self.downscale_factor * 2 ** (len(self.channels) - 1)
        if h % stride or w % stride:
            raise ValueError(f"the image size must be a multiple of {stride}, got {h}x{w}")
        x = plucker.reshape(v * f, c, h, w).to(self.dtype)  # [(V F), 6, H, W]
        x = F.pixel_unshuffle(x, self.downscale_factor)  # [(V F), 6·r², h0, w0]
        x = self.encoder_conv_in(x)  # [(V F), C0, h0, w0]
        features = []
        for convs, attns in zip(self.encoder_down_conv_blocks, self.encoder_down_attention_blocks):
            for conv, attn in zip(convs, attns):
                x = conv(x)  # [(V F), C, h, w]
                n, ch, hh, ww = x.shape
                tokens = x.view(v, f, ch, hh, ww).permute(0, 3, 4, 1, 2).reshape(v * hh * ww, f, ch)  # [(V h w), F, C]
                tokens = attn(tokens)
                x = tokens.view(v, hh, ww, f, ch).permute(0, 3, 4, 1, 2).reshape(n, ch, hh, ww)  # [(V F), C, h, w]
            features.append(x.view(v, f, *x.shape[1:]))  # [V, F, C, h, w]
        return features
