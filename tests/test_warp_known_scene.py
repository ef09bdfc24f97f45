"""The warp measure of a CVD run on a scene whose geometry is known (``evaluate.warp_known_scene``): the ground-truth
first frame held, the ceiling (ground-truth renders) and the floor (cross-view modules off) next to the generated
videos, written by the evaluate stage and shown in the report.

The fast test runs a tiny model whose every weight is random (its cross-view modules are not zero, so switching
them off changes the videos) on a 2-video x 3-frame plan at 48x48; the slow test measures the committed
``tiny-trained`` on the ``demo-learned`` plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvd_scene.camera_io import read_cameras_json, read_json
from cvd_scene.config import load_config
from cvd_scene.evaluate.known_scene import known_scene_videos, score_known_scene
from cvd_scene.orchestrate import run_stages
from cvd_scene.report import build_report
from cvd_scene.runconfig import RunConfig
from cvd_scene.runfolder import RunLayout
from tests.cvd_testing import random_model, randomize_

TINY = {
    "plan": {"num_videos": 2, "num_frames": 3, "width": 48, "height": 48, "spread_deg": 40.0, "step_m": 0.3},
    "generate": {"steps": 2, "samples_per_pixel": 1, "texels_per_m": 20.0},
    "evaluate": {"warp_known_scene": True},
}


def weights(folder, cvsm_seed: int | None = None):
    """A random tiny model saved to ``folder``; ``cvsm_seed`` redraws its cross-view modules' weights only."""
    model = random_model(0)
    if cvsm_seed is not None:
        for _, m in model.unet.cvsms():
            randomize_(m, cvsm_seed)
    return str(model.save_pretrained(folder))


def tiny_config_with(weights_folder: str) -> RunConfig:
    return load_config(RunConfig, "run", "demo-learned", {**TINY, "generate": {**TINY["generate"], "weights": weights_folder}})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("known-scene")
    config = tiny_config_with(weights(root / "w"))
    run_dir = root / "run"
    results = run_stages(run_dir, config, ["plan", "generate", "evaluate"])
    assert results["evaluate"].status in ("finished", "partial"), results["evaluate"]
    assert {"warp_psnr", "warp_ceiling_psnr", "warp_floor_psnr"} <= set(results["evaluate"].summary)
    return run_dir, config, root


def test_evaluate_writes_the_warp_measure_with_ceiling_and_floor_deterministically(tiny_run):
    run_dir, config, _ = tiny_run
    run = RunLayout(run_dir)
    warp = read_json(run.consistency)["warp"]
    for arm in (warp, warp["ceiling"], warp["floor"]):
        assert {"psnr", "ssim", "kept_fraction", "pairs"} <= set(arm)
        assert arm["pairs"] == 4 and arm["kept_fraction"] > 0.2
    # The mask comes from ground-truth depth alone: the same pixels are scored for all three.
    assert warp["kept_fraction"] == warp["ceiling"]["kept_fraction"] == warp["floor"]["kept_fraction"]
    assert warp["ceiling"]["psnr"] >= warp["psnr"] + 3 and warp["ceiling"]["ssim"] > warp["ssim"]
    assert warp["ceiling"]["psnr"] >= warp["floor"]["psnr"] + 3
    assert warp["known_scene"]["scene_kind"] == "room" and warp["known_scene"]["seed"] == config.seed
    assert run.warp_contact_sheet.is_file()
    html = build_report(run_dir)
    assert "ceiling: ground-truth renders" in html and "floor: same model, cross-view off" in html
    # Same seed, same numbers: the stage's result again from the library functions.
    cams = read_cameras_json(run.cameras)
    again = score_known_scene(known_scene_videos(config, cams, run_dir), cams, config.evaluate.warp_rel_tol)
    for key in ("psnr", "ssim", "kept_fraction"):
        assert again[key] == warp[key]
        assert again["ceiling"][key] == warp["ceiling"][key]
        assert again["floor"][key] == warp["floor"][key]


def test_the_floor_has_the_cross_view_modules_really_off(tiny_run):
    # Redrawing only the cross-view modules' weights changes the generated videos but not the floor's, bit for
    # bit; and the floor differs from the cross-view videos (the modules' weights are not zero).
    run_dir, config, root = tiny_run
    cams = read_cameras_json(RunLayout(run_dir).cameras)
    a = known_scene_videos(config, cams, run_dir)
    other = weights(root / "w-other-cvsm", cvsm_seed=123)
    config_b = tiny_config_with(other)
    b = known_scene_videos(config_b, cams, run_dir)
    np.testing.assert_array_equal(a.floor, b.floor)
    np.testing.assert_array_equal(a.ceiling, b.ceiling)
    assert np.abs(a.generated - b.generated).max() > 1e-3
    assert np.abs(a.generated - a.floor)[:, 1:].max() > 1e-3
    # Frame 0 is the held ground-truth frame (through the autoencoder) in both arms.
    np.testing.assert_array_equal(a.generated[:, 0], a.floor[:, 0])


def test_warp_known_scene_is_refused_for_the_reference_generator_and_with_a_picture():
    from cvd_scene.evaluate.known_scene import check_known_scene

    ref = load_config(RunConfig, "run", "demo", {"evaluate": {"warp_known_scene": True}})
    with pytest.raises(ValueError, match="generate.generator='reference'"):
        check_known_scene(ref)
    pic = load_config(RunConfig, "run", "demo-learned", {"generate": {"image": "photo.jpg"}})
    with pytest.raises(ValueError, match="generate.image='photo.jpg'"):
        check_known_scene(pic)


@pytest.mark.slow
def test_tiny_trained_on_the_demo_learned_plan(tmp_path):
    """The README's numbers: tiny-trained, the demo-learned plan (4 x 12 at 96x96), seed 0."""
    torch.set_num_threads(1)
    config = load_config(RunConfig, "run", "demo-learned", {"evaluate": {"warp_known_scene": True}})
    run_dir = tmp_path / "run"
    run_stages(run_dir, config, ["plan"])
    cams = read_cameras_json(RunLayout(run_dir).cameras)
    warp = score_known_scene(known_scene_videos(config, cams, run_dir), cams, config.evaluate.warp_rel_tol)
    print({k: warp[k] for k in ("psnr", "ssim", "kept_fraction", "pairs")}, warp["ceiling"], warp["floor"])
    assert warp["ceiling"]["psnr"] >= warp["psnr"] and warp["ceiling"]["psnr"] >= warp["floor"]["psnr"]
    assert warp["ceiling"]["ssim"] >= warp["ssim"]
