"""The camera type of cvd-scene and every conversion between camera conventions.

Inside the project there is one convention (see docs/architecture.md):

* world: right-handed, +y up, metres, floor at y = 0;
* camera axes: OpenCV (+x right, +y down, +z forward);
* pose: ``world_from_cam`` 4x4 (float64 for geometry);
* intrinsics: pixels of the image they describe, pixel centres at +0.5.

Every other convention (nerfstudio/OpenGL camera axes, COLMAP ``cam_from_world``, the model's
relative-to-first-frame poses in model units) is reached through exactly one function here, each with a
round-trip test. Pure numpy: must not import torch, the model package or any heavy library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvd_scene.paths import check_id

# Flips camera y and z: OpenCV (x right, y down, z forward) <-> OpenGL (x right, y up, z backward).
_OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Cameras:
    """A plan of ``V`` videos with ``F`` frames each, all of one image size.

    Poses are ``world_from_cam`` with OpenCV camera axes in the run's Y-up metric world; intrinsics are in
    pixels of a ``width`` x ``height`` image with pixel centres at +0.5.
    """

    world_from_cam: np.ndarray
    """[V, F, 4, 4] float64 camera-to-world transforms (OpenCV camera axes)."""
    K: np.ndarray
    """[V, F, 3, 3] float64 pinhole intrinsics in pixels."""
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""
    video_ids: tuple[str, ...] = ()
    """One id per video (``v00``, ``v01``, ... when not given)."""
    time_s: np.ndarray | None = None
    """[F] float64 time of every frame index in seconds (frame k of every video is the same moment)."""
    fps: float = 8.0
    """Frame rate used for ``time_s`` when it is not given and for videos."""
    extras: dict = field(default_factory=dict, compare=False)
    """Free-form metadata carried along (e.g. the look-at point of a planned pattern)."""
    poses_known: bool = True
    """False for pictures imported without poses: ``world_from_cam`` then holds identities that mean nothing
    (only the intrinsics and sizes are real), and every stage that needs poses skips or estimates them."""

    def __post_init__(self) -> None:
        world_from_cam = np.asarray(self.world_from_cam, dtype=np.float64)
        K = np.asarray(self.K, dtype=np.float64)
        if world_from_cam.ndim != 4 or world_from_cam.shape[-2:] != (4, 4):
            raise ValueError(f"world_from_cam must be [V, F, 4, 4], got {world_from_cam.shape=}")
        if K.shape == (3, 3):
            K = np.broadcast_to(K, world_from_cam.shape[:2] + (3, 3)).copy()
        if K.shape != world_from_cam.shape[:2] + (3, 3):
            raise ValueError(f"K must be [V, F, 3, 3] matching world_from_cam, got {K.shape=} {world_from_cam.shape=}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got width={self.width} height={self.height}")
        V, F = world_from_cam.shape[:2]
        ids = tuple(self.video_ids) if self.video_ids else tuple(f"v{i:02d}" for i in range(V))
        if len(ids) != V or len(set(ids)) != V:
            raise ValueError(f"need {V} distinct video ids, got {ids}")
        for vid in ids:  # ids name folders and files of the run
            check_id(vid)
        time_s = np.arange(F, dtype=np.float64) / self.fps if self.time_s is None else np.asarray(self.time_s, np.float64)
        if time_s.shape != (F,):
            raise ValueError(f"time_s must be [F]={F}, got {time_s.shape=}")
        object.__setattr__(self, "world_from_cam", world_from_cam)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "video_ids", ids)
        object.__setattr__(self, "time_s", time_s)

    @property
    def num_videos(self) -> int:
        return self.world_from_cam.shape[0]

    @property
    def num_frames(self) -> int:
        return self.world_from_cam.shape[1]

    @property
    def positions(self) -> np.ndarray:
        """[V, F, 3] camera centres in the world."""
        return self.world_from_cam[..., :3, 3]

    def select(self, videos: list[int] | slice | None = None, frames: list[int] | slice | None = None) -> Cameras:
        """A sub-plan of some videos and/or frames (same image size)."""
        vsel = slice(None) if videos is None else videos
        fsel = slice(None) if frames is None else frames
        world_from_cam = self.world_from_cam[vsel][:, fsel]
        ids = np.asarray(self.video_ids, dtype=object)[vsel]
        return Cameras(
            world_from_cam=world_from_cam,
            K=self.K[vsel][:, fsel],
            width=self.width,
            height=self.height,
            video_ids=tuple(str(i) for i in np.atleast_1d(ids)),
            time_s=np.asarray(self.time_s)[fsel],
            fps=self.fps,
            extras=dict(self.extras),
            poses_known=self.poses_known,
        )

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras for an image resized (not cropped) to ``width`` x ``height``."""
        K = scale_intrinsics(self.K, width / self.width, height / self.height)
        return Cameras(
            self.world_from_cam, K, width, height, self.video_ids, self.time_s, self.fps, dict(self.extras),
            self.poses_known,
        )


# --------------------------------------------------------------------------------------------- basic pieces


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """[3, 3] pinhole matrix from focal lengths and principal point, in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def intrinsics_from_fov(fov_x_deg: float, width: int, height: int) -> np.ndarray:
    """[3, 3] square-pixel intrinsics with a horizontal field of view and a centred principal point."""
    fx = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2.0)
    return intrinsics_matrix(fx, fx, width / 2.0, height / 2.0)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics [..., 3, 3] for an image resized by ``sx`` horizontally and ``sy`` vertically.

    With pixel centres at +0.5 the principal point scales like the focal length.
    """
    S = np.diag([sx, sy, 1.0])
    return S @ np.asarray(K, dtype=np.float64)


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] (exact, without a general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[..., 4, 4] from rotations [..., 3, 3] and translations [..., 3]."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(R.shape[:-2], t.shape[:-1]) + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 1.0, 0.0)) -> np.ndarray:
    """``world_from_cam`` [..., 4, 4] (OpenCV axes) of cameras at ``eye`` [..., 3] looking at ``target``.

    The camera's +y (image down) points along world ``-up`` as far as the view direction allows.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    up = np.broadcast_to(np.asarray(up, dtype=np.float64), np.broadcast_shapes(eye.shape, target.shape))
    z = target - eye
    norm_z = np.linalg.norm(z, axis=-1, keepdims=True)
    if not np.all(norm_z > 1e-9):  # also NaN
        raise ValueError("look_at: a camera and the point it looks at coincide (no view direction)")
    z = z / norm_z
    x = np.cross(z, up)
    norm_x = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norm_x < 1e-9):
        raise ValueError("look_at: view direction is parallel to the up vector")
    x = x / norm_x
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=-1)  # columns are the camera axes in world coordinates
    return rigid(R, eye)


def check_rotations(world_from_cam: np.ndarray, atol: float = 1e-6) -> None:
    """Raise ``ValueError`` unless every pose [..., 4, 4] has an orthonormal rotation with det +1."""
    T = np.asarray(world_from_cam, dtype=np.float64)
    R = T[..., :3, :3]
    err = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(initial=0.0)
    det = np.linalg.det(R)
    if err > atol or np.any(np.abs(det - 1.0) > atol):
        raise ValueError(f"poses are not rigid: max |R^T R - I| = {err:.2e}, det range [{det.min():.6f}, {det.max():.6f}]")
    if not np.allclose(T[..., 3, :], [0.0, 0.0, 0.0, 1.0], atol=atol):
        raise ValueError("poses must have last row [0, 0, 0, 1]")


def project(points_in_world: np.ndarray, world_from_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points [..., N, 3] into cameras; returns pixels [..., N, 2] and depths [..., N]."""
    cam_from_world = invert_rigid(world_from_cam)
    p = points_in_world @ np.swapaxes(cam_from_world[..., :3, :3], -1, -2) + cam_from_world[..., None, :3, 3]
    z = p[..., 2]
    uvw = p @ np.swapaxes(K, -1, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[..., :2] / uvw[..., 2:3]
    return uv, z


# ----------------------------------------------------------------------------- conversions at boundaries


def opencv_to_opengl(world_from_cam: np.ndarray) -> np.ndarray:
    """Our ``world_from_cam`` (OpenCV axes) -> nerfstudio/OpenGL ``transform_matrix`` [..., 4, 4]."""
    return np.asarray(world_from_cam, dtype=np.float64) @ _OPENCV_FROM_OPENGL


def opengl_to_opencv(transform_matrix: np.ndarray) -> np.ndarray:
    """nerfstudio/OpenGL ``transform_matrix`` [..., 4, 4] -> our ``world_from_cam`` (OpenCV axes)."""
    return np.asarray(transform_matrix, dtype=np.float64) @ _OPENCV_FROM_OPENGL


def to_colmap(world_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our ``world_from_cam`` [..., 4, 4] -> COLMAP ``cam_from_world`` as (quaternion wxyz [..., 4], t [..., 3])."""
    cam_from_world = invert_rigid(world_from_cam)
    return rotation_to_quaternion(cam_from_world[..., :3, :3]), cam_from_world[..., :3, 3].copy()


def from_colmap(q_wxyz: np.ndarray, t: np.ndarray) -> np.ndarray:
    """COLMAP ``cam_from_world`` (quaternion wxyz [..., 4], t [..., 3]) -> our ``world_from_cam`` [..., 4, 4]."""
    return invert_rigid(rigid(quaternion_to_rotation(q_wxyz), t))


def to_model_poses(world_from_cam: np.ndarray, model_units_per_metre: float) -> np.ndarray:
    """Poses of videos [..., F, 4, 4] -> the model's poses: relative to each video's first frame, model units.

    Returns ``first_from_cam`` float32 [..., F, 4, 4] with frame 0 the identity and translations multiplied by
    ``model_units_per_metre`` (CameraCtrl/CVD were trained on RealEstate10K's arbitrary SLAM scale).
    """
    world_from_cam = np.asarray(world_from_cam, dtype=np.float64)
    rel = invert_rigid(world_from_cam[..., :1, :, :]) @ world_from_cam
    rel[..., :3, 3] *= model_units_per_metre
    return rel.astype(np.float32)


def from_model_poses(model_poses: np.ndarray, world_from_first: np.ndarray, model_units_per_metre: float) -> np.ndarray:
    """Inverse of :func:`to_model_poses`, given each video's first camera ``world_from_first`` [..., 4, 4]."""
    rel = np.asarray(model_poses, dtype=np.float64).copy()
    rel[..., :3, 3] /= model_units_per_metre
    return np.asarray(world_from_first, dtype=np.float64)[..., None, :, :] @ rel


# ------------------------------------------------------------------------------------------- rotations


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    q = np.empty((m.shape[0], 4))
    tr = np.trace(m, axis1=1, axis2=2)
    # Pick the numerically largest of w, x, y, z per matrix (Shepperd's method).
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    for i in range(m.shape[0]):
        r = m[i]
        if k[i] == 0:
            s = np.sqrt(1.0 + tr[i]) * 2
            q[i] = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
        elif k[i] == 1:
            s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
            q[i] = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
        elif k[i] == 2:
            s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
            q[i] = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
        else:
            s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
            q[i] = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(R.shape[:-2] + (4,))


def quaternion_to_rotation(q_wxyz: np.ndarray) -> np.ndarray:
    """Quaternions [..., 4] (w, x, y, z; normalised here) -> rotation matrices [..., 3, 3]."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def axis_angle_to_rotation(axis: np.ndarray, angle_rad: np.ndarray | float) -> np.ndarray:
    """Rodrigues: rotation [..., 3, 3] by ``angle_rad`` about ``axis`` [..., 3]."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    a = np.asarray(angle_rad, dtype=np.float64)[..., None, None]
    x, y, z = np.moveaxis(axis, -1, 0)
    zero = np.zeros_like(x)
    Kx = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    return np.eye(3) + np.sin(a) * Kx + (1 - np.cos(a)) * (Kx @ Kx)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations [..., 3, 3]."""
    R = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between vectors [..., 3] (nan where either is zero)."""
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(a * b, axis=-1) / (na * nb)
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))
