"""Running stages of a run folder in order: skip what is finished, redo what is asked, stop on failure."""

from __future__ import annotations

import logging
from pathlib import Path

from cvd_scene.config import to_dict
from cvd_scene.runconfig import RunConfig
from cvd_scene.runfolder import RunFolder, RunFolderError, StageResult, run_lock
from cvd_scene.runners import RUN
from cvd_scene.stages import REQUIRES, STAGE_ORDER, downstream

log = logging.getLogger(__name__)


def stage_config_data(config: RunConfig, name: str, run: RunFolder, data: dict | None = None) -> dict:
    """What a stage's outputs depend on: prompt, seed, its section and the config hashes of its inputs. ``data``
    is the run's config as recorded (:func:`recorded_form`; default: all of ``config``)."""
    upstream = {d: (run.stage_record(d) or {}).get("config_hash") for d in REQUIRES[name]}
    data = to_dict(config) if data is None else data
    return {"prompt": config.prompt, "seed": config.seed, "section": data[name], "upstream": upstream}


def recorded_form(config: RunConfig, run_dir: Path) -> dict:
    """``config`` as a JSON-able dict, leaving out every key the run folder's recorded config lacks while the key is
    at its default value: keys added to cvd-scene after a run folder was made. So a run made by an earlier version
    resumes (its stages' config hashes and recorded config still match) unless one of the new keys is set."""
    data = to_dict(config)
    try:
        recorded = RunFolder.read(run_dir).state.get("config")
    except (RunFolderError, OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        return data
    return _drop_new_defaults(data, recorded, to_dict(RunConfig()))


def _drop_new_defaults(data: dict, recorded: dict, defaults: dict) -> dict:
    out = {}
    for key, value in data.items():
        if key not in recorded:
            if key in defaults and value == defaults[key]:
                continue
        elif isinstance(value, dict) and isinstance(recorded[key], dict) and isinstance(defaults.get(key), dict):
            value = _drop_new_defaults(value, recorded[key], defaults[key])
        out[key] = value
    return out


def run_stages(
    run_dir: str | Path,
    config: RunConfig,
    stages: list[str],
    preset: str | None = None,
    redo: tuple[str, ...] = (),
    overwrite: bool = False,
    fresh: bool = False,
    command: str = "",
) -> dict[str, StageResult | None]:
    """Run ``stages`` (in run order) in ``run_dir`` under its lock; returns each stage's result (None: skipped).

    ``redo`` names stages to run again even if finished (``cvd-scene run --redo X`` passes X and every stage
    after it). A stage that fails stops every later stage that needs it.
    """
    run_dir = Path(run_dir)
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGE_ORDER)}")
    results: dict[str, StageResult | None] = {}
    with run_lock(run_dir, command):
        data = recorded_form(config, run_dir)
        run = RunFolder.open(run_dir, data, preset, overwrite=overwrite, fresh=fresh)
        for name in [s for s in STAGE_ORDER if s in stages]:
            run.require(name, REQUIRES[name])
            fn = RUN[name]
            log.info("stage %s: running", name)
            result = run.run_stage(
                name,
                lambda out, fn=fn: fn(config, run_dir, out),
                stage_config_data(config, name, run, data),
                redo=name in redo,
            )
            results[name] = result
            if result is None:
                continue
            later = downstream(name)
            if any(run.stage_record(s) for s in later):
                run.invalidate_after(later)
            level = logging.ERROR if result.status == "failed" else logging.INFO
            log.log(level, "stage %s: %s%s", name, result.status, f" ({result.message})" if result.message else "")
            if result.status == "failed":
                blocked = [s for s in later if s in stages]
                if blocked:
                    log.error("not running %s: stage %s failed", ", ".join(blocked), name)
                break
        _write_report(run)
    return results


def _write_report(run: RunFolder) -> None:
    """Write ``report.html`` (once a stage has been recorded); a report that cannot be written is a warning,
    never a failed run."""
    from cvd_scene.report import write_report

    if not run.run_json.is_file():
        return

    try:
        write_report(run.path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("report.html could not be written: %s", e)
