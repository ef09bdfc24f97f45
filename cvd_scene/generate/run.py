"""Stage ``generate``: N videos along the plan, by the reference renderer or the CVD model.

Both generators return frames ``[V, F, H, W, 3]`` float32 in [0, 1] (plus report entries); everything written
from frames is shared (:func:`write_generate_outputs`), so ``generate/`` has one layout whichever generator made
it: ``frames/<vid>/<NNNN>.png``, ``videos/<vid>.mp4``, ``contact_sheet.png``, ``transforms.json`` (planned poses)
and ``report.json``. The reference generator adds ``gt/depth/<vid>/<NNNN>.npy``, ``gt/scene.glb`` and
``gt/scene.json``. With ``image`` (CVD only) the picture is copied to ``input<ext>``, its crop to the plan's
size is ``input_crop.png``, and it is frame 0 of every video. Import-light: heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cvd.defaults import peak_memory_mb
from cvd_scene.generate.config import GenerateConfig

if TYPE_CHECKING:
    import numpy as np

    from cvd_scene.cameras import Cameras
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import StageResult

__all__ = ["GenerateConfig", "run_generate", "validate", "write_generate_outputs"]

log = logging.getLogger(__name__)


def validate(config: RunConfig, size) -> None:
    """Before any stage runs: the model name and the memory and time generating the plan's ``size`` (a
    :class:`cvd_scene.stages.PlanSize`) needs; ``ValueError`` names the keys."""
    from cvd_scene.estimates import check_estimate, frames_estimate, reference_estimate
    from cvd_scene.paths import check_id

    gen = config.generate
    if gen.image is not None and gen.generator != "cvd":
        raise ValueError(
            f"generate.image={gen.image!r}: the {gen.generator} generator renders procedural scenes and cannot "
            "start from a picture; use generate.generator=cvd (e.g. --preset demo-learned)"
        )
    if gen.generator == "imported":
        if not gen.source:
            raise ValueError("generate.generator=imported needs generate.source (cvd-scene import RUN_DIR SOURCE)")
        if not Path(gen.source).is_dir() and not Path(gen.source).is_file():
            raise ValueError(f"generate.source={gen.source!r}: no such folder or file")
        return
    if gen.generator == "reference":
        keys = {**size.keys, "generate.samples_per_pixel": gen.samples_per_pixel}
        est = reference_estimate(size.videos, size.frames, size.width, size.height, gen.samples_per_pixel, keys)
    else:
        if gen.weights is None:
            check_id(gen.model, "generate.model")
        est = frames_estimate(size.videos, size.frames, size.width, size.height, dict(size.keys))
    check_estimate(est)


# ---------------------------------------------------------------------------------------------- stage


def run_generate(config: RunConfig, run_dir: Path, out_dir: Path) -> StageResult:
    """Make the videos of the plan in ``run_dir/plan/cameras.json`` and write ``generate/`` into ``out_dir``."""
    from cvd_scene.camera_io import read_cameras_json
    from cvd_scene.runfolder import RunLayout, StageRefused

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cams_path = RunLayout(run_dir).cameras
    if not cams_path.is_file():
        raise StageRefused(
            f"stage 'generate' needs {cams_path}; run the plan stage first (cvd-scene plan {run_dir})"
        )
    cams = read_cameras_json(cams_path)
    from cvd_scene.stages import PlanSize

    # The plan on disk may differ from the config's sizes (a cameras file, an earlier plan): check it too.
    validate(config, PlanSize(cams.num_videos, cams.num_frames, cams.width, cams.height, str(cams_path),
                              {"plan": str(cams_path)}))  # fmt: skip
    gen = config.generate
    if not cams.poses_known and gen.generator != "imported":
        raise StageRefused(
            f"generate.generator={gen.generator}: {cams_path} has no poses (pictures imported without poses); only "
            "the imported generator reads such a plan"
        )
    picture = _read_image(gen, cams, out_dir) if gen.image is not None else None
    t0 = time.perf_counter()
    if gen.generator == "reference":
        frames, report = _generate_reference(config, cams, out_dir)
    elif gen.generator == "cvd":
        from cvd_scene.generate.cvd_sampling import generate_cvd

        frames, report = generate_cvd(config, cams, run_dir, picture)
    elif gen.generator == "imported":
        frames, report = _generate_imported(config, cams)
    else:  # the config type admits only the two; a hand-made config object may not
        raise ValueError(f"generate.generator must be 'reference', 'cvd' or 'imported', got {gen.generator!r}")
    generate_s = time.perf_counter() - t0
    write_s = write_generate_outputs(frames, cams, out_dir, contact_sheet_frames=gen.contact_sheet_frames)
    report = {
        "generator": gen.generator,
        "model": report.pop("model", None),
        "seed": config.seed,
        "prompt": config.prompt,
        "videos": cams.num_videos,
        "frames": cams.num_frames,
        "width": cams.width,
        "height": cams.height,
        "video_size": [cams.width + cams.width % 2, cams.height + cams.height % 2],
        "unet_calls": report.pop("unet_calls", 0),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "generate_time_s": round(generate_s, 3),
        "write_time_s": round(write_s, 3),
        "peak_memory_mb": round(peak_memory_mb()[0], 1),  # the process's peak resident memory
        **report,
    }
    if picture is not None:
        report["image"] = picture[1]
    from cvd_scene.camera_io import write_json

    write_json(RunLayout.of_stage("generate", out_dir).generate_report, report)
    from cvd_scene.runfolder import StageResult

    summary = {
        k: report[k]
        for k in ("generator", "videos", "frames", "width", "height", "wall_time_s")
        if k in report
    }
    for k in ("scene_kind", "caption", "valid_fraction", "source", "source_kind", "lens_models", "undistorted_frames"):
        if k in report:
            summary[k] = report[k]
    if picture is not None:
        summary["image"] = (RunLayout(run_dir).stage("generate") / picture[1]["file"]).relative_to(run_dir).as_posix()
    status, message = (
        "finished",
        f"{cams.num_videos} videos x {cams.num_frames} frames by the {gen.generator} generator",
    )
    empty = report.get("empty_frames") or []
    if empty:
        status = "partial"
        message += (
            f"; {len(empty)} frame(s) see almost nothing of the scene (e.g. {empty[0]}): check the plan"
        )
    return StageResult(status=status, summary=summary, message=message)


def write_generate_outputs(
    frames: np.ndarray, cams: Cameras, out_dir: Path, contact_sheet_frames: int = 8
) -> float:
    """Write what every generator writes: frames, videos, contact sheet and ``transforms.json`` (not for cameras
    with unknown poses); returns seconds.

    ``frames`` [V, F, H, W, 3] float in [0, 1] must match the plan ``cams`` (videos, frames, size).
    """
    import numpy as np

    from cvd_scene.camera_io import write_transforms_json
    from cvd_scene.media import contact_sheet, write_frames, write_mp4
    from cvd_scene.runfolder import RunLayout

    t0 = time.perf_counter()
    want = (cams.num_videos, cams.num_frames, cams.height, cams.width, 3)
    if tuple(np.shape(frames)) != want:
        raise ValueError(
            f"generated frames have shape {np.shape(frames)}, the plan needs {want} [V, F, H, W, 3]"
        )
    files = RunLayout.of_stage("generate", out_dir)
    write_frames(frames, files.frames, cams.video_ids)
    if cams.width % 2 or cams.height % 2:
        log.info(
            "generate: videos/*.mp4 are padded to %dx%d (H.264 needs even sizes, the last row/column repeated); "
            "frames/ keep the plan's %dx%d",
            cams.width + cams.width % 2,
            cams.height + cams.height % 2,
            cams.width,
            cams.height,
        )
    for v, vid in enumerate(cams.video_ids):
        write_mp4(frames[v], files.video(vid), fps=cams.fps)
    contact_sheet(
        frames, files.contact_sheet, max_frames=contact_sheet_frames, video_ids=cams.video_ids
    )
    if cams.poses_known:
        write_transforms_json(
            cams, files.generate_transforms, files.relative(files.frames, files.generate_transforms.parent)
        )
    else:
        log.info("generate: no transforms.json (the pictures' poses are unknown; register writes one)")
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ generators


def _generate_reference(config: RunConfig, cams: Cameras, out_dir: Path) -> tuple[np.ndarray, dict]:
    """Build the prompt's procedural scene, render the plan, write ``gt/``; returns frames and report entries."""
    import numpy as np

    from cvd_scene.camera_io import write_json
    from cvd_scene.logs import progress_enabled
    from cvd_scene.reference import build_scene, render
    from cvd_scene.runfolder import RunLayout, frame_key

    gen = config.generate
    t0 = time.perf_counter()
    scene = build_scene(
        config.prompt,
        config.seed,
        kind=gen.scene,
        moving_objects=gen.moving_objects,
        texels_per_m=gen.texels_per_m,
    )
    build_s = time.perf_counter() - t0
    log.info("reference scene: %s (%s, seed %d)", scene.caption, scene.kind, config.seed)
    _warn_outside(scene, cams)
    out = render(scene, cams, samples_per_pixel=gen.samples_per_pixel, progress=progress_enabled())
    files = RunLayout.of_stage("generate", out_dir)
    for v, vid in enumerate(cams.video_ids):
        for f in range(cams.num_frames):
            path = files.gt_depth(vid, f)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, out.depth[v, f].astype(np.float32))
    scene.export_glb(files.gt_scene_glb)
    write_json(files.gt_scene_json, scene.describe())
    valid = out.mask.mean(axis=(2, 3))  # [V, F]
    empty = [frame_key(cams.video_ids[v], f) for v, f in zip(*np.nonzero(valid < 0.02))]
    report = {
        "model": None,
        "unet_calls": 0,
        "scene_kind": scene.kind,
        "caption": scene.caption,
        "samples_per_pixel": gen.samples_per_pixel,
        "moving_objects": len(scene.moving),
        "scene_build_s": round(build_s, 3),
        "render_s": round(out.seconds, 3),
        "render_fps": round(cams.num_videos * cams.num_frames / max(out.seconds, 1e-9), 2),
        "valid_fraction": round(float(out.mask.mean()), 4),
        "empty_frames": empty,
        "depth_range_m": [
            round(float(out.depth[out.mask].min()), 4),
            round(float(out.depth[out.mask].max()), 4),
        ]
        if out.mask.any()
        else None,
    }
    return out.rgb, report


def _read_image(gen: GenerateConfig, cams: Cameras, out_dir: Path) -> tuple[object, dict]:
    """``generate.image``: the picture (read upright, checked) and its report entry; copies the file into
    ``out_dir`` as ``input<ext>`` so the run keeps what it started from. Refuses a plan whose videos do not
    start at one camera (the picture is frame 0 of every video)."""
    import shutil

    import numpy as np

    from cvd_scene.generate import picture as pic
    from cvd_scene.plan.planning import common_start_error
    from cvd_scene.runfolder import StageRefused

    try:
        picture = pic.read_picture(gen.image)
    except pic.PictureError as e:
        raise StageRefused(str(e).replace("--image", "generate.image", 1)) from None
    start_error = common_start_error(cams) if cams.num_videos > 1 else 0.0
    if start_error > 1e-4:
        raise StageRefused(
            f"generate.image needs the plan's videos to start at one camera (the picture is frame 0 of every "
            f"video); their first cameras differ by up to {start_error:.3g}"
        )
    ext = Path(gen.image).suffix.lower()
    ext = ext if ext and len(ext) <= 6 and ext[1:].isalnum() else f".{picture.format.lower()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gen.image, out_dir / f"input{ext}")
    from PIL import Image

    crop = pic.cover_crop(picture, cams.width, cams.height)  # [H, W, 3]
    Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(out_dir / "input_crop.png")
    fov_plan = 2 * float(np.degrees(np.arctan(cams.width / (2 * cams.K[0, 0, 0, 0]))))
    fov_exif = pic.fov_x_deg(picture, cams.width, cams.height)
    if fov_exif is not None and abs(fov_exif - fov_plan) > 2.0:
        log.warning(
            "the picture's EXIF focal length (%g mm, 35 mm equivalent) gives a %.1f deg field of view at the "
            "plan's %dx%d, the plan has %.1f deg: plan again with plan.fov_x_deg=%.1f",
            picture.focal_35mm_mm, fov_exif, cams.width, cams.height, fov_plan, fov_exif,
        )  # fmt: skip
    entry = {
        "source": str(Path(gen.image).resolve()),
        "file": f"input{ext}",
        "crop_file": "input_crop.png",
        "sha256": picture.sha256,
        "format": picture.format,
        "size": [picture.width, picture.height],
        "exif_orientation": picture.orientation,
        "focal_35mm_mm": picture.focal_35mm_mm,
        "fov_x_deg_exif": None if fov_exif is None else round(fov_exif, 2),
        "fov_x_deg_plan": round(fov_plan, 2),
        "crop_box_px": [round(x, 2) for x in pic.crop_box(picture.width, picture.height, cams.width, cams.height)],
    }
    return picture, entry


def _generate_imported(config: RunConfig, cams: Cameras) -> tuple[np.ndarray, dict]:
    """The user's pictures from ``generate.source`` as the videos of the plan (no ground truth): sub-folders are
    matched to the plan's videos by id when their names are the plan's ids, else in order
    (:func:`cvd_scene.generate.imported.check_videos`)."""
    from cvd_scene.generate.imported import (
        SourceError,
        check_videos,
        decode_videos,
        read_videos,
        source_videos,
    )
    from cvd_scene.runfolder import StageRefused

    source = Path(config.generate.source)
    if "import" in cams.extras:  # a capture with its own cameras: the plan names every frame's file and lens
        from cvd_scene.generate.sources import SourceFormatError, read_posed_frames

        try:
            frames, report = read_posed_frames(cams)
        except SourceFormatError as e:
            raise StageRefused(str(e)) from None
        return frames, {"model": None, "unet_calls": 0, "source": str(source.resolve()), **report}
    try:
        found = source_videos(source)
        fps = config.generate.import_fps or cams.fps
        decoded = decode_videos(found, fps)
        videos = check_videos(found, cams.video_ids, cams.num_frames, cams.width, cams.height, decoded)
        if [v.id for v in videos] != list(cams.video_ids):
            log.info("import: source videos %s taken as the cameras' %s, in order", [v.id for v in videos],
                     list(cams.video_ids))  # fmt: skip
        frames = read_videos(videos, cams.width, cams.height, decoded)
    except SourceError as e:
        raise StageRefused(str(e)) from None
    folder = source if source.is_dir() else source.parent
    report = {
        "model": None,
        "unet_calls": 0,
        "source": str(source.resolve()),
        "source_videos": {
            vid: [str(p.relative_to(folder)) for p in (v.files[:1] if v.is_file else v.files)]
            for vid, v in zip(cams.video_ids, videos)
        },
    }
    if decoded:
        report["import_fps"] = fps
    return frames, report


def _warn_outside(scene, cams: Cameras) -> None:
    """Log a warning for planned cameras outside the scene's bounds (their views may show the scene's outside)."""
    import numpy as np

    lo, hi = scene.bounds
    pos = cams.positions.reshape(-1, 3)
    outside = np.any((pos < lo - 1e-6) | (pos > hi + 1e-6), axis=1)
    if outside.any():
        log.warning(
            "%d of %d planned cameras are outside the %s scene's bounds %s .. %s",
            int(outside.sum()),
            len(pos),
            scene.kind,
            np.round(lo, 2).tolist(),
            np.round(hi, 2).tolist(),
        )
