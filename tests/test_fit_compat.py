"""A fit saved by an earlier version of cvd-scene still loads and exports.

``tests/data/fit_v-before/`` is a tiny run folder (2 videos x 3 frames of 32 px, 120 Gaussians, a 2-iteration
reduced ``cvd-scene`` fit) written before the fit's settings became :class:`cvd_scene.fit.config.FitConfig` and
its schedules were scaled in one place. nerfstudio's ``config.yml`` names our classes by import path
(``cvd_scene.fit.dataparser.*``, ``cvd_scene.fit.splat_model.*``, ``cvd_scene.fit.methods.*``,
``cvd_scene.fit.config_paths.*``): loading it with nerfstudio's own loader shows those paths still import and
that the checkpoint still fits the model they build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cvd_scene.export.ply import read_ply
from cvd_scene.runfolder import RunLayout

BEFORE = Path(__file__).parent / "data" / "fit_v-before"


@pytest.fixture()
def old_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(BEFORE, run)
    return run


def test_a_fit_made_before_loads_with_nerfstudio_and_renders_its_gaussians(old_run):
    from nerfstudio.utils.eval_utils import eval_setup

    layout = RunLayout(old_run)
    metrics = json.loads(layout.fit_metrics.read_text())
    config_yml = layout.stage("fit") / metrics["nerfstudio_config"]
    _, pipeline, checkpoint, step = eval_setup(config_yml, test_mode="inference")
    assert step == 1 and checkpoint.is_relative_to(old_run)
    model = pipeline.model
    assert type(model).__name__ == "CvdSplatModel" and model.num_points == metrics["gaussians"] == 120
    # The checkpoint's Gaussians are the ones the fit exported (fit/gaussians.ply, the run's world frame).
    from cvd_scene.fit.frames import NerfstudioFrame, gaussians_to_world

    frame = NerfstudioFrame.from_json(json.loads(layout.fit_frame.read_text()))
    saved = read_ply(layout.fit_gaussians)
    np.testing.assert_allclose(gaussians_to_world(model.gaussians(), frame).means, saved.means, atol=1e-5)
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    with torch.no_grad():
        out = model.get_outputs_for_camera(camera)
    assert out["rgb"].shape == (32, 32, 3) and torch.isfinite(out["rgb"]).all() and out["accumulation"].max() > 0


def test_a_fit_made_before_exports(old_run, tmp_path):
    from cvd_scene.config import from_dict
    from cvd_scene.export.run import run_export
    from cvd_scene.runconfig import RunConfig

    config = from_dict(RunConfig, {"export": {"formats": ["ply", "splat"]}})
    result = run_export(config, old_run, tmp_path / "export")
    assert result.status == "finished" and result.summary["splats_in"] == 120
    assert len(read_ply(tmp_path / "export" / "scene.ply")) == result.summary["splats_out"] > 0
    assert (tmp_path / "export" / "camera_path.json").is_file()
