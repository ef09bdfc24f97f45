"""Pose-error maths shared by registration and the consistency evaluation.

Similarity (Sim3) alignment of registered cameras to planned ones, relative poses, rotation / translation-direction
errors, the pose AUC of the CVD paper's protocol (the SuperGlue-style area under the recall curve) and the
symmetric epipolar error used for match precision. Cameras follow the project convention: ``world_from_cam``
4x4 with OpenCV axes.

Pure numpy; must not import pycolmap, torch or any stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvd_scene.cameras import angle_between_deg, invert_rigid, rotation_angle_deg

AUC_THRESHOLDS_DEG: tuple[float, ...] = (5.0, 10.0, 20.0)
"""Angular thresholds of every AUC this project reports (the CVD paper's)."""


# ------------------------------------------------------------------------------------------ similarity


@dataclass(frozen=True)
class Sim3:
    """A similarity ``x_dst = scale * rotation @ x_src + translation`` (e.g. ``world_from_model``)."""

    scale: float
    """Isotropic scale (dst units per src unit)."""
    rotation: np.ndarray
    """[3, 3] rotation."""
    translation: np.ndarray
    """[3] translation in dst units."""

    @staticmethod
    def identity() -> Sim3:
        return Sim3(1.0, np.eye(3), np.zeros(3))

    @property
    def matrix(self) -> np.ndarray:
        """[4, 4] homogeneous matrix."""
        M = np.eye(4)
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Points [..., 3] in src -> [..., 3] in dst."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def apply_poses(self, world_from_cam: np.ndarray) -> np.ndarray:
        """Camera poses ``src_from_cam`` [..., 4, 4] -> ``dst_from_cam`` [..., 4, 4] (rigid: the scale moves only
        the centres)."""
        T = np.array(world_from_cam, dtype=np.float64)
        T[..., :3, :3] = self.rotation @ T[..., :3, :3]
        T[..., :3, 3] = self.apply_points(T[..., :3, 3])
        return T

    def to_dict(self) -> dict:
        return {
            "scale": float(self.scale),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
        }


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation [3, 3] nearest (Frobenius) to the matrix ``M`` [3, 3]."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity mapping points ``src`` [N, 3] onto ``dst`` [N, 3] (Umeyama 1991).

    Needs N >= 3 points not all on one line for a unique rotation.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs src and dst [N>=3, 3] of one shape, got {src.shape=} {dst.shape=}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    var_s = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var_s) if with_scale and var_s > 0 else 1.0
    return Sim3(s, R, mu_d - s * R @ mu_s)


def _fit_sim3_from_poses(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> Sim3:
    """Rotation from the cameras' orientations, then scale and translation from their centres (weighted LSQ)."""
    w = weights / weights.sum()
    # Each camera i votes dst_from_src = R_dst_i @ R_src_i^T; the chordal mean is the projected weighted sum.
    votes = dst[:, :3, :3] @ np.swapaxes(src[:, :3, :3], -1, -2)  # [N, 3, 3]
    R = project_to_rotation(np.einsum("n,nij->ij", w, votes))
    c_src = src[:, :3, 3] @ R.T  # [N, 3] rotated source centres
    c_dst = dst[:, :3, 3]
    mu_s, mu_d = w @ c_src, w @ c_dst
    xs, xd = c_src - mu_s, c_dst - mu_d
    var_s = float(w @ (xs**2).sum(1))
    s = float(w @ (xs * xd).sum(1)) / var_s if var_s > 1e-18 else 1.0
    if s <= 0:
        s = 1.0
    return Sim3(s, R, mu_d - s * mu_s)


def align_poses(
    src_world_from_cam: np.ndarray,
    dst_world_from_cam: np.ndarray,
    position_threshold: float | None = None,
    rotation_threshold_deg: float = 5.0,
    iterations: int = 5,
) -> tuple[Sim3, np.ndarray]:
    """Robust similarity ``dst_from_src`` taking cameras ``src`` [N, 4, 4] onto ``dst`` [N, 4, 4].

    The rotation comes from the cameras' orientations (well conditioned even when the centres barely move, as in
    look-around plans), scale and translation from the centres. Robust by iterated refitting on inliers: a camera is
    an inlier when, after alignment, its centre is within ``position_threshold`` (dst units; default 5 % of the
    spread of the dst centres) and its orientation within ``rotation_threshold_deg`` -- or within 3x the current
    median errors, whichever is larger. Returns the transform and the inlier mask [N].
    """
    src = np.asarray(src_world_from_cam, np.float64)
    dst = np.asarray(dst_world_from_cam, np.float64)
    if src.shape != dst.shape or src.ndim != 3 or src.shape[1:] != (4, 4) or len(src) < 2:
        raise ValueError(
            f"align_poses needs src and dst [N>=2, 4, 4] of one shape, got {src.shape=} {dst.shape=}"
        )
    if position_threshold is None:
        spread = np.linalg.norm(dst[:, :3, 3] - dst[:, :3, 3].mean(0), axis=1).max()
        position_threshold = max(0.05 * spread, 1e-9)
    inliers = np.ones(len(src), bool)
    sim = _fit_sim3_from_poses(src, dst, np.ones(len(src)))
    for _ in range(iterations):
        aligned = sim.apply_poses(src)
        pos_err = np.linalg.norm(aligned[:, :3, 3] - dst[:, :3, 3], axis=1)
        rot_err = rotation_angle_deg(aligned[:, :3, :3], dst[:, :3, :3])
        pos_tol = max(position_threshold, 3.0 * float(np.median(pos_err[inliers])))
        rot_tol = max(rotation_threshold_deg, 3.0 * float(np.median(rot_err[inliers])))
        new = (pos_err <= pos_tol) & (rot_err <= rot_tol)
        if new.sum() < 2:
            break
        sim = _fit_sim3_from_poses(src, dst, new.astype(np.float64))
        if np.array_equal(new, inliers):
            break
        inliers = new
    return sim, inliers


# ------------------------------------------------------------------------------------------ pose errors


def relative_pose(world_from_cam_1: np.ndarray, world_from_cam_2: np.ndarray) -> np.ndarray:
    """``cam2_from_cam1`` [..., 4, 4] between cameras given as ``world_from_cam`` [..., 4, 4]."""
    return invert_rigid(world_from_cam_2) @ np.asarray(world_from_cam_1, np.float64)


def translation_direction_error_deg(
    t_est: np.ndarray, t_true: np.ndarray, sign_ambiguous: bool = False
) -> np.ndarray:
    """Angle [...] in degrees between translation directions [..., 3].

    ``sign_ambiguous`` folds the angle into [0, 90] (an essential matrix fixes t only up to sign unless the
    cheirality check resolved it; the paper's protocol folds it). NaN where either vector is zero.
    """
    err = angle_between_deg(np.asarray(t_est, np.float64), np.asarray(t_true, np.float64))
    return np.minimum(err, 180.0 - err) if sign_ambiguous else err


def pose_auc(errors_deg: np.ndarray, thresholds_deg: tuple[float, ...] = AUC_THRESHOLDS_DEG) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1].

    The recall curve is piecewise linear through (0, 0) and (e_i, i / N) for the sorted errors below the threshold
    and flat after the last of them, as in the protocol the CVD paper reused; infinite or NaN errors (failed
    estimates) count in N and are never recalled.
    """
    e = np.asarray(errors_deg, np.float64).ravel()
    if e.size == 0:
        return [float("nan")] * len(thresholds_deg)
    e = np.where(np.isnan(e), np.inf, e)
    e = np.sort(e)
    recall = np.arange(1, e.size + 1) / e.size
    e = np.concatenate([[0.0], e])
    recall = np.concatenate([[0.0], recall])
    out = []
    for t in thresholds_deg:
        last = int(np.searchsorted(e, t, side="left"))
        x = np.concatenate([e[:last], [t]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        out.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / t))
    return out


def error_stats(errors: np.ndarray, auc_thresholds_deg: tuple[float, ...] | None = None) -> dict:
    """Median, 90th percentile, mean and max of finite errors [N] (and AUC x100 when thresholds are given).

    ``count`` is the number of values, ``failed`` how many were not finite (failed estimates); the AUC counts those
    as never recalled.
    """
    e = np.asarray(errors, np.float64).ravel()
    fin = e[np.isfinite(e)]
    out: dict = {"count": int(e.size), "failed": int(e.size - fin.size)}
    if fin.size:
        out.update(
            median=float(np.median(fin)),
            p90=float(np.percentile(fin, 90)),
            mean=float(fin.mean()),
            max=float(fin.max()),
        )
    else:
        out.update(median=None, p90=None, mean=None, max=None)
    if auc_thresholds_deg is not None:
        aucs = pose_auc(e, auc_thresholds_deg) if e.size else [None] * len(auc_thresholds_deg)
        out["auc"] = {
            f"{t:g}": (None if a is None or np.isnan(a) else 100.0 * a)
            for t, a in zip(auc_thresholds_deg, aucs)
        }
    return out


# ------------------------------------------------------------------------------------------ epipolar error


def skew(v: np.ndarray) -> np.ndarray:
    """[3, 3] cross-product matrix of ``v`` [3]."""
    x, y, z = np.asarray(v, np.float64)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def essential_from_pose(cam2_from_cam1: np.ndarray) -> np.ndarray:
    """``E`` [3, 3] with ``x2^T E x1 = 0`` for normalised homogeneous points, from ``cam2_from_cam1`` [4, 4]."""
    T = np.asarray(cam2_from_cam1, np.float64)
    return skew(T[:3, 3]) @ T[:3, :3]


def normalise_points(points_px: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel points [N, 2] -> normalised image coordinates [N, 2] (``K^-1 [u, v, 1]``)."""
    p = np.asarray(points_px, np.float64)
    h = np.concatenate([p, np.ones((len(p), 1))], 1)  # [N, 3]
    x = h @ np.linalg.inv(np.asarray(K, np.float64)).T  # [N, 3]
    return x[:, :2] / x[:, 2:3]


def epipolar_error_sq(x1_norm: np.ndarray, x2_norm: np.ndarray, cam2_from_cam1: np.ndarray) -> np.ndarray:
    """Symmetric squared epipolar distance [N] of matches in normalised coordinates [N, 2] under a true pose.

    ``(x2^T E x1)^2 * (1 / |(E x1)_xy|^2 + 1 / |(E^T x2)_xy|^2)``: the squared distance of x2 to the epipolar line
    of x1 plus that of x1 to the line of x2 -- the quantity the CVD paper thresholds at 5e-4. Invariant to the
    scale of the translation; NaN (never correct) when the baseline is zero.
    """
    E = essential_from_pose(cam2_from_cam1)
    h1 = np.concatenate([np.asarray(x1_norm, np.float64), np.ones((len(x1_norm), 1))], 1)  # [N, 3]
    h2 = np.concatenate([np.asarray(x2_norm, np.float64), np.ones((len(x2_norm), 1))], 1)  # [N, 3]
    Ex1 = h1 @ E.T  # [N, 3] epipolar lines in image 2
    Etx2 = h2 @ E  # [N, 3] epipolar lines in image 1
    num = np.sum(h2 * Ex1, axis=1) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return num * (1.0 / (Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2) + 1.0 / (Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2))
