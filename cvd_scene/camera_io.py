"""Readers and writers of camera files: ``plan/cameras.json``, nerfstudio ``transforms.json`` and
RealEstate10K/CameraCtrl pose files.

Every reader returns the one internal convention (:class:`cvd_scene.cameras.Cameras`); every writer converts at
the boundary through the functions of :mod:`cvd_scene.cameras`. Pure numpy and json.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvd_scene.cameras import (
    Cameras,
    check_rotations,
    intrinsics_matrix,
    invert_rigid,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
)
from cvd_scene.jsonio import _jsonable, write_json
from cvd_scene.paths import UnsafePathError, check_id
from cvd_scene.runfolder import frame_name

CAMERAS_FORMAT = "cvd-scene/cameras"
CAMERAS_VERSION = 2
"""Version 2 adds ``"poses": "unknown"`` (pictures imported without poses: frames carry no ``world_from_cam``)."""
CAMERAS_VERSIONS_READ = (1, 2)


class CameraFileError(ValueError):
    """A camera file that cannot be read; the message names the file and, where it can, the line or key."""


# ------------------------------------------------------------------------------------------ cameras.json


def cameras_to_dict(cams: Cameras) -> dict:
    """The ``plan/cameras.json`` document of a plan (schema in docs/architecture.md)."""
    videos = []
    for v, vid in enumerate(cams.video_ids):
        frames = []
        for f in range(cams.num_frames):
            K = cams.K[v, f]
            frames.append(
                {
                    "index": f,
                    "time_s": round(float(cams.time_s[f]), 6),
                    "width": cams.width,
                    "height": cams.height,
                    "fx": float(K[0, 0]),
                    "fy": float(K[1, 1]),
                    "cx": float(K[0, 2]),
                    "cy": float(K[1, 2]),
                }
            )
            if cams.poses_known:
                frames[-1]["world_from_cam"] = cams.world_from_cam[v, f].tolist()
        videos.append({"id": vid, "frames": frames})
    doc = {
        "format": CAMERAS_FORMAT,
        "version": CAMERAS_VERSION,
        "convention": "opencv",
        "pose": "world_from_cam",
        "units": "m",
        "world_up": "+y",
        "poses": "known" if cams.poses_known else "unknown",
        "fps": cams.fps,
        "videos": videos,
    }
    if cams.extras:
        doc["extras"] = _jsonable(cams.extras)
    return doc


def cameras_from_dict(doc: dict, source: str = "cameras.json") -> Cameras:
    """Parse a ``plan/cameras.json`` document; errors name the source and the offending key."""

    def fail(msg: str) -> CameraFileError:
        return CameraFileError(f"{source}: {msg}")

    if not isinstance(doc, dict):
        raise fail("top level must be a JSON object")
    if doc.get("format") != CAMERAS_FORMAT:
        raise fail(f"'format' must be {CAMERAS_FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if isinstance(version, bool) or version not in CAMERAS_VERSIONS_READ:
        raise fail(
            f"unsupported version {version!r} (this cvd-scene reads versions "
            f"{', '.join(map(str, CAMERAS_VERSIONS_READ))})"
        )
    poses = doc.get("poses", "known")
    if poses not in ("known", "unknown") or (version == 1 and poses != "known"):
        raise fail(f"'poses' must be 'known' or 'unknown' (version 2 and later), got {poses!r} in version {version}")
    poses_known = poses == "known"
    for key, want in (("convention", "opencv"), ("pose", "world_from_cam"), ("units", "m"), ("world_up", "+y")):
        if doc.get(key, want) != want:
            raise fail(f"'{key}' must be {want!r}, got {doc.get(key)!r}")
    videos = doc.get("videos")
    if not isinstance(videos, list) or not videos:
        raise fail("'videos' must be a non-empty list")
    fps = _number(doc.get("fps", 8.0), "fps", fail, positive=True)
    extras = doc.get("extras", {})
    if not isinstance(extras, dict):
        raise fail(f"'extras' must be a JSON object, got {extras!r}")
    n_frames = None
    size = None
    world_from_cam, Ks, ids, times = [], [], [], None
    for vi, video in enumerate(videos):
        frames = video.get("frames") if isinstance(video, dict) else None
        if not isinstance(frames, list) or not frames:
            raise fail(f"videos[{vi}].frames must be a non-empty list")
        if n_frames is None:
            n_frames = len(frames)
        elif len(frames) != n_frames:
            raise fail(f"videos[{vi}] has {len(frames)} frames, videos[0] has {n_frames}: all videos need the same count")
        vid = video.get("id", f"v{vi:02d}")
        try:
            ids.append(check_id(vid, f"videos[{vi}].id"))
        except UnsafePathError as e:
            raise fail(str(e)) from None
        if vid in ids[:-1]:
            raise fail(f"videos[{vi}].id {vid!r} is used by an earlier video; ids must be distinct")
        video_world_from_cam, vK, vt = [], [], []
        for fi, fr in enumerate(frames):
            where = f"videos[{vi}].frames[{fi}]"
            if not isinstance(fr, dict):
                raise fail(f"{where} must be a JSON object, got {fr!r}")
            needed = ("width", "height", "fx", "fy", "cx", "cy") + (("world_from_cam",) if poses_known else ())
            missing = [k for k in needed if k not in fr]
            if missing:
                raise fail(f"{where} is missing key {missing[0]!r}")
            wh = tuple(_integer(fr[k], f"{where}.{k}", fail, lo=1, hi=MAX_IMAGE_SIDE) for k in ("width", "height"))
            fx, fy = (_number(fr[k], f"{where}.{k}", fail, positive=True) for k in ("fx", "fy"))
            cx, cy = (_number(fr[k], f"{where}.{k}", fail) for k in ("cx", "cy"))
            for key, c, side in (("cx", cx, wh[0]), ("cy", cy, wh[1])):
                if not -side <= c <= 2 * side:
                    raise fail(
                        f"{where}.{key}={c} puts the principal point more than one image size outside the "
                        f"{wh[0]}x{wh[1]} image"
                    )
            K = intrinsics_matrix(fx, fy, cx, cy)
            if not poses_known and fr.get("world_from_cam") is not None:
                raise fail(f"{where}.world_from_cam is given but 'poses' is 'unknown'")
            try:
                T = np.asarray(fr["world_from_cam"] if poses_known else np.eye(4), dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise fail(f"{where}.world_from_cam: {e}") from None
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise fail(f"{where}.world_from_cam must be a finite 4x4 matrix, got shape {T.shape}")
            if np.abs(T[:3, 3]).max() > MAX_POSITION_M:
                raise fail(f"{where}.world_from_cam places the camera {np.abs(T[:3, 3]).max():.3g} m away "
                           f"(more than {MAX_POSITION_M:g} m from the origin)")
            if size is None:
                size = wh
            elif wh != size:
                raise fail(f"{where} is {wh[0]}x{wh[1]} but earlier frames are {size[0]}x{size[1]}: one size per plan")
            index = _integer(fr.get("index", fi), f"{where}.index", fail)
            if index != fi:
                raise fail(f"{where}.index is {index}, expected {fi}")
            video_world_from_cam.append(T)
            vK.append(K)
            vt.append(_number(fr.get("time_s", fi / fps), f"{where}.time_s", fail))
        world_from_cam.append(video_world_from_cam)
        Ks.append(vK)
        if times is None:
            times = vt
    world_from_cam_arr = np.asarray(world_from_cam)
    try:
        check_rotations(world_from_cam_arr, atol=1e-4)
    except ValueError as e:
        raise fail(str(e)) from None
    return Cameras(
        world_from_cam=world_from_cam_arr,
        K=np.asarray(Ks),
        width=size[0],
        height=size[1],
        video_ids=tuple(ids),
        time_s=np.asarray(times),
        fps=fps,
        extras=dict(extras),
        poses_known=poses_known,
    )


MAX_IMAGE_SIDE = 8192
"""Largest image width or height a camera file may ask for, pixels."""
MAX_POSITION_M = 1e6
"""Largest distance of a camera from the world origin a camera file may give, metres."""


def _number(value: object, key: str, fail, positive: bool = False) -> float:
    """``value`` as a finite float (``> 0`` when ``positive``); else ``fail(...)`` naming ``key`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"{key} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or (positive and x <= 0):
        raise fail(f"{key} must be a finite {'positive ' if positive else ''}number, got {value!r}")
    return x


def _integer(value: object, key: str, fail, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int (a float with no fraction is accepted) in [lo, hi]; else ``fail(...)`` naming ``key``."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{key} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise fail(f"{key} must be in [{lo}, {hi}], got {value}")
    return value


def write_cameras_json(cams: Cameras, path: str | os.PathLike) -> None:
    """Write ``plan/cameras.json``."""
    write_json(path, cameras_to_dict(cams))


def read_cameras_json(path: str | os.PathLike) -> Cameras:
    """Read ``plan/cameras.json`` (or a user's own cameras file in that schema)."""
    return cameras_from_dict(read_json(path), source=str(path))


# -------------------------------------------------------------------------------------- transforms.json


@dataclass(frozen=True)
class TransformsFrames:
    """What a nerfstudio ``transforms.json`` holds, in our convention."""

    cameras: Cameras
    """The cameras, one video per ``<vid>`` folder named in the file paths."""
    file_paths: list[list[str]]
    """[V][F] ``file_path`` of every frame as written in the file (relative to its folder)."""
    extra: dict
    """Top-level keys other than the frames and intrinsics (e.g. ``ply_file_path``)."""


def frame_file_path(prefix: str, video_id: str, index: int) -> str:
    """``<prefix>/<vid>/<NNNN>.png``, the frame naming every stage uses."""
    return f"{prefix.rstrip('/')}/{frame_name(video_id, index)}" if prefix else frame_name(video_id, index)


def write_transforms_json(
    cams: Cameras, path: str | os.PathLike, frames_prefix: str, extra: dict | None = None, mask: np.ndarray | None = None
) -> None:
    """Write a nerfstudio ``transforms.json`` with per-frame intrinsics and OpenGL ``transform_matrix``.

    ``frames_prefix`` is the folder holding ``<vid>/<NNNN>.png`` relative to the folder of ``path`` (for
    example ``../generate/frames``); ``mask`` [V, F] bool leaves out frames that are False.
    """
    frames = []
    T_gl = opencv_to_opengl(cams.world_from_cam)
    for v, vid in enumerate(cams.video_ids):
        for f in range(cams.num_frames):
            if mask is not None and not mask[v, f]:
                continue
            K = cams.K[v, f]
            frames.append(
                {
                    "file_path": frame_file_path(frames_prefix, vid, f),
                    "transform_matrix": T_gl[v, f].tolist(),
                    "fl_x": float(K[0, 0]),
                    "fl_y": float(K[1, 1]),
                    "cx": float(K[0, 2]),
                    "cy": float(K[1, 2]),
                    "w": cams.width,
                    "h": cams.height,
                    "video_id": vid,
                    "frame_index": f,
                }
            )
    doc = {"camera_model": "OPENCV", "w": cams.width, "h": cams.height, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    doc.update(extra or {})
    doc["frames"] = frames
    write_json(path, doc)


def read_transforms_json(path: str | os.PathLike) -> TransformsFrames:
    """Read a ``transforms.json`` written by cvd-scene (frames named ``.../<vid>/<NNNN>.png``).

    Frames missing from a video (e.g. unregistered) are filled with NaN poses; ``file_paths`` holds ``""``.
    """
    doc = read_json(path)
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise CameraFileError(f"{path}: 'frames' must be a non-empty list")
    entries: dict[str, dict[int, dict]] = {}
    for i, fr in enumerate(frames):
        fp = fr.get("file_path")
        if not isinstance(fp, str):
            raise CameraFileError(f"{path}: frames[{i}] has no file_path")
        parts = fp.replace("\\", "/").split("/")
        if len(parts) < 2 or not parts[-1].endswith(".png") or not parts[-1][:-4].isdigit():
            raise CameraFileError(f"{path}: frames[{i}].file_path {fp!r} does not end in <vid>/<NNNN>.png")
        entries.setdefault(parts[-2], {})[int(parts[-1][:-4])] = fr
    ids = sorted(entries)
    F = max(max(d) for d in entries.values()) + 1
    w = int(doc.get("w", frames[0].get("w", 0)))
    h = int(doc.get("h", frames[0].get("h", 0)))
    world_from_cam = np.full((len(ids), F, 4, 4), np.nan)
    K = np.tile(np.eye(3), (len(ids), F, 1, 1))
    paths = [["" for _ in range(F)] for _ in ids]
    for v, vid in enumerate(ids):
        for f, fr in entries[vid].items():
            world_from_cam[v, f] = opengl_to_opencv(np.asarray(fr["transform_matrix"], dtype=np.float64))
            K[v, f] = intrinsics_matrix(
                float(fr.get("fl_x", doc.get("fl_x"))),
                float(fr.get("fl_y", doc.get("fl_y"))),
                float(fr.get("cx", doc.get("cx"))),
                float(fr.get("cy", doc.get("cy"))),
            )
            paths[v][f] = fr["file_path"]
    extra = {k: v for k, v in doc.items() if k != "frames"}
    try:
        cams = Cameras(world_from_cam=world_from_cam, K=K, width=w, height=h, video_ids=tuple(ids))
    except ValueError as e:
        raise CameraFileError(f"{path}: {e}") from None
    return TransformsFrames(cameras=cams, file_paths=paths, extra=extra)


# ---------------------------------------------------------------------------- RealEstate10K pose files


@dataclass(frozen=True)
class Re10kClip:
    """One RealEstate10K/CameraCtrl pose file, parsed."""

    url: str
    """First line of the file: the source video's address."""
    timestamps_us: np.ndarray
    """[F] int64 frame timestamps in microseconds."""
    intrinsics_norm: np.ndarray
    """[F, 4] fx, fy, cx, cy normalised by the source width (fx, cx) and height (fy, cy)."""
    cam_from_world: np.ndarray
    """[F, 4, 4] float64 world-to-camera in the file's arbitrary SLAM units (OpenCV axes)."""

    @property
    def source_aspect(self) -> float:
        """Source width / height, from square pixels: fx_n * W = fy_n * H."""
        fx, fy = self.intrinsics_norm[0, 0], self.intrinsics_norm[0, 1]
        return float(fy / fx)


MAX_TIMESTAMP_US = 1e15
"""Largest RealEstate10K timestamp accepted, microseconds (about 31 years; the files use video time)."""


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file; a missing, unreadable or binary file raises :class:`CameraFileError` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CameraFileError(f"{path}: not a text {what} (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise CameraFileError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_re10k(text: str, source: str = "<pose file>") -> Re10kClip:
    """Parse the text of a RealEstate10K/CameraCtrl pose file; errors name the line number."""
    lines = text.splitlines()
    if not lines:
        raise CameraFileError(f"{source}: empty file")
    url = lines[0].strip()
    ts, intr, w2c = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 19:
            raise CameraFileError(
                f"{source}:{lineno}: expected 19 numbers (timestamp fx fy cx cy k1 k2 and a 3x4 [R|t]), got {len(parts)}"
            )
        try:
            vals = [float(p) for p in parts]
        except ValueError as e:
            raise CameraFileError(f"{source}:{lineno}: {e}") from None
        if not all(math.isfinite(v) for v in vals):
            raise CameraFileError(f"{source}:{lineno}: non-finite number")
        fx, fy, cx, cy = vals[1:5]
        if fx <= 0 or fy <= 0:
            raise CameraFileError(f"{source}:{lineno}: focal lengths must be positive, got fx={fx} fy={fy}")
        if not (-1.0 <= cx <= 2.0 and -1.0 <= cy <= 2.0):
            raise CameraFileError(
                f"{source}:{lineno}: principal point cx={cx} cy={cy} (fractions of the image size) lies more than "
                "one image size outside the image"
            )
        if not 0 <= vals[0] < MAX_TIMESTAMP_US:
            raise CameraFileError(
                f"{source}:{lineno}: timestamp {parts[0]} must be in [0, {MAX_TIMESTAMP_US:.0e}) microseconds"
            )
        M = np.eye(4)
        M[:3, :4] = np.asarray(vals[7:19]).reshape(3, 4)
        if np.abs(M[:3, 3]).max() > MAX_POSITION_M:
            raise CameraFileError(
                f"{source}:{lineno}: translation {np.abs(M[:3, 3]).max():.3g} is larger than {MAX_POSITION_M:g}"
            )
        R = M[:3, :3]
        if np.abs(R).max() > 1.001 or np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
            raise CameraFileError(f"{source}:{lineno}: the 3x3 part of [R|t] is not a rotation")
        # Re-orthonormalise the rotation the file stores at 9 decimals.
        U, _, Vt = np.linalg.svd(R)
        M[:3, :3] = U @ Vt
        ts.append(int(vals[0]))
        intr.append([fx, fy, cx, cy])
        w2c.append(M)
    if not ts:
        raise CameraFileError(f"{source}: no pose lines after the URL line")
    return Re10kClip(url, np.asarray(ts, np.int64), np.asarray(intr), np.asarray(w2c))


def re10k_intrinsics(intrinsics_norm: np.ndarray, source_aspect: float, width: int, height: int) -> np.ndarray:
    """Pixel intrinsics [..., 3, 3] for a source of aspect ``source_aspect`` (W/H) cover-resized to
    ``width`` x ``height`` and centre-cropped (the correct mapping; the released CVD code swaps W and H).
    """
    n = np.asarray(intrinsics_norm, dtype=np.float64)
    # Work in a source of height 1 and width source_aspect: the absolute size cancels.
    src_w, src_h = source_aspect, 1.0
    s = max(width / src_w, height / src_h)
    off_x = (src_w * s - width) / 2.0
    off_y = (src_h * s - height) / 2.0
    K = np.zeros(n.shape[:-1] + (3, 3))
    K[..., 0, 0] = n[..., 0] * src_w * s
    K[..., 1, 1] = n[..., 1] * src_h * s
    K[..., 0, 2] = n[..., 2] * src_w * s - off_x
    K[..., 1, 2] = n[..., 3] * src_h * s - off_y
    K[..., 2, 2] = 1.0
    return K


# The world pose given to the first camera of a RealEstate10K trajectory: 1.6 m above the floor, level,
# looking along -z. RE10K files are in a camera-aligned (y-down) frame; this places them in our Y-up world.
RE10K_START = look_at(np.array([0.0, 1.6, 0.0]), np.array([0.0, 1.6, -1.0]))


def read_re10k(
    path: str | os.PathLike,
    width: int,
    height: int,
    metres_per_unit: float = 1.0,
    reverse: bool = False,
    max_frames: int | None = None,
    world_from_start: np.ndarray = RE10K_START,
) -> tuple[np.ndarray, np.ndarray, Re10kClip]:
    """Read a RealEstate10K/CameraCtrl pose file as one video for a ``width`` x ``height`` image.

    Poses are made relative to the file's own first pose (after reversal, if asked), scaled by
    ``metres_per_unit`` and placed at ``world_from_start``. Returns ``world_from_cam`` [F, 4, 4], ``K``
    [F, 3, 3] and the parsed clip.
    """
    path = Path(path)
    clip = parse_re10k(read_text_file(path, "RealEstate10K pose file"), source=str(path))
    w2c = clip.cam_from_world
    intr = clip.intrinsics_norm
    if reverse:
        w2c, intr = w2c[::-1], intr[::-1]
    if max_frames is not None:
        w2c, intr = w2c[:max_frames], intr[:max_frames]
    world_from_cam = invert_rigid(w2c)
    rel = invert_rigid(world_from_cam[:1]) @ world_from_cam
    rel[:, :3, 3] *= metres_per_unit
    K = re10k_intrinsics(intr, clip.source_aspect, width, height)
    return world_from_start @ rel, K, clip


# ----------------------------------------------------------------------------------------------- json


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file; a missing or malformed file raises an error that names it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CameraFileError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise CameraFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise CameraFileError(f"{path}: not a JSON text file (byte {e.start} is not UTF-8)") from None
    except (IsADirectoryError, PermissionError) as e:
        raise CameraFileError(f"{path}: cannot read ({e.strerror})") from None
    except RecursionError:
        raise CameraFileError(f"{path}: JSON nested too deeply") from None
