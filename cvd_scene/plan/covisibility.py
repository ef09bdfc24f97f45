"""Co-visibility and coverage of a plan: how much of one video's view another video's view also sees, frame by
frame, and how much of the scene the whole plan sees.

Points are sampled per pixel on a grid (the cameras resized to ``sample_width_px``) on either a proxy scene
(axis-aligned boxes of the scene kind's :class:`cvd_scene.plan.planning.SceneLayout`, ray-cast analytically, exact
occlusion) or the exact surfaces given by a depth function ``depth_fn(cameras) -> [V, F, H, W]`` (z-depth in
metres along the camera's +z axis, 0 where the ray hits nothing; occlusion by a depth test). A point is
visible to another camera when it projects inside that image, in front of it, and is not occluded; a pixel
that sees nothing (the sky) is a direction at infinity, visible where the other camera also sees nothing in
that direction.

Cameras in the project's one convention (OpenCV axes, ``world_from_cam``, Y-up metres). Pure numpy; must not
import torch, the model package or any stage implementation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvd_scene.camera_io import read_json
from cvd_scene.cameras import Cameras, invert_rigid
from cvd_scene.plan.planning import SceneLayout

log = logging.getLogger(__name__)

COVISIBILITY_FORMAT = "cvd-scene/covisibility"
COVISIBILITY_VERSION = 1

DepthFn = Callable[[Cameras], np.ndarray]
"""``depth_fn(cameras) -> [V, F, H, W]`` z-depth in metres (0 where nothing is hit) at the cameras' image
size."""

_RAY_CHUNK = 1 << 16
_OCCLUSION_TOL = 1e-4  # a surface point is visible when the first hit lies at >= (1 - tol) of the way to it


# ------------------------------------------------------------------------------------------ proxy scene


@dataclass(frozen=True)
class ProxyScene:
    """Axis-aligned rectangles that stand for a scene's surfaces."""

    lo: np.ndarray
    """[Q, 3] lower corner of every rectangle, metres (equal to ``hi`` along its normal axis)."""
    hi: np.ndarray
    """[Q, 3] upper corner of every rectangle."""
    axis: np.ndarray
    """[Q] int: the axis (0 x, 1 y, 2 z) every rectangle is perpendicular to."""
    counted: np.ndarray
    """[Q] bool: rectangles that make up the surface whose coverage is measured."""

    @property
    def area_m2(self) -> np.ndarray:
        """[Q] area of every rectangle."""
        size = self.hi - self.lo
        size[np.arange(len(size)), self.axis] = 1.0
        return np.prod(size, axis=-1)


FACES: tuple[str, ...] = ("-x", "+x", "-y", "+y", "-z", "+z")
"""Names of the faces of a proxy box."""


def proxy_scene(layout: SceneLayout) -> ProxyScene:
    """The rectangles of a layout's proxy boxes (all faces but the open ones)."""
    los, his, axes, counted = [], [], [], []
    for lo, hi, counted_faces, open_faces in layout.proxy_boxes:
        bad = [f for f in (*counted_faces, *open_faces) if f not in FACES]
        if bad:
            raise ValueError(f"unknown box face(s) {bad}; faces are {', '.join(FACES)}")
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        if np.any(hi < lo):
            raise ValueError(f"proxy box has max {hi.tolist()} below min {lo.tolist()}")
        for face in FACES:
            if face in open_faces:
                continue
            axis = "xyz".index(face[1])
            a, b = lo.copy(), hi.copy()
            a[axis] = b[axis] = (hi if face[0] == "+" else lo)[axis]
            los.append(a)
            his.append(b)
            axes.append(axis)
            counted.append(face in counted_faces)
    return ProxyScene(np.asarray(los), np.asarray(his), np.asarray(axes), np.asarray(counted))


def raycast(scene: ProxyScene, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Nearest hit of rays ``origin + t * direction`` (t > 0) with the scene's rectangles.

    ``origins`` and ``directions`` [..., 3] (broadcast; directions need not be unit). Returns t [...] in units
    of each direction's length (inf where the ray hits nothing).
    """
    o, d = np.broadcast_arrays(np.asarray(origins, float), np.asarray(directions, float))
    shape = o.shape[:-1]
    o = o.reshape(-1, 3)  # [N, 3]
    d = d.reshape(-1, 3)  # [N, 3]
    Q = len(scene.axis)
    plane = scene.lo[np.arange(Q), scene.axis]  # [Q]
    others = np.array([[k for k in range(3) if k != a] for a in scene.axis]).reshape(Q, 2)  # [Q, 2]
    eps = 1e-9
    out = np.empty(o.shape[0])
    for s in range(0, o.shape[0], _RAY_CHUNK):
        oc, dc = o[s : s + _RAY_CHUNK], d[s : s + _RAY_CHUNK]
        dn = dc[:, scene.axis]  # [n, Q]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (plane - oc[:, scene.axis]) / dn  # [n, Q]
        ok = (np.abs(dn) > 1e-12) & (t > 1e-9)
        for c in range(2):
            k = others[:, c]  # [Q]
            x = oc[:, k] + t * dc[:, k]  # [n, Q]
            ok &= (x >= scene.lo[np.arange(Q), k] - eps) & (x <= scene.hi[np.arange(Q), k] + eps)
        out[s : s + _RAY_CHUNK] = np.where(ok, t, np.inf).min(axis=1, initial=np.inf)
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------- pixel rays


def sample_cameras(cameras: Cameras, sample_width_px: int | None) -> Cameras:
    """The cameras resized (not cropped) to ``sample_width_px`` wide, keeping the aspect; None keeps the
    size."""
    if sample_width_px is None or sample_width_px >= cameras.width:
        return cameras
    if sample_width_px < 1:
        raise ValueError(f"sample_width_px must be >= 1, got {sample_width_px}")
    h = max(1, round(cameras.height * sample_width_px / cameras.width))
    return cameras.resized(sample_width_px, h)


def pixel_directions(cameras: Cameras) -> np.ndarray:
    """[V, F, H, W, 3] world direction through every pixel centre, scaled to camera-z = 1 (so a point at
    z-depth ``z`` is ``centre + z * direction``)."""
    u = np.arange(cameras.width) + 0.5
    v = np.arange(cameras.height) + 0.5
    uu, vv = np.meshgrid(u, v)  # [H, W]
    pix = np.stack([uu, vv, np.ones_like(uu)], -1)  # [H, W, 3]
    Kinv = np.linalg.inv(cameras.K)  # [V, F, 3, 3]
    R = cameras.world_from_cam[..., :3, :3]  # [V, F, 3, 3]
    M = R @ Kinv  # [V, F, 3, 3]
    return np.einsum("vfij,hwj->vfhwi", M, pix)  # [V, F, H, W, 3]


def proxy_depth(cameras: Cameras, scene: ProxyScene) -> np.ndarray:
    """[V, F, H, W] z-depth of the proxy scene in every pixel (0 where the ray hits nothing)."""
    dirs = pixel_directions(cameras)  # [V, F, H, W, 3]
    centres = cameras.positions[:, :, None, None, :]  # [V, F, 1, 1, 3]
    t = raycast(scene, centres, dirs)  # [V, F, H, W]
    return np.where(np.isfinite(t), t, 0.0)


# ------------------------------------------------------------------------------------------ co-visibility


@dataclass(frozen=True)
class Covisibility:
    """What :func:`covisibility` measures."""

    matrix: np.ndarray
    """[V, V, F] fraction of video i's view at frame k that video j's view at frame k also sees (1 on the
    diagonal)."""
    coverage: float
    """Fraction of the proxy scene's counted surface (area-weighted) that some camera of the plan sees; the
    direction coverage when no layout was given."""
    direction_coverage: float
    """Fraction of all view directions (unit sphere) inside some camera's field of view."""
    coverage_kind: str
    """``proxy-surface`` (the layout's proxy surface) or ``directions`` (no layout given)."""
    depth_source: str
    """``proxy`` (analytic proxy scene) or ``depth_fn`` (exact depth)."""
    sample_size: tuple[int, int]
    """Width and height of the pixel grid the fractions were sampled on."""

    def mean_over_frames(self, skip_first: bool = True) -> np.ndarray:
        """[V, V] mean over frames (over frames 1... when ``skip_first`` and F > 1: frame 0 is the common
        start)."""
        m = self.matrix[..., 1:] if skip_first and self.matrix.shape[-1] > 1 else self.matrix
        return m.mean(axis=-1)


def covisibility(
    cameras: Cameras,
    layout: SceneLayout | None = None,
    depth_fn: DepthFn | None = None,
    sample_width_px: int | None = 48,
    coverage_points: int = 20000,
    direction_samples: int = 4096,
    rel_depth_tol: float = 0.02,
    abs_depth_tol_m: float = 0.005,
) -> Covisibility:
    """Co-visibility of every pair of videos at every frame, and the plan's coverage.

    ``cameras``: the plan (OpenCV axes, ``world_from_cam``). With ``depth_fn`` the points are the exact
    surfaces (occlusion by a depth test with tolerance ``rel_depth_tol`` x depth + ``abs_depth_tol_m`` against
    the other view's depth at the point: inverse depth interpolated on smooth surfaces, the containing pixel
    at silhouettes); otherwise the layout's proxy scene (exact analytic occlusion). Coverage is always
    measured on the layout's proxy surface when a layout is given.
    """
    if layout is None and depth_fn is None:
        raise ValueError("covisibility needs a scene layout (proxy scene) or a depth_fn (exact depth)")
    cams = sample_cameras(cameras, sample_width_px)
    scene = proxy_scene(layout) if layout is not None else None
    if depth_fn is not None:
        depth = np.asarray(depth_fn(cams), dtype=np.float64)  # [V, F, h, w]
        want = (cams.num_videos, cams.num_frames, cams.height, cams.width)
        if depth.shape != want:
            raise ValueError(f"depth_fn returned {depth.shape=}, expected [V, F, H, W] = {want}")
        if not np.all(np.isfinite(depth)) or np.any(depth < 0):
            raise ValueError("depth_fn returned negative or non-finite depths (use 0 where nothing is hit)")
        source = "depth_fn"
    else:
        depth = proxy_depth(cams, scene)
        source = "proxy"
    matrix = _covisibility_from_depth(
        cams, depth, scene if depth_fn is None else None, rel_depth_tol, abs_depth_tol_m
    )
    dir_cov = direction_coverage(cameras, direction_samples)
    cov = surface_coverage(cameras, scene, coverage_points) if scene is not None else dir_cov
    kind = "proxy-surface" if scene is not None else "directions"
    return Covisibility(matrix, cov, dir_cov, kind, source, (cams.width, cams.height))


def _covisibility_from_depth(
    cams: Cameras, depth: np.ndarray, scene: ProxyScene | None, rel_tol: float, abs_tol: float
) -> np.ndarray:
    """[V, V, F] fractions from depth maps [V, F, h, w]; occlusion analytic when ``scene`` is given."""
    V, F, h, w = depth.shape
    P = h * w
    dirs = pixel_directions(cams).reshape(V, F, P, 3)  # [V, F, P, 3]
    centres = cams.positions  # [V, F, 3]
    D = depth.reshape(V, F, P)  # [V, F, P]
    empty = D <= 0  # [V, F, P]
    points = centres[:, :, None, :] + D[..., None] * dirs  # [V, F, P, 3] (centre where empty)
    cam_from_world = invert_rigid(cams.world_from_cam)  # [V, F, 4, 4]
    out = np.zeros((V, V, F))
    for k in range(F):
        X = points[:, k]  # [V, P, 3] points seen by every source video
        E = empty[:, k]  # [V, P]
        Dw = dirs[:, k]  # [V, P, 3]
        for j in range(V):
            R = cam_from_world[j, k, :3, :3]
            t = cam_from_world[j, k, :3, 3]
            K = cams.K[j, k]
            Xc = X @ R.T + t  # [V, P, 3] surface points in camera j
            Dc = Dw @ R.T  # [V, P, 3] directions in camera j (points at infinity)
            pc = np.where(E[..., None], Dc, Xc)  # [V, P, 3]
            z = pc[..., 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = (pc @ K.T)[..., :2] / z[..., None]  # [V, P, 2]
            inside = (z > 1e-9) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
            inside &= np.all(np.isfinite(uv), axis=-1)
            if scene is not None:
                c = centres[j, k]
                ray = np.where(E[..., None], Dw, X - c)  # [V, P, 3]
                hit = np.full(E.shape, np.inf)
                hit[inside] = raycast(scene, c, ray[inside])
                visible = inside & np.where(E, ~np.isfinite(hit), hit >= 1.0 - _OCCLUSION_TOL)
            else:
                Dj = depth[j, k]  # [h, w]
                uvc = np.where(inside[..., None], uv, 0.5)
                near = _sample_nearest(Dj, uvc)  # [V, P]
                dj = _sample_depth(Dj, uvc)  # [V, P]
                surface_ok = (dj > 0) & (z <= dj * (1 + rel_tol) + abs_tol)
                visible = inside & np.where(E, near <= 0, surface_ok)
            out[:, j, k] = visible.mean(axis=-1)
    return out


def _sample_nearest(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """img [h, w] at the pixels containing uv [..., 2] (pixel centres at +0.5)."""
    h, w = img.shape
    x = np.clip(np.floor(uv[..., 0]).astype(int), 0, w - 1)
    y = np.clip(np.floor(uv[..., 1]).astype(int), 0, h - 1)
    return img[y, x]


def _sample_depth(img: np.ndarray, uv: np.ndarray, planar_tol: float = 0.02) -> np.ndarray:
    """Depth map img [h, w] at image points uv [..., 2] (pixel centres at +0.5).

    Inverse depth is an affine function of the pixel on a plane, so where the 2x2 surrounding pixels all hold
    a surface whose inverse depths fit one plane (``|i00 + i11 - i01 - i10| <= planar_tol * max``, which holds
    at grazing angles but not across a silhouette) it is interpolated bilinearly; elsewhere the value is that
    of the pixel containing the point."""
    h, w = img.shape
    fx = uv[..., 0] - 0.5
    fy = uv[..., 1] - 0.5
    x0 = np.floor(fx).astype(int)
    y0 = np.floor(fy).astype(int)
    ax = fx - x0
    ay = fy - y0
    corners = []
    for dy in (0, 1):
        for dx in (0, 1):
            corners.append(img[np.clip(y0 + dy, 0, h - 1), np.clip(x0 + dx, 0, w - 1)])
    d = np.stack(corners, -1)  # [..., 4] in the order 00, 10, 01, 11 (x then y)
    inv = 1.0 / np.where(d > 0, d, 1.0)  # [..., 4]
    twist = np.abs(inv[..., 0] + inv[..., 3] - inv[..., 1] - inv[..., 2])
    smooth = (d.min(axis=-1) > 0) & (twist <= planar_tol * inv.max(axis=-1))
    wts = np.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], -1)  # [..., 4]
    interp = 1.0 / np.sum(wts * inv, axis=-1)
    return np.where(smooth, interp, _sample_nearest(img, uv))


# ----------------------------------------------------------------------------------------------- coverage


def surface_samples(scene: ProxyScene, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [M, 3] at the cell centres of a grid over the counted rectangles (about ``num_points`` in all,
    about evenly spaced) and the area [M] each stands for."""
    idx = np.flatnonzero(scene.counted)
    if idx.size == 0:
        raise ValueError("the proxy scene has no counted surface to measure coverage on")
    area = scene.area_m2[idx]
    pts, weights = [], []
    for q, a in zip(idx, area):
        n = max(1.0, num_points * a / area.sum())
        ka, kb = [k for k in range(3) if k != scene.axis[q]]
        la = scene.hi[q, ka] - scene.lo[q, ka]
        lb = scene.hi[q, kb] - scene.lo[q, kb]
        na = max(1, round(np.sqrt(n * la / max(lb, 1e-12))))
        nb = max(1, round(n / na))
        ga, gb = np.meshgrid(
            (np.arange(na) + 0.5) / na, (np.arange(nb) + 0.5) / nb, indexing="ij"
        )  # [na, nb]
        p = np.broadcast_to(scene.lo[q], (na * nb, 3)).copy()  # [na*nb, 3]
        p[:, ka] += ga.reshape(-1) * la
        p[:, kb] += gb.reshape(-1) * lb
        pts.append(p)
        weights.append(np.full(na * nb, a / (na * nb)))
    return np.concatenate(pts), np.concatenate(weights)


def surface_coverage(cameras: Cameras, scene: ProxyScene, num_points: int = 20000) -> float:
    """Area-weighted fraction of the proxy scene's counted surface that some camera of the plan sees (inside
    its image, in front, not occluded)."""
    pts, weights = surface_samples(scene, num_points)  # [M, 3], [M]
    seen = np.zeros(len(pts), dtype=bool)
    cam_from_world = invert_rigid(cameras.world_from_cam)  # [V, F, 4, 4]
    for v in range(cameras.num_videos):
        for f in range(cameras.num_frames):
            todo = np.flatnonzero(~seen)
            if todo.size == 0:
                break
            X = pts[todo]
            pc = X @ cam_from_world[v, f, :3, :3].T + cam_from_world[v, f, :3, 3]  # [m, 3]
            z = pc[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = (pc @ cameras.K[v, f].T)[:, :2] / z[:, None]
            inside = (z > 1e-9) & (uv[:, 0] >= 0) & (uv[:, 0] < cameras.width)
            inside &= (uv[:, 1] >= 0) & (uv[:, 1] < cameras.height)
            cand = todo[inside]
            if cand.size == 0:
                continue
            c = cameras.positions[v, f]
            hit = raycast(scene, c, pts[cand] - c)
            seen[cand[hit >= 1.0 - _OCCLUSION_TOL]] = True
    return float(np.sum(weights[seen]) / np.sum(weights))


def fibonacci_sphere(n: int) -> np.ndarray:
    """[n, 3] nearly uniform unit directions."""
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - y * y)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), y, r * np.sin(phi)], -1)


def direction_coverage(cameras: Cameras, num_directions: int = 4096) -> float:
    """Fraction of all view directions (unit sphere, uniform) inside the field of view of some camera."""
    d = fibonacci_sphere(num_directions)  # [M, 3]
    R = cameras.world_from_cam[..., :3, :3].reshape(-1, 3, 3)  # [V*F, 3, 3]
    K = cameras.K.reshape(-1, 3, 3)  # [V*F, 3, 3]
    dc = np.einsum("nji,mj->nmi", R, d)  # [V*F, M, 3] = R^T d
    z = dc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.einsum("nij,nmj->nmi", K, dc)[..., :2] / z[..., None]  # [V*F, M, 2]
    inside = (z > 1e-9) & (uv[..., 0] >= 0) & (uv[..., 0] < cameras.width)
    inside &= (uv[..., 1] >= 0) & (uv[..., 1] < cameras.height)
    return float(inside.any(axis=0).mean())


# ------------------------------------------------------------------------------------------------ file


def covisibility_to_dict(result: Covisibility, video_ids: tuple[str, ...] | list[str]) -> dict:
    """The ``plan/covisibility.json`` document (schema in docs/architecture.md), with extra keys: ``mean``
    [V][V] over frames 1... (frame 0 is the common start), ``direction_coverage``, ``depth_source``,
    ``sample_size``."""
    V = result.matrix.shape[0]
    if len(video_ids) != V:
        raise ValueError(f"{len(video_ids)} video ids for a {V}-video co-visibility matrix")
    return {
        "format": COVISIBILITY_FORMAT,
        "version": COVISIBILITY_VERSION,
        "videos": list(video_ids),
        "frames": int(result.matrix.shape[-1]),
        "covisibility": np.round(result.matrix, 4).tolist(),
        "coverage": round(result.coverage, 4),
        "mean": np.round(result.mean_over_frames(), 4).tolist(),
        "direction_coverage": round(result.direction_coverage, 4),
        "coverage_kind": result.coverage_kind,
        "depth_source": result.depth_source,
        "sample_size": list(result.sample_size),
    }


def read_covisibility(path: str | os.PathLike, cams: Cameras) -> np.ndarray | None:
    """``plan/covisibility.json`` as [V, V, F] in the order of ``cams.video_ids``, or None (with a warning naming
    the file) when it is absent, unreadable or describes other videos or frames.

    The file's videos may be listed in any order: rows and columns are reordered to the plan's.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
        ids = [str(v) for v in doc["videos"]]
        cov = np.asarray(doc["covisibility"], np.float64)
    except (KeyError, TypeError, ValueError) as e:  # CameraFileError is a ValueError
        log.warning("%s is not readable (%s); ignoring it", path, e)
        return None
    V, F = cams.num_videos, cams.num_frames
    if sorted(ids) != sorted(cams.video_ids) or len(set(ids)) != len(ids) or cov.shape != (V, V, F):
        log.warning(
            "%s does not match the plan (videos %s, shape %s; the plan has videos %s x %d frames); ignoring it",
            path, ids, cov.shape, list(cams.video_ids), F,
        )  # fmt: skip
        return None
    order = [ids.index(v) for v in cams.video_ids]
    return cov[np.ix_(order, order)]
