"""The warp measure (:mod:`cvd_scene.evaluate.warp_consistency`): exact on closed-form geometry, SSIM against an independent
implementation (scikit-image), and on real reference-renderer videos it tells consistent from inconsistent videos
at any sharpness."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cvd_scene.camera_io import read_cameras_json, read_json
from cvd_scene.evaluate.warp_consistency import read_depth, ssim_map, warp_consistency, warp_pair
from cvd_scene.media import read_frames
from tests.registration_runs import copy_run, run_stage, small_run, swap_odd_frames

K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])


def test_a_camera_warped_onto_itself_returns_its_frame_where_there_is_depth():
    rng = np.random.default_rng(0)
    frame = rng.random((48, 64, 3))
    depth = np.full((48, 64), 2.0)
    depth[:10] = 0.0  # empty sky
    warped, ok = warp_pair(frame, frame, depth, depth, K, K, np.eye(4), np.eye(4))
    np.testing.assert_array_equal(ok, depth > 0)
    np.testing.assert_allclose(warped[ok], frame[ok], atol=1e-12)


def test_a_sideways_step_in_front_of_a_plane_shifts_pixels_by_f_t_over_d():
    # A horizontal ramp on a fronto-parallel plane at 2 m; B stands 0.1 m to the right (OpenCV +x), so a point
    # seen by A at column x is seen by B at x - f*t/d = x - 2.5 px; the bilinear warp of a ramp is exact.
    H, W = 48, 64
    ramp = np.broadcast_to((np.arange(W) / W)[None, :, None], (H, W, 3)).copy()
    depth = np.full((H, W), 2.0)
    world_from_b = np.eye(4)
    world_from_b[0, 3] = 0.1
    warped, ok = warp_pair(ramp, ramp, depth, depth, K, K, np.eye(4), world_from_b)
    cols = np.arange(W)
    expect_ok = np.broadcast_to((cols - 2.5 >= 0)[None], (H, W))
    np.testing.assert_array_equal(ok, expect_ok)
    np.testing.assert_allclose(warped[ok][:, 0], np.broadcast_to(((cols - 2.5) / W)[None], (H, W))[ok], atol=1e-12)
    # An occluder in B's view at the projected place removes those pixels.
    depth_b = depth.copy()
    depth_b[:, 20:30] = 1.0
    _, ok_b = warp_pair(ramp, ramp, depth, depth_b, K, K, np.eye(4), world_from_b)
    assert not ok_b[:, 23:32].any() and ok_b[:, 40:].all()


def test_ssim_map_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = gaussian_filter(rng.random((40, 50, 3)), (1, 1, 0))
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)
    _, ref = structural_similarity(
        a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True
    )
    ours = ssim_map(a, b)
    pad = 6  # away from the border, where the two pad differently
    np.testing.assert_allclose(ours[pad:-pad, pad:-pad], ref.mean(-1)[pad:-pad, pad:-pad], atol=1e-6)


@pytest.fixture(scope="module")
def small():
    run_dir, config = small_run()
    plan = read_cameras_json(run_dir / "plan" / "cameras.json")
    frames = read_frames(run_dir / "generate" / "frames", plan.video_ids, plan.num_frames)
    depth = read_depth(run_dir / "generate" / "gt" / "depth", plan.video_ids, plan.num_frames)
    return run_dir, config, plan, frames, depth


def test_ground_truth_videos_score_high_and_swapped_frames_low_at_any_sharpness(small):
    _, _, plan, frames, depth = small
    gt = warp_consistency(frames, depth, plan.world_from_cam, plan.K)
    swapped = warp_consistency(swap_odd_frames(frames), depth, plan.world_from_cam, plan.K)
    assert gt["psnr"] > 25 and gt["ssim"] > 0.85 and gt["kept_fraction"] > 0.15
    assert gt["psnr"] > swapped["psnr"] + 8 and gt["ssim"] > swapped["ssim"] + 0.3
    # Blurred far beyond what SIFT can match, consistent videos still score far above inconsistent ones.
    blur = gaussian_filter(frames, sigma=(0, 0, 4, 4, 0))
    mirrored = blur.copy()
    mirrored[1:] = blur[1:, :, :, ::-1]
    a = warp_consistency(blur, depth, plan.world_from_cam, plan.K)
    b = warp_consistency(mirrored, depth, plan.world_from_cam, plan.K)
    assert a["psnr"] > b["psnr"] + 10


def test_evaluate_reports_the_warp_measure_where_ground_truth_depth_exists(small, tmp_path):
    run_dir = copy_run(small[0], tmp_path / "run")
    result = run_stage(run_dir, small[1], "evaluate")
    warp = read_json(run_dir / "evaluate" / "consistency.json")["warp"]
    assert warp["psnr"] > 25 and result.summary["warp_psnr"] == pytest.approx(warp["psnr"])
