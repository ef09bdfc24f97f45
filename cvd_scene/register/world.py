"""The run's world for cameras registered without poses: up from the cameras and the sparse points, origin at the
first camera, metric scale from a known length or an assumed camera height.

COLMAP's mapper returns a model in an arbitrary frame (any rotation, origin and scale). The run's world is +y up,
metres, floor at y = 0 (docs/architecture.md). :func:`level_world` finds the similarity into it:

1. up = the mean of the cameras' up vectors (people hold cameras level, so their -y axes average to the up);
2. refined by the dominant plane of the sparse points whose normal is within ``max_tilt_deg`` of that up and that
   the cameras are above (a floor or a table top), when one holds at least ``min_plane_share`` of the points;
3. heading: the first camera looks along -z; origin: on the plane under the first camera (or, without a plane,
   ``camera_height_m`` under it);
4. scale: ``scale_m`` (the distance from the first to the last camera, metres) when given, else the cameras'
   median height above the plane taken as ``camera_height_m``; without a plane, the median depth of the sparse
   points in the cameras taken as ``camera_height_m`` (both assumptions, stated in the report).

Cameras follow the project convention (``world_from_cam``, OpenCV axes). Pure numpy: must not import pycolmap.
"""

from __future__ import annotations

import numpy as np

from cvd_scene.register.pose_metrics import Sim3


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def dominant_plane(
    points: np.ndarray, up: np.ndarray, max_tilt_deg: float = 30.0, iterations: int = 400, seed: int = 0
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """RANSAC plane of ``points`` [P, 3] with its normal within ``max_tilt_deg`` of ``up`` [3]: (unit normal [3]
    on the side of ``up``, offset d with ``n @ x = d`` on the plane, inlier mask [P]); None when fewer than 3
    points or no plane of that tilt. The inlier distance is 1 % of the points' robust extent; the plane is refit
    to its inliers by least squares."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(points) < 3:
        return None
    up = _unit(np.asarray(up, np.float64))
    centre = np.median(points, axis=0)
    extent = float(np.percentile(np.linalg.norm(points - centre, axis=1), 90))
    tol = 0.01 * max(extent, 1e-12)
    cos_max = np.cos(np.radians(max_tilt_deg))
    rng = np.random.default_rng(seed)
    best, best_count = None, 0
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n = _unit(n)
        if n @ up < 0:
            n = -n
        if n @ up < cos_max:
            continue
        inliers = np.abs(points @ n - n @ a) < tol
        count = int(inliers.sum())
        if count > best_count:
            best, best_count = inliers, count
    if best is None or best_count < 3:
        return None
    sel = points[best]
    mean = sel.mean(axis=0)
    n = _unit(np.linalg.svd(sel - mean)[2][-1])
    if n @ up < 0:
        n = -n
    inliers = np.abs(points @ n - n @ mean) < tol
    return n, float(n @ mean), inliers


def level_world(
    world_from_cam: np.ndarray,
    points: np.ndarray,
    camera_height_m: float = 1.6,
    scale_m: float | None = None,
    min_plane_share: float = 0.15,
    max_tilt_deg: float = 30.0,
    seed: int = 0,
) -> tuple[Sim3, dict]:
    """The similarity ``world_from_model`` (module docstring) for cameras ``world_from_cam`` [N, 4, 4] (the
    first is the first camera; N >= 1) and sparse points [P, 3], both in the model's frame; and what to report
    about it (the up's source, the plane, the scale's source)."""
    T = np.asarray(world_from_cam, np.float64)
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if T.ndim != 3 or T.shape[1:] != (4, 4) or len(T) < 1:
        raise ValueError(f"world_from_cam must be [N, 4, 4] with N >= 1, got {T.shape=}")
    if camera_height_m <= 0 or (scale_m is not None and scale_m <= 0):
        raise ValueError(f"camera_height_m and scale_m must be > 0, got {camera_height_m=} {scale_m=}")
    centres = T[:, :3, 3]  # [N, 3]
    cam_up = _unit(-T[:, :3, 1].mean(axis=0))  # OpenCV camera y points down
    spread = float(np.linalg.norm(-T[:, :3, 1].mean(axis=0)))
    info: dict = {"up": "mean of the cameras' up vectors", "camera_up_agreement": round(spread, 4)}
    up, plane = cam_up, None
    found = dominant_plane(points, cam_up, max_tilt_deg, seed=seed) if len(points) >= 3 else None
    if found is not None:
        n, d, inliers = found
        heights = centres @ n - d  # [N] signed, model units
        share = float(inliers.mean())
        if share >= min_plane_share and np.median(heights) > 0:
            up, plane = n, (n, d)
            info.update(
                up="normal of the dominant horizontal plane of the sparse points (refining the cameras' mean up)",
                plane_points_share=round(share, 4),
                plane_tilt_from_camera_up_deg=round(float(np.degrees(np.arccos(np.clip(n @ cam_up, -1, 1)))), 3),
            )
        else:
            info["plane_rejected"] = (
                f"best plane holds {share:.1%} of the points (< {min_plane_share:.0%})"
                if share < min_plane_share
                else "the cameras are below the best plane"
            )
    # Heading: the first camera's forward, made horizontal, becomes -z.
    forward = T[0, :3, 2] - (T[0, :3, 2] @ up) * up
    if np.linalg.norm(forward) < 1e-6:  # looking straight up or down: its right axis sets the heading
        right = T[0, :3, 0] - (T[0, :3, 0] @ up) * up
        forward = np.cross(up, right)
    z_axis = -_unit(forward)
    x_axis = np.cross(up, z_axis)
    R = np.stack([x_axis, up, z_axis])  # rows: the world axes in the model's frame; R @ up = +y
    # Scale.
    if plane is not None:
        n, d = plane
        heights = centres @ n - d
        height_model = float(np.median(heights))
    else:
        depths = [((points - c) @ T[i, :3, 2]) for i, c in enumerate(centres)]
        depths = np.concatenate([z[z > 0] for z in depths]) if len(points) else np.zeros(0)
        height_model = float(np.median(depths)) if depths.size else 1.0
    if scale_m is not None and len(T) >= 2 and np.linalg.norm(centres[-1] - centres[0]) > 1e-12:
        scale = scale_m / float(np.linalg.norm(centres[-1] - centres[0]))
        info["scale_from"] = f"register.scale_m: {scale_m:g} m from the first to the last camera"
    elif plane is not None:
        scale = camera_height_m / height_model
        info["scale_from"] = (
            f"assumed: the cameras' median height above the plane is register.camera_height_m = {camera_height_m:g} m"
        )
    else:
        scale = camera_height_m / height_model
        info["scale_from"] = (
            "assumed: no horizontal plane found; the median depth of the sparse points is "
            f"register.camera_height_m = {camera_height_m:g} m"
        )
    # Origin: under the first camera, on the plane (floor at y = 0) or camera_height_m below it.
    first_height_m = scale * float(centres[0] @ plane[0] - plane[1]) if plane is not None else camera_height_m
    translation = np.array([0.0, first_height_m, 0.0]) - scale * R @ centres[0]
    sim = Sim3(float(scale), R, translation)
    info.update(
        method="levelled from the cameras themselves (no known poses): " + info["up"],
        first_camera_height_m=round(first_height_m, 4),
        **sim.to_dict(),
    )
    return sim, info
