"""What the release fixes for sampling and every caller shares: the negative prompt, the guidance rule, and how a
run's peak memory is measured.

Import-light (the standard library only; torch is imported by the caller that has a CUDA device), so scene-side
configs can take these defaults without loading torch. Must never import ``cvd_scene``.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "default_guidance_scale", "peak_memory_mb", "reset_peak_memory"]

DEFAULT_NEGATIVE_PROMPT = "worst quality, low quality, letterboxed"
"""The release's negative prompt."""


def default_guidance_scale(num_videos: int) -> float:
    """The release's classifier-free guidance scale: 8.5 for one or two videos, 14 for more."""
    return 8.5 if num_videos <= 2 else 14.0


def reset_peak_memory(device: Any = None) -> None:
    """Start a new peak for :func:`peak_memory_mb` on a CUDA ``device`` (a ``torch.device``); nothing elsewhere
    (the process's peak resident memory cannot be reset)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: Any = None) -> tuple[float, str]:
    """Peak memory in MiB and its kind: on a CUDA ``device`` (a ``torch.device``) the memory torch allocated there
    since :func:`reset_peak_memory` (``cuda-allocated``), else this process's peak resident memory so far
    (``process-rss``, ``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda-allocated"
    import resource  # Unix only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024.0), "process-rss"
