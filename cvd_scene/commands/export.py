"""``cvd-scene export``: VR/web assets of a run (``RUN_DIR``) or of any 3DGS file (``--from FILE --out DIR``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

import tyro

from cvd_scene.commands.common import CliError, Overrides, app, run_single_stage
from cvd_scene.config import parse_overrides

log = logging.getLogger("cvd_scene.commands.export")

OptionalRunDir = Annotated[Path | None, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
"""The run folder; left out with ``--from``."""

READERS = {".ply": "read_ply", ".splat": "read_splat", ".spz": "read_spz", ".glb": "read_khr_glb"}
"""Input files ``--from`` reads, by suffix (module ``cvd_scene.export``)."""


def input_frame(path: Path) -> str:
    """Frame of a ``--from`` file: glTF is the run's Y-up world; PLY, ``.splat`` and SPZ are in the 3DGS readers'
    frame (as Inria PLYs are) unless a cvd-scene PLY header states otherwise."""
    from cvd_scene.export.axes import READERS, RUN
    from cvd_scene.export.ply import ply_frame

    suffix = path.suffix.lower()
    if suffix == ".glb":
        return RUN
    return (ply_frame(path) if suffix == ".ply" else None) or READERS


def read_splat_file(path: Path):
    """Gaussians from a 3DGS PLY (Inria/nerfstudio/gsplat), ``.splat``, SPZ or KHR_gaussian_splatting GLB."""
    import cvd_scene.export as ex

    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CliError(f"--from {path}: unknown file type {path.suffix!r}; reads {', '.join(READERS)}")
    if not path.is_file():
        raise CliError(f"--from {path}: no such file")
    try:
        gaussians = getattr(ex, reader)(path)
    except (ValueError, OSError, KeyError, IndexError, EOFError) as e:
        message = str(e) if str(path) in str(e) else f"--from {path}: cannot be read ({e})"
        raise CliError(message) from None
    if len(gaussians) == 0:
        raise CliError(f"--from {path}: holds no splats (0 Gaussians); nothing to export")
    return gaussians


def export_file(
    source: Path, out: Path, formats: str | None, max_splats: int | None, overwrite: bool, overrides: dict,
    frame: str | None = None,
) -> dict:  # fmt: skip
    """``export --from``: convert one splat file into ``out``; refuses to replace files unless ``overwrite``."""
    from cvd_scene.config import from_dict, merge, to_dict
    from cvd_scene.export.config import ExportConfig
    from cvd_scene.export.pipeline import export_gaussians, planned_files, write_report

    data = merge(to_dict(ExportConfig()), overrides.get("export", {}))
    if formats is not None:
        data["formats"] = formats.split(",")
    if max_splats is not None:
        data["max_splats"] = max_splats
    if frame is not None:
        data["frame"] = frame
    try:
        config = from_dict(ExportConfig, data, prefix="export")
    except ValueError as e:
        raise CliError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; --out names the folder to write into")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise CliError(f"--out {out}: {above} is a file, so no folder can be made under it")
    targets = [out / name for name in planned_files(config, has_gaussians=True, with_camera_path=False)]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise CliError(
            f"{out} already holds {', '.join(p.name for p in existing)}; pass --overwrite to replace them "
            "or choose another --out folder"
        )
    gaussians = read_splat_file(source)
    frame_in = input_frame(source)
    log.info(
        "read %d splats (SH degree %d, %s frame) from %s", len(gaussians), gaussians.sh_degree, frame_in, source
    )
    # The highest folder this command creates: everything in it is its own, so a failed export removes it.
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    try:
        try:
            report = export_gaussians(
                gaussians, out, config, source={"path": str(source.resolve()), "splats": len(gaussians)},
                input_frame=frame_in,
            )  # fmt: skip
            write_report(out, report)
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
    except OSError as e:
        raise CliError(f"--out {out}: cannot write ({e.strerror or e})") from None
    except ValueError as e:  # the splats themselves cannot be exported (e.g. none left after removing NaN/Inf)
        raise CliError(f"{source}: {e}") from None
    for entry in report["files"].values():
        log.info("wrote %s (%.1f MB)", out / entry["file"], entry["bytes"] / 1e6)
    s = report["splats"]
    log.info(
        "%d splats in, %d with NaN/Inf removed, %d pruned by the budget, %d out",
        s["in"], s["nonfinite_removed"], s["pruned_by_budget"], s["out"],
    )  # fmt: skip
    return report


@app.command(name="export")
def export_command(
    run_dir: OptionalRunDir = None,
    overrides: Overrides = (),
    formats: str | None = None,
    max_splats: int | None = None,
    frame: str | None = None,
    from_file: Annotated[Path | None, tyro.conf.arg(name="from", metavar="FILE")] = None,
    out: Path | None = None,
    overwrite: bool = False,
    preset: str | None = None,
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Export a fitted scene for VR and the web: scene.ply (master 3DGS PLY), scene.splat, scene.spz (+ scene_v4.spz),
    scene_khr.glb (KHR_gaussian_splatting), scene.sog and scene.compressed.ply (via splat-transform), mesh.glb,
    collider.glb, camera_path.json and report.json.

    Two forms: `cvd-scene export RUN_DIR [--formats ...] [--max-splats N]` writes RUN_DIR/export from the fit;
    `cvd-scene export --from FILE --out DIR [--formats ...]` converts any 3DGS PLY (nerfstudio, gsplat, Inria),
    .splat, .spz or KHR GLB file.

    scene.ply, scene.splat and the SPZ files are in the frame 3DGS viewers assume (the run's Y-up world turned
    180 degrees about z); the GLB files stay Y-up as glTF defines. With --from, PLY, .splat and SPZ inputs are
    taken to be in that readers' frame (a cvd-scene PLY says its frame in its header), GLB inputs Y-up.

    Args:
        run_dir: The run folder (not with --from).
        overrides: Config overrides as KEY=VALUE, e.g. export.mesh_max_triangles=100000.
        formats: Comma-separated formats: ply, splat, spz, glb, sog, cply (compressed PLY; these two through
            splat-transform, skipped when it is not installed), mesh (mesh and collider GLB) (default: all).
        max_splats: Splat budget, e.g. 400000 for Quest-class headsets; least important splats pruned first.
        frame: Frame of the PLY, .splat and SPZ files: readers (default; what 3DGS viewers assume) or run
            (the run's Y-up world as it is).
        from_file: Convert this file instead of a run's fit (needs --out).
        out: Output folder of --from (created if missing).
        overwrite: With --from, replace files already in --out.
        preset: Run preset for RUN_DIR (default: the run folder's own config, else demo).
        redo: Export again even if the stage already finished with this config.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    from cvd_scene.logs import setup_logging

    if from_file is not None and run_dir is not None and "=" in str(run_dir) and not run_dir.exists():
        # With --from there is no RUN_DIR: the first positional word is the first KEY=VALUE override.
        overrides, run_dir = (str(run_dir), *overrides), None
    ov = parse_overrides(list(overrides))
    if from_file is not None:
        if run_dir is not None:
            raise CliError(f"give either RUN_DIR ({run_dir}) or --from FILE ({from_file}), not both")
        if out is None:
            raise CliError("--from FILE needs --out DIR (the folder to write into)")
        setup_logging(quiet, verbose)
        export_file(from_file, out, formats, max_splats, overwrite, ov, frame)
        return
    if run_dir is None:
        raise CliError(
            "give a run folder (cvd-scene export RUN_DIR) or a file (cvd-scene export --from FILE --out DIR)"
        )
    if out is not None or overwrite:
        raise CliError("--out and --overwrite go with --from; a run's export is written to RUN_DIR/export")
    section = ov.setdefault("export", {})
    if not isinstance(section, dict):
        raise CliError(
            f"override export={section!r} must set keys of the export section, e.g. export.max_splats=400000"
        )
    if formats is not None:
        section["formats"] = [f.strip() for f in formats.split(",") if f.strip()]
    if max_splats is not None:
        section["max_splats"] = max_splats
    if frame is not None:
        section["frame"] = frame
    if not section:
        del ov["export"]
    run_single_stage("export", run_dir, preset, ov, redo, quiet, verbose)
