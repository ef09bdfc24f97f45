"""The whole pipeline at tiny sizes through the real command line: plan -> generate -> register -> fit -> export ->
evaluate, the report in headless Chromium, resuming after an interruption, and the GPU preset's clear refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvd_scene.cli import main
from cvd_scene.export.axes import run_from_readers
from cvd_scene.export.ply import read_ply
from tests.browser import chromium, load_page

# 3 videos x 6 frames at 128^2: big enough for SIFT, small enough to run every stage in under a minute.
TINY = [
    "plan.num_videos=3",
    "plan.num_frames=6",
    "plan.width=128",
    "plan.height=128",
    "plan.spread_deg=120",  # three videos fanned over 120 degrees keep sharing views to the last frame
    "generate.samples_per_pixel=2",
    "fit.iterations=60",
    "fit.eval_every_k=3",
    "fit.max_gaussians=20000",
    "export.mesh_max_triangles=20000",
    "export.mesh_render_size_px=96",
]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    # First an interrupted run: it stops after registration, as a crash or Ctrl-C would leave it.
    assert main(["run", str(run_dir), "--preset", "demo", "--until", "register", "--quiet", *TINY]) == 0
    state = json.loads((run_dir / "run.json").read_text())
    assert set(state["stages"]) == {"plan", "generate", "register"}
    first_register = state["stages"]["register"]["finished"]
    # The same command without --until resumes: finished stages are skipped, the rest run.
    assert main(["run", str(run_dir), "--preset", "demo", "--quiet", *TINY]) == 0
    state = json.loads((run_dir / "run.json").read_text())
    assert state["stages"]["register"]["finished"] == first_register
    return run_dir, state


def test_every_stage_finishes_and_writes_its_files(tiny_demo):
    run_dir, state = tiny_demo
    for stage in ("plan", "generate", "register", "fit", "export", "evaluate"):
        assert state["stages"][stage]["status"] in ("finished", "partial"), (stage, state["stages"][stage])
    assert state["stages"]["register"]["status"] == "finished"
    for rel in (
        "plan/cameras.json",
        "plan/covisibility.json",
        "plan/trajectories.png",
        "generate/contact_sheet.png",
        "generate/videos/v02.mp4",
        "generate/frames/v01/0005.png",
        "generate/transforms.json",
        "register/transforms.json",
        "register/sparse_pc.ply",
        "fit/metrics.json",
        "fit/gaussians.ply",
        "export/scene.ply",
        "export/scene.splat",
        "export/scene.spz",
        "export/scene_khr.glb",
        "export/mesh.glb",
        "export/camera_path.json",
        "export/report.json",
        "evaluate/consistency.json",
        "report.html",
    ):
        assert (run_dir / rel).is_file(), rel


def test_the_fit_learns_and_the_export_is_in_the_world_frame(tiny_demo):
    run_dir, _ = tiny_demo
    metrics = json.loads((run_dir / "fit" / "metrics.json").read_text())
    assert metrics["psnr"] > 15.0  # 60 iterations: far from converged, but clearly fitted
    splats = run_from_readers(read_ply(run_dir / "export" / "scene.ply"))  # the file holds the readers' frame
    assert len(splats) > 100
    # The demo room: floor at y = 0, ceiling below 3 m, walls within 4 m of the origin.
    centre = np.median(splats.means, axis=0)
    assert 0.0 < centre[1] < 3.0 and np.abs(centre[[0, 2]]).max() < 4.0
    report = json.loads((run_dir / "export" / "report.json").read_text())
    assert report["splats"]["out"] == len(splats)


def test_evaluate_scores_the_reference_videos_as_consistent(tiny_demo):
    run_dir, _ = tiny_demo
    cons = json.loads((run_dir / "evaluate" / "consistency.json").read_text())
    assert cons["within_video"]["rot_auc"][0] > 50


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_report_shows_every_section_in_headless_chromium(tiny_demo, tmp_path):
    run_dir, _ = tiny_demo
    page = (run_dir / "report.html").read_text()
    for heading in ("Plan", "Generated videos", "Registration", "Fit", "Geometric consistency", "Exports"):
        assert f"<h2>{heading}" in page, heading
    assert page.count("<video") == 3
    console = load_page(run_dir / "report.html", tmp_path / "report.png", size=(1280, 1600))
    assert console == []
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_a_rerun_with_another_config_is_refused_and_nothing_is_lost(tiny_demo, capsys):
    run_dir, _ = tiny_demo
    before = (run_dir / "export" / "scene.ply").stat().st_mtime_ns
    assert main(["run", str(run_dir), "--preset", "demo", "--quiet", *TINY, "fit.iterations=61"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run_dir / "export" / "scene.ply").stat().st_mtime_ns == before


def test_gpu_preset_without_weights_says_which_files_are_missing(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "r"), "--preset", "default", "--until", "generate", "--quiet",
               "plan.num_videos=2", "plan.num_frames=2", "generate.weights=" + str(tmp_path / "nowhere")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nowhere" in err
    assert json.loads((tmp_path / "r" / "run.json").read_text())["stages"]["plan"]["status"] == "finished"
