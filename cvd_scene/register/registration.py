"""Registration of a run's frames with COLMAP, compared with the plan.

Steps: SIFT features of every frame; matching of the frame pairs the plan's structure suggests (neighbours within
a video plus a few further frames, the same frame index across videos, co-visible pairs) instead of all pairs;
then either triangulation with the planned cameras and a bundle adjustment that may move them (``known-poses``)
or incremental mapping (``free``); a robust similarity alignment to the plan, so registered poses are in the run's
world frame and metres; pose errors against the plan; and a diagnosis of every frame that did not register.
``planned`` (and the ``fallback: planned`` of a failed registration) keeps the plan's cameras for every frame and
seeds points from the matches that triangulate with them, topped up with random points inside the planned views.
Failures (blank frames, no matches, no initial pair) are outcomes with a status and a reason, never exceptions.

Cameras follow the project convention (``world_from_cam``, OpenCV axes). pycolmap is reached only through
:mod:`cvd_scene.register.colmap`. Must not import torch or nerfstudio.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cvd_scene.cameras import Cameras, rotation_angle_deg
from cvd_scene.media import check_image
from cvd_scene.plan.covisibility import read_covisibility  # noqa: F401 (still importable from here)
from cvd_scene.plan.overlap import frame_overlap
from cvd_scene.register import colmap
from cvd_scene.register.config import RegisterConfig
from cvd_scene.register.pose_metrics import AUC_THRESHOLDS_DEG, Sim3, align_poses, error_stats, relative_pose
from cvd_scene.register.pose_metrics import translation_direction_error_deg as _tdir_err
from cvd_scene.runfolder import frame_name

log = logging.getLogger(__name__)

FrameId = tuple[int, int]
"""(video index, frame index)."""


@dataclass
class Registration:
    """The outcome of registering the frames of a plan."""

    status: Literal["finished", "partial", "failed"]
    """``finished``: every frame registered; ``partial``: usable, some frames or videos missing; ``failed``."""
    message: str
    """One line: what happened, or why it failed."""
    cameras: Cameras
    """Registered cameras in the run's world frame and metres (NaN poses where not registered; plan intrinsics)."""
    registered: np.ndarray
    """[V, F] bool: frames with a registered pose."""
    model: colmap.Model | None
    """The COLMAP model in the world frame (None when nothing registered)."""
    points_xyz: np.ndarray
    """[P, 3] sparse points, world frame, metres."""
    points_rgb: np.ndarray
    """[P, 3] uint8 point colours."""
    report: dict = field(default_factory=dict)
    """Everything measured (written as ``register/report.json``)."""


# ---------------------------------------------------------------------------------------- pairs


MAX_POINT_ERROR_PX = 16.0
"""Triangulated points whose mean reprojection error exceeds this (4x COLMAP's mapper filter), or that are not
finite, are dropped from the sparse points and the report's error statistics."""


def _model_frames(run, model: colmap.Model | None):
    """Poses [V, F, 4, 4] (NaN, to be filled), the registered mask [V, F] (False), the plan's frames ``(v, f)`` the
    model registered, and the model's poses by image name (empty without a model)."""
    V, F = run.plan.num_videos, run.plan.num_frames
    poses = model.world_from_cam() if model is not None else {}
    idx = [(v, f) for v in range(V) for f in range(F) if run.names[v][f] in poses]
    return np.full((V, F, 4, 4), np.nan), np.zeros((V, F), bool), idx, poses


def _errors_not_measured(report: dict, why: str) -> None:
    """Blank the pose-error entries of a registration ``report`` whose poses were not compared with a plan."""
    for key in ("rotation_error_deg_median", "position_error_m_median", "translation_direction_error_deg_median"):
        report[key] = None
    for key in ("rotation_error_deg", "position_error_m", "position_error_fraction_of_extent",
                "translation_direction_error_deg", "relative_rotation_error_deg"):
        report[key] = {"note": f"not measured: {why}"}
    for row in report["per_frame"]:
        row["rotation_error_deg"] = row["position_error_m"] = None


def sane_points(xyz: np.ndarray, rgb: np.ndarray, err: np.ndarray, track: np.ndarray, max_error_px: float = MAX_POINT_ERROR_PX):
    """The points (``xyz`` [P, 3], ``rgb`` [P, 3], ``err`` [P] px, ``track`` [P]) that are finite with an error
    within ``max_error_px``, and how many were dropped. A degenerate triangulation (rays nearly parallel) can leave
    a point whose error is astronomically large or not finite: it would dominate the mean error and seed the fit
    far from the scene."""
    keep = np.isfinite(err) & np.all(np.isfinite(xyz), axis=1) & (err <= max_error_px)
    return (xyz[keep], rgb[keep], err[keep], track[keep]), int((~keep).sum())


def select_pairs(
    num_videos: int,
    num_frames: int,
    covisibility: np.ndarray | None = None,
    overlap: np.ndarray | None = None,
    sequential_overlap: int = 3,
    loop_gaps: bool = True,
    cross_neighbours: int = 1,
    covisibility_min: float = 0.2,
    overlap_top_k: int = 4,
) -> list[tuple[FrameId, FrameId]]:
    """Frame pairs worth matching, from the plan's structure (sorted, no duplicates).

    Within a video: each frame with the next ``sequential_overlap`` frames, and (``loop_gaps``) with frames 4, 8,
    16, ... further. Across videos: frame k of two videos when they are co-visible at k (``covisibility`` [V, V, F],
    either direction at least ``covisibility_min``; every k when None), together with frames k +- 1 ..
    ``cross_neighbours`` of the other video. With ``overlap`` [V*F, V*F] (:func:`cvd_scene.plan.overlap.frame_overlap`):
    also each frame with the ``overlap_top_k`` frames of other videos that overlap it most (the smaller of the two
    directions, at least ``covisibility_min``) -- videos that see one place at different times.
    """
    V, F = int(num_videos), int(num_frames)
    if V < 1 or F < 1:
        raise ValueError(f"need at least one video and one frame, got {num_videos=} {num_frames=}")
    if covisibility is not None:
        covisibility = np.asarray(covisibility, np.float64)
        if covisibility.shape != (V, V, F):
            raise ValueError(f"covisibility must be [V, V, F] = [{V}, {V}, {F}], got {covisibility.shape}")
    gaps = set(range(1, max(int(sequential_overlap), 0) + 1))
    if loop_gaps:
        g = 4
        while g < F:
            gaps.add(g)
            g *= 2
    pairs: set[tuple[FrameId, FrameId]] = set()
    for v in range(V):
        for f in range(F):
            for g in gaps:
                if f + g < F:
                    pairs.add(((v, f), (v, f + g)))
    for i in range(V):
        for j in range(i + 1, V):
            for k in range(F):
                if (
                    covisibility is not None
                    and max(covisibility[i, j, k], covisibility[j, i, k]) < covisibility_min
                ):
                    continue
                for d in range(-int(cross_neighbours), int(cross_neighbours) + 1):
                    if 0 <= k + d < F:
                        pairs.add(((i, k), (j, k + d)))
                        if d != 0:
                            pairs.add(((i, k + d), (j, k)))
    if overlap is not None and overlap_top_k > 0 and V > 1:
        overlap = np.asarray(overlap, np.float64)
        if overlap.shape != (V * F, V * F):
            raise ValueError(f"overlap must be [V*F, V*F] = [{V * F}, {V * F}], got {overlap.shape}")
        mutual = np.minimum(overlap, overlap.T)  # [N, N]
        video = np.repeat(np.arange(V), F)
        mutual[video[:, None] == video[None, :]] = -1.0  # other videos only
        for a in range(V * F):
            best = np.argsort(-mutual[a], kind="stable")[:overlap_top_k]
            for b in best:
                if mutual[a, b] >= covisibility_min:
                    fa, fb = divmod(a, F), divmod(int(b), F)
                    pairs.add((fa, fb) if fa < fb else (fb, fa))
    return sorted(pairs)


def unposed_pairs(
    num_videos: int, num_frames: int, sequential_overlap: int = 3, loop_gaps: bool = True, stride: int = 4
) -> list[tuple[FrameId, FrameId]]:
    """Frame pairs worth matching when no pose is known (sorted, no duplicates): within a video, each frame with
    the next ``sequential_overlap`` frames and (``loop_gaps``) frames 4, 8, 16, ... further; across videos, every
    ``stride``-th frame of one with every ``stride``-th frame of the other."""
    V, F = int(num_videos), int(num_frames)
    pairs = set(select_pairs(1, F, None, None, sequential_overlap, loop_gaps, 0, 0.0, 0))
    pairs = {((v, a[1]), (v, b[1])) for v in range(V) for a, b in pairs}
    keys = [(v, f) for v in range(V) for f in range(0, F, max(int(stride), 1))]
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if a[0] != b[0]:
                pairs.add((a, b))
    return sorted(pairs)


# ------------------------------------------------------------------------------------ pose errors


def plan_extent_m(cams: Cameras) -> float:
    """Size of the plan: the diagonal of the bounding box of its camera centres, metres."""
    c = cams.positions.reshape(-1, 3)
    return float(np.linalg.norm(c.max(0) - c.min(0)))


def pose_errors(
    world_from_cam: np.ndarray, registered: np.ndarray, plan: Cameras, min_baseline_fraction: float = 1e-3
) -> dict:
    """Errors of registered poses [V, F, 4, 4] (already aligned to the plan's world) against the plan.

    Per frame: rotation error (deg) and camera-position error (m, and as a fraction of the plan's extent). Over
    every pair of registered frames with a planned baseline of at least ``min_baseline_fraction`` of the extent:
    the angle between the registered and the planned relative translation (its direction in the first camera's
    frame) and the relative-rotation error. Returns arrays (NaN where not registered) and the pair counts.
    """
    reg = np.asarray(registered, bool)
    T = np.asarray(world_from_cam, np.float64)
    P = plan.world_from_cam
    extent = plan_extent_m(plan)
    rot = np.full(reg.shape, np.nan)
    pos = np.full(reg.shape, np.nan)
    rot[reg] = rotation_angle_deg(T[reg][:, :3, :3], P[reg][:, :3, :3])
    pos[reg] = np.linalg.norm(T[reg][:, :3, 3] - P[reg][:, :3, 3], axis=-1)
    idx = np.argwhere(reg)  # [N, 2]
    Tr, Pr = T[reg], P[reg]  # [N, 4, 4]
    iu, ju = np.triu_indices(len(idx), k=1)
    rel_t = relative_pose(Tr[iu], Tr[ju])  # [M, 4, 4] cam_j from cam_i
    rel_p = relative_pose(Pr[iu], Pr[ju])
    baseline = np.linalg.norm(rel_p[:, :3, 3], axis=-1)
    ok = baseline >= min_baseline_fraction * max(extent, 1e-12)
    tdir = _tdir_err(rel_t[ok][:, :3, 3], rel_p[ok][:, :3, 3])
    rrot = rotation_angle_deg(rel_t[:, :3, :3], rel_p[:, :3, :3])
    return {
        "rotation_deg": rot,
        "position_m": pos,
        "extent_m": extent,
        "translation_direction_deg": tdir,
        "relative_rotation_deg": rrot,
        "pairs": len(iu),
        "pairs_zero_baseline": int((~ok).sum()),
    }


# ------------------------------------------------------------------------------------ registration


def _name(cams: Cameras, v: int, f: int) -> str:
    return frame_name(cams.video_ids[v], f)


def register_frames(
    image_dir: Path,
    plan: Cameras,
    work_dir: Path,
    options: RegisterConfig | None = None,
    covisibility: np.ndarray | None = None,
    overlap: np.ndarray | None = None,
    seed: int = 0,
    num_threads: int = -1,
) -> Registration:
    """Register the frames ``image_dir/<vid>/<NNNN>.png`` of ``plan`` (see the module docstring).

    ``covisibility`` [V, V, F] is the plan's co-visibility (``plan/covisibility.json``), ``overlap`` [V*F, V*F] the
    overlap of every frame pair (:func:`cvd_scene.plan.overlap.frame_overlap`; computed from the plan at fixed distances
    when None). ``work_dir`` is scratch space for COLMAP (database, pairs, mapper output); the database is deleted unless
    ``options.keep_database``. A missing frame file is a ``FileNotFoundError`` naming it; everything that can go wrong
    with the frames' content is reported in the result instead.
    """
    opt = options or RegisterConfig()
    if opt.mode not in ("known-poses", "free", "planned"):
        raise ValueError(f"mode must be 'known-poses', 'free' or 'planned', got {opt.mode!r}")
    if opt.fallback not in ("none", "planned"):
        raise ValueError(f"fallback must be 'none' or 'planned', got {opt.fallback!r}")
    if opt.pairing not in ("structured", "exhaustive"):
        raise ValueError(f"pairing must be 'structured' or 'exhaustive', got {opt.pairing!r}")
    if not plan.poses_known and opt.mode != "free":
        raise ValueError(
            f"register.mode={opt.mode}: the cameras' poses are unknown (pictures imported without poses); only "
            "register.mode=free registers them"
        )
    if not np.allclose(plan.K, plan.K[0, 0], rtol=1e-6, atol=1e-6):
        raise ValueError(
            "registration uses one shared camera: every frame of the plan needs the same intrinsics"
        )
    V, F = plan.num_videos, plan.num_frames
    image_dir = Path(image_dir)
    names = [[_name(plan, v, f) for f in range(F)] for v in range(V)]
    for v in range(V):
        for f in range(F):
            if not (image_dir / names[v][f]).is_file():
                raise FileNotFoundError(
                    f"frame {image_dir / names[v][f]} is missing (video {plan.video_ids[v]}, frame {f})"
                )
            check_image(image_dir / names[v][f])  # COLMAP would see a corrupt frame as one without features
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(plan, names, image_dir, work_dir, work_dir / "database.db", opt, seed, num_threads)
    run.database.unlink(missing_ok=True)
    t_start = time.perf_counter()
    try:
        # 1. Features and matches.
        with run.timed("features"):
            flat = [n for row in names for n in row]
            colmap.extract_features_to_database(
                run.database, image_dir, flat, plan.K[0, 0], opt.max_num_features, num_threads
            )
        log.info("register: SIFT features of %d frames in %.1f s", V * F, run.timings["features"])
        with run.timed("matching"):
            requested = _match(run, covisibility, overlap)
        stats = colmap.read_database_stats(run.database)
        log.info(
            "register: %d pairs matched (%s), %d verified, in %.1f s",
            requested,
            opt.pairing,
            len(stats.verified_inliers),
            run.timings["matching"],
        )
        # 2. Poses: the plan's, refined, or the mapper's; 3. into the plan's world frame.
        if opt.mode == "planned":
            model, world_from_cam, registered, sim, alignment = _use_plan(run)
        else:
            model = _solve_known_poses(run) if opt.mode == "known-poses" else _solve_free(run)
            with run.timed("alignment"):
                align = _align_to_plan if plan.poses_known else _level_world
                model, world_from_cam, registered, sim, alignment = align(run, model)
            n_reg = int(registered.sum())
            if plan.poses_known and opt.fallback == "planned" and (n_reg == 0 or n_reg < opt.min_registered_fraction * V * F):
                log.warning(
                    "register: %s registered %d/%d frames; falling back to the planned cameras",
                    opt.mode,
                    n_reg,
                    V * F,
                )
                _, why = _diagnose_videos(
                    plan, names, registered, stats, model.observations() if model is not None else {}, opt
                )
                run.fallback_from = {"mode": opt.mode, "registered": n_reg, "problems": why + run.problems}
                run.problems.clear()
                model, world_from_cam, registered, sim, alignment = _use_plan(run)
    finally:
        if not opt.keep_database:
            run.database.unlink(missing_ok=True)
        for sub in ("triangulated", "triangulated_planned", "mapped", "mapped_global"):
            shutil.rmtree(work_dir / sub, ignore_errors=True)
    run.timings["total"] = time.perf_counter() - t_start
    # 4. Errors against the plan and the report.
    return _report(run, model, world_from_cam, registered, sim, alignment, stats, requested)


@dataclass
class _Run:
    """What the steps of :func:`register_frames` share."""

    plan: Cameras
    names: list[list[str]]
    image_dir: Path
    work_dir: Path
    database: Path
    opt: RegisterConfig
    seed: int
    num_threads: int
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    planned: bool = False
    """The poses are the plan's (``mode: planned`` or the fallback)."""
    fallback_from: dict | None = None
    """When the planned cameras replaced a failed registration: its mode, frames registered and problems."""
    seed_points: tuple[np.ndarray, np.ndarray] | None = None
    """Random points [P, 3] and colours [P, 3] uint8 added to the triangulated ones (planned cameras)."""
    K: np.ndarray | None = None
    """[3, 3] the shared intrinsics the mapper refined (cameras without known poses); None: the plan's."""

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - t0


def _match(run: _Run, covisibility: np.ndarray | None, overlap: np.ndarray | None) -> int:
    """Match and verify the chosen frame pairs; returns how many pairs were matched."""
    opt, plan, names = run.opt, run.plan, run.names
    V, F = plan.num_videos, plan.num_frames
    exhaustive = opt.pairing == "exhaustive" or (not plan.poses_known and V * F <= opt.exhaustive_below)
    if not plan.poses_known:  # no plan to choose pairs from
        run.extra["pairing"] = (
            f"no poses: every pair ({V * F} frames <= register.exhaustive_below={opt.exhaustive_below})"
            if exhaustive
            else f"no poses: sequential + loop within videos, every 4th frame across ({V * F} frames)"
        )
    if exhaustive:
        colmap.match_all_in_database(
            run.database, num_threads=run.num_threads, min_num_inliers=opt.min_num_inliers, seed=run.seed
        )
        return V * F * (V * F - 1) // 2
    if not plan.poses_known:
        pairs = unposed_pairs(V, F, opt.sequential_overlap, opt.loop_gaps)
    else:
        if overlap is None and opt.overlap_top_k > 0:
            overlap = frame_overlap(plan)
        pairs = select_pairs(
            V,
            F,
            covisibility,
            overlap,
            opt.sequential_overlap,
            opt.loop_gaps,
            opt.cross_neighbours,
            opt.covisibility_min,
            opt.overlap_top_k,
        )
    colmap.match_pairs_in_database(
        run.database,
        [(names[a[0]][a[1]], names[b[0]][b[1]]) for a, b in pairs],
        run.work_dir / "pairs.txt",
        num_threads=run.num_threads,
        min_num_inliers=opt.min_num_inliers,
        seed=run.seed,
    )
    return len(pairs)


def _plan_poses(run: _Run) -> dict[str, np.ndarray]:
    return {
        run.names[v][f]: run.plan.world_from_cam[v, f]
        for v in range(run.plan.num_videos)
        for f in range(run.plan.num_frames)
    }


def _triangulate(run: _Run, poses: dict[str, np.ndarray], sub: str) -> colmap.Model:
    """Triangulate the verified matches with ``poses`` (``world_from_cam`` by frame name) into ``work_dir/sub``."""
    plan = run.plan
    with run.timed("triangulation"):
        return colmap.triangulate_known_poses(
            run.database,
            run.image_dir,
            run.work_dir / sub,
            poses,
            plan.K[0, 0],
            plan.width,
            plan.height,
            min_tri_angle_deg=run.opt.min_tri_angle_deg,
            num_threads=run.num_threads,
        )


def _solve_known_poses(run: _Run) -> colmap.Model:
    """Triangulate with the planned cameras, drop frames with too few points, bundle-adjust (poses may move)."""
    opt, plan = run.opt, run.plan
    poses = _plan_poses(run)
    model = _triangulate(run, poses, "triangulated")
    _drop_weak_frames(model, opt.min_observations)
    with run.timed("bundle_adjustment"):
        if model.num_points > 0:
            colmap.bundle_adjust(
                model,
                refine_poses=opt.refine_poses,
                position_priors_m={n: T[:3, 3] for n, T in poses.items()},
                position_prior_sigma_m=opt.position_prior_fraction * plan_extent_m(plan),
                num_threads=run.num_threads,
            )
    _drop_weak_frames(model, opt.min_observations)
    return model


def _use_plan(run: _Run) -> tuple[colmap.Model | None, np.ndarray, np.ndarray, Sim3, dict]:
    """The plan's cameras for every frame: triangulate the verified matches with them (no bundle adjustment, no frame
    dropped), then top the points up with random points inside the planned views. Returns what
    :func:`_align_to_plan` returns."""
    opt, plan = run.opt, run.plan
    run.planned = True
    poses = _plan_poses(run)
    model = None
    if colmap.read_database_stats(run.database).verified_inliers:
        model = _triangulate(run, poses, "triangulated_planned")
    found = model.num_points if model is not None else 0
    missing = max(0, opt.planned_seed_points - found)
    if missing:
        with run.timed("seed_points"):
            run.seed_points = random_points_in_views(plan, run.image_dir, run.names, missing, run.seed)
    log.info(
        "register: planned cameras; %d triangulated points, %d random points inside the views",
        found,
        len(run.seed_points[0]) if run.seed_points else 0,
    )
    registered = np.ones((plan.num_videos, plan.num_frames), bool)
    info = {"method": "none: the planned cameras are used as they are"}
    return model, plan.world_from_cam.copy(), registered, Sim3.identity(), info


def random_points_in_views(
    plan: Cameras,
    image_dir: Path,
    names: list[list[str]],
    count: int,
    seed: int = 0,
    min_views: int = 2,
    depth_range_m: tuple[float, float] = (0.3, 6.0),
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random points (world frame, metres) [P, 3] inside the planned views, with the colour [P, 3] uint8 of
    the frame pixel each was lifted from.

    Each point lifts a random pixel of a random frame to a depth just in front of the planner's proxy scene of the
    plan's scene kind (``plan.extras["scene"]``) at that pixel, or, without one, to a log-uniform depth in
    ``depth_range_m``; points seen by fewer than ``min_views`` planned frames are drawn again (a bounded number of
    times), so the cloud stays in the volume the videos share. Never reads ground truth.
    """
    import imageio.v3 as iio

    rng = np.random.default_rng(seed)
    V, F, H, W = plan.num_videos, plan.num_frames, plan.height, plan.width
    proxy = _proxy_depth(plan)  # [V, F, h, w] or None
    K_inv = np.linalg.inv(plan.K)  # [V, F, 3, 3]
    cam_from_world = np.linalg.inv(plan.world_from_cam)  # [V, F, 4, 4]
    frames: dict[tuple[int, int], np.ndarray] = {}
    xyz_out, rgb_out = [], []
    kept = 0
    for _ in range(8):
        n = 2 * (count - kept)
        v, f = rng.integers(0, V, n), rng.integers(0, F, n)
        u, w = rng.uniform(0, W, n), rng.uniform(0, H, n)
        if proxy is not None:
            ph, pw = proxy.shape[2:]
            d = proxy[v, f, np.minimum((w * ph / H).astype(int), ph - 1), np.minimum((u * pw / W).astype(int), pw - 1)]
            d = np.where(np.isfinite(d) & (d > 0), d * rng.uniform(0.8, 1.0, n), np.nan)
        else:
            d = np.full(n, np.nan)
        lo, hi = np.log(depth_range_m[0]), np.log(depth_range_m[1])
        d = np.where(np.isnan(d), np.exp(rng.uniform(lo, hi, n)), d)
        pix = np.stack([u, w, np.ones(n)], -1)  # [n, 3]
        x_cam = np.einsum("nij,nj->ni", K_inv[v, f], pix) * d[:, None]  # [n, 3] z = d
        T = plan.world_from_cam[v, f]  # [n, 4, 4]
        x_world = np.einsum("nij,nj->ni", T[:, :3, :3], x_cam) + T[:, :3, 3]  # [n, 3]
        # How many planned frames see each point.
        x_c = np.einsum("vfij,nj->vfni", cam_from_world[..., :3, :3], x_world) + cam_from_world[..., None, :3, 3]
        z = x_c[..., 2]  # [V, F, n]
        proj = np.einsum("vfij,vfnj->vfni", plan.K, x_c / np.where(z > 1e-6, z, 1.0)[..., None])
        inside = (z > 1e-6) & (proj[..., 0] >= 0) & (proj[..., 0] < W) & (proj[..., 1] >= 0) & (proj[..., 1] < H)
        ok = inside.sum(axis=(0, 1)) >= min_views
        ok[np.cumsum(ok) > count - kept] = False
        for i in np.flatnonzero(ok):
            key = (int(v[i]), int(f[i]))
            if key not in frames:
                frames[key] = np.asarray(iio.imread(image_dir / names[key[0]][key[1]]))[..., :3]
            img = frames[key]
            rgb_out.append(img[min(int(w[i]), img.shape[0] - 1), min(int(u[i]), img.shape[1] - 1)])
        xyz_out.append(x_world[ok])
        kept += int(ok.sum())
        if kept >= count:
            break
    xyz = np.concatenate(xyz_out) if xyz_out else np.zeros((0, 3))
    rgb = np.asarray(rgb_out, np.uint8).reshape(-1, 3)
    return xyz, rgb


def _proxy_depth(plan: Cameras, size_px: int = 48) -> np.ndarray | None:
    """z-depth [V, F, h, w] of the planner's proxy scene of the plan's scene kind, or None."""
    kind = plan.extras.get("scene")
    if not kind:
        return None
    from cvd_scene.plan.covisibility import proxy_depth, proxy_scene, sample_cameras
    from cvd_scene.plan.planning import scene_layout

    try:
        return proxy_depth(sample_cameras(plan, size_px), proxy_scene(scene_layout(kind)))
    except (ValueError, KeyError) as e:
        log.warning("no proxy scene for kind %r (%s); random points at log-uniform depths", kind, e)
        return None


def _solve_free(run: _Run) -> colmap.Model | None:
    """Map from the images alone: incremental, then (``auto``) global when frames are left out; largest model."""
    opt = run.opt
    total = run.plan.num_videos * run.plan.num_frames
    settings = colmap.MapperSettings(
        min_num_matches=opt.min_num_inliers,
        init_min_num_inliers=opt.init_min_num_inliers,
        init_min_tri_angle_deg=opt.init_min_tri_angle_deg,
        min_tri_angle_deg=opt.min_tri_angle_deg,
        seed=run.seed,
        num_threads=run.num_threads,
        refine_focal_length=not run.plan.poses_known,
    )
    models: list[colmap.Model] = []
    counts: dict[str, int] = {}
    used: str | None = None
    with run.timed("mapping"):
        if opt.free_mapper in ("auto", "incremental"):
            models = colmap.incremental_mapping(
                run.database, run.image_dir, run.work_dir / "mapped", settings
            )
            counts["incremental"] = len(models[0].world_from_cam()) if models else 0
            used = "incremental" if models else None
        if opt.free_mapper == "global" or (opt.free_mapper == "auto" and counts["incremental"] < total):
            if opt.free_mapper == "auto":
                log.info(
                    "register: incremental mapping registered %d/%d frames; trying global mapping",
                    counts["incremental"],
                    total,
                )
            found = colmap.global_mapping(
                run.database, run.image_dir, run.work_dir / "mapped_global", settings
            )
            counts["global"] = len(found[0].world_from_cam()) if found else 0
            if counts["global"] > counts.get("incremental", -1):
                models, used = found, "global"
    run.extra["free_mapping"] = {"mapper": used, "frames_registered_by_mapper": counts}
    if not models:
        run.problems.append(
            "no initial pair: the mapper found no pair of frames with enough verified matches and "
            "triangulation angle to start a model"
        )
        return None
    others = [len(m.world_from_cam()) for m in models[1:]]
    if others:
        run.problems.append(
            f"the mapper split the frames into {len(models)} models; kept the largest "
            f"({len(models[0].world_from_cam())} frames), left out models of {others} frames"
        )
    return models[0]


def _align_to_plan(
    run: _Run, model: colmap.Model | None
) -> tuple[colmap.Model | None, np.ndarray, np.ndarray, Sim3, dict]:
    """Robust similarity from the model's frame to the plan's world, applied to the model; returns it (None when
    fewer than two frames registered), the poses [V, F, 4, 4] (NaN where not registered), the mask [V, F], the
    similarity and what to report about it."""
    plan, names = run.plan, run.names
    world_from_cam, registered, idx, poses = _model_frames(run, model)
    if model is None:
        return None, world_from_cam, registered, Sim3.identity(), {}
    if len(idx) < 2:
        if idx:
            run.problems.append("only one frame registered: nothing to align to the plan")
        return None, world_from_cam, registered, Sim3.identity(), {}
    src = np.stack([poses[names[v][f]] for v, f in idx])  # [N, 4, 4] model frame
    dst = np.stack([plan.world_from_cam[v, f] for v, f in idx])  # [N, 4, 4] plan
    sim, inliers = align_poses(src, dst)
    model.transform(sim.scale, sim.rotation, sim.translation)
    for (v, f), T in zip(idx, sim.apply_poses(src)):
        world_from_cam[v, f] = T
        registered[v, f] = True
    info = {
        "method": "similarity: rotation from camera orientations, scale and translation from camera centres, "
        "robust (iterated inlier refit)",
        **sim.to_dict(),
        "inliers": int(inliers.sum()),
        "outliers": [names[v][f] for (v, f), ok in zip(idx, inliers) if not ok],
    }
    return model, world_from_cam, registered, sim, info


def _level_world(
    run: _Run, model: colmap.Model | None
) -> tuple[colmap.Model | None, np.ndarray, np.ndarray, Sim3, dict]:
    """Cameras without known poses: the similarity into the run's world from the cameras and the sparse points
    themselves (:func:`cvd_scene.register.world.level_world`), applied to the model; returns what
    :func:`_align_to_plan` returns."""
    from cvd_scene.register.world import level_world

    plan, names, opt = run.plan, run.names, run.opt
    world_from_cam, registered, idx, poses = _model_frames(run, model)
    if model is None or not idx:
        return None, world_from_cam, registered, Sim3.identity(), {}
    src = np.stack([poses[names[v][f]] for v, f in idx])  # [N, 4, 4] model frame; the first registered camera first
    sim, info = level_world(src, model.points()[0], opt.camera_height_m, opt.scale_m, seed=run.seed)
    model.transform(sim.scale, sim.rotation, sim.translation)
    for (v, f), T in zip(idx, sim.apply_poses(src)):
        world_from_cam[v, f] = T
        registered[v, f] = True
    K = model.intrinsics()
    info["intrinsics"] = {
        "before": plan.extras.get("intrinsics"),
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "fov_x_deg": round(float(np.degrees(2 * np.arctan(plan.width / (2 * K[0, 0])))), 3),
        "refined": "focal length refined by bundle adjustment",
    }
    run.K = K
    log.info("register: world levelled: up from %s; scale %s", info["up"], info["scale_from"])
    return model, world_from_cam, registered, sim, info


def _report(
    run: _Run,
    model: colmap.Model | None,
    world_from_cam: np.ndarray,
    registered: np.ndarray,
    sim: Sim3,
    alignment: dict,
    stats: colmap.DatabaseStats,
    requested: int,
) -> Registration:
    """Errors against the plan, status, message and the ``report.json`` document."""
    opt, plan, names = run.opt, run.plan, run.names
    V, F = plan.num_videos, plan.num_frames
    n_dropped = 0
    if model is not None:
        xyz, rgb, err, track = model.points()
        observations = model.observations()
        (xyz, rgb, err, track), n_dropped = sane_points(xyz, rgb, err, track)
    else:
        xyz, rgb, err, track = (
            np.zeros((0, 3)),
            np.zeros((0, 3), np.uint8),
            np.zeros(0),
            np.zeros(0, np.int64),
        )
        observations = {}
    n_triangulated = len(xyz)
    if run.seed_points is not None:
        xyz = np.concatenate([xyz, run.seed_points[0]])
        rgb = np.concatenate([rgb, run.seed_points[1]])
    if plan.poses_known:
        errors = pose_errors(
            np.where(registered[..., None, None], world_from_cam, plan.world_from_cam),
            registered,
            plan,
            opt.min_baseline_fraction,
        )
    else:  # nothing to compare with
        nan = np.full((V, F), np.nan)
        errors = {"rotation_deg": nan, "position_m": nan, "translation_direction_deg": np.zeros(0),
                  "relative_rotation_deg": np.zeros(0), "pairs_zero_baseline": 0, "extent_m": float("nan")}  # fmt: skip
    videos, video_problems = _diagnose_videos(plan, names, registered, stats, observations, opt)
    for v, vid in enumerate(plan.video_ids):
        videos[vid]["rotation_error_deg"] = error_stats(errors["rotation_deg"][v][registered[v]])
        videos[vid]["position_error_m"] = error_stats(errors["position_m"][v][registered[v]])
    problems = video_problems + run.problems
    n_reg, n_all = int(registered.sum()), V * F
    if n_reg == 0 or n_reg < opt.min_registered_fraction * n_all:
        status = "failed"
    elif n_reg < n_all:
        status = "partial"
    else:
        status = "finished"
    mode = "planned" if run.planned else opt.mode
    message = f"{opt.mode}: registered {n_reg}/{n_all} frames"
    if run.planned:
        message = (
            f"planned cameras for all {n_all} frames ({n_triangulated} triangulated points, "
            f"{len(xyz) - n_triangulated} random)"
        )
        if run.fallback_from is not None:
            fb = run.fallback_from
            message = (
                f"FALLBACK to the planned cameras: {fb['mode']} registered only {fb['registered']}/{n_all} frames; "
                + message
            )
            if fb["problems"]:
                message += "; " + "; ".join(fb["problems"][:3]) + ("; ..." if len(fb["problems"]) > 3 else "")
            failed = f"{fb['mode']} registration failed ({fb['registered']}/{n_all} frames)"
            problems = [failed + "; the fit uses the planned cameras", *fb["problems"]]
            status = "partial"
    elif status != "finished" and problems:
        message += "; " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    if status == "failed":
        message = "registration failed: " + message + " (details in register/report.json)"
    extent = errors["extent_m"]
    rot, pos = errors["rotation_deg"][registered], errors["position_m"][registered]
    report = {
        "format": "cvd-scene/registration",
        "version": 1,
        "mode": mode,
        "poses": "planned" if run.planned else "estimated",
        "fallback": run.fallback_from,
        "status": status,
        "message": message,
        "registered": n_reg,
        "total": n_all,
        "num_points": len(xyz),
        "reprojection_error_px": float(np.mean(err)) if len(err) else None,
        "reprojection_error_px_median": float(np.median(err)) if len(err) else None,
        "points_dropped_degenerate": n_dropped,
        "mean_track_length": float(np.mean(track)) if len(track) else None,
        "plan_extent_m": extent,
        "rotation_error_deg_median": error_stats(rot)["median"],
        "position_error_m_median": error_stats(pos)["median"],
        "translation_direction_error_deg_median": error_stats(errors["translation_direction_deg"])["median"],
        "seconds": round(run.timings["total"], 3),
        "rotation_error_deg": error_stats(rot, AUC_THRESHOLDS_DEG),
        "position_error_m": error_stats(pos),
        "position_error_fraction_of_extent": error_stats(pos / max(extent, 1e-12)),
        "translation_direction_error_deg": {
            **error_stats(errors["translation_direction_deg"], AUC_THRESHOLDS_DEG),
            "pairs_zero_baseline_skipped": errors["pairs_zero_baseline"],
        },
        "relative_rotation_error_deg": error_stats(errors["relative_rotation_deg"], AUC_THRESHOLDS_DEG),
        "alignment": alignment,
        "pairs": {
            "strategy": opt.pairing,
            "matched": requested,
            "verified": len(stats.verified_inliers),
            "exhaustive": n_all * (n_all - 1) // 2,
        },
        "features_per_frame_mean": float(np.mean(list(stats.num_keypoints.values())))
        if stats.num_keypoints
        else 0.0,
        "problems": problems,
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "videos": videos,
        "per_frame": [
            {
                "video": plan.video_ids[v],
                "frame": f,
                "registered": bool(registered[v, f]),
                "keypoints": stats.num_keypoints.get(names[v][f], 0),
                "observations": observations.get(names[v][f], 0),
                "rotation_error_deg": float(errors["rotation_deg"][v, f]) if registered[v, f] else None,
                "position_error_m": float(errors["position_m"][v, f]) if registered[v, f] else None,
            }
            for v in range(V)
            for f in range(F)
        ],
        **run.extra,
    }
    if run.planned:
        report["num_points_triangulated"] = n_triangulated
        _errors_not_measured(report, "the poses are the plan's")
    elif not plan.poses_known:
        report["poses"] = "estimated (no known poses)"
        report["plan_extent_m"] = None
        _errors_not_measured(report, "the pictures were imported without poses")
        for vid in plan.video_ids:
            videos[vid]["rotation_error_deg"] = videos[vid]["position_error_m"] = None
    elif opt.mode == "known-poses":
        report["pose_change"] = {
            "note": "how far bundle adjustment moved the planned poses (after the similarity alignment)",
            "rotation_deg": error_stats(rot),
            "position_m": error_stats(pos),
        }
    cams = Cameras(
        world_from_cam=world_from_cam,
        K=plan.K if run.K is None else run.K,
        width=plan.width,
        height=plan.height,
        video_ids=plan.video_ids,
        time_s=plan.time_s,
        fps=plan.fps,
    )
    log.info("register: %s", message)
    return Registration(status, message, cams, registered, model, xyz, rgb, report)


def _drop_weak_frames(model: colmap.Model, min_observations: int) -> None:
    weak = [n for n, k in model.observations().items() if k < min_observations]
    if weak:
        log.debug(
            "register: %d frames have fewer than %d triangulated points: %s",
            len(weak),
            min_observations,
            weak,
        )
        model.deregister(weak)


def _diagnose_videos(
    plan: Cameras,
    names: list[list[str]],
    registered: np.ndarray,
    stats: colmap.DatabaseStats,
    observations: dict[str, int],
    opt: RegisterConfig,
) -> tuple[dict, list[str]]:
    """Per-video summary and, for videos with unregistered frames, the most likely reason."""
    V, F = registered.shape
    video_of = {names[v][f]: v for v in range(V) for f in range(F)}
    within = np.zeros(V, int)
    across = np.zeros(V, int)
    for a, b in stats.verified_inliers:
        va, vb = video_of.get(a), video_of.get(b)
        if va is None or vb is None:
            continue
        if va == vb:
            within[va] += 1
        else:
            across[va] += 1
            across[vb] += 1
    videos: dict = {}
    problems: list[str] = []
    for v, vid in enumerate(plan.video_ids):
        kp = np.array([stats.num_keypoints.get(n, 0) for n in names[v]], float)
        n_reg = int(registered[v].sum())
        entry = {
            "registered": n_reg,
            "total": F,
            "keypoints_per_frame_mean": float(kp.mean()),
            "verified_pairs_within": int(within[v]),
            "verified_pairs_to_other_videos": int(across[v]),
        }
        if n_reg == F:
            entry["status"] = "ok"
        else:
            if kp.mean() < opt.min_features_per_frame:
                reason = (
                    f"too few features ({kp.mean():.0f} per frame on average): blank or featureless frames"
                )
            elif within[v] + across[v] == 0:
                reason = "too few matches: no pair of its frames passed geometric verification"
            elif across[v] == 0 and V > 1:
                reason = (
                    f"matched only within itself ({within[v]} verified pairs), never with another video: "
                    "inconsistent with the other videos"
                )
            elif opt.mode == "known-poses":
                reason = (
                    f"too few triangulated points (< {opt.min_observations}) with the planned poses: its matches "
                    "disagree with the plan"
                )
            else:
                reason = "not registered by the mapper (matches too few or inconsistent)"
            entry["status"] = "failed" if n_reg == 0 else "partial"
            entry["reason"] = reason
            missing = [f for f in range(F) if not registered[v, f]]
            entry["unregistered_frames"] = missing
            problems.append(f"video {vid}: {n_reg}/{F} frames registered, {reason}")
        videos[vid] = entry
    return videos, problems
