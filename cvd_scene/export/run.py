"""Stage ``export``: VR and web assets (3DGS PLY, .splat, SPZ, KHR_gaussian_splatting GLB, mesh GLB, camera path).

Reads ``fit/gaussians.ply`` (a Gaussian fit, in the run's world frame; refused when a Gaussian fit lacks it) or,
for a NeRF fit, the depth and colour views the fit rendered (``fit/views/``); the registered cameras (``register/transforms.json``) weigh splats for
the budget and place the fit's views; the planned cameras (``plan/cameras.json``) become ``camera_path.json``.
Writes ``export/`` (file names in docs/architecture.md) and ``export/report.json``.
"""

from __future__ import annotations

from pathlib import Path

from cvd_scene.export.config import ExportConfig


def validate(config, size) -> None:
    """Before any stage runs: nothing beyond the fields' own checks (:meth:`ExportConfig.__post_init__`)."""


def read_fit_frame(run_dir: Path):
    """The fit's normalisation into the nerfstudio model frame (``fit/frame.json``) as a
    :class:`cvd_scene.fit.frames.NerfstudioFrame`, or None when the fit wrote none (a fit made elsewhere)."""
    from cvd_scene.camera_io import read_json
    from cvd_scene.fit.frames import NerfstudioFrame
    from cvd_scene.runfolder import RunLayout, StageRefused

    path = RunLayout(run_dir).fit_frame
    if not path.is_file():
        return None
    try:
        return NerfstudioFrame.from_json(read_json(path))
    except (KeyError, TypeError, ValueError) as e:
        raise StageRefused(
            f"stage 'export': {path} is not a fit frame ({e}); redo the fit (cvd-scene fit {run_dir} --redo)"
        ) from None


GAUSSIAN_METHODS = ("cvd-scene",)
"""Fit methods whose output is ``fit/gaussians.ply`` (the others leave depth and colour views)."""


def fit_method(config, run_dir: Path) -> str:
    """The nerfstudio method the run's fit used: ``fit/metrics.json``'s ``method``, else the config's."""
    import json

    from cvd_scene.runfolder import RunLayout

    try:
        method = json.loads(RunLayout(run_dir).fit_metrics.read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        method = None
    return method if isinstance(method, str) else config.fit.method


def run_export(config, run_dir: Path, out_dir: Path):
    """Export the fitted scene of ``run_dir`` into ``out_dir`` (becomes ``run_dir/export``)."""
    import logging

    from cvd_scene.camera_io import read_cameras_json, read_transforms_json
    from cvd_scene.export.mesh import load_fit_views
    from cvd_scene.export.pipeline import export_gaussians, export_views, write_camera_path, write_report
    from cvd_scene.export.ply import read_ply
    from cvd_scene.runfolder import RunLayout, StageRefused, StageResult

    log = logging.getLogger("cvd_scene.export.run")
    cfg: ExportConfig = config.export
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = RunLayout(run_dir)
    fit_dir = run.stage("fit")
    transforms = run.register_transforms
    registered = read_transforms_json(transforms).cameras if transforms.is_file() else None
    planned_path = run.cameras
    planned = read_cameras_json(planned_path) if planned_path.is_file() else None
    views = load_fit_views(fit_dir, registered) if registered is not None and run.fit_views.is_dir() else []
    splats_path = run.fit_gaussians
    if planned is not None and not planned.poses_known:  # pictures imported without poses: the registered ones
        log.info("export: camera_path.json follows the registered cameras (the plan has no poses)")
        planned = None
    path_cameras = planned or registered
    method = fit_method(config, run_dir)
    if method in GAUSSIAN_METHODS or splats_path.is_file():
        if not splats_path.is_file():
            raise StageRefused(
                f"stage 'export': {splats_path} is missing; the fit used the Gaussian splatting method "
                f"{method!r}, which writes it. Redo the fit (cvd-scene fit {run_dir} --redo) or restore the file"
            )
        from cvd_scene.export.camera_path import supersplat_viewer_settings

        gaussians = read_ply(splats_path)
        source = {"path": run.relative(splats_path, run_dir), "splats": len(gaussians), "fit_method": method}
        settings = None
        if path_cameras is not None:
            settings = supersplat_viewer_settings(path_cameras, cfg.camera_path_fps, cfg.camera_path_transition_s)
        report = export_gaussians(
            gaussians, out_dir, cfg, cameras=registered or planned, views=views, source=source,
            viewer_settings=settings,
        )  # fmt: skip
    elif views:
        source = {"path": run.relative(run.fit_views, run_dir), "views": len(views), "fit_method": method}
        report = export_views(views, out_dir, cfg, source=source)
    else:
        raise StageRefused(
            f"stage 'export': the fit (method {method!r}, a NeRF) left no depth/colour views in "
            f"{run.fit_views}; redo the fit (cvd-scene fit {run_dir} --redo)"
        )
    if path_cameras is not None:
        write_camera_path(
            out_dir, path_cameras, report, cfg.camera_path_fps, cfg.camera_path_transition_s,
            read_fit_frame(run_dir), run.relative(run.fit_frame, run_dir),
        )  # fmt: skip
    else:
        log.warning("no %s or %s: camera_path.json not written", planned_path, transforms)
    write_report(out_dir, report)
    splats = report["splats"]
    summary = {"files": {k: v["bytes"] for k, v in report["files"].items()}}
    if splats:
        summary.update(
            splats_in=splats["in"], splats_out=splats["out"], nonfinite_removed=splats["nonfinite_removed"]
        )
    if report["mesh"]:
        summary["mesh_triangles"] = report["mesh"]["triangles"]
    message = f"{len(report['files'])} files"
    if splats:
        message += f", {splats['out']} splats ({splats['nonfinite_removed']} NaN/Inf removed, "
        message += f"{splats['pruned_by_budget']} over budget)"
    return StageResult(status="finished", summary=summary, message=message)
