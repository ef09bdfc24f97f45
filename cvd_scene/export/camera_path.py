"""The planned trajectories as a flythrough ``camera_path.json`` in nerfstudio's camera-path schema.

nerfstudio 1.1.5 reads this file in two places: ``ns-render camera-path --camera-path-filename FILE`` (via
``nerfstudio.cameras.camera_paths.get_path_from_json``: ``render_height``, ``render_width``, ``seconds``,
optional ``camera_type`` and ``crop``, and per rendered frame ``camera_path[i].camera_to_world`` (a row-major
flattened 4x4 camera-to-world with OpenGL camera axes) and ``camera_path[i].fov`` (vertical, degrees)); and the
viewer's "Load path" button (``keyframes[i].matrix``/``fov``/``aspect``, ``default_fov``,
``default_transition_sec``), which splines through the keyframes again. Both are written.

Frames: poses are in the frame of the nerfstudio model they will be rendered with. When the fit's nerfstudio
output has a ``dataparser_transforms.json`` (``transform`` 3x4 and ``scale``), the run's world poses are mapped
into it (as nerfstudio's dataparser maps training poses); otherwise they stay in the run's Y-up metric world (the
frame of the glTF exports; ``scene.ply`` is turned 180 degrees about z for splat viewers, see
:mod:`cvd_scene.export.axes`). A ``cvd_scene`` block records which frame was used and the world poses, so either
use is possible; nerfstudio ignores it.

Pure numpy and scipy; must not import torch or nerfstudio.
"""

from __future__ import annotations

import math

import numpy as np

from cvd_scene.cameras import Cameras, opencv_to_opengl, rigid


def vertical_fov_deg(fy: float, height: int) -> float:
    """Vertical field of view (degrees) of a pinhole camera with focal ``fy`` pixels and ``height`` rows."""
    return math.degrees(2.0 * math.atan(height / (2.0 * fy)))


def _interpolate(world_from_a: np.ndarray, world_from_b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[T, 4, 4] poses between two poses: positions lerped, rotations slerped, at fractions ``t`` in [0, 1]."""
    from scipy.spatial.transform import Rotation, Slerp

    rots = Rotation.from_matrix(np.stack([world_from_a[:3, :3], world_from_b[:3, :3]]))
    R = Slerp([0.0, 1.0], rots)(t).as_matrix()  # [T, 3, 3]
    p = (1 - t)[:, None] * world_from_a[:3, 3] + t[:, None] * world_from_b[:3, 3]  # [T, 3]
    return rigid(R, p)


def flythrough(
    cameras: Cameras, fps: float = 30.0, transition_s: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Every video of ``cameras`` played in turn at ``fps``, joined by eased ``transition_s`` moves.

    Returns ``world_from_cam`` [T, 4, 4] (OpenCV axes, run's world) and the vertical FOV [T] in degrees. Frames
    with NaN poses (unregistered) are skipped.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if transition_s < 0:
        raise ValueError(f"transition_s must be >= 0, got {transition_s}")
    poses: list[np.ndarray] = []
    fovs: list[np.ndarray] = []
    last = None
    for v in range(cameras.num_videos):
        ok = np.all(np.isfinite(cameras.world_from_cam[v].reshape(cameras.num_frames, -1)), axis=1)  # [F]
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            continue
        times = np.asarray(cameras.time_s, np.float64)[idx]
        world_from_cam = cameras.world_from_cam[v, idx]  # [F', 4, 4]
        fov = np.array([vertical_fov_deg(cameras.K[v, i, 1, 1], cameras.height) for i in idx])  # [F']
        if last is not None and transition_s > 0:
            n = max(1, round(transition_s * fps))
            t = np.arange(1, n + 1) / (n + 1)
            ease = t * t * (3 - 2 * t)  # smoothstep: starts and ends at rest
            poses.append(_interpolate(last[0], world_from_cam[0], ease))
            fovs.append((1 - ease) * last[1] + ease * fov[0])
        if len(idx) == 1:
            samples_world_from_cam, samples_fov = world_from_cam, fov
        else:
            ts = np.arange(times[0], times[-1] + 1e-9, 1.0 / fps)  # [T_v]
            seg = np.clip(np.searchsorted(times, ts, side="right") - 1, 0, len(times) - 2)
            frac = (ts - times[seg]) / np.maximum(times[seg + 1] - times[seg], 1e-12)
            samples_world_from_cam = np.stack(
                [_interpolate(world_from_cam[s], world_from_cam[s + 1], np.array([f]))[0] for s, f in zip(seg, frac)]
            )  # [T_v, 4, 4]
            samples_fov = (1 - frac) * fov[seg] + frac * fov[seg + 1]
        poses.append(samples_world_from_cam)
        fovs.append(samples_fov)
        last = (world_from_cam[-1], fov[-1])
    if not poses:
        raise ValueError("no camera with a finite pose: cannot make a camera path")
    return np.concatenate(poses), np.concatenate(fovs)


def nerfstudio_from_world(transform: np.ndarray | None, scale: float = 1.0) -> np.ndarray:
    """4x4 similarity mapping run-world points into a nerfstudio model's frame (dataparser ``transform``, then
    ``scale``); identity when ``transform`` is None."""
    M = np.eye(4)
    if transform is not None:
        T = np.asarray(transform, np.float64)
        if T.shape not in ((3, 4), (4, 4)):
            raise ValueError(f"dataparser transform must be 3x4 or 4x4, got {T.shape=}")
        M[:3, :4] = T[:3, :4]
    S = np.diag([scale, scale, scale, 1.0])
    return S @ M


def camera_path_json(
    cameras: Cameras,
    fps: float = 30.0,
    transition_s: float = 1.0,
    render_size: tuple[int, int] | None = None,
    ns_from_world: np.ndarray | None = None,
    frame_name: str = "world",
) -> dict:
    """The ``camera_path.json`` document for ``cameras`` (see the module docstring).

    ``render_size`` is (width, height), default the cameras' size; ``ns_from_world`` (4x4 similarity from
    :func:`nerfstudio_from_world`) maps poses into a nerfstudio model's frame, default none (run's world).
    """
    width, height = render_size or (cameras.width, cameras.height)
    M = np.eye(4) if ns_from_world is None else np.asarray(ns_from_world, np.float64)
    scale = float(np.cbrt(np.linalg.det(M[:3, :3])))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"ns_from_world must be a similarity with positive scale, got det={np.linalg.det(M[:3, :3])}"
        )

    def to_path_frame(world_from_cam_cv: np.ndarray) -> np.ndarray:
        gl = opencv_to_opengl(world_from_cam_cv)  # [..., 4, 4] OpenGL camera axes
        out = M @ gl
        out[..., :3, :3] /= scale  # keep a pure rotation: the scale acts on positions only
        return out

    world_from_cam, fov = flythrough(cameras, fps, transition_s)
    frames = to_path_frame(world_from_cam)  # [T, 4, 4]
    seconds = len(frames) / fps
    ok = [
        (v, f)
        for v in range(cameras.num_videos)
        for f in range(cameras.num_frames)
        if np.all(np.isfinite(cameras.world_from_cam[v, f]))
    ]
    keyframes = []
    for v, f in ok:
        keyframes.append(
            {
                "matrix": to_path_frame(cameras.world_from_cam[v, f]).reshape(-1).tolist(),
                "fov": vertical_fov_deg(cameras.K[v, f, 1, 1], cameras.height),
                "aspect": width / height,
                "override_transition_enabled": False,
                "override_transition_sec": None,
            }
        )
    default_fov = float(np.median(fov))
    return {
        "camera_type": "perspective",
        "render_height": int(height),
        "render_width": int(width),
        "fps": float(fps),
        "seconds": float(seconds),
        "is_cycle": False,
        "smoothness_value": 0.5,
        "default_fov": default_fov,
        "default_transition_sec": float(max(seconds / max(len(keyframes), 1), 1e-3)),
        "keyframes": keyframes,
        "camera_path": [
            {"camera_to_world": m.reshape(-1).tolist(), "fov": float(a), "aspect": width / height}
            for m, a in zip(frames, fov)
        ],
        "crop": None,
        "cvd_scene": {
            "frame": frame_name,
            "path_from_world": M.tolist(),
            "world_up": "+y",
            "units": "m",
            "videos": [cameras.video_ids[v] for v in range(cameras.num_videos)],
            "world_camera_to_world_opengl": [opencv_to_opengl(m).reshape(-1).tolist() for m in world_from_cam],
        },
    }


def supersplat_viewer_settings(
    cameras: Cameras, fps: float = 30.0, transition_s: float = 1.0, max_keyframes: int = 1000
) -> dict:
    """The flythrough as SuperSplat viewer settings (version 2): one ``animTrack`` of position / target / FOV
    keyframes that the viewer plays at start, in the frame the viewer shows.

    The SuperSplat viewer turns every splat scene 180 degrees about z (it reads PLY, ``.splat`` and SPZ as
    y-down); ``scene.ply`` holds the run's world turned that way (the readers' frame), so the viewer shows the
    run's world and these settings are in it: ``splat-transform scene.ply --viewer-settings viewer_settings.json
    scene.html`` writes a self-contained web page that plays this path.
    """
    world_from_cam, fov = flythrough(cameras, fps, transition_s)
    step = max(1, math.ceil(len(world_from_cam) / max_keyframes))
    idx = np.arange(0, len(world_from_cam), step)
    if idx[-1] != len(world_from_cam) - 1:
        idx = np.append(idx, len(world_from_cam) - 1)
    positions = world_from_cam[idx, :3, 3]  # [K, 3]
    targets = positions + world_from_cam[idx, :3, 2]  # one metre along the optical axis (OpenCV +z)
    fovs = np.clip(fov[idx], 10.0, 120.0)
    duration = max((len(world_from_cam) - 1) / fps, 0.1)
    initial = {"position": positions[0].tolist(), "target": targets[0].tolist(), "fov": float(fovs[0])}
    return {
        "version": 2,
        "tonemapping": "none",
        "highPrecisionRendering": False,
        "background": {"color": [0, 0, 0]},
        "postEffectSettings": {
            "sharpness": {"enabled": False, "amount": 0},
            "bloom": {"enabled": False, "intensity": 0.1, "blurLevel": 2},
            "grading": {"enabled": False, "brightness": 1, "contrast": 1, "saturation": 1, "tint": [1, 1, 1]},
            "vignette": {"enabled": False, "intensity": 0.5, "inner": 0.3, "outer": 0.75, "curvature": 1},
            "fringing": {"enabled": False, "intensity": 0.5},
        },
        "animTracks": [
            {
                "name": "planned flythrough",
                "duration": float(duration),
                "frameRate": float(fps),
                "loopMode": "repeat",
                "interpolation": "spline",
                "smoothness": 1.0,
                "keyframes": {
                    "times": [float(i) for i in idx],  # frame numbers at frameRate
                    "values": {
                        "position": positions.reshape(-1).tolist(),
                        "target": targets.reshape(-1).tolist(),
                        "fov": fovs.tolist(),
                    },
                },
            }
        ],
        "cameras": [{"initial": initial}],
        "annotations": [],
        "startMode": "animTrack",
    }
