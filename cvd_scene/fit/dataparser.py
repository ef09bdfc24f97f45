"""nerfstudio dataparser ``cvd-scene-data``: a cvd-scene run folder's registered frames and sparse points.

Reads ``register/transforms.json`` (nerfstudio format written by the register stage: OpenGL
``transform_matrix``, per-frame intrinsics, frames ``../generate/frames/<vid>/<NNNN>.png``) through
:func:`cvd_scene.camera_io.read_transforms_json`, and ``register/sparse_pc.ply``. The run's Y-up metric world is
mapped to nerfstudio's frame (+z up, the scene within about [-1, 1]^3) by a similarity recorded as the
``dataparser_transform``/``dataparser_scale`` (see :mod:`cvd_scene.fit.frames`), so every output can be mapped
back. Every ``eval_every_k``-th frame of every video (index % k == k - 1) is held out for evaluation, or, with
``held_out_video``, every frame of that one video (cross-video reconstruction).

Imports only nerfstudio's dataparser and camera modules (ns-train imports every plugin at start; models and
datamanagers here would make a circular import).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras as NsCameras
from nerfstudio.cameras.cameras import CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from cvd_scene.camera_io import read_transforms_json
from cvd_scene.fit.frames import NerfstudioFrame, nerfstudio_frame
from cvd_scene.media import ImageFileError, check_image
from cvd_scene.paths import UnsafePathError, join_inside
from cvd_scene.runfolder import RunLayout, frame_key, read_stage_record

log = logging.getLogger(__name__)


class RunFolderDataError(ValueError):
    """The run folder has no usable registered frames; the message names the file and what is wrong."""


def install_error_hook() -> None:
    """Make an uncaught :class:`RunFolderDataError` (``ns-train cvd-scene --data`` on a folder that is not a usable
    run folder) print one line instead of a traceback; every other exception keeps Python's own hook."""
    import sys

    previous = sys.excepthook
    if getattr(previous, "cvd_scene_hook", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, RunFolderDataError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            previous(exc_type, exc, tb)

    hook.cvd_scene_hook = True
    sys.excepthook = hook


@dataclass
class CvdSceneDataParserConfig(DataParserConfig):
    """A cvd-scene run folder (``--data RUN_DIR``) as nerfstudio training data."""

    _target: type = field(default_factory=lambda: CvdSceneDataParser)
    data: Path = Path()
    """The run folder (reads ``register/transforms.json`` and ``register/sparse_pc.ply``), or a transforms.json."""
    eval_every_k: int = 6
    """Hold out every k-th frame of every video (frame index % k == k - 1) for evaluation (k >= 2)."""
    held_out_video: str | None = None
    """Hold out every frame of this video instead (``eval_every_k`` is then unused) and train on the other videos:
    how well the other videos predict it (cross-video reconstruction)."""
    scale_from: Literal["points", "cameras"] = "points"
    """What sets the scale: the 95th-percentile distance of the sparse points from the cameras' centre
    (``points``, right for cameras inside a room and around an object alike) or the cameras' extent."""
    scene_radius_m: float | None = None
    """Fix the radius (metres) mapped to 1 instead of measuring it."""
    load_points: bool = True
    """Pass ``register/sparse_pc.ply`` to the model as initial points."""


def read_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] float64 and colours [P, 3] uint8 of a point-cloud PLY (grey when it has no colours)."""
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    try:
        v = ply["vertex"]
    except KeyError:
        raise RunFolderDataError(f"{path}: no 'vertex' element, not a point cloud") from None
    names = v.data.dtype.names
    if not all(k in names for k in ("x", "y", "z")):
        raise RunFolderDataError(f"{path}: vertices need x, y, z; found {names}")
    xyz = np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], axis=1)
    if all(k in names for k in ("red", "green", "blue")):
        rgb = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], axis=1)
        if rgb.dtype.kind == "f":
            rgb = np.clip(rgb * 255.0 + 0.5, 0, 255)
        rgb = rgb.astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    ok = np.all(np.isfinite(xyz), axis=1)
    return xyz[ok], rgb[ok]


def locate_registration(data: Path) -> tuple[Path, Path]:
    """(run folder, transforms.json) for ``--data`` given as a run folder or as a transforms.json."""
    data = Path(data)
    if data.is_file():
        return data.parent.parent, data
    transforms = RunLayout(data).register_transforms
    if not transforms.is_file():
        if not data.is_dir():
            raise RunFolderDataError(f"--data {data}: no such folder (pass a cvd-scene run folder)")
        if not RunLayout(data).run_json.is_file():
            raise RunFolderDataError(
                f"--data {data} is not a cvd-scene run folder (no run.json); make one with `cvd-scene run {data}`"
            )
        record = read_stage_record(data, "register")
        if record is not None and record.get("status") == "failed":
            raise RunFolderDataError(
                f"--data {data}: its register stage failed ({record.get('message') or 'no reason given'}); "
                f"nothing to fit. Redo it: cvd-scene register {data} --redo"
            )
        raise RunFolderDataError(
            f"{data} has no register/transforms.json: its register stage has not run (cvd-scene register {data})"
        )
    return data, transforms


def nerfstudio_cameras(frame: NerfstudioFrame, world_from_cam: np.ndarray, K: np.ndarray, width: int,
                       height: int) -> NsCameras:
    """Pinhole cameras ``world_from_cam [I, 4, 4]`` (run world, OpenCV axes) and ``K [I, 3, 3]`` as nerfstudio
    ``Cameras`` in ``frame`` (OpenGL axes, nerfstudio's normalised world)."""
    camera_to_worlds_gl = frame.poses_to_ns(world_from_cam)  # [I, 3, 4]
    return NsCameras(
        camera_to_worlds=torch.from_numpy(camera_to_worlds_gl).float(),
        fx=torch.from_numpy(K[:, 0, 0:1]).float(),
        fy=torch.from_numpy(K[:, 1, 1:2]).float(),
        cx=torch.from_numpy(K[:, 0, 2:3]).float(),
        cy=torch.from_numpy(K[:, 1, 2:3]).float(),
        width=width,
        height=height,
        camera_type=CameraType.PERSPECTIVE,
    )


def held_out_frames(video_ids, num_frames: int, eval_every_k: int, held_out_video: str | None = None) -> np.ndarray:
    """Which frames [V, F] are held out for evaluation: every frame of ``held_out_video`` when it is given
    (``ValueError`` naming the videos when the run has no such video), else frames ``k - 1, 2k - 1, ...`` of every
    video."""
    video_ids = list(video_ids)
    if held_out_video is None:
        per_frame = (np.arange(num_frames) % eval_every_k) == eval_every_k - 1
        return np.broadcast_to(per_frame, (len(video_ids), num_frames)).copy()
    if held_out_video not in video_ids:
        raise RunFolderDataError(f"held_out_video={held_out_video!r}: the run's videos are {', '.join(video_ids)}")
    if len(video_ids) < 2:
        raise RunFolderDataError(f"held_out_video={held_out_video!r}: the run has one video, nothing to train on")
    out = np.zeros((len(video_ids), num_frames), bool)
    out[video_ids.index(held_out_video)] = True
    return out


@dataclass
class FrameIndex:
    """Which registered frame an image of a split is."""

    video_id: str
    """Video id (``v00``, ...)."""
    frame: int
    """Frame index within the video."""
    video: int
    """Video index (position in the sorted video ids)."""


class CvdSceneDataParser(DataParser):
    """Registered frames of a run folder, in nerfstudio's frame; see the module docstring."""

    config: CvdSceneDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        cfg = self.config
        if cfg.eval_every_k < 2:
            raise ValueError(f"eval_every_k must be >= 2 (hold out every k-th frame), got {cfg.eval_every_k}")
        run_dir, transforms_path = locate_registration(cfg.data)
        tf = read_transforms_json(transforms_path)
        cams = tf.cameras
        base = transforms_path.parent
        ok = np.all(np.isfinite(cams.world_from_cam), axis=(-2, -1))  # [V, F] registered
        if not ok.any():
            raise RunFolderDataError(f"{transforms_path}: no frame has a finite pose")
        positions = cams.positions[ok]  # [R, 3]
        centre = positions.mean(0)
        points_path = base / str(tf.extra.get("ply_file_path", "sparse_pc.ply"))
        xyz, rgb = (read_points_ply(points_path) if points_path.is_file() else (np.zeros((0, 3)), np.zeros((0, 3), np.uint8)))
        if cfg.scene_radius_m is not None:
            radius = float(cfg.scene_radius_m)
        elif cfg.scale_from == "points" and len(xyz) >= 20:
            radius = float(np.percentile(np.linalg.norm(xyz - centre, axis=1), 95))
        else:
            radius = float(np.max(np.linalg.norm(positions - centre, axis=1), initial=0.0))
        if not np.isfinite(radius) or radius < 1e-6:
            radius = 1.0
        frame = nerfstudio_frame(centre, radius)

        held_out = held_out_frames(cams.video_ids, cams.num_frames, cfg.eval_every_k, cfg.held_out_video)  # [V, F]
        if cfg.held_out_video is not None and not ok[cams.video_ids.index(cfg.held_out_video)].any():
            raise RunFolderDataError(f"{transforms_path}: video {cfg.held_out_video} has no registered frame to hold out")
        want_eval = split in ("val", "test")
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}")
        index: list[FrameIndex] = []
        files: list[Path] = []
        for v, vid in enumerate(cams.video_ids):
            for f in range(cams.num_frames):
                if not ok[v, f] or bool(held_out[v, f]) != want_eval:
                    continue
                try:  # a frame path from the file must name a file inside the run folder
                    path = join_inside(run_dir, str((base / tf.file_paths[v][f]).relative_to(run_dir))).resolve()
                except (UnsafePathError, ValueError):
                    raise RunFolderDataError(
                        f"{transforms_path}: frame {frame_key(vid, f)} names {tf.file_paths[v][f]!r}, which is not inside "
                        f"the run folder {run_dir}"
                    ) from None
                if not path.is_file():
                    raise RunFolderDataError(f"{transforms_path}: frame {frame_key(vid, f)} names {path}, which is missing")
                try:  # nerfstudio's loader would fail later without naming the file
                    check_image(path)
                except ImageFileError as e:
                    raise RunFolderDataError(str(e)) from None
                index.append(FrameIndex(vid, f, v))
                files.append(path)
        if not files:
            rule = (f"held_out_video={cfg.held_out_video}" if cfg.held_out_video is not None
                    else f"eval_every_k={cfg.eval_every_k}")  # fmt: skip
            raise RunFolderDataError(
                f"{transforms_path}: the {split} split is empty ({rule}, {cams.num_videos} videos of "
                f"{cams.num_frames} frames, {int(ok.sum())} registered)"
            )
        sel_v = np.array([i.video for i in index])
        sel_f = np.array([i.frame for i in index])
        ns_cams = nerfstudio_cameras(frame, cams.world_from_cam[sel_v, sel_f], cams.K[sel_v, sel_f], cams.width,
                                     cams.height)
        metadata = {
            "cvd_frames": index,
            "cvd_num_videos": cams.num_videos,
            "cvd_run_dir": run_dir,
            "cvd_frame": frame,
        }
        if cfg.load_points and len(xyz):
            metadata["points3D_xyz"] = torch.from_numpy(frame.points_to_ns(xyz)).float()
            metadata["points3D_rgb"] = torch.from_numpy(rgb)
        elif cfg.load_points:
            log.warning("%s: no sparse points; the model starts from random points", points_path)
        return DataparserOutputs(
            image_filenames=files,
            cameras=ns_cams,
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            dataparser_transform=torch.from_numpy(frame.transform).float(),
            dataparser_scale=frame.scale,
            metadata=metadata,
        )


def frame_of_outputs(outputs: DataparserOutputs) -> NerfstudioFrame:
    """The world <-> nerfstudio similarity of dataparser outputs made here."""
    return outputs.metadata["cvd_frame"]
