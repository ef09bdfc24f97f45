"""The ``cvd-scene`` command line: one subcommand per built stage plus ``run`` (all stages), tools and benchmarks.

Subcommands are functions registered on :data:`app` (help text from their docstrings, via tyro). Stage commands
live in ``cvd_scene/commands/<name>.py``; a command is listed only once what it runs is built.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import tyro
from tyro.extras import SubcommandApp

from cvd_scene.config import ConfigError, load_config, parse_overrides
from cvd_scene.preflight import check_run_folder, validate_stages
from cvd_scene.runconfig import RunConfig
from cvd_scene.runfolder import (
    RunFolder,
    RunFolderError,
    RunLayout,
    StageRefused,
    Stopped,
    check_run_dir,
    clear_stop,
    describe_os_error,
    request_stop,
    stop_requested,
)
from cvd_scene.stages import BUILT, STAGE_ORDER, downstream

log = logging.getLogger("cvd_scene.cli")

app = SubcommandApp()

COMMAND_MODULES: tuple[str, ...] = (
    "plan", "generate", "export", "convert", "register", "evaluate", "train", "fit", "batch", "view", "imports",
)
"""Modules under ``cvd_scene.commands`` that register more subcommands on :data:`app`."""

Overrides = Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="KEY=VALUE")]
"""Trailing ``KEY=VALUE`` config overrides of a command."""
RunDir = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
"""The run folder, first positional argument of every stage command."""


class CliError(Exception):
    """An error the command line reports in one line, without a traceback."""


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Signals handled like SIGINT (``kill``, ``timeout``, a closed terminal, a scheduler ending a job)."""


@contextlib.contextmanager
def stop_signals_raise():
    """While inside, SIGTERM and SIGHUP raise :class:`~cvd_scene.runfolder.Stopped` in the main thread (as SIGINT
    raises ``KeyboardInterrupt``), so every ``finally`` and cleanup runs; the previous handlers come back after
    (the request itself stays readable through :func:`~cvd_scene.runfolder.stop_requested` until cleared)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        request_stop(signum)

    clear_stop()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resolve_config(
    run_dir: Path | None, preset: str | None, overrides: tuple[str, ...] | dict, default_preset: str = "demo"
) -> tuple[RunConfig, str | None]:
    """The config a command runs with: ``--preset`` if given, else the run folder's own, else ``default_preset``;
    then the ``KEY=VALUE`` overrides (or a mapping of them)."""
    ov = parse_overrides(list(overrides)) if isinstance(overrides, tuple) else overrides
    if preset is None and run_dir is not None and RunLayout(run_dir).run_json.is_file():
        run = RunFolder.read(run_dir)
        recorded = run.state.get("config")
        if isinstance(recorded, dict):  # a run.json no stage has finished in records no config yet
            from cvd_scene.config import from_dict, merge

            return from_dict(RunConfig, merge(recorded, ov)), run.state.get("preset")
    name = preset or default_preset
    return load_config(RunConfig, "run", name, ov), name


def command_line() -> str:
    return " ".join(["cvd-scene", *sys.argv[1:]])


@app.command
def run(
    run_dir: RunDir,
    overrides: Overrides = (),
    preset: str = "demo",
    prompt: str | None = None,
    image: str | None = None,
    until: str | None = None,
    redo: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Run every stage (plan, generate, register, fit, export, evaluate) in RUN_DIR, resuming where it stopped.

    Args:
        run_dir: The run folder (created if missing).
        overrides: Config overrides as KEY=VALUE, e.g. fit.iterations=300 plan.num_videos=6.
        preset: Run preset: a name in configs/run/ (demo, default, quality) or a path to a YAML file.
        prompt: Text prompt (also settable as prompt=...).
        image: A picture that becomes frame 0 of every video (CVD generator, e.g. --preset demo-learned); the
            prompt is then optional, and the plan's field of view comes from the EXIF focal length when present.
        until: Stop after this stage.
        redo: Run this stage and every stage after it again, even if finished.
        overwrite: Replace the run in RUN_DIR, removing only the files run.json records as cvd-scene's.
        quiet: Only warnings and errors, no progress bars.
        verbose: Debug logging.
    """
    from cvd_scene.logs import setup_logging
    from cvd_scene.orchestrate import run_stages

    setup_logging(quiet, verbose)
    ov = parse_overrides(list(overrides))
    if prompt is not None:
        ov["prompt"] = prompt
    config = load_config(RunConfig, "run", preset, ov)
    if image is not None:
        from cvd_scene.picture import PictureError, image_overrides

        try:
            ov = image_overrides(ov, image, plan_size=(config.plan.width, config.plan.height))
        except PictureError as e:
            raise CliError(str(e)) from None
        config = load_config(RunConfig, "run", preset, ov)
    for name, value in (("--until", until), ("--redo", redo)):
        if value is not None and value not in STAGE_ORDER:
            raise CliError(f"{name} {value!r} is not a stage; stages are {', '.join(STAGE_ORDER)}")
    stages = list(STAGE_ORDER[: STAGE_ORDER.index(until) + 1]) if until else list(STAGE_ORDER)
    redo_set = (redo, *downstream(redo)) if redo else ()
    missing = [s for s in stages if s not in BUILT]
    if missing:
        log.warning("not built yet in this version: %s (those stages are skipped)", ", ".join(missing))
    check_run_dir(run_dir)  # a path that cannot hold a run is refused before the configs are checked
    validate_stages(config, [s for s in stages if s in BUILT], run_dir)
    results = run_stages(
        run_dir, config, stages, preset=preset, redo=redo_set, overwrite=overwrite, fresh=True, command=command_line()
    )
    failed = [n for n, r in results.items() if r is not None and r.status == "failed"]
    log.info("run folder: %s", run_dir)
    if failed:
        raise CliError(f"stage {failed[0]} failed: {results[failed[0]].message}")


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


def run_single_stage(
    name: str,
    run_dir: Path,
    preset: str | None,
    overrides: dict,
    redo: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """What every stage command does: resolve the config, then run that one stage under the run folder's lock."""
    from cvd_scene.logs import setup_logging
    from cvd_scene.orchestrate import run_stages

    setup_logging(quiet, verbose)
    check_run_folder(name, run_dir)
    config, preset_name = resolve_config(run_dir, preset, overrides)
    validate_stages(config, [name], run_dir)
    results = run_stages(
        run_dir, config, [name], preset=preset_name, redo=(name,) if redo else (), command=command_line()
    )
    result = results.get(name)
    if result is None:
        log.info("stage %s is already finished in %s with this config (pass --redo to run it again)", name, run_dir)
    elif result.status == "failed":
        raise CliError(f"stage {name} failed: {result.message}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cvd-scene`` console script."""
    for mod in COMMAND_MODULES:
        importlib.import_module(f"cvd_scene.commands.{mod}")
    try:
        with stop_signals_raise():
            app.cli(prog="cvd-scene", args=argv)
    except BaseException as e:
        # A stop signal whose exception a library turned into another one (or swallowed) still ends as a stop.
        signum = e.signum if isinstance(e, Stopped) else stop_requested()
        if signum is not None or isinstance(e, KeyboardInterrupt):
            signum = signal.SIGINT if signum is None else signum
            how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            print(f"cvd-scene: {how}; finished stages are kept, run the same command to resume", file=sys.stderr)
            return 128 + signum
        if not isinstance(e, (ConfigError, RunFolderError, StageRefused, CliError, ValueError, OSError)):
            raise
        # Bad input (a config, a file, an argument) or a place that cannot be written (full disk, read-only) is
        # one line; --verbose shows where it came from.
        if logging.getLogger("cvd_scene").isEnabledFor(logging.DEBUG):
            logging.getLogger("cvd_scene").exception("details")
        message = describe_os_error(e) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else e
        print(f"cvd-scene: error: {message}", file=sys.stderr)
        return 2
    finally:
        clear_stop()
    return 0


if __name__ == "__main__":
    # Run through the imported module so that command modules register on the same ``app``.
    from cvd_scene.cli import main as _main

    sys.exit(_main())
