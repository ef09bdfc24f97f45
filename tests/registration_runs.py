"""Run folders for the registration and consistency tests: plan + generate by the real stages (reference renderer).

``SMALL`` is the fast suite's run (3 videos x 6 frames at 128x128, the demo's look-around fanned over 120 degrees so
the videos share views); the demo preset and a 6 x 16 plan at 256x256 are the slow tests' runs.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from cvd_scene.config import load_config, merge
from cvd_scene.orchestrate import run_stages
from cvd_scene.runconfig import RunConfig
from cvd_scene.runfolder import StageResult

SMALL = {"plan": {"num_videos": 3, "num_frames": 6, "width": 128, "height": 128, "spread_deg": 120.0}}
"""Overrides of the demo preset for the fast tests' run."""
SIX_BY_SIXTEEN = {"plan": {"num_videos": 6, "num_frames": 16, "width": 256, "height": 256}}
"""Overrides of the demo preset for the slow 6-video x 16-frame run at 256x256."""


def make_run(run_dir: Path, overrides: dict | None = None) -> RunConfig:
    """A run folder whose plan and generate stages ran (demo preset + ``overrides``); returns its config."""
    config = load_config(RunConfig, "run", "demo", overrides or {})
    run_stages(run_dir, config, ["plan", "generate"])
    return config


@functools.cache
def small_run() -> tuple[Path, RunConfig]:
    """The fast tests' run folder, built once per test session (read-only: copy it before changing it)."""
    root = Path(tempfile.mkdtemp(prefix="cvd-scene-reg-"))
    atexit.register(shutil.rmtree, root, True)
    run_dir = root / "small"
    return run_dir, make_run(run_dir, SMALL)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_stage(run_dir: Path, config: RunConfig, stage: str, **section) -> StageResult:
    """Run (or redo) one stage with its config section updated by ``section``."""
    from cvd_scene.config import from_dict, to_dict

    cfg = from_dict(RunConfig, merge(to_dict(config), {stage: section}))
    return run_stages(run_dir, cfg, [stage], redo=(stage,))[stage]


def overwrite_video(run_dir: Path, video_id: str, make_frame) -> None:
    """Replace every frame of one video by ``make_frame(index, shape) -> uint8 [H, W, 3]``."""
    for path in sorted((run_dir / "generate" / "frames" / video_id).glob("*.png")):
        shape = iio.imread(path).shape
        iio.imwrite(path, make_frame(int(path.stem), shape))


def noise_frame(index: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(100 + index).integers(0, 256, size=shape, dtype=np.uint8)


def blank_frame(index: int, shape: tuple) -> np.ndarray:
    return np.full(shape, 128, np.uint8)


def swap_odd_frames(frames: np.ndarray, a: int = 0, b: int = 1) -> np.ndarray:
    """The frames [V, F, H, W, 3] with every odd frame of videos ``a`` and ``b`` exchanged (inconsistent input)."""
    out = frames.copy()
    out[a, 1::2], out[b, 1::2] = frames[b, 1::2], frames[a, 1::2]
    return out
