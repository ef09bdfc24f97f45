"""``cvd-scene plan``: plan the cameras of a run (or take them from RealEstate10K files or a cameras.json)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cvd_scene.camera_io import CameraFileError, parse_re10k, read_cameras_json, read_text_file
from cvd_scene.commands.common import CliError, Overrides, RunDir, app, run_single_stage
from cvd_scene.config import parse_overrides

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def plan_overrides(
    overrides: tuple[str, ...],
    from_re10k: tuple[str, ...] = (),
    re10k_scale: float | None = None,
    re10k_reverse: bool = False,
    cameras: str | None = None,
) -> dict:
    """The config overrides of ``cvd-scene plan``: KEY=VALUE items plus the pose-file options, with every path
    made absolute (the stage runs from the run folder, not from the current directory)."""
    # --from-re10k takes every following word: KEY=VALUE items that are not files are overrides.
    trailing = tuple(a for a in from_re10k if _OVERRIDE.match(a) and not Path(a).is_file())
    from_re10k = tuple(a for a in from_re10k if a not in trailing)
    overrides = (*overrides, *trailing)
    if from_re10k and cameras:
        raise CliError("give either --from-re10k or --cameras, not both")
    if (re10k_scale is not None or re10k_reverse) and not from_re10k:
        raise CliError("--re10k-scale and --re10k-reverse need --from-re10k FILE ...")
    ov = parse_overrides(list(overrides))
    plan = ov.setdefault("plan", {})
    if not isinstance(plan, dict):
        raise CliError(f"override plan={plan!r} must set keys of the plan section, e.g. plan.num_videos=6")
    for name, path in [("--from-re10k", p) for p in from_re10k] + (
        [("--cameras", cameras)] if cameras else []
    ):
        if not Path(path).is_file():
            raise CliError(f"{name} {path}: no such file")
    try:  # read every file now, so a malformed one is reported before anything runs
        for path in from_re10k:
            parse_re10k(read_text_file(path, "RealEstate10K pose file"), source=str(path))
        if cameras:
            read_cameras_json(cameras)
    except (CameraFileError, OSError, UnicodeDecodeError) as e:
        raise CliError(str(e)) from None
    if from_re10k:
        plan["re10k_files"] = [os.path.abspath(p) for p in from_re10k]
        plan["cameras_file"] = None
        plan["re10k_reverse"] = bool(re10k_reverse)
        if re10k_scale is not None:
            plan["re10k_scale_m"] = float(re10k_scale)
    if cameras:
        plan["cameras_file"] = os.path.abspath(cameras)
        plan["re10k_files"] = []
    if not plan:
        del ov["plan"]
    return ov


@app.command(name="plan")
def plan_command(
    run_dir: RunDir,
    overrides: Overrides = (),
    preset: str | None = None,
    from_re10k: tuple[str, ...] = (),
    re10k_scale: float | None = None,
    re10k_reverse: bool = False,
    cameras: str | None = None,
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Plan the cameras of RUN_DIR: plan/cameras.json, plan/covisibility.json, plan/trajectories.png.

    Args:
        run_dir: The run folder (created if missing).
        overrides: Config overrides as KEY=VALUE, e.g. plan.num_videos=6 plan.pattern=orbit.
        preset: Run preset: a name in configs/run/ or a path to a YAML file (default: the run folder's own
            config, else demo).
        from_re10k: RealEstate10K/CameraCtrl pose files, one video each, used as given.
        re10k_scale: Metres per RealEstate10K file unit.
        re10k_reverse: Play the RealEstate10K trajectories backwards.
        cameras: A cameras.json (docs/architecture.md schema) used as given.
        redo: Plan again even if the stage already finished with this config.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    ov = plan_overrides(overrides, from_re10k, re10k_scale, re10k_reverse, cameras)
    run_single_stage("plan", run_dir, preset, ov, redo, quiet, verbose)
