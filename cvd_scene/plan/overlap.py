"""How much two planned frames see of the same scene, for every pair of frames of a plan (not only the same index).

A grid of pixels of frame a is lifted to 3D -- at its depth when a depth map is given (ground truth, or a proxy
scene's), else at a few fixed distances -- and projected into frame b; the overlap is the share that lands inside b's
image in front of it (no occlusion test). Registration uses it to choose which frame pairs to match, the
consistency evaluation to skip pairs that share no view.

Cameras in the project's convention (OpenCV axes, ``world_from_cam``). numpy only (and the planner's proxy scenes);
must not import pycolmap or torch.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from cvd_scene.cameras import Cameras, invert_rigid
from cvd_scene.runfolder import RunLayout

log = logging.getLogger(__name__)

DEFAULT_DEPTHS_M: tuple[float, ...] = (1.0, 2.5, 6.0)
"""Distances at which pixels are lifted when no depth is known."""


def sample_points(
    cameras: Cameras, depth: np.ndarray | None = None, grid: int = 12, depths_m=DEFAULT_DEPTHS_M
) -> np.ndarray:
    """World points seen by every frame: [V, F, G, 3] (NaN where a depth map says nothing was hit).

    ``depth`` [V, F, h, w] z-depth in metres (any resolution; 0 = nothing) or None (each of ``grid`` x ``grid`` pixels
    at every distance in ``depths_m``).
    """
    V, F = cameras.num_videos, cameras.num_frames
    u = (np.arange(grid) + 0.5) / grid  # [g] fractions of the image
    uu, vv = np.meshgrid(u, u)  # [g, g]
    pix = np.stack(
        [uu.ravel() * cameras.width, vv.ravel() * cameras.height, np.ones(grid * grid)], -1
    )  # [g*g, 3]
    rays = np.einsum("vfij,pj->vfpi", np.linalg.inv(cameras.K), pix)  # [V, F, g*g, 3] camera rays with z = 1
    if depth is not None:
        depth = np.asarray(depth, np.float64)
        if depth.ndim != 4 or depth.shape[:2] != (V, F):
            raise ValueError(f"depth must be [V, F, h, w] with V={V}, F={F}, got {depth.shape}")
        h, w = depth.shape[2:]
        iy = np.minimum((vv.ravel() * h).astype(int), h - 1)
        ix = np.minimum((uu.ravel() * w).astype(int), w - 1)
        z = depth[:, :, iy, ix]  # [V, F, g*g]
        z = np.where(z > 0, z, np.nan)
        pts_cam = rays * z[..., None]  # [V, F, G, 3]
    else:
        d = np.asarray(depths_m, np.float64)
        pts_cam = (rays[:, :, None, :, :] * d[None, None, :, None, None]).reshape(V, F, -1, 3)  # [V, F, G, 3]
    R = cameras.world_from_cam[..., :3, :3]  # [V, F, 3, 3]
    t = cameras.world_from_cam[..., :3, 3]  # [V, F, 3]
    return np.einsum("vfij,vfpj->vfpi", R, pts_cam) + t[:, :, None, :]


def frame_overlap(
    cameras: Cameras,
    depth: np.ndarray | None = None,
    grid: int = 12,
    depths_m=DEFAULT_DEPTHS_M,
    chunk: int = 64,
) -> np.ndarray:
    """[N, N] overlap of every pair of frames (N = V * F, index ``v * F + f``): the share of frame a's sampled points
    that frame b sees (inside its image, in front of it). Not symmetric; 1 on the diagonal (where a sees anything)."""
    V, F = cameras.num_videos, cameras.num_frames
    N = V * F
    pts = sample_points(cameras, depth, grid, depths_m).reshape(N, -1, 3)  # [N, G, 3]
    valid = np.all(np.isfinite(pts), axis=-1)  # [N, G]
    cam_from_world = invert_rigid(cameras.world_from_cam).reshape(N, 4, 4)
    K = cameras.K.reshape(N, 3, 3)
    out = np.zeros((N, N))
    for b0 in range(0, N, chunk):
        b = slice(b0, min(N, b0 + chunk))
        R, t = cam_from_world[b, :3, :3], cam_from_world[b, :3, 3]  # [B, 3, 3], [B, 3]
        p = np.einsum("bij,agj->abgi", R, pts) + t[None, :, None, :]  # [N, B, G, 3] in camera b
        z = p[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.einsum("bij,abgj->abgi", K[b], p)  # [N, B, G, 3]
            x, y = uv[..., 0] / uv[..., 2], uv[..., 1] / uv[..., 2]
        seen = (
            (z > 1e-6)
            & (x >= 0)
            & (x <= cameras.width)
            & (y >= 0)
            & (y <= cameras.height)
            & valid[:, None, :]
        )
        out[:, b] = seen.sum(-1) / np.maximum(valid.sum(-1), 1)[:, None]
    return out


def planned_depth(run_dir: str | os.PathLike, plan: Cameras, size_px: int = 48) -> np.ndarray | None:
    """z-depth [V, F, h, w] of every planned frame, for the overlap of frame pairs: the reference generator's ground
    truth (``generate/gt/depth``) when present, else the planner's proxy scene of the plan's scene kind, else None."""
    run = RunLayout(run_dir)
    gt = run.gt_depth_dir
    if gt.is_dir():
        try:
            step = max(1, plan.width // size_px)
            return np.stack(
                [
                    np.stack(
                        [np.load(run.gt_depth(vid, f))[::step, ::step] for f in range(plan.num_frames)]
                    )
                    for vid in plan.video_ids
                ]
            )
        except (OSError, ValueError) as e:
            log.warning("cannot read %s (%s); using the plan's proxy scene", gt, e)
    kind = plan.extras.get("scene")
    if not kind:
        return None
    try:
        from cvd_scene.plan.covisibility import proxy_depth, proxy_scene, sample_cameras
        from cvd_scene.plan.planning import scene_layout

        return proxy_depth(sample_cameras(plan, size_px), proxy_scene(scene_layout(kind)))
    except (ImportError, ValueError, KeyError) as e:
        log.warning("no proxy scene for kind %r (%s); overlap measured at fixed distances", kind, e)
        return None
