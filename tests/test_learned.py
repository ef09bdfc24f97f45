"""A learned generator from the prompt to a splat: the ``demo-learned`` preset (``tiny-trained``, registration
falling back to the planned cameras), and the quality floor of fitting on those cameras. Both are ``slow``: the
generation and two fits take several minutes on a 2-core CPU."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from cvd_scene.camera_io import read_transforms_json, write_transforms_json
from cvd_scene.cli import main

FIT = ["fit.time_budget_s=120", "fit.iterations=1500"]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("learned") / "run"
    assert main(["run", str(run_dir), "--preset", "demo-learned", "--quiet", *FIT]) == 0
    return run_dir


@pytest.mark.slow
def test_demo_learned_goes_from_the_prompt_to_the_exports(learned_run):
    state = json.loads((learned_run / "run.json").read_text())
    assert {s: state["stages"][s]["status"] for s in ("plan", "generate", "fit", "export")} == dict.fromkeys(
        ("plan", "generate", "fit", "export"), "finished"
    )
    reg = json.loads((learned_run / "register" / "report.json").read_text())
    assert reg["poses"] == "planned"  # blurry 96 px videos: the fallback, said so
    assert state["stages"]["register"]["status"] in ("partial", "finished")
    for name in ("scene.ply", "scene.splat", "scene.spz", "mesh.glb"):
        assert (learned_run / "export" / name).stat().st_size > 1000, name
    assert "Planned cameras" in (learned_run / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured: 21.0 dB on the planned cameras, 21.4 dB on shuffled ones: tiny-trained's 96 px videos are "
    "colour layouts whose views are nearly interchangeable, so the fit cannot tell right cameras from wrong",
)
def test_fitting_on_the_planned_cameras_beats_the_same_fit_on_shuffled_cameras_by_1_db(learned_run, tmp_path):
    """The quality floor: the planned cameras explain the generated frames; the same cameras assigned to the wrong
    frames do not (same frames, same seed points, same fit settings)."""
    planned = json.loads((learned_run / "fit" / "metrics.json").read_text())["psnr"]
    shuffled_dir = tmp_path / "shuffled"
    shutil.copytree(learned_run, shuffled_dir)
    tf_path = shuffled_dir / "register" / "transforms.json"
    tf = read_transforms_json(tf_path)
    cams = tf.cameras
    V, F = cams.num_videos, cams.num_frames
    rng = np.random.default_rng(0)
    perm = rng.permutation(V * F)
    while (perm == np.arange(V * F)).any():  # a derangement: no frame keeps its camera
        perm = rng.permutation(V * F)
    poses = cams.world_from_cam.reshape(V * F, 4, 4)[perm].reshape(V, F, 4, 4)
    write_transforms_json(dataclasses.replace(cams, world_from_cam=poses), tf_path, "../generate/frames", extra={"ply_file_path": "sparse_pc.ply"})
    assert main(["fit", str(shuffled_dir), "--redo", "--quiet", "--preset", "demo-learned", *FIT]) == 0
    shuffled = json.loads((shuffled_dir / "fit" / "metrics.json").read_text())["psnr"]
    assert planned >= shuffled + 1.0, (planned, shuffled)
