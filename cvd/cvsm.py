"""The Cross-View Synchronization Module (CVSM) and its cross-view attention.

A CVSM follows the motion module of every down/up layer of the UNet. On ``[(B F), C, h, w]`` features it
normalises each frame (GroupNorm), projects to tokens, runs ``num_attentions`` sequential cross-view attentions
(pre-LayerNorm, residual) and a GEGLU feed-forward (pre-LayerNorm, residual), projects back with a
zero-initialised ``proj_out`` and adds the input. In a cross-view attention the queries are the tokens of frame
``k`` of batch row ``b``, the keys and values the tokens of frame ``k`` of its partner row, and the logits get an
additive epipolar bias shared by every head (one tensor per UNet level, built once per pairing). The bias may
also be given as a zero-argument callable, called once per cross-view attention (the release's per-call redraw
of the zero-baseline pseudo-lines, :class:`cvd.context.LineRedraw`).

Parameter names follow the published ``CVD.ckpt`` (``epi_transformer.norm``, ``proj_in``,
``transformer_blocks.0.attention_blocks.{i}.{to_q,to_k,to_v,to_out.0}``, ``transformer_blocks.0.norms.{i}``,
``transformer_blocks.0.ff.net.{0.proj,2}``, ``transformer_blocks.0.ff_norm``, ``proj_out``).

:func:`cross_view_attention` is the fast kernel (PyTorch SDPA with an additive mask);
:func:`cross_view_attention_reference` is the slow, obviously-correct loop it is tested against.
Imports torch and diffusers; must never import ``cvd_scene``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CVSM",
    "CrossViewAttention",
    "CrossViewTransformer",
    "CrossViewTransformerBlock",
    "cross_view_attention",
    "cross_view_attention_reference",
]


def cross_view_attention(
    query: Tensor,  # [R, N, C] projected queries (R = rows·frames)
    key: Tensor,  # [R, M, C] projected keys, already gathered from the partner rows
    value: Tensor,  # [R, M, C]
    heads: int,
    bias: Tensor | None = None,  # [R, 1, N, M] additive, shared by the heads; None: unbiased
) -> Tensor:  # [R, N, C]
    """Multi-head attention with one additive bias per query/key pair shared by all heads (SDPA)."""
    r, n, c = query.shape
    m = key.shape[1]
    d = c // heads
    q = query.view(r, n, heads, d).transpose(1, 2)  # [R, heads, N, d]
    k = key.view(r, m, heads, d).transpose(1, 2)  # [R, heads, M, d]
    v = value.view(r, m, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [R, heads, N, d]
    return out.transpose(1, 2).reshape(r, n, c)  # [R, N, C]


def cross_view_attention_reference(
    x: Tensor,  # [R, N, C] normalised tokens of every (row, frame)
    partner_rows: Tensor,  # [R] long: the (row, frame) whose tokens each (row, frame) attends to
    to_q: nn.Linear,
    to_k: nn.Linear,
    to_v: nn.Linear,
    to_out: nn.Linear,
    heads: int,
    bias: Tensor | None = None,  # [R, 1, N, N] or [R, N, N]
) -> Tensor:  # [R, N, C]
    """Slow reference: explicit loops over (row, frame) and heads, softmax in float64."""
    r, n, c = x.shape
    d = c // heads
    out = torch.zeros(r, n, c, dtype=torch.float64)
    for i in range(r):
        j = int(partner_rows[i])
        q = to_q(x[i]).double()  # [N, C]
        k = to_k(x[j]).double()  # [N, C]
        v = to_v(x[j]).double()
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            logits = q[:, sl] @ k[:, sl].T / d**0.5  # [N, N]
            if bias is not None:
                logits = logits + bias[i].reshape(n, n).double()
            out[i, :, sl] = torch.softmax(logits, dim=-1) @ v[:, sl]
    return to_out(out.to(x.dtype))


BiasLike = Tensor | None | Callable[[], Tensor | None]
"""[R, 1, N, N] additive bias, None, or a callable returning one per attention call."""


class CrossViewAttention(nn.Module):
    """One cross-view attention: queries from a (row, frame), keys/values from its partner's same frame."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(
        self,
        x: Tensor,  # [R, N, C] normalised tokens
        partner_rows: Tensor,  # [R] long
        bias: Tensor | None = None,  # [R, 1, N, N] in x's dtype
    ) -> Tensor:  # [R, N, C]
        partner = x.index_select(0, partner_rows)  # [R, N, C]
        out = cross_view_attention(self.to_q(x), self.to_k(partner), self.to_v(partner), self.heads, bias)
        return self.to_out[1](self.to_out[0](out))


class CrossViewTransformerBlock(nn.Module):
    """``num_attentions`` pre-LN residual cross-view attentions, then a pre-LN residual GEGLU feed-forward."""

    def __init__(self, channels: int, heads: int, num_attentions: int, ff_mult: int) -> None:
        super().__init__()
        from diffusers.models.attention import FeedForward

        self.attention_blocks = nn.ModuleList([CrossViewAttention(channels, heads) for _ in range(num_attentions)])
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(num_attentions)])
        self.ff = FeedForward(channels, mult=ff_mult, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, partner_rows: Tensor, bias: BiasLike) -> Tensor:  # [R, N, C] -> [R, N, C]
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), partner_rows, bias() if callable(bias) else bias) + x
        return self.ff(self.ff_norm(x)) + x


class CrossViewTransformer(nn.Module):
    """Per-frame GroupNorm -> ``proj_in`` -> transformer block -> zero-initialised ``proj_out`` -> + input."""

    def __init__(self, channels: int, heads: int, num_attentions: int, ff_mult: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([CrossViewTransformerBlock(channels, heads, num_attentions, ff_mult)])
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self,
        x: Tensor,  # [(B F), C, h, w]: every frame is its own GroupNorm sample, hence per-frame normalisation
        partner_rows: Tensor,  # [(B F)] long
        bias: BiasLike,  # [(B F), 1, h·w, h·w], None, or a callable returning one per attention call
    ) -> Tensor:  # [(B F), C, h, w]
        r, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(r, h * w, c)  # [(B F), h·w, C]
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, partner_rows, bias)
        tokens = self.proj_out(tokens)  # [(B F), h·w, C]
        return x + tokens.view(r, h, w, c).permute(0, 3, 1, 2)  # [(B F), C, h, w]


class CVSM(nn.Module):
    """One Cross-View Synchronization Module (``epi_modules.j`` of a UNet block)."""

    def __init__(self, channels: int, heads: int, num_attentions: int = 2, ff_mult: int = 4, groups: int = 32,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.epi_transformer = CrossViewTransformer(channels, heads, num_attentions, ff_mult, groups, eps)

    def forward(self, x: Tensor, partner_rows: Tensor, bias: BiasLike) -> Tensor:  # [(B F), C, h, w]
        if isinstance(bias, Tensor) and bias.shape[-1] != x.shape[-1] * x.shape[-2]:
            raise ValueError(
                f"epipolar bias {tuple(bias.shape)} does not match the {x.shape[-2]}x{x.shape[-1]} token grid of "
                "this UNet level: build the context for this image size"
            )
        return self.epi_transformer(x, partner_rows, bias)
