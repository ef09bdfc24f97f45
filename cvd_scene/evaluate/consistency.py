"""The CVD paper's geometric-consistency protocol, with SIFT (pycolmap) instead of SuperGlue.

For frame pairs -- within each video the first frame against every later frame, across videos the corresponding
frames (same index) of every pair of videos -- match SIFT features, estimate the essential matrix with RANSAC and
decompose it into a relative pose, and compare with the plan's relative pose:

* rotation and translation-direction errors (degrees; the translation angle is folded to [0, 90] because an
  essential matrix fixes the direction only up to sign, as in the protocol the paper used) -> AUC at 5/10/20 deg
  (x100); a pair whose pose cannot be estimated counts as a failure (never recalled);
* precision: share of matches whose symmetric squared epipolar error under the true pose, in normalised image
  coordinates, is below 5e-4 (x100, mean over pairs); matching score: correct matches / keypoints of the first
  frame (x100, mean over pairs).

Pairs whose planned baseline is (near) zero have no essential matrix and are skipped; cross-video pairs that the
plan says do not see the same scene are skipped; both are counted. Works on any frames and cameras
(:func:`evaluate_consistency`), so training ablations reuse it. pycolmap only through :mod:`cvd_scene.register.colmap`.
Must not import torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np

from cvd_scene.cameras import Cameras, rotation_angle_deg
from cvd_scene.evaluate.config import EvaluateConfig
from cvd_scene.plan.overlap import frame_overlap
from cvd_scene.register import colmap
from cvd_scene.register.pose_metrics import (
    AUC_THRESHOLDS_DEG,
    epipolar_error_sq,
    normalise_points,
    pose_auc,
    relative_pose,
    translation_direction_error_deg,
)

log = logging.getLogger(__name__)

FrameId = tuple[int, int]
"""(video index, frame index)."""


def consistency_pairs(num_videos: int, num_frames: int) -> dict[str, list[tuple[FrameId, FrameId]]]:
    """The protocol's pairs: ``within_video`` (frame 0 vs each later frame) and ``cross_video`` (same index)."""
    within = [((v, 0), (v, k)) for v in range(num_videos) for k in range(1, num_frames)]
    cross = [
        ((i, k), (j, k))
        for i in range(num_videos)
        for j in range(i + 1, num_videos)
        for k in range(num_frames)
    ]
    return {"within_video": within, "cross_video": cross}


def evaluate_consistency(
    frames: np.ndarray,
    cameras: Cameras,
    covisibility: np.ndarray | None = None,
    options: EvaluateConfig | None = None,
    depth: np.ndarray | None = None,
    seed: int = 0,
    num_threads: int = -1,
) -> dict:
    """Score the geometric consistency of ``frames`` [V, F, H, W, 3] (float in [0, 1]) against ``cameras``.

    ``cameras`` are the poses the frames should have (the plan; ``world_from_cam``, OpenCV axes, intrinsics in
    pixels of these frames). Pairs that share (almost) no view are skipped: cross-video pairs by ``covisibility``
    [V, V, F] (the plan's, optional), the others -- and cross-video pairs when it is None -- by the overlap of the
    planned views (:func:`cvd_scene.plan.overlap.frame_overlap`), measured at ``depth`` [V, F, h, w] (ground truth or a
    proxy scene's z-depth, optional; fixed distances when None).

    Returns a JSON-able dict with one entry per group (``within_video``, ``cross_video``): ``rot_auc`` and
    ``trans_auc`` (x100 at 5/10/20 deg), ``precision`` and ``matching_score`` (x100), median errors, pair counts
    (``pairs_scored``, ``pairs_pose_failed``, ``skipped_zero_baseline``, ``skipped_no_covisibility``) and every pair's
    numbers under ``per_pair``; plus ``settings`` and ``seconds``.
    """
    opt = options or EvaluateConfig()
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [V, F, H, W, 3], got {frames.shape=}")
    V, F, H, W = frames.shape[:4]
    if (V, F) != (cameras.num_videos, cameras.num_frames) or (W, H) != (cameras.width, cameras.height):
        raise ValueError(
            f"frames {frames.shape} do not match the cameras ({cameras.num_videos} videos x {cameras.num_frames} "
            f"frames at {cameras.width}x{cameras.height})"
        )
    if covisibility is not None and np.shape(covisibility) != (V, V, F):
        raise ValueError(f"covisibility must be [V, V, F] = [{V}, {V}, {F}], got {np.shape(covisibility)}")
    t0 = time.perf_counter()
    c = cameras.positions.reshape(-1, 3)
    extent = float(np.linalg.norm(c.max(0) - c.min(0)))
    min_baseline = opt.min_baseline_fraction * max(extent, 1e-12)

    overlap = frame_overlap(cameras, depth)  # [V*F, V*F]
    groups = consistency_pairs(V, F)
    plan: dict[str, list] = {}
    skipped: dict[str, dict[str, int]] = {}
    for name, pairs in groups.items():
        keep, zero, nocov = [], 0, 0
        for a, b in pairs:
            T = relative_pose(cameras.world_from_cam[a], cameras.world_from_cam[b])
            if np.linalg.norm(T[:3, 3]) < min_baseline:
                zero += 1
                continue
            if covisibility is not None and a[0] != b[0] and a[1] == b[1]:
                cov = max(float(covisibility[a[0], b[0], a[1]]), float(covisibility[b[0], a[0], a[1]]))
            else:
                ia, ib = a[0] * F + a[1], b[0] * F + b[1]
                cov = max(float(overlap[ia, ib]), float(overlap[ib, ia]))
            if cov < opt.covisibility_min:
                nocov += 1
                continue
            keep.append((a, b))
        plan[name] = keep
        skipped[name] = {"skipped_zero_baseline": zero, "skipped_no_covisibility": nocov}

    needed = sorted({fid for pairs in plan.values() for pair in pairs for fid in pair})
    index = {fid: i for i, fid in enumerate(needed)}
    features = colmap.extract_sift([frames[v, f] for v, f in needed], opt.max_num_features, num_threads)
    all_pairs = [(index[a], index[b]) for pairs in plan.values() for a, b in pairs]
    matches = iter(
        colmap.match_sift(features, all_pairs, max_ratio=opt.match_max_ratio, num_threads=num_threads)
    )

    out: dict = {}
    for name, pairs in plan.items():
        rows = [
            _score_pair(features[index[a]], features[index[b]], next(matches), a, b, cameras, opt, seed)
            for a, b in pairs
        ]
        out[name] = _summarise(rows, skipped[name])
    out["settings"] = {
        **asdict(opt),
        "seed": seed,
        "features": "SIFT (pycolmap)",
        "pose": "essential matrix, LO-RANSAC",
    }
    out["features_per_frame_mean"] = float(np.mean([len(f) for f in features])) if features else 0.0
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _score_pair(
    f1: colmap.Features,
    f2: colmap.Features,
    m: np.ndarray,
    a: FrameId,
    b: FrameId,
    cams: Cameras,
    opt: EvaluateConfig,
    seed: int,
) -> dict:
    """Errors, precision and matching score of one pair (``m`` [M, 2] putative matches)."""
    K1, K2 = cams.K[a], cams.K[b]
    true = relative_pose(cams.world_from_cam[a], cams.world_from_cam[b])  # cam_b from cam_a
    p1, p2 = f1.xy[m[:, 0]], f2.xy[m[:, 1]]  # [M, 2] each
    if len(m):
        err = epipolar_error_sq(normalise_points(p1, K1), normalise_points(p2, K2), true)
        correct = int(np.sum(err < opt.epipolar_threshold))
    else:
        correct = 0
    row = {
        "a": [int(a[0]), int(a[1])],
        "b": [int(b[0]), int(b[1])],
        "keypoints": len(f1),
        "matches": len(m),
        "correct": correct,
        "precision": correct / len(m) if len(m) else 0.0,
        "matching_score": correct / len(f1) if len(f1) else 0.0,
        "rotation_error_deg": float("inf"),
        "translation_error_deg": float("inf"),
        "inliers": 0,
    }
    est = colmap.estimate_relative_pose(
        p1, p2, K1, K2, cams.width, cams.height, opt.ransac_max_error_px, seed
    )
    if est is not None:
        T, inl = est
        row["rotation_error_deg"] = float(rotation_angle_deg(T[:3, :3], true[:3, :3]))
        row["translation_error_deg"] = float(
            translation_direction_error_deg(T[:3, 3], true[:3, 3], sign_ambiguous=True)
        )
        row["inliers"] = int(inl.sum())
    return row


def _summarise(rows: list[dict], skipped: dict[str, int]) -> dict:
    rot = np.array([r["rotation_error_deg"] for r in rows], np.float64)
    tra = np.array([r["translation_error_deg"] for r in rows], np.float64)

    def median(x: np.ndarray) -> float | None:
        fin = x[np.isfinite(x)]
        return float(np.median(fin)) if fin.size else None

    def pct(xs: list[float]) -> float | None:
        return 100.0 * float(np.mean(xs)) if xs else None

    return {
        "rot_auc": [100.0 * a for a in pose_auc(rot)] if rows else [None] * len(AUC_THRESHOLDS_DEG),
        "trans_auc": [100.0 * a for a in pose_auc(tra)] if rows else [None] * len(AUC_THRESHOLDS_DEG),
        "precision": pct([r["precision"] for r in rows]),
        "matching_score": pct([r["matching_score"] for r in rows]),
        "rotation_error_deg_median": median(rot),
        "translation_error_deg_median": median(tra),
        "pairs_scored": len(rows),
        "pairs_pose_failed": int(np.sum(~np.isfinite(rot))),
        **skipped,
        "per_pair": rows,
    }


def format_table(result: dict, paper: bool = True) -> str:
    """A Markdown table of an :func:`evaluate_consistency` result, next to the paper's numbers."""
    from cvd_scene.evaluate.paper import PAPER_CROSS_VIDEO, PAPER_PER_VIDEO

    def fmt(x: object) -> str:
        return "-" if x is None else f"{x:.1f}"

    header = "| pairs | rows | rot AUC@5 | @10 | @20 | trans AUC@5 | @10 | @20 | precision | matching score |"
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, title, ref in (
        ("cross_video", "across videos", PAPER_CROSS_VIDEO),
        ("within_video", "within videos", PAPER_PER_VIDEO),
    ):
        g = result.get(key)
        if not isinstance(g, dict):
            continue
        named = [(f"this run ({g.get('pairs_scored', 0)} pairs)", g)] + (list(ref.items()) if paper else [])
        for label, m in named:
            vals = [
                *m.get("rot_auc", [None] * 3),
                *m.get("trans_auc", [None] * 3),
                m.get("precision"),
                m.get("matching_score"),
            ]
            lines.append(f"| {title} | {label} | " + " | ".join(fmt(v) for v in vals) + " |")
    return "\n".join(lines)
