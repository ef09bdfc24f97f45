"""One training pair and the image operations every data source shares.

A :class:`PairSample` is two videos that start at one common camera (posed data) or a video and its
homography-warped copy (monocular data), with everything the trainer needs: frames, cameras or homographies,
pixel validity and the caption. Frames are ``uint8 [2, F, H, W, 3]`` (the cheap form to keep and ship); the
trainer converts them. Conventions: OpenCV camera axes, ``world_from_cam`` in one common frame for both videos,
intrinsics in pixels of these frames with pixel centres at +0.5.

numpy (+ PIL for resizing) and :func:`cvd.geometry.invert_rigid`; must never import ``cvd_scene``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from cvd.geometry import invert_rigid

__all__ = ["PairSample", "crop_intrinsics", "flip_pair", "fold_clip", "resize_cover_crop", "swap_pair"]


@dataclass
class PairSample:
    """Two videos of one training pair."""

    frames: np.ndarray
    """[2, F, H, W, 3] uint8."""
    caption: str
    """What the videos show, in words ("" when unknown)."""
    kind: Literal["posed", "homography"]
    """``posed``: true cameras (``K``, ``world_from_cam``); ``homography``: a warped copy (``homography``)."""
    K: np.ndarray | None = None
    """posed: [2, F, 3, 3] float64 intrinsics in pixels of ``frames``."""
    world_from_cam: np.ndarray | None = None
    """posed: [2, F, 4, 4] float64 camera-to-world, OpenCV axes, one frame common to both videos (any scale)."""
    homography: np.ndarray | None = None
    """homography: [2, F, 3, 3] float64; ``homography[v, f]`` maps pixels of video v's frame f to pixels of the
    other video's frame f (so ``homography[1] = inv(homography[0])``)."""
    valid: np.ndarray | None = None
    """[2, F, H, W] bool: pixels that carry image content (False where the warped copy has none); None: all."""
    keys: tuple[str | None, str | None] = (None, None)
    """A stable name of each video's unwarped frames (for memoising their latents), None when not reusable."""

    def __post_init__(self) -> None:
        f = self.frames
        if f.ndim != 5 or f.shape[0] != 2 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [2, F, H, W, 3], got {f.dtype} {f.shape}")
        n = f.shape[1]
        if self.kind == "posed":
            if self.K is None or self.world_from_cam is None:
                raise ValueError("a posed pair needs K and world_from_cam")
            if self.K.shape != (2, n, 3, 3) or self.world_from_cam.shape != (2, n, 4, 4):
                raise ValueError(f"posed pair: K must be [2, {n}, 3, 3] and world_from_cam [2, {n}, 4, 4], got "
                                 f"{self.K.shape} {self.world_from_cam.shape}")
        elif self.kind == "homography":
            if self.homography is None or self.homography.shape != (2, n, 3, 3):
                raise ValueError(f"a homography pair needs homography [2, {n}, 3, 3], got "
                                 f"{None if self.homography is None else self.homography.shape}")
        else:
            raise ValueError(f"kind must be 'posed' or 'homography', got {self.kind!r}")
        if self.valid is not None and self.valid.shape != f.shape[:4]:
            raise ValueError(f"valid must be [2, F, H, W] = {f.shape[:4]}, got {self.valid.shape}")

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.frames.shape[2], self.frames.shape[3]


def crop_intrinsics(K: np.ndarray, scale: float, offset_xy: tuple[float, float]) -> np.ndarray:
    """[..., 3, 3] intrinsics of an image resized by ``scale`` then cropped at ``offset_xy`` (pixels of the
    resized image). With pixel centres at +0.5 a continuous pixel coordinate scales as ``x' = s·x - offset``."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 0] *= scale
    K[..., 1, 1] *= scale
    K[..., 0, 1] *= scale
    K[..., 0, 2] = K[..., 0, 2] * scale - offset_xy[0]
    K[..., 1, 2] = K[..., 1, 2] * scale - offset_xy[1]
    return K


def resize_cover_crop(
    frames: np.ndarray,  # [N, h, w, 3] uint8
    height: int,
    width: int,
) -> tuple[np.ndarray, float, tuple[float, float]]:  # [N, height, width, 3], scale, crop offset (x, y)
    """Resize so the image covers ``height x width`` (the short side fits), then centre-crop. Returns the frames,
    the scale and the crop offset in pixels of the resized image (for :func:`crop_intrinsics`)."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [N, h, w, 3], got {frames.shape}")
    n, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    # The exact scale per axis differs from `scale` by the rounding; use the horizontal one (square pixels).
    scale = rw / w
    ox, oy = (rw - width) // 2, (rh - height) // 2
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        img = Image.fromarray(frames[i])
        if (rw, rh) != (w, h):
            img = img.resize((rw, rh), Image.BICUBIC if scale > 1 else Image.LANCZOS)
        out[i] = np.asarray(img)[oy : oy + height, ox : ox + width]
    return out, scale, (float(ox), float(oy))


_MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])


def flip_pair(sample: PairSample) -> PairSample:
    """The pair mirrored left-right: images flipped, ``cx -> W - cx``, poses conjugated by the mirror
    ``diag(-1, 1, 1, 1)`` (world and camera x flipped together: still rotations), homographies conjugated by the
    pixel mirror ``x -> W - x``. Every correspondence of the pair is kept."""
    W = sample.image_hw[1]
    frames = np.ascontiguousarray(sample.frames[:, :, :, ::-1])
    valid = None if sample.valid is None else np.ascontiguousarray(sample.valid[:, :, :, ::-1])
    K = world_from_cam = hom = None
    if sample.K is not None:
        K = sample.K.copy()
        K[..., 0, 2] = W - K[..., 0, 2]
        K[..., 0, 1] = -K[..., 0, 1]
    if sample.world_from_cam is not None:
        world_from_cam = _MIRROR @ sample.world_from_cam @ _MIRROR
    if sample.homography is not None:
        m = np.array([[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # its own inverse
        hom = m @ sample.homography @ m
    keys = tuple(None if k is None else f"{k}|flip" for k in sample.keys)
    return replace(sample, frames=frames, valid=valid, K=K, world_from_cam=world_from_cam, homography=hom, keys=keys)


def swap_pair(sample: PairSample) -> PairSample:
    """The pair with its two videos swapped."""
    def sw(x):
        return None if x is None else np.ascontiguousarray(x[::-1])

    return replace(sample, frames=sw(sample.frames), valid=sw(sample.valid), K=sw(sample.K),
                   world_from_cam=sw(sample.world_from_cam), homography=sw(sample.homography),
                   keys=(sample.keys[1], sample.keys[0]))


def fold_clip(
    frames: np.ndarray,  # [2F-1, H, W, 3]
    world_from_cam: np.ndarray,  # [2F-1, 4, 4]
    K: np.ndarray,  # [2F-1, 3, 3]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [2, F, H, W, 3], [2, F, 4, 4], [2, F, 3, 3]
    """Fold a clip of ``2F-1`` frames into two videos that share their first frame (the paper's RealEstate10K
    pairs): with ``m = F-1`` the middle index, video A is frames ``m, m-1, ..., 0`` and video B frames
    ``m, m+1, ..., 2m``; poses are made relative to the middle frame (both videos start at the identity)."""
    n = frames.shape[0]
    if n % 2 != 1 or n < 1:
        raise ValueError(f"folding needs an odd number of frames (2F-1), got {n}")
    if world_from_cam.shape != (n, 4, 4) or K.shape != (n, 3, 3):
        raise ValueError(f"world_from_cam must be [{n}, 4, 4] and K [{n}, 3, 3], got {world_from_cam.shape} {K.shape}")
    m = n // 2
    a = np.arange(m, -1, -1)  # m ... 0
    b = np.arange(m, n)  # m ... 2m
    rel = invert_rigid(world_from_cam[m]) @ world_from_cam  # [2F-1, 4, 4] relative to the middle frame
    idx = np.stack([a, b])  # [2, F]
    return frames[idx], rel[idx], np.asarray(K, np.float64)[idx]
