"""Camera geometry for the model: Plücker rays, fundamental matrices and the epipolar attention bias.

Conventions (the project's one convention): OpenCV camera axes (+x right, +y down, +z forward), poses are
``world_from_cam`` 4x4, intrinsics ``K`` in pixels of the generated image with pixel centres at +0.5 (pixel
``(u, v)`` covers ``[u, u+1) x [v, v+1)`` and its centre is ``(u+0.5, v+0.5)``). Every function is vectorised
over any leading batch dims (videos x frames, pairs x frames, ...) and broadcasts them.

The epipolar bias is the additive attention bias of the Cross-View Synchronization Module: queries are the
tokens of frame k of one video, keys the tokens of frame k of its partner. Token ``(i, j)`` of an ``h x w`` grid on
an ``H x W`` image sits at pixel ``((j+0.5)·W/w, (i+0.5)·H/h)``; tokens are flattened row-major (``i·w + j``), as
``rearrange(x, "b c h w -> b (h w) c")`` does. Modes:

* ``"soft"`` (default; what the released weights were trained with): ``d`` = pixel distance of each key token to
  the query's epipolar line, ``band = band_px / (S/2) · max d`` (max over every query-key entry of that frame
  pair), ``bias = -max(0, d - band) · decay / band``. ``max d`` is read at the grid's four corner tokens (both
  distances are convex in the key position), so no reduction over the full matrix is needed.
* ``"binary"`` (the paper): 0 where ``d <= band_px`` pixels, :data:`MASKED_BIAS` elsewhere. The band is widened
  to half a token-cell diagonal when the grid is coarser than that (otherwise a line through the image could
  catch no token centre at 8x8); a row whose line still catches no key (the line misses the image) gets no
  constraint (all zeros) and is counted in :class:`EpipolarBiasStats`, so no row is ever all-masked.
* ``"none"``: an all-zero bias (a zero-stride view, no memory); callers may skip the bias entirely instead.

Two conventions (``EpipolarBiasConfig.convention``), recorded per model with the weights trained on it:

* ``"release"`` (the published weights): exactly the released builder. Token ``(i, j)`` sits at
  ``(s_x·j + (s_x-1)/2, s_y·i + (s_y-1)/2)`` with ``s_x = W/w``, ``s_y = H/h`` (integer pixel centres: 3.5 px for
  the first token at 32² on 256², half a pixel before ours); ``F = K_k^{-T} [t]x R K_q^{-1}`` from the relative
  pose exactly as given (no normalisation of ``t`` or ``F``: the regulariser below acts at the scale of the
  poses); ``l = F p``, ``d = |l·p'| / (|(l1, l2)| + 1e-6)``; ``S`` = the image height; soft bias
  ``-max(0, d - band) · decay / (band + 1e-6)``. The release handles square images only; on a non-square image
  we keep its per-axis token formula and ``S`` = height (so the band is relative to the height, as its code
  reads it).
* ``"ours"`` (models trained by ``cvd-scene train``): token centres ``((j+0.5)·W/w, (i+0.5)·H/h)`` in the
  project's +0.5 pixel convention, lines normalised exactly (``F`` scale-free, so the result does not depend on
  the pose units), ``S`` = the longer image side, ``decay / band`` with the band floored at 1e-6 px.
  ``None`` reads as ``"ours"`` here; model loading resolves it from where the weights come from.

Zero baseline (identical cameras, pure rotation: relative translation norm below ``baseline_eps``, in the pose
units given) makes the fundamental matrix vanish. It is detected per pair and replaced by the infinite
homography ``H = K_k R K_q^{-1}``, which maps each query pixel to its true correspondence (exact for pure
rotation, at any depth). Policy ``"homography-line"`` (default) uses a line of uniformly random orientation
through ``H·p``: for identical cameras ``H = I`` and this is the released first-frame behaviour. Policy
``"homography-point"`` penalises the distance to ``H·p`` itself. A query whose correspondence lies behind the
partner camera (``w <= 0`` after ``H``) or whose epipolar line is degenerate (the query sits on the epipole) gets
no constraint (a zero row), counted in the stats. One random orientation is drawn per frame pair (as released)
and shared by every level of :func:`epipolar_bias_pyramid`.

Bias values: soft values are bounded by ``decay · S / (2 band_px)`` (128 at 256², decay 3) and clamped at
:data:`MASKED_BIAS`; binary masking uses :data:`MASKED_BIAS` = -1e4, finite in fp16/bf16 and far enough below any
logit that ``exp`` underflows to exactly 0 in every dtype, while never producing ``-inf - -inf = NaN`` inside
SDPA. Output dtype defaults to fp16: build it once per UNet level per pairing and share it across heads and
modules (broadcast ``bias[:, None]`` as SDPA's ``attn_mask``).

Inputs are validated on the host (shapes, and a finite check that reads the cameras once per call). Build
the bias outside the UNet call: it depends only on the cameras and the grid, so it can be reused for every
denoising step (redraw it when a fresh pseudo-line orientation per step is wanted, as the release does).

Imports torch only (numpy-free); must never import ``cvd_scene``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "MASKED_BIAS",
    "EpipolarBiasConfig",
    "EpipolarBiasStats",
    "correspondence_lines",
    "epipolar_bias",
    "epipolar_bias_pyramid",
    "fundamental_matrix",
    "homography_bias",
    "homography_bias_pyramid",
    "infinite_homography",
    "invert_rigid",
    "model_poses",
    "plucker_embedding",
    "pseudo_line_bias",
    "relative_pose",
    "token_centres",
]

MASKED_BIAS = -1.0e4
"""Additive bias of a masked query-key entry (binary mode) and the floor of every bias value."""

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
# Relative tolerance under which a line (a, b) or a homogeneous w counts as zero.
_DEGENERATE_REL = 1e-9
_MIN_BAND_PX = 1e-6
# The released builder's regularisers: |(l1, l2)| + 1e-6 under the line distance, band + 1e-6 under the slope.
_RELEASE_LINE_EPS = 1e-6
_RELEASE_BAND_EPS = 1e-6


@dataclass(kw_only=True)
class EpipolarBiasConfig:
    """How the cross-view attention bias is built from the cameras of a frame pair."""

    mode: Literal["soft", "binary", "none"] = "soft"
    """``soft``: the released relative-band bias (default; the released weights were trained with it);
    ``binary``: the paper's mask, 0 within ``band_px`` pixels of the line and MASKED_BIAS elsewhere;
    ``none``: no constraint (an all-zero bias)."""
    band_px: float = 3.0
    """soft: the released ``pixel_band`` (band = band_px / (S/2) · max distance); binary: tau, the half width of
    the band in pixels of the generated image."""
    decay: float = 3.0
    """soft: bias slope, in units of ``-decay`` per band width beyond the band (released: 3)."""
    band_reference_px: float | None = None
    """soft: the image side ``S`` of the relative band; None uses the longer side of the image (``ours``) or its
    height (``release``); both are 256 at 256², as released."""
    binary_widen_to_token_cell: bool = True
    """binary: widen tau to half the token-cell diagonal when the grid is coarser (so a line crossing the image
    always catches at least one key token)."""
    zero_baseline: Literal["homography-line", "homography-point"] = "homography-line"
    """What replaces the vanished epipolar line when the baseline is zero: a random-orientation line through the
    infinite-homography correspondence H·p (released first-frame behaviour for identical cameras), or the
    distance to H·p itself."""
    baseline_eps: float = 1e-5
    """Relative-translation norm (in the units of the poses given, model units for the model) below which a
    frame pair counts as zero baseline (identical cameras or pure rotation)."""
    convention: Literal["ours", "release"] | None = None
    """``release``: token centres, line distance, band side and slope exactly as the released builder (what the
    published weights were trained with); ``ours``: +0.5 pixel centres and exactly normalised lines (models
    trained by ``cvd-scene train``); None: decided by where the weights come from (model loading resolves it;
    the geometry functions read it as ``ours``). See the module docstring."""
    line_draw: Literal["per-pair", "per-call"] | None = None
    """Orientation of the zero-baseline pseudo-lines during sampling: ``per-pair``: one per (video, partner,
    frame) per sample, shared by every level and call (the bias stays cached; how ``cvd-scene train`` trains);
    ``per-call``: the release's redraw, one new orientation at every cross-view attention call, shared by every
    row (how the published weights were trained; zero-baseline rows are rebuilt at every call: 0.4 % of an
    SD1.5-size UNet call on the CPU, README "Generate (2)"); None: the convention's own (``release`` ->
    ``per-call``, otherwise ``per-pair``)."""
    dtype: Literal["float16", "bfloat16", "float32", "float64"] = "float16"
    """Dtype of the returned bias."""
    compute_dtype: Literal["float32", "float64"] = "float32"
    """Dtype of the [.., Q, K] distance computation (3x3 geometry is always float64)."""

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "binary", "none"):
            raise ValueError(f"mode must be 'soft', 'binary' or 'none', got {self.mode!r}")
        if self.zero_baseline not in ("homography-line", "homography-point"):
            raise ValueError(
                f"zero_baseline must be 'homography-line' or 'homography-point', got {self.zero_baseline!r}"
            )
        if not (self.band_px > 0 and math.isfinite(self.band_px)):
            raise ValueError(f"band_px must be positive, got {self.band_px=}")
        if not (self.decay >= 0 and math.isfinite(self.decay)):
            raise ValueError(f"decay must be >= 0, got {self.decay=}")
        if self.band_reference_px is not None and not self.band_reference_px > 0:
            raise ValueError(f"band_reference_px must be positive or None, got {self.band_reference_px=}")
        if self.convention not in (None, "ours", "release"):
            raise ValueError(f"convention must be 'ours', 'release' or None, got {self.convention!r}")
        if self.line_draw not in (None, "per-pair", "per-call"):
            raise ValueError(f"line_draw must be 'per-pair', 'per-call' or None, got {self.line_draw!r}")
        if not self.baseline_eps >= 0:
            raise ValueError(f"baseline_eps must be >= 0, got {self.baseline_eps=}")
        for name in ("dtype", "compute_dtype"):
            value = getattr(self, name)
            if isinstance(value, torch.dtype):  # accept torch dtypes from Python callers
                value = str(value).removeprefix("torch.")
                setattr(self, name, value)
            allowed = _DTYPES if name == "dtype" else ("float32", "float64")
            if value not in allowed:
                raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return _DTYPES[self.compute_dtype]

    @property
    def is_release(self) -> bool:
        """Whether the bias is built exactly as the released builder (``convention == "release"``)."""
        return self.convention == "release"

    @property
    def effective_line_draw(self) -> str:
        """``line_draw``, or the convention's own when it is None (release: ``per-call``; ours: ``per-pair``)."""
        return self.line_draw or ("per-call" if self.is_release else "per-pair")


@dataclass
class EpipolarBiasStats:
    """What the bias builder decided for each frame pair (leading dims ``[...]`` of the cameras)."""

    zero_baseline: Tensor
    """[...] bool: the pair had zero baseline and used the infinite-homography policy."""
    unconstrained_rows: Tensor
    """[...] int64: queries given no constraint (zero row): degenerate line, correspondence behind the partner
    camera, or (binary) no key within the band because the line misses the image."""
    band_px: Tensor
    """[...] float: the band used in pixels (soft: the relative band; binary: the widened tau; none: 0)."""
    line_angle_rad: Tensor
    """[...] float64: the normal angle of the pseudo-lines (used only by zero-baseline pairs)."""


# ----------------------------------------------------------------------------------------------------------
# validation helpers


def _check_square(name: str, x: object, n: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[-2:] != (n, n):
        raise ValueError(f"{name} must be [..., {n}, {n}], got {name}.shape={tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {name}.dtype={x.dtype}")
    return x


def _check_hw(name: str, hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {name}={hw!r}") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(hw):
        raise ValueError(f"{name} must be two positive integers (height, width), got {name}={hw!r}")
    return h, w


def _check_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _to64(x: Tensor) -> Tensor:
    return x.to(torch.float64)


# ----------------------------------------------------------------------------------------------------------
# cameras


def plucker_embedding(
    K: Tensor,  # [..., 3, 3] pixels
    world_from_cam: Tensor,  # [..., 4, 4] OpenCV axes
    height: int,
    width: int,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:  # [..., 6, H, W]
    """Per-pixel Plücker rays ``[o x d, d]`` (CameraCtrl formula) of a ``height x width`` image.

    Pixel ``(u, v)`` has centre ``(u+0.5, v+0.5)``; its camera ray ``((u+0.5-cx)/fx, (v+0.5-cy)/fy, 1)`` is
    normalised and rotated into the world, ``d = R_world_from_cam · ray``, with origin ``o = t_world_from_cam`` (pass poses relative to
    each video's first frame, in model units). Computed in the promoted dtype of the inputs (float32 at least);
    returned in ``dtype`` (default: that compute dtype). Skew in ``K`` is ignored, as in CameraCtrl.
    """
    K = _check_square("K", K, 3)
    world_from_cam = _check_square("world_from_cam", world_from_cam, 4)
    height, width = _check_hw("(height, width)", (height, width))
    compute = torch.promote_types(torch.promote_types(K.dtype, world_from_cam.dtype), torch.float32)
    K = K.to(compute)
    world_from_cam = world_from_cam.to(compute)
    batch = torch.broadcast_shapes(K.shape[:-2], world_from_cam.shape[:-2])
    device = world_from_cam.device
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=compute) + 0.5,
        torch.arange(width, device=device, dtype=compute) + 0.5,
        indexing="ij",
    )  # [H, W] each
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]  # [..., 1, 1]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (u - cx) / fx  # [..., H, W]
    y = (v - cy) / fy
    x, y = torch.broadcast_tensors(x, y)
    ray = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [..., H, W, 3]
    ray = ray / torch.linalg.vector_norm(ray, dim=-1, keepdim=True)
    R = world_from_cam[..., None, None, :3, :3]  # [..., 1, 1, 3, 3]
    d = (R @ ray[..., None])[..., 0]  # [..., H, W, 3]
    o = world_from_cam[..., None, None, :3, 3].expand_as(d)  # [..., H, W, 3]
    moment = torch.linalg.cross(o, d, dim=-1)  # [..., H, W, 3]
    out = torch.cat([moment, d], dim=-1).movedim(-1, -3).contiguous()  # [..., 6, H, W]
    assert out.shape == (*batch, 6, height, width), out.shape
    return out if dtype is None else out.to(dtype)


def invert_rigid(T):  # [..., 4, 4] -> [..., 4, 4]
    """Inverse of rigid transforms (exact: ``R^T`` and ``-R^T t``, no general matrix inverse). ``T`` is a
    ``torch.Tensor`` or a numpy array; the result has its type, dtype and device. The one rigid inverse of ``cvd``
    (``cvd_scene.cameras.invert_rigid`` is the scene side's numpy twin, tested equal)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.swapaxes(-1, -2)
    out = T.clone() if isinstance(T, Tensor) else T.copy()
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, :3] = 0
    out[..., 3, 3] = 1
    return out


def model_poses(world_from_cam, model_units_per_metre: float):  # [..., F, 4, 4] -> [..., F, 4, 4]
    """The pose encoder's poses: each video relative to its own first frame (frame 0 the identity), translations
    in model units (CameraCtrl/CVD were trained on RealEstate10K's arbitrary SLAM scale). ``torch.Tensor`` or
    numpy array in, the same type and dtype out (``cvd_scene.cameras.to_model_poses`` is the numpy twin, tested
    equal)."""
    rel = invert_rigid(world_from_cam[..., :1, :, :]) @ world_from_cam  # [..., F, 4, 4]
    rel[..., :3, 3] *= model_units_per_metre
    return rel



def relative_pose(world_from_src: Tensor, world_from_tgt: Tensor) -> Tensor:  # [..., 4, 4] x2 -> [..., 4, 4]
    """``tgt_from_src = inv(world_from_tgt) · world_from_src`` (rigid inverse), so ``x_tgt = R x_src + t``."""
    world_from_src = _check_square("world_from_src", world_from_src, 4)
    world_from_tgt = _check_square("world_from_tgt", world_from_tgt, 4)
    dtype = torch.promote_types(world_from_src.dtype, world_from_tgt.dtype)
    return invert_rigid(world_from_tgt.to(dtype)) @ world_from_src.to(dtype)


def _skew(t: Tensor) -> Tensor:  # [..., 3] -> [..., 3, 3] with skew(t) @ x == t x x
    zero = torch.zeros_like(t[..., 0])
    tx, ty, tz = t.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -tz, ty], dim=-1),
            torch.stack([tz, zero, -tx], dim=-1),
            torch.stack([-ty, tx, zero], dim=-1),
        ],
        dim=-2,
    )


def fundamental_matrix(
    K_src: Tensor,  # [..., 3, 3]
    world_from_src: Tensor,  # [..., 4, 4]
    K_tgt: Tensor,  # [..., 3, 3]
    world_from_tgt: Tensor,  # [..., 4, 4]
) -> Tensor:  # [..., 3, 3]
    """Fundamental matrix with ``p_tgtᵀ F p_src = 0`` for pixel coordinates (pixel centres at +0.5).

    ``[R|t] = inv(world_from_tgt) · world_from_src``, ``E = [t]x R``, ``F = K_tgt^{-T} E K_src^{-1}``; ``F p_src`` is the
    epipolar line ``(a, b, c)`` in the target image, ``Fᵀ`` the reverse direction. Computed in float64, returned
    in the promoted input dtype. Not normalised: F is 0 for zero baseline (see :func:`infinite_homography`).
    """
    for name, x, n in (("K_src", K_src, 3), ("world_from_src", world_from_src, 4), ("K_tgt", K_tgt, 3), ("world_from_tgt", world_from_tgt, 4)):
        _check_square(name, x, n)
    out_dtype = torch.promote_types(torch.promote_types(K_src.dtype, world_from_src.dtype), torch.promote_types(K_tgt.dtype, world_from_tgt.dtype))
    T = relative_pose(_to64(world_from_src), _to64(world_from_tgt))  # [..., 4, 4]
    E = _skew(T[..., :3, 3]) @ T[..., :3, :3]  # [..., 3, 3]
    F = torch.linalg.inv(_to64(K_tgt)).transpose(-1, -2) @ E @ torch.linalg.inv(_to64(K_src))
    return F.to(out_dtype)


def infinite_homography(
    K_src: Tensor,  # [..., 3, 3]
    world_from_src: Tensor,  # [..., 4, 4]
    K_tgt: Tensor,  # [..., 3, 3]
    world_from_tgt: Tensor,  # [..., 4, 4]
) -> Tensor:  # [..., 3, 3]
    """``H = K_tgt R K_src^{-1}``: maps source pixels to target pixels of points at infinity (exact for any depth
    when the baseline is zero). Computed in float64, returned in the promoted input dtype."""
    for name, x, n in (("K_src", K_src, 3), ("world_from_src", world_from_src, 4), ("K_tgt", K_tgt, 3), ("world_from_tgt", world_from_tgt, 4)):
        _check_square(name, x, n)
    out_dtype = torch.promote_types(torch.promote_types(K_src.dtype, world_from_src.dtype), torch.promote_types(K_tgt.dtype, world_from_tgt.dtype))
    T = relative_pose(_to64(world_from_src), _to64(world_from_tgt))
    H = _to64(K_tgt) @ T[..., :3, :3] @ torch.linalg.inv(_to64(K_src))
    return H.to(out_dtype)


def token_centres(
    grid_hw: Sequence[int],
    image_hw: Sequence[int],
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    convention: str | None = None,
) -> Tensor:  # [h*w, 3]
    """Homogeneous pixel centres ``(x, y, 1)`` of the tokens of an ``h x w`` grid on an ``H x W`` image:
    token ``(i, j)`` (row-major index ``i·w + j``) sits at ``((j+0.5)·W/w, (i+0.5)·H/h)``; with
    ``convention="release"`` at ``(s_x·j + (s_x-1)/2, s_y·i + (s_y-1)/2)``, ``s_x = W/w``, ``s_y = H/h`` (half a
    pixel less: the released builder's integer pixel centres)."""
    h, w = _check_hw("grid_hw", grid_hw)
    H, W = _check_hw("image_hw", image_hw)
    if convention not in (None, "ours", "release"):
        raise ValueError(f"convention must be 'ours', 'release' or None, got {convention!r}")
    shift = -0.5 if convention == "release" else 0.0
    ys = (torch.arange(h, dtype=torch.float64, device=device) + 0.5) * (H / h) + shift  # [h]
    xs = (torch.arange(w, dtype=torch.float64, device=device) + 0.5) * (W / w) + shift  # [w]
    y, x = torch.meshgrid(ys, xs, indexing="ij")  # [h, w] each
    pts = torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(h * w, 3)  # [h*w, 3]
    return pts.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# correspondence lines (the geometry shared by every level)


@dataclass
class _PairGeometry:
    """Per frame pair: how a query pixel maps into the partner image (all float64)."""

    F: Tensor  # [..., 3, 3] query pixel -> epipolar line in the key image (ours: scale-normalised; release: as is)
    H: Tensor  # [..., 3, 3] query pixel -> correspondence at infinity in the key image
    zero_baseline: Tensor  # [...] bool
    angle_rad: Tensor  # [...] float64 normal angle of pseudo-lines
    release: bool = False  # the released line distance |l.p| / (|(l1, l2)| + 1e-6)

    @property
    def batch_shape(self) -> torch.Size:
        return self.zero_baseline.shape


def _draw_angles(
    batch: torch.Size,
    device: torch.device,
    generator: torch.Generator | None,
    line_angle_rad: Tensor | float | None,
) -> Tensor:  # [...] float64
    if line_angle_rad is not None:
        angle = torch.as_tensor(line_angle_rad, dtype=torch.float64, device=device)
        try:
            return angle.expand(batch).clone()
        except RuntimeError:
            raise ValueError(
                f"line_angle_rad must broadcast to the pair shape {tuple(batch)}, got shape {tuple(angle.shape)}"
            ) from None
    gen_device = generator.device if generator is not None else device
    angle = torch.rand(batch, generator=generator, dtype=torch.float64, device=gen_device) * math.pi
    return angle.to(device)


def _camera_geometry(
    K_q: Tensor,
    world_from_q: Tensor,
    K_k: Tensor,
    world_from_k: Tensor,
    config: EpipolarBiasConfig,
    generator: torch.Generator | None,
    line_angle_rad: Tensor | float | None,
) -> _PairGeometry:
    for name, x, n in (("K_q", K_q, 3), ("world_from_q", world_from_q, 4), ("K_k", K_k, 3), ("world_from_k", world_from_k, 4)):
        _check_square(name, x, n)
        _check_finite(name, x)
    try:
        batch = torch.broadcast_shapes(K_q.shape[:-2], world_from_q.shape[:-2], K_k.shape[:-2], world_from_k.shape[:-2])
    except RuntimeError:
        raise ValueError(
            "camera batch dims do not broadcast: "
            f"K_q {tuple(K_q.shape)}, world_from_q {tuple(world_from_q.shape)}, K_k {tuple(K_k.shape)}, world_from_k {tuple(world_from_k.shape)}"
        ) from None
    K_q64 = _to64(K_q).expand(*batch, 3, 3)
    K_k64 = _to64(K_k).expand(*batch, 3, 3)
    T = relative_pose(_to64(world_from_q), _to64(world_from_k)).expand(*batch, 4, 4)  # key_from_query
    R, t = T[..., :3, :3], T[..., :3, 3]  # [..., 3, 3], [..., 3]
    t_norm = torch.linalg.vector_norm(t, dim=-1)  # [...]
    zero = t_norm <= config.baseline_eps
    K_q_inv = torch.linalg.inv(K_q64)
    if config.is_release:  # F from the relative pose exactly as given: the +1e-6 of the line norm acts at its scale
        F = torch.linalg.inv(K_k64).transpose(-1, -2) @ _skew(t) @ R @ K_q_inv  # [..., 3, 3]
    else:
        t_hat = t / torch.where(zero, torch.ones_like(t_norm), t_norm)[..., None]
        F = torch.linalg.inv(K_k64).transpose(-1, -2) @ _skew(t_hat) @ R @ K_q_inv  # [..., 3, 3]
        F = F / torch.linalg.matrix_norm(F).clamp_min(1e-300)[..., None, None]
    H = K_k64 @ R @ K_q_inv  # [..., 3, 3]
    angle = _draw_angles(batch, T.device, generator, line_angle_rad)
    return _PairGeometry(F=F, H=H, zero_baseline=zero, angle_rad=angle, release=config.is_release)


def _homography_geometry(
    H: Tensor,
    generator: torch.Generator | None,
    line_angle_rad: Tensor | float | None,
    config: EpipolarBiasConfig,
) -> _PairGeometry:
    H = _check_square("H", H, 3)
    _check_finite("H", H)
    H64 = _to64(H)
    batch = H64.shape[:-2]
    zero = torch.ones(batch, dtype=torch.bool, device=H64.device)
    angle = _draw_angles(batch, H64.device, generator, line_angle_rad)
    return _PairGeometry(F=torch.zeros_like(H64), H=H64, zero_baseline=zero, angle_rad=angle, release=config.is_release)


def _lines_and_points(
    geom: _PairGeometry,
    queries: Tensor,  # [Q, 3] or [..., Q, 3] float64 homogeneous query pixels
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised lines ``(a, b, c)`` with ``a² + b² = 1`` in the key image for every query (release: divided by
    ``|(a, b)| + 1e-6`` instead, every epipolar line valid), the dehomogenised correspondence ``H·p``, and validity
    of each.

    Returns lines [..., Q, 3], line_valid [..., Q], points [..., Q, 2], point_valid [..., Q] (float64/bool).
    """
    p_norm = torch.linalg.vector_norm(queries, dim=-1)  # [Q]
    # Epipolar lines l = F p.
    epi = queries @ geom.F.transpose(-1, -2)  # [..., Q, 3]
    epi_ab = torch.linalg.vector_norm(epi[..., :2], dim=-1)  # [..., Q]
    if geom.release:
        epi_valid = torch.ones_like(epi_ab, dtype=torch.bool)
        epi = epi / (epi_ab + _RELEASE_LINE_EPS)[..., None]
    else:
        epi_valid = epi_ab > _DEGENERATE_REL * p_norm
        epi = epi / torch.where(epi_valid, epi_ab, torch.ones_like(epi_ab))[..., None]
    # Correspondences at infinity x = H p, valid when in front of the key camera (w > 0).
    hp = queries @ geom.H.transpose(-1, -2)  # [..., Q, 3]
    w = hp[..., 2]
    point_valid = w > _DEGENERATE_REL * torch.linalg.vector_norm(hp, dim=-1)
    points = hp[..., :2] / torch.where(point_valid, w, torch.ones_like(w))[..., None]  # [..., Q, 2]
    points = torch.where(point_valid[..., None], points, torch.zeros_like(points))
    # Pseudo-lines through H p with normal (cos a, sin a).
    normal = torch.stack([torch.cos(geom.angle_rad), torch.sin(geom.angle_rad)], dim=-1)[..., None, :]  # [..., 1, 2]
    pseudo_c = -(points * normal).sum(-1, keepdim=True)  # [..., Q, 1]
    pseudo = torch.cat([normal.expand_as(points), pseudo_c], dim=-1)  # [..., Q, 3]
    if geom.release:
        pseudo = pseudo / (1.0 + _RELEASE_LINE_EPS)
    zero = geom.zero_baseline[..., None]  # [..., 1]
    lines = torch.where(zero[..., None], pseudo, epi)
    line_valid = torch.where(zero, point_valid, epi_valid)
    return lines, line_valid, points, point_valid


def correspondence_lines(
    K_q: Tensor,  # [..., 3, 3]
    world_from_q: Tensor,  # [..., 4, 4]
    K_k: Tensor,  # [..., 3, 3]
    world_from_k: Tensor,  # [..., 4, 4]
    query_px: Tensor,  # [Q, 2] or [..., Q, 2] pixel coordinates in the query image
    config: EpipolarBiasConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    line_angle_rad: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:  # [..., Q, 3] float64, [..., Q] bool
    """The line in the key image that the bias constrains each query pixel to, normalised so ``a² + b² = 1``
    (so ``|a x + b y + c|`` is a distance in pixels), and whether the query is constrained at all.

    The epipolar line ``F p`` for a real baseline; for zero baseline a line of orientation ``line_angle_rad``
    (normal angle, or random) through the infinite-homography correspondence ``H·p``.
    """
    config = config or EpipolarBiasConfig()
    geom = _camera_geometry(K_q, world_from_q, K_k, world_from_k, config, generator, line_angle_rad)
    if not isinstance(query_px, Tensor) or query_px.shape[-1] != 2:
        raise ValueError(f"query_px must be a [..., Q, 2] tensor, got {getattr(query_px, 'shape', query_px)!r}")
    q = _to64(query_px)
    q = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)  # [..., Q, 3]
    lines, valid, _, _ = _lines_and_points(geom, q)
    return lines, valid


# ----------------------------------------------------------------------------------------------------------
# the bias


def _bias_one_level(
    geom: _PairGeometry,
    grid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    config: EpipolarBiasConfig,
) -> tuple[Tensor, EpipolarBiasStats]:  # [..., h*w, h*w]
    h, w = grid_hw
    H_img, W_img = image_hw
    n = h * w
    batch = geom.batch_shape
    device = geom.F.device
    out_dtype = config.torch_dtype
    if config.mode == "none":
        bias = torch.zeros((), dtype=out_dtype, device=device).expand(*batch, n, n)
        stats = EpipolarBiasStats(
            zero_baseline=geom.zero_baseline,
            unconstrained_rows=torch.full(batch, n, dtype=torch.int64, device=device),
            band_px=torch.zeros(batch, dtype=torch.float64, device=device),
            line_angle_rad=geom.angle_rad,
        )
        return bias, stats

    cdt = config.torch_compute_dtype
    tokens = token_centres(grid_hw, image_hw, device=device, convention=config.convention)  # [n, 3] float64
    corners = tokens[[0, w - 1, n - w, n - 1]]  # [4, 3] the grid's corner tokens
    lines, line_valid, points, point_valid = _lines_and_points(geom, tokens)  # [..., Q, 3], [..., Q], ...
    use_points = config.zero_baseline == "homography-point"
    if use_points:
        zero = geom.zero_baseline[..., None]  # [..., 1]
        valid = torch.where(zero, point_valid, line_valid)  # [..., Q]
        lines = torch.where((zero & ~point_valid)[..., None], torch.zeros_like(lines), lines)
    else:
        valid = line_valid
    lines = lines * valid[..., None]  # an unconstrained row has the zero line: distance 0 to every key
    # Largest distance of each pair: |l . p| and |p - x| are convex in p, so over the grid they peak at a corner.
    corner_dist = (lines @ corners.T).abs()  # [..., Q, 4]
    if use_points:
        point_corner = torch.linalg.vector_norm(points[..., None, :] - corners[:, :2], dim=-1)  # [..., Q, 4]
        corner_dist = torch.where(zero[..., None], point_corner * valid[..., None], corner_dist)
    max_dist = corner_dist.amax(dim=(-2, -1))  # [...]
    keys = tokens.to(cdt)  # [n, 3]

    def distances(scale: Tensor) -> Tensor:  # [...] -> [..., Q, K] = scale · distance (0 on unconstrained rows)
        dist = ((lines * scale[..., None, None]).to(cdt) @ keys.T).abs_()  # [..., Q, K], unit-normal lines
        if use_points:
            point_dist = torch.cdist(  # direct formula (no matmul expansion: exact near 0)
                points.to(cdt), keys[:, :2].expand(*batch, n, 2), compute_mode="donot_use_mm_for_euclid_dist"
            )  # [..., Q, K]
            point_dist.mul_((scale[..., None] * valid).to(cdt)[..., None])
            dist = torch.where(zero[..., None].expand(*batch, 1, 1), point_dist, dist)
        return dist

    if config.mode == "soft":
        if config.is_release:  # S = the image height; slope decay / (band + 1e-6)
            side = float(config.band_reference_px or H_img)
            band = (config.band_px / (side / 2.0)) * max_dist  # [...]
            scale = config.decay / (band + _RELEASE_BAND_EPS)  # [...]
        else:
            side = float(config.band_reference_px or max(H_img, W_img))
            band = ((config.band_px / (side / 2.0)) * max_dist).clamp_min(_MIN_BAND_PX)  # [...]
            scale = config.decay / band  # [...]
        # bias = -max(0, d - band)·decay/band = min(0, s·band - s·d) with s = decay/band, in two passes.
        dist = distances(scale)  # [..., Q, K]
        bias = torch.sub((scale * band).to(cdt)[..., None, None], dist, out=dist)
        bias = bias.clamp_(min=MASKED_BIAS, max=0.0).to(out_dtype)
        unconstrained = (~valid).sum(-1)
        band_used = band
    else:  # binary
        tau = config.band_px
        if config.binary_widen_to_token_cell:
            tau = max(tau, 0.5 * math.hypot(W_img / w, H_img / h))
        allowed = distances(torch.ones_like(max_dist)) <= tau  # [..., Q, K]
        free_row = ~allowed.any(dim=-1)  # [..., Q] (unconstrained rows have distance 0: allowed everywhere)
        free_row |= ~valid
        allowed |= free_row[..., None]
        bias = torch.zeros(allowed.shape, dtype=out_dtype, device=device).masked_fill_(~allowed, MASKED_BIAS)
        unconstrained = free_row.sum(-1)
        band_used = torch.full(batch, tau, dtype=torch.float64, device=device)
    stats = EpipolarBiasStats(
        zero_baseline=geom.zero_baseline,
        unconstrained_rows=unconstrained,
        band_px=band_used,
        line_angle_rad=geom.angle_rad,
    )
    return bias, stats


@torch.no_grad()
def pseudo_line_bias(
    H: Tensor,  # [..., 3, 3] float64 query pixels -> partner pixels (identity for identical cameras)
    grid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    angle_rad: float,
    config: EpipolarBiasConfig,
) -> Tensor:  # [..., h*w, h*w] in config.dtype
    """The zero-baseline bias of one cross-view attention call under the release's redraw: every query is
    constrained to the line of normal angle ``angle_rad`` (one angle for every pair of the call) through ``H·p``,
    with the soft/binary formula of ``config``. Equal to :func:`homography_bias` with ``line_angle_rad=angle_rad``
    but with no validation and no host reads, so it can run inside a UNet call: ``H`` must already be a finite
    float64 tensor on the device and the sizes checked by the caller."""
    batch = H.shape[:-2]
    geom = _PairGeometry(
        F=torch.zeros_like(H),
        H=H,
        zero_baseline=torch.ones(batch, dtype=torch.bool, device=H.device),
        angle_rad=torch.full(batch, float(angle_rad), dtype=torch.float64, device=H.device),
        release=config.is_release,
    )
    return _bias_one_level(geom, grid_hw, image_hw, config)[0]


def _check_grids(grids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if isinstance(grids, (str, bytes)) or len(grids) == 0:
        raise ValueError(f"grids must be a non-empty list of (h, w), got {grids!r}")
    return [_check_hw("grids[i]", g) for g in grids]


@torch.no_grad()
def epipolar_bias_pyramid(
    K_q: Tensor,  # [..., 3, 3] query video's frame
    world_from_q: Tensor,  # [..., 4, 4]
    K_k: Tensor,  # [..., 3, 3] partner video's same-index frame
    world_from_k: Tensor,  # [..., 4, 4]
    image_hw: Sequence[int],
    grids: Sequence[Sequence[int]] = ((32, 32), (16, 16), (8, 8), (4, 4)),
    config: EpipolarBiasConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    line_angle_rad: Tensor | float | None = None,
    return_stats: bool = False,
) -> list[Tensor] | tuple[list[Tensor], list[EpipolarBiasStats]]:  # each [..., h*w, h*w]
    """:func:`epipolar_bias` for several token grids at once; the pair geometry (F, H, zero-baseline decision,
    pseudo-line orientation) is computed once and shared by every level."""
    config = config or EpipolarBiasConfig()
    image_hw = _check_hw("image_hw", image_hw)
    grids = _check_grids(grids)
    geom = _camera_geometry(K_q, world_from_q, K_k, world_from_k, config, generator, line_angle_rad)
    results = [_bias_one_level(geom, g, image_hw, config) for g in grids]
    biases = [b for b, _ in results]
    return (biases, [s for _, s in results]) if return_stats else biases


@torch.no_grad()
def epipolar_bias(
    K_q: Tensor,  # [..., 3, 3] query video's frame
    world_from_q: Tensor,  # [..., 4, 4]
    K_k: Tensor,  # [..., 3, 3] partner video's same-index frame
    world_from_k: Tensor,  # [..., 4, 4]
    grid_hw: Sequence[int],
    image_hw: Sequence[int],
    config: EpipolarBiasConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    line_angle_rad: Tensor | float | None = None,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, EpipolarBiasStats]:  # [..., h*w (queries), h*w (keys)]
    """Additive attention bias for the queries of one frame attending to the keys of its partner's frame.

    Cameras: OpenCV ``world_from_cam`` and ``K`` in pixels of the ``image_hw`` generated image; batch dims
    broadcast. ``grid_hw`` is the token grid of the UNet level. Zero-baseline pairs use ``config.zero_baseline``;
    their pseudo-line orientation (normal angle in radians, one per pair) is ``line_angle_rad`` when given, else
    uniform in [0, pi) from ``generator``. Returns ``[..., Q, K]`` in ``config.dtype`` (and the stats when asked).
    """
    config = config or EpipolarBiasConfig()
    grid_hw = _check_hw("grid_hw", grid_hw)
    image_hw = _check_hw("image_hw", image_hw)
    geom = _camera_geometry(K_q, world_from_q, K_k, world_from_k, config, generator, line_angle_rad)
    bias, stats = _bias_one_level(geom, grid_hw, image_hw, config)
    return (bias, stats) if return_stats else bias


@torch.no_grad()
def homography_bias_pyramid(
    H: Tensor,  # [..., 3, 3] query-image pixels -> partner-image pixels
    image_hw: Sequence[int],
    grids: Sequence[Sequence[int]] = ((32, 32), (16, 16), (8, 8), (4, 4)),
    config: EpipolarBiasConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    line_angle_rad: Tensor | float | None = None,
    return_stats: bool = False,
) -> list[Tensor] | tuple[list[Tensor], list[EpipolarBiasStats]]:  # each [..., h*w, h*w]
    """:func:`homography_bias` for several token grids, one orientation per pair shared by every level."""
    config = config or EpipolarBiasConfig()
    image_hw = _check_hw("image_hw", image_hw)
    grids = _check_grids(grids)
    geom = _homography_geometry(H, generator, line_angle_rad, config)
    results = [_bias_one_level(geom, g, image_hw, config) for g in grids]
    biases = [b for b, _ in results]
    return (biases, [s for _, s in results]) if return_stats else biases


@torch.no_grad()
def homography_bias(
    H: Tensor,  # [..., 3, 3] query-image pixels -> partner-image pixels
    grid_hw: Sequence[int],
    image_hw: Sequence[int],
    config: EpipolarBiasConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    line_angle_rad: Tensor | float | None = None,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, EpipolarBiasStats]:  # [..., h*w, h*w]
    """Pseudo-epipolar bias for homography-warped training pairs: ``H`` maps pixels of the query image to pixels
    of the partner image (both with pixel centres at +0.5); each query is constrained to a line of random
    orientation through ``H·p`` (``config.zero_baseline="homography-point"``: to ``H·p`` itself), with the
    same soft/binary/none modes as :func:`epipolar_bias`."""
    config = config or EpipolarBiasConfig()
    grid_hw = _check_hw("grid_hw", grid_hw)
    image_hw = _check_hw("image_hw", image_hw)
    geom = _homography_geometry(H, generator, line_angle_rad, config)
    bias, stats = _bias_one_level(geom, grid_hw, image_hw, config)
    return (bias, stats) if return_stats else bias
