"""The trajectory planner, co-visibility and coverage, the plots and the ``plan`` stage and command."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cvd_scene.camera_io import read_cameras_json, write_cameras_json
from cvd_scene.cameras import (
    Cameras,
    check_rotations,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    project,
    rotation_angle_deg,
)
from cvd_scene.plan import covisibility as C
from cvd_scene.plan import planning as P

RE10K = sorted((Path(__file__).parent / "data" / "re10k_poses").glob("*.txt"))
FAN_OUT = ("look-around", "forward-fan", "spiral", "orbit", "circle", "hemisphere", "interpolate")


def inside_box(cams, box_min_m, box_max_m, margin_m: float = 0.0) -> bool:
    """Whether every camera centre lies inside the box shrunk by ``margin_m``."""
    pos = cams.positions
    return bool(np.all((pos >= np.asarray(box_min_m) + margin_m) & (pos <= np.asarray(box_max_m) - margin_m)))


def proxy_depth_fn(layout):
    """A ``depth_fn`` that renders the layout's proxy scene."""
    scene = C.proxy_scene(layout)
    return lambda cameras: C.proxy_depth(cameras, scene)


def plan(pattern: str, V: int, F: int, kind: str = "room", w: int = 64, h: int = 48, fov: float = 60.0, **kw):
    layout = P.scene_layout(kind)
    c2w = P.plan_pattern(pattern, V, F, P.trajectory_params(layout, pattern, **kw))
    return P.make_cameras(c2w, w, h, fov)


# --------------------------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("kind", P.SCENE_KINDS)
@pytest.mark.parametrize("pattern", list(P.PATTERNS))
def test_every_pattern_rigid_common_start_and_baseline(pattern, kind):
    layout = P.scene_layout(kind)
    params = P.trajectory_params(layout, pattern)
    start = P.start_pose(params)
    for V in range(1, 10):
        for F in (1, 2, 5, 16):
            c2w = P.plan_pattern(pattern, V, F, params)
            assert c2w.shape == (V, F, 4, 4)
            check_rotations(c2w, atol=1e-9)
            # one common first camera: the start pose itself (orbit: the start on its sphere, here the same)
            np.testing.assert_allclose(c2w[:, 0], np.broadcast_to(start, (V, 4, 4)), atol=1e-9)
            if V > 1 and F > 1:
                cams = P.make_cameras(c2w, 32, 32, 60)
                assert P.min_baseline_m(cams)[1:].min() > 1e-3, (pattern, kind, V, F)


@pytest.mark.parametrize("pattern", list(P.PATTERNS))
def test_room_patterns_stay_inside_the_room(pattern):
    layout = P.scene_layout("room")
    for V in range(1, 10):
        cams = plan(pattern, V, 12)
        assert inside_box(cams, layout.bounds_min_m, layout.bounds_max_m, margin_m=0.2), (pattern, V)


def test_look_around_turns_each_video_to_its_quarter_and_moves_that_way():
    cams = plan("look-around", 4, 12)
    R = cams.world_from_cam[:, :, :3, :3]
    forward = R[..., 2]  # [V, F, 3] camera +z in the world
    np.testing.assert_allclose(forward[0, -1], forward[0, 0], atol=1e-12)  # video 0 keeps its heading
    # every pair of neighbours ends 90 degrees apart in yaw; every video moves along its final heading
    level = forward[:, -1] * [1, 0, 1]
    level /= np.linalg.norm(level, axis=-1, keepdims=True)
    for i in range(4):
        ang = math.degrees(math.acos(np.clip(level[i] @ level[(i + 1) % 4], -1, 1)))
        assert ang == pytest.approx(90.0, abs=1e-6)
        move = cams.positions[i, -1] - cams.positions[i, 0]
        assert np.linalg.norm(move) == pytest.approx(0.6)
        np.testing.assert_allclose(move / 0.6, level[i], atol=1e-9)
    # video 1 turns left (towards -x) when the first camera looks along about -z
    assert cams.positions[1, -1, 0] < -0.5


def test_forward_fan_walks_diverging_directions_and_faces_them_after_half_the_clip():
    cams = plan("forward-fan", 3, 11, kind="courtyard")
    move = cams.positions[:, -1] - cams.positions[:, 0]
    assert np.linalg.norm(move, axis=-1) == pytest.approx([3.0, 3.0, 3.0])
    yaw = np.degrees(np.arctan2(-move[:, 0], -move[:, 2]))
    np.testing.assert_allclose(yaw, [-45.0, 0.0, 45.0], atol=1e-9)
    forward = cams.world_from_cam[:, 5:, :3, 2]  # frames from half-way on face the walking direction
    np.testing.assert_allclose(forward, np.broadcast_to((move / 3.0)[:, None], forward.shape), atol=1e-9)


def test_orbit_keeps_radius_looks_at_target_and_spreads_videos():
    layout = P.scene_layout("table")
    cams = plan("orbit", 4, 9, kind="table")
    target = np.asarray(layout.look_at_m)
    np.testing.assert_allclose(np.linalg.norm(cams.positions - target, axis=-1), 1.2, atol=1e-9)
    uv, z = project(np.broadcast_to(target, (4, 9, 1, 3)), cams.world_from_cam, cams.K)
    np.testing.assert_allclose(uv[..., 0, :], np.broadcast_to([32.0, 24.0], (4, 9, 2)), atol=1e-9)
    assert np.all(z > 0)
    # left, up, right, down: video 0 and 2 go round by +-160 deg, video 1 climbs 20 deg, video 3 descends
    rel = cams.positions[:, -1] - target
    el = np.degrees(np.arcsin(rel[:, 1] / 1.2))
    np.testing.assert_allclose(el, [25.0, 45.0, 25.0, 5.0], atol=1e-9)
    az = np.degrees(np.arctan2(rel[:, 0], rel[:, 2]))
    np.testing.assert_allclose(az[[0, 2]], [160.0, -160.0], atol=1e-9)
    np.testing.assert_allclose(cams.positions[0], cams.positions[2] * [-1, 1, 1], atol=1e-9)  # mirrored
    # a given radius moves the start onto that sphere, still one common first camera
    c2 = P.plan_pattern("orbit", 3, 4, P.trajectory_params(layout, "orbit", orbit_radius_m=2.0))
    np.testing.assert_allclose(np.linalg.norm(c2[..., :3, 3] - target, axis=-1), 2.0)
    np.testing.assert_allclose(c2[:, 0], np.broadcast_to(c2[0, 0], (3, 4, 4)))
    with pytest.raises(ValueError, match="orbit elevation reaches"):
        P.plan_pattern("orbit", 4, 4, P.trajectory_params(layout, "orbit", orbit_swing_deg=70.0))


def test_released_patterns_end_on_the_release_geometry():
    layout = P.scene_layout("room")
    params = P.trajectory_params(layout, "circle", released_offset_m=0.4)
    start = P.start_pose(params)
    for name, V in (("circle", 4), ("hemisphere", 5), ("interpolate", 6)):
        c2w = P.plan_pattern(name, V, 16, params)
        if name == "circle":
            a = 2 * np.pi * np.arange(V) / V
            off = np.stack([np.cos(a), np.sin(a), 0 * a], -1)
        elif name == "hemisphere":
            a = np.pi + np.pi * np.arange(V) / (V - 1)
            off = np.stack([np.cos(a), np.sin(a), 0 * a], -1)
        else:
            a = np.pi * np.arange(V) / (V - 1)
            off = np.stack([np.cos(a), 0.3 * np.cos(a + 0.5), -0.2 * np.sin(a)], -1)
        last_in_start = (invert_rigid(start) @ c2w[:, -1])[:, :3, 3]
        np.testing.assert_allclose(last_in_start, 0.4 * off, atol=1e-9)
        look = np.broadcast_to(np.asarray(params.look_at_m), (V, 1, 3))
        uv, z = project(look, c2w[:, -1], intrinsics_from_fov(60, 64, 64))
        assert np.all(z > 0)
        np.testing.assert_allclose(uv[:, 0], 32.0, atol=1e-9)  # every last camera looks at the look-at point
        # positions move linearly from the start
        np.testing.assert_allclose(
            c2w[:, 8, :3, 3] - c2w[:, 0, :3, 3], (c2w[:, -1, :3, 3] - c2w[:, 0, :3, 3]) * 8 / 15
        )
    hemi = P.plan_pattern("hemisphere", 5, 4, params)
    assert np.all(hemi[:, -1, 1, 3] >= start[1, 3] - 1e-9)  # the upper half: never below the start


def test_unknown_pattern_bad_counts_and_parameters_are_named():
    layout = P.scene_layout("room")
    params = P.trajectory_params(layout, "look-around")
    with pytest.raises(ValueError, match=r"unknown pattern 'zigzag'; known patterns: look-around, orbit"):
        P.plan_pattern("zigzag", 2, 2, params)
    with pytest.raises(ValueError, match=r"unknown pattern 'zigzag'"):
        P.trajectory_params(layout, "zigzag")
    with pytest.raises(ValueError, match=r"num_videos must be an integer >= 1, got 0"):
        P.plan_pattern("orbit", 0, 4, params)
    with pytest.raises(ValueError, match=r"num_frames must be an integer >= 1, got 0"):
        P.plan_pattern("look-around", 2, 0, params)
    with pytest.raises(ValueError, match=r"spread_deg must be in \[0, 360\], got 400"):
        P.trajectory_params(layout, "look-around", spread_deg=400)
    with pytest.raises(ValueError, match=r"unknown scene kind 'beach'; known kinds: room, table, courtyard"):
        P.scene_layout("beach")
    with pytest.raises(ValueError, match="looks straight up or down"):
        P.start_pose(P.trajectory_params(layout, "circle", look_at_m=(0, 3, 0)))


def test_scene_kind_from_prompt_words():
    assert P.scene_kind_from_prompt("a cosy room with a red sofa") == "room"
    assert P.scene_kind_from_prompt("a wooden table with fruit") == "table"
    assert P.scene_kind_from_prompt("a room with a table") == "room"
    assert P.scene_kind_from_prompt("a table in a sunny courtyard") == "courtyard"
    assert P.scene_kind_from_prompt("something else") == "room"


def test_slerp_and_trajectory_interpolation_match_scipy():
    from scipy.spatial.transform import Rotation, Slerp

    R = Rotation.random(6, random_state=1).as_matrix()
    t = np.linspace(0, 1, 7)
    for a, b in ((R[0], R[1]), (R[2], R[3]), (R[4], R[4])):
        ours = P.slerp_rotations(a, b, t)
        ref = Slerp([0, 1], Rotation.from_matrix([a, b]))(t).as_matrix()
        np.testing.assert_allclose(ours, ref, atol=1e-9)
    # the 180-degree case picks one of the two shortest arcs and still lands on b
    flip = Rotation.from_rotvec([0, np.pi, 0]).as_matrix()
    half = P.slerp_rotations(np.eye(3), flip, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(half[-1], flip, atol=1e-9)
    assert rotation_angle_deg(np.eye(3), half[1]) == pytest.approx(90.0)
    # two trajectories with one first camera: every blend keeps it, weight 0 and 1 give the inputs back
    a = P.plan_pattern("look-around", 2, 5, P.trajectory_params(P.scene_layout("room"), "look-around"))
    blend = P.interpolate_trajectories(a[0], a[1], [0.0, 0.25, 1.0])
    check_rotations(blend)
    np.testing.assert_allclose(blend[0], a[0], atol=1e-9)
    np.testing.assert_allclose(blend[2], a[1], atol=1e-9)
    np.testing.assert_allclose(blend[:, 0], np.broadcast_to(a[0, 0], (3, 4, 4)), atol=1e-9)
    np.testing.assert_allclose(blend[1, :, :3, 3], 0.75 * a[0, :, :3, 3] + 0.25 * a[1, :, :3, 3])


def test_perturbation_is_seeded_and_keeps_the_common_start():
    c2w = P.plan_pattern("look-around", 3, 8, P.trajectory_params(P.scene_layout("room"), "look-around"))
    p1 = P.perturb(c2w, 0.1, 5.0, seed=3)
    p2 = P.perturb(c2w, 0.1, 5.0, seed=3)
    p3 = P.perturb(c2w, 0.1, 5.0, seed=4)
    check_rotations(p1)
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(p1, p3)
    np.testing.assert_allclose(p1[:, 0], c2w[:, 0], atol=1e-12)
    assert np.abs(p1[:, -1] - c2w[:, -1]).max() > 1e-3


def test_re10k_plans_share_the_start_and_blend():
    start = P.start_pose(P.trajectory_params(P.scene_layout("room"), "look-around"))
    cams = P.cameras_from_re10k(RE10K[:3], 96, 64, metres_per_unit=0.5, world_from_start=start)
    assert (cams.num_videos, cams.num_frames, cams.width, cams.height) == (3, 16, 96, 64)
    check_rotations(cams.world_from_cam)
    np.testing.assert_allclose(cams.world_from_cam[:, 0], np.broadcast_to(start, (3, 4, 4)), atol=1e-9)
    blend = P.cameras_from_re10k(RE10K[:2], 64, 64, blend_videos=5)
    assert blend.num_videos == 5
    check_rotations(blend.world_from_cam)
    with pytest.raises(ValueError, match="needs exactly 2 files, got 3"):
        P.cameras_from_re10k(RE10K[:3], 64, 64, blend_videos=4)
    with pytest.raises(ValueError, match="must be > 0, got -1"):
        P.cameras_from_re10k(RE10K[:1], 64, 64, metres_per_unit=-1)


# ------------------------------------------------------------------------------------------ co-visibility


def _loop_covisibility(cams: Cameras, scene: C.ProxyScene) -> np.ndarray:
    """Obviously-correct per-pixel reference: scalar ray casts against every rectangle, one pixel at a
    time."""

    def first_hit(o, d):
        best = math.inf
        for q in range(len(scene.axis)):
            ax = scene.axis[q]
            if abs(d[ax]) < 1e-12:
                continue
            t = (scene.lo[q, ax] - o[ax]) / d[ax]
            if t <= 1e-9:
                continue
            p = o + t * d
            if all(scene.lo[q, k] - 1e-9 <= p[k] <= scene.hi[q, k] + 1e-9 for k in range(3) if k != ax):
                best = min(best, t)
        return best

    V, F, W, H = cams.num_videos, cams.num_frames, cams.width, cams.height
    out = np.zeros((V, V, F))
    for k in range(F):
        for i in range(V):
            c2w_i, K_i = cams.world_from_cam[i, k], cams.K[i, k]
            for y in range(H):
                for x in range(W):
                    d = c2w_i[:3, :3] @ np.linalg.solve(K_i, [x + 0.5, y + 0.5, 1.0])
                    t = first_hit(c2w_i[:3, 3], d)
                    for j in range(V):
                        w2c = np.linalg.inv(cams.world_from_cam[j, k])
                        cj = cams.world_from_cam[j, k, :3, 3]
                        if math.isinf(t):  # nothing hit: a direction at infinity
                            pc = w2c[:3, :3] @ d
                            ok_occ = math.isinf(first_hit(cj, d))
                        else:
                            X = c2w_i[:3, 3] + t * d
                            pc = w2c[:3, :3] @ X + w2c[:3, 3]
                            ok_occ = first_hit(cj, X - cj) >= 1 - 1e-4
                        if pc[2] <= 1e-9:
                            continue
                        u, v = (cams.K[j, k] @ pc)[:2] / pc[2]
                        if 0 <= u < W and 0 <= v < H and ok_occ:
                            out[i, j, k] += 1.0 / (W * H)
    return out


@pytest.mark.parametrize(
    "kind, pattern", [("table", "orbit"), ("courtyard", "forward-fan"), ("room", "look-around")]
)
def test_covisibility_matches_per_pixel_loop(kind, pattern):
    cams = plan(pattern, 3, 3, kind=kind, w=12, h=9)
    layout = P.scene_layout(kind)
    ref = _loop_covisibility(cams, C.proxy_scene(layout))
    got = C.covisibility(cams, layout, sample_width_px=None, coverage_points=500)
    np.testing.assert_allclose(got.matrix, ref, atol=1e-12)
    assert got.sample_size == (12, 9)


def test_covisibility_with_exact_depth_agrees_with_the_analytic_proxy():
    for kind, pattern in (("table", "orbit"), ("courtyard", "forward-fan")):
        layout = P.scene_layout(kind)
        cams = plan(pattern, 4, 6, kind=kind, w=64, h=48)
        analytic = C.covisibility(cams, layout, sample_width_px=48, coverage_points=2000)
        by_depth = C.covisibility(
            cams, layout, depth_fn=proxy_depth_fn(layout), sample_width_px=48, coverage_points=2000
        )
        assert by_depth.depth_source == "depth_fn" and analytic.depth_source == "proxy"
        diff = np.abs(by_depth.matrix - analytic.matrix)
        assert diff.max() < 0.05 and diff.mean() < 0.01, (kind, diff.max(), diff.mean())
        assert by_depth.coverage == analytic.coverage  # coverage is always measured on the proxy surface
    with pytest.raises(ValueError, match=r"depth_fn returned depth.shape=\(1, 1, 2, 2\)"):
        C.covisibility(cams, layout, depth_fn=lambda c: np.ones((1, 1, 2, 2)))


def test_covisibility_diagonal_range_symmetry_and_divergence():
    layout = P.scene_layout("room")
    cams = plan("look-around", 5, 6)
    res = C.covisibility(cams, layout, sample_width_px=32, coverage_points=2000)
    V = 5
    np.testing.assert_array_equal(res.matrix[np.arange(V), np.arange(V)], 1.0)
    assert np.all((res.matrix >= 0) & (res.matrix <= 1))
    np.testing.assert_array_equal(res.matrix[..., 0], 1.0)  # frame 0: one common camera
    # a mirror-symmetric pair in a mirror-symmetric room sees each other equally
    pair = plan("forward-fan", 2, 6, spread_deg=80.0)
    m = C.covisibility(pair, layout, sample_width_px=32, coverage_points=500).matrix
    np.testing.assert_allclose(m[0, 1], m[1, 0], atol=0.01)
    # the more two videos diverge, the less they share at the last frame
    last = []
    for spread in (10.0, 25.0, 40.0, 55.0, 90.0):  # with a 60-degree field of view
        cams2 = plan("look-around", 2, 6, spread_deg=spread)
        last.append(C.covisibility(cams2, layout, sample_width_px=32, coverage_points=500).matrix[0, 1, -1])
    assert all(a > b for a, b in itertools.pairwise(last[:-1])), last
    assert last[0] > 0.7 and last[-2] < 0.25 and last[-1] == 0.0, last


def test_coverage_in_unit_range_grows_with_n_and_matches_a_hand_computed_case():
    layout = P.scene_layout("room")
    covs, dirs = [], []
    for V in (1, 2, 4, 8):  # nested direction sets: 0 | 0,180 | 0,90,180,270 | every 45 deg
        r = C.covisibility(plan("look-around", V, 6), layout, sample_width_px=16, coverage_points=4000)
        covs.append(r.coverage)
        dirs.append(r.direction_coverage)
    assert all(0 <= c <= 1 for c in covs + dirs)
    assert all(a <= b for a, b in itertools.pairwise(covs)) and covs[-1] > covs[0] + 0.3, covs
    assert all(a <= b for a, b in itertools.pairwise(dirs)) and dirs[-1] > dirs[0] + 0.2, dirs
    # one camera at the room's centre, square 40-degree view straight at the wall z = -3 m:
    # it sees a 2 * 3 tan(20 deg) square of wall out of the room's 2 * 36 + 4 * 16.2 = 136.8 m^2
    c2w = look_at(np.array([0.0, 1.35, 0.0]), np.array([0.0, 1.35, -1.0]))
    one = P.make_cameras(c2w[None, None], 64, 64, 40.0)
    want = (2 * 3 * math.tan(math.radians(20))) ** 2 / 136.8
    assert C.surface_coverage(one, C.proxy_scene(layout), 40000) == pytest.approx(want, rel=0.02)
    # direction coverage of that camera: the solid angle of a square 40-degree pyramid over 4 pi
    a = math.tan(math.radians(20))
    solid = 4 * math.asin(a * a / (1 + a * a))
    assert C.direction_coverage(one, 20000) == pytest.approx(solid / (4 * math.pi), rel=0.03)


def test_covisibility_json_schema():
    cams = plan("orbit", 3, 4, kind="table")
    res = C.covisibility(cams, P.scene_layout("table"), sample_width_px=16, coverage_points=500)
    doc = C.covisibility_to_dict(res, cams.video_ids)
    assert doc["format"] == "cvd-scene/covisibility" and doc["version"] == 1
    assert doc["videos"] == ["v00", "v01", "v02"] and doc["frames"] == 4
    cov = np.asarray(doc["covisibility"])
    assert cov.shape == (3, 3, 4) and np.all(cov[np.arange(3), np.arange(3)] == 1.0)
    assert 0.0 <= doc["coverage"] <= 1.0
    json.dumps(doc)


# ----------------------------------------------------------------------------------------- stage and CLI


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_plan_stage_writes_its_files(tmp_path):
    from cvd_scene.config import from_dict
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runconfig import RunConfig

    config = from_dict(
        RunConfig,
        {
            "prompt": "a wooden table with fruit",
            "plan": {
                "num_videos": 5,
                "num_frames": 6,
                "width": 96,
                "height": 64,
                "reference_depth": False,
                "covisibility_width_px": 24,
                "coverage_points": 2000,
            },
        },
    )
    results = run_stages(tmp_path / "run", config, ["plan"])
    assert results["plan"].status == "finished"
    out = tmp_path / "run" / "plan"
    cams = read_cameras_json(out / "cameras.json")
    assert (cams.num_videos, cams.num_frames, cams.width, cams.height) == (5, 6, 96, 64)
    assert (
        cams.extras["pattern"] == "orbit" and cams.extras["scene"] == "table"
    )  # auto: a table gets an orbit
    assert P.common_start_error(cams) < 1e-12
    doc = json.loads((out / "covisibility.json").read_text())
    assert np.asarray(doc["covisibility"]).shape == (5, 5, 6)
    assert _png(out / "trajectories.png") and _png(out / "covisibility.png")
    summary = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["plan"]["summary"]
    assert summary["videos"] == 5 and 0 < summary["coverage"] <= 1 and summary["min_baseline_m"] > 0


def test_log_lines_go_to_stderr_and_stdout_stays_clean(tmp_path):
    """A command's log lines (and progress bars) are on stderr; stdout carries nothing, so it can be piped."""
    import subprocess
    import sys

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cvd_scene.cli", "plan", str(run), "plan.num_videos=2", "plan.num_frames=4",
         "plan.width=32", "plan.height=32", "plan.covisibility_width_px=16"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "stage plan" in proc.stderr and proc.stdout == ""


def test_help_into_a_closed_pipe_is_quiet():
    """``cvd-scene --help | head -1``: the reader is gone before the help is written; no "Broken pipe" error,
    exit 0 (the read end is closed before the command writes, so the write always fails)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "cvd_scene.cli", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Broken pipe" not in err, err


def test_overrides_may_stand_between_options(tmp_path):
    """``KEY=VALUE`` overrides before, between and after options all count (tyro alone takes a positional list
    only in one piece); an option's own value that looks like one stays that option's."""
    from cvd_scene.cli import main, overrides_last

    run = tmp_path / "run"
    fast = ["plan.reference_depth=false", "plan.covisibility_width_px=16", "plan.coverage_points=1000"]
    assert main(["plan", str(run), "plan.num_videos=2", "--quiet", "plan.num_frames=4", "--preset", "demo", *fast]) == 0
    cams = read_cameras_json(run / "plan" / "cameras.json")
    assert (cams.num_videos, cams.num_frames) == (2, 4)
    assert overrides_last(["run", "R", "--prompt", "a.b=c", "seed=1", "--redo", "fit.x=2"]) == [
        "run", "R", "--prompt", "a.b=c", "--redo", "seed=1", "fit.x=2",
    ]  # fmt: skip


def test_plan_command_through_the_cli(tmp_path, monkeypatch, capsys):
    from cvd_scene.cli import main

    run = tmp_path / "run"
    fast = ["plan.reference_depth=false", "plan.covisibility_width_px=16", "plan.coverage_points=1000"]
    assert main(["plan", str(run), "--preset", "demo", "--quiet", "plan.num_videos=3", *fast]) == 0
    cams = read_cameras_json(run / "plan" / "cameras.json")
    assert (cams.num_videos, cams.num_frames, cams.width) == (3, 12, 192)
    for name in ("cameras.json", "covisibility.json", "trajectories.png"):
        assert (run / "plan" / name).is_file()
    finished = json.loads((run / "run.json").read_text())["stages"]["plan"]["finished"]
    assert main(["plan", str(run), "--quiet"]) == 0  # same config: skipped
    assert json.loads((run / "run.json").read_text())["stages"]["plan"]["finished"] == finished
    assert main(["plan", str(run), "--quiet", "--redo", "plan.num_videos=2"]) == 0
    assert read_cameras_json(run / "plan" / "cameras.json").num_videos == 2
    # RealEstate10K files given relative to the current folder are stored absolute and used as given;
    # KEY=VALUE items after the files are still overrides
    monkeypatch.chdir(RE10K[0].parent)
    run2 = tmp_path / "run2"
    names = [RE10K[0].name, RE10K[1].name]
    assert main(["plan", str(run2), "--quiet", "--re10k-scale", "0.5", "--from-re10k", *names, *fast]) == 0
    config = json.loads((run2 / "run.json").read_text())["config"]["plan"]
    assert config["re10k_files"] == [str(RE10K[0]), str(RE10K[1])] and config["re10k_scale_m"] == 0.5
    assert config["re10k_reverse"] is False and config["coverage_points"] == 1000
    cams2 = read_cameras_json(run2 / "plan" / "cameras.json")
    assert (cams2.num_videos, cams2.num_frames) == (2, 16) and P.common_start_error(cams2) < 1e-9
    assert cams2.K[0, 0, 0, 0] == pytest.approx(0.474812461 * 1280 * 192 / 720, rel=1e-6)  # cover-resize
    run_rev = tmp_path / "run_rev"
    assert (
        main(
            [
                "plan",
                str(run_rev),
                "--quiet",
                *fast,
                "--re10k-scale",
                "0.5",
                "--re10k-reverse",
                "--from-re10k",
                names[0],
            ]
        )
        == 0
    )
    rev = read_cameras_json(run_rev / "plan" / "cameras.json")
    fwd = cams2.world_from_cam[0]
    # reversed: the same path played backwards, relative to its own first (the forward clip's last) pose
    np.testing.assert_allclose(rev.world_from_cam[0, -1], fwd[0] @ invert_rigid(fwd[-1]) @ fwd[0], atol=1e-6)
    # a cameras.json is used as given
    mine = tmp_path / "mine.json"
    write_cameras_json(cams2.select(videos=[1]), mine)
    assert main(["plan", str(tmp_path / "run3"), "--quiet", *fast, "--cameras", str(mine)]) == 0
    cams3 = read_cameras_json(tmp_path / "run3" / "plan" / "cameras.json")
    np.testing.assert_allclose(cams3.world_from_cam, cams2.world_from_cam[1:2])


def test_plan_command_errors_name_the_value(tmp_path, capsys):
    from cvd_scene.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_text("https://example.com/v\n1 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1\n")
    cases = [
        (["plan.pattern=zigzag"], "unknown pattern 'zigzag'; known patterns: auto, look-around"),
        (["plan.num_videos=0"], "num_videos must be >= 1, got 0"),
        (["--from-re10k", str(bad)], f"{bad}:2: expected 19 numbers"),
        (["--from-re10k", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
        (["--cameras", str(bad)], f"{bad}:1: invalid JSON"),
    ]
    for extra, message in cases:
        assert main(["plan", str(tmp_path / "r"), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not (tmp_path / "r" / "plan").exists()


def test_plan_stage_measures_on_the_reference_scene_when_it_is_there(tmp_path):
    pytest.importorskip("open3d", reason="the reference renderer casts rays with open3d")
    from cvd_scene.config import from_dict
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runconfig import RunConfig

    plan = {
        "num_videos": 3,
        "num_frames": 3,
        "width": 64,
        "height": 64,
        "covisibility_width_px": 24,
        "coverage_points": 1000,
    }
    exact = run_stages(
        tmp_path / "a", from_dict(RunConfig, {"prompt": "a cosy room", "plan": plan}), ["plan"]
    )
    assert exact["plan"].summary["depth_source"] == "depth_fn"
    m = np.asarray(json.loads((tmp_path / "a" / "plan" / "covisibility.json").read_text())["covisibility"])
    np.testing.assert_array_equal(m[np.arange(3), np.arange(3)], 1.0)
    # the same plan on the proxy room: a furnished room of 5.2-7.5 m is close to the 6 m proxy box
    plan["reference_depth"] = False
    proxy = run_stages(
        tmp_path / "b", from_dict(RunConfig, {"prompt": "a cosy room", "plan": plan}), ["plan"]
    )
    assert proxy["plan"].summary["depth_source"] == "proxy"
    m2 = np.asarray(json.loads((tmp_path / "b" / "plan" / "covisibility.json").read_text())["covisibility"])
    assert np.abs(m - m2).mean() < 0.05, np.abs(m - m2).mean()
