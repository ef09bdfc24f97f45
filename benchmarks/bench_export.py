"""Export: time to write each format and its size as a ratio to the master 3DGS PLY; mesh fusion vs Poisson.

Splats: the demo run's fit (``runs/demo/fit/gaussians.ply``, or ``--ply FILE``) when it exists, else a synthetic
set of 200 000 splats at SH degree 3 (quick: 20 000) shaped like a fitted room: flat splats on the walls, floor
and ceiling of a 5 x 2.6 x 4 m room, log-normal sizes around 1.5 cm, SH bands decaying with degree. Random SH
values compress worse than fitted ones, so SPZ ratios on the synthetic set are an upper bound.

Baselines, measured in the same run: the PLY write (a plain dump of the floats) for the time of every format;
the PLY's size for every format's size; open3d's screened Poisson reconstruction of the same back-projected
depth for the TSDF mesh (time, and median distance of the surface to the true walls).

    .venv/bin/python benchmarks/bench_export.py [--quick] [--ply FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ROOM_LO, ROOM_HI = np.array([-2.5, 0.0, -2.0]), np.array([2.5, 2.6, 2.0])


def synthetic_room_splats(n: int, seed: int = 0):
    """``n`` flat splats on the six inner faces of a room, SH degree 3, sizes log-normal around 1.5 cm."""
    from cvd_scene.cameras import rotation_to_quaternion
    from cvd_scene.gaussians import SH_C0, Gaussians

    rng = np.random.default_rng(seed)
    size = ROOM_HI - ROOM_LO
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    face_axis = rng.choice(3, n, p=areas / areas.sum())
    face_side = rng.integers(0, 2, n)
    means = rng.uniform(ROOM_LO, ROOM_HI, (n, 3))
    means[np.arange(n), face_axis] = np.where(face_side == 1, ROOM_HI[face_axis], ROOM_LO[face_axis])
    means += rng.normal(0, 0.003, (n, 3))
    quats = np.zeros((n, 4))
    for axis in range(3):
        R = np.eye(3)[:, [(axis + 1) % 3, (axis + 2) % 3, axis]]
        R[:, 0] *= np.sign(np.linalg.det(R))
        quats[face_axis == axis] = rotation_to_quaternion(R)
    quats += rng.normal(0, 0.05, (n, 4))
    sigma = np.exp(rng.normal(np.log(0.015), 0.5, n))
    log_scales = np.log(np.stack([sigma, sigma * rng.uniform(0.5, 1, n), sigma * 0.05], 1))
    base = rng.uniform(0.2, 0.8, (n, 3))
    rest = rng.normal(0, 1, (n, 15, 3)) * np.repeat([0.08, 0.04, 0.02], [3, 5, 7])[None, :, None]
    return Gaussians(
        means=means,
        log_scales=log_scales,
        quats_wxyz=quats,
        opacity_logits=rng.normal(2.0, 1.5, n),
        sh_dc=(base - 0.5) / SH_C0,
        sh_rest=rest,
    )


def find_demo_ply() -> Path | None:
    found = sorted(REPO.glob("runs/*/fit/gaussians.ply"))
    return found[0] if found else None


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def format_rows(gaussians, case: str, repeat: int) -> list:
    from cvd_scene.bench import BenchRow
    from cvd_scene.export import write_khr_glb, write_ply, write_splat, write_spz
    from cvd_scene.export.budget import clean_and_budget
    from cvd_scene.export.spz import zstd_available

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ply_s = _timed(lambda: write_ply(gaussians, tmp / "scene.ply"), repeat)
        ply_mb = (tmp / "scene.ply").stat().st_size / 1e6
        writers = {
            ".splat": lambda p: write_splat(gaussians, p),
            "SPZ v3 (gzip)": lambda p: write_spz(gaussians, p, version=3),
            "KHR GLB": lambda p: write_khr_glb(gaussians, p),
        }
        if zstd_available():
            writers["SPZ v4 (zstd)"] = lambda p: write_spz(gaussians, p, version=4)
        for name, write in writers.items():
            path = tmp / f"out-{len(rows)}"
            seconds = _timed(lambda w=write, p=path: w(p), repeat)
            mb = path.stat().st_size / 1e6
            rows.append(BenchRow("export", f"{name}, {case}", "size (MB)", mb, "3DGS PLY", ply_mb))
            rows.append(BenchRow("export", f"{name}, {case}", "write time (s)", seconds, "PLY write", ply_s))
        budget = len(gaussians) // 2
        seconds = _timed(lambda: clean_and_budget(gaussians, budget), repeat)
        rows.append(
            BenchRow("export", f"budget to {budget} splats, {case}", "time (s)", seconds, "PLY write", ply_s)
        )
    return rows


def room_views(size: int, n_yaw: int):
    """Exact depth/colour views of the room's inside (the fit's views stand-in), from look-around rings."""
    from cvd_scene.export.mesh import View, ring_cameras

    cams = ring_cameras(
        ROOM_LO + 0.6, ROOM_HI - 0.6, size_px=size, n_yaw=n_yaw, pitches_deg=(-35.0, 0.0, 35.0)
    )
    views = []
    for c2w, K in zip(cams.world_from_cam.reshape(-1, 4, 4), cams.K.reshape(-1, 3, 3)):
        vs, us = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
        ray = (
            np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], -1)
            @ c2w[:3, :3].T
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(ray > 0, (ROOM_HI - c2w[:3, 3]) / ray, (ROOM_LO - c2w[:3, 3]) / ray)
        t = np.where(np.isfinite(t), t, np.inf)
        rgb = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], np.uint8)[np.argmin(t, -1)]
        views.append(View(rgb=rgb, depth_m=t.min(-1).astype(np.float32), K=K, world_from_cam=c2w))
    return views


def mesh_rows(quick: bool) -> list:
    import open3d as o3d

    from cvd_scene.bench import BenchRow
    from cvd_scene.export.mesh import backproject, fuse_tsdf

    size, n_yaw, tris = (64, 6, 20_000) if quick else (160, 12, 100_000)
    views = room_views(size, n_yaw)
    voxel = 0.04 if quick else 0.015

    def wall_distance(v: np.ndarray) -> float:
        return float(np.median(np.minimum(np.abs(v - ROOM_LO), np.abs(v - ROOM_HI)).min(axis=1)))

    t = time.perf_counter()
    mesh = fuse_tsdf(views, voxel_m=voxel, max_triangles=tris)
    tsdf_s = time.perf_counter() - t

    t = time.perf_counter()
    pts = np.concatenate([backproject(v)[0] for v in views])
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd = pcd.voxel_down_sample(voxel)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * voxel, max_nn=30))
    pcd.orient_normals_towards_camera_location(views[0].world_from_cam[:3, 3])
    poisson, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=8 if quick else 9)
    poisson = poisson.simplify_quadric_decimation(target_number_of_triangles=tris)
    poisson_s = time.perf_counter() - t
    case = f"{len(views)} views {size}², voxel {voxel * 100:.1f} cm, {tris} triangles"
    ours_mm = 1000 * wall_distance(mesh.vertices.astype(np.float64))
    poisson_mm = 1000 * wall_distance(np.asarray(poisson.vertices))
    baseline = "Poisson of the same depth"
    return [
        BenchRow("export", f"mesh (TSDF), {case}", "time (s)", tsdf_s, baseline, poisson_s),
        BenchRow(
            "export", f"mesh (TSDF), {case}", "median distance to walls (mm)", ours_mm, baseline, poisson_mm
        ),
    ]


def rows(quick: bool = False, ply: str | None = None) -> list:
    from cvd_scene.export import read_ply

    path = Path(ply) if ply else find_demo_ply()
    if path is not None:
        gaussians = read_ply(path)
        case = f"{path.parent.parent.name} fit, {len(gaussians)} splats, SH {gaussians.sh_degree}"
    else:
        n = 20_000 if quick else 200_000
        gaussians = synthetic_room_splats(n)
        case = f"synthetic room, {n} splats, SH 3"
    return format_rows(gaussians, case, repeat=1 if quick else 3) + mesh_rows(quick)


def main() -> None:
    from cvd_scene.bench import format_table, machine_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--ply", help="a 3DGS PLY to measure instead of the demo fit / synthetic set")
    args = parser.parse_args()
    table = rows(quick=args.quick, ply=args.ply)
    print(f"machine: {machine_description()}\n")
    print(format_table(table))


if __name__ == "__main__":
    main()
