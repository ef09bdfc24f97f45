"""A compact file of pre-rendered multi-view clips for training where the renderer is not installed (GPU
machines without open3d).

One ``.npz`` (no pickled objects) holds ``N`` clips of ``V`` videos x ``F`` frames that all start at one common
camera: frames as uint8 (``raw``) or as JPEG bytes (``jpeg``, about 10x smaller), ``world_from_cam``
``[N, V, F, 4, 4]`` (OpenCV axes, one world frame per clip, metres), ``K`` ``[N, V, F, 3, 3]`` (pixels, centres
at +0.5), one caption per clip and a JSON ``meta`` mapping (sizes, how the clips were made).

numpy and PIL; must never import ``cvd_scene``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CACHE_FORMAT", "Clip", "ClipCache", "write_clip_cache"]

CACHE_FORMAT = "cvd-scene/clip-cache"
CACHE_VERSION = 1


@dataclass
class Clip:
    """One multi-view clip: ``V`` videos that start at one common camera."""

    frames: np.ndarray
    """[V, F, H, W, 3] uint8."""
    world_from_cam: np.ndarray
    """[V, F, 4, 4] float64, OpenCV axes, metres, one world frame for the clip."""
    K: np.ndarray
    """[V, F, 3, 3] float64 intrinsics in pixels."""
    caption: str
    """What the clip shows, in words."""


def write_clip_cache(
    path: str | os.PathLike,
    clips: Sequence[Clip],
    *,
    codec: str = "jpeg",
    jpeg_quality: int = 90,
    meta: dict | None = None,
) -> Path:
    """Write ``clips`` (same V, F, H, W) to one ``.npz`` file, atomically. ``codec``: ``raw`` (uint8, lossless)
    or ``jpeg`` (``jpeg_quality``)."""
    from PIL import Image

    if not clips:
        raise ValueError("no clips to write")
    if codec not in ("raw", "jpeg"):
        raise ValueError(f"codec must be 'raw' or 'jpeg', got {codec!r}")
    shape = clips[0].frames.shape
    for i, c in enumerate(clips):
        if c.frames.shape != shape or c.frames.dtype != np.uint8:
            raise ValueError(f"clip {i} has frames {c.frames.dtype} {c.frames.shape}, clip 0 has uint8 {shape}")
        if c.world_from_cam.shape != shape[:2] + (4, 4) or c.K.shape != shape[:2] + (3, 3):
            raise ValueError(f"clip {i}: world_from_cam must be {shape[:2] + (4, 4)} and K {shape[:2] + (3, 3)}")
    V, F, H, W, _ = shape
    arrays = {
        "format": np.array(CACHE_FORMAT),
        "version": np.array(CACHE_VERSION),
        "codec": np.array(codec),
        "world_from_cam": np.stack([c.world_from_cam for c in clips]).astype(np.float64),
        "K": np.stack([c.K for c in clips]).astype(np.float64),
        "captions": np.array([c.caption for c in clips], dtype=str),
        "meta": np.array(json.dumps({**(meta or {}), "videos": V, "frames": F, "height": H, "width": W})),
    }
    if codec == "raw":
        arrays["frames"] = np.stack([c.frames for c in clips])
    else:
        chunks, offsets = [], [0]
        for c in clips:
            for img in c.frames.reshape(-1, H, W, 3):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=int(jpeg_quality))  # 4:2:0 chroma
                chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
                offsets.append(offsets[-1] + len(chunks[-1]))
        arrays["jpeg_bytes"] = np.concatenate(chunks)
        arrays["jpeg_offsets"] = np.asarray(offsets, np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class ClipCache:
    """Read access to a clip cache file (everything is loaded into memory; JPEG frames decode on access)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"clip cache {path} does not exist (make one with `cvd-scene prerender`)")
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"]) if "format" in z else None
            if fmt != CACHE_FORMAT:
                raise ValueError(f"{path} is not a clip cache (format {fmt!r}, expected {CACHE_FORMAT!r})")
            if int(z["version"]) != CACHE_VERSION:
                raise ValueError(f"{path}: clip cache version {int(z['version'])}, this code reads {CACHE_VERSION}")
            self.codec = str(z["codec"])
            self.world_from_cam = z["world_from_cam"]  # [N, V, F, 4, 4]
            self.K = z["K"]  # [N, V, F, 3, 3]
            self.captions = [str(c) for c in z["captions"]]
            self.meta = json.loads(str(z["meta"]))
            if self.codec == "raw":
                self._frames = z["frames"]  # [N, V, F, H, W, 3]
            else:
                self._bytes = z["jpeg_bytes"]
                self._offsets = z["jpeg_offsets"]
        self.path = path
        self.num_clips, self.num_videos, self.num_frames = self.world_from_cam.shape[:3]
        self.height, self.width = int(self.meta["height"]), int(self.meta["width"])

    def __len__(self) -> int:
        return self.num_clips

    def video(self, clip: int, video: int) -> np.ndarray:  # [F, H, W, 3] uint8
        """The frames of one video of one clip."""
        if not (0 <= clip < self.num_clips and 0 <= video < self.num_videos):
            raise IndexError(f"clip {clip}, video {video} outside the cache ({self.num_clips} x {self.num_videos})")
        if self.codec == "raw":
            return self._frames[clip, video]
        from PIL import Image

        first = (clip * self.num_videos + video) * self.num_frames
        out = np.empty((self.num_frames, self.height, self.width, 3), np.uint8)
        for f in range(self.num_frames):
            a, b = self._offsets[first + f], self._offsets[first + f + 1]
            out[f] = np.asarray(Image.open(io.BytesIO(self._bytes[a:b].tobytes())).convert("RGB"))
        return out

    def clip(self, index: int) -> Clip:
        """One whole clip."""
        frames = np.stack([self.video(index, v) for v in range(self.num_videos)])
        return Clip(frames=frames, world_from_cam=self.world_from_cam[index].copy(), K=self.K[index].copy(),
                    caption=self.captions[index])
