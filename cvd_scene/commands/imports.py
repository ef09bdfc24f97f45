"""``cvd-scene import``: a run whose videos are the user's own pictures (generate stage ``imported``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import tyro

from cvd_scene.commands.common import CliError, Overrides, RunDir, app, command_line, resolve_config
from cvd_scene.config import parse_overrides


def posed_import_overrides(overrides: tuple[str, ...], source: str, images: str | None, downscale: int) -> dict:
    """The config overrides of ``cvd-scene import`` from a capture with its own cameras (a ``transforms.json``
    folder or a COLMAP model): the plan takes its cameras, the generate stage its pictures; both are read now, so
    bad input is one line before anything is written."""
    from cvd_scene.generate.sources import SourceFormatError, posed_cameras, read_posed_source

    try:
        src = read_posed_source(source, images, downscale)
        posed_cameras(src)
    except SourceFormatError as e:
        raise CliError(str(e)) from None
    ov = parse_overrides(list(overrides))
    for key in ("plan", "generate"):
        if not isinstance(ov.setdefault(key, {}), dict):
            raise CliError(f"override {key}={ov[key]!r} must set keys of the {key} section")
    ov["plan"].update(cameras_file=str(src.path.resolve()), re10k_files=[], cameras_downscale=downscale,
                      cameras_images=os.path.abspath(images) if images else None)  # fmt: skip
    ov["generate"].update(generator="imported", source=str(src.root.resolve()))
    if len(src.files) <= EXHAUSTIVE_MAX_FRAMES:  # a capture's pictures come in no order: match every pair
        if not isinstance(ov.setdefault("register", {}), dict):
            raise CliError(f"override register={ov['register']!r} must set keys of the register section")
        ov["register"].setdefault("pairing", "exhaustive")
    return ov


EXHAUSTIVE_MAX_FRAMES = 150
"""A capture with its own cameras of at most this many pictures is registered with every pair matched
(``register.pairing=exhaustive``, unless given): its pictures have no video order to pair them by."""


def import_overrides(overrides: tuple[str, ...], source: str, cameras: str | None) -> dict:
    """The config overrides of ``cvd-scene import``: the source folder and the cameras file (absolute paths), the
    ``imported`` generator; without cameras the poses are unknown and ``register.mode`` is ``free``. The folder
    and the cameras are read now, so bad input is one line before anything is written."""
    from cvd_scene.camera_io import CameraFileError, read_cameras_json
    from cvd_scene.generate.imported import SourceError, check_videos, decode_videos, source_videos

    try:
        videos = source_videos(source)
    except SourceError as e:
        raise CliError(str(e)) from None
    ov = parse_overrides(list(overrides))
    for key in ("plan", "generate", "register"):
        if not isinstance(ov.setdefault(key, {}), dict):
            raise CliError(f"override {key}={ov[key]!r} must set keys of the {key} section")
    if cameras is None:  # poses unknown: the plan stage reads the pictures, register maps them
        from cvd_scene.generate.imported import unknown_cameras

        fps = ov["generate"].get("import_fps")
        try:
            unknown_cameras(videos, 60.0, sample_fps=float(fps) if isinstance(fps, (int, float)) and fps > 0 else None)
        except SourceError as e:
            raise CliError(str(e)) from None
        ov["plan"].update(cameras_file=None, re10k_files=[])
        ov["generate"].update(generator="imported", source=os.path.abspath(source))
        ov["register"].setdefault("mode", "free")
        return ov
    if not Path(cameras).is_file():
        raise CliError(f"--cameras {cameras}: no such file")
    try:
        cams = read_cameras_json(cameras)
        fps = (ov.get("generate") or {}).get("import_fps") if isinstance(ov.get("generate"), dict) else None
        decoded = decode_videos(videos, float(fps) if isinstance(fps, (int, float)) and fps > 0 else cams.fps)
        check_videos(videos, cams.video_ids, cams.num_frames, cams.width, cams.height, decoded)
    except (CameraFileError, SourceError, OSError, UnicodeDecodeError) as e:
        raise CliError(str(e)) from None
    ov["plan"].update(cameras_file=os.path.abspath(cameras), re10k_files=[])
    ov["generate"].update(generator="imported", source=os.path.abspath(source))
    return ov


@app.command(name="import")
def import_command(
    run_dir: RunDir,
    source: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SOURCE")],
    overrides: Overrides = (),
    cameras: str | None = None,
    images: str | None = None,
    downscale: int = 1,
    preset: str = "demo",
    redo: bool = False,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Start RUN_DIR from your own pictures: plan/ from --cameras or a capture's own cameras (without either: poses
    unknown, the field of view from EXIF or plan.fov_x_deg), generate/ from SOURCE (frames, videos, contact sheet;
    no ground truth); then `cvd-scene run RUN_DIR` registers (register.mode=free without cameras), fits and exports.

    Args:
        run_dir: The run folder (created if missing).
        source: A folder of pictures (one video) or of sub-folders of pictures (one video each), taken in file-name
            order; every picture the cameras' size after its EXIF orientation. Or a video file, or a folder of them
            (one video each, frames sampled at generate.import_fps). Or a capture with its own cameras (below).
        overrides: Config overrides as KEY=VALUE (for the later stages too, e.g. fit.iterations=2000).
        cameras: A cameras.json (docs/architecture.md schema) with one video per source video and one frame per
            picture. Not needed when SOURCE is a capture with its own cameras: a nerfstudio / instant-ngp
            transforms.json (or its folder) or a COLMAP model (a folder with cameras/images/points3D .bin or .txt,
            or one holding sparse/0); its poses are converted into the run's world once, its lens distortion
            removed from the pictures. Without either the poses are unknown: register --mode free estimates them
            and levels the world from the cameras (register.camera_height_m, register.scale_m).
        images: COLMAP model: the folder of its pictures (default: an images/ folder next to the model or above).
        downscale: Capture with its own cameras: read its images_N/ copies (N = 2, 4, 8, ...).
        preset: Run preset for the later stages: a name in configs/run/ or a path to a YAML file.
        redo: Import again even if the run already holds this import.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    from cvd_scene.generate.sources import posed_source_kind
    from cvd_scene.logs import setup_logging
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.preflight import validate_stages

    setup_logging(quiet, verbose)
    if cameras is None and posed_source_kind(source) is not None:
        ov = posed_import_overrides(overrides, source, images, downscale)
    else:
        if images is not None or downscale != 1:
            raise CliError(
                f"--images / --downscale read a capture with its own cameras (a transforms.json or a COLMAP model); "
                f"{source} is {'given with --cameras' if cameras else 'not one'}"
            )
        ov = import_overrides(overrides, source, cameras)
    config, preset_name = resolve_config(None, preset, ov)
    validate_stages(config, ["plan", "generate"], run_dir)
    redo_set = ("plan", "generate") if redo else ()
    results = run_stages(run_dir, config, ["plan", "generate"], preset=preset_name, redo=redo_set, command=command_line())
    failed = [n for n, r in results.items() if r is not None and r.status == "failed"]
    if failed:
        raise CliError(f"stage {failed[0]} failed: {results[failed[0]].message}")
