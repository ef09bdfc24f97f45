"""The similarity between a run's world frame and the frame nerfstudio trains in, and its inverse on Gaussians.

nerfstudio works in a frame with +z up whose scene fits in about [-1, 1]^3. The dataparser maps the run's Y-up
metric world there with ``x_ns = scale * (R x + t)`` (nerfstudio's ``dataparser_transform`` [R | t] and
``dataparser_scale``); :func:`gaussians_to_world` undoes it on fitted Gaussians (positions, log-scales, rotations
and the view-dependent SH coefficients), so exports land back in the run's world.

numpy and torch only (torch for the SH basis); must not import nerfstudio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvd_scene.cameras import invert_rigid, opencv_to_opengl, rotation_to_quaternion
from cvd_scene.gaussians import Gaussians

Z_UP_FROM_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Rotation taking the run's +y up to nerfstudio's +z up (x kept, a quarter turn about x)."""


@dataclass(frozen=True)
class NerfstudioFrame:
    """``x_ns = scale * (rotation @ x_world + translation)``."""

    rotation: np.ndarray
    """[3, 3] float64 rotation."""
    translation: np.ndarray
    """[3] float64 translation (before scaling)."""
    scale: float
    """Uniform scale."""

    @property
    def transform(self) -> np.ndarray:
        """[3, 4] nerfstudio's ``dataparser_transform``."""
        return np.concatenate([self.rotation, self.translation[:, None]], axis=1)

    def points_to_ns(self, x_world: np.ndarray) -> np.ndarray:
        """Points [..., 3] from the run's world to the nerfstudio frame."""
        return self.scale * (np.asarray(x_world, np.float64) @ self.rotation.T + self.translation)

    def points_to_world(self, x_ns: np.ndarray) -> np.ndarray:
        """Points [..., 3] from the nerfstudio frame to the run's world."""
        return (np.asarray(x_ns, np.float64) / self.scale - self.translation) @ self.rotation

    def poses_to_ns(self, world_from_cam: np.ndarray) -> np.ndarray:
        """Our ``world_from_cam`` [..., 4, 4] (OpenCV axes) -> nerfstudio ``camera_to_worlds`` [..., 3, 4]
        (OpenGL axes, nerfstudio frame)."""
        gl = opencv_to_opengl(world_from_cam)  # [..., 4, 4]
        out = np.empty(gl.shape[:-2] + (3, 4))
        out[..., :3, :3] = self.rotation @ gl[..., :3, :3]
        out[..., :3, 3] = self.points_to_ns(gl[..., :3, 3])
        return out

    def viewmats(self, world_from_cam: np.ndarray) -> np.ndarray:
        """World-to-camera [..., 4, 4] (OpenCV axes) in the nerfstudio frame, for rasterising registered cameras."""
        ns_world_from_cam = np.asarray(world_from_cam, np.float64).copy()
        ns_world_from_cam[..., :3, :3] = self.rotation @ ns_world_from_cam[..., :3, :3]
        ns_world_from_cam[..., :3, 3] = self.points_to_ns(ns_world_from_cam[..., :3, 3])
        return invert_rigid(ns_world_from_cam)

    def to_json(self) -> dict:
        return {"transform": self.transform.tolist(), "scale": float(self.scale)}

    @classmethod
    def from_json(cls, doc: dict) -> NerfstudioFrame:
        """From nerfstudio's ``dataparser_transforms.json`` (``transform`` 3x4, ``scale``)."""
        T = np.asarray(doc["transform"], np.float64)
        if T.shape not in ((3, 4), (4, 4)):
            raise ValueError(f"dataparser transform must be 3x4 or 4x4, got {T.shape}")
        scale = float(doc["scale"])
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"dataparser scale must be positive, got {scale}")
        return cls(T[:3, :3].copy(), T[:3, 3].copy(), scale)


def nerfstudio_frame(centre: np.ndarray, radius_m: float) -> NerfstudioFrame:
    """The frame with +z up, ``centre`` (run world) at the origin and ``radius_m`` mapped to 1."""
    if not np.isfinite(radius_m) or radius_m <= 0:
        raise ValueError(f"radius_m must be positive, got {radius_m}")
    R = Z_UP_FROM_Y_UP.copy()
    return NerfstudioFrame(R, -R @ np.asarray(centre, np.float64), 1.0 / float(radius_m))


# ------------------------------------------------------------------------------------------ on Gaussians


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions [..., 4] (w, x, y, z): the rotation ``b`` then ``a``."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def sh_rotation_matrices(rotation: np.ndarray, degree: int, seed: int = 0) -> list[np.ndarray]:
    """Per band l = 1..degree, the [2l+1, 2l+1] matrix D_l with Y_l(rotation @ d) = D_l Y_l(d) for all d.

    Solved by least squares on random directions (exact: each band spans a (2l+1)-dimensional invariant space).
    """
    import torch

    from cvd_scene.fit.raster import sh_basis

    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(64, 3))
    basis = sh_basis(degree, torch.from_numpy(dirs)).numpy()  # [S, B]
    rotated = sh_basis(degree, torch.from_numpy(dirs @ np.asarray(rotation, np.float64).T)).numpy()
    out = []
    for l in range(1, degree + 1):
        band = slice(l * l, (l + 1) * (l + 1))
        # rotated[:, band] = basis[:, band] @ D_l^T
        Dt, *_ = np.linalg.lstsq(basis[:, band], rotated[:, band], rcond=None)
        out.append(Dt.T)
    return out


def rotate_sh_rest(sh_rest: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """SH coefficients [N, K, 3] (bands 1.. in the 3DGS order) for directions given in a frame rotated by
    ``rotation``: returns c' with f'(d) = f(rotation @ d), i.e. ``rotation`` maps the new frame's directions
    into the frame the coefficients were fitted in."""
    K = sh_rest.shape[1]
    degree = {0: 0, 3: 1, 8: 2, 15: 3}[K]
    if degree == 0:
        return sh_rest.copy()
    out = np.empty_like(sh_rest)
    for l, D in enumerate(sh_rotation_matrices(rotation, degree), start=1):
        band = slice(l * l - 1, (l + 1) * (l + 1) - 1)  # without the DC term
        # f(R d) = sum_m c_m Y_m(R d) = sum_m c_m sum_n D_mn Y_n(d)  =>  c'_n = sum_m D_mn c_m
        out[:, band, :] = np.einsum("mn,kmc->knc", D, sh_rest[:, band, :])
    return out


def gaussians_to_world(gaussians_ns: Gaussians, frame: NerfstudioFrame) -> Gaussians:
    """Gaussians fitted in the nerfstudio frame -> the same Gaussians in the run's world (a similarity)."""
    R_inv = frame.rotation.T  # world_from_ns rotation
    means = frame.points_to_world(gaussians_ns.means)
    log_scales = gaussians_ns.log_scales - np.log(frame.scale)
    q_inv = rotation_to_quaternion(R_inv)  # [4]
    quats = quat_multiply(np.broadcast_to(q_inv, gaussians_ns.quats_wxyz.shape), gaussians_ns.quats_wxyz)
    # A world direction d maps to rotation @ d in the fitted frame.
    sh_rest = rotate_sh_rest(gaussians_ns.sh_rest, frame.rotation)
    return Gaussians(means, log_scales, quats, gaussians_ns.opacity_logits, gaussians_ns.sh_dc, sh_rest)
