"""Captures that come with their own cameras (``cvd-scene import``): a nerfstudio / instant-ngp ``transforms.json``
folder or a COLMAP model, read once into the run's world, and the lens distortion removed from their pictures.

* :func:`read_posed_source` reads either kind into a :class:`PosedSource`: one video of the pictures in natural
  file-name order, ``world_from_cam`` (OpenCV axes) in the source's own world, each frame's lens (a COLMAP camera
  model and its parameters, nerfstudio's models mapped onto COLMAP's) and the model's points;
* :func:`level_world` is the one conversion from a source's world to the run's: up is the mean of the cameras'
  up vectors, the origin is the first camera, the first camera looks along -z, the scale is kept;
* :func:`posed_cameras` gives the run's :class:`cvd_scene.cameras.Cameras` (pinhole, in the run's world) with what
  the generate stage needs to read the frames in ``extras["import"]``; :func:`read_posed_frames` reads them back,
  undistorted by :func:`undistort` (an exact remap through pycolmap's camera models: same size, pinhole K with
  the lens's focal lengths and principal point).

Pure numpy, PIL and scipy; pycolmap only through :mod:`cvd_scene.register.colmap` (imported inside the
functions); must not import torch or any stage.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvd_scene.camera_io import CameraFileError, read_cameras_json, read_json
from cvd_scene.cameras import Cameras, intrinsics_matrix, invert_rigid, opengl_to_opencv, rigid
from cvd_scene.generate.imported import safe_id

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
"""COLMAP camera models without distortion."""
TRANSFORMS_MODELS = ("OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
"""nerfstudio ``camera_model`` values read (its other models, e.g. ``EQUIRECTANGULAR``, are not pinhole-like)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
TRANSFORMS_FILE = "transforms.json"
"""The cameras file of a nerfstudio / instant-ngp capture folder."""
COLMAP_MODEL_DIRS = (".", "sparse/0", "sparse", "colmap/sparse/0")
"""Where a COLMAP model is looked for inside a capture folder (``ns-process-data`` and COLMAP's own layouts)."""


class SourceFormatError(CameraFileError):
    """A posed capture that cannot be imported; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Lens:
    """One camera of a capture as its source gives it: a COLMAP camera model for an image of ``width`` x
    ``height`` pixels (pixel centres at +0.5, as in COLMAP and here)."""

    model: str
    """COLMAP model name (``PINHOLE``, ``OPENCV``, ``FULL_OPENCV``, ``OPENCV_FISHEYE``, ``SIMPLE_RADIAL``, ...)."""
    width: int
    height: int
    params: tuple[float, ...]
    """The model's parameters in COLMAP's order (``pycolmap.CameraModelId`` documents them)."""

    @property
    def distorted(self) -> bool:
        return self.model not in PINHOLE_MODELS and any(abs(p) > 0 for p in self.params[self._focal_count() + 2 :])

    def _focal_count(self) -> int:
        return 1 if self.model.startswith("SIMPLE_") or self.model in ("RADIAL", "SIMPLE_RADIAL_FISHEYE",
                                                                       "RADIAL_FISHEYE") else 2  # fmt: skip

    def pinhole_K(self) -> np.ndarray:
        """[3, 3] the pinhole camera of the undistorted picture: the lens's focal lengths and principal point."""
        p = self.params
        if self._focal_count() == 1:
            return intrinsics_matrix(p[0], p[0], p[1], p[2])
        return intrinsics_matrix(p[0], p[1], p[2], p[3])

    def scaled(self, sx: float, sy: float, width: int, height: int) -> Lens:
        """The same lens for the picture resized to ``width`` x ``height`` (focal lengths and principal point
        scale; distortion coefficients act on normalised coordinates and stay)."""
        p = list(self.params)
        if self._focal_count() == 1:
            if abs(sx - sy) > 1e-3 * max(sx, sy):
                raise SourceFormatError(f"a {self.model} lens cannot be resized unevenly ({sx:.4f} x {sy:.4f})")
            p[0:3] = [p[0] * sx, p[1] * sx, p[2] * sy]
        else:
            p[0:4] = [p[0] * sx, p[1] * sy, p[2] * sx, p[3] * sy]
        return Lens(self.model, width, height, tuple(p))

    def to_dict(self) -> dict:
        return {"model": self.model, "width": self.width, "height": self.height, "params": list(self.params)}

    @classmethod
    def from_dict(cls, d: dict) -> Lens:
        return cls(str(d["model"]), int(d["width"]), int(d["height"]), tuple(float(p) for p in d["params"]))


@dataclass(frozen=True)
class PosedSource:
    """A capture with its own cameras: one video of ``F`` pictures."""

    kind: str
    """``transforms.json`` or ``colmap``."""
    path: Path
    """The file (``transforms.json``) or the COLMAP model folder read."""
    root: Path
    """The folder the picture files are relative to."""
    files: tuple[str, ...]
    """[F] the pictures, relative to ``root`` (posix), in natural file-name order."""
    world_from_cam: np.ndarray
    """[F, 4, 4] float64 poses with OpenCV camera axes in the source's own world."""
    lenses: tuple[Lens, ...]
    """The distinct lenses."""
    lens_of_frame: tuple[int, ...]
    """[F] index into ``lenses`` of every frame."""
    points: np.ndarray
    """[N, 3] float64 the capture's points in the source's world (COLMAP ``points3D``, a transforms.json's
    ``ply_file_path``; empty when none)."""
    colors: np.ndarray
    """[N, 3] uint8 their colours."""
    video_id: str
    """The video's id: the capture folder's name made safe."""

    @property
    def width(self) -> int:
        return self.lenses[0].width

    @property
    def height(self) -> int:
        return self.lenses[0].height


# ------------------------------------------------------------------------------------------ dispatch


def posed_source_kind(path: str | os.PathLike) -> str | None:
    """``transforms.json`` or ``colmap`` when ``path`` is such a capture (a ``transforms.json`` file or a folder
    holding one; a COLMAP model folder, or a folder holding ``sparse/0`` or ``sparse/``), else None."""
    p = Path(path)
    if p.is_file():
        return "transforms.json" if p.suffix.lower() == ".json" and _is_transforms(p) else None
    if not p.is_dir():
        return None
    if (p / TRANSFORMS_FILE).is_file():
        return "transforms.json"
    return "colmap" if _colmap_model_dir(p) is not None else None


def _is_transforms(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return path.name == TRANSFORMS_FILE  # a broken transforms.json is still meant as one (and refused later)
    return isinstance(doc, dict) and doc.get("format") != "cvd-scene/cameras" and (
        "frames" in doc or path.name == TRANSFORMS_FILE)  # fmt: skip


def _colmap_model_dir(p: Path) -> Path | None:
    for cand in (p.joinpath(*sub.split("/")) if sub != "." else p for sub in COLMAP_MODEL_DIRS):
        if any((cand / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return cand
    return None


def read_plan_cameras(path: str | os.PathLike, images: str | os.PathLike | None = None, downscale: int = 1,
                      fps: float = 8.0) -> Cameras:  # fmt: skip
    """The cameras a plan takes from ``plan.cameras_file``: a capture's (:func:`read_posed_source`, converted into
    the run's world by :func:`posed_cameras`) or a ``cameras.json`` as given."""
    if posed_source_kind(path) is not None:
        return posed_cameras(read_posed_source(path, images, downscale), fps=fps)
    return read_cameras_json(path)


def read_posed_source(path: str | os.PathLike, images: str | os.PathLike | None = None,
                      downscale: int = 1) -> PosedSource:  # fmt: skip
    """Read a ``transforms.json`` capture or a COLMAP model (see :func:`posed_source_kind`) and check its pictures
    from their headers: every one present, of its camera's size (``downscale`` N reads the ``images_N/`` copies,
    the lens scaled to them), all of one size. :class:`SourceFormatError` names the file and what is wrong."""
    kind = posed_source_kind(path)
    if downscale < 1:
        raise SourceFormatError(f"import: downscale must be >= 1, got {downscale}")
    if kind == "transforms.json":
        src = _read_transforms(Path(path), downscale)
    elif kind == "colmap":
        src = _read_colmap(Path(path), images, downscale)
    else:
        raise SourceFormatError(f"import {path}: not a transforms.json nor a COLMAP model (cameras.bin/.txt)")
    sizes = {(lens.width, lens.height) for lens in src.lenses}
    if len(sizes) > 1:
        firsts = {}
        for f, li in enumerate(src.lens_of_frame):
            firsts.setdefault((src.lenses[li].width, src.lenses[li].height), src.files[f])
        raise SourceFormatError(
            f"import {src.path}: the pictures have {len(sizes)} sizes ("
            + ", ".join(f"{name} {w}x{h}" for (w, h), name in firsts.items())
            + "); one size per run for now"
        )
    return src


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _image_size(path: Path, what: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise SourceFormatError(f"{what}: no such file {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SourceFormatError(f"{what}: {path} is not an image that can be read ({type(e).__name__})") from None


def _downscaled(rel: str, downscale: int) -> str:
    """``images/a.jpg`` -> ``images_N/a.jpg`` (nerfstudio's downscale folders: the picture's folder + ``_N``)."""
    if downscale == 1:
        return rel
    parts = rel.split("/")
    if len(parts) < 2:
        return f"images_{downscale}/{rel}"
    parts[-2] = f"{parts[-2]}_{downscale}"
    return "/".join(parts)


def _check_size(lens: Lens, size: tuple[int, int], full: tuple[int, int], downscale: int, where: str,
                path: Path) -> Lens:  # fmt: skip
    """The lens for a picture of ``size`` whose camera describes ``full``: equal, or the ``images_N`` copy of it."""
    if downscale == 1:
        if size != full:
            raise SourceFormatError(
                f"{where}: {path} is {size[0]}x{size[1]}, its camera is {full[0]}x{full[1]}"
            )
        return lens
    want = (full[0] / downscale, full[1] / downscale)
    if abs(size[0] - want[0]) > 1 or abs(size[1] - want[1]) > 1:
        raise SourceFormatError(
            f"{where}: {path} is {size[0]}x{size[1]}, not its {full[0]}x{full[1]} camera downscaled by {downscale}"
        )
    return lens.scaled(size[0] / full[0], size[1] / full[1], size[0], size[1])


# ------------------------------------------------------------------------------------ transforms.json


def _number(v: object, key: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SourceFormatError(f"{where}: {key} must be a finite number, got {v!r}")
    return float(v)


def _transforms_lens(fr: dict, doc: dict, where: str, size: tuple[int, int]) -> Lens:
    """The lens of one frame: its own keys, else the file's (nerfstudio's per-frame intrinsics)."""

    def get(key: str, default=None):
        return fr.get(key, doc.get(key, default))

    w, h = size
    model = get("camera_model", "OPENCV")
    if model not in TRANSFORMS_MODELS:
        raise SourceFormatError(f"{where}: camera_model {model!r} is not one of {', '.join(TRANSFORMS_MODELS)}")
    if get("fl_x") is not None:
        fx = _number(get("fl_x"), "fl_x", where)
        fy = _number(get("fl_y", fx), "fl_y", where)
    elif get("camera_angle_x") is not None:  # instant-ngp
        ax = _number(get("camera_angle_x"), "camera_angle_x", where)
        fx = 0.5 * w / math.tan(ax / 2)
        fy = 0.5 * h / math.tan(_number(get("camera_angle_y"), "camera_angle_y", where) / 2) if get(
            "camera_angle_y") is not None else fx  # fmt: skip
    else:
        raise SourceFormatError(f"{where}: no focal length (fl_x or camera_angle_x)")
    if fx <= 0 or fy <= 0:
        raise SourceFormatError(f"{where}: focal lengths must be positive, got fl_x={fx} fl_y={fy}")
    cx = _number(get("cx", w / 2), "cx", where)
    cy = _number(get("cy", h / 2), "cy", where)
    k1, k2, k3, k4, p1, p2 = (_number(get(k, 0.0), k, where) for k in ("k1", "k2", "k3", "k4", "p1", "p2"))
    if model == "OPENCV_FISHEYE":
        if p1 or p2:
            raise SourceFormatError(f"{where}: an OPENCV_FISHEYE camera has no tangential terms, got p1={p1} p2={p2}")
        return Lens("OPENCV_FISHEYE", w, h, (fx, fy, cx, cy, k1, k2, k3, k4))
    if k4:
        raise SourceFormatError(f"{where}: k4={k4} (a 4th radial term of {model}) has no COLMAP model to undistort by")
    if not (k1 or k2 or k3 or p1 or p2):
        return Lens("PINHOLE", w, h, (fx, fy, cx, cy))
    if k3:
        return Lens("FULL_OPENCV", w, h, (fx, fy, cx, cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0))
    return Lens("OPENCV", w, h, (fx, fy, cx, cy, k1, k2, p1, p2))


def _transforms_doc(path: Path) -> dict:
    try:
        doc = read_json(path)
    except CameraFileError as e:
        raise SourceFormatError(str(e)) from None
    if not isinstance(doc, dict):
        raise SourceFormatError(f"{path}: top level must be a JSON object")
    return doc


def _source_from_applied(doc: dict, path: Path) -> np.ndarray:
    """[4, 4] the inverse of a transforms.json's ``applied_transform`` (identity without one)."""
    applied = np.eye(4)
    if "applied_transform" in doc:
        try:
            a = np.asarray(doc["applied_transform"], dtype=np.float64)
        except (TypeError, ValueError):
            a = np.zeros(0)
        if a.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(a)):
            raise SourceFormatError(f"{path}: applied_transform must be a finite 3x4 matrix")
        applied[:3] = a[:3]
        if np.abs(applied[:3, :3].T @ applied[:3, :3] - np.eye(3)).max() > 1e-4 or np.linalg.det(applied[:3, :3]) < 0:
            raise SourceFormatError(f"{path}: applied_transform is not a rotation and translation")
    return invert_rigid(applied)


def _transforms_points(doc: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The points of a transforms.json's ``ply_file_path`` in the source's world (the applied transform undone):
    ([N, 3] float64, [N, 3] uint8; grey without colours); empty without one."""
    name = doc.get("ply_file_path")
    if not name:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    ply = path.parent / str(name)
    if not ply.is_file():
        raise SourceFormatError(f"{path}: ply_file_path {name!r}: no such file {ply}")
    from plyfile import PlyData

    try:
        vertex = PlyData.read(str(ply))["vertex"]
        xyz = np.stack([np.asarray(vertex[k], np.float64) for k in "xyz"], -1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceFormatError(f"{ply}: not a PLY point cloud that can be read ({type(e).__name__}: {e})") from None
    names = vertex.data.dtype.names
    rgb = (np.stack([np.asarray(vertex[k]) for k in ("red", "green", "blue")], -1).astype(np.uint8)
           if all(k in names for k in ("red", "green", "blue")) else np.full(xyz.shape, 128, np.uint8))  # fmt: skip
    keep = np.all(np.isfinite(xyz), axis=1)
    S = _source_from_applied(doc, path)
    return xyz[keep] @ S[:3, :3].T + S[:3, 3], rgb[keep]


def _read_transforms(path: Path, downscale: int) -> PosedSource:
    if path.is_dir():
        path = path / TRANSFORMS_FILE
    root = path.parent
    doc = _transforms_doc(path)
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise SourceFormatError(f"{path}: 'frames' must be a non-empty list")
    source_from_applied = _source_from_applied(doc, path)
    entries = []
    for i, fr in enumerate(frames):
        where = f"{path}: frames[{i}]"
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise SourceFormatError(f"{where} has no file_path")
        rel = fr["file_path"].replace("\\", "/").removeprefix("./")
        bare = Path(rel).suffix.lower() not in IMAGE_SUFFIXES
        if bare and not (root / rel).is_file() and (root / f"{rel}.png").is_file():
            rel = f"{rel}.png"  # instant-ngp / NeRF synthetic name frames without their extension
        try:
            T = np.asarray(fr.get("transform_matrix"), dtype=np.float64)
        except (TypeError, ValueError):
            T = np.zeros(0)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise SourceFormatError(f"{where}.transform_matrix must be a finite 4x4 matrix")
        R = T[:3, :3]
        if np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(R) - 1) > 1e-3:
            raise SourceFormatError(f"{where}.transform_matrix is not a rotation and translation (scaled or mirrored)")
        entries.append((rel, T, fr, where))
    entries.sort(key=lambda e: _natural_key(e[0]))
    names = [e[0] for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise SourceFormatError(f"{path}: file_path {dup!r} appears twice")
    lenses: list[Lens] = []
    lens_of_frame, files, poses = [], [], []
    for rel, T, fr, where in entries:
        full = root / rel
        if not full.is_file():
            raise SourceFormatError(f"{where}.file_path {rel!r}: no such file {full}")
        wh = [fr.get(k, doc.get(k)) for k in ("w", "h")]
        if wh == [None, None]:
            full_size = _image_size(full, where)
        else:
            full_size = tuple(int(_number(v, k, where)) for v, k in zip(wh, ("w", "h")))
        lens = _transforms_lens(fr, doc, where, full_size)
        rel_read = _downscaled(rel, downscale)
        size = _image_size(root / rel_read, where)
        lens = _check_size(lens, size, full_size, downscale, where, root / rel_read)
        if lens not in lenses:
            lenses.append(lens)
        lens_of_frame.append(lenses.index(lens))
        files.append(rel_read)
        poses.append(source_from_applied @ opengl_to_opencv(T))
    points, colors = _transforms_points(doc, path)
    return PosedSource(
        kind="transforms.json",
        path=path,
        root=root,
        files=tuple(files),
        world_from_cam=np.asarray(poses),
        lenses=tuple(lenses),
        lens_of_frame=tuple(lens_of_frame),
        points=points,
        colors=colors,
        video_id=safe_id(root.resolve().name),
    )


# ------------------------------------------------------------------------------------------- COLMAP


def _read_colmap(path: Path, images: str | os.PathLike | None, downscale: int) -> PosedSource:
    from cvd_scene.register.colmap import Model

    model_dir = _colmap_model_dir(path)
    assert model_dir is not None  # posed_source_kind said so
    try:
        model = Model.read(model_dir)
    except ValueError as e:
        raise SourceFormatError(f"{model_dir}: not a COLMAP model that can be read ({e})") from None
    poses_by_name, lens_by_name = model.world_from_cam(), model.lenses()
    if not poses_by_name:
        raise SourceFormatError(f"{model_dir}: the COLMAP model has no registered images")
    if images is not None:
        root = Path(images)
        if not root.is_dir():
            raise SourceFormatError(f"--images {images}: no such folder")
    else:
        root = next((d / "images" for d in (model_dir, *model_dir.parents)
                     if (d / "images").is_dir()), None)  # fmt: skip
        if root is None:
            raise SourceFormatError(
                f"{model_dir}: no images/ folder next to the COLMAP model or above it; name it with --images DIR"
            )
    if downscale > 1:
        root = root.with_name(f"{root.name}_{downscale}")
        if not root.is_dir():
            raise SourceFormatError(f"{model_dir}: downscale {downscale} needs the folder {root}")
    names = sorted(poses_by_name, key=_natural_key)
    lenses: list[Lens] = []
    lens_of_frame, files, poses = [], [], []
    where = f"{model_dir} (images{'.bin' if (model_dir / 'images.bin').is_file() else '.txt'})"
    for image_name in names:
        file = root / image_name
        if not file.is_file():
            raise SourceFormatError(f"{where}: image {image_name!r} not found in {root}")
        lens = Lens(*lens_by_name[image_name])
        lens = _check_size(lens, _image_size(file, where), (lens.width, lens.height), downscale, where, file)
        if lens not in lenses:
            lenses.append(lens)
        lens_of_frame.append(lenses.index(lens))
        files.append(Path(image_name).as_posix())
        poses.append(poses_by_name[image_name])
    points, colors = model.points()[:2]
    name = model_dir.resolve()
    while name.name in ("0", "sparse", "colmap") and name.parent != name:
        name = name.parent
    return PosedSource(
        kind="colmap",
        path=model_dir,
        root=root,
        files=tuple(files),
        world_from_cam=np.asarray(poses),
        lenses=tuple(lenses),
        lens_of_frame=tuple(lens_of_frame),
        points=points,
        colors=colors,
        video_id=safe_id(name.name),
    )


# ------------------------------------------------------------------------------------------- world


def level_world(world_from_cam: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``run_from_source`` [4, 4], the similarity from a capture's world to the run's (+y up): up is the mean of
    the cameras' up vectors (OpenCV ``-y`` axes), the origin is the first camera, its view direction made level is
    ``-z``, lengths are multiplied by ``scale``. ``world_from_cam`` [F, 4, 4] (OpenCV axes, source world)."""
    T = np.asarray(world_from_cam, dtype=np.float64)
    ups = -T[:, :3, 1]  # [F, 3]
    up = ups.mean(axis=0)
    if np.linalg.norm(up) < 1e-6:
        raise SourceFormatError("the cameras' up vectors cancel out: no up direction for the run's world")
    up = up / np.linalg.norm(up)
    forward = T[0, :3, 2] - (T[0, :3, 2] @ up) * up
    if np.linalg.norm(forward) < 1e-6:  # the first camera looks straight up or down: level its image x instead
        forward = np.cross(up, T[0, :3, 0])
    forward = forward / np.linalg.norm(forward)
    z = -forward
    x = np.cross(up, z)
    R = np.stack([x, up, z])  # rows: the run's axes in source coordinates
    out = rigid(scale * R, -scale * R @ T[0, :3, 3])
    return out


def apply_similarity(run_from_source: np.ndarray, world_from_cam: np.ndarray) -> np.ndarray:
    """[F, 4, 4] poses moved by a similarity [4, 4] (rotation, translation, uniform scale), kept rigid."""
    S = np.asarray(run_from_source, dtype=np.float64)
    s = np.cbrt(np.linalg.det(S[:3, :3]))
    R = S[:3, :3] / s
    T = np.asarray(world_from_cam, dtype=np.float64)
    return rigid(R @ T[:, :3, :3], T[:, :3, 3] @ S[:3, :3].T + S[:3, 3])


def posed_cameras(src: PosedSource, scale: float = 1.0, fps: float = 8.0) -> Cameras:
    """The run's cameras of a capture: one video, pinhole K of each frame's lens (distortion removed on import),
    poses in the run's world (:func:`level_world`). ``extras["import"]`` records what the generate stage reads:
    the folder, every frame's file and lens, and the similarity applied."""
    run_from_source = level_world(src.world_from_cam, scale)
    world_from_cam = apply_similarity(run_from_source, src.world_from_cam)[None]  # [1, F, 4, 4]
    K = np.stack([src.lenses[i].pinhole_K() for i in src.lens_of_frame])[None]  # [1, F, 3, 3]
    extras = {
        "import": {
            "kind": src.kind,
            "path": str(src.path.resolve()),
            "root": str(src.root.resolve()),
            "files": list(src.files),
            "lenses": [lens.to_dict() for lens in src.lenses],
            "lens_of_frame": list(src.lens_of_frame),
            "run_from_source": run_from_source.tolist(),
            "points": len(src.points),
        }
    }
    return Cameras(world_from_cam, K, src.width, src.height, (src.video_id,), fps=fps, extras=extras)


def capture_points(imported: dict) -> tuple[np.ndarray, np.ndarray]:
    """The points of the capture a run was imported from (a COLMAP model's ``points3D``, a transforms.json's
    ``ply_file_path``) in the run's world: ([N, 3] float64, [N, 3] uint8 colours); empty when it has none.
    ``imported`` is ``cameras.extras["import"]`` (:func:`posed_cameras`); :class:`SourceFormatError` names the
    file when it can no longer be read."""
    if not imported.get("points"):
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    path = Path(imported["path"])
    if imported.get("kind") == "colmap":
        from cvd_scene.register.colmap import Model

        try:
            xyz, rgb = Model.read(path).points()[:2]
        except ValueError as e:
            raise SourceFormatError(f"{path}: the COLMAP model cannot be read any more ({e})") from None
    else:
        xyz, rgb = _transforms_points(_transforms_doc(path), path)
    S = np.asarray(imported["run_from_source"], np.float64)
    return xyz @ S[:3, :3].T + S[:3, 3], rgb


# --------------------------------------------------------------------------------------- undistortion


def undistort(image: np.ndarray, lens: Lens) -> np.ndarray:
    """[H, W, C] float image taken through ``lens`` -> the same-size picture of the pinhole camera
    :meth:`Lens.pinhole_K`: every output pixel centre is cast as a ray and projected through the lens by
    pycolmap's camera model, then sampled bilinearly; pixels whose ray falls outside the picture are 0."""
    from scipy.ndimage import map_coordinates

    from cvd_scene.register.colmap import lens_pixels

    if not lens.distorted:
        return image
    H, W = image.shape[:2]
    if (W, H) != (lens.width, lens.height):
        raise ValueError(f"undistort: image is {W}x{H}, the lens is {lens.width}x{lens.height}")
    K = lens.pinhole_K()
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)  # [H, W] pixel centres
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    uv = lens_pixels(lens.model, lens.width, lens.height, lens.params, rays).reshape(H, W, 2)  # distorted pixel
    coords = [uv[..., 1] - 0.5, uv[..., 0] - 0.5]  # array index = pixel coordinate - 0.5
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        out[..., c] = map_coordinates(image[..., c], coords, order=1, mode="constant", cval=0.0)
    return out


def read_posed_frames(cams: Cameras) -> tuple[np.ndarray, dict]:
    """[1, F, H, W, 3] float32 in [0, 1]: the frames named by ``cams.extras["import"]`` (:func:`posed_cameras`),
    as stored (a capture's cameras describe the stored pixels: no EXIF turn), undistorted; and a report entry
    (the original lenses, how many frames were undistorted)."""
    from PIL import Image

    imp = cams.extras["import"]
    root = Path(imp["root"])
    lenses = [Lens.from_dict(d) for d in imp["lenses"]]
    files = imp["files"]
    if len(files) != cams.num_frames or cams.num_videos != 1:
        raise SourceFormatError(f"plan/cameras.json: {len(files)} imported files for {cams.num_frames} frames")
    out = np.empty((1, len(files), cams.height, cams.width, 3), np.float32)
    undistorted = 0
    for f, rel in enumerate(files):
        path = root / rel
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), np.float32) / 255.0
        except (OSError, SyntaxError, ValueError) as e:
            raise SourceFormatError(f"import: {path}: not an image that can be read ({type(e).__name__})") from None
        if rgb.shape[:2] != (cams.height, cams.width):
            raise SourceFormatError(
                f"import: {path} is {rgb.shape[1]}x{rgb.shape[0]}, the cameras are {cams.width}x{cams.height}"
            )
        lens = lenses[imp["lens_of_frame"][f]]
        if lens.distorted:
            rgb = undistort(rgb, lens)
            undistorted += 1
        out[0, f] = rgb
    report = {
        "source_kind": imp["kind"],
        "source_cameras": imp["path"],
        "source_videos": {cams.video_ids[0]: list(files)},
        "lenses": imp["lenses"],
        "lens_models": sorted({lens.model for lens in lenses}),
        "undistorted_frames": undistorted,
        "run_from_source": imp["run_from_source"],
    }
    return out, report
