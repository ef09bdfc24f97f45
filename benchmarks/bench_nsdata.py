"""Seconds per iteration of the ``cvd-scene`` method on a nerfstudio-data folder against the same frames as a run
folder (the baseline, same run).

One small demo run (reference renderer, registered with ``register.fallback=planned``) is fitted four ways on the
CPU, one torch thread, the same iteration count and nerfstudio trainer each time (what ``ns-train cvd-scene``
builds; schedules scaled to the count):

* the run folder (``cvd-scene-data``): the baseline;
* its registered frames exported as a nerfstudio-data folder (``images/``, ``transforms.json``) with the
  registration's ``sparse_pc.ply`` named by ``ply_file_path``;
* the same folder without points: the method's capped random start;
* the same without points, with splatfacto's start (50,000 random Gaussians in its 10-unit cube, no cap): what
  ``ns-train cvd-scene --data DIR nerfstudio-data`` did before it loaded points or capped the random start.

    .venv/bin/python benchmarks/bench_nsdata.py            # the demo's 4 x 12 frames at 192², 600 iterations
    .venv/bin/python benchmarks/bench_nsdata.py --quick    # 2 x 12 frames at 192², 100 iterations
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

BASELINE = "run folder (cvd-scene-data)"


def make_run(run_dir: Path, quick: bool) -> None:
    """A demo run (192², 12 frames a video; 2 videos when ``quick``, else the demo's 4) up to the register stage."""
    from cvd_scene.cli import main as cli

    settings = [f"plan.num_videos={2 if quick else 4}", "generate.samples_per_pixel=2", "register.fallback=planned"]
    if cli(["run", str(run_dir), "--preset", "demo", "--quiet", "--until", "register", *settings]) != 0:
        raise RuntimeError(f"the benchmark's run in {run_dir} failed")


def export_nsdata(run_dir: Path, out: Path, points: bool) -> Path:
    """The run's registered frames as a nerfstudio-data folder (``images/<vid>_<frame>.png`` and
    ``transforms.json``, with the registration's points as ``sparse_pc.ply`` when ``points``)."""
    from cvd_scene.runfolder import RunLayout

    layout = RunLayout(run_dir)
    meta = json.loads(layout.register_transforms.read_text())
    meta.pop("ply_file_path", None)
    (out / "images").mkdir(parents=True)
    for frame in meta["frames"]:
        src = (layout.register_transforms.parent / frame["file_path"]).resolve()
        name = f"{src.parent.name}_{src.name}"
        shutil.copyfile(src, out / "images" / name)
        frame["file_path"] = f"images/{name}"
    if points:
        shutil.copyfile(layout.sparse_pc, out / "sparse_pc.ply")
        meta["ply_file_path"] = "sparse_pc.ply"
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out


def seconds_per_iteration(run_dir: Path, out_dir: Path, iterations: int, nsdata: Path | None = None,
                          splatfacto_start: bool = False) -> tuple[float, int, int]:  # fmt: skip
    """Train ``cvd-scene`` for ``iterations`` on the run folder, or on ``nsdata`` through nerfstudio's
    nerfstudio-data dataparser; returns (seconds per iteration, Gaussians at the start, Gaussians at the end)."""
    import torch
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from cvd_scene.fit.config import FitConfig
    from cvd_scene.fit.train import _own_event_writers, _quiet_nerfstudio, trainer_config

    config = trainer_config(run_dir, out_dir, FitConfig(iterations=iterations, device="cpu"))
    if nsdata is not None:
        config.data = nsdata.resolve()
        config.pipeline.datamanager.data = config.data
        config.pipeline.datamanager.dataparser = NerfstudioDataParserConfig(data=config.data)
    if splatfacto_start:
        config.pipeline.model.num_random = 50_000
        config.pipeline.model.random_scale = 10.0
        config.pipeline.model.random_init_max_gaussians = 0
    config.steps_per_save = 1_000_000
    torch.manual_seed(0)
    with _quiet_nerfstudio(), _own_event_writers():
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        start = len(trainer.pipeline.model.means)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    return seconds / iterations, start, len(trainer.pipeline.model.means)


def rows(quick: bool = False) -> list:
    import torch

    from cvd_scene.bench import BenchRow

    torch.set_num_threads(1)
    iterations = 100 if quick else 600
    root = Path(tempfile.mkdtemp(prefix="cvd-scene-bench-nsdata-"))
    try:
        run_dir = root / "run"
        make_run(run_dir, quick)
        with_points = export_nsdata(run_dir, root / "nsdata-points", points=True)
        without = export_nsdata(run_dir, root / "nsdata-none", points=False)
        base = seconds_per_iteration(run_dir, root / "fit-run", iterations)
        cases = [
            ("nerfstudio-data, the run's points (ply_file_path)", seconds_per_iteration(
                run_dir, root / "fit-points", iterations, with_points)),
            ("nerfstudio-data, no points: capped random start", seconds_per_iteration(
                run_dir, root / "fit-none", iterations, without)),
            ("nerfstudio-data, no points: splatfacto's start (50,000, no cap)", seconds_per_iteration(
                run_dir, root / "fit-splatfacto", iterations, without, splatfacto_start=True)),
        ]  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    size = f"{2 if quick else 4} x 12 frames at 192²"
    baseline = f"{BASELINE}, {base[1]} -> {base[2]} Gaussians, {base[0]:.3f} s"
    return [
        BenchRow("nsdata", f"{name}, {size}, {iterations} iterations, {start} -> {end} Gaussians", "s/iteration",
                 s, baseline, base[0])
        for name, (s, start, end) in cases
    ]  # fmt: skip


def main() -> None:
    from cvd_scene.bench import format_table, machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 x 12 frames at 192², 100 iterations")
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    print(format_table(rows(quick=args.quick)))


if __name__ == "__main__":
    main()
