"""What every ``cvd-scene`` command shares: the :data:`app` commands register on, the argument types, the one-line
error, and how a stage command resolves its config and runs its stage.

Command modules (``cvd_scene/commands/<name>.py``) import this module; :mod:`cvd_scene.cli` imports every command
module by name and runs :data:`app`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import tyro
from tyro.extras import SubcommandApp

from cvd_scene.config import from_dict, load_config, merge, parse_overrides
from cvd_scene.preflight import check_run_folder, validate_stages
from cvd_scene.runconfig import RunConfig
from cvd_scene.runfolder import RunFolder, RunLayout

log = logging.getLogger("cvd_scene.cli")

app = SubcommandApp()
"""The ``cvd-scene`` command line; every command module registers its commands here."""

Overrides = Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="KEY=VALUE")]
"""Trailing ``KEY=VALUE`` config overrides of a command."""
RunDir = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
"""The run folder, first positional argument of every stage command."""


class CliError(Exception):
    """An error the command line reports in one line, without a traceback."""



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
            return from_dict(RunConfig, merge(recorded, ov)), run.state.get("preset")
    name = preset or default_preset
    return load_config(RunConfig, "run", name, ov), name



def command_line() -> str:
    return " ".join(["cvd-scene", *sys.argv[1:]])



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
