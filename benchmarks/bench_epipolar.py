"""Epipolar attention bias: built once per UNet level in fp16 vs the release's per-module, per-head fp32 copies.

Case: one guided pair at 256² (UNet batch ``[uncond_A, cond_A, uncond_B, cond_B] x F`` frames), the four UNet
levels 32², 16², 8², 4². Ours: :func:`cvd.geometry.epipolar_bias_pyramid` once per call for the two directions
(A→B, B→A) x F frames, fp16, shared by both guidance branches, the 8 heads and every module of a level. Baseline,
measured in the same run: the released procedure re-implemented from its description (fp32 bias for every batch
row, built again in each of the 20 cross-view modules x 2 attentions, repeated per head before attention, plus
its NaN scan). Also the cost of the release's frame-0 redraw on top of ours (``line_draw="per-call"``): the
frame-0 rows of the 4 batch rows rebuilt in each of the 40 attentions with a new angle. Prints a Markdown table;
``rows(quick)`` feeds ``cvd-scene bench``.

    .venv/bin/python benchmarks/bench_epipolar.py                  # CPU
    .venv/bin/python benchmarks/bench_epipolar.py --device cuda    # GPU (peak memory measured by the allocator)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

IMAGE = 256
LEVELS = [(32, 32), (16, 16), (8, 8), (4, 4)]
# The 20 cross-view modules of SD1.5 by level: 2 after each down block, 3 after each up block; 2 attentions each.
MODULE_GRIDS = [g for g in LEVELS for _ in range(2)] + [g for g in reversed(LEVELS) for _ in range(3)]
ATTENTIONS_PER_MODULE = 2
HEADS = 8
MIB = 2.0**20


def _cameras(frames: int, device):
    """Two 'frames'-long trajectories from one common first camera, as relative poses (frame 0 = identity)."""
    import torch

    K = torch.tensor([[216.1, 0.0, 128.0], [0.0, 216.1, 128.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, frames, 1, 1)  # [2, F, 4, 4]
    for f in range(frames):
        yaw, pitch = math.radians(1.5 * f), math.radians(-1.0 * f)
        c, s = math.cos(yaw), math.sin(yaw)
        c2w[0, f, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
        c2w[0, f, :3, 3] = torch.tensor([0.06 * f, 0.0, 0.01 * f])
        c, s = math.cos(pitch), math.sin(pitch)
        c2w[1, f, :3, :3] = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
        c2w[1, f, :3, 3] = torch.tensor([-0.02 * f, 0.0, 0.06 * f])
    return K.to(device), c2w.to(device)


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _ours(K, c2w, device):
    """The bias of one guided pair call: [2 directions, F] pairs per level, fp16."""
    from cvd.geometry import epipolar_bias_pyramid

    # Queries of A attend to B and queries of B attend to A: stack both directions as a leading dim.
    world_from_q = c2w  # [2, F, 4, 4]
    world_from_k = c2w.flip(0)  # [2, F, 4, 4]
    return epipolar_bias_pyramid(K, world_from_q, K, world_from_k, (IMAGE, IMAGE), LEVELS)


def _release_style_attention(F_rows, first_rows, feat: int, generator):
    """One attention's bias the released way: fp32 for every batch row, then repeated per head.

    F_rows: [B, 3, 3] float32 (query -> key pixel lines on the integer-centre grid); first_rows: [B] bool rows of
    frame 0, which use a random-slope line through the query itself.
    """
    import torch

    B = F_rows.shape[0]
    step = IMAGE / feat
    idx = torch.arange(feat, dtype=torch.float32, device=F_rows.device) * step + (step - 1) / 2
    y, x = torch.meshgrid(idx, idx, indexing="ij")
    coords = torch.stack([x, y, torch.ones_like(x)], -1).reshape(1, -1, 3).expand(B, -1, -1)  # [B, Q, 3]
    lines = torch.bmm(coords, F_rows.transpose(1, 2))  # [B, Q, 3]
    angle = torch.rand(B, generator=generator, device=generator.device).to(F_rows.device) * math.pi
    a, b = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    pseudo = torch.stack([a.expand(-1, coords.shape[1]), b.expand(-1, coords.shape[1]),
                          -(a * coords[..., 0] + b * coords[..., 1])], -1)
    lines = torch.where(first_rows[:, None, None], pseudo, lines)
    ab = lines[..., :2].norm(dim=-1, keepdim=True)  # [B, Q, 1]
    d = torch.bmm(lines, coords.transpose(1, 2)).abs() / (ab + 1e-6)  # [B, Q, K]
    band = (3.0 / (IMAGE // 2) * d.reshape(B, -1).amax(-1))[:, None, None]
    bias = -(d - band).clamp(min=0) * (3.0 / (band + 1e-6))  # [B, Q, K] fp32
    del d
    has_nan = bool(torch.isnan(bias).any())  # the release scans every mask (a host sync)
    torch.nan_to_num(bias, nan=0.0, posinf=0.0, neginf=0.0, out=bias)
    per_head = bias.repeat_interleave(HEADS, dim=0)  # [B * heads, Q, K] fp32, what attention receives
    return per_head, has_nan


def _release_call(K, c2w, device, generator):
    """All 40 attentions of one UNet call; returns (bytes of each per-head bias, peak single bias bytes)."""
    import torch

    from cvd.geometry import fundamental_matrix

    frames = c2w.shape[1]
    F_ab = fundamental_matrix(K, c2w[0], K, c2w[1]).float()  # [F, 3, 3]
    F_ba = F_ab.transpose(-1, -2)
    # Batch rows [uncond_A, cond_A, uncond_B, cond_B] x F: the release builds one bias per row.
    F_rows = torch.cat([F_ab, F_ab, F_ba, F_ba])  # [4F, 3, 3]
    first_rows = (torch.arange(4 * frames, device=device) % frames) == 0
    total = 0
    peak = 0
    for grid in MODULE_GRIDS:
        for _ in range(ATTENTIONS_PER_MODULE):
            per_head, _ = _release_style_attention(F_rows, first_rows, grid[0], generator)
            nbytes = per_head.numel() * per_head.element_size()
            total += nbytes
            peak = max(peak, nbytes)
            del per_head
    return total, peak


def _redraw_call(device, generator):
    """The per-call redraw of one UNet call: every attention rebuilds the frame-0 rows (one per batch row, 4
    rows) of its level with one new angle (:func:`cvd.geometry.pseudo_line_bias`); returns the bytes written."""
    import torch

    from cvd.geometry import EpipolarBiasConfig, pseudo_line_bias

    cfg = EpipolarBiasConfig(convention="release", line_draw="per-call")
    H = torch.eye(3, dtype=torch.float64, device=device).expand(4, 3, 3)  # identical cameras at frame 0
    total = 0
    for grid in MODULE_GRIDS:
        for _ in range(ATTENTIONS_PER_MODULE):
            angle = float(torch.rand((), generator=generator, dtype=torch.float64)) * math.pi
            rows = pseudo_line_bias(H, grid, (IMAGE, IMAGE), angle, cfg)  # [4, N, N] fp16
            total += rows.numel() * rows.element_size()
    return total


def _time(fn, device, repeats: int) -> tuple[float, object]:
    out = None
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(device: str = "cpu", frames: int = 16, repeats: int = 3) -> dict:
    import torch

    device = torch.device(device)
    K, c2w = _cameras(frames, device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    cuda = device.type == "cuda"

    _ours(K, c2w, device)  # warm-up
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    ours_s, levels = _time(lambda: _ours(K, c2w, device), device, 5)
    ours_bytes = sum(x.numel() * x.element_size() for x in levels)
    ours_peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    del levels
    _redraw_call(device, generator)  # warm-up
    redraw_s, redraw_bytes = _time(lambda: _redraw_call(device, generator), device, 5)

    _release_call(K, c2w[:, :2], device, generator)  # warm-up (small)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rel_s, (rel_total, rel_single) = _time(lambda: _release_call(K, c2w, device, generator), device, repeats)
    rel_peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "frames": frames,
        "ours_s": ours_s,
        "ours_mib": ours_bytes / MIB,
        "ours_peak_mib": None if ours_peak is None else ours_peak / MIB,
        "redraw_s": redraw_s,
        "redraw_mib": redraw_bytes / MIB,
        "release_s": rel_s,
        "release_total_mib": rel_total / MIB,
        "release_single_mib": rel_single / MIB,
        "release_peak_mib": None if rel_peak is None else rel_peak / MIB,
    }


def rows(quick: bool = False) -> list:
    """Rows for ``cvd-scene bench`` (CPU; ``quick`` uses 4 frames instead of 16)."""
    from cvd_scene.bench import BenchRow

    m = measure("cpu", frames=4 if quick else 16, repeats=1)
    case = f"guided pair, {IMAGE}², {m['frames']} frames, 4 levels, {m['device']}"
    row = {"benchmark": "epipolar", "case": case}
    return [
        BenchRow(**row, metric="bias memory held (MiB)", ours=m["ours_mib"],
                 baseline_name="release: one attention's fp32 per-head bias (32² level)",
                 baseline=m["release_single_mib"]),
        BenchRow(**row, metric="bias bytes written per UNet call (MiB)", ours=m["ours_mib"],
                 baseline_name="release: 20 modules x 2 attentions, fp32, per head", baseline=m["release_total_mib"]),
        BenchRow(**row, metric="bias build time per UNet call (s)", ours=m["ours_s"],
                 baseline_name="release: rebuilt in every attention", baseline=m["release_s"]),
        BenchRow(**row, metric="frame-0 redraw per UNet call, 40 attentions (s)", ours=m["redraw_s"],
                 baseline_name="ours: whole bias once per pairing", baseline=m["ours_s"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of the release-style build (median; ours: 5)")
    args = parser.parse_args()
    m = measure(args.device, frames=args.frames, repeats=args.repeats)
    print(f"Epipolar bias for one guided pair call at {IMAGE}², {m['frames']} frames, levels "
          f"{', '.join(f'{h}x{w}' for h, w in LEVELS)}; device: {m['device']}\n")
    print("| quantity | ours (fp16, once per level) | release (fp32, per module, per head) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| bias memory held (MiB) | {m['ours_mib']:.1f} | {m['release_single_mib']:.1f} (one attention, 32²) | "
          f"{m['release_single_mib'] / m['ours_mib']:.1f}x |")
    print(f"| bias bytes written per UNet call (MiB) | {m['ours_mib']:.1f} | {m['release_total_mib']:.1f} | "
          f"{m['release_total_mib'] / m['ours_mib']:.1f}x |")
    if m["ours_peak_mib"] is not None:
        print(f"| allocator peak while building (MiB) | {m['ours_peak_mib']:.1f} | {m['release_peak_mib']:.1f} | "
              f"{m['release_peak_mib'] / m['ours_peak_mib']:.1f}x |")
    print(f"| build time per UNet call (ms) | {1e3 * m['ours_s']:.1f} | {1e3 * m['release_s']:.1f} | "
          f"{m['release_s'] / m['ours_s']:.1f}x |")
    print(f"\nFrame-0 redraw per UNet call (line_draw=per-call: 4 rows x 40 attentions, fp16): "
          f"{1e3 * m['redraw_s']:.1f} ms, {m['redraw_mib']:.1f} MiB written; ours builds the whole bias once per "
          f"pairing ({1e3 * m['ours_s']:.1f} ms), so the redraw costs {m['redraw_s'] / m['ours_s']:.2f}x that build at "
          "every UNet call.")


if __name__ == "__main__":
    main()
