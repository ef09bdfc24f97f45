"""Training data from the reference renderer: random procedural scenes, random plans that start at one common
camera, rendered videos with perfect ground truth and captions made from the scene's words ("a red room with
two boxes").

* :func:`render_training_clip` -- one clip of ``V`` videos (a plan of the scene kind's natural pattern with random
  start, heading, spread and step) as a :class:`cvd.training.cache.Clip`.
* :func:`render_folded_pair` -- one ``2F-1``-frame trajectory folded into a pair (the paper's RealEstate10K
  recipe on rendered frames).
* :class:`RenderedPairs` / :class:`RenderedVideos` -- sources for :class:`cvd.training.datasets.MixedPairs` that
  render on the fly (slow on a CPU; the open3d ray caster is needed).
* :func:`prerender_cache` -- render ``N`` clips into one compact clip cache file for machines without open3d.

numpy, the reference renderer (open3d) and ``cvd.training`` (data types only; no torch model code).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cvd.training.cache import Clip, write_clip_cache
from cvd.training.samples import PairSample, fold_clip
from cvd_scene.cameras import Cameras, intrinsics_from_fov
from cvd_scene.plan.planning import heading_dir, plan_pattern, scene_layout, trajectory_params

log = logging.getLogger(__name__)

__all__ = [
    "OBJECT_WORDS",
    "RenderedPairs",
    "RenderedVideos",
    "caption_vocabulary",
    "prerender_cache",
    "random_plan",
    "random_prompt",
    "render_folded_pair",
    "render_training_clip",
]

OBJECT_WORDS: dict[str, tuple[str, ...]] = {
    "room": ("sofa", "bed", "shelf", "cabinet", "table", "chair", "lamp", "plant", "rug", "painting", "box", "ball"),
    "courtyard": ("tree", "bench", "fountain", "building", "lamppost", "planter", "box", "ball"),
    "table": ("cup", "vase", "book", "box", "ball", "bowl", "bottle", "can"),
}
"""Object words the prompts of training scenes draw from (the reference scenes know each)."""

_PATTERN = {"room": "look-around", "table": "orbit", "courtyard": "forward-fan"}
_NUMBER_WORDS = ("a", "two", "three")
_PLURAL = {"shelf": "shelves", "box": "boxes", "bench": "benches"}


def _colour_words() -> list[str]:
    from cvd_scene.reference.textures import COLOURS

    return sorted(COLOURS)


def random_prompt(rng: np.random.Generator, kinds: tuple[str, ...] = ("room", "courtyard", "table")) -> tuple[str, str]:
    """A prompt for a random scene (``(prompt, kind)``): the kind, sometimes a colour for it, 0-3 objects with
    counts and sometimes colours. The scene builder adds its own furniture; the caption says what was built."""
    kind = str(rng.choice(kinds))
    colours = _colour_words()
    head = {"room": "room", "courtyard": "courtyard", "table": "tabletop"}[kind]
    lead = f"a {rng.choice(colours)} {head}" if rng.random() < 0.6 else f"a {head}"
    objs = rng.choice(OBJECT_WORDS[kind], size=int(rng.integers(0, 4)), replace=False)
    parts = []
    for o in objs:
        n = str(rng.choice(_NUMBER_WORDS))
        word = o if n == "a" else _PLURAL.get(o, o + "s")
        col = f"{rng.choice(colours)} " if rng.random() < 0.4 else ""
        parts.append(f"{n} {col}{word}")
    return (f"{lead} with " + " and ".join(parts) if parts else lead), kind


def caption_vocabulary() -> list[str]:
    """Text covering the words of the captions the reference scenes get (for a word tokenizer when pairs are
    rendered on the fly and their captions are not known in advance)."""
    from cvd_scene.reference.scene import make_caption

    texts = [" ".join(_colour_words())]
    numbers = ["a", "an", "two", "three", "four", "five", "six", "seven", "eight"]
    texts.append(" ".join(numbers) + " with and moving lamp post posts tabletop")
    for kind, objs in OBJECT_WORDS.items():
        texts.append(make_caption(kind, "red", list(objs) + list(objs), {}, ["ball", "box"]))
    return texts


def random_plan(kind: str, rng: np.random.Generator, num_videos: int, num_frames: int, height: int, width: int) -> Cameras:
    """A plan of ``num_videos`` videos that start at one common camera, in the scene kind's natural pattern
    (room: look-around, table: orbit, courtyard: forward-fan) with a random start, heading, spread and step."""
    layout = scene_layout(kind)
    pattern = _PATTERN[kind]
    start = np.asarray(layout.start_m, np.float64)
    look = np.asarray(layout.look_at_m, np.float64)
    over: dict = {}
    if kind == "room":
        start = start + np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.2), rng.uniform(-0.6, 0.6)])
        yaw = rng.uniform(-math.pi, math.pi)
        look = start + 1.5 * heading_dir(yaw, math.radians(rng.uniform(-12, 5)))
        over = {"step_m": float(rng.uniform(0.3, 0.8)),
                "spread_deg": 360.0 if rng.random() < 0.4 else float(rng.uniform(60, 240)),
                "turn_fraction": float(rng.uniform(0.6, 1.0))}
    elif kind == "courtyard":
        yaw = rng.uniform(-math.pi, math.pi)
        look = start + 4.0 * heading_dir(yaw, math.radians(rng.uniform(-5, 8)))
        over = {"step_m": float(rng.uniform(1.5, 4.0)), "spread_deg": float(rng.uniform(60, 150)),
                "turn_fraction": float(rng.uniform(0.4, 1.0))}
    else:  # table: orbit around the objects from a random azimuth
        rel = start - look
        az = rng.uniform(-math.pi, math.pi)
        c, s = math.cos(az), math.sin(az)
        start = look + np.array([c * rel[0] + s * rel[2], rel[1], -s * rel[0] + c * rel[2]])
        over = {"orbit_arc_deg": float(rng.uniform(40, 150)), "orbit_swing_deg": float(rng.uniform(5, 25)),
                "orbit_radius_m": float(rng.uniform(1.0, 1.5))}
    params = trajectory_params(layout, pattern, start_m=tuple(start), look_at_m=tuple(look), **over)
    world_from_cam = plan_pattern(pattern, num_videos, num_frames, params)
    if num_videos > 1:  # the pattern's videos in a random order (pairs then see every direction)
        world_from_cam = world_from_cam[rng.permutation(num_videos)]
    fov = float(rng.uniform(50.0, 70.0))
    return Cameras(world_from_cam=world_from_cam, K=intrinsics_from_fov(fov, width, height), width=width, height=height)


def _texels_per_m(kind: str, height: int, width: int) -> float:
    """Texture resolution enough for the image size (building the textures dominates small renders)."""
    from cvd_scene.reference.scene import DEFAULT_TEXELS_PER_M

    return DEFAULT_TEXELS_PER_M[kind] * min(1.0, max(0.35, max(height, width) / 256.0))


def _scene(seed: int, height: int, width: int):
    from cvd_scene.reference import build_scene

    rng = np.random.default_rng([seed, 17])
    prompt, kind = random_prompt(rng)
    scene = build_scene(prompt, int(seed), kind=kind, moving_objects=0,
                        texels_per_m=_texels_per_m(kind, height, width))
    return scene, rng


def render_training_clip(
    seed: int, *, num_videos: int = 4, num_frames: int = 12, height: int = 96, width: int = 96,
    samples_per_pixel: int = 2,
) -> Clip:
    """One clip: a random scene (from ``seed``), a random plan of ``num_videos`` videos, rendered; uint8 frames,
    cameras in the scene's world (metres) and the scene's caption."""
    from cvd_scene.reference import render

    scene, rng = _scene(seed, height, width)
    cams = random_plan(scene.kind, rng, num_videos, num_frames, height, width)
    out = render(scene, cams, samples_per_pixel=samples_per_pixel, progress=False, threads=1)
    frames = (np.clip(out.rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Clip(frames=frames, world_from_cam=cams.world_from_cam.copy(), K=cams.K.copy(), caption=scene.caption)


def render_folded_pair(
    seed: int, *, num_frames: int = 12, height: int = 96, width: int = 96, samples_per_pixel: int = 2,
) -> PairSample:
    """One pair by folding: a random scene, one trajectory of ``2F-1`` frames, rendered and folded (video A runs
    backwards from the middle frame to the first, video B forwards from it to the last)."""
    from cvd_scene.reference import render

    scene, rng = _scene(seed, height, width)
    cams = random_plan(scene.kind, rng, 1, 2 * num_frames - 1, height, width)
    out = render(scene, cams, samples_per_pixel=samples_per_pixel, progress=False, threads=1)
    frames = (np.clip(out.rgb[0], 0, 1) * 255 + 0.5).astype(np.uint8)
    f2, world_from_cam, K = fold_clip(frames, cams.world_from_cam[0], cams.K[0])
    return PairSample(frames=f2, caption=scene.caption, kind="posed", K=K, world_from_cam=world_from_cam)


class RenderedPairs:
    """Pairs rendered on the fly: with probability ``fold_fraction`` a folded ``2F-1``-frame trajectory,
    otherwise two videos of a random plan. Every draw builds a new scene (seed from the draw's random stream)."""

    def __init__(self, num_frames: int, height: int, width: int, *, samples_per_pixel: int = 1, seed: int = 0,
                 fold_fraction: float = 0.3) -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        self.spp, self.seed, self.fold_fraction = samples_per_pixel, seed, fold_fraction

    def captions(self) -> list[str]:
        return caption_vocabulary()

    def draw(self, rng: np.random.Generator) -> PairSample:
        seed = int(rng.integers(2**31)) ^ self.seed
        if rng.random() < self.fold_fraction:
            return render_folded_pair(seed, num_frames=self.num_frames, height=self.height, width=self.width,
                                      samples_per_pixel=self.spp)
        clip = render_training_clip(seed, num_videos=2, num_frames=self.num_frames, height=self.height,
                                    width=self.width, samples_per_pixel=self.spp)
        return PairSample(frames=clip.frames, caption=clip.caption, kind="posed", K=clip.K,
                          world_from_cam=clip.world_from_cam)


class RenderedVideos:
    """Single rendered videos (a source of homography pairs)."""

    def __init__(self, num_frames: int, height: int, width: int, *, samples_per_pixel: int = 1, seed: int = 0) -> None:
        self.num_frames, self.height, self.width, self.spp, self.seed = num_frames, height, width, samples_per_pixel, seed

    def captions(self) -> list[str]:
        return caption_vocabulary()

    def video(self, rng: np.random.Generator) -> tuple[np.ndarray, str, str | None]:
        seed = int(rng.integers(2**31)) ^ self.seed
        clip = render_training_clip(seed, num_videos=1, num_frames=self.num_frames, height=self.height,
                                    width=self.width, samples_per_pixel=self.spp)
        return clip.frames[0], clip.caption, None


def prerender_cache(
    path: str | Path,
    num_clips: int,
    *,
    num_videos: int = 4,
    num_frames: int = 12,
    height: int = 96,
    width: int = 96,
    samples_per_pixel: int = 2,
    first_seed: int = 0,
    codec: str = "jpeg",
    jpeg_quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render ``num_clips`` clips (seeds ``first_seed ...``) into one clip cache file; returns a summary (file
    size, seconds, kinds)."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    t0 = time.perf_counter()
    clips = []
    for i in range(num_clips):
        clips.append(render_training_clip(first_seed + i, num_videos=num_videos, num_frames=num_frames,
                                          height=height, width=width, samples_per_pixel=samples_per_pixel))
        if progress is not None:
            progress(i + 1, num_clips)
    meta = {"source": "cvd-scene reference renderer", "first_seed": first_seed, "samples_per_pixel": samples_per_pixel,
            "codec": codec, "jpeg_quality": jpeg_quality}
    out = write_clip_cache(path, clips, codec=codec, jpeg_quality=jpeg_quality, meta=meta)
    seconds = time.perf_counter() - t0
    summary = {"path": str(out), "clips": num_clips, "videos": num_videos, "frames": num_frames,
               "height": height, "width": width, "bytes": out.stat().st_size, "seconds": round(seconds, 1),
               "captions": sorted({c.caption for c in clips})[:5]}
    log.info("wrote %d clips (%d x %d frames at %dx%d) to %s: %.1f MB in %.0f s", num_clips, num_videos, num_frames,
             width, height, out, out.stat().st_size / 1e6, seconds)
    return summary
