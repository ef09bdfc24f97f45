"""The cross-view context of a UNet call: which batch row attends to which, the epipolar bias of every UNet
level and the camera features of every level, prepared once and read by every CVSM and pose-injection processor.

Batch rows: one UNet call takes ``B`` rows (videos, or video x guidance branch), each ``F`` frames. A row's CVSMs
attend to one partner row (frame k to frame k). The usual guided layout is video-major, branch-minor:
``[uncond_v0, cond_v0, uncond_v1, cond_v1, …]`` (:func:`guided_rows`); rows of different guidance branches are
never paired.

Cost model: the bias depends only on the cameras, the pairing and the level's token grid, so it is built once per
level per pairing (:func:`epipolar_biases`, fp16 by default) and here expanded once to the rows of the call and
cast to the model dtype; all heads and all CVSMs of the level share it through SDPA's additive mask. Pose
features are computed once per sample (``CameraPoseEncoder``) and laid out here as the motion modules' tokens. A
context can be reused by every denoising step that keeps the same rows and pairing. Nothing here reads tensor
values on the host when the indices are given as Python sequences or CPU tensors; device index tensors are
checked with ``torch._assert_async`` (no host synchronisation).

The release's frame-0 behaviour (``EpipolarBiasConfig.line_draw = "per-call"``): frame pairs with zero baseline
(identical cameras) get a new pseudo-line orientation at every cross-view attention call, one angle shared by
every row. A context with a :class:`LineRedraw` rewrites those rows of its prepared bias in place before each
attention (:meth:`CrossViewContext.attention_bias`); the angle is drawn on the host from a CPU generator, so the
redraw adds no host synchronisation either.

Imports torch and ``cvd.geometry``; must never import ``cvd_scene``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cvd.geometry import EpipolarBiasConfig, epipolar_bias_pyramid, pseudo_line_bias

__all__ = ["CrossViewContext", "LineRedraw", "epipolar_biases", "guided_rows", "level_grids", "pose_tokens"]

IndexLike = Sequence[int] | Tensor


@dataclass(eq=False)
class LineRedraw:
    """The release's per-call redraw of the zero-baseline pseudo-lines: which (row, frame) entries of a call have
    zero baseline, their correspondence homographies, and the generator of the angles."""

    rows: Tensor
    """[R0] long, on the device: indices ``b·F + f`` of the (row, frame) entries whose frame pair has zero
    baseline."""
    H: Tensor
    """[R0, 3, 3] float64, on the device: query pixels -> partner pixels of each entry (identity for identical
    cameras, the released first frame)."""
    grids: tuple[tuple[int, int], ...]
    """Token grid of every UNet level."""
    image_hw: tuple[int, int]
    """Size of the generated image."""
    config: EpipolarBiasConfig
    """How the bias is built (mode, convention, dtype of the distances)."""
    generator: torch.Generator
    """CPU generator of the angles (one draw per attention call)."""
    angles_rad: list[float] = field(default_factory=list)
    """Every angle drawn so far (normal angle, radians), in call order (inspection, tests)."""
    record: bool = False
    """Keep ``angles_rad`` (off by default: a long run makes thousands of draws)."""

    def draw(self) -> float:
        angle = float(torch.rand((), generator=self.generator, dtype=torch.float64)) * math.pi
        if self.record:
            self.angles_rad.append(angle)
        return angle


@dataclass(frozen=True, eq=False)
class CrossViewContext:
    """What one UNet call (or several with the same rows and pairing) needs beyond latents, timestep and text.

    Build it with :meth:`build` or :meth:`for_videos`; the fields are the prepared, device-resident tensors.
    """

    num_rows: int
    """Batch rows ``B`` of the UNet call."""
    num_frames: int
    """Frames ``F`` per row."""
    partner_rows: Tensor | None
    """[B·F] long: for (row b, frame f) = index b·F+f, the index of the (partner row, f) whose tokens it attends to;
    None: no cross-view attention (the CVSMs are skipped)."""
    biases: tuple[Tensor | None, ...]
    """One per UNet level: [B·F, 1, N, N] additive bias in the model dtype (N = tokens of the level), or None
    (unbiased attention at that level)."""
    pose_tokens: tuple[Tensor, ...] | None
    """One per UNet level: [(B·h·w), F, C] camera features in the motion modules' token layout, or None (no
    camera conditioning)."""
    redraw: LineRedraw | None = None
    """The per-call redraw of zero-baseline rows (None: the prepared biases are used as they are)."""

    @classmethod
    def build(
        cls,
        *,
        num_rows: int,
        num_frames: int,
        device: torch.device | str,
        dtype: torch.dtype,
        partner: IndexLike | None = None,
        branch: IndexLike | None = None,
        bias: Sequence[Tensor | None] | None = None,
        bias_slot: IndexLike | None = None,
        pose_features: Sequence[Tensor] | None = None,
        pose_slot: IndexLike | None = None,
        redraw: LineRedraw | None = None,
    ) -> CrossViewContext:
        """The general constructor.

        Args:
            num_rows: ``B``, rows of the UNet call.
            num_frames: ``F``, frames per row.
            device, dtype: the UNet's device and dtype (the prepared tensors live there).
            partner: [B] the row each row attends to (None: no cross-view attention).
            branch: [B] guidance branch of each row; a row and its partner must share it (checked).
            bias: one entry per UNet level: [P, F, N, N] additive bias of slot p (None: unbiased at that level).
            bias_slot: [B] the bias slot of each row (None: P == B, slot = row).
            pose_features: one entry per UNet level: [V, F, C, h, w] from ``CameraPoseEncoder``.
            pose_slot: [B] the video (index into V) of each row (None: V == B).
            redraw: the per-call redraw of zero-baseline rows (needs a bias at every level; the prepared biases
                are then private to this context, since their redrawn rows are rewritten in place).
        """
        if num_rows <= 0 or num_frames <= 0:
            raise ValueError(f"num_rows and num_frames must be positive, got {num_rows=} {num_frames=}")
        device = torch.device(device)
        partner_rows = None
        if partner is not None:
            p = _index("partner", partner, num_rows, num_rows)
            if branch is not None:
                b = _index("branch", branch, num_rows, None)
                _check_same_branch(p, b)
            p = p.to(device, non_blocking=True)
            frames = torch.arange(num_frames, device=device)
            partner_rows = (p[:, None] * num_frames + frames).reshape(-1)  # [B·F]
        elif bias is not None and any(b is not None for b in bias):
            raise ValueError("an epipolar bias was given without a partner index")
        biases: tuple[Tensor | None, ...] = ()
        if bias is not None:
            slot = None if bias_slot is None else _index("bias_slot", bias_slot, num_rows, None).to(device)
            biases = tuple(_prepare_bias(i, b, slot, num_rows, num_frames, device, dtype) for i, b in enumerate(bias))
        if redraw is not None:
            if not biases or any(b is None for b in biases):
                raise ValueError("a per-call line redraw needs an epipolar bias at every level")
            if len(redraw.grids) != len(biases):
                raise ValueError(f"the redraw has {len(redraw.grids)} levels, the bias {len(biases)}")
            given = {b.untyped_storage().data_ptr() for b in bias if b is not None}
            biases = tuple(b.clone() if b.untyped_storage().data_ptr() in given else b for b in biases)
            redraw.rows = redraw.rows.to(device)
            redraw.H = redraw.H.to(device, torch.float64)
        tokens = None
        if pose_features is not None:
            slot = None if pose_slot is None else _index("pose_slot", pose_slot, num_rows, None).to(device)
            tokens = tuple(pose_tokens(f, slot, num_rows, num_frames).to(device=device, dtype=dtype) for f in pose_features)
        return cls(num_rows=num_rows, num_frames=num_frames, partner_rows=partner_rows, biases=biases, pose_tokens=tokens,
                   redraw=redraw)

    @classmethod
    def for_videos(
        cls,
        *,
        row_video: IndexLike,
        num_frames: int,
        device: torch.device | str,
        dtype: torch.dtype,
        partner_video: IndexLike | None = None,
        row_branch: IndexLike | None = None,
        bias: Sequence[Tensor | None] | None = None,
        pose_features: Sequence[Tensor] | None = None,
    ) -> CrossViewContext:
        """Context from a video-level pairing: row ``r`` (video ``row_video[r]``, branch ``row_branch[r]``)
        attends to the row of video ``partner_video[row_video[r]]`` in the same branch. ``bias[level]`` is
        [V, F, N, N] (video v's queries against its partner's keys, e.g. from :func:`epipolar_biases`) and
        ``pose_features[level]`` is [V, F, C, h, w]; both are indexed by video."""
        rv = _index("row_video", row_video, None, None).tolist()
        rb = [0] * len(rv) if row_branch is None else _index("row_branch", row_branch, len(rv), None).tolist()
        partner = None
        if partner_video is not None:
            pv = _index("partner_video", partner_video, None, None).tolist()
            row_of = {(v, b): r for r, (v, b) in enumerate(zip(rv, rb))}
            if len(row_of) != len(rv):
                raise ValueError(f"two rows share a (video, branch): {row_video=} {row_branch=}")
            partner = []
            for r, (v, b) in enumerate(zip(rv, rb)):
                if not 0 <= v < len(pv):
                    raise ValueError(f"row {r} is video {v}, outside partner_video (length {len(pv)})")
                key = (pv[v], b)
                if key not in row_of:
                    raise ValueError(f"row {r} (video {v}, branch {b}) needs a row of video {pv[v]} in branch {b}")
                partner.append(row_of[key])
        return cls.build(
            num_rows=len(rv),
            num_frames=num_frames,
            device=device,
            dtype=dtype,
            partner=partner,
            branch=rb,
            bias=bias,
            bias_slot=rv,
            pose_features=pose_features,
            pose_slot=rv,
        )

    def check(self, *, num_rows: int, num_frames: int, num_levels: int) -> None:
        """Shape checks against a UNet call (host-side metadata only)."""
        if (num_rows, num_frames) != (self.num_rows, self.num_frames):
            raise ValueError(
                f"the context was built for {self.num_rows} rows x {self.num_frames} frames, the call has "
                f"{num_rows} x {num_frames}"
            )
        if self.partner_rows is not None and self.biases and len(self.biases) != num_levels:
            raise ValueError(f"the context has biases for {len(self.biases)} levels, the UNet has {num_levels}")
        if self.pose_tokens is not None and len(self.pose_tokens) != num_levels:
            raise ValueError(f"the context has pose features for {len(self.pose_tokens)} levels, the UNet has {num_levels}")

    def bias(self, level: int) -> Tensor | None:
        """The prepared bias of a UNet level ([B·F, 1, N, N]) or None."""
        return self.biases[level] if self.biases else None

    def attention_bias(self, level: int) -> Tensor | None | Callable[[], Tensor | None]:
        """What a CVSM of ``level`` passes to its attentions: the prepared bias, or (with a redraw) a callable
        that rewrites the zero-baseline rows with a newly drawn angle and returns the bias, once per attention."""
        bias = self.bias(level)
        if self.redraw is None or bias is None or self.redraw.rows.numel() == 0:
            return bias
        redraw = self.redraw

        def per_call() -> Tensor:
            fresh = pseudo_line_bias(redraw.H, redraw.grids[level], redraw.image_hw, redraw.draw(), redraw.config)
            return bias.index_copy_(0, redraw.rows, fresh.to(bias.dtype)[:, None])  # [B·F, 1, N, N]

        return per_call

    def bias_bytes(self) -> int:
        """Memory held by the prepared biases."""
        return sum(b.numel() * b.element_size() for b in self.biases if b is not None)


def guided_rows(num_videos: int, branches: int = 2) -> tuple[list[int], list[int]]:
    """``(row_video, row_branch)`` of the video-major, branch-minor layout
    ``[uncond_v0, cond_v0, uncond_v1, cond_v1, …]`` (``branches=1``: one row per video, no guidance)."""
    if num_videos <= 0 or branches <= 0:
        raise ValueError(f"need positive counts, got {num_videos=} {branches=}")
    rows = [(v, b) for v in range(num_videos) for b in range(branches)]
    return [v for v, _ in rows], [b for _, b in rows]


def level_grids(latent_hw: Sequence[int], num_levels: int) -> list[tuple[int, int]]:
    """Token grid ``(h, w)`` of every UNet level for a latent of ``latent_hw`` (each level halves, rounding up)."""
    h, w = (int(v) for v in latent_hw)
    out = []
    for _ in range(num_levels):
        out.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return out


@torch.no_grad()
def epipolar_biases(
    K: Tensor,  # [V, F, 3, 3] pixels of the generated image
    world_from_cam: Tensor,  # [V, F, 4, 4] OpenCV axes, one common frame for all videos (any scale)
    partner_video: IndexLike,  # [V] (or [P] with query_video)
    *,
    image_hw: Sequence[int],
    grids: Sequence[Sequence[int]],
    config: EpipolarBiasConfig | None = None,
    generator: torch.Generator | None = None,
    query_video: IndexLike | None = None,  # [P]
) -> list[Tensor | None]:  # per level [V or P, F, N, N] in config.dtype, or None for mode "none"
    """The epipolar bias of every UNet level for one pairing: video v's frame-k queries against video
    ``partner_video[v]``'s frame-k keys (slot v). With ``query_video``, slot i is ``query_video[i]`` against
    ``partner_video[i]`` instead (any list of directed pairs, e.g. a video in two pairs; index the slots with
    :meth:`CrossViewContext.build`'s ``bias_slot``). One geometry evaluation shared by all levels."""
    config = config or EpipolarBiasConfig()
    if K.ndim != 4 or world_from_cam.ndim != 4 or K.shape[:2] != world_from_cam.shape[:2]:
        raise ValueError(f"K must be [V, F, 3, 3] and world_from_cam [V, F, 4, 4], got {K.shape=} {world_from_cam.shape=}")
    if config.mode == "none":
        return [None] * len(grids)
    v = K.shape[0]
    if query_video is None:
        q = torch.arange(v)
        p = _index("partner_video", partner_video, v, v)
    else:
        q = _index("query_video", query_video, None, v)
        p = _index("partner_video", partner_video, q.shape[0], v)
    q, p = q.to(K.device), p.to(K.device)
    return list(
        epipolar_bias_pyramid(
            K[q], world_from_cam[q], K[p], world_from_cam[p], image_hw, grids=grids, config=config, generator=generator
        )
    )


def pose_tokens(
    features: Tensor,  # [V, F, C, h, w]
    slot: Tensor | None,  # [B] video of each row (None: V == B)
    num_rows: int,
    num_frames: int,
) -> Tensor:  # [(B h w), F, C]
    """Camera features of one level laid out as the motion modules' temporal tokens of the call's rows."""
    if features.ndim != 5 or features.shape[1] != num_frames:
        raise ValueError(f"pose features must be [V, {num_frames}, C, h, w], got {tuple(features.shape)}")
    if slot is not None:
        features = features.index_select(0, slot.to(features.device))  # [B, F, C, h, w]
    elif features.shape[0] != num_rows:
        raise ValueError(f"pose features have {features.shape[0]} videos, the call {num_rows} rows (give pose_slot)")
    b, f, c, h, w = features.shape
    return features.permute(0, 3, 4, 1, 2).reshape(b * h * w, f, c)  # [(B h w), F, C]


def _index(name: str, value: IndexLike, length: int | None, upper: int | None) -> Tensor:
    """An index vector as a long tensor, validated on the host when it lives there (device tensors: async)."""
    t = value if isinstance(value, Tensor) else torch.as_tensor(list(value), dtype=torch.long)
    if t.ndim != 1 or t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must be a 1-D integer index, got shape {tuple(t.shape)} dtype {t.dtype}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {t.shape[0]}")
    t = t.long()
    if t.device.type == "cpu":
        if t.numel() and (int(t.min()) < 0 or (upper is not None and int(t.max()) >= upper)):
            raise ValueError(f"{name} entries must lie in [0, {upper}), got {t.tolist()}")
    else:
        ok = t >= 0 if upper is None else (t >= 0) & (t < upper)
        torch._assert_async(ok.all(), f"{name} entries must lie in [0, {upper})")
    return t


def _check_same_branch(partner: Tensor, branch: Tensor) -> None:
    if partner.device.type == "cpu" and branch.device.type == "cpu":
        crossed = (branch[partner] != branch).nonzero().flatten().tolist()
        if crossed:
            raise ValueError(
                f"rows {crossed} would attend to a row of another guidance branch: partner={partner.tolist()} "
                f"branch={branch.tolist()}"
            )
    else:
        branch = branch.to(partner.device)
        torch._assert_async((branch[partner] == branch).all(), "a row is paired with a row of another guidance branch")


def _prepare_bias(
    level: int,
    bias: Tensor | None,
    slot: Tensor | None,
    num_rows: int,
    num_frames: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:  # [B·F, 1, N, N]
    if bias is None or (bias.ndim >= 2 and bias.stride(-1) == 0 and bias.stride(-2) == 0):
        return None  # "none" mode: a broadcast zero carries no information
    if bias.ndim != 4 or bias.shape[1] != num_frames or bias.shape[2] != bias.shape[3]:
        raise ValueError(f"bias of level {level} must be [P, {num_frames}, N, N], got {tuple(bias.shape)}")
    if slot is not None:
        bias = bias.to(device).index_select(0, slot)  # [B, F, N, N]
    elif bias.shape[0] != num_rows:
        raise ValueError(f"bias of level {level} has {bias.shape[0]} slots, the call {num_rows} rows (give bias_slot)")
    n = bias.shape[-1]
    return bias.to(device=device, dtype=dtype).reshape(num_rows * num_frames, 1, n, n)
