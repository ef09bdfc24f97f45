"""The consistency evaluation (the CVD paper's protocol with SIFT): the essential-matrix wrapper on synthetic
correspondences, pair bookkeeping, and on rendered videos -- consistent frames score high, the same frames shuffled
between two videos score clearly worse (the assertions say by how much)."""

from __future__ import annotations

import numpy as np
import pytest

from cvd_scene.camera_io import read_cameras_json
from cvd_scene.cameras import angle_between_deg, intrinsics_from_fov, look_at, project, rotation_angle_deg
from cvd_scene.evaluate.consistency import consistency_pairs, evaluate_consistency, format_table
from cvd_scene.evaluate.run import EvaluateConfig
from cvd_scene.media import read_frames
from cvd_scene.plan.overlap import planned_depth
from cvd_scene.register import colmap
from cvd_scene.register.pose_metrics import epipolar_error_sq, normalise_points, relative_pose
from cvd_scene.register.registration import read_covisibility
from tests.registration_runs import small_run, swap_odd_frames


def test_essential_matrix_recovers_the_relative_pose_of_synthetic_correspondences():
    """Known 3D points projected into two known cameras, with 0.3 px noise and 20 % wrong matches."""
    rng = np.random.default_rng(0)
    K = intrinsics_from_fov(60.0, 256, 256)
    c1 = look_at(np.array([0.0, 1.5, 0.0]), np.array([0.3, 1.4, -3.0]))
    c2 = look_at(np.array([0.35, 1.55, -0.1]), np.array([-0.2, 1.5, -3.0]))
    pts = rng.uniform([-2.5, 0.0, -6.0], [2.5, 3.0, -2.5], size=(300, 3))
    uv1, _ = project(pts, c1, K)
    uv2, _ = project(pts, c2, K)
    uv1 = uv1 + rng.normal(size=uv1.shape) * 0.3
    uv2 = uv2 + rng.normal(size=uv2.shape) * 0.3
    wrong = rng.choice(300, 60, replace=False)
    uv2[wrong] = rng.uniform(0, 256, size=(60, 2))
    est = colmap.estimate_relative_pose(uv1, uv2, K, K, 256, 256, max_error_px=1.0, seed=0)
    assert est is not None
    T, inliers = est
    true = relative_pose(c1, c2)
    assert rotation_angle_deg(T[:3, :3], true[:3, :3]) < 0.1
    assert angle_between_deg(T[:3, 3], true[:3, 3]) < 1.0  # cheirality fixes the sign
    assert inliers.sum() >= 230 and not inliers[wrong].mean() > 0.1
    # The true pose explains the correct matches within the protocol's threshold, and not the wrong ones.
    err = epipolar_error_sq(normalise_points(uv1, K), normalise_points(uv2, K), true)
    good = np.setdiff1d(np.arange(300), wrong)
    assert np.mean(err[good] < 5e-4) == 1.0 and np.mean(err[wrong] < 5e-4) < 0.2
    assert colmap.estimate_relative_pose(uv1[:4], uv2[:4], K, K, 256, 256) is None  # too few matches


def test_sift_matching_on_an_image_and_its_shifted_copy():
    rng = np.random.default_rng(1)
    big = rng.random((40, 40, 3))
    img = np.kron(big, np.ones((4, 4, 1)))  # [160, 160, 3] blocky texture
    img = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1)) / 3
    shifted = np.roll(img, (5, 9), axis=(0, 1))
    f = colmap.extract_sift([img, shifted, np.zeros((64, 64))], max_num_features=500, num_threads=1)
    assert len(f[0]) > 100 and len(f[2]) == 0
    m = colmap.match_sift(f, [(0, 1), (0, 2)], num_threads=1)
    assert len(m[1]) == 0
    d = f[1].xy[m[0][:, 1]] - f[0].xy[m[0][:, 0]]
    inside = np.all((f[0].xy[m[0][:, 0]] > 12) & (f[0].xy[m[0][:, 0]] < 148), axis=1)
    assert np.median(np.abs(d[inside] - [9, 5]), axis=0).max() < 0.2


def test_protocol_pairs():
    pairs = consistency_pairs(3, 4)
    assert pairs["within_video"][:3] == [((0, 0), (0, 1)), ((0, 0), (0, 2)), ((0, 0), (0, 3))]
    assert len(pairs["within_video"]) == 3 * 3 and len(pairs["cross_video"]) == 3 * 4
    assert all(a[1] == b[1] and a[0] < b[0] for a, b in pairs["cross_video"])


@pytest.fixture
def rendered():
    """Frames, plan, co-visibility and ground-truth depth of the fast suite's run."""
    run_dir, _ = small_run()
    plan = read_cameras_json(run_dir / "plan" / "cameras.json")
    frames = read_frames(run_dir / "generate" / "frames", plan.video_ids, plan.num_frames)
    cov = read_covisibility(run_dir / "plan" / "covisibility.json", plan)
    return frames, plan, cov, planned_depth(run_dir, plan)


def test_bad_inputs_name_the_value(rendered):
    frames, plan, _, _ = rendered
    with pytest.raises(ValueError, match="frames"):
        evaluate_consistency(frames[:, :, :, :, 0], plan)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_consistency(frames[:2], plan)
    with pytest.raises(ValueError, match="covisibility"):
        evaluate_consistency(frames, plan, np.ones((2, 2, 2)))


def test_frames_shuffled_between_two_videos_score_clearly_worse(rendered):
    frames, plan, cov, depth = rendered
    good = evaluate_consistency(frames, plan, cov, depth=depth, num_threads=1)
    bad = evaluate_consistency(swap_odd_frames(frames), plan, cov, depth=depth, num_threads=1)
    for key in ("within_video", "cross_video"):
        assert good[key]["pairs_scored"] == bad[key]["pairs_scored"] > 0
    # Measured on this run: within videos rotation AUC@5 86.7 -> 47.6, precision 97.1 -> 55.5, matching score
    # 30.5 -> 16.4; across videos rotation AUC@5 83.6 -> 23.7, precision 97.6 -> 46.3. Shuffling changes nothing
    # else, so the drop is the inconsistency.
    g, b = good["within_video"], bad["within_video"]
    assert g["rot_auc"][0] > 75.0
    assert g["rot_auc"][0] - b["rot_auc"][0] > 25.0, (g["rot_auc"], b["rot_auc"])
    assert g["precision"] - b["precision"] > 25.0, (g["precision"], b["precision"])
    assert g["matching_score"] > b["matching_score"]
    gc, bc = good["cross_video"], bad["cross_video"]
    assert gc["rot_auc"][0] - bc["rot_auc"][0] > 30.0, (gc["rot_auc"], bc["rot_auc"])
    table = format_table(bad)
    assert "| within videos | this run" in table and "Real RealEstate10K frames (paper)" in table


def test_pairs_without_shared_view_are_skipped_and_counted(rendered):
    frames, plan, cov, depth = rendered
    strict = evaluate_consistency(
        frames, plan, cov, EvaluateConfig(covisibility_min=0.99), depth=depth, num_threads=1
    )
    loose = evaluate_consistency(
        frames, plan, cov, EvaluateConfig(covisibility_min=0.0), depth=depth, num_threads=1
    )
    V, F = plan.num_videos, plan.num_frames
    for res in (strict, loose):
        w, c = res["within_video"], res["cross_video"]
        assert w["pairs_scored"] + w["skipped_zero_baseline"] + w["skipped_no_covisibility"] == V * (F - 1)
        assert (
            c["pairs_scored"] + c["skipped_zero_baseline"] + c["skipped_no_covisibility"]
            == V * (V - 1) // 2 * F
        )
        assert c["skipped_zero_baseline"] == V * (V - 1) // 2  # the common first camera
    assert loose["within_video"]["pairs_scored"] == V * (F - 1)
    assert strict["within_video"]["pairs_scored"] < loose["within_video"]["pairs_scored"]
    assert strict["cross_video"]["pairs_scored"] == 0 and strict["cross_video"]["rot_auc"] == [
        None,
        None,
        None,
    ]
