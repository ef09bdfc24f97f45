"""Frames on disk: PNG folders, browser-playable MP4s and labelled contact sheets.

Both generators (the reference renderer and the CVD model) write their videos through these functions, so the
``generate/`` folder looks the same whichever made it. Frames are ``[V, F, H, W, 3]`` float in [0, 1] in memory
and ``<folder>/<vid>/<NNNN>.png`` (8-bit RGB) on disk. numpy, imageio (+ imageio-ffmpeg) and Pillow; must not
import torch.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvd_scene.paths import check_id, join_inside
from cvd_scene.runfolder import frame_file

log = logging.getLogger(__name__)


def _check_frames(frames: np.ndarray, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != ndim or arr.shape[-1] != 3:
        want = "[V, F, H, W, 3]" if ndim == 5 else "[F, H, W, 3]"
        raise ValueError(f"{what} must be {want}, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    return arr


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (any shape) -> uint8, rounded; uint8 input is returned as is."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"images must be float in [0, 1] or uint8, got dtype {a.dtype}")
    return (np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def frame_path(folder: str | os.PathLike, video_id: str, index: int) -> Path:
    """``<folder>/<vid>/<NNNN>.png``; refused (``UnsafePathError``) for an id that would leave ``folder``."""
    return frame_file(folder, video_id, index)


class ImageFileError(ValueError):
    """An image file that cannot be decoded; the message names it."""


def check_image(path: str | os.PathLike) -> None:
    """Decode the image at ``path`` once; a truncated or corrupt file raises :class:`ImageFileError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ImageFileError(f"{path}: cannot be read as an image, truncated or corrupt ({e})") from None


def write_frames(frames: np.ndarray, folder: str | os.PathLike, video_ids: Sequence[str]) -> list[Path]:
    """Write ``frames`` [V, F, H, W, 3] (float in [0, 1] or uint8) as ``<folder>/<vid>/<NNNN>.png``; returns the
    paths written."""
    import imageio.v3 as iio

    arr = _check_frames(frames, 5, "frames")
    if len(video_ids) != arr.shape[0]:
        raise ValueError(f"got {len(video_ids)} video ids for {arr.shape[0]} videos: {list(video_ids)}")
    paths = []
    for v, vid in enumerate(video_ids):
        join_inside(folder, check_id(vid)).mkdir(parents=True, exist_ok=True)
        for f in range(arr.shape[1]):
            p = frame_path(folder, vid, f)
            iio.imwrite(p, to_uint8(arr[v, f]))
            paths.append(p)
    return paths


def read_frames(folder: str | os.PathLike, video_ids: Sequence[str], num_frames: int) -> np.ndarray:
    """Read ``<folder>/<vid>/<NNNN>.png`` for every video and frame index -> [V, F, H, W, 3] float32 in [0, 1]."""
    import imageio.v3 as iio

    out = None
    for v, vid in enumerate(video_ids):
        for f in range(num_frames):
            p = frame_path(folder, vid, f)
            if not p.is_file():
                raise FileNotFoundError(f"missing frame {p} (expected {num_frames} frames per video)")
            try:
                img = np.asarray(iio.imread(p))
            except (OSError, ValueError, SyntaxError) as e:
                raise ImageFileError(f"{p}: cannot be read as an image, truncated or corrupt ({e})") from None
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=-1)
            img = img[..., :3]
            if out is None:
                out = np.empty((len(video_ids), num_frames) + img.shape, np.float32)
            elif img.shape != out.shape[2:]:
                raise ValueError(
                    f"{p} is {img.shape[1]}x{img.shape[0]}, earlier frames are {out.shape[3]}x{out.shape[2]}"
                )
            out[v, f] = img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    if out is None:
        raise ValueError(f"nothing to read: {len(video_ids)} videos x {num_frames} frames")
    return out


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float = 8.0, quality_crf: int = 18) -> Path:
    """Write ``frames`` [F, H, W, 3] as an H.264 (yuv420p) MP4 that browsers play; odd sizes are padded by
    repeating the last row/column (yuv420p needs even sizes)."""
    import imageio_ffmpeg

    arr = to_uint8(_check_frames(frames, 4, "frames"))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    H, W = arr.shape[1:3]
    pad_h, pad_w = H % 2, W % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (W + pad_w, H + pad_h),
        fps=float(fps),
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-crf", str(int(quality_crf)), "-movflags", "+faststart", "-preset", "medium"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in arr:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode an MP4 -> [F, H, W, 3] uint8 (for checks and tests)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    W, H = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(H, W, 3) for b in reader]
    return np.stack(frames) if frames else np.zeros((0, H, W, 3), np.uint8)


def contact_sheet(
    frames: np.ndarray,
    path: str | os.PathLike | None = None,
    max_frames: int = 8,
    video_ids: Sequence[str] | None = None,
    max_width_px: int = 2048,
) -> np.ndarray:
    """A labelled grid of ``frames`` [V, F, H, W, 3]: one row per video, up to ``max_frames`` evenly spaced frame
    columns, the video id left of each row and the frame index above each column.

    Tiles are shrunk so the sheet is at most ``max_width_px`` wide. Writes a PNG to ``path`` when given and
    returns the sheet [h, w, 3] uint8.
    """
    from PIL import Image, ImageDraw, ImageFont

    arr = to_uint8(_check_frames(frames, 5, "frames"))
    V, F, H, W, _ = arr.shape
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    ids = list(video_ids) if video_ids is not None else [f"v{i:02d}" for i in range(V)]
    if len(ids) != V:
        raise ValueError(f"got {len(ids)} video ids for {V} videos")
    cols = np.unique(np.round(np.linspace(0, F - 1, min(F, max_frames))).astype(int))
    label_w, label_h, gap = max(44, 7 * max(len(i) for i in ids) + 8), 16, 2
    scale = min(1.0, (max_width_px - label_w) / (len(cols) * (W + gap)))
    tw, th = max(8, int(W * scale)), max(8, int(H * scale))
    sheet = Image.new("RGB", (label_w + len(cols) * (tw + gap), label_h + V * (th + gap)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, f in enumerate(cols):
        draw.text((label_w + c * (tw + gap) + 3, 2), f"#{f}", fill=(220, 220, 220), font=font)
    for v in range(V):
        y = label_h + v * (th + gap)
        draw.text((3, y + th // 2 - 6), ids[v], fill=(220, 220, 220), font=font)
        for c, f in enumerate(cols):
            tile = Image.fromarray(arr[v, f])
            if (tw, th) != (W, H):
                tile = tile.resize((tw, th), Image.BILINEAR)
            sheet.paste(tile, (label_w + c * (tw + gap), y))
    out = np.asarray(sheet)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path, optimize=True)
    return out


def read_video(path: str | os.PathLike, fps: float) -> np.ndarray:
    """[N, H, W, 3] uint8: the frames of a video file sampled at ``fps`` frames per second of the video (ffmpeg's
    ``fps`` filter rounding up: the frame on screen at t = 0, 1/fps, 2/fps, ...; the file's rotation metadata
    applied), decoded through imageio-ffmpeg. ``ValueError`` names the file when ffmpeg cannot read it or it has no
    frames. The array is read-only and shared: an import reads the same file in its checks, the plan and the
    generate stage, and decodes it once (a changed file, by size or time, is decoded again)."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: not a video ffmpeg can read ({e.strerror or type(e).__name__})") from None
    return _decode_video(os.fspath(path), os.path.realpath(path), st.st_size, st.st_mtime_ns, float(fps))


@functools.lru_cache(maxsize=8)
def _decode_video(path: str, real_path: str, size: int, mtime_ns: int, fps: float) -> np.ndarray:
    """:func:`read_video`'s decoding, once per file version and rate (``path`` as given, for messages)."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(real_path, output_params=["-vf", f"fps={fps!r}:round=up"])
        meta = next(gen)
        raw = [np.frombuffer(buf, np.uint8) for buf in gen]
    except (OSError, RuntimeError, StopIteration) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a video ffmpeg can read ({why})") from None
    if not raw:
        raise ValueError(f"{path}: no frames at {fps:g} fps")
    w, h = meta["size"]
    if meta.get("rotate") in (90, 270) or raw[0].size != w * h * 3:
        w, h = h, w
    frames = np.stack(raw).reshape(len(raw), h, w, 3)
    frames.flags.writeable = False
    return frames
