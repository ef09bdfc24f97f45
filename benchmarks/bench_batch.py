"""Throughput of ``cvd-scene batch`` against the same scenes run one after another with ``cvd-scene run``.

Eight small scenes (four prompts, two seeds each; the demo preset at 2 videos x 6 frames of 96², a 60-iteration
fit, PLY export) on this machine: sequentially, each through the ordinary ``run`` command in this process, then as
one batch on a local Ray with as many CPUs as the machine has. Both arms do the same work from empty folders; the
gain is scenes per hour of the batch over the sequential runs, measured in the same run. Also the share of each
stage in the batch's summed stage time.

    .venv/bin/python benchmarks/bench_batch.py            # 8 scenes, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_batch.py --quick    # 4 scenes
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

PROMPTS = ("a cosy room with a red sofa", "a wooden table with fruit", "a courtyard with trees", "a blue room")
SETTINGS = [
    "plan.num_videos=2",
    "plan.num_frames=6",
    "plan.width=96",
    "plan.height=96",
    "generate.samples_per_pixel=2",
    "register.fallback=planned",
    "fit.iterations=60",
    "fit.eval_every_k=3",
    "export.formats=[ply]",
]


def rows(quick: bool = False) -> list:
    from cvd_scene.batch import Job, assign_slugs, run_batch
    from cvd_scene.bench import BenchRow
    from cvd_scene.cli import main as cli
    from cvd_scene.config import parse_overrides

    n = 4 if quick else 8
    jobs = assign_slugs([Job(prompt=PROMPTS[i % len(PROMPTS)], seed=i // len(PROMPTS)) for i in range(n)])
    root = Path(tempfile.mkdtemp(prefix="cvd-scene-bench-batch-"))
    try:
        t0 = time.perf_counter()
        for job in jobs:
            code = cli(["run", str(root / "seq" / job.slug), "--preset", "demo", "--quiet", f"seed={job.seed}",
                        f"prompt={job.prompt}", *SETTINGS])  # fmt: skip
            if code != 0:
                raise RuntimeError(f"sequential run of {job.prompt!r} failed")
        seq_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        doc = run_batch(jobs, root / "batch", parse_overrides(SETTINGS), num_cpus=os.cpu_count(), progress=False)
        batch_s = time.perf_counter() - t0
        if doc["counts"]["finished"] != n:
            raise RuntimeError(f"batch finished {doc['counts']['finished']}/{n} jobs")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    totals: dict[str, float] = {}
    for job in doc["jobs"]:
        for stage, r in job["stages"].items():
            totals[stage] = totals.get(stage, 0.0) + r.get("seconds", 0.0)
    all_s = sum(totals.values())
    case = f"{n} scenes (2 x 6 frames at 96², 60-iteration fit), {os.cpu_count()} CPUs"
    out = [
        BenchRow("batch", case, "scenes/hour", 3600 * n / batch_s, "sequential cvd-scene run", 3600 * n / seq_s,
                 lower_is_better=False),
        BenchRow("batch", case, "wall time (s), Ray start included", batch_s, "sequential cvd-scene run", seq_s),
    ]
    for stage, s in totals.items():
        out.append(
            BenchRow("batch", f"{stage}: share of summed stage time", "share", s / all_s, "all stages", 1.0,
                     lower_is_better=False)
        )
    return out


def main() -> None:
    from cvd_scene.bench import format_table, machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 scenes instead of 8")
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    print(format_table(rows(quick=args.quick)))


if __name__ == "__main__":
    main()
