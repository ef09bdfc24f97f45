"""``cvd-scene bench``: the benchmarks in benchmarks/ as one table of ratios against same-run baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tyro

from cvd_scene.commands.common import CliError, app


@app.command
def bench(
    names: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="NAME")] = (),
    quick: bool = False,
    json_out: Path | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Run the benchmarks in benchmarks/ (all, or those named) and print one table: each quantity next to its
    named baseline measured in the same run, with the gain as a ratio.

    Args:
        names: Benchmarks to run (e.g. reference raster unet); all when none are given.
        quick: Smaller sizes, for a fast check.
        json_out: Also write the rows as JSON to this file.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    from cvd_scene.bench import format_table, machine_description, run_benchmarks, save_rows
    from cvd_scene.logs import setup_logging

    setup_logging(quiet, verbose)
    try:
        rows = run_benchmarks(list(names) or None, quick=quick)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(f"Machine: {machine_description()}\n")
    print(format_table(rows))
    if json_out is not None:
        save_rows(rows, json_out)
