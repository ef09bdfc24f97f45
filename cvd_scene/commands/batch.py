"""``cvd-scene batch``: many scenes at once on Ray (local by default, a cluster by address)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tyro

from cvd_scene.commands.common import CliError, Overrides, app
from cvd_scene.config import ConfigError, parse_overrides


@app.command(name="batch")
def batch_command(
    jobs: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="JOBS")],
    out_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")],
    overrides: Overrides = (),
    preset: str = "demo",
    address: str | None = None,
    max_retries: int = 2,
    resource: tuple[str, ...] = (),
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    until: str | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Run every job of JOBS as its own run folder OUT_DIR/<slug>/ on Ray; write OUT_DIR/batch.json and the gallery
    OUT_DIR/index.html. Rerunning skips finished work and resumes interrupted jobs.

    Args:
        jobs: A text file of prompts (one a line, # comments) or a YAML list of jobs (prompt, preset, overrides,
            seed).
        out_dir: Where the run folders, batch.json, index.html and logs/ go.
        overrides: Config overrides for every job as KEY=VALUE (a job's own overrides win).
        preset: Run preset of jobs that name none.
        address: Ray cluster to use (e.g. ray://head:10001, or auto for the cluster this machine belongs to);
            default: a local Ray on this machine.
        max_retries: Retries of a stage after a transient failure (a lost worker, out of memory, an I/O error); a
            refused config or a failed stage is never retried.
        resource: Per-stage resources as KEY=NUMBER: STAGE.cpus, generate.gpus (GPU share of each model actor,
            default 0.5), fit.gpus (default 0.5), cpu_actors (model actors without GPUs, default 1).
        num_cpus: Local Ray only: CPUs to offer (default: the machine's).
        num_gpus: Local Ray only: GPUs to offer (default: the machine's).
        until: Stop every job after this stage (plan, generate, register, fit, export, evaluate).
        quiet: Only warnings and errors, no progress display.
        verbose: Debug logging.
    """
    import logging

    from cvd_scene.batch import BatchError, BatchResources, read_jobs, run_batch, summary_line
    from cvd_scene.logs import setup_logging

    setup_logging(quiet, verbose)
    if max_retries < 0:
        raise CliError(f"--max-retries must be >= 0, got {max_retries}")
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"OUT_DIR {out_dir} exists and is not a folder")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise CliError("cvd-scene batch needs Ray: pip install 'ray==2.60.*' (scripts/install.sh installs it)") from None
    try:
        doc = run_batch(
            read_jobs(jobs, preset), out_dir, parse_overrides(list(overrides)), address=address,
            max_retries=max_retries, resources=BatchResources().apply(list(resource)), num_cpus=num_cpus,
            num_gpus=num_gpus, until=until, progress=not quiet,
        )  # fmt: skip
    except (BatchError, ConfigError) as e:
        raise CliError(str(e)) from None
    logging.getLogger("cvd_scene.batch").info("batch: %s; gallery: %s", summary_line(doc), out_dir / "index.html")
    failed = [j for j in doc["jobs"] if j["status"] == "failed"]
    if failed:
        first = failed[0]
        raise CliError(
            f"{len(failed)} of {len(doc['jobs'])} jobs failed; first: {first['slug']} at stage {first['stage']}: "
            f"{first['message']} (details in {out_dir / 'batch.json'})"
        )
