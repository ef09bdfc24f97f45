"""``cvd-scene register``: COLMAP registration of a run's frames, compared with its plan."""

from __future__ import annotations

from typing import Literal

from cvd_scene.commands.common import CliError, Overrides, RunDir, app, run_single_stage
from cvd_scene.config import parse_overrides


@app.command(name="register")
def register_command(
    run_dir: RunDir,
    overrides: Overrides = (),
    mode: Literal["known-poses", "free", "planned"] | None = None,
    preset: str | None = None,
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Register the frames of RUN_DIR with COLMAP: register/sparse/, transforms.json, sparse_pc.ply, report.json.

    Args:
        run_dir: The run folder (its plan and generate stages must have run).
        overrides: Config overrides as KEY=VALUE, e.g. register.max_num_features=2048 register.pairing=exhaustive.
        mode: known-poses (triangulate with the planned cameras, then bundle adjustment that may move them), free
            (mapping from the images alone, then a similarity alignment to the plan) or planned (keep the planned
            cameras, the ones the generator was conditioned on; points from the matches that verify, topped up with
            random points inside the views). Default: the config's (known-poses).
        preset: Run preset: a name in configs/run/ or a path to a YAML file (default: the run folder's own config,
            else demo).
        redo: Register again even if the stage already finished with this config.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    ov = parse_overrides(list(overrides))
    if mode is not None:
        section = ov.setdefault("register", {})
        if not isinstance(section, dict):
            raise CliError(f"override register={section!r} must set keys of the register section")
        section["mode"] = mode
    run_single_stage("register", run_dir, preset, ov, redo, quiet, verbose)
