"""Registration cost and accuracy: structured frame pairs (ours) against exhaustive matching (the baseline), in both
modes (known-poses, free), on a reference-renderer run of 6 videos x 16 frames at 256x256 (the demo preset's
look-around with six videos), all measured in the same run.

For every (mode, pairing) the table gives wall time (total and matching alone), registered frames, and the median
rotation / camera-position / translation-direction errors against the plan; the rows compare structured with
exhaustive pairing as ratios, and free with known-poses. Frames are rendered once before timing.

    .venv/bin/python benchmarks/bench_register.py            # 6 x 16 at 256x256
    .venv/bin/python benchmarks/bench_register.py --quick    # 3 x 6 at 128x128
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

FULL = {"plan": {"num_videos": 6, "num_frames": 16, "width": 256, "height": 256}}
QUICK = {"plan": {"num_videos": 3, "num_frames": 6, "width": 128, "height": 128, "spread_deg": 120.0}}


def make_run(run_dir: Path, overrides: dict):
    """Plan + generate (reference renderer) with the demo preset and ``overrides``; returns the run config."""
    from cvd_scene.config import load_config
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runconfig import RunConfig

    config = load_config(RunConfig, "run", "demo", overrides)
    run_stages(run_dir, config, ["plan", "generate"])
    return config


def measure(run_dir: Path, config, mode: str, pairing: str) -> dict:
    """Register the run's frames once and return the report's headline numbers."""
    from cvd_scene.camera_io import read_cameras_json
    from cvd_scene.plan.covisibility import read_covisibility
    from cvd_scene.plan.overlap import frame_overlap, planned_depth
    from cvd_scene.register.config import RegisterConfig
    from cvd_scene.register.registration import register_frames
    from cvd_scene.runfolder import RunLayout

    run = RunLayout(run_dir)
    plan = read_cameras_json(run.cameras)
    cov = read_covisibility(run.covisibility, plan)
    cfg = RegisterConfig(mode=mode, pairing=pairing)
    work = run_dir / f"work-{mode}-{pairing}"
    t0 = time.perf_counter()
    overlap = frame_overlap(plan, planned_depth(run_dir, plan)) if pairing == "structured" else None
    reg = register_frames(run.frames, plan, work, cfg, cov, overlap, seed=config.seed)
    seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    r = reg.report
    return {
        "mode": mode,
        "pairing": pairing,
        "seconds": seconds,
        "matching_s": r["timings_s"]["matching"],
        "pairs": r["pairs"]["matched"],
        "registered": r["registered"],
        "total": r["total"],
        "rotation_deg": r["rotation_error_deg"]["median"],
        "position_pct": 100 * (r["position_error_fraction_of_extent"]["median"] or float("nan")),
        "tdir_deg": r["translation_direction_error_deg"]["median"],
        "mapper": (r.get("free_mapping") or {}).get("mapper", "-"),
    }


def measure_all(quick: bool) -> tuple[str, list[dict]]:
    root = Path(tempfile.mkdtemp(prefix="bench-register-"))
    try:
        overrides = QUICK if quick else FULL
        p = overrides["plan"]
        case = f"{p['num_videos']}x{p['num_frames']} at {p['width']}²"
        config = make_run(root / "run", overrides)
        results = [
            measure(root / "run", config, mode, pairing)
            for mode in ("known-poses", "free")
            for pairing in ("structured", "exhaustive")
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return case, results


def table(results: list[dict]) -> str:
    lines = [
        (
            "| mode | pairing | pairs | time (s) | matching (s) | registered | rotation err. (°) "
            "| position err. (% extent) | translation dir. err. (°) | mapper |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['pairing']} | {r['pairs']} | {r['seconds']:.1f} | {r['matching_s']:.1f} | "
            f"{r['registered']}/{r['total']} | {r['rotation_deg']:.3f} | {r['position_pct']:.2f} | {r['tdir_deg']:.2f} | "
            f"{r['mapper']} |"
        )
    return "\n".join(lines)


def to_rows(case: str, results: list[dict]) -> list:
    from cvd_scene.bench import BenchRow

    by = {(r["mode"], r["pairing"]): r for r in results}
    out = []
    for mode in ("known-poses", "free"):
        s, e = by[(mode, "structured")], by[(mode, "exhaustive")]
        c = f"{case}, {mode}, structured pairs ({s['pairs']}) vs exhaustive ({e['pairs']})"
        out += [
            BenchRow("register", c, "time (s)", s["seconds"], "exhaustive matching", e["seconds"]),
            BenchRow(
                "register", c, "matching time (s)", s["matching_s"], "exhaustive matching", e["matching_s"]
            ),
            BenchRow(
                "register",
                c,
                "registered frames",
                s["registered"],
                "exhaustive matching",
                e["registered"],
                False,
            ),
            BenchRow(
                "register",
                c,
                "rotation error median (°)",
                s["rotation_deg"],
                "exhaustive matching",
                e["rotation_deg"],
            ),
            BenchRow(
                "register",
                c,
                "position error median (% extent)",
                s["position_pct"],
                "exhaustive matching",
                e["position_pct"],
            ),
        ]
    k, f = by[("known-poses", "structured")], by[("free", "structured")]
    c = f"{case}, structured pairs, free vs known-poses"
    out += [
        BenchRow("register", c, "time (s)", f["seconds"], "known-poses", k["seconds"]),
        BenchRow(
            "register", c, "rotation error median (°)", f["rotation_deg"], "known-poses", k["rotation_deg"]
        ),
    ]
    return out


def rows(quick: bool = False) -> list:
    case, results = measure_all(quick)
    return to_rows(case, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 videos x 6 frames at 128x128")
    args = parser.parse_args()
    from cvd_scene.bench import format_table, machine_description

    case, results = measure_all(args.quick)
    print(f"Machine: {machine_description()}\nRun: {case}, reference renderer, demo look-around\n")
    print(table(results))
    print()
    print(format_table(to_rows(case, results)))


if __name__ == "__main__":
    main()
