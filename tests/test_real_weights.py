"""The published weights, end to end: conversion, reload, and sampling on a GPU.

Skipped unless ``CVD_SCENE_WEIGHTS`` names a folder holding the published files under their published names::

    $CVD_SCENE_WEIGHTS/CVD.ckpt
    $CVD_SCENE_WEIGHTS/CameraCtrl.ckpt
    $CVD_SCENE_WEIGHTS/v3_sd15_mm.ckpt
    $CVD_SCENE_WEIGHTS/stable-diffusion-v1-5/      (diffusers folder: unet/ vae/ text_encoder/ tokenizer/ ...)

    CVD_SCENE_WEIGHTS=~/weights .venv/bin/python -m pytest -m "slow or gpu" tests/test_real_weights.py

``CVD_SCENE_WEIGHTS_MODEL`` picks the model config (default ``sd15``). Nothing is downloaded: the files must
already be on disk.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cvd_testing import camera_inputs

ROOT = os.environ.get("CVD_SCENE_WEIGHTS")
MODEL = os.environ.get("CVD_SCENE_WEIGHTS_MODEL", "sd15")
FILES = {"cvd": "CVD.ckpt", "cameractrl": "CameraCtrl.ckpt", "motion": "v3_sd15_mm.ckpt", "sd15": "stable-diffusion-v1-5"}

pytestmark = pytest.mark.skipif(
    ROOT is None or not all((Path(ROOT) / name).exists() for name in FILES.values()),
    reason=f"set CVD_SCENE_WEIGHTS to a folder with {', '.join(FILES.values())}",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The published files converted once by the real command (fp16 folder)."""
    from cvd_scene.cli import main

    out = tmp_path_factory.mktemp("weights") / "cvd-sd15"
    args = ["convert", str(out), f"--model={MODEL}", "--quiet"]
    assert main(args + [f"--{key}={Path(ROOT) / name}" for key, name in FILES.items()]) == 0
    return out


def state_dict(model) -> dict[str, torch.Tensor]:
    modules = model._weight_modules()
    return {f"{part}.{key}": value for part, module in modules.items() for key, value in module.state_dict().items()}


@pytest.mark.slow
def test_conversion_accounts_for_every_key_and_reloads_identically(converted):
    from cvd.model import CVDModel, OfficialFiles
    from cvd.model_config import CVDModelConfig
    from cvd_scene.config import load_config

    config = load_config(CVDModelConfig, "model", MODEL)
    files = OfficialFiles(**{key: Path(ROOT) / name for key, name in FILES.items()})
    direct = CVDModel.from_official(config, files, dtype=torch.float16)
    reloaded = CVDModel.from_pretrained(converted, dtype=torch.float16)
    a, b = state_dict(direct), state_dict(reloaded)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # one synchronization module per motion module: 20 at SD1.5 size (v3 has no mid-block motion module)
    modules = {m.group(0) for m in map(re.compile(r".*\.epi_modules\.\d+").match, a) if m}
    motion = {m.group(0) for m in map(re.compile(r".*\.motion_modules\.\d+").match, a) if m}
    assert len(modules) == len(motion) > 0
    if MODEL == "sd15":
        assert len(modules) == 20


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_videos_from_the_published_weights_share_their_first_frame(converted):
    from cvd.pipeline import CVDPipeline

    pipe = CVDPipeline.from_pretrained(converted, device="cuda", dtype=torch.float16)
    K, c2w = camera_inputs(2, 16, 256)
    out = pipe("a cosy living room with a sofa and a bookshelf", c2w, K, height=256, width=256,
               num_inference_steps=25, seed=0)
    frames = np.asarray(out.frames)
    assert frames.shape == (2, 16, 256, 256, 3)
    assert np.isfinite(frames).all() and frames.std() > 0.05
    # both videos start at the same camera: their first frames should show the same picture
    first = np.abs(frames[0, 0] - frames[1, 0]).mean()
    later = np.abs(frames[0, -1] - frames[1, -1]).mean()
    assert first < 0.1 and first < later
