"""``cvd-scene fit``: fit the registered frames of a run with the nerfstudio method ``cvd-scene`` (or ``-nerf``)."""

from __future__ import annotations

from typing import Literal

from cvd_scene.commands.common import CliError, Overrides, RunDir, app, run_single_stage
from cvd_scene.config import parse_overrides


@app.command(name="fit")
def fit_command(
    run_dir: RunDir,
    overrides: Overrides = (),
    method: Literal["cvd-scene", "cvd-scene-nerf"] | None = None,
    iterations: int | None = None,
    time_budget_s: float | None = None,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    preset: str | None = None,
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Fit RUN_DIR's registered frames through nerfstudio (the same method as `ns-train cvd-scene --data RUN_DIR`):
    writes fit/ with the nerfstudio config and checkpoint, held-out renders next to ground truth, metrics.json,
    gaussians.ply (world frame) and colour/depth views at every registered camera.

    Args:
        run_dir: The run folder (its register stage must have run).
        overrides: Config overrides as KEY=VALUE, e.g. fit.eval_every_k=4 fit.sh_degree=0.
        method: cvd-scene (Gaussian splatting) or cvd-scene-nerf (NeRF, nerfacto).
        iterations: Training iterations.
        time_budget_s: Stop training after this many seconds and keep what was fitted.
        device: auto (CUDA when present), cpu or cuda.
        preset: Run preset: a name in configs/run/ or a path to a YAML file (default: the run folder's own config,
            else demo).
        redo: Fit again even if the stage already finished with this config.
        quiet: Only warnings and errors, no progress bars.
        verbose: Debug logging (and nerfstudio's own console output).
    """
    ov = parse_overrides(list(overrides))
    section = ov.setdefault("fit", {})
    if not isinstance(section, dict):
        raise CliError(f"override fit={section!r} must set keys of the fit section, e.g. fit.iterations=300")
    for key, value in (("method", method), ("iterations", iterations), ("time_budget_s", time_budget_s), ("device", device)):
        if value is not None:
            section[key] = value
    if not section:
        del ov["fit"]
    run_single_stage("fit", run_dir, preset, ov, redo, quiet, verbose)
