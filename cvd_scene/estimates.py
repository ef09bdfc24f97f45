"""Memory and time a stage will need, estimated from its sizes before anything is allocated.

A run whose sizes would need more memory than the machine has available (``plan.width=100000``,
``plan.num_frames=1000000``, ``generate.samples_per_pixel=1000000000``) is refused before any work starts, with
the estimate and the config keys that set it. The estimates count the largest arrays the code allocates (see
each function) plus the process itself; measured on 2 CPU cores: a 4 x 12 x 512² reference generate peaked at 949
MiB (estimate 911 MiB) and rendered 3.8 million rays a second. Pure Python: must not import numpy, torch or any
stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024.0**3

REFERENCE_RAYS_PER_S = 3.0e6
"""Rays per second the reference renderer casts and shades (measured on 2 CPU cores, demo room, 4 spp: 2.8
million at 2 x 4 x 192², 3.8 million at 4 x 12 x 512²)."""
PROCESS_BYTES = 450 * 1024.0**2
"""Memory of the process before a stage allocates (Python, numpy, the libraries; measured 515 MiB peak for a
2 x 4 x 192² generate)."""
MAX_STAGE_HOURS = 48.0
"""Estimated hours above which a stage is refused as a mistake in its sizes."""
MAX_CAMERAS = 100_000
"""Most cameras (videos x frames) a plan may hold: ``cameras.json`` takes about 600 bytes and 0.3 ms a camera to
write, co-visibility grows with their square per frame, and no generator makes that many frames in a run."""
CAMERA_BYTES = 2000.0
"""Memory a camera takes while the plan is built and written (arrays, JSON objects), bytes."""
CAMERA_SECONDS = 3e-4
"""Time a camera takes to write into ``cameras.json`` and the plots (measured: 2 million cameras, about 9 minutes
on a loaded 2-core machine), seconds."""


class EstimateError(ValueError):
    """A stage whose estimated memory or time is out of reach; the message gives the estimate and the keys."""


@dataclass(frozen=True)
class Estimate:
    """What a stage is expected to need."""

    what: str
    """The stage or step, e.g. ``generate (reference renderer)``."""
    memory_bytes: float
    """Peak memory of its largest arrays, bytes."""
    seconds: float | None
    """Wall time at the measured rates, seconds (None: not estimated)."""
    keys: dict
    """The config keys (dotted) and values the estimate follows from."""
    cameras: float | None = None
    """Cameras (videos x frames) of a plan, checked against :data:`MAX_CAMERAS`."""


def available_memory_bytes() -> float:
    """Memory this process could still allocate: ``MemAvailable`` of /proc/meminfo, else the physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def plan_estimate(videos: int, frames: int, width: int, height: int, covisibility_width_px: int, keys: dict) -> Estimate:
    """The plan stage: camera arrays (V x F x 25 float64) and co-visibility on a grid ``covisibility_width_px`` wide
    (per sampled pixel: depth, directions, points and a projection into each video at a time, about 100 bytes)."""
    w = min(covisibility_width_px, width)
    h = max(1, round(height * w / width))
    cameras = float(videos) * frames
    samples = cameras * w * h
    memory = PROCESS_BYTES + cameras * CAMERA_BYTES + samples * 100
    seconds = cameras * CAMERA_SECONDS + samples * videos / 2.0e6 + samples / REFERENCE_RAYS_PER_S
    return Estimate("plan", memory, seconds, keys, cameras=cameras)


def reference_estimate(videos: int, frames: int, width: int, height: int, samples_per_pixel: int, keys: dict) -> Estimate:
    """The reference generator: colour, depth, mask and id of every frame (21 bytes a pixel), their 8-bit and depth
    copies while written (36 a pixel in all, measured), the sub-pixel pattern of one view (8 bytes a sample)."""
    pixels = float(videos) * frames * width * height
    memory = PROCESS_BYTES + pixels * 36 + float(samples_per_pixel) * width * height * 8
    rays = pixels * (samples_per_pixel + (1 if samples_per_pixel > 1 else 0))
    return Estimate("generate (reference renderer)", memory, rays / REFERENCE_RAYS_PER_S, keys)


def frames_estimate(videos: int, frames: int, width: int, height: int, keys: dict) -> Estimate:
    """Any generator: the frames in memory as float32 and the written 8-bit copies (15 bytes a pixel)."""
    return Estimate("generate", PROCESS_BYTES + float(videos) * frames * width * height * 15, None, keys)


def _size(n: float) -> str:
    return f"{n / GIB:.3g} GiB" if n >= 0.1 * GIB else f"{n / 1024**2:.3g} MiB"


def _duration(s: float) -> str:
    return f"{s / 3600:.3g} h" if s >= 3600 else f"{s:.3g} s"


def check_estimate(est: Estimate, available_bytes: float | None = None) -> Estimate:
    """Refuse (:class:`EstimateError`) an estimate above the available memory or :data:`MAX_STAGE_HOURS`."""
    available = available_memory_bytes() if available_bytes is None else available_bytes
    keys = ", ".join(f"{k}={v}" for k, v in est.keys.items())
    time_note = f" and about {_duration(est.seconds)} of work" if est.seconds is not None else ""
    if est.memory_bytes > available:
        raise EstimateError(
            f"{est.what} would need about {_size(est.memory_bytes)} of memory{time_note}, more than the "
            f"{_size(available)} available ({keys}); lower these values"
        )
    if est.cameras is not None and est.cameras > MAX_CAMERAS:
        raise EstimateError(
            f"{est.what} would hold {est.cameras:.3g} cameras (videos x frames), more than {MAX_CAMERAS}: about "
            f"{_size(est.memory_bytes)} of memory{time_note} ({keys}); lower these values"
        )
    if est.seconds is not None and est.seconds > MAX_STAGE_HOURS * 3600:
        raise EstimateError(
            f"{est.what} would take about {_duration(est.seconds)} of work (limit {MAX_STAGE_HOURS:g} h), "
            f"with {_size(est.memory_bytes)} of memory ({keys}); lower these values"
        )
    return est
