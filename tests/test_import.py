"""``cvd-scene import``: a run from the user's own pictures (generate stage ``imported``, no ground truth) that the
later stages take as any run; and its one-line refusals.

The pictures are a reference-renderer run's frames saved as JPEGs in sub-folders (one with an EXIF orientation
tag and its pixels stored turned), with the run's own cameras as the cameras file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cvd_scene.cli import main

VIDEOS, FRAMES = 2, 6
SMALL = ["--quiet", f"plan.num_videos={VIDEOS}", f"plan.num_frames={FRAMES}", "plan.width=128", "plan.height=128"]


def frame_name(f: int) -> str:
    return f"IMG_{(f + 1) * 3}.jpg"  # IMG_3 ... IMG_18: file-name order is not natural order


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(reference run, source folder of JPEGs, [V, F, H, W, 3] the frames as rendered)."""
    root = tmp_path_factory.mktemp("import")
    ref = root / "ref"
    assert main(["run", str(ref), "--until", "generate", *SMALL, "generate.samples_per_pixel=1"]) == 0
    frames = np.stack(
        [
            [np.asarray(Image.open(ref / f"generate/frames/v{v:02d}/{f:04d}.png"), np.uint8) for f in range(FRAMES)]
            for v in range(VIDEOS)
        ]
    )
    src = root / "photos"
    for v in range(VIDEOS):
        (src / f"v{v:02d}").mkdir(parents=True)
        for f in range(FRAMES):
            img, exif = frames[v, f], Image.Exif()
            if (v, f) == (1, 2):  # stored turned anticlockwise, shown upright through EXIF orientation 6
                img = np.ascontiguousarray(np.rot90(img, 1))
                exif[0x0112] = 6
            Image.fromarray(img).save(src / f"v{v:02d}" / frame_name(f), quality=95, exif=exif)
    (src / "v00" / "notes.txt").write_text("not a picture: ignored\n")
    return ref, src, frames.astype(np.float32) / 255


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    ref, src, _ = source
    run = tmp_path_factory.mktemp("imported") / "run"
    assert main(["import", str(run), str(src), "--cameras", str(ref / "plan" / "cameras.json"), "--quiet"]) == 0
    return run


def test_import_writes_a_run_whose_generate_stage_is_the_pictures(source, imported):
    ref, src, frames = source
    state = json.loads((imported / "run.json").read_text())
    assert state["stages"]["generate"]["status"] == "finished"
    assert state["stages"]["generate"]["summary"]["generator"] == "imported"
    assert state["config"]["generate"]["source"] == str(src.resolve())
    rep = json.loads((imported / "generate" / "report.json").read_text())
    assert rep["source_videos"]["v00"] == [f"v00/{frame_name(f)}" for f in range(FRAMES)]
    assert not (imported / "generate" / "gt").exists()  # no ground truth
    for v in range(VIDEOS):
        for f in range(FRAMES):
            got = np.asarray(Image.open(imported / f"generate/frames/v{v:02d}/{f:04d}.png"), np.float32) / 255
            assert np.abs(got - frames[v, f]).mean() < 0.02, (v, f)  # JPEG at quality 95; upright
    planned = json.loads((ref / "plan" / "cameras.json").read_text())["videos"]
    copied = json.loads((imported / "plan" / "cameras.json").read_text())["videos"]
    assert [fr["world_from_cam"] for fr in copied[1]["frames"]] == [fr["world_from_cam"] for fr in planned[1]["frames"]]
    for name in ("videos/v00.mp4", "contact_sheet.png", "transforms.json"):
        assert (imported / "generate" / name).is_file(), name


def test_an_imported_run_registers_without_ground_truth(imported, tmp_path):
    """Measured: register --mode free places all 12 frames (128 px JPEGs of the reference room), 1.5 deg median
    rotation error against the cameras file."""
    run = tmp_path / "run"
    shutil.copytree(imported, run)
    assert main(["register", str(run), "--mode", "free", "--quiet"]) == 0
    rep = json.loads((run / "register" / "report.json").read_text())
    assert rep["registered"] >= 10, rep["message"]
    assert rep["rotation_error_deg_median"] < 5


@pytest.mark.slow
def test_an_imported_run_goes_on_to_the_exports(imported, tmp_path):
    """register --mode free, a short fit and export on the imported run, as on a generated one (measured: 16.6 dB
    held-out after 150 iterations, 217 Gaussians; about a minute on 2 busy cores)."""
    run = tmp_path / "run"
    shutil.copytree(imported, run)
    assert main(["register", str(run), "--mode", "free", "--quiet"]) == 0
    assert main(["fit", str(run), "--quiet", "fit.iterations=150", "fit.time_budget_s=120"]) == 0
    assert main(["export", str(run), "--quiet", "--formats", "ply,splat,spz,glb"]) == 0
    metrics = json.loads((run / "fit" / "metrics.json").read_text())
    assert metrics["psnr"] > 14, metrics["psnr"]
    assert (run / "export" / "scene.ply").stat().st_size > 1000
    assert "imported" in (run / "report.html").read_text()


def test_bad_sources_are_one_line_and_write_nothing(source, tmp_path, capsys):
    ref, src, _ = source
    cams = str(ref / "plan" / "cameras.json")
    uneven = tmp_path / "uneven"
    shutil.copytree(src, uneven)
    (uneven / "v01" / frame_name(0)).unlink()
    small = tmp_path / "small"
    shutil.copytree(src, small)
    Image.new("RGB", (64, 64)).save(small / "v01" / frame_name(4))
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    (broken / "v00" / frame_name(1)).write_text("not a jpeg")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(tmp_path / "missing"), "--cameras", cams], "no such folder"),
        ([str(empty), "--cameras", cams], "no pictures"),
        ([str(small)], f"{small / 'v01' / frame_name(4)} is 64x64 (upright), {small / 'v00' / frame_name(0)} is 128x128"),
        ([str(uneven), "--cameras", cams], "different frame counts (v00: 6, v01: 5)"),
        ([str(small), "--cameras", cams], f"{small / 'v01' / frame_name(4)} is 64x64 (upright), the cameras are 128x128"),
        ([str(broken), "--cameras", cams], f"{broken / 'v00' / frame_name(1)}: not an image that can be read"),
    ]
    for i, (args, why) in enumerate(cases):
        run = tmp_path / f"run{i}"
        assert main(["import", str(run), *args, "--quiet"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert why in err, err
        assert not run.exists()  # refused before the run folder was made
