"""``cvd-scene train``: train the CVD model (the sync modules on real data, or a small model from scratch on
reference-renderer scenes); ``cvd-scene prerender``: render training clips into one cache file.

The train config (:class:`cvd.training.config.TrainConfig`) is read strictly from ``configs/train/<name>.yaml``
plus ``KEY=VALUE`` overrides. Data sources of kind ``render`` use the reference renderer (open3d); every other
kind, and the whole training, needs only torch and the ``cvd`` package, so a GPU machine without open3d trains from
a cache file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import tyro

from cvd_scene.commands.common import CliError, Overrides, app
from cvd_scene.train.training import load_train_config, run_training

log = logging.getLogger(__name__)


@app.command(name="train")
def train_command(
    overrides: Overrides = (),
    config: str = "tiny-cpu",
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Train the CVD model: its sync modules on local data (preset paper) or a small model from scratch on
    reference-renderer scenes (tiny-cpu, small-gpu). Resumes from the newest checkpoint in output_dir. Writes
    checkpoints/, model/ (our saved format), loss.csv, loss.json, loss.png and toy_measure.json there.

    Args:
        overrides: Config overrides as KEY=VALUE, e.g. optim.steps=200 output_dir=runs/train/x model.bias_mode=none.
        config: Train preset: a name in configs/train/ (paper, tiny-cpu, small-gpu) or a path to a YAML file.
        quiet: Only warnings and errors, no progress bar.
        verbose: Debug logging.
    """
    from cvd_scene.logs import setup_logging

    setup_logging(quiet, verbose)
    cfg = load_train_config(config, overrides)
    if quiet:
        cfg.progress = False
    result = run_training(cfg)
    log.info("trained %d steps in %.0f s; final loss %s; model: %s", result.steps, result.seconds,
             None if result.final_loss is None else round(result.final_loss, 4), result.model_dir)


@app.command(name="prerender")
def prerender_command(
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT.npz")],
    clips: int = 160,
    videos: int = 4,
    frames: int = 12,
    size: int = 96,
    samples_per_pixel: int = 2,
    seed: int = 0,
    codec: str = "jpeg",
    quality: int = 90,
    quiet: bool = False,
    verbose: bool = False,
) -> None:
    """Render training clips of random reference scenes into one cache file (.npz) that cvd-scene train reads on
    machines without the renderer (data kind: cache).

    Args:
        out: The cache file to write.
        clips: Number of clips (each a new random scene and plan).
        videos: Videos per clip (all start at one common camera).
        frames: Frames per video.
        size: Image side in pixels (square).
        samples_per_pixel: Rays per pixel.
        seed: Seed of the first clip (clip i uses seed + i): use far-apart seeds for held-out sets.
        codec: jpeg (about 10x smaller) or raw (lossless uint8).
        quality: JPEG quality.
        quiet: Only warnings and errors.
        verbose: Debug logging.
    """
    from cvd_scene.logs import setup_logging, track
    from cvd_scene.train.data import prerender_cache

    setup_logging(quiet, verbose)
    if codec not in ("jpeg", "raw"):
        raise CliError(f"--codec must be jpeg or raw, got {codec!r}")
    bar = iter(track(range(clips), total=clips, description=f"rendering {clips} clips"))

    def tick(done: int, total: int) -> None:
        next(bar, None)

    summary = prerender_cache(out, clips, num_videos=videos, num_frames=frames, height=size, width=size,
                              samples_per_pixel=samples_per_pixel, first_seed=seed, codec=codec, jpeg_quality=quality,
                              progress=tick)
    log.info("cache: %s", json.dumps({k: v for k, v in summary.items() if k != "captions"}))
