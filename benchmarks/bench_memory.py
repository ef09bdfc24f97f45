"""Peak memory of a sampling call per memory mode: the pipeline's estimator against measured process memory (CPU,
small models, each case in a fresh process), then the estimator's table at SD1.5 size.

Measured: the resident memory one ``CVDPipeline`` call adds to a process that already holds the model (the peak
resident size during the call, ``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus the resident
size before the call; ``ru_maxrss`` where the peak cannot be reset), one denoising step, random weights, fp32 on
the CPU.
Estimated: :func:`cvd.pipeline.estimate_peak_memory` for the same call (activations, bias and, on the CPU, the
call's fixed overhead; the weights are already in the process before the call in both). The SD1.5 table: fp16,
CUDA device type (no attention scores materialised), 16 frames, weights counted on the meta device.

    .venv/bin/python benchmarks/bench_memory.py            # both parts (about a minute on 2 CPU cores)
    .venv/bin/python benchmarks/bench_memory.py --quick    # fewer measured cases
    .venv/bin/python benchmarks/bench_memory.py --measure '{"config": "tiny", "videos": 2, "frames": 8, "size": 128}'
    python benchmarks/bench_memory.py --device cuda     # GPU: each mode measured (allocator peak) at SD1.5 size

On a GPU (``--device cuda``): an SD1.5-size model with random weights in fp16, one sampling call of 2 steps per
memory mode and case, the allocator's peak (weights included) next to the estimate, and the frame-0 line draw's
cost (``per-call``, the release's, against ``per-pair``) on the same calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2.0**20
MEASURED = [  # (config, videos, frames, size, decode)
    ("tiny", 2, 8, 64, False),
    ("tiny", 2, 8, 192, False),
    ("tiny", 4, 8, 128, False),
    ("tiny", 4, 8, 192, False),
    ("tiny", 2, 8, 256, True),
]


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident size (Linux: ``5`` into ``/proc/self/clear_refs``); False where not
    possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """Peak resident size since the last reset (``VmHWM`` of ``/proc/self/status``), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise OSError("no VmHWM in /proc/self/status")


def measure(spec: dict) -> dict:
    """One sampling call in this process: what it adds to the resident memory, and the estimate (MiB)."""
    import gc
    import resource

    import torch

    from cvd.model import CVDModel
    from cvd.model_config import load_model_config
    from cvd.pipeline import CVDPipeline

    torch.set_num_threads(1)
    name = spec["config"]
    cfg = load_model_config(ROOT / "configs" / "model" / f"{name}.yaml" if "/" not in name else name)
    pipe = CVDPipeline.from_model(CVDModel.from_config(cfg, seed=0).eval())
    pipe.set_progress_bar_config(disable=True)
    v, f, size = spec["videos"], spec["frames"], spec["size"]
    K = torch.tensor([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2], [0, 0, 1.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(v, f, 1, 1)
    for i in range(v):
        c2w[i, :, 0, 3] = torch.linspace(0, 0.3, f) * (1 if i % 2 else -1)
        c2w[i, :, 2, 3] = torch.linspace(0, 0.1 * (i + 1), f)
    decode = bool(spec.get("decode", False))
    gc.collect()
    with open("/proc/self/statm") as fh:
        before = int(fh.read().split()[1]) * resource.getpagesize() / MIB
    reset = _reset_peak_rss()  # else the peak could be one from before the call (building the model)
    pipe("a room", c2w, K, num_inference_steps=1, height=size, width=size, seed=0, pairing="partition",
         output_type="pt" if decode else "latent")
    peak = _peak_rss_mib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    est = pipe.estimate_peak_memory(num_videos=v, num_frames=f, height=size, width=size, decode=decode,
                                    device_type="cpu")
    estimated = max(est.activations + est.bias, est.decode - est.weights if decode else 0) / MIB
    return {"measured_mib": peak - before, "estimated_mib": estimated, "rows": est.rows_per_call}


def measure_in_subprocess(spec: dict) -> dict:
    """:func:`measure` in a fresh interpreter (peak resident memory only grows within a process)."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", json.dumps(spec)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def sd15_table(sizes=(256, 512), videos=(2, 4, 6, 8), frames: int = 16) -> list[str]:
    import torch

    from cvd.model import _build_empty
    from cvd.model_config import load_model_config
    from cvd.pipeline import MEMORY_MODES, estimate_peak_memory, model_weight_bytes

    cfg = load_model_config(ROOT / "configs" / "model" / "sd15.yaml")
    parts = _build_empty(cfg, torch.float16)
    total, largest = model_weight_bytes(parts)
    lines = [
        "weights fp16: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in total.items()),
        "",
        "| image | videos | " + " | ".join(MEMORY_MODES) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in MEMORY_MODES) + " |",
    ]
    for size in sizes:
        for v in videos:
            cells = []
            for mode in MEMORY_MODES:
                e = estimate_peak_memory(cfg, total, largest, num_videos=v, num_frames=frames, height=size, width=size,
                                         mode=mode, dtype=torch.float16, device_type="cuda")
                cells.append(f"{e.gib():.1f} GiB ({e.rows_per_call} rows)")
            lines.append(f"| {size}² | {v} | " + " | ".join(cells) + " |")
    return lines


def gpu_modes(cases=((256, 2), (256, 4), (512, 2)), frames: int = 16, steps: int = 2) -> list[str]:
    """Each memory mode measured on CUDA at SD1.5 size (random fp16 weights): allocator peak vs estimate."""
    import dataclasses
    import time

    import torch

    from cvd.model import CVDModel, build_tiny_tokenizer
    from cvd.model_config import load_model_config
    from cvd.pipeline import MEMORY_MODES, CVDPipeline

    cfg = load_model_config(ROOT / "configs" / "model" / "sd15.yaml")
    cfg = dataclasses.replace(cfg, epipolar_bias=dataclasses.replace(cfg.epipolar_bias, convention="release"))
    model = CVDModel.from_config(cfg, device="cpu", dtype=torch.float16, tokenizer=build_tiny_tokenizer(77)).eval()
    pipe = CVDPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    head = (f"card: {torch.cuda.get_device_name(0)}   torch {torch.__version__}   sd15 fp16, random weights, "
            f"{frames} frames, {steps} steps, guided")
    lines = [head, "", "| mode | image | videos | rows per call | measured peak | estimated peak | est / meas | call (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def run(size: int, v: int, **kw):
        K = torch.tensor([[0.84 * size, 0, size / 2], [0, 0.84 * size, size / 2], [0, 0, 1.0]], dtype=torch.float64)
        c2w = torch.eye(4, dtype=torch.float64).repeat(v, frames, 1, 1)
        for i in range(v):
            c2w[i, :, 0, 3] = torch.linspace(0, 0.4, frames) * (1 if i % 2 else -1)
            c2w[i, :, 2, 3] = torch.linspace(0, 0.2 * (i + 1), frames)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = pipe("a room", c2w, K, num_inference_steps=steps, height=size, width=size, seed=0, output_type="pt",
                   **kw)
        torch.cuda.synchronize()
        return out, time.perf_counter() - t, torch.cuda.max_memory_allocated()

    for mode in MEMORY_MODES:
        pipe.set_memory_mode(mode, device="cuda")
        for size, v in cases:
            out, secs, peak = run(size, v)
            est = pipe.estimate_peak_memory(num_videos=v, num_frames=frames, height=size, width=size)
            lines.append(f"| {mode} | {size}² | {v} | {out.stats.max_rows_per_call} | {peak / 2**30:.2f} GiB | "
                         f"{est.gib():.2f} GiB | {est.peak / peak:.2f} | {secs:.2f} |")
    pipe.set_memory_mode("fast", device="cuda")
    lines += ["", "| frame-0 line draw (fast, 256², 2 videos) | call (s) |", "| --- | ---: |"]
    for draw in ("per-pair", "per-call"):
        bias = dataclasses.replace(cfg.epipolar_bias, line_draw=draw)
        pipe.unet.config = dataclasses.replace(cfg, epipolar_bias=bias)
        run(256, 2)  # warm-up
        _, secs, _ = run(256, 2)
        lines.append(f"| {draw} | {secs:.2f} |")
    pipe.unet.config = cfg
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", default=None, help="measure one case in this process (JSON spec) and print JSON")
    p.add_argument("--quick", action="store_true", help="two measured cases")
    p.add_argument("--no-sd15", action="store_true", help="skip the SD1.5 estimate table")
    p.add_argument("--device", default="cpu", help="cpu (estimator vs process memory) or cuda (modes measured)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        print("\n".join(gpu_modes()))
        return
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    cases = MEASURED[1:3] if args.quick else MEASURED
    print("| model | videos x frames | image | decode | rows per call | measured MiB | estimated MiB | est / meas |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name, v, f, size, decode in cases:
        r = measure_in_subprocess({"config": name, "videos": v, "frames": f, "size": size, "decode": decode})
        print(f"| {name} | {v} x {f} | {size}² | {'yes' if decode else 'no'} | {r['rows']} | {r['measured_mib']:.0f} | "
              f"{r['estimated_mib']:.0f} | {r['estimated_mib'] / r['measured_mib']:.2f} |")
    if not args.no_sd15:
        print()
        print("\n".join(sd15_table()))


if __name__ == "__main__":
    main()
