"""Training pairs from local data in common layouts, and the mixing sampler.

Sources (each draws a :class:`~cvd.training.samples.PairSample` from a numpy ``Generator``, so a data stream is a
pure function of its seed and step and resuming needs no sampler state):

* :class:`Re10kPairs` -- RealEstate10K-style clips (a pose file per clip plus its frames folder or video) folded
  into pairs that share their first frame: ``2F-1`` consecutive frames, poses relative to the middle frame,
  A = frames ``m..0``, B = frames ``m..2m`` (31 frames -> 16 + 16 with the paper's F = 16).
* :class:`CachedPairs` -- two videos of a clip of a :class:`~cvd.training.cache.ClipCache`.
* :class:`HomographyPairs` over a video source (:class:`MonocularVideos`: a folder of mp4 files or frame folders;
  :class:`CachedVideos`: single videos of a clip cache): the video and its copy warped by a per-frame homography
  growing linearly from identity, with the pixel validity of the warped copy.
* :class:`MixedPairs` -- picks posed or homography sources with a configured ratio (about 7:3 in the paper),
  then a source by weight.

:class:`PairStream` turns a mixed source into micro-batches for step ``s`` of process ``rank``.

numpy, torch (warping, the stream), PIL and imageio (reading); must never import ``cvd_scene``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cvd.geometry import invert_rigid
from cvd.training.cache import ClipCache
from cvd.training.config import HomographyWarpConfig
from cvd.training.homography import homography_sequence, sample_params, warp_frames
from cvd.training.samples import (
    PairSample,
    crop_intrinsics,
    flip_pair,
    fold_clip,
    resize_cover_crop,
    swap_pair,
)

log = logging.getLogger(__name__)

__all__ = [
    "CachedPairs",
    "CachedVideos",
    "HomographyPairs",
    "MixedPairs",
    "MonocularVideos",
    "PairSource",
    "PairStream",
    "Re10kPairs",
    "VideoSource",
    "collate_pairs",
    "fit_clip_size",
    "parse_re10k_pose_file",
]

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_VIDEO_EXT = (".mp4", ".mov", ".webm", ".mkv", ".avi")


class PairSource(Protocol):
    """Anything that draws training pairs."""

    def draw(self, rng: np.random.Generator) -> PairSample: ...

    def captions(self) -> list[str]: ...


class VideoSource(Protocol):
    """Anything that draws single videos: ``(frames [F, H, W, 3] uint8, caption, key or None)``."""

    def video(self, rng: np.random.Generator) -> tuple[np.ndarray, str, str | None]: ...

    def captions(self) -> list[str]: ...


def fit_clip_size(
    frames: np.ndarray,  # [..., h, w, 3] uint8
    K: np.ndarray | None,  # [..., 3, 3] or None
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames resized to cover ``height x width`` and centre-cropped, with the intrinsics adjusted the same way
    (unchanged when the size already matches)."""
    lead = frames.shape[:-3]
    h, w = frames.shape[-3:-1]
    if (h, w) == (height, width):
        return frames, K
    flat, scale, off = resize_cover_crop(frames.reshape(-1, h, w, 3), height, width)
    return flat.reshape(*lead, height, width, 3), None if K is None else crop_intrinsics(K, scale, off)


# --------------------------------------------------------------------------------------------- RE10K


def parse_re10k_pose_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A RealEstate10K/CameraCtrl pose file: ``(timestamps_us [N], intrinsics_norm [N, 4] = fx, fy, cx, cy
    normalised by the source width/height, world_from_cam [N, 4, 4])`` (the file stores world-to-camera)."""
    path = Path(path)
    ts, intr, world_from_cam = [], [], []
    for lineno, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 19:
            raise ValueError(f"{path}:{lineno}: expected 19 numbers per pose line, got {len(parts)}")
        vals = np.array([float(p) for p in parts])
        if not np.all(np.isfinite(vals)) or vals[1] <= 0 or vals[2] <= 0:
            raise ValueError(f"{path}:{lineno}: non-finite numbers or non-positive focal lengths")
        w2c = np.eye(4)
        w2c[:3, :4] = vals[7:19].reshape(3, 4)
        u, _, vt = np.linalg.svd(w2c[:3, :3])  # re-orthonormalise the 9-decimal rotation
        w2c[:3, :3] = u @ vt
        ts.append(int(vals[0]))
        intr.append(vals[1:5])
        world_from_cam.append(invert_rigid(w2c))
    if not ts:
        raise ValueError(f"{path}: no pose lines after the URL line")
    return np.asarray(ts, np.int64), np.asarray(intr), np.asarray(world_from_cam)


def _find_frames(root: Path, clip_id: str) -> Path | None:
    for folder in (root / clip_id, root / "frames" / clip_id, root / "video_clips" / clip_id, root / "videos" / clip_id):
        if folder.is_dir():
            return folder
    for d in (root, root / "videos", root / "video_clips"):
        for ext in _VIDEO_EXT:
            if (d / f"{clip_id}{ext}").is_file():
                return d / f"{clip_id}{ext}"
    return None


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT), key=_natural_key)


def _read_images(paths: Sequence[Path]) -> np.ndarray:  # [N, h, w, 3] uint8
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _read_video(path: Path, indices: Sequence[int] | None = None) -> np.ndarray:  # [N, h, w, 3] uint8
    import imageio.v3 as iio

    frames = iio.imread(path, plugin="pyav") if _has_pyav() else iio.imread(path)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    frames = frames[..., :3]
    return frames if indices is None else frames[np.asarray(indices)]


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _count_video_frames(path: Path) -> int:
    import imageio.v3 as iio

    try:
        props = iio.improps(path)
        n = float(props.shape[0]) if props.shape else 0.0
        if 0 < n < float("inf"):
            return int(n)
    except (OSError, ValueError, RuntimeError):
        pass
    return len(_read_video(path))  # the ffmpeg reader does not know the count: decode once


class Re10kPairs:
    """RealEstate10K-style clips folded into pairs (see the module docstring).

    Layout: pose files ``<id>.txt`` in ``root`` or ``root/pose_files/``; the frames of clip ``<id>`` in a folder
    ``root/<id>/`` (or ``frames/``, ``video_clips/``, ``videos/`` below root), one image per pose line in name
    order, or a video ``<id>.mp4`` there. Captions: ``root/captions.json`` (``{id: caption}``) when present.
    Clips shorter than ``stride * (2F-2) + 1`` frames are skipped (counted in the log).
    """

    def __init__(self, root: str | os.PathLike, num_frames: int, height: int, width: int, *, frame_stride: int = 1,
                 units_per_pose_unit: float = 1.0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"RealEstate10K folder {self.root} does not exist")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.stride = frame_stride
        self.scale = units_per_pose_unit
        pose_dir = self.root / "pose_files" if (self.root / "pose_files").is_dir() else self.root
        captions = _read_captions(self.root)
        need = frame_stride * (2 * num_frames - 2) + 1
        self.clips: list[tuple[str, Path, Path]] = []
        self._captions = captions
        self._parsed: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        short = missing = 0
        for pose in sorted(pose_dir.glob("*.txt")):
            frames = _find_frames(self.root, pose.stem)
            if frames is None:
                missing += 1
                continue
            n = sum(1 for line in pose.read_text().splitlines()[1:] if line.strip())
            if n < need:
                short += 1
                continue
            self.clips.append((pose.stem, pose, frames))
        if not self.clips:
            raise ValueError(
                f"no usable RealEstate10K clips in {self.root}: {missing} pose files without frames, {short} shorter "
                f"than {need} frames (pose files: {pose_dir}/*.txt; frames: <root>/<id>/ or <root>/<id>.mp4)"
            )
        if missing or short:
            log.info("%s: %d clips, skipped %d without frames and %d too short", self.root, len(self.clips), missing, short)

    def __len__(self) -> int:
        return len(self.clips)

    def captions(self) -> list[str]:
        return list(self._captions.values())

    def load_pair(self, index: int, start: int) -> PairSample:
        """The folded pair of clip ``index`` starting at pose line ``start``."""
        clip_id, pose_path, frames_path = self.clips[index]
        _, intr, world_from_cam = self._poses(index)
        idx = start + self.stride * np.arange(2 * self.num_frames - 1)
        if idx[-1] >= len(world_from_cam):
            raise IndexError(f"{clip_id}: window {start}..{idx[-1]} beyond its {len(world_from_cam)} poses")
        if frames_path.is_dir():
            images = _list_images(frames_path)
            if len(images) != len(world_from_cam):
                raise ValueError(f"{frames_path}: {len(images)} images for {len(world_from_cam)} pose lines in {pose_path}")
            frames = _read_images([images[i] for i in idx])
        else:
            frames = _read_video(frames_path, idx)
        h, w = frames.shape[1:3]
        n = intr[idx]  # [2F-1, 4] normalised
        K = np.zeros((len(idx), 3, 3))
        K[:, 0, 0], K[:, 1, 1] = n[:, 0] * w, n[:, 1] * h
        K[:, 0, 2], K[:, 1, 2] = n[:, 2] * w, n[:, 3] * h
        K[:, 2, 2] = 1.0
        poses = world_from_cam[idx].copy()
        poses[:, :3, 3] *= self.scale
        frames, K = fit_clip_size(frames, K, self.height, self.width)
        f2, p2, k2 = fold_clip(frames, poses, K)
        key = f"re10k:{clip_id}:{start}"
        return PairSample(frames=f2, caption=self._captions.get(clip_id, ""), kind="posed", K=k2, world_from_cam=p2,
                          keys=(f"{key}:A", f"{key}:B"))

    def _poses(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if index not in self._parsed:
            self._parsed[index] = parse_re10k_pose_file(self.clips[index][1])
        return self._parsed[index]

    def draw(self, rng: np.random.Generator) -> PairSample:
        index = int(rng.integers(len(self.clips)))
        n = len(self._poses(index)[0])
        last = n - self.stride * (2 * self.num_frames - 2)
        return self.load_pair(index, int(rng.integers(last)))


def _read_captions(root: Path) -> dict[str, str]:
    path = root / "captions.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"{path} must map clip ids to captions, got a {type(data).__name__}")
    return {str(k): str(v) for k, v in data.items()}


# ---------------------------------------------------------------------------------------- clip cache


def _cache_key(cache: ClipCache) -> str:
    return hashlib.sha1(str(cache.path.resolve()).encode()).hexdigest()[:8]


class CachedPairs:
    """Ordered pairs of distinct videos of the clips of a clip cache (all videos of a clip share frame 0).

    Frames are resized/cropped to the training size when the cache differs; the first ``num_frames`` frames are
    used."""

    def __init__(self, cache: ClipCache, num_frames: int, height: int, width: int) -> None:
        if cache.num_videos < 2:
            raise ValueError(f"{cache.path}: posed pairs need clips of at least 2 videos, it has {cache.num_videos}")
        if cache.num_frames < num_frames:
            raise ValueError(f"{cache.path}: clips have {cache.num_frames} frames, training needs {num_frames}")
        self.cache, self.num_frames, self.height, self.width = cache, num_frames, height, width
        self._key = _cache_key(cache)

    def __len__(self) -> int:
        return self.cache.num_clips * self.cache.num_videos * (self.cache.num_videos - 1)

    def captions(self) -> list[str]:
        return list(self.cache.captions)

    def pair(self, clip: int, a: int, b: int) -> PairSample:
        """Videos ``a`` and ``b`` of clip ``clip``."""
        c, n = self.cache, self.num_frames
        frames = np.stack([c.video(clip, a)[:n], c.video(clip, b)[:n]])
        K = c.K[clip, [a, b], :n]
        frames, K = fit_clip_size(frames, K, self.height, self.width)
        return PairSample(
            frames=frames, caption=c.captions[clip], kind="posed", K=K,
            world_from_cam=c.world_from_cam[clip, [a, b], :n].copy(),
            keys=(f"cache:{self._key}:{clip}:{a}", f"cache:{self._key}:{clip}:{b}"),
        )

    def draw(self, rng: np.random.Generator) -> PairSample:
        clip = int(rng.integers(self.cache.num_clips))
        a, b = rng.choice(self.cache.num_videos, size=2, replace=False)
        return self.pair(clip, int(a), int(b))


class CachedVideos:
    """Single videos of a clip cache (a source for homography pairs)."""

    def __init__(self, cache: ClipCache, num_frames: int, height: int, width: int) -> None:
        if cache.num_frames < num_frames:
            raise ValueError(f"{cache.path}: clips have {cache.num_frames} frames, training needs {num_frames}")
        self.cache, self.num_frames, self.height, self.width = cache, num_frames, height, width
        self._key = _cache_key(cache)

    def captions(self) -> list[str]:
        return list(self.cache.captions)

    def video(self, rng: np.random.Generator) -> tuple[np.ndarray, str, str | None]:
        clip = int(rng.integers(self.cache.num_clips))
        v = int(rng.integers(self.cache.num_videos))
        frames, _ = fit_clip_size(self.cache.video(clip, v)[: self.num_frames], None, self.height, self.width)
        return frames, self.cache.captions[clip], f"cache:{self._key}:{clip}:{v}"


# ----------------------------------------------------------------------------------- monocular videos


class MonocularVideos:
    """A folder of monocular videos (``*.mp4`` etc. via imageio) and/or frame folders (one image per frame in
    name order), searched recursively. Captions: ``captions.json`` (``{name: caption}``, name = file stem or
    folder name) or a ``<name>.txt`` file beside the video; "" otherwise."""

    def __init__(self, root: str | os.PathLike, num_frames: int, height: int, width: int, *, frame_stride: int = 1) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder {self.root} does not exist")
        self.num_frames, self.height, self.width, self.stride = num_frames, height, width, frame_stride
        self._captions = _read_captions(self.root)
        need = frame_stride * (num_frames - 1) + 1
        self.items: list[tuple[str, Path, int]] = []
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and p.suffix.lower() in _VIDEO_EXT:
                self.items.append((p.stem, p, 0))
            elif p.is_dir():
                imgs = [q for q in p.iterdir() if q.suffix.lower() in _IMAGE_EXT]
                if len(imgs) >= need:
                    self.items.append((p.name, p, len(imgs)))
        if not self.items:
            raise ValueError(f"no videos (mp4/mov/webm/mkv/avi) or frame folders of >= {need} images in {self.root}")
        self._lengths: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def captions(self) -> list[str]:
        out = list(self._captions.values())
        for name, path, _ in self.items:
            side = path.with_suffix(".txt") if path.is_file() else path.parent / f"{name}.txt"
            if side.is_file():
                out.append(side.read_text().strip())
        return out

    def _caption(self, name: str, path: Path) -> str:
        if name in self._captions:
            return self._captions[name]
        side = path.with_suffix(".txt") if path.is_file() else path.parent / f"{name}.txt"
        return side.read_text().strip() if side.is_file() else ""

    def video(self, rng: np.random.Generator) -> tuple[np.ndarray, str, str | None]:
        i = int(rng.integers(len(self.items)))
        name, path, n = self.items[i]
        need = self.stride * (self.num_frames - 1) + 1
        if path.is_file():
            if i not in self._lengths:
                self._lengths[i] = _count_video_frames(path)
            n = self._lengths[i]
            if n < need:
                raise ValueError(f"{path}: {n} frames, need {need} (num_frames={self.num_frames}, stride {self.stride})")
        start = int(rng.integers(n - need + 1))
        idx = start + self.stride * np.arange(self.num_frames)
        frames = _read_video(path, idx) if path.is_file() else _read_images([_list_images(path)[j] for j in idx])
        frames, _ = fit_clip_size(frames, None, self.height, self.width)
        return frames, self._caption(name, path), f"video:{name}:{start}"


class HomographyPairs:
    """A video and its copy warped by a homography growing linearly from identity (pseudo pairs).

    Video A is the source, video B the warp; ``homography[0, f]`` maps A's pixels to B's, ``homography[1, f]``
    is its inverse. ``valid`` is False where B has no source pixel (A is valid everywhere)."""

    def __init__(self, videos: VideoSource, warp: HomographyWarpConfig) -> None:
        self.videos, self.warp = videos, warp

    def captions(self) -> list[str]:
        return self.videos.captions()

    def draw(self, rng: np.random.Generator) -> PairSample:
        frames, caption, key = self.videos.video(rng)  # [F, H, W, 3]
        n, h, w, _ = frames.shape
        H = homography_sequence(sample_params(rng, self.warp), n, h, w)  # [F, 3, 3]
        src = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [F, 3, H, W]
        warped, valid = warp_frames(src, torch.from_numpy(H))
        b = warped.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [F, H, W, 3]
        valid_np = np.stack([np.ones((n, h, w), bool), valid.numpy()])
        return PairSample(
            frames=np.stack([frames, b]), caption=caption, kind="homography",
            homography=np.stack([H, np.linalg.inv(H)]), valid=valid_np, keys=(key, None),
        )


# ------------------------------------------------------------------------------------------------ mix


class MixedPairs:
    """Posed and homography sources mixed: a draw is posed with probability ``posed_fraction`` (1 or 0 when
    one side has no source), then a source of that side is picked by weight."""

    def __init__(
        self,
        posed: Sequence[tuple[PairSource, float]] = (),
        homography: Sequence[tuple[PairSource, float]] = (),
        posed_fraction: float = 0.7,
    ) -> None:
        if not posed and not homography:
            raise ValueError("no training data: give at least one posed or homography source")
        self.posed, self.homography = list(posed), list(homography)
        self.posed_fraction = 1.0 if not homography else 0.0 if not posed else float(posed_fraction)

    def captions(self) -> list[str]:
        return [c for s, _ in self.posed + self.homography for c in s.captions()]

    def pick(self, rng: np.random.Generator) -> tuple[str, PairSource]:
        """The side (``posed``/``homography``) and source of one micro-batch."""
        side = "posed" if rng.random() < self.posed_fraction else "homography"
        sources = self.posed if side == "posed" else self.homography
        w = np.array([wt for _, wt in sources], np.float64)
        return side, sources[int(rng.choice(len(sources), p=w / w.sum()))][0]

    def draw(self, rng: np.random.Generator) -> PairSample:
        return self.pick(rng)[1].draw(rng)


class PairStream(torch.utils.data.IterableDataset):
    """Micro-batches ``start_step, start_step+1, ...`` of one process: batch ``s`` is drawn from
    ``default_rng([seed, rank, s])`` (one side for the whole micro-batch, then ``batch_pairs`` pairs from its
    sources), flipped and swapped at random. Worker ``w`` of ``n`` produces the batches ``s = w (mod n)``; the
    DataLoader returns them in order."""

    def __init__(self, source: MixedPairs, *, batch_pairs: int, seed: int, rank: int = 0, start_step: int = 0,
                 flip: bool = True, swap: bool = True) -> None:
        super().__init__()
        self.source, self.batch_pairs, self.seed, self.rank = source, batch_pairs, seed, rank
        self.start_step, self.flip, self.swap = start_step, flip, swap

    def batch(self, step: int) -> dict:
        """Micro-batch ``step`` (a collated dict, see :func:`collate_pairs`)."""
        rng = np.random.default_rng([self.seed, self.rank, step])
        _, src = self.source.pick(rng)
        pairs = []
        for _ in range(self.batch_pairs):
            p = src.draw(rng)
            if self.flip and rng.random() < 0.5:
                p = flip_pair(p)
            if self.swap and rng.random() < 0.5:
                p = swap_pair(p)
            pairs.append(p)
        out = collate_pairs(pairs)
        out["step"] = step
        return out

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start_step + wid
        while True:
            yield self.batch(step)
            step += n


def collate_pairs(pairs: Sequence[PairSample]) -> dict:
    """Stack pairs of one kind: ``frames`` uint8 [B, 2, F, H, W, 3]; ``kind``; posed: ``K`` [B, 2, F, 3, 3] and
    ``world_from_cam`` [B, 2, F, 4, 4]; homography: ``homography`` [B, 2, F, 3, 3]; ``valid`` bool
    [B, 2, F, H, W]; ``captions`` (B strings); ``keys`` (2B names or None)."""
    kinds = {p.kind for p in pairs}
    if len(kinds) != 1:
        raise ValueError(f"a micro-batch must hold one kind of pair, got {sorted(kinds)}")
    kind = kinds.pop()
    sizes = {p.frames.shape for p in pairs}
    if len(sizes) != 1:
        raise ValueError(f"pairs of one micro-batch differ in size: {sorted(sizes)}")
    frames = np.stack([p.frames for p in pairs])
    valid = np.stack([np.ones(p.frames.shape[:4], bool) if p.valid is None else p.valid for p in pairs])
    out = {
        "kind": kind,
        "frames": torch.from_numpy(frames),
        "valid": torch.from_numpy(valid),
        "captions": [p.caption for p in pairs],
        "keys": [k for p in pairs for k in p.keys],
    }
    if kind == "posed":
        out["K"] = torch.from_numpy(np.stack([p.K for p in pairs]))
        out["world_from_cam"] = torch.from_numpy(np.stack([p.world_from_cam for p in pairs]))
    else:
        out["homography"] = torch.from_numpy(np.stack([p.homography for p in pairs]))
    return out


def replace_caption(sample: PairSample, caption: str) -> PairSample:
    """The sample with another caption."""
    return replace(sample, caption=caption)
