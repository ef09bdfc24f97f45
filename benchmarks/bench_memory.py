"""Peak memory of a sampling call per memory mode: the pipeline's estimator against measured process memory (CPU,
small models, each case in a fresh process), then the estimator's table at SD1.5 size.

Measured: the resident memory one ``CVDPipeline`` call adds to a process that already holds the model (peak
``ru_maxrss`` minus the resident size before the call), one denoising step, random weights, fp32 on the CPU.
Estimated: :func:`cvd.pipeline.estimate_peak_memory` for the same call (activations, bias and, on the CPU, the
call's fixed overhead; the weights are already in the process before the call in both). The SD1.5 table: fp16,
CUDA device type (no attention scores materialised), 16 frames, weights counted on the meta device.

    .venv/bin/python benchmarks/bench_memory.py            # both parts (about a minute on 2 CPU cores)
    .venv/bin/python benchmarks/bench_memory.py --quick    # fewer measured cases
    .venv/bin/python benchmarks/bench_memory.py --measure '{"config": "tiny", "videos": 2, "frames": 8, "size": 128}'
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
    pipe("a room", c2w, K, num_inference_steps=1, height=size, width=size, seed=0, pairing="partition",
         output_type="pt" if decode else "latent")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", default=None, help="measure one case in this process (JSON spec) and print JSON")
    p.add_argument("--quick", action="store_true", help="two measured cases")
    p.add_argument("--no-sd15", action="store_true", help="skip the SD1.5 estimate table")
    args = p.parse_args(argv)
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
