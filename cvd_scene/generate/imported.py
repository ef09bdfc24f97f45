"""Frames a user brings (``cvd-scene import``): a folder of pictures is one video, a folder of sub-folders of
pictures is one video each; read upright (EXIF orientation) in file-name order. A video file (or a folder of
them) is one video per file, sampled at a given frame rate.

Pure functions over PIL and numpy; must not import torch or any stage.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvd_scene.cameras import Cameras

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File name endings read as pictures (any case); other files are ignored."""
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
"""File name endings read as video files (any case), decoded through ffmpeg."""


class SourceError(ValueError):
    """A source folder that cannot be imported; the message names the folder or file and why."""


@dataclass(frozen=True)
class SourceVideo:
    """One video of a source folder."""

    id: str
    """The video id: the folder's name made safe (``[A-Za-z0-9_-]``, at most 64 characters)."""
    folder: Path
    """The folder its pictures are in."""
    files: tuple[Path, ...]
    """Its pictures in file-name order (natural order: ``2.jpg`` before ``10.jpg``), or its one video file."""
    is_file: bool = False
    """True when ``files`` is one video file, whose frames are sampled at the import's frame rate."""


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def safe_id(name: str) -> str:
    """A folder name as a video id: characters outside ``[A-Za-z0-9_-]`` become ``_``, at most 64 characters."""
    out = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64].strip("_")
    return out or "video"


def _pictures(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: _natural_key(p.name),
    )


def _video_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
        key=lambda p: _natural_key(p.name),
    )


def source_videos(source: str | os.PathLike) -> list[SourceVideo]:
    """The videos of ``source``: a video file as one video; a folder's own pictures as one video, else its video
    files as one video each (ids from the file names made safe), else each sub-folder with pictures as one video
    (in natural name order); :class:`SourceError` names the folder when there is nothing to import."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        return [SourceVideo(safe_id(source.stem), source.parent, (source,), is_file=True)]
    if not source.is_dir():
        raise SourceError(f"import source {source}: no such folder")
    own = _pictures(source)
    if own:
        return [SourceVideo(safe_id(source.resolve().name), source, tuple(own))]
    clips = _video_files(source)
    if clips:
        videos = [SourceVideo(safe_id(p.stem), source, (p,), is_file=True) for p in clips]
        _check_distinct(source, videos, "video files")
        return videos
    subs = sorted((p for p in source.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name))
    videos = [SourceVideo(safe_id(p.name), p, tuple(_pictures(p))) for p in subs]
    videos = [v for v in videos if v.files]
    if not videos:
        raise SourceError(
            f"import source {source}: no pictures ({', '.join(IMAGE_SUFFIXES)}) in it or in its sub-folders"
        )
    _check_distinct(source, videos, "sub-folders")
    return videos


def _check_distinct(source: Path, videos: list[SourceVideo], what: str) -> None:
    seen: dict[str, str] = {}
    for v in videos:
        name = v.files[0].name if v.is_file else v.folder.name
        if v.id in seen:
            raise SourceError(
                f"import source {source}: {what} {seen[v.id]!r} and {name!r} make the same video id {v.id!r}"
            )
        seen[v.id] = name


def decode_videos(videos: list[SourceVideo], fps: float) -> dict[str, np.ndarray]:
    """The frames [N, H, W, 3] uint8 of every video file among ``videos`` sampled at ``fps``, by id; all of one
    size (the cameras file has one camera for now), else :class:`SourceError` names the files and their sizes."""
    from cvd_scene.media import read_video

    out = {}
    for v in videos:
        if v.is_file:
            try:
                out[v.id] = read_video(v.files[0], fps)
            except ValueError as e:
                raise SourceError(f"import: {e}") from None
    sizes = {vid: (a.shape[2], a.shape[1]) for vid, a in out.items()}
    if len(set(sizes.values())) > 1:
        names = {v.id: v.files[0].name for v in videos}
        raise SourceError(
            "import: the videos differ in size ("
            + ", ".join(f"{names[vid]} {w}x{h}" for vid, (w, h) in sizes.items())
            + "); all videos of a run need one size and one camera for now"
        )
    return out


def check_videos(videos: list[SourceVideo], video_ids: tuple[str, ...] | list[str], num_frames: int, width: int,
                 height: int, decoded: dict[str, np.ndarray] | None = None) -> list[SourceVideo]:  # fmt: skip
    """``videos`` in the cameras' order (by id when the folder names are the cameras' video ids, else as found)
    after checking, from the files' headers, that they fit the cameras: as many videos, ``num_frames`` pictures
    each, every one ``width`` x ``height`` upright. Video files are checked by their ``decoded`` frames
    (:func:`decode_videos`). :class:`SourceError` names what does not fit."""
    from PIL import Image, UnidentifiedImageError

    if any(v.is_file for v in videos):
        if decoded is None:
            raise ValueError("check_videos: video files need their decoded frames")
        videos = [
            SourceVideo(v.id, v.folder, tuple(v.files) * len(decoded[v.id]), is_file=True) if v.is_file else v
            for v in videos
        ]
    ids = [v.id for v in videos]
    if len(videos) != len(video_ids):
        raise SourceError(
            f"import: {len(videos)} source video(s) ({', '.join(ids)}), the cameras have {len(video_ids)} "
            f"({', '.join(video_ids)})"
        )
    if sorted(ids) == sorted(video_ids):
        videos = [videos[ids.index(vid)] for vid in video_ids]
    counts = {v.id: len(decoded[v.id]) if v.is_file else len(v.files) for v in videos}
    if len(set(counts.values())) > 1:
        raise SourceError(
            f"import: the videos have different frame counts ({', '.join(f'{k}: {n}' for k, n in counts.items())}); "
            "every video needs the same number of frames"
        )
    if len(videos[0].files) != num_frames and videos[0].is_file:
        raise SourceError(
            f"import: {videos[0].files[0]} gives {len(videos[0].files)} frames at the import's frame rate "
            f"(generate.import_fps, else the cameras' fps), the cameras have {num_frames} frames a video"
        )
    if len(videos[0].files) != num_frames:
        raise SourceError(
            f"import: {len(videos[0].files)} pictures a video, the cameras have {num_frames} frames a video"
        )
    for video in videos:
        if video.is_file:
            h, w = decoded[video.id].shape[1:3]
            if (w, h) != (width, height):
                raise SourceError(
                    f"import: {video.files[0]} is {w}x{h}, the cameras are {width}x{height}; every frame needs "
                    "the cameras' size"
                )
            continue
        for path in video.files:
            try:
                with Image.open(path) as img:
                    w, h = img.size
                    if int(img.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8):
                        w, h = h, w
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise SourceError(f"import: {path}: not an image that can be read ({type(e).__name__}: {e})") from None
            if (w, h) != (width, height):
                raise SourceError(
                    f"import: {path} is {w}x{h} (upright), the cameras are {width}x{height}; every frame needs "
                    "the cameras' size"
                )
    return videos


def read_videos(videos: list[SourceVideo], width: int, height: int,
                decoded: dict[str, np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
    """[V, F, H, W, 3] float32 in [0, 1]: every picture upright (EXIF orientation), which must be ``width`` x
    ``height`` after it (frames keep their size); every video must have the same number of frames. Video files
    (as :func:`check_videos` returns them) take their ``decoded`` frames."""
    from cvd_scene.generate.picture import PictureError, read_picture

    counts = {v.id: len(decoded[v.id]) if v.is_file else len(v.files) for v in videos}
    if len(set(counts.values())) > 1:
        raise SourceError(
            f"import: the videos have different frame counts ({', '.join(f'{k}: {n}' for k, n in counts.items())}); "
            "every video needs the same number of frames"
        )
    out = np.empty((len(videos), len(videos[0].files), height, width, 3), np.float32)
    for i, video in enumerate(videos):
        if video.is_file:
            out[i] = decoded[video.id].astype(np.float32) / 255.0
            continue
        for f, path in enumerate(video.files):
            try:
                pic = read_picture(path)
            except PictureError as e:
                raise SourceError(str(e).replace("--image ", "import: ", 1)) from None
            if (pic.width, pic.height) != (width, height):
                raise SourceError(
                    f"import: {path} is {pic.width}x{pic.height} (upright), the cameras are {width}x{height}; "
                    "every frame needs the cameras' size"
                )
            out[i, f] = pic.rgb.astype(np.float32) / 255.0
    return out


def unknown_cameras(
    videos: list[SourceVideo], default_fov_x_deg: float, fps: float = 8.0, sample_fps: float | None = None
) -> Cameras:
    """The cameras of pictures imported without poses (``poses_known=False``): every video the first video's
    frame count and every picture the first picture's upright size (:class:`SourceError` names the first that
    differs); one shared pinhole, its field of view from the first EXIF 35 mm-equivalent focal length found,
    else ``default_fov_x_deg``. ``extras`` records which (``intrinsics``). Video files are decoded at
    ``sample_fps`` (default ``fps``) for their frame count and size (:func:`decode_videos`)."""
    from PIL import Image, UnidentifiedImageError

    from cvd_scene.cameras import intrinsics_from_fov
    from cvd_scene.generate.picture import EXIF_IFD, FOCAL_35MM_TAG, FULL_FRAME_DIAGONAL_MM, ORIENTATION_TAG

    size, focal_mm, focal_from = None, None, None
    decoded = decode_videos(videos, sample_fps or fps) if any(v.is_file for v in videos) else {}
    for vid, frames in decoded.items():
        if size is None:
            size = (frames.shape[2], frames.shape[1])
        elif (frames.shape[2], frames.shape[1]) != size:
            raise SourceError(
                f"import: video {vid} is {frames.shape[2]}x{frames.shape[1]}, the pictures {size[0]}x{size[1]}; "
                "a run imported without poses needs one size"
            )
    for video in videos:
        for path in [] if video.is_file else video.files:
            try:
                with Image.open(path) as img:
                    w, h = img.size
                    exif = img.getexif()
                    if int(exif.get(ORIENTATION_TAG, 1) or 1) in (5, 6, 7, 8):
                        w, h = h, w
                    focal = exif.get_ifd(EXIF_IFD).get(FOCAL_35MM_TAG)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise SourceError(f"import: {path}: not an image that can be read ({type(e).__name__}: {e})") from None
            if size is None:
                size = (w, h)
            elif (w, h) != size:
                raise SourceError(
                    f"import: {path} is {w}x{h} (upright), {videos[0].files[0]} is {size[0]}x{size[1]}; pictures "
                    "imported without poses need one size"
                )
            try:
                focal = float(focal) if focal is not None else None
            except (TypeError, ValueError):
                focal = None
            if focal_mm is None and focal is not None and np.isfinite(focal) and focal > 0:
                focal_mm, focal_from = focal, path
    counts = {v.id: len(decoded[v.id]) if v.is_file else len(v.files) for v in videos}
    if len(set(counts.values())) > 1:
        raise SourceError(
            f"import: the videos have different frame counts ({', '.join(f'{k}: {n}' for k, n in counts.items())}); "
            "every video needs the same number of frames"
        )
    width, height = size
    if focal_mm is not None:
        width_mm = FULL_FRAME_DIAGONAL_MM * width / np.hypot(width, height)
        fov = float(np.degrees(2 * np.arctan(width_mm / (2 * focal_mm))))
        intrinsics = {"fov_x_deg": round(fov, 3), "from": f"EXIF 35 mm-equivalent focal length {focal_mm:g} mm "
                      f"({focal_from.name})"}  # fmt: skip
    else:
        fov = float(default_fov_x_deg)
        intrinsics = {"fov_x_deg": fov, "from": "no EXIF focal length: plan.fov_x_deg (assumed; registration "
                      "refines it)"}  # fmt: skip
    V, F = len(videos), counts[videos[0].id]
    return Cameras(
        world_from_cam=np.tile(np.eye(4), (V, F, 1, 1)),
        K=intrinsics_from_fov(fov, width, height),
        width=width,
        height=height,
        video_ids=tuple(v.id for v in videos),
        fps=fps,
        extras={"source": "import without poses", "intrinsics": intrinsics},
        poses_known=False,
    )
