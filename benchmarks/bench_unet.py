"""One guided denoising call of a pair — rows ``[uncond_A, cond_A, uncond_B, cond_B]`` x F frames — through the
CVD UNet (motion modules, pose injection, 20 CVSMs with the epipolar bias at SD1.5 widths) against the plain
diffusers AnimateDiff UNet (``UNetMotionModel``, same shapes, dtype and SDPA attention) in the same run; plus the
memory of our epipolar-bias storage (one fp16 tensor per level per pairing, shared by every head and module)
against the released code's per-module, per-head fp32 copies.

CPU (the tiny model):      .venv/bin/python benchmarks/bench_unet.py
GPU (real shapes, random weights, nothing downloaded; needs only torch, diffusers, pyyaml and this repo's cvd/):
    python benchmarks/bench_unet.py --model sd15 --device cuda --dtype float16 --size 256 --frames 16

Random weights: the timing does not depend on them. The CVSMs' zero-initialised output projections are
randomised so no work can be skipped. Contract of ``cvd-scene bench``: ``rows(quick)`` returns the table rows;
torch is imported inside the functions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE = "plain diffusers AnimateDiff UNet (same run)"


def _config(name: str):
    from cvd.model_config import load_model_config

    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "configs" / "model" / f"{name}.yaml"
    return load_model_config(path)


def _cameras(frames: int, size: int):
    """Two videos from one start, one moving right, one forward-and-left (float64, model units)."""
    import torch

    K = torch.tensor([[0.84 * size, 0, size / 2], [0, 0.84 * size, size / 2], [0, 0, 1]], dtype=torch.float64)
    K = K.expand(2, frames, 3, 3).clone()
    c2w = torch.eye(4, dtype=torch.float64).expand(2, frames, 4, 4).clone()
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    c2w[0, :, 0, 3] = 0.8 * t
    c2w[1, :, 0, 3] = -0.3 * t
    c2w[1, :, 2, 3] = 0.8 * t
    return K, c2w


def _timer(device):
    import torch

    if device.type == "cuda":
        def run(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn) -> float:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    return run


def measure(model: str = "tiny", device: str = "cpu", dtype: str = "float32", frames: int | None = None,
            size: int | None = None, repeats: int = 5, warmup: int = 2, bias_mode: str | None = None) -> dict:
    """Build both UNets, run the guided pair call alternately, return times, memory and bias sizes."""
    import torch

    from cvd.context import epipolar_biases, guided_rows
    from cvd.geometry import EpipolarBiasConfig, plucker_embedding
    from cvd.pose_encoder import CameraPoseEncoder
    from cvd.unet import CVDUNet, build_motion_unet

    cfg = _config(model)
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    frames = frames or cfg.num_frames
    size = size or cfg.height_px
    torch.manual_seed(0)
    with torch.device(dev):
        ours = CVDUNet(cfg)
        for _, cvsm in ours.cvsms():  # a trained CVSM has a non-zero output projection
            torch.nn.init.normal_(cvsm.epi_transformer.proj_out.weight, std=1e-3)
        for p in ours._processors:
            torch.nn.init.normal_(p.qkv_merge.weight, std=1e-3)
        pose_encoder = CameraPoseEncoder(cfg)
        plain = build_motion_unet(cfg)
    # nn.Module.to directly: diffusers' override warns whenever a dtype argument is present.
    ours, plain, pose_encoder = (torch.nn.Module.to(m, dtype=dt).eval().requires_grad_(False) for m in (ours, plain, pose_encoder))

    K, c2w = _cameras(frames, size)
    latent = size // cfg.vae_scale_factor
    grids = ours.level_grids((latent, latent))
    bias_cfg = EpipolarBiasConfig(mode=bias_mode or cfg.epipolar_bias.mode)
    rv, rb = guided_rows(2)
    with torch.no_grad():
        t0 = time.perf_counter()
        features = pose_encoder(plucker_embedding(K.to(dev), c2w.to(dev), size, size, dtype=torch.float32))
        bias = epipolar_biases(K.to(dev), c2w.to(dev), [1, 0], image_hw=(size, size), grids=grids, config=bias_cfg,
                               generator=torch.Generator(dev).manual_seed(0))
        ctx = ours.make_context(row_video=rv, row_branch=rb, partner_video=[1, 0], num_frames=frames, bias=bias,
                                pose_features=features)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        prep_ms = (time.perf_counter() - t0) * 1e3
    g = torch.Generator(dev).manual_seed(0)
    sample = torch.randn(4, cfg.unet.in_channels, frames, latent, latent, generator=g, device=dev, dtype=dt)
    timestep = torch.full((4,), 500, device=dev, dtype=torch.long)
    text = torch.randn(4, 77, cfg.unet.cross_attention_dim, generator=g, device=dev, dtype=dt)
    text_frames = text.repeat_interleave(frames, dim=0)

    def call_ours():
        return ours(sample, timestep, text, ctx)

    # The release's frame-0 redraw (line_draw="per-call"): the 4 rows' frame-0 entries (identical cameras) get
    # a new angle in each cross-view attention.
    from dataclasses import replace

    from cvd.context import LineRedraw

    redraw = LineRedraw(
        rows=torch.arange(4, device=dev) * frames, H=torch.eye(3, dtype=torch.float64, device=dev).expand(4, 3, 3),
        grids=tuple(grids), image_hw=(size, size), config=replace(bias_cfg, line_draw="per-call"),
        generator=torch.Generator().manual_seed(0),
    )
    ctx_redraw = replace(ctx, biases=tuple(None if b is None else b.clone() for b in ctx.biases), redraw=redraw)

    def call_redraw():
        return ours(sample, timestep, text, ctx_redraw)

    def call_plain():
        return plain(sample, timestep, text_frames, return_dict=False)[0]

    timer = _timer(dev)
    times = {"ours": [], "plain": [], "redraw": []}
    peak = {}
    with torch.no_grad():
        for _ in range(warmup):
            call_ours()
            call_plain()
            call_redraw()
        for _ in range(repeats):  # alternate so drift hits all three
            times["ours"].append(timer(call_ours))
            times["plain"].append(timer(call_plain))
            times["redraw"].append(timer(call_redraw))
        syncs = "not checked (CPU)"
        if dev.type == "cuda":
            for name, fn in (("ours", call_ours), ("plain", call_plain)):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                peak[name] = torch.cuda.max_memory_allocated() - before
            torch.cuda.set_sync_debug_mode("error")
            try:
                call_ours()
                syncs = "none"
            except RuntimeError as e:
                syncs = f"host sync: {str(e).splitlines()[0]}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()

    def weight_bytes(m):
        return sum(p.numel() * p.element_size() for p in m.parameters())

    heads = cfg.cvsm.num_attention_heads
    rows = 4 * frames
    per_level_modules = [0] * cfg.num_levels
    for name, _ in ours.cvsms():
        kind, i = name.split(".")[0], int(name.split(".")[1])
        per_level_modules[i if kind == "down_blocks" else cfg.num_levels - 1 - i] += 1
    attn_per_module = cfg.cvsm.num_attentions
    # The release: every cross-view attention builds its own [B·F·heads, N, N] fp32 mask.
    release_each = [rows * heads * (h * w) ** 2 * 4 for h, w in grids]
    release_peak = max(release_each)
    release_per_call = sum(e * m * attn_per_module for e, m in zip(release_each, per_level_modules))
    pairing_bytes = sum(b.numel() * b.element_size() for b in bias if b is not None)
    return {
        "model": cfg.name, "device": str(dev), "card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "dtype": dtype, "frames": frames, "size": size, "bias_mode": bias_cfg.mode, "torch": torch.__version__,
        "ours_ms": statistics.median(times["ours"]), "plain_ms": statistics.median(times["plain"]),
        "ours_runs_ms": times["ours"], "plain_runs_ms": times["plain"],
        "redraw_ms": statistics.median(times["redraw"]), "redraw_runs_ms": times["redraw"],
        "ours_params": sum(p.numel() for p in ours.parameters()), "plain_params": sum(p.numel() for p in plain.parameters()),
        "ours_peak_bytes": peak.get("ours"), "plain_peak_bytes": peak.get("plain"),
        "ours_weight_bytes": weight_bytes(ours), "plain_weight_bytes": weight_bytes(plain),
        "context_bias_bytes": ctx.bias_bytes(), "pairing_bias_bytes": pairing_bytes,
        "release_bias_peak_bytes": release_peak, "release_bias_per_call_bytes": release_per_call,
        "prepare_once_ms": prep_ms, "host_syncs": syncs,
    }


def _cpu_name() -> str:
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def to_rows(r: dict) -> list[dict]:
    """The measurement as ``cvd-scene bench`` rows (ours next to its same-run baseline)."""
    case = f"{r['model']}, guided pair 4x{r['frames']} frames, {r['size']}², {r['dtype']}, {r['device']} ({r['card']})"

    def row(metric: str, ours: float, baseline_name: str, baseline: float) -> dict:
        return {"benchmark": "unet", "case": case, "metric": metric, "ours": ours, "baseline_name": baseline_name,
                "baseline": baseline}

    mib, gib = 2**20, 2**30
    out = [
        row("UNet call (ms)", r["ours_ms"], BASELINE, r["plain_ms"]),
        row("UNet call, frame-0 line redrawn per attention (ms)", r["redraw_ms"], "ours, cached bias", r["ours_ms"]),
        row("epipolar bias held (MiB)", r["context_bias_bytes"] / mib,
            "release: per-module, per-head fp32 mask (largest live)", r["release_bias_peak_bytes"] / mib),
        row("epipolar bias built per call (MiB)", 0.0, "release: every cross-view attention's per-head fp32 mask",
            r["release_bias_per_call_bytes"] / mib),
    ]
    if r["ours_peak_bytes"] is not None:
        out.append(row("peak memory incl. weights (GiB)", (r["ours_peak_bytes"] + r["ours_weight_bytes"]) / gib,
                       BASELINE, (r["plain_peak_bytes"] + r["plain_weight_bytes"]) / gib))
    return out


def rows(quick: bool = False) -> list[dict]:
    """``cvd-scene bench`` entry: the tiny model on the CPU."""
    return to_rows(measure("tiny", "cpu", "float32", repeats=3 if quick else 7, warmup=1 if quick else 2))


def report(r: dict) -> str:
    mib, gib = 2**20, 2**30
    lines = [
        (f"card: {r['card']}   torch {r['torch']}   model {r['model']}   {r['dtype']}   guided pair 4 x {r['frames']} "
        f"frames at {r['size']}²   bias mode {r['bias_mode']}"),
        "",
        "| | CVD UNet (ours) | plain AnimateDiff UNet | ratio |",
        "| --- | ---: | ---: | ---: |",
        (f"| parameters | {r['ours_params'] / 1e9:.3f} B | {r['plain_params'] / 1e9:.3f} B | "
        f"{r['ours_params'] / r['plain_params']:.2f}x |"),
        f"| one UNet call (median ms) | {r['ours_ms']:.1f} | {r['plain_ms']:.1f} | {r['ours_ms'] / r['plain_ms']:.2f}x |",
        (f"| one UNet call, frame-0 line redrawn in every attention (release's draw) | {r['redraw_ms']:.1f} | | "
         f"{r['redraw_ms'] / r['ours_ms']:.2f}x ours |"),
    ]
    if r["ours_peak_bytes"] is not None:
        ours_total = (r["ours_peak_bytes"] + r["ours_weight_bytes"]) / gib
        plain_total = (r["plain_peak_bytes"] + r["plain_weight_bytes"]) / gib
        lines.append(f"| peak memory incl. weights (GiB) | {ours_total:.2f} | {plain_total:.2f} | {ours_total / plain_total:.2f}x |")
        lines.append(f"| activations above weights (GiB) | {r['ours_peak_bytes'] / gib:.2f} | {r['plain_peak_bytes'] / gib:.2f} | |")
    lines += [
        "",
        "| epipolar bias storage | bytes | release / ours |",
        "| --- | ---: | ---: |",
        f"| ours: held by the context (all levels, per row, {r['dtype']}) | {r['context_bias_bytes'] / mib:.1f} MiB | |",
        f"| ours: built once per pairing (all levels, per video, fp16) | {r['pairing_bias_bytes'] / mib:.1f} MiB | |",
        (f"| release: one module's per-head fp32 mask (largest level, live) | {r['release_bias_peak_bytes'] / mib:.1f} MiB | "
        f"{r['release_bias_peak_bytes'] / r['context_bias_bytes']:.1f}x |"),
        (f"| release: all per-module, per-head fp32 masks of one call | {r['release_bias_per_call_bytes'] / mib:.1f} MiB | "
        f"{r['release_bias_per_call_bytes'] / r['context_bias_bytes']:.1f}x |"),
        "",
        (f"once per sample/pairing (pose features + bias + context): {r['prepare_once_ms']:.1f} ms; "
        f"host syncs inside our UNet call: {r['host_syncs']}"),
        (f"runs (ms): ours {', '.join(f'{t:.1f}' for t in r['ours_runs_ms'])}; "
        f"plain {', '.join(f'{t:.1f}' for t in r['plain_runs_ms'])}"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model config name in configs/model/ or a YAML path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the config's)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the config's)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per model (default 20 on CUDA, 7 on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bias-mode", default=None, choices=["soft", "binary", "none"])
    a = p.parse_args(argv)
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    repeats = a.repeats or (20 if a.device.startswith("cuda") else 7)
    r = measure(a.model, a.device, a.dtype, a.frames, a.size, repeats, a.warmup, a.bias_mode)
    print(report(r))


if __name__ == "__main__":
    main()
