"""Benchmark of the Gaussian rasteriser (``cvd_scene/fit/raster.py``), each number next to a baseline of the same run.

CPU rows (``rows(quick)``, what ``cvd-scene bench raster`` prints):

* the pure-torch rasteriser vs its slow per-pixel reference (``raster_reference.composite_reference``) on a tiny
  image: forward + backward time and the largest pixel difference;
* the pure-torch rasteriser vs the same tile compositor differentiated by autograd (``composite_autograd``,
  what the hand-written backward replaces) on a 192 x 192 view of a Gaussian room: forward + backward time.

Times are process CPU seconds with one torch thread, the best of several runs (robust on a shared machine).

GPU mode, for a CUDA machine (needs torch with CUDA and gsplat 1.4.0, whose kernels JIT-compile on first use,
about 2-3 minutes)::

    python benchmarks/bench_raster.py --device cuda

renders the same room scene at 1280 x 720 through gsplat and through the pure-torch rasteriser on the GPU, and
prints the largest and mean pixel differences and the time of each (forward, forward + backward).

Self-contained: torch, gsplat and this repository's ``cvd_scene/fit/raster.py`` (no nerfstudio). Must not import
torch at module level (the bench harness imports every benchmark).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvd_scene.bench import BenchRow


def room_scene(n: int, seed: int = 0, device: str = "cpu", opacity: float = 0.8):
    """Flat Gaussians covering the six faces of a 4 m box (a trained-looking room), and their colours."""
    import torch

    g = torch.Generator().manual_seed(seed)
    face = torch.randint(0, 6, (n,), generator=g)
    u, v = torch.rand(n, generator=g) * 2 - 1, torch.rand(n, generator=g) * 2 - 1
    means = torch.zeros(n, 3)
    for f in range(6):
        m = face == f
        axis, sign = f // 2, (1.0 if f % 2 else -1.0)
        others = [a for a in range(3) if a != axis]
        means[m, axis] = 2.0 * sign
        means[m, others[0]] = 2.0 * u[m]
        means[m, others[1]] = 2.0 * v[m]
    spacing = math.sqrt(6 * 16 / n)
    scales = torch.full((n, 3), 0.7 * spacing)
    scales[torch.arange(n), face // 2] = 0.1 * spacing
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g) * 0.05 + torch.tensor([1.0, 0, 0, 0]), dim=-1)
    opac = torch.full((n,), opacity)
    colors = torch.rand(n, 3, generator=g)
    return [t.to(device) for t in (means, quats, scales, opac, colors)]


def camera(width: int, height: int, yaw: float = 0.3, fov_x_deg: float = 60.0, device: str = "cpu"):
    """World-to-camera [1, 4, 4] and intrinsics [1, 3, 3] of a camera inside the room (OpenCV axes)."""
    import torch

    c, s = math.cos(yaw), math.sin(yaw)
    R = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # cam_from_world rotation
    view = torch.eye(4)
    view[:3, :3] = R
    view[:3, 3] = -R @ torch.tensor([0.3, 0.2, -0.5])
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return view[None].to(device), K[None].to(device)


def _best_cpu_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def rows(quick: bool = False) -> list[BenchRow]:
    """CPU rows: vs the per-pixel reference (tiny image) and vs autograd (192 x 192 room)."""
    import torch

    from cvd_scene.fit import raster
    from cvd_scene.fit.raster_reference import composite_autograd, composite_reference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        # 1. Tiny image: the rasteriser vs the direct loop over pixels and Gaussians.
        W, H, n = (16, 12, 12) if quick else (32, 24, 30)
        g = torch.Generator().manual_seed(0)
        means = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.6
        means[:, 2] += 3.0
        quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
        scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.15 + 0.02
        opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
        colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
        view = torch.eye(4, dtype=torch.float64)[None]
        K = torch.tensor([[[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]]], dtype=torch.float64)
        radii, m2, depths, conics = raster.project_gaussians(means, quats, scales, view, K, W, H)
        leaves = [t.detach().requires_grad_(True) for t in (m2, conics, colors, opac)]

        def fast():
            img, alpha = raster.composite(leaves[0], leaves[1], leaves[2][None], leaves[3][None], radii, depths, W, H,
                                          tile_size=8)  # fmt: skip
            (img.sum() + alpha.sum()).backward()
            return img[0].detach()

        def slow():
            img, alpha = composite_reference(leaves[0][0], leaves[1][0], leaves[2], leaves[3], radii[0], depths[0], W, H)
            (img.sum() + alpha.sum()).backward()
            return img.detach()

        diff = float((fast() - slow()).abs().max())
        t_fast, t_slow = _best_cpu_time(fast, 5), _best_cpu_time(slow, 1 if quick else 2)
        case = f"{W}x{H}, {n} Gaussians, fwd+bwd (max abs diff {diff:.1e})"
        out.append(BenchRow("raster", case, "CPU time (s)", t_fast, "per-pixel reference loop", t_slow))
        # 2. A room view: hand-written backward vs autograd through the same tile compositor.
        size, n_room = (96, 60_000) if quick else (192, 250_000)
        means, quats, scales, opac, colors = room_scene(n_room)
        view, K = camera(size, size)
        radii, m2, depths, conics = raster.project_gaussians(means, quats, scales, view, K, size, size)
        feats = torch.cat([colors[None], depths[..., None]], -1)  # RGB + depth, as the fit renders
        leaves = [t.detach().requires_grad_(True) for t in (m2, conics, feats, opac[None])]
        visible = int((radii > 0).sum())

        def ours():
            img, alpha = raster.composite(*leaves[:3], leaves[3], radii, depths, size, size, tile_size=8)
            (img.sum() + alpha.sum()).backward()

        def autograd():
            img, alpha = composite_autograd(*leaves[:3], leaves[3], radii, depths, size, size, tile_size=8)
            (img.sum() + alpha.sum()).backward()

        with torch.no_grad():
            a, _ = raster.composite(*leaves[:3], leaves[3], radii, depths, size, size, tile_size=8)
            b, _ = composite_autograd(*leaves[:3], leaves[3], radii, depths, size, size, tile_size=8)
        diff = float((a - b).abs().max())
        case = f"{size}x{size} room, {visible} visible Gaussians, fwd+bwd (max abs diff {diff:.1e})"
        t_ours, t_autograd = _best_cpu_time(ours, 3), _best_cpu_time(autograd, 2)
        out.append(BenchRow("raster", case, "CPU time (s)", t_ours, "same compositor by autograd", t_autograd))
        return out
    finally:
        torch.set_num_threads(threads)


def gpu_comparison(width: int = 1280, height: int = 720, n: int = 300_000, repeats: int = 10) -> str:
    """gsplat vs the pure-torch rasteriser on one CUDA scene: pixel differences and times (a Markdown table)."""
    import torch

    from cvd_scene.fit.raster import rasterize

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    dev = "cuda"
    means, quats, scales, opac, colors = room_scene(n, device=dev)
    view, K = camera(width, height, device=dev)
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]

    def run(backend: str, backward: bool):
        render, alpha, _ = rasterize(*params, view, K, width, height, render_mode="RGB+ED", backend=backend)
        if backward:
            (render[..., :3].sum() + alpha.sum()).backward()
        return render.detach(), alpha.detach()

    def timed(backend: str, backward: bool) -> float:
        run(backend, backward)  # warm-up (gsplat's first call JIT-compiles its kernels)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run(backend, backward)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeats

    t_build = time.perf_counter()
    ref, ref_alpha = run("gsplat", False)
    torch.cuda.synchronize()
    t_build = time.perf_counter() - t_build
    ours, our_alpha = run("torch", False)
    rgb_diff = (ours[..., :3] - ref[..., :3]).abs()
    alpha_diff = (our_alpha - ref_alpha).abs()
    solid = (ref_alpha[..., 0] > 0.5) & (our_alpha[..., 0] > 0.5)
    depth_diff = (ours[..., 3] - ref[..., 3]).abs()[solid]
    rows_ = [
        ("max abs RGB difference", f"{float(rgb_diff.max()):.2e}"),
        ("mean abs RGB difference", f"{float(rgb_diff.mean()):.2e}"),
        ("max abs alpha difference", f"{float(alpha_diff.max()):.2e}"),
        ("median abs expected-depth difference (m)", f"{float(depth_diff.median()) if depth_diff.numel() else float('nan'):.2e}"),
        ("gsplat first call incl. JIT build (s)", f"{t_build:.1f}"),
        ("gsplat forward (ms)", f"{1000 * timed('gsplat', False):.2f}"),
        ("pure-torch forward (ms)", f"{1000 * timed('torch', False):.2f}"),
        ("gsplat forward+backward (ms)", f"{1000 * timed('gsplat', True):.2f}"),
        ("pure-torch forward+backward (ms)", f"{1000 * timed('torch', True):.2f}"),
    ]
    head = f"{torch.cuda.get_device_name()}: {n} Gaussians ({int((ref_alpha > 0).sum())} covered px), {width}x{height}"
    return "\n".join([head, "", "| quantity | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows_]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="smaller CPU cases")
    args = parser.parse_args()
    if args.device == "cuda":
        print(gpu_comparison())
        return
    from cvd_scene.bench import format_table, machine_description

    print(f"Machine: {machine_description()}\n")
    print(format_table(rows(quick=args.quick)))


if __name__ == "__main__":
    main()
