"""Consistency of videos of a scene whose geometry is known, at any sharpness: the warp measure.

SIFT-based protocols (:mod:`cvd_scene.evaluate.consistency`) need sharp frames; this one does not. For every pair of videos
(A, B) and every frame index k >= 1 (frame 0 is the shared first camera), A's pixels are lifted to 3D with A's
ground-truth depth, projected into B's camera, and B's frame is sampled there (bilinear backward warp). Pixels that
land inside B and pass an occlusion test against B's ground-truth depth (the projected depth within ``rel_tol`` of
B's depth there) are kept; the measure is the PSNR over the kept pixels (all pairs pooled) and the SSIM map
averaged over the kept pixels (the SSIM window sees A's own pixels where nothing was kept). Both directions of each
pair are scored.

On the ground-truth renders it gives the ceiling (what perfectly consistent videos score: not infinite, because of
shading, resampling and depth edges); a generator's videos score below it by how much they disagree. Depth is the
reference renderer's z-depth in metres (0 where empty); cameras follow the project convention (``world_from_cam``,
OpenCV axes, pixel centres at +0.5). Must not import torch.
"""

from __future__ import annotations

import numpy as np

SSIM_SIGMA_PX = 1.5
"""Gaussian window of the SSIM map (the standard 11-tap window's sigma)."""


def warp_pair(
    frame_a: np.ndarray,  # [H, W, 3] float in [0, 1]
    frame_b: np.ndarray,  # [H, W, 3]
    depth_a: np.ndarray,  # [H, W] metres, 0 where empty
    depth_b: np.ndarray,  # [H, W]
    K_a: np.ndarray,  # [3, 3]
    K_b: np.ndarray,  # [3, 3]
    world_from_cam_a: np.ndarray,  # [4, 4]
    world_from_cam_b: np.ndarray,  # [4, 4]
    rel_tol: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """B's frame warped into A's view [H, W, 3] and the mask [H, W] of A's pixels that see the same surface point
    in B (inside B's image, in front of it, and not occluded there)."""
    H, W = depth_a.shape
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.stack([xs + 0.5, ys + 0.5, np.ones((H, W))], -1).reshape(-1, 3)  # [H*W, 3]
    z = depth_a.reshape(-1).astype(np.float64)  # [H*W]
    x_cam_a = (pix @ np.linalg.inv(K_a).T) * z[:, None]  # [H*W, 3] z-depth
    b_from_a = np.linalg.inv(world_from_cam_b) @ world_from_cam_a  # [4, 4]
    x_cam_b = x_cam_a @ b_from_a[:3, :3].T + b_from_a[:3, 3]  # [H*W, 3]
    zb = x_cam_b[:, 2]
    uvw = x_cam_b @ K_b.T  # [H*W, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uvw[:, 0] / uvw[:, 2] - 0.5, uvw[:, 1] / uvw[:, 2] - 0.5  # continuous pixel index in B
    ok = (z > 0) & (zb > 1e-6) & np.isfinite(u) & np.isfinite(v)
    ok &= (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    u, v = np.where(ok, u, 0.0), np.where(ok, v, 0.0)
    # Occlusion: B's depth at the projection (nearest pixel, so depth edges are not blended) must match.
    db = depth_b[np.rint(v).astype(int), np.rint(u).astype(int)]
    ok &= (db > 0) & (np.abs(db - zb) <= rel_tol * zb)
    warped = _bilinear(frame_b, u, v).reshape(H, W, 3)
    return np.where(ok.reshape(H, W, 1), warped, 0.0), ok.reshape(H, W)


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``image`` [H, W, C] at continuous pixel indices (u = column, v = row) [N] -> [N, C]."""
    H, W = image.shape[:2]
    u0 = np.clip(np.floor(u).astype(int), 0, W - 1)
    v0 = np.clip(np.floor(v).astype(int), 0, H - 1)
    u1, v1 = np.minimum(u0 + 1, W - 1), np.minimum(v0 + 1, H - 1)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    top = image[v0, u0] * (1 - fu) + image[v0, u1] * fu
    bottom = image[v1, u0] * (1 - fu) + image[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def ssim_map(a: np.ndarray, b: np.ndarray, sigma_px: float = SSIM_SIGMA_PX) -> np.ndarray:
    """SSIM map [H, W] of two images [H, W, 3] in [0, 1] (Gaussian window, the standard constants, averaged over
    channels)."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01**2, 0.03**2
    out = np.zeros(a.shape[:2])
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def blur(img: np.ndarray) -> np.ndarray:
            return gaussian_filter(img, sigma_px, truncate=3.5, mode="reflect")

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        out += ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return out / a.shape[2]


def warp_consistency(
    frames: np.ndarray,  # [V, F, H, W, 3] float in [0, 1]
    depth: np.ndarray,  # [V, F, H, W] metres, 0 where empty
    world_from_cam: np.ndarray,  # [V, F, 4, 4]
    K: np.ndarray,  # [V, F, 3, 3]
    rel_tol: float = 0.03,
    first_frame: int = 1,
) -> dict:
    """The warp measure of ``frames`` against ground-truth ``depth`` (see the module docstring).

    Returns a JSON-able dict: ``psnr`` (dB, pooled over every kept pixel of every pair), ``ssim`` (the SSIM map's
    mean over the kept pixels), ``kept_fraction`` (kept pixels / pixels scored), ``pairs`` (ordered pairs of
    frames scored), ``per_pair`` (``[a, b, k, psnr, ssim, kept]``) and ``settings``.
    """
    frames = np.asarray(frames, np.float64)
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [V, F, H, W, 3], got {frames.shape=}")
    V, F, H, W = frames.shape[:4]
    if np.shape(depth) != (V, F, H, W):
        raise ValueError(f"depth must be [V, F, H, W] = {[V, F, H, W]}, got {np.shape(depth)}")
    se_sum, ssim_sum, kept_sum, scored = 0.0, 0.0, 0, 0
    rows = []
    for a in range(V):
        for b in range(V):
            if a == b:
                continue
            for k in range(first_frame, F):
                warped, ok = warp_pair(
                    frames[a, k], frames[b, k], depth[a, k], depth[b, k],
                    K[a, k], K[b, k], world_from_cam[a, k], world_from_cam[b, k], rel_tol,
                )  # fmt: skip
                scored += H * W
                n = int(ok.sum())
                if n == 0:
                    continue
                se = float(((frames[a, k] - warped)[ok] ** 2).sum())
                # Outside the mask the window sees A's own pixels (no artificial edge); only kept pixels count.
                filled = np.where(ok[..., None], warped, frames[a, k])
                s = float(ssim_map(frames[a, k], filled)[ok].sum())
                se_sum, ssim_sum, kept_sum = se_sum + se, ssim_sum + s, kept_sum + n
                rows.append([a, b, k, psnr_from_mse(se / (3 * n)), s / n, n])
    mse = se_sum / (3 * kept_sum) if kept_sum else float("nan")
    return {
        "psnr": psnr_from_mse(mse) if kept_sum else None,
        "ssim": ssim_sum / kept_sum if kept_sum else None,
        "kept_fraction": kept_sum / scored if scored else 0.0,
        "pairs": len(rows),
        "per_pair": rows,
        "settings": {"rel_tol": rel_tol, "first_frame": first_frame, "ssim_sigma_px": SSIM_SIGMA_PX},
    }


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) of a mean squared error of [0, 1] images (capped at 120 dB)."""
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def read_depth(folder, video_ids, num_frames: int) -> np.ndarray:
    """Ground-truth z-depth ``<folder>/<vid>/<NNNN>.npy`` -> [V, F, H, W] float32 metres."""
    from cvd_scene.runfolder import frame_file

    return np.stack(
        [np.stack([np.load(frame_file(folder, vid, f, ".npy")) for f in range(num_frames)]) for vid in video_ids]
    ).astype(np.float32)
