"""nerfstudio round trips of a fitted run: ``ns-render camera-path`` on ``export/camera_path.json`` (frame 0 is the
fit's own view of the first planned camera), and a copied run folder that loads its own checkpoint from an
unrelated working directory while the original is still there."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fit_helpers import make_run

NS_RENDER = Path(sys.executable).parent / "ns-render"


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """A reference room (2 videos x 6 frames, 32 px) fitted for 2 iterations (reduced method config) and exported
    (PLY and camera path)."""
    from cvd_scene import cli
    from cvd_scene.fit import train

    run = tmp_path_factory.mktemp("ns") / "run"
    make_run(run, num_videos=2, num_frames=6, size=32, points_per_frame=60)
    make_config = train.trainer_config
    train.trainer_config = functools.partial(make_config, reduced=True)
    try:
        assert cli.main(["fit", str(run), "--iterations", "2", "--quiet"]) == 0
    finally:
        train.trainer_config = make_config
    assert cli.main(["export", str(run), "--formats", "ply", "--quiet"]) == 0
    return run


def config_yml(run: Path) -> Path:
    return run / "fit" / json.loads((run / "fit" / "metrics.json").read_text())["nerfstudio_config"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def test_copied_run_loads_its_own_checkpoint_from_anywhere(fitted_run, tmp_path, monkeypatch):
    """nerfstudio's loader (eval_setup: ns-viewer, ns-render, ns-eval) on a copy, from an unrelated directory,
    the original still present: the copy's checkpoint (a weight changed) and the copy's frames are used."""
    import torch
    import yaml
    from nerfstudio.utils.eval_utils import eval_setup

    copy = tmp_path / "moved" / "run-copy"
    shutil.copytree(fitted_run, copy)
    ckpt = next((config_yml(copy).parent / "nerfstudio_models").glob("step-*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["pipeline"]["_model.gauss_params.means"][0] = torch.tensor([1.25, -2.5, 3.0])
    torch.save(state, ckpt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path(os.path.relpath(config_yml(copy), elsewhere))  # as a user types it
    config, pipeline, checkpoint, _ = eval_setup(relative, test_mode="inference")
    assert checkpoint.resolve() == ckpt.resolve()
    assert Path(config.data).resolve() == copy.resolve() and Path(config.output_dir).resolve() == (copy / "fit").resolve()
    torch.testing.assert_close(pipeline.model.means[0].detach(), torch.tensor([1.25, -2.5, 3.0]))
    # loaded any other way the file still names the original (absolute) paths, as before
    other = yaml.load(config_yml(copy).read_bytes().decode(), Loader=yaml.Loader)
    assert Path(other.output_dir) == (fitted_run / "fit").resolve()


@pytest.mark.slow  # about 55 s: a fresh process imports nerfstudio and torch
def test_ns_render_camera_path_matches_the_fits_view(fitted_run, tmp_path):
    """ns-render (a subprocess, as a user runs it) renders the first frames of export/camera_path.json; frame 0 is
    the first planned camera, which the fit rendered itself into fit/views. The virtualenv's bin is taken off
    PATH, as when a user runs .venv/bin/ns-render without activating it: ffmpeg must still be found."""
    import imageio.v3 as iio

    doc = json.loads((fitted_run / "export" / "camera_path.json").read_text())
    doc["camera_path"] = doc["camera_path"][:3]
    doc["seconds"] = 3 / doc["fps"]
    path = tmp_path / "camera_path.json"
    path.write_text(json.dumps(doc))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != NS_RENDER.parent)
    out = subprocess.run(
        [str(NS_RENDER), "camera-path", "--load-config", str(config_yml(fitted_run)), "--camera-path-filename",
         str(path), "--output-path", str(tmp_path / "frames"), "--output-format", "images"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    frames = sorted((tmp_path / "frames").glob("*.jpg")) + sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 3, [p.name for p in (tmp_path / "frames").iterdir()]
    rendered = iio.imread(frames[0])[..., :3]
    own = iio.imread(fitted_run / "fit" / "views" / "rgb" / "v00" / "0000.png")[..., :3]
    assert rendered.shape == own.shape
    other = iio.imread(fitted_run / "fit" / "views" / "rgb" / "v01" / "0005.png")[..., :3]
    assert psnr(rendered, own) > 30.0 and psnr(rendered, own) > psnr(rendered, other) + 5, (
        psnr(rendered, own), psnr(rendered, other),
    )  # fmt: skip
