"""Tests of cvd.geometry: Plücker rays, fundamental matrices and the epipolar attention bias.

Every vectorised function is checked against a slow per-pixel / per-query / per-key loop written here from the
formulas alone (numpy float64 scalars), on random cameras and grids, square and rectangular.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cvd.geometry import (
    MASKED_BIAS,
    EpipolarBiasConfig,
    correspondence_lines,
    epipolar_bias,
    epipolar_bias_pyramid,
    fundamental_matrix,
    homography_bias,
    homography_bias_pyramid,
    infinite_homography,
    plucker_embedding,
    relative_pose,
    token_centres,
)

# ---------------------------------------------------------------------------------------------------------
# random cameras (numpy float64, OpenCV axes, world_from_cam)


def look_at(eye: np.ndarray, target: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """world_from_cam of an OpenCV camera at ``eye`` looking at ``target`` (world +y up), rolled about z."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    R = R @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = eye
    return T


def rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * k @ k


def random_K(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    f = rng.uniform(0.7, 1.3) * max(height, width)
    return np.array(
        [
            [f * rng.uniform(0.95, 1.05), 0.0, width / 2 + rng.uniform(-3, 3)],
            [0.0, f, height / 2 + rng.uniform(-3, 3)],
            [0.0, 0.0, 1.0],
        ]
    )


def random_pose(rng: np.random.Generator) -> np.ndarray:
    eye = rng.normal(size=3)
    eye = eye / np.linalg.norm(eye) * rng.uniform(3.0, 5.0)
    return look_at(eye, rng.normal(scale=0.3, size=3), roll_rad=rng.uniform(-0.3, 0.3))


def random_pairs(rng: np.random.Generator, n: int, height: int, width: int, degenerate: bool = True):
    """``n`` query/key camera pairs; with ``degenerate`` the first is identical cameras, the second pure rotation
    (with different intrinsics)."""
    Kq, cq, Kk, ck = [], [], [], []
    for i in range(n):
        K1, K2 = random_K(rng, height, width), random_K(rng, height, width)
        p1 = random_pose(rng)
        if degenerate and i == 0:
            K2, p2 = K1, p1.copy()
        elif degenerate and i == 1:
            p2 = p1.copy()
            p2[:3, :3] = p1[:3, :3] @ rotation(rng.normal(size=3), rng.uniform(0.1, 0.4))
        else:
            p2 = random_pose(rng)
        Kq.append(K1), cq.append(p1), Kk.append(K2), ck.append(p2)
    return tuple(torch.from_numpy(np.stack(x)) for x in (Kq, cq, Kk, ck))


def project(K: np.ndarray, world_from_cam: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pixel (x, y) of world points [N, 3]."""
    cam_from_world = np.linalg.inv(world_from_cam)
    Xc = X @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    uvw = Xc @ K.T
    return uvw[:, :2] / uvw[:, 2:]


# ---------------------------------------------------------------------------------------------------------
# slow references, written from the formulas


def reference_plucker(K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> np.ndarray:  # [6, H, W]
    out = np.zeros((6, height, width))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    o = c2w[:3, 3]
    for v in range(height):
        for u in range(width):
            ray = np.array([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0])
            ray = ray / np.linalg.norm(ray)
            d = c2w[:3, :3] @ ray
            out[:3, v, u] = np.cross(o, d)
            out[3:, v, u] = d
    return out


def skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def reference_pair_rows(Kq, cq, Kk, ck, eps):
    """Per query pixel p: ('line', a, b, c) unnormalised, ('point', x, y), or None (no constraint)."""
    T = np.linalg.inv(ck) @ cq
    R, t = T[:3, :3], T[:3, 3]
    if np.linalg.norm(t) > eps:
        F = np.linalg.inv(Kk).T @ skew(t) @ R @ np.linalg.inv(Kq)
        return "epipolar", F
    return "homography", Kk @ R @ np.linalg.inv(Kq)


def reference_bias(kind, M, grid_hw, image_hw, mode, policy, angle, band_px=3.0, decay=3.0, widen=True, S=None):
    """Slow per-query, per-key bias of one frame pair (float64) and the number of unconstrained rows."""
    h, w = grid_hw
    H, W = image_hw
    centres = [((j + 0.5) * W / w, (i + 0.5) * H / h) for i in range(h) for j in range(w)]
    n = len(centres)
    dist = np.zeros((n, n))
    valid = np.ones(n, bool)
    for qi, (xq, yq) in enumerate(centres):
        p = np.array([xq, yq, 1.0])
        if kind == "epipolar":
            a, b, c = M @ p
            if math.hypot(a, b) < 1e-9 * np.linalg.norm(p) * np.linalg.norm(M):
                valid[qi] = False
                continue
        else:
            x = M @ p
            if x[2] <= 1e-9 * np.linalg.norm(x):
                valid[qi] = False
                continue
            px, py = x[0] / x[2], x[1] / x[2]
            a, b = math.cos(angle), math.sin(angle)
            c = -(a * px + b * py)
        for ki, (xk, yk) in enumerate(centres):
            if kind == "homography" and policy == "homography-point":
                dist[qi, ki] = math.hypot(xk - px, yk - py)
            else:
                dist[qi, ki] = abs(a * xk + b * yk + c) / math.hypot(a, b)
    bias = np.zeros((n, n))
    unconstrained = int((~valid).sum())
    if mode == "soft":
        side = S or max(H, W)
        band = band_px / (side / 2) * max((dist[qi, ki] for qi in range(n) for ki in range(n) if valid[qi]), default=0.0)
        for qi in range(n):
            for ki in range(n):
                if valid[qi]:
                    bias[qi, ki] = -max(0.0, dist[qi, ki] - band) * decay / band
    elif mode == "binary":
        tau = max(band_px, 0.5 * math.hypot(W / w, H / h)) if widen else band_px
        for qi in range(n):
            allowed = [valid[qi] and dist[qi, ki] <= tau for ki in range(n)]
            if not any(allowed):
                if valid[qi]:
                    unconstrained += 1
                continue
            for ki in range(n):
                bias[qi, ki] = 0.0 if allowed[ki] else MASKED_BIAS
    else:
        unconstrained = n
    return bias, unconstrained


# ---------------------------------------------------------------------------------------------------------
# cameras


def test_points_lie_on_their_epipolar_lines():
    rng = np.random.default_rng(0)
    Kq, cq, Kk, ck = random_pairs(rng, 12, 200, 320, degenerate=False)
    F = fundamental_matrix(Kq, cq, Kk, ck)  # [12, 3, 3]
    assert F.dtype == torch.float64 and F.shape == (12, 3, 3)
    worst = 0.0
    for b in range(12):
        X = rng.normal(scale=0.8, size=(50, 3))
        pq = project(Kq[b].numpy(), cq[b].numpy(), X)
        pk = project(Kk[b].numpy(), ck[b].numpy(), X)
        lines = np.concatenate([pq, np.ones((50, 1))], 1) @ F[b].numpy().T
        d = np.abs((lines[:, :2] * pk).sum(1) + lines[:, 2]) / np.hypot(lines[:, 0], lines[:, 1])
        worst = max(worst, d.max())
    assert worst < 1e-6
    # The lines the bias uses are the same lines (normalised), and valid.
    X = rng.normal(scale=0.8, size=(30, 3))
    pq = torch.from_numpy(project(Kq[3].numpy(), cq[3].numpy(), X))
    pk = project(Kk[3].numpy(), ck[3].numpy(), X)
    lines, valid = correspondence_lines(Kq[3], cq[3], Kk[3], ck[3], pq)
    assert valid.all()
    assert torch.allclose(lines[:, :2].norm(dim=-1), torch.ones(30, dtype=torch.float64))
    assert np.abs((lines[:, :2].numpy() * pk).sum(1) + lines[:, 2].numpy()).max() < 1e-6


def test_fundamental_reverse_direction_is_transpose_and_relative_pose():
    rng = np.random.default_rng(1)
    Kq, cq, Kk, ck = random_pairs(rng, 4, 64, 96, degenerate=False)
    F = fundamental_matrix(Kq, cq, Kk, ck)
    Fr = fundamental_matrix(Kk, ck, Kq, cq)
    # Equal up to scale (and sign): compare normalised.
    a = F.transpose(-1, -2) / F.norm(dim=(-2, -1), keepdim=True)
    b = Fr / Fr.norm(dim=(-2, -1), keepdim=True)
    assert torch.minimum((a - b).abs().amax((-2, -1)), (a + b).abs().amax((-2, -1))).max() < 1e-9
    T = relative_pose(cq, ck)
    assert torch.allclose(T, torch.linalg.inv(ck) @ cq, atol=1e-12)


def test_infinite_homography_maps_pure_rotation_correspondences():
    rng = np.random.default_rng(2)
    K1, K2 = random_K(rng, 64, 80), random_K(rng, 64, 80)
    p1 = random_pose(rng)
    p2 = p1.copy()
    p2[:3, :3] = p1[:3, :3] @ rotation([0.3, 1.0, 0.1], 0.25)
    X = p1[:3, 3] + rng.normal(size=(20, 3)) * np.array([0.3, 0.3, 0.3]) + 4.0 * p1[:3, 2]
    q1, q2 = project(K1, p1, X), project(K2, p2, X)
    H = infinite_homography(*(torch.from_numpy(x) for x in (K1, p1, K2, p2))).numpy()
    hq = np.concatenate([q1, np.ones((20, 1))], 1) @ H.T
    assert np.abs(hq[:, :2] / hq[:, 2:] - q2).max() < 1e-8
    # And the fundamental matrix is zero there.
    F = fundamental_matrix(*(torch.from_numpy(x) for x in (K1, p1, K2, p2)))
    assert F.abs().max() < 1e-12


def test_plucker_matches_pixel_loop_and_is_plucker():
    rng = np.random.default_rng(3)
    K = torch.from_numpy(np.stack([random_K(rng, 5, 7) for _ in range(6)])).reshape(2, 3, 3, 3)
    c2w = torch.from_numpy(np.stack([random_pose(rng) for _ in range(6)])).reshape(2, 3, 4, 4)
    emb = plucker_embedding(K, c2w, 5, 7)
    assert emb.shape == (2, 3, 6, 5, 7) and emb.dtype == torch.float64
    for v in range(2):
        for f in range(3):
            ref = reference_plucker(K[v, f].numpy(), c2w[v, f].numpy(), 5, 7)
            assert np.abs(emb[v, f].numpy() - ref).max() < 1e-12
    moment, d = emb[:, :, :3], emb[:, :, 3:]
    assert torch.allclose(d.norm(dim=2), torch.ones(2, 3, 5, 7, dtype=torch.float64), atol=1e-12)
    assert (moment * d).sum(2).abs().max() < 1e-12
    # Identity pose: zero moments, directions are the camera rays.
    emb0 = plucker_embedding(K[0, 0].float(), torch.eye(4), 5, 7, dtype=torch.float16)
    assert emb0.dtype == torch.float16 and emb0.shape == (6, 5, 7)
    assert emb0[:3].abs().max() == 0


def test_token_centres_pixel_convention():
    c = token_centres((2, 4), (6, 16))
    assert c.shape == (8, 3)
    assert c[0].tolist() == [2.0, 1.5, 1.0]  # ((0+0.5)*16/4, (0+0.5)*6/2)
    assert c[5].tolist() == [6.0, 4.5, 1.0]  # row 1, column 1


# ---------------------------------------------------------------------------------------------------------
# the bias against the loop reference

CASES = [((4, 4), (32, 32)), ((3, 5), (48, 80)), ((5, 3), (60, 36)), ((3, 4), (50, 70))]


@pytest.mark.parametrize("mode", ["soft", "binary", "none"])
@pytest.mark.parametrize("policy", ["homography-line", "homography-point"])
@pytest.mark.parametrize("grid_hw,image_hw", CASES)
def test_epipolar_bias_matches_loop_reference(mode, policy, grid_hw, image_hw):
    rng = np.random.default_rng(hash((mode, policy, grid_hw)) % 2**32)
    n_pairs = 5
    Kq, cq, Kk, ck = random_pairs(rng, n_pairs, *image_hw)
    angles = torch.from_numpy(rng.uniform(0, math.pi, n_pairs))
    cfg = EpipolarBiasConfig(mode=mode, zero_baseline=policy, dtype="float64", compute_dtype="float64")
    bias, stats = epipolar_bias(
        Kq, cq, Kk, ck, grid_hw, image_hw, cfg, line_angle_rad=angles, return_stats=True
    )
    n = grid_hw[0] * grid_hw[1]
    assert bias.shape == (n_pairs, n, n) and bias.dtype == torch.float64
    assert stats.zero_baseline.tolist() == [True, True] + [False] * (n_pairs - 2)
    for b in range(n_pairs):
        kind, M = reference_pair_rows(Kq[b].numpy(), cq[b].numpy(), Kk[b].numpy(), ck[b].numpy(), cfg.baseline_eps)
        ref, unconstrained = reference_bias(kind, M, grid_hw, image_hw, mode, policy, float(angles[b]))
        assert np.abs(bias[b].numpy() - ref).max() < 1e-9, (b, kind)
        assert int(stats.unconstrained_rows[b]) == unconstrained
    # The compact default (fp32 maths, fp16 output) is close to the float64 result.
    cfg16 = EpipolarBiasConfig(mode=mode, zero_baseline=policy)
    bias16 = epipolar_bias(Kq, cq, Kk, ck, grid_hw, image_hw, cfg16, line_angle_rad=angles)
    assert bias16.dtype == torch.float16 and torch.isfinite(bias16).all()
    if mode == "soft":
        assert (bias16.double() - bias).abs().max() <= 1e-3 * bias.abs().max() + 0.05


@pytest.mark.parametrize("mode", ["soft", "binary"])
@pytest.mark.parametrize("policy", ["homography-line", "homography-point"])
def test_homography_bias_matches_loop_reference(mode, policy):
    rng = np.random.default_rng(7)
    grid_hw, image_hw = (4, 5), (40, 64)
    Hs = []
    for _ in range(4):
        Hm = np.eye(3) + rng.normal(scale=[[0.05, 0.05, 3], [0.05, 0.05, 3], [1e-4, 1e-4, 0.0]])
        Hs.append(Hm)
    Hs[3][2] = [0.0, 0.1, -2.0]  # much of the query image maps behind the partner: no constraint there
    H = torch.from_numpy(np.stack(Hs))
    angles = torch.from_numpy(rng.uniform(0, math.pi, 4))
    cfg = EpipolarBiasConfig(mode=mode, zero_baseline=policy, dtype="float64", compute_dtype="float64")
    bias, stats = homography_bias(H, grid_hw, image_hw, cfg, line_angle_rad=angles, return_stats=True)
    assert stats.zero_baseline.all()
    for b in range(4):
        ref, unconstrained = reference_bias("homography", Hs[b], grid_hw, image_hw, mode, policy, float(angles[b]))
        assert np.abs(bias[b].numpy() - ref).max() < 1e-9
        assert int(stats.unconstrained_rows[b]) == unconstrained
    assert int(stats.unconstrained_rows[3]) > 0 and int(stats.unconstrained_rows[3]) < 20


def test_pyramid_equals_single_levels_and_shares_the_angle():
    rng = np.random.default_rng(8)
    Kq, cq, Kk, ck = random_pairs(rng, 3, 64, 64)
    grids = [(8, 8), (4, 4), (2, 2)]
    levels, stats = epipolar_bias_pyramid(
        Kq, cq, Kk, ck, (64, 64), grids, generator=torch.Generator().manual_seed(5), return_stats=True
    )
    for g, lv, st in zip(grids, levels, stats):
        single = epipolar_bias(Kq, cq, Kk, ck, g, (64, 64), line_angle_rad=st.line_angle_rad)
        assert torch.equal(lv, single)
        assert torch.equal(st.line_angle_rad, stats[0].line_angle_rad)
    # Same generator seed, same result; another seed changes the zero-baseline pairs only.
    again = epipolar_bias_pyramid(Kq, cq, Kk, ck, (64, 64), grids, generator=torch.Generator().manual_seed(5))
    other = epipolar_bias_pyramid(Kq, cq, Kk, ck, (64, 64), grids, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(levels, again))
    assert not torch.equal(levels[0][0], other[0][0]) and torch.equal(levels[0][2], other[0][2])
    hp = homography_bias_pyramid(torch.eye(3), (64, 64), grids, line_angle_rad=0.3)
    assert [x.shape for x in hp] == [(64, 64), (16, 16), (4, 4)]
    assert torch.equal(hp[1], homography_bias(torch.eye(3), (4, 4), (64, 64), line_angle_rad=0.3))


# ---------------------------------------------------------------------------------------------------------
# the released soft formula


def test_released_soft_formula_hand_made_case():
    """Pure sideways motion, same intrinsics: epipolar lines are the image rows, d = |y_k - y_q|.

    32x32 tokens on 256²: max d = 31·8 = 248 px, band = 3/128·248 = 5.8125 px, bias = -(d - band)·3/band.
    """
    K = torch.tensor([[220.0, 0.0, 128.0], [0.0, 220.0, 128.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    world_from_k = torch.eye(4, dtype=torch.float64)
    world_from_k[0, 3] = 0.3
    bias, stats = epipolar_bias(K, torch.eye(4, dtype=torch.float64), K, world_from_k, (32, 32), (256, 256),
                                EpipolarBiasConfig(dtype="float32"), return_stats=True)
    assert float(stats.band_px) == pytest.approx(5.8125, rel=1e-6)
    q = 5 * 32 + 7  # token (row 5, column 7)
    row = bias[q].reshape(32, 32)
    assert row[5].abs().max() == 0  # same row: on the line
    assert row[6, 0].item() == pytest.approx(-(8 - 5.8125) * 3 / 5.8125, rel=1e-5)  # -1.129032
    assert row[4, 31].item() == pytest.approx(-1.1290322580645, rel=1e-5)
    assert row[31, 0].item() == pytest.approx(-(26 * 8 - 5.8125) * 3 / 5.8125, rel=1e-5)  # -104.35
    assert bias.min().item() == pytest.approx(-125.0, rel=1e-5)  # (248 - 5.8125)·3/5.8125
    # Identical cameras with a fixed orientation (normal angle 0: vertical lines x = x_q) - the released first
    # frame with its slope drawn as 0.
    bias0 = epipolar_bias(K, torch.eye(4, dtype=torch.float64), K, torch.eye(4, dtype=torch.float64), (32, 32),
                          (256, 256), EpipolarBiasConfig(dtype="float32"), line_angle_rad=0.0)
    row0 = bias0[q].reshape(32, 32)
    assert row0[:, 7].abs().max() == 0
    assert row0[0, 8].item() == pytest.approx(-1.1290322580645, rel=1e-5)
    # Vertical lines through the query are the horizontal case with the grid transposed.
    assert torch.allclose(bias0.reshape(32, 32, 32, 32), bias.reshape(32, 32, 32, 32).permute(1, 0, 3, 2), atol=1e-5)
    assert bias0.shape == (1024, 1024)


def released_formula(F_int: np.ndarray, feat: int, size: int, angle: float | None) -> np.ndarray:
    """The released computation stated from its formula: integer pixel centres, token j at
    (size/feat)·j + (size/feat - 1)/2, F on that grid; ``angle`` (normal angle) replaces F's lines by lines
    through the query itself (first frames)."""
    s = size / feat
    coords = np.array([[s * j + (s - 1) / 2, s * i + (s - 1) / 2, 1.0] for i in range(feat) for j in range(feat)])
    if angle is None:
        lines = coords @ F_int.T
    else:
        a, b = math.cos(angle), math.sin(angle)
        lines = np.stack([np.full(len(coords), a), np.full(len(coords), b), -(a * coords[:, 0] + b * coords[:, 1])], 1)
    d = np.abs(lines @ coords.T) / (np.hypot(lines[:, 0], lines[:, 1])[:, None] + 1e-6)
    band = 3 / (size // 2) * d.max()
    return -np.clip(d - band, 0, None) * 3 / (band + 1e-6)


@pytest.mark.parametrize("feat", [16, 8, 4])
def test_released_soft_formula_random_cameras(feat):
    """Ours at 256² equals the released formula on the same cameras (their F lives on integer pixel centres:
    F_int = Aᵀ F A with A the +0.5 shift). The release adds 1e-6 to |(a, b)| of each unnormalised line, which
    for its F (entries ~1e-5) shifts distances by up to ~1 %; we normalise lines exactly, so the comparison
    scales F up until that regulariser is negligible."""
    rng = np.random.default_rng(feat)
    Kq, cq, Kk, ck = random_pairs(rng, 4, 256, 256)
    angles = rng.uniform(0, math.pi, 4)
    cfg = EpipolarBiasConfig(dtype="float64", compute_dtype="float64")
    ours = epipolar_bias(Kq, cq, Kk, ck, (feat, feat), (256, 256), cfg, line_angle_rad=torch.from_numpy(angles))
    A = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    for b in (0, 2, 3):  # pair 0: identical cameras (the released first frame); pair 1 (pure rotation) has no F
        if b == 0:
            ref = released_formula(np.zeros((3, 3)), feat, 256, angles[b])
        else:
            F_int = A.T @ fundamental_matrix(Kq[b], cq[b], Kk[b], ck[b]).numpy() @ A
            ref = released_formula(F_int / np.linalg.norm(F_int) * 1e4, feat, 256, None)
        assert np.abs(ours[b].numpy() - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


# ---------------------------------------------------------------------------------------------------------
# zero baseline, binary rows, fp16


def test_zero_baseline_constraint_passes_through_true_correspondence():
    rng = np.random.default_rng(11)
    image_hw, grid_hw = (256, 192), (64, 48)
    K1, K2 = random_K(rng, *image_hw), random_K(rng, *image_hw)
    p1 = random_pose(rng)
    p_rot = p1.copy()
    p_rot[:3, :3] = p1[:3, :3] @ rotation([0.2, 1.0, -0.3], 0.2)
    cams = [(K1, p1, K1, p1.copy()), (K1, p1, K2, p_rot)]  # identical cameras; pure rotation
    for Kq, cq, Kk, ck in cams:
        t = [torch.from_numpy(x) for x in (Kq, cq, Kk, ck)]
        # True correspondences: project the query tokens' rays at two depths into the key camera.
        q_px = token_centres(grid_hw, image_hw)[:, :2].numpy()
        rays = np.concatenate([q_px, np.ones((len(q_px), 1))], 1) @ np.linalg.inv(Kq).T
        X = cq[:3, 3] + (rays * 3.0) @ cq[:3, :3].T
        X_far = cq[:3, 3] + (rays * 30.0) @ cq[:3, :3].T
        truth = project(Kk, ck, X)
        assert np.abs(project(Kk, ck, X_far) - truth).max() < 1e-8  # depth-independent: zero baseline
        for policy in ("homography-line", "homography-point"):
            cfg = EpipolarBiasConfig(zero_baseline=policy, dtype="float32")
            lines, valid = correspondence_lines(*t, torch.from_numpy(q_px), cfg, line_angle_rad=1.1)
            assert valid.all()
            assert np.abs((lines[:, :2].numpy() * truth).sum(1) + lines[:, 2].numpy()).max() < 1e-8
            bias, stats = epipolar_bias(*t, grid_hw, image_hw, cfg, line_angle_rad=1.1, return_stats=True)
            assert bool(stats.zero_baseline) and torch.isfinite(bias).all()
            assert (bias.amin(dim=-1) < -1.0).all()  # every row constrains (not the silent all-zero of F = 0)
            # The key token nearest the true correspondence is inside the band for queries seen by the key image.
            keys = token_centres(grid_hw, image_hw)[:, :2].numpy()
            half_diag = 0.5 * math.hypot(image_hw[1] / grid_hw[1], image_hw[0] / grid_hw[0])
            assert float(stats.band_px) > half_diag  # so the check below is meaningful
            inside = (truth[:, 0] > 0) & (truth[:, 0] < image_hw[1]) & (truth[:, 1] > 0) & (truth[:, 1] < image_hw[0])
            assert inside.sum() > 0.5 * len(truth)
            # On a regular grid the nearest token centre is the one of the cell containing the point.
            col = np.clip(np.floor(truth[:, 0] / (image_hw[1] / grid_hw[1])), 0, grid_hw[1] - 1)
            row = np.clip(np.floor(truth[:, 1] / (image_hw[0] / grid_hw[0])), 0, grid_hw[0] - 1)
            nearest = (row * grid_hw[1] + col).astype(int)
            some = np.flatnonzero(inside)[::97]
            brute = np.argmin(((truth[some, None, :] - keys[None]) ** 2).sum(-1), axis=1)
            assert (nearest[some] == brute).all()
            got = bias.numpy()[np.arange(len(truth)), nearest]
            assert (got[inside] == 0).all()


def test_zero_baseline_threshold_and_the_released_silent_drop():
    """A translation below baseline_eps is zero baseline; above it the true epipolar lines are used."""
    K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[0, 0, 3] = 1e-7
    c2w[1, 0, 3] = 1e-3
    _, stats = epipolar_bias(K, torch.eye(4, dtype=torch.float64), K, c2w, (4, 4), (64, 64), return_stats=True)
    assert stats.zero_baseline.tolist() == [True, False]
    cfg = EpipolarBiasConfig(baseline_eps=1e-8)
    _, stats = epipolar_bias(K, torch.eye(4, dtype=torch.float64), K, c2w, (4, 4), (64, 64), cfg, return_stats=True)
    assert stats.zero_baseline.tolist() == [False, False]


def test_query_on_the_epipole_gets_no_constraint():
    """Forward motion: the epipole is the principal point, a token centre of an odd grid; its line is degenerate."""
    K = torch.tensor([[50.0, 0.0, 20.0], [0.0, 50.0, 20.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    world_from_k = torch.eye(4, dtype=torch.float64)
    world_from_k[2, 3] = 0.5
    for mode in ("soft", "binary"):
        bias, stats = epipolar_bias(K, torch.eye(4, dtype=torch.float64), K, world_from_k, (5, 5), (40, 40),
                                    EpipolarBiasConfig(mode=mode), return_stats=True)
        assert int(stats.unconstrained_rows) == 1
        assert bias[12].abs().max() == 0 and torch.isfinite(bias).all()
        assert bias.amin(dim=-1)[torch.arange(25) != 12].lt(0).all()


def test_binary_mask_never_masks_a_whole_row():
    rng = np.random.default_rng(12)
    Kq, cq, Kk, ck = random_pairs(rng, 24, 128, 192)
    # Two cameras back to back: most lines miss the partner image.
    back = cq[5].clone()
    back[:3, :3] = cq[5][:3, :3] @ torch.from_numpy(rotation([0, 1, 0], math.pi * 0.9))
    back[:3, 3] += 0.2 * cq[5][:3, 0]
    ck[5] = back
    total_free = 0
    for grid in [(16, 24), (8, 12), (4, 6), (2, 3)]:
        bias, stats = epipolar_bias(Kq, cq, Kk, ck, grid, (128, 192), EpipolarBiasConfig(mode="binary"),
                                    generator=torch.Generator().manual_seed(0), return_stats=True)
        assert bias.dtype == torch.float16
        masked = bias == MASKED_BIAS
        assert masked.any()
        assert not masked.all(dim=-1).any()
        assert ((bias == 0) | masked).all()
        total_free += int(stats.unconstrained_rows.sum())
    assert total_free > 0  # the back-to-back pair's lines miss the image and are left free (counted)


@pytest.mark.parametrize("mode", ["soft", "binary", "none"])
def test_fp16_and_bf16_outputs_are_finite(mode):
    rng = np.random.default_rng(13)
    Kq, cq, Kk, ck = random_pairs(rng, 6, 256, 256)
    for dtype in ("float16", "bfloat16"):
        cfg = EpipolarBiasConfig(mode=mode, dtype=dtype)
        levels = epipolar_bias_pyramid(Kq.float(), cq.float(), Kk.float(), ck.float(), (256, 256), config=cfg,
                                       generator=torch.Generator().manual_seed(1))
        for lv in levels:
            assert lv.dtype == getattr(torch, dtype)
            assert torch.isfinite(lv).all()
            if mode != "none":
                assert lv.amin() < -1
        # Softmax over keys in fp16 gives no NaN even where the bias is most negative.
        logits = torch.zeros_like(levels[0]) + levels[0]
        assert torch.isfinite(torch.softmax(logits.float(), dim=-1)).all()


def test_bad_inputs_name_the_value():
    K = torch.eye(3)
    with pytest.raises(ValueError, match="mode"):
        EpipolarBiasConfig(mode="hard")
    with pytest.raises(ValueError, match="zero_baseline"):
        EpipolarBiasConfig(zero_baseline="ignore")
    with pytest.raises(ValueError, match="world_from_q.shape"):
        epipolar_bias(K, torch.eye(3), K, torch.eye(4), (4, 4), (32, 32))
    with pytest.raises(ValueError, match="grid_hw"):
        epipolar_bias(K, torch.eye(4), K, torch.eye(4), (4, 0), (32, 32))
    with pytest.raises(TypeError, match="K"):
        plucker_embedding(np.eye(3), torch.eye(4), 4, 4)
    bad = torch.eye(4)
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        epipolar_bias(K, bad, K, torch.eye(4), (4, 4), (32, 32))
    with pytest.raises(ValueError, match="line_angle_rad"):
        epipolar_bias(K.expand(3, 3, 3), torch.eye(4), K, torch.eye(4), (4, 4), (32, 32), line_angle_rad=torch.zeros(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bias_on_cuda_matches_cpu():
    rng = np.random.default_rng(14)
    cams = random_pairs(rng, 6, 256, 256)
    gen_angles = torch.from_numpy(rng.uniform(0, math.pi, 6))
    for mode in ("soft", "binary"):
        cfg = EpipolarBiasConfig(mode=mode, dtype="float32")
        cpu = epipolar_bias_pyramid(*cams, (256, 256), config=cfg, line_angle_rad=gen_angles)
        gpu = epipolar_bias_pyramid(*(c.cuda() for c in cams), (256, 256), config=cfg,
                                    line_angle_rad=gen_angles.cuda())
        for a, b in zip(cpu, gpu):
            assert b.device.type == "cuda"
            if mode == "soft":
                assert (a - b.cpu()).abs().max() < 1e-2
            else:  # a key exactly at the band edge may flip between devices
                assert (a != b.cpu()).float().mean() < 1e-3


# ---------------------------------------------------------------------------------------------------------
# the release's convention on real RealEstate10K cameras

RE10K_DIR = __import__("pathlib").Path(__file__).parent / "data" / "re10k_poses"


def release_bias_reference(Kq, world_from_q, Kk, world_from_k, feat: int, size: int) -> np.ndarray:
    """The released bias from its formula (cvd-reference.md), one query at a time, vectorised over the keys:
    token centres s·i + (s-1)/2, F = K_k^-T [t]x R K_q^-1 from the relative pose as given, l = F p,
    d = |l·p'| / (|(l1, l2)| + 1e-6), band = 3/(S/2)·max d, bias = -max(0, d - band)·3/(band + 1e-6)."""
    T = np.linalg.inv(world_from_k) @ world_from_q
    R, t = T[:3, :3], T[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(Kk).T @ tx @ R @ np.linalg.inv(Kq)
    s = size / feat
    c = s * np.arange(feat) + (s - 1) / 2
    pts = np.array([[c[j], c[i], 1.0] for i in range(feat) for j in range(feat)])
    d = np.empty((len(pts), len(pts)))
    for q, p in enumerate(pts):
        line = F @ p
        d[q] = np.abs(pts @ line) / (math.hypot(line[0], line[1]) + 1e-6)
    band = 3 / (size / 2) * d.max()
    return -np.maximum(0.0, d - band) * 3 / (band + 1e-6)


def folded_re10k_pair(name: str, size: int):
    """One clip folded as the release folds its training clips: video A = frames m, m-1, ..., video B = frames
    m, m+1, ... (m the middle frame), the file's own units; frame k of A and B share the moment k."""
    from cvd_scene.camera_io import read_re10k

    c2w, K, _ = read_re10k(RE10K_DIR / name, size, size)
    m = len(c2w) // 2
    n = min(m, len(c2w) - 1 - m) + 1
    a, b = [m - k for k in range(n)], [m + k for k in range(n)]
    return K[a], c2w[a], K[b], c2w[b]


def epipole_inside(Kk: np.ndarray, world_from_q: np.ndarray, world_from_k: np.ndarray, size: int) -> bool:
    t = (np.linalg.inv(world_from_k) @ world_from_q)[:3, 3]  # the query camera's centre in the key camera
    e = Kk @ t
    return abs(e[2]) > 1e-12 and bool(np.all((e[:2] / e[2] >= 0) & (e[:2] / e[2] <= size)))


def test_release_convention_matches_the_released_formula_on_re10k_cameras():
    """Every UNet level at 256², fp32 output, on folded RealEstate10K clips whose epipole lies inside the key
    image on some frames: |ours - release| <= 1e-3 wherever the release's bias is above -10."""
    size = 256
    cfg = EpipolarBiasConfig(convention="release", dtype="float32")
    frames_inside = 0
    for name in ("0bf152ef84195293.txt", "0c11dbe781b1c11c.txt", "2c80f9eb0d3b2bb4.txt"):
        Kq, cq, Kk, ck = folded_re10k_pair(name, size)
        frames = range(1, len(Kq))  # frame 0: identical cameras, no baseline
        frames_inside += sum(epipole_inside(Kk[f], cq[f], ck[f], size) for f in frames)
        ours = epipolar_bias_pyramid(
            *(torch.from_numpy(x[1:]) for x in (Kq, cq, Kk, ck)), (size, size),
            grids=[(32, 32), (16, 16), (8, 8), (4, 4)], config=cfg,
        )
        for level, feat in enumerate((32, 16, 8, 4)):
            for f in frames:
                ref = release_bias_reference(Kq[f], cq[f], Kk[f], ck[f], feat, size)
                got = ours[level][f - 1].numpy().astype(np.float64)
                keep = ref > -10
                assert keep.mean() > 0.05, (name, f, feat)
                diff = np.abs(got - ref)[keep].max()
                assert diff <= 1e-3, f"{name} frame {f} level {feat}²: max |diff| {diff:.3g}"
    assert frames_inside >= 3, f"only {frames_inside} frames with the epipole inside the image"


def test_release_convention_differs_from_ours_where_it_should():
    """The half-pixel token shift and the line regulariser are what set the two conventions apart: ours differs
    from the release by more than the test tolerance near an epipole (so the test above can fail)."""
    size = 256
    Kq, cq, Kk, ck = folded_re10k_pair("0bf152ef84195293.txt", size)
    f = next(f for f in range(1, len(Kq)) if epipole_inside(Kk[f], cq[f], ck[f], size))
    ref = release_bias_reference(Kq[f], cq[f], Kk[f], ck[f], 32, size)
    ours = epipolar_bias(*(torch.from_numpy(x[f]) for x in (Kq, cq, Kk, ck)), (32, 32), (size, size),
                         EpipolarBiasConfig(convention="ours", dtype="float32")).numpy()
    keep = ref > -10
    assert np.abs(ours - ref)[keep].max() > 1e-2


def test_release_token_centres():
    c = token_centres((32, 32), (256, 256), convention="release")
    assert c[0, :2].tolist() == [3.5, 3.5] and c[33, :2].tolist() == [11.5, 11.5]
    assert torch.equal(c[:, :2] + 0.5, token_centres((32, 32), (256, 256))[:, :2])
    with pytest.raises(ValueError, match="convention"):
        token_centres((4, 4), (64, 64), convention="paper")
    with pytest.raises(ValueError, match="convention"):
        EpipolarBiasConfig(convention="paper")
    # Frame-0 pseudo-lines: each convention's own draw unless chosen explicitly.
    assert EpipolarBiasConfig(convention="release").effective_line_draw == "per-call"
    assert EpipolarBiasConfig().effective_line_draw == "per-pair"
    assert EpipolarBiasConfig(convention="release", line_draw="per-pair").effective_line_draw == "per-pair"
    with pytest.raises(ValueError, match="line_draw"):
        EpipolarBiasConfig(line_draw="per-step")


# ------------------------------------------------------------------------------- one rigid inverse, one model pose


def test_invert_rigid_and_model_poses_have_one_home_for_torch_and_numpy():
    from cvd.geometry import invert_rigid, model_poses
    from cvd.pipeline import model_poses as pipeline_model_poses
    from cvd.training.sampling import relative_to_first
    from cvd_scene import cameras as scene

    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 5, 4))
    T = scene.rigid(scene.quaternion_to_rotation(q / np.linalg.norm(q, axis=-1, keepdims=True)), rng.normal(size=(2, 5, 3)))
    inv = invert_rigid(T)  # numpy in, numpy out
    assert isinstance(inv, np.ndarray) and inv.dtype == np.float64
    np.testing.assert_allclose(inv @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
    np.testing.assert_array_equal(inv, scene.invert_rigid(T))  # the scene side's numpy twin
    for dtype in (torch.float64, torch.float32):
        t = torch.from_numpy(T).to(dtype)
        out = invert_rigid(t)
        assert out.dtype == dtype and torch.equal(t, torch.from_numpy(T).to(dtype))  # the input is left alone
        np.testing.assert_allclose(out.numpy(), scene.invert_rigid(T), atol=1e-6 if dtype == torch.float32 else 1e-12)

    rel = model_poses(T, 0.5)  # [2, 5, 4, 4]: frame 0 the identity, translations in model units
    np.testing.assert_allclose(rel[:, 0], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-12)
    np.testing.assert_allclose(rel.astype(np.float32), scene.to_model_poses(T, 0.5), atol=1e-6)
    t = torch.from_numpy(T)
    assert torch.equal(pipeline_model_poses(t, 0.5), model_poses(t, 0.5))  # the pipeline uses this one
    assert torch.equal(relative_to_first(t, 0.5), model_poses(t, 0.5))  # and so does the trainer's sampler
    np.testing.assert_allclose(model_poses(t, 0.5).numpy(), rel, atol=1e-12)
