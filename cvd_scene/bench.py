"""``cvd-scene bench``: run the benchmarks in ``benchmarks/`` and print one table.

Contract of a benchmark script ``benchmarks/bench_<name>.py``: a function ``rows(quick: bool) -> list[BenchRow]``
measuring each quantity together with its named baseline in the same run (these machines are noisy, so only
ratios within one run are compared), and a ``__main__`` that prints its own table. Must not import torch at
module level.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    """One measured quantity next to its baseline, measured in the same run."""

    benchmark: str
    """Benchmark name (the script's ``<name>``)."""
    case: str
    """What was measured (sizes, settings)."""
    metric: str
    """Quantity with its unit, e.g. ``time (s)``, ``frames/s``, ``memory (MiB)``."""
    ours: float
    """Our value."""
    baseline_name: str
    """What the baseline is."""
    baseline: float
    """The baseline's value, same run."""
    lower_is_better: bool = True
    """Whether a smaller value is better (times, memory) or a larger one (throughput, quality)."""

    @property
    def gain(self) -> float:
        """How many times better than the baseline (> 1 is better): baseline/ours for costs, ours/baseline else."""
        if self.lower_is_better:
            return self.baseline / self.ours if self.ours else float("inf")
        return self.ours / self.baseline if self.baseline else float("inf")


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in benchmarks_dir().glob("bench_*.py"))


def load(name: str):
    path = benchmarks_dir() / f"bench_{name}.py"
    if not path.is_file():
        raise ValueError(f"no benchmark {name!r}; available: {', '.join(available())}")
    spec = importlib.util.spec_from_file_location(f"cvd_scene_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "rows"):
        raise ValueError(f"{path} has no rows(quick) function")
    return module


def format_table(rows: list[BenchRow]) -> str:
    """A Markdown table (what the README carries)."""
    out = [
        "| benchmark | case | metric | ours | baseline | baseline value | gain |",
        "| --- | --- | --- | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r.benchmark} | {r.case} | {r.metric} | {r.ours:.4g} | {r.baseline_name} | {r.baseline:.4g} | "
            f"{r.gain:.2f}× |"
        )
    return "\n".join(out)


def machine_description() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def run_benchmarks(names: list[str] | None = None, quick: bool = False) -> list[BenchRow]:
    """Run the named benchmarks (all when None) and return their rows."""
    rows: list[BenchRow] = []
    for name in names or available():
        module = load(name)
        t0 = time.perf_counter()
        log.info("benchmark %s ...", name)
        got = module.rows(quick=quick)
        rows.extend(r if isinstance(r, BenchRow) else BenchRow(**r) for r in got)
        log.info("benchmark %s: %.1f s", name, time.perf_counter() - t0)
    return rows


def save_rows(rows: list[BenchRow], path: Path) -> None:
    path.write_text(json.dumps({"machine": machine_description(), "rows": [asdict(r) for r in rows]}, indent=1))
