"""Pictures of a plan: ``plan/trajectories.png`` (top and side views of every video's path with frustums and
the look-at point) and the co-visibility matrix image.

matplotlib figures drawn by the Agg canvas (no display, no pyplot global state), imported inside the
functions. Must not import torch or the model package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cvd_scene.cameras import Cameras


def video_colours(n: int) -> list:
    """One distinct colour per video (tab10, then an even hue wheel beyond ten)."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(i / n) for i in range(n)]


def _frustum_lines(world_from_cam: np.ndarray, K: np.ndarray, width: int, height: int, depth_m: float) -> np.ndarray:
    """[8, 2, 3] segments of a camera's frustum (4 edges from the centre, 4 of the far rectangle), world
    frame."""
    corners_px = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], dtype=np.float64)
    rays = corners_px @ np.linalg.inv(K).T  # [4, 3] camera-z = 1
    pts = (rays * depth_m) @ world_from_cam[:3, :3].T + world_from_cam[:3, 3]  # [4, 3]
    centre = world_from_cam[:3, 3]
    segs = [(centre, p) for p in pts] + [(pts[i], pts[(i + 1) % 4]) for i in range(4)]
    return np.asarray(segs)


def plot_trajectories(
    cams: Cameras,
    path: str | os.PathLike,
    layout=None,
    look_at_m: Sequence[float] | None = None,
    title: str | None = None,
    frustum_frames: Sequence[int] | None = None,
) -> None:
    """Write a top (x-z, looking down) and a side (z-y) view of every video's camera path, one colour per
    video, with frustums at a few frames, the common first camera, the look-at point and the outline of the
    scene ``layout`` (a :class:`cvd_scene.plan.planning.SceneLayout`), as a PNG."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    pos = cams.positions  # [V, F, 3]
    V, F = pos.shape[:2]
    colours = video_colours(V)
    look = None if look_at_m is None else np.asarray(look_at_m, dtype=np.float64)
    if frustum_frames is None:
        frustum_frames = sorted({F // 2, F - 1}) if F > 1 else [0]
    # Bounds of what is drawn: the paths, the look-at point and the scene layout when it is not much larger.
    pts = pos.reshape(-1, 3) if look is None else np.concatenate([pos.reshape(-1, 3), look[None]])  # [n, 3]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if layout is not None:
        blo, bhi = np.asarray(layout.bounds_min_m, float), np.asarray(layout.bounds_max_m, float)
        if np.max(bhi - blo) < 4.0 * max(np.max(hi - lo), 0.5):
            lo, hi = np.minimum(lo, blo), np.maximum(hi, bhi)
    depth_m = max(0.07 * float(np.max(hi - lo)), 0.05)
    frusta = np.asarray(
        [
            [
                _frustum_lines(cams.world_from_cam[v, f], cams.K[v, f], cams.width, cams.height, depth_m)
                for f in frustum_frames
            ]
            for v in range(V)
        ]
    )  # [V, n, 8, 2, 3]
    first = _frustum_lines(
        cams.world_from_cam[0, 0], cams.K[0, 0], cams.width, cams.height, depth_m
    )  # [8, 2, 3]
    lo = np.minimum(lo, frusta.reshape(-1, 3).min(axis=0))
    hi = np.maximum(hi, frusta.reshape(-1, 3).max(axis=0))
    pad = np.maximum(0.06 * (hi - lo), 0.15)

    views = (("top view (x-z)", 0, 2), ("side view (z-y)", 2, 1))
    fig = Figure(figsize=(10, 4.6), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, (name, a, b) in zip(axes, views):
        if layout is not None:
            for blo, bhi, _, _ in layout.proxy_boxes:
                ax.add_patch(
                    Rectangle(
                        (blo[a], blo[b]),
                        bhi[a] - blo[a],
                        bhi[b] - blo[b],
                        fill=False,
                        edgecolor="0.6",
                        linewidth=1.0,
                        linestyle="--",
                    )
                )
        for v in range(V):
            ax.plot(pos[v, :, a], pos[v, :, b], "-", color=colours[v], linewidth=2.0, label=cams.video_ids[v])
            ax.plot(pos[v, :, a], pos[v, :, b], ".", color=colours[v], markersize=3)
            segs = frusta[v].reshape(-1, 2, 3)[..., [a, b]]  # [n * 8, 2, 2] in this view's plane
            ax.add_collection(LineCollection(segs, colors=[colours[v]], linewidths=0.8, alpha=0.9))
        ax.add_collection(LineCollection(first[..., [a, b]], colors="black", linewidths=1.0))
        ax.plot(pos[0, 0, a], pos[0, 0, b], "k*", markersize=10, label="first camera")
        if look is not None:
            ax.plot(look[a], look[b], "x", color="red", markersize=9, markeredgewidth=2, label="look-at")
        ax.set_xlim(lo[a] - pad[a], hi[a] + pad[a])
        ax.set_ylim(lo[b] - pad[b], hi[b] + pad[b])
        if name.startswith("top"):
            ax.invert_yaxis()  # -z (the first camera's forward) points up the page
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"{'xyz'[a]} (m)")
        ax.set_ylabel(f"{'xyz'[b]} (m)")
        ax.set_title(name)
        ax.grid(True, linewidth=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(os.fspath(path))


def plot_covisibility(
    matrix: np.ndarray, video_ids: Sequence[str], path: str | os.PathLike, title: str = "co-visibility"
) -> None:
    """Write a co-visibility matrix [V, V] (row i: fraction of video i's view that video j also sees) as a PNG
    heat map with the values written in the cells."""
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    V = m.shape[0]
    if m.shape != (V, V) or len(video_ids) != V:
        raise ValueError(
            f"need a square matrix with one id per video, got {m.shape=} and {len(video_ids)} ids"
        )
    size = 1.2 + 0.55 * V
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(V), video_ids, rotation=45 if V > 6 else 0)
    ax.set_yticks(range(V), video_ids)
    ax.set_xlabel("seen by video j")
    ax.set_ylabel("view of video i")
    if V <= 12:
        for i in range(V):
            for j in range(V):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if m[i, j] > 0.6 else "white",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
