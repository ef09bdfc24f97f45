"""Checks made before the first stage of a command runs, so that bad input is refused before any work starts.

``validate_stages(config, stages, run_dir)`` calls the ``validate(config, size)`` function of every stage about to
run (each stage module has one: cross-key checks and the memory and time estimates of
:mod:`cvd_scene.estimates`), with the plan's size taken from the config, the cameras file, the RealEstate10K
files or the run folder's own finished plan. ``check_run_folder(stage, run_dir)`` refuses a stage command other
than ``plan`` on a folder that is not a run folder, without creating anything. Errors are ``ValueError`` subclasses
whose one-line message names the key, file or value. Must not import torch.
"""

from __future__ import annotations

from pathlib import Path

from cvd_scene.runfolder import RunLayout
from cvd_scene.runners import VALIDATE
from cvd_scene.stages import REQUIRES, STAGE_ORDER, PlanSize


class PreflightError(ValueError):
    """Input refused before any stage ran; the message names the key, file or value."""


def plan_size(config, run_dir: Path | None = None, planning: bool = True) -> PlanSize:
    """The size of the run's plan. ``planning=False``: the plan stage is not part of this command, so a finished
    ``run_dir/plan/cameras.json`` is what later stages will read."""
    from cvd_scene.camera_io import CameraFileError, read_cameras_json, read_text_file

    plan = config.plan
    existing = RunLayout(run_dir).cameras if run_dir is not None else None
    if not planning and existing is not None and existing.is_file():
        try:
            cams = read_cameras_json(existing)
        except CameraFileError as e:
            raise PreflightError(str(e)) from None
        return PlanSize(cams.num_videos, cams.num_frames, cams.width, cams.height, str(existing),
                        {"plan": str(existing)})  # fmt: skip
    if plan.cameras_file:
        from cvd_scene.generate.sources import read_plan_cameras

        try:
            cams = read_plan_cameras(plan.cameras_file, plan.cameras_images, plan.cameras_downscale, plan.fps)
        except CameraFileError as e:
            raise PreflightError(str(e)) from None
        return PlanSize(cams.num_videos, cams.num_frames, cams.width, cams.height, "plan.cameras_file",
                        {"plan.cameras_file": plan.cameras_file})  # fmt: skip
    if config.generate.generator == "imported" and not plan.re10k_files and config.generate.source:
        from cvd_scene.generate.imported import SourceError, source_videos, unknown_cameras

        try:
            cams = unknown_cameras(source_videos(config.generate.source), plan.fov_x_deg, plan.fps,
                                   config.generate.import_fps)  # fmt: skip
        except SourceError as e:
            raise PreflightError(str(e)) from None
        return PlanSize(cams.num_videos, cams.num_frames, cams.width, cams.height, "generate.source",
                        {"generate.source": config.generate.source})  # fmt: skip
    if plan.re10k_files:
        counts = []
        for path in plan.re10k_files:
            try:
                lines = read_text_file(path, "RealEstate10K pose file").splitlines()[1:]
            except CameraFileError as e:
                raise PreflightError(str(e)) from None
            counts.append(sum(1 for line in lines if line.strip()))
        frames = min(counts) if counts else 0
        if plan.re10k_max_frames is not None:
            frames = min(frames, plan.re10k_max_frames)
        videos = plan.re10k_blend_videos or len(plan.re10k_files)
        return PlanSize(videos, frames, plan.width, plan.height, "plan.re10k_files",
                        {"plan.re10k_files": len(plan.re10k_files), "plan.width": plan.width,
                         "plan.height": plan.height})  # fmt: skip
    return PlanSize(plan.num_videos, plan.num_frames, plan.width, plan.height, "plan",
                    {"plan.num_videos": plan.num_videos, "plan.num_frames": plan.num_frames,
                     "plan.width": plan.width, "plan.height": plan.height})  # fmt: skip


def validate_stages(config, stages: list[str] | tuple[str, ...], run_dir: Path | None = None) -> None:
    """Call every listed stage's ``validate(config, size)`` in run order before any of them runs."""
    _refuse_failed_inputs(stages, run_dir)
    size = plan_size(config, run_dir, planning="plan" in stages)
    for name in [s for s in STAGE_ORDER if s in stages]:
        try:
            VALIDATE[name](config, size)
        except PreflightError:
            raise
        except ValueError as e:
            raise PreflightError(str(e)) from None


def _refuse_failed_inputs(stages, run_dir: Path | None) -> None:
    """A stage whose input stage failed (and is not run again now) is refused with that failure first: checking
    its config against the failed stage's outputs would only point at a second problem."""
    import json

    if run_dir is None or not RunLayout(run_dir).run_json.is_file():
        return
    try:
        records = json.loads(RunLayout(run_dir).run_json.read_text(encoding="utf-8")).get("stages") or {}
    except (OSError, ValueError, AttributeError):
        return  # the run folder itself reports an unreadable run.json
    for name in stages:
        for dep in REQUIRES[name]:
            rec = records.get(dep) if isinstance(records, dict) else None
            if dep not in stages and isinstance(rec, dict) and rec.get("status") == "failed":
                raise PreflightError(f"stage {name!r} needs stage {dep!r}, which failed: {rec.get('message', '')}")


def check_run_folder(stage: str, run_dir: Path) -> None:
    """Refuse a stage command other than ``plan`` on a folder without ``run.json`` (nothing is created)."""
    run_dir = Path(run_dir)
    if stage == "plan" or RunLayout(run_dir).run_json.is_file():
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise PreflightError(f"{run_dir} is a file, not a run folder")
    what = "does not exist" if not run_dir.exists() else "is not a cvd-scene run folder (no run.json)"
    raise PreflightError(
        f"{run_dir} {what}; stage {stage!r} needs a run folder whose earlier stages ran: start one with "
        f"`cvd-scene plan {run_dir}` or `cvd-scene run {run_dir}`"
    )
