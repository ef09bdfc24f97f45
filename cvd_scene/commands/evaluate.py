"""``cvd-scene evaluate``: the CVD paper's geometric-consistency protocol on a run's frames (SIFT matches)."""

from __future__ import annotations

from cvd_scene.commands.common import Overrides, RunDir, app, run_single_stage
from cvd_scene.config import parse_overrides


@app.command(name="evaluate")
def evaluate_command(
    run_dir: RunDir,
    overrides: Overrides = (),
    preset: str | None = None,
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Score how consistent the videos of RUN_DIR are with their cameras and with each other (the CVD paper's
    protocol with SIFT): evaluate/consistency.json and a table next to the paper's numbers.

    Args:
        run_dir: The run folder (its plan and generate stages must have run).
        overrides: Config overrides as KEY=VALUE, e.g. evaluate.covisibility_min=0.3.
        preset: Run preset: a name in configs/run/ or a path to a YAML file (default: the run folder's own config,
            else demo).
        redo: Evaluate again even if the stage already finished with this config.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    run_single_stage("evaluate", run_dir, preset, parse_overrides(list(overrides)), redo, quiet, verbose)
