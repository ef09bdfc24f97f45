"""Run folders for the fit tests: real plan and generate stages (reference renderer), then a register folder.

The real register stage does not register the tiny frames these tests can afford (measured: 32 px frames 0/12,
64 px 7/12; it needs about 192 px), so ``register/`` is made from the plan: ``transforms.json`` with the planned
poses and a ``sparse_pc.ply`` back-projected from the reference renderer's ground-truth depth (a sparse, noise-free
stand-in for triangulated SIFT points), recorded in ``run.json`` as a finished stage. The refusal test uses the
real register stage (whose failure on 32 px frames is what it needs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvd_scene.camera_io import read_cameras_json, write_transforms_json
from cvd_scene.config import from_dict
from cvd_scene.orchestrate import run_stages
from cvd_scene.runconfig import RunConfig
from cvd_scene.runfolder import RunFolder, StageResult, run_lock


def write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary PLY of points [P, 3] with uint8 colours [P, 3]."""
    from plyfile import PlyData, PlyElement

    vertex = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, k in enumerate("xyz"):
        vertex[k] = xyz[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = rgb[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))


def backprojected_points(run_dir: Path, points_per_frame: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] and colours [P, 3] uint8 sampled from every frame's ground-truth depth."""
    import imageio.v3 as iio

    cams = read_cameras_json(run_dir / "plan" / "cameras.json")
    rng = np.random.default_rng(seed)
    xyz, rgb = [], []
    for v, vid in enumerate(cams.video_ids):
        for f in range(cams.num_frames):
            depth = np.load(run_dir / "generate" / "gt" / "depth" / vid / f"{f:04d}.npy")  # [H, W] metres
            image = iio.imread(run_dir / "generate" / "frames" / vid / f"{f:04d}.png")[..., :3]  # [H, W, 3]
            ys, xs = np.nonzero(depth > 0)
            pick = rng.choice(len(ys), size=min(points_per_frame, len(ys)), replace=False)
            ys, xs = ys[pick], xs[pick]
            z = depth[ys, xs]
            K = cams.K[v, f]
            cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=1)
            T = cams.world_from_cam[v, f]
            xyz.append(cam @ T[:3, :3].T + T[:3, 3])
            rgb.append(image[ys, xs])
    return np.concatenate(xyz), np.concatenate(rgb).astype(np.uint8)


def write_register_fixture(run_dir: Path, out_dir: Path, points_per_frame: int) -> StageResult:
    """``register/`` from the plan and the ground-truth depth (see the module docstring)."""
    cams = read_cameras_json(run_dir / "plan" / "cameras.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    xyz, rgb = backprojected_points(run_dir, points_per_frame)
    write_points_ply(out_dir / "sparse_pc.ply", xyz, rgb)
    write_transforms_json(cams, out_dir / "transforms.json", "../generate/frames", extra={"ply_file_path": "sparse_pc.ply"})
    return StageResult(summary={"registered": cams.num_videos * cams.num_frames, "points": len(xyz)})


def make_run(
    run_dir: Path,
    *,
    num_videos: int = 2,
    num_frames: int = 6,
    size: int = 48,
    points_per_frame: int = 150,
    prompt: str = "a cosy room with a red sofa",
    fit: dict | None = None,
    plan: dict | None = None,
) -> RunConfig:
    """A run folder with plan, generate and a fixture register stage; returns its config (``plan``: more of the
    plan's keys)."""
    config = from_dict(
        RunConfig,
        {
            "prompt": prompt,
            "plan": {"num_videos": num_videos, "num_frames": num_frames, "width": size, "height": size, **(plan or {})},
            "generate": {"samples_per_pixel": 1},
            "fit": fit or {},
        },
    )
    run_stages(run_dir, config, ["plan", "generate"])
    with run_lock(run_dir):
        run = RunFolder.read(run_dir)
        run.run_stage("register", lambda out: write_register_fixture(run_dir, out, points_per_frame), {"fixture": 1})
    return config


def random_gaussians(n: int, sh_coeffs: int = 15, seed: int = 0):
    """Splats with every parameter in the range the lossy formats can hold (colours inside [0, 1]), spread over a
    6 m cube; ``sh_coeffs`` rest coefficients per channel (0: SH degree 0)."""
    from cvd_scene.gaussians import Gaussians

    rng = np.random.default_rng(seed)
    return Gaussians(
        means=rng.uniform(-3, 3, size=(n, 3)),
        log_scales=rng.uniform(-5, -1, size=(n, 3)),
        quats_wxyz=rng.normal(size=(n, 4)),
        opacity_logits=rng.normal(0, 2, size=n),
        sh_dc=rng.uniform(-1.7, 1.7, size=(n, 3)),
        sh_rest=rng.uniform(-0.9, 0.9, size=(n, sh_coeffs, 3)),
    )
