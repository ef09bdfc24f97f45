"""Pose-error maths of registration and evaluation: similarity alignment, AUC, epipolar error, frame overlap and
pair selection, each against a slow obviously-correct reference or known values (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from cvd_scene.cameras import Cameras, axis_angle_to_rotation, intrinsics_from_fov, look_at, project, rigid
from cvd_scene.plan.overlap import frame_overlap
from cvd_scene.register.pose_metrics import (
    Sim3,
    align_poses,
    epipolar_error_sq,
    error_stats,
    essential_from_pose,
    normalise_points,
    pose_auc,
    relative_pose,
    translation_direction_error_deg,
    umeyama,
)
from cvd_scene.register.registration import select_pairs


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    return axis_angle_to_rotation(rng.normal(size=3), rng.uniform(0, np.pi))


def random_poses(rng: np.random.Generator, n: int, spread_m: float = 2.0) -> np.ndarray:
    """[n, 4, 4] world_from_cam with random orientations and centres."""
    return np.stack([rigid(random_rotation(rng), rng.normal(size=3) * spread_m) for _ in range(n)])


def random_sim3(rng: np.random.Generator) -> Sim3:
    return Sim3(float(rng.uniform(0.05, 20.0)), random_rotation(rng), rng.normal(size=3) * 3)


# ------------------------------------------------------------------------------------------ alignment


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_recovers_a_known_similarity(seed):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(20, 3))
    sim = random_sim3(rng)
    est = umeyama(src, sim.apply_points(src))
    assert est.scale == pytest.approx(sim.scale, rel=1e-9)
    np.testing.assert_allclose(est.rotation, sim.rotation, atol=1e-9)
    np.testing.assert_allclose(est.translation, sim.translation, atol=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_align_poses_recovers_a_similarity_despite_noise_and_outliers(seed):
    rng = np.random.default_rng(seed)
    dst = random_poses(rng, 40)
    truth = random_sim3(rng)  # dst_from_src
    inv = Sim3(1 / truth.scale, truth.rotation.T, -truth.rotation.T @ truth.translation / truth.scale)
    src = inv.apply_poses(dst)
    src[:, :3, 3] += rng.normal(size=(40, 3)) * 1e-3 / truth.scale  # 1 mm noise in dst units
    bad = rng.choice(40, 6, replace=False)
    src[bad, :3, 3] += rng.normal(size=(6, 3)) * 5.0 / truth.scale  # gross outliers
    src[bad, :3, :3] = np.stack([random_rotation(rng) for _ in bad])
    est, inliers = align_poses(src, dst)
    assert est.scale == pytest.approx(truth.scale, rel=1e-3)
    np.testing.assert_allclose(est.rotation, truth.rotation, atol=1e-3)
    assert set(np.flatnonzero(~inliers)) == set(bad)
    aligned = est.apply_poses(src)
    good = np.setdiff1d(np.arange(40), bad)
    assert np.median(np.linalg.norm(aligned[good, :3, 3] - dst[good, :3, 3], axis=1)) < 3e-3


def test_align_poses_agrees_with_umeyama_on_well_spread_cameras():
    rng = np.random.default_rng(7)
    dst = random_poses(rng, 12)
    truth = random_sim3(rng)
    src = Sim3(
        1 / truth.scale, truth.rotation.T, -truth.rotation.T @ truth.translation / truth.scale
    ).apply_poses(dst)
    a, _ = align_poses(src, dst)
    b = umeyama(src[:, :3, 3], dst[:, :3, 3])
    np.testing.assert_allclose(a.matrix, b.matrix, atol=1e-8)


def test_align_poses_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        align_poses(np.eye(4)[None], np.eye(4)[None])


# ------------------------------------------------------------------------------------------------ AUC


def auc_reference(errors: np.ndarray, t: float, steps: int = 200001) -> float:
    """Integrate, on a fine grid, the recall curve: linear through (0, 0) and (e_i, i/N) for the errors below t,
    flat after the last of them."""
    e = np.sort(np.asarray(errors, float))
    n = len(e)
    below = e[e < t]
    xs = np.concatenate([[0.0], below])
    ys = np.concatenate([[0.0], np.arange(1, len(below) + 1) / n])
    grid = np.linspace(0.0, t, steps)
    curve = np.interp(grid, xs, ys, right=ys[-1])
    return float(np.trapezoid(curve, grid) / t)


@pytest.mark.parametrize("seed", range(4))
def test_pose_auc_matches_the_integrated_recall_curve(seed):
    rng = np.random.default_rng(seed)
    errors = rng.exponential(6.0, size=50)
    errors[rng.choice(50, 5, replace=False)] = np.inf  # failed estimates
    for t, got in zip((5.0, 10.0, 20.0), pose_auc(errors)):
        assert got == pytest.approx(auc_reference(errors, t), abs=1e-4)


def test_pose_auc_known_values():
    assert pose_auc(np.zeros(10)) == pytest.approx([1.0, 1.0, 1.0])
    assert pose_auc(np.full(4, np.inf)) == pytest.approx([0.0, 0.0, 0.0])
    assert pose_auc(np.array([np.nan, 0.0])) == pytest.approx([0.5, 0.5, 0.5])  # NaN = failure
    # One error at t/2: the curve rises linearly to 1 at t/2, then stays: area 0.25 t + 0.5 t.
    assert pose_auc(np.array([2.5]), (5.0,)) == pytest.approx([0.75])
    assert pose_auc(np.array([30.0])) == pytest.approx([0.0, 0.0, 0.0])


def test_error_stats_counts_failures_and_reports_auc_in_percent():
    s = error_stats(np.array([1.0, 2.0, 3.0, np.inf]), (5.0,))
    assert s["count"] == 4 and s["failed"] == 1 and s["median"] == 2.0
    assert s["auc"]["5"] == pytest.approx(100 * pose_auc(np.array([1.0, 2.0, 3.0, np.inf]), (5.0,))[0])


# ---------------------------------------------------------------------------------------- epipolar error


def epipolar_reference(x1: np.ndarray, x2: np.ndarray, cam2_from_cam1: np.ndarray) -> np.ndarray:
    """Squared distance of each point to the other's epipolar line, summed, one match at a time."""
    E = essential_from_pose(cam2_from_cam1)
    out = []
    for p, q in zip(x1, x2):
        ph, qh = np.append(p, 1.0), np.append(q, 1.0)
        line2 = E @ ph  # in image 2: a x + b y + c = 0
        line1 = E.T @ qh
        d2 = abs(line2 @ qh) / np.hypot(line2[0], line2[1])
        d1 = abs(line1 @ ph) / np.hypot(line1[0], line1[1])
        out.append(d1**2 + d2**2)
    return np.array(out)


def test_epipolar_error_matches_the_point_to_line_reference_and_is_zero_on_true_matches():
    rng = np.random.default_rng(3)
    K = intrinsics_from_fov(60.0, 256, 192)
    c1 = look_at(np.array([0.0, 1.5, 0.0]), np.array([0.2, 1.4, -3.0]))
    c2 = look_at(np.array([0.4, 1.6, 0.1]), np.array([-0.1, 1.5, -3.0]))
    pts = rng.uniform([-2, 0, -5], [2, 3, -3], size=(100, 3))
    uv1, _ = project(pts, c1, K)
    uv2, _ = project(pts, c2, K)
    T = relative_pose(c1, c2)
    x1, x2 = normalise_points(uv1, K), normalise_points(uv2, K)
    assert np.abs(epipolar_error_sq(x1, x2, T)).max() < 1e-20
    noisy = x2 + rng.normal(size=x2.shape) * 0.01
    np.testing.assert_allclose(epipolar_error_sq(x1, noisy, T), epipolar_reference(x1, noisy, T), rtol=1e-9)
    T_scaled = T.copy()
    T_scaled[:3, 3] *= 7.0  # the error does not depend on the baseline's length
    np.testing.assert_allclose(
        epipolar_error_sq(x1, noisy, T_scaled), epipolar_error_sq(x1, noisy, T), rtol=1e-9
    )


def test_translation_direction_error_folds_the_sign_only_when_asked():
    t = np.array([1.0, 0.0, 0.0])
    assert translation_direction_error_deg(-t, t) == pytest.approx(180.0)
    assert translation_direction_error_deg(-t, t, sign_ambiguous=True) == pytest.approx(0.0)
    assert translation_direction_error_deg(np.array([1.0, 1.0, 0.0]), t) == pytest.approx(45.0)


# ------------------------------------------------------------------------------------- overlap and pairs


def fan_plan(num_videos: int = 3, num_frames: int = 6, size: int = 64, yaw_step_deg: float = 10.0) -> Cameras:
    """Videos that start at one camera in a room and turn apart while moving forward."""
    c2w = np.zeros((num_videos, num_frames, 4, 4))
    for v in range(num_videos):
        for f in range(num_frames):
            yaw = np.deg2rad((v - (num_videos - 1) / 2) * yaw_step_deg * f)
            d = np.array([np.sin(yaw), -0.1, -np.cos(yaw)])
            eye = np.array([0.0, 1.5, 0.0]) + 0.05 * f * d
            c2w[v, f] = look_at(eye, eye + d)
    return Cameras(world_from_cam=c2w, K=intrinsics_from_fov(60.0, size, size), width=size, height=size)


def overlap_reference(cams: Cameras, grid: int = 12, depths=(1.0, 2.5, 6.0)) -> np.ndarray:
    """One pair and one point at a time."""
    V, F = cams.num_videos, cams.num_frames
    N = V * F
    out = np.zeros((N, N))
    for a in range(N):
        va, fa = divmod(a, F)
        Kinv = np.linalg.inv(cams.K[va, fa])
        pts = []
        for j in range(grid):
            for i in range(grid):
                ray = Kinv @ np.array([(i + 0.5) / grid * cams.width, (j + 0.5) / grid * cams.height, 1.0])
                for d in depths:
                    pts.append(cams.world_from_cam[va, fa] @ np.append(ray * d, 1.0))
        for b in range(N):
            vb, fb = divmod(b, F)
            seen = 0
            for p in pts:
                q = np.linalg.inv(cams.world_from_cam[vb, fb]) @ p
                if q[2] <= 1e-6:
                    continue
                u, v, w = cams.K[vb, fb] @ q[:3]
                if 0 <= u / w <= cams.width and 0 <= v / w <= cams.height:
                    seen += 1
            out[a, b] = seen / len(pts)
    return out


def test_frame_overlap_matches_the_loop_reference():
    cams = fan_plan(2, 3, yaw_step_deg=35.0)
    got = frame_overlap(cams, grid=6, chunk=4)
    np.testing.assert_allclose(got, overlap_reference(cams, grid=6), atol=1e-12)
    assert np.allclose(np.diag(got), 1.0)
    assert got[0, 3] == pytest.approx(1.0)  # frame 0 of both videos (index v * F + f) is the common start


def test_frame_overlap_with_depth_and_facing_away_views():
    cams = fan_plan(2, 2, yaw_step_deg=180.0)  # video 1 turns around by frame 1
    depth = np.full((2, 2, 8, 8), 3.0)
    ov = frame_overlap(cams, depth)
    assert ov[1, 3] == pytest.approx(0.0)  # v00 f1 and v01 f1 look in opposite directions
    depth[0, 0] = 0.0  # nothing hit: no points, no overlap
    assert frame_overlap(cams, depth)[0, 1] == 0.0


def test_select_pairs_follows_the_plan_structure():
    V, F = 3, 10
    pairs = select_pairs(V, F, sequential_overlap=2, loop_gaps=True, cross_neighbours=0)
    assert pairs == sorted(set(pairs)) and all(a < b for a, b in pairs)
    within = {(a, b) for a, b in pairs if a[0] == b[0]}
    gaps = {b[1] - a[1] for a, b in within}
    assert gaps == {1, 2, 4, 8}
    cross = [(a, b) for a, b in pairs if a[0] != b[0]]
    assert all(a[1] == b[1] for a, b in cross) and len(cross) == 3 * F
    # Co-visibility drops the same-index pairs that see nothing in common.
    cov = np.ones((V, V, F))
    cov[0, 2, 5:] = cov[2, 0, 5:] = 0.0
    kept = select_pairs(V, F, cov, sequential_overlap=2, cross_neighbours=0)
    assert ((0, 7), (2, 7)) not in kept and ((0, 3), (2, 3)) in kept
    assert len(select_pairs(V, F)) < V * F * (V * F - 1) // 2


def test_select_pairs_adds_overlapping_frames_of_other_videos_at_other_indices():
    V, F = 2, 6
    ov = np.zeros((V * F, V * F))
    ov[0 * F + 5, 1 * F + 1] = ov[1 * F + 1, 0 * F + 5] = 0.9
    pairs = select_pairs(V, F, np.zeros((V, V, F)), ov, cross_neighbours=0)
    assert ((0, 5), (1, 1)) in pairs
    assert not any(a[0] != b[0] and (a, b) != ((0, 5), (1, 1)) for a, b in pairs)
    with pytest.raises(ValueError, match="overlap"):
        select_pairs(V, F, overlap=np.zeros((3, 3)))
