"""Exporting a fitted scene: every asset of ``export/`` from a Gaussian fit (or from views, for a NeRF fit).

From Gaussians: non-finite splats removed and counted, the splat budget applied, then the master 3DGS PLY and
from the very same splats ``.splat``, SPZ (v3, and v4 when zstandard is installed), the KHR_gaussian_splatting
GLB, and a mesh GLB fused from depth views (the fit's, or rendered here from the splats). From views only (a NeRF
fit): the mesh GLB and a coloured point cloud. Each run writes ``report.json``: files and sizes, the frame of
each file, splat counts, bounding box, mesh statistics, timings.

Frames (:mod:`cvd_scene.export.axes`): the splats are handled in the run's world; PLY, ``.splat`` and SPZ are
turned into the frame their readers assume (``ExportConfig.frame``, default ``readers``: 180 degrees about z)
right before they are written; glTF files (KHR splats, mesh) stay in the run's world, as glTF defines.

Pure functions over arrays and paths; heavy libraries (open3d, trimesh, torch) only inside the mesh functions.
Must not import nerfstudio.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvd_scene.cameras import Cameras
from cvd_scene.export.axes import FRAMES, READERS, RUN, convert
from cvd_scene.export.budget import clean_and_budget
from cvd_scene.export.config import SPLAT_FORMATS, ExportConfig
from cvd_scene.gaussians import Gaussians
from cvd_scene.runfolder import EXPORT_FILES

if TYPE_CHECKING:
    from cvd_scene.fit.frames import NerfstudioFrame

log = logging.getLogger(__name__)

FILE_NAMES = EXPORT_FILES
"""File written for each output, inside the export folder (:data:`cvd_scene.runfolder.EXPORT_FILES`)."""
REPORT_FORMAT = "cvd-scene/export-report"


def planned_files(config: ExportConfig, has_gaussians: bool, with_camera_path: bool) -> list[str]:
    """Names of the files an export with ``config`` writes (to check for existing files first)."""
    from cvd_scene.export.splat_transform import splat_transform_exe
    from cvd_scene.export.spz import zstd_available

    names = []
    for fmt in config.formats:
        if fmt in SPLAT_FORMATS and not has_gaussians:
            continue
        if fmt in ("sog", "cply", "viewer") and splat_transform_exe() is None:
            continue
        if fmt == "spz":
            names += [FILE_NAMES["spz"]] if 3 in config.spz_versions else []
            names += [FILE_NAMES["spz4"]] if 4 in config.spz_versions and zstd_available() else []
        else:
            names.append(FILE_NAMES[fmt])
        if fmt == "mesh":
            names.append(FILE_NAMES["collider"])
    if not has_gaussians:
        names.append(FILE_NAMES["points"])
    if with_camera_path:
        names += [FILE_NAMES["camera_path"], FILE_NAMES["viewer_settings"]]
    return [*names, FILE_NAMES["report"]]


def _bbox(points: np.ndarray) -> dict:
    return {
        "min": [float(v) for v in points.min(axis=0)],
        "max": [float(v) for v in points.max(axis=0)],
        "p01": [float(v) for v in np.percentile(points, 1, axis=0)],
        "p99": [float(v) for v in np.percentile(points, 99, axis=0)],
        "frame": FRAMES[RUN],
    }


def _file_entry(path: Path, kind: str, seconds: float, **more) -> dict:
    return {
        "file": path.name,
        "format": kind,
        "bytes": path.stat().st_size,
        "seconds": round(seconds, 3),
        **more,
    }


def export_gaussians(
    gaussians: Gaussians,
    out_dir: str | os.PathLike,
    config: ExportConfig,
    cameras: Cameras | None = None,
    views: list | None = None,
    source: dict | None = None,
    input_frame: str = RUN,
    viewer_settings: dict | None = None,
) -> dict:
    """Write every requested asset of ``gaussians`` into ``out_dir``; returns the report.

    ``gaussians`` are in ``input_frame`` (``run``: a fit; ``readers``: a PLY, ``.splat`` or SPZ from elsewhere).
    ``cameras`` (registered or planned, run's world) weigh splats for the budget; ``views`` (depth + colour)
    feed the mesh, which otherwise is fused from views rendered from the splats. PLY, ``.splat`` and SPZ are
    written in ``config.frame``, glTF in the run's world. ``viewer_settings`` (SuperSplat settings, e.g. the
    planned flythrough) go into ``viewer.html``.
    """
    from cvd_scene.export.gltf import write_khr_glb
    from cvd_scene.export.ply import write_ply
    from cvd_scene.export.splat import write_splat
    from cvd_scene.export.spz import write_spz, zstd_available

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    g, counts = clean_and_budget(convert(gaussians, input_frame, RUN), config.max_splats, cameras)
    files: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    timings = {"clean_and_budget": round(time.perf_counter() - t0, 3)}

    def timed(key: str, kind: str, fn, name: str, **more) -> None:
        t = time.perf_counter()
        path = fn(out_dir / name)
        frame = RUN if key == "glb" else config.frame
        files[key] = _file_entry(path, kind, time.perf_counter() - t, frame=frame, **more)

    # The master is written first; every other format is converted from these same splats. The splat formats
    # get them turned into their readers' frame (exactly back into the input's bytes when that was the frame).
    splat_frame = config.frame
    turned = convert(g, RUN, splat_frame)
    if "ply" in config.formats:
        timed(
            "ply", "3dgs-ply (Inria, binary little-endian)",
            lambda p: write_ply(turned, p, frame=splat_frame), FILE_NAMES["ply"],
        )  # fmt: skip
    if "splat" in config.formats:
        timed("splat", "antimatter15 .splat", lambda p: write_splat(turned, p), FILE_NAMES["splat"])
    if "spz" in config.formats:
        for version in config.spz_versions:
            if version == 4 and not zstd_available():
                skipped["spz4"] = "SPZ v4 needs the zstandard package (pip install zstandard)"
                continue
            name = FILE_NAMES["spz"] if version == 3 else FILE_NAMES["spz4"]
            key = "spz" if version == 3 else "spz4"
            timed(key, f"spz v{version}", lambda p, v=version: write_spz(turned, p, version=v), name)
    if "glb" in config.formats:
        timed("glb", "glTF KHR_gaussian_splatting", lambda p: write_khr_glb(g, p), FILE_NAMES["glb"])
    _write_with_splat_transform(turned, out_dir, config, files, skipped, timed, viewer_settings)
    mesh_info = None
    if "mesh" in config.formats:
        mesh_info = _write_mesh(g, views, out_dir, config, files)
    ply_bytes = files["ply"]["bytes"] if "ply" in files else None
    if ply_bytes:
        for entry in files.values():
            entry["ratio_to_ply"] = round(entry["bytes"] / ply_bytes, 4)
    report = {
        "format": REPORT_FORMAT,
        "version": 1,
        "source": {
            **(source or {}), "kind": "gaussians", "sh_degree": gaussians.sh_degree, "frame": input_frame,
        },
        "frames": {name: FRAMES[name] for name in dict.fromkeys((RUN, splat_frame))},
        "splats": counts.as_dict(),
        "bounding_box": _bbox(g.means),
        "files": files,
        "mesh": mesh_info,
        "skipped": skipped,
        "seconds": {**timings, "total": round(time.perf_counter() - t0, 3)},
    }
    return report


def _write_with_splat_transform(
    turned: Gaussians, out_dir: Path, config: ExportConfig, files: dict, skipped: dict, timed,
    viewer_settings: dict | None,
) -> None:  # fmt: skip
    """SOG, compressed PLY and viewer.html converted by splat-transform from the PLY (the one written, else a
    temporary one)."""
    import tempfile

    from cvd_scene.camera_io import write_json
    from cvd_scene.export import splat_transform
    from cvd_scene.export.ply import write_ply

    wanted = [f for f in ("sog", "cply", "viewer") if f in config.formats]
    if "viewer" in wanted and len(turned) > splat_transform.VIEWER_MAX_SPLATS:
        wanted.remove("viewer")
        skipped["viewer"] = (
            f"{len(turned)} splats is more than a page can inline ({splat_transform.VIEWER_MAX_SPLATS}); "
            "serve the export folder with `cvd-scene view RUN` instead"
        )
    if "viewer" in wanted and config.frame != READERS:
        wanted.remove("viewer")
        skipped["viewer"] = "the SuperSplat viewer reads splat files in the readers' frame; not with --frame run"
    if not wanted:
        return
    if splat_transform.splat_transform_exe() is None:
        skipped.update({f: splat_transform.missing_reason() for f in wanted})
        return
    kinds = {
        "sog": "SOG (PlayCanvas, via splat-transform)",
        "cply": "compressed PLY (PlayCanvas, via splat-transform)",
        "viewer": "SuperSplat viewer page, scene and flythrough inlined (via splat-transform)",
    }
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = files.get("ply") and out_dir / files["ply"]["file"]
        if not src:
            src = write_ply(turned, Path(tmp) / FILE_NAMES["ply"], frame=config.frame)
        settings = None
        if viewer_settings is not None:
            settings = Path(tmp) / FILE_NAMES["viewer_settings"]
            write_json(settings, viewer_settings)
        for fmt in wanted:
            extra = {"viewer_settings": settings} if fmt == "viewer" else {}
            try:
                timed(fmt, kinds[fmt], lambda p, e=extra: splat_transform.convert(src, p, **e), FILE_NAMES[fmt])
            except RuntimeError as e:
                log.warning("%s", e)
                skipped[fmt] = str(e)


def _write_mesh(g: Gaussians, views: list | None, out_dir: Path, config: ExportConfig, files: dict) -> dict:
    from cvd_scene.export.mesh import render_views_from_gaussians, ring_cameras, splat_bounds

    if views:
        source = f"fit views ({len(views)})"
    else:
        lo, hi = splat_bounds(g)
        cams = ring_cameras(lo, hi, size_px=config.mesh_render_size_px)
        log.info(
            "rendering %d depth views of %d splats for the mesh", cams.num_videos * cams.num_frames, len(g)
        )
        views = render_views_from_gaussians(g, cams, device=config.device)
        source = f"rendered from the splats ({len(views)} views, two rings inside the splat bounds)"
    return _write_mesh_and_collider(views, out_dir, config, files, source)


def _write_mesh_and_collider(views: list, out_dir: Path, config: ExportConfig, files: dict, source: str) -> dict:
    """``mesh.glb`` and ``collider.glb`` fused from ``views``; file entries added to ``files``; returns the mesh
    statistics with the coverage of the views by each (open3d ray casting)."""
    from cvd_scene.export.mesh import fuse_tsdf, simplify_mesh, view_coverage, write_mesh_glb

    t = time.perf_counter()
    mesh = fuse_tsdf(views, config.mesh_voxel_m, config.mesh_max_triangles, config.mesh_min_views)
    path = write_mesh_glb(mesh, out_dir / FILE_NAMES["mesh"])
    files["mesh"] = _file_entry(
        path, "glTF mesh (unlit, linear vertex colours, normals)", time.perf_counter() - t, frame=RUN
    )
    t = time.perf_counter()
    collider = simplify_mesh(mesh, config.collider_max_triangles)
    path = write_mesh_glb(collider, out_dir / FILE_NAMES["collider"], name="collider", colours=False)
    files["collider"] = _file_entry(
        path, "glTF mesh (geometry only, for physics)", time.perf_counter() - t, frame=RUN,
        triangles=collider.info["triangles"],
    )  # fmt: skip
    t = time.perf_counter()
    coverage = {"mesh": view_coverage(mesh, views), "collider": view_coverage(collider, views)}
    coverage = {k: {n: round(x, 4) if isinstance(x, float) else x for n, x in v.items()} for k, v in coverage.items()}
    log.info(
        "mesh covers %.1f %% of the views' depth pixels (collider %.1f %% within %.0f cm), measured in %.1f s",
        100 * coverage["mesh"]["covered"], 100 * coverage["collider"]["within_tolerance"],
        100 * coverage["collider"]["tolerance_m"], time.perf_counter() - t,
    )  # fmt: skip
    return {
        **mesh.info, "source": source, "bounding_box": _bbox(mesh.vertices), "coverage_of_views": coverage,
        "collider_triangles": collider.info["triangles"],
    }  # fmt: skip


def export_views(
    views: list, out_dir: str | os.PathLike, config: ExportConfig, source: dict | None = None
) -> dict:
    """A NeRF fit (no Gaussians): the mesh GLB and a coloured point cloud back-projected from ``views``."""
    from cvd_scene.export.mesh import point_cloud_from_views
    from cvd_scene.pointcloud import write_points_ply

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files: dict[str, dict] = {}
    skipped = {f: "a NeRF fit has no Gaussians" for f in config.formats if f in SPLAT_FORMATS}
    mesh_info = None
    if "mesh" in config.formats:
        mesh_info = _write_mesh_and_collider(views, out_dir, config, files, f"fit views ({len(views)})")
    t = time.perf_counter()
    points, colors = point_cloud_from_views(views, config.point_cloud_max_points)
    write_points_ply(out_dir / FILE_NAMES["points"], points, colors)
    files["points"] = _file_entry(
        out_dir / FILE_NAMES["points"],
        "point-cloud ply (xyz + rgb)",
        time.perf_counter() - t,
        points=len(points),
        frame=RUN,
    )
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "source": {**(source or {}), "kind": "views"},
        "frames": {RUN: FRAMES[RUN]},
        "splats": None,
        "bounding_box": _bbox(points),
        "files": files,
        "mesh": mesh_info,
        "skipped": skipped,
        "seconds": {"total": round(time.perf_counter() - t0, 3)},
    }


def write_camera_path(
    out_dir: str | os.PathLike, cameras: Cameras, report: dict, fps: float, transition_s: float,
    ns_frame: NerfstudioFrame | None = None, ns_frame_source: str = "frame.json",
) -> None:  # fmt: skip
    """Write ``camera_path.json`` for ``cameras`` (in the nerfstudio model frame when ``ns_frame`` is the fit's
    normalisation, read from ``ns_frame_source``) and the same flythrough as SuperSplat viewer settings
    (``viewer_settings.json``, in the run's world: the frame the SuperSplat viewer shows for the readers'-frame
    ``scene.ply``); record both in ``report``."""
    from cvd_scene.camera_io import write_json
    from cvd_scene.export.camera_path import (
        camera_path_json,
        nerfstudio_from_world,
        supersplat_viewer_settings,
    )

    M, frame = None, "world"
    if ns_frame is not None:
        M = nerfstudio_from_world(ns_frame.transform, ns_frame.scale)
        frame = f"nerfstudio model frame ({ns_frame_source})"
    path = Path(out_dir) / FILE_NAMES["camera_path"]
    t = time.perf_counter()
    doc = camera_path_json(cameras, fps=fps, transition_s=transition_s, ns_from_world=M, frame_name=frame)
    write_json(path, doc)
    report["files"]["camera_path"] = _file_entry(path, "nerfstudio camera path", time.perf_counter() - t)
    t = time.perf_counter()
    settings = Path(out_dir) / FILE_NAMES["viewer_settings"]
    write_json(settings, supersplat_viewer_settings(cameras, fps=fps, transition_s=transition_s))
    report["files"]["viewer_settings"] = _file_entry(
        settings, "SuperSplat viewer settings (flythrough)", time.perf_counter() - t
    )
    report["camera_path"] = {
        "frames": len(doc["camera_path"]),
        "seconds": doc["seconds"],
        "fps": fps,
        "frame": frame,
    }


def write_report(out_dir: str | os.PathLike, report: dict) -> Path:
    """Write ``report.json`` (atomically) and return its path."""
    from cvd_scene.camera_io import write_json

    path = Path(out_dir) / FILE_NAMES["report"]
    write_json(path, report)
    return path
