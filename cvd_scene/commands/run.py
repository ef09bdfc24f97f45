"""``cvd-scene run``: every stage of a run, in order, resuming where it stopped."""

from __future__ import annotations

from cvd_scene.commands.common import CliError, Overrides, RunDir, app, command_line, log, resolve_config
from cvd_scene.config import parse_overrides
from cvd_scene.preflight import validate_stages
from cvd_scene.runfolder import check_run_dir
from cvd_scene.stages import STAGE_ORDER, downstream


@app.command
def run(
    run_dir: RunDir,
    overrides: Overrides = (),
    preset: str | None = None,
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
        preset: Run preset: a name in configs/run/ (demo, default, quality) or a path to a YAML file (default: the
            run folder's own config, e.g. after cvd-scene import, else demo).
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
    config, preset = resolve_config(run_dir, preset, ov)
    if image is not None:
        from cvd_scene.generate.picture import PictureError, image_overrides

        try:
            ov = image_overrides(ov, image, plan_size=(config.plan.width, config.plan.height))
        except PictureError as e:
            raise CliError(str(e)) from None
        config, preset = resolve_config(run_dir, preset, ov)
    for name, value in (("--until", until), ("--redo", redo)):
        if value is not None and value not in STAGE_ORDER:
            raise CliError(f"{name} {value!r} is not a stage; stages are {', '.join(STAGE_ORDER)}")
    stages = list(STAGE_ORDER[: STAGE_ORDER.index(until) + 1]) if until else list(STAGE_ORDER)
    redo_set = (redo, *downstream(redo)) if redo else ()
    check_run_dir(run_dir)  # a path that cannot hold a run is refused before the configs are checked
    validate_stages(config, stages, run_dir)
    results = run_stages(
        run_dir, config, stages, preset=preset, redo=redo_set, overwrite=overwrite, fresh=True, command=command_line()
    )
    failed = [n for n, r in results.items() if r is not None and r.status == "failed"]
    log.info("run folder: %s", run_dir)
    if failed:
        raise CliError(f"stage {failed[0]} failed: {results[failed[0]].message}")
