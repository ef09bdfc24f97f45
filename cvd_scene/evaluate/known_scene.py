"""The warp measure of a learned generator on a scene whose geometry is known, with its ceiling and floor.

The reference renderer's scene of the run's prompt (kind, seed, objects as the ``generate`` section names them) is
rendered along the plan: colour and z-depth of every camera. The CVD model then generates the plan with video 0's
first frame given, the ground-truth render held as frame 0 of every video (the pipeline's fixed first-frame latent,
as ``generate.image`` holds a picture), so its videos depict the scene whose depth is known. Three sets of videos are
scored with :func:`cvd_scene.evaluate.warp_consistency.warp_consistency` against the ground-truth depth:

- ``generated``: the model as it is;
- ``ceiling``: the ground-truth renders of the same cameras (perfectly consistent videos);
- ``floor``: the same model with its cross-view modules switched off (every video sampled alone, the CVSMs
  skipped), same seed, noise, prompt, cameras and first frame.

Used by ``evaluate`` when ``evaluate.warp_known_scene`` is on (:mod:`cvd_scene.evaluate.run`) and by the ablation
and benchmark scripts. Import-light: numpy, torch and the renderer are imported inside the functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from cvd_scene.cameras import Cameras
    from cvd_scene.runconfig import RunConfig

__all__ = ["KnownSceneVideos", "check_known_scene", "known_scene_videos", "known_scene_warp", "score_known_scene"]

log = logging.getLogger(__name__)

ARMS = ("generated", "ceiling", "floor")
"""The three video sets scored, in the order of the report's table."""


@dataclass
class KnownSceneVideos:
    """The videos of :func:`known_scene_videos`, all [V, F, H, W, 3] float32 in [0, 1] at the plan's size."""

    generated: np.ndarray  # [V, F, H, W, 3] the model, cross-view on
    floor: np.ndarray  # [V, F, H, W, 3] the same model, cross-view off
    ceiling: np.ndarray  # [V, F, H, W, 3] the ground-truth renders
    depth: np.ndarray  # [V, F, H, W] ground-truth z-depth, metres, 0 where empty
    info: dict
    """Scene kind and caption, model, seed, timings."""


def check_known_scene(config: RunConfig, cams: Cameras | None = None) -> None:
    """``ValueError`` naming the key when ``evaluate.warp_known_scene`` cannot apply to this run: it needs the CVD
    generator, no user picture (the ground-truth frame replaces it) and, given ``cams``, videos that start at one
    camera (the first frame is frame 0 of every video)."""
    gen = config.generate
    if gen.generator != "cvd":
        raise ValueError(
            f"evaluate.warp_known_scene scores the CVD generator on the reference renderer's scene; "
            f"generate.generator={gen.generator!r} (a reference run scores the warp measure on its own ground truth)"
        )
    if gen.image is not None:
        raise ValueError(
            f"evaluate.warp_known_scene holds the scene's ground-truth first frame; generate.image={gen.image!r} "
            "would be a different scene: leave one of them unset"
        )
    if cams is not None and cams.num_videos > 1:
        from cvd_scene.plan.planning import common_start_error

        start_error = common_start_error(cams)
        if start_error > 1e-4:
            raise ValueError(
                f"evaluate.warp_known_scene needs the plan's videos to start at one camera (video 0's first frame "
                f"is held as frame 0 of every video); their first cameras differ by up to {start_error:.3g}"
            )


def known_scene_videos(config: RunConfig, cams: Cameras, run_dir: Path) -> KnownSceneVideos:
    """Render the prompt's reference scene along ``cams`` (OpenCV axes, ``world_from_cam``) and generate the plan
    with the configured CVD model twice, cross-view on and off, frame 0 = the ground-truth frame 0 of video 0.
    ``run_dir`` supplies ``plan/covisibility.json`` for the pairing, as in ``generate``. Deterministic given
    ``config.seed``."""
    import numpy as np

    from cvd_scene.generate.cvd_sampling import generate_cvd
    from cvd_scene.logs import progress_enabled
    from cvd_scene.reference import build_scene, render

    check_known_scene(config, cams)
    gen = config.generate
    t0 = time.perf_counter()
    scene = build_scene(
        config.prompt, config.seed, kind=gen.scene, moving_objects=gen.moving_objects, texels_per_m=gen.texels_per_m
    )
    gt = render(scene, cams, samples_per_pixel=gen.samples_per_pixel, progress=progress_enabled())
    render_s = time.perf_counter() - t0
    first = gt.rgb[0, 0]  # [H, W, 3]
    t1 = time.perf_counter()
    generated, report = generate_cvd(config, cams, run_dir, first_frame_rgb=first)
    t2 = time.perf_counter()
    floor, _ = generate_cvd(config, cams, run_dir, first_frame_rgb=first, cross_view=False)
    t3 = time.perf_counter()
    log.info(
        "known scene %s: rendered in %.1f s, generated with cross-view on in %.1f s and off in %.1f s",
        scene.kind, render_s, t2 - t1, t3 - t2,
    )  # fmt: skip
    info = {
        "scene_kind": scene.kind,
        "caption": scene.caption,
        "seed": config.seed,
        "model": report.get("model"),
        "steps": gen.steps,
        "first_frame": "ground-truth render of video 0, frame 0, held as frame 0 of every video",
        "floor": "the same model, same seed, prompt, cameras and first frame, every video sampled alone "
        "(pipeline cross_view=False: the cross-view modules skipped)",
        "render_s": round(render_s, 3),
        "generate_s": round(t2 - t1, 3),
        "generate_floor_s": round(t3 - t2, 3),
    }
    return KnownSceneVideos(
        generated=np.asarray(generated, np.float32),
        floor=np.asarray(floor, np.float32),
        ceiling=np.asarray(gt.rgb, np.float32),
        depth=np.asarray(gt.depth, np.float32),
        info=info,
    )


def score_known_scene(videos: KnownSceneVideos, cams: Cameras, rel_tol: float = 0.03) -> dict:
    """The warp measure of ``generated`` with ``ceiling`` and ``floor`` next to it (only their summary numbers:
    ``psnr``, ``ssim``, ``kept_fraction``, ``pairs``) and ``known_scene`` (:attr:`KnownSceneVideos.info`)."""
    from cvd_scene.evaluate.warp_consistency import warp_consistency

    def score(frames):
        return warp_consistency(frames, videos.depth, cams.world_from_cam, cams.K, rel_tol=rel_tol)

    result = score(videos.generated)
    for arm in ("ceiling", "floor"):
        full = score(getattr(videos, arm))
        result[arm] = {k: full[k] for k in ("psnr", "ssim", "kept_fraction", "pairs")}
    result["known_scene"] = videos.info
    return result


def known_scene_warp(config: RunConfig, cams: Cameras, run_dir: Path, rel_tol: float = 0.03) -> dict:
    """:func:`known_scene_videos` scored by :func:`score_known_scene`: the ``warp`` entry of
    ``evaluate/consistency.json`` for a CVD run."""
    return score_known_scene(known_scene_videos(config, cams, run_dir), cams, rel_tol)
