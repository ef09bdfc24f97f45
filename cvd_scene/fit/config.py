"""The fit stage's config, :class:`FitConfig` (``fit:`` in a run config).

The fit's library functions (:mod:`cvd_scene.fit.train`) take this config; every check of its values is in
:meth:`FitConfig.__post_init__`, so a bad value is refused when the config is loaded. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Method = Literal["cvd-scene", "cvd-scene-nerf"]
Appearance = Literal["none", "per-frame", "per-video"]
METHODS: tuple[str, ...] = get_args(Method)
"""nerfstudio methods the fit stage trains."""
APPEARANCES: tuple[str, ...] = get_args(Appearance)
"""Colour corrections of the ``cvd-scene`` method."""


@dataclass(kw_only=True)
class FitConfig:
    """How the scene is fitted."""

    method: Method = "cvd-scene"
    """nerfstudio method: ``cvd-scene`` (Gaussian splatting) or ``cvd-scene-nerf`` (NeRF)."""
    iterations: int = 3000
    """Training iterations (densification, resolution, SH and learning-rate schedules are scaled to them, as
    ``ns-train cvd-scene --max-num-iterations`` scales them: :func:`cvd_scene.fit.methods.scaled_schedule`)."""
    time_budget_s: float | None = None
    """Stop training after this many seconds of wall-clock time and keep what was fitted (None: no limit)."""
    eval_every_k: int = 6
    """Hold out every k-th frame of every video for evaluation (frame index % k == k - 1)."""
    held_out_video: str | None = None
    """Hold out every frame of this video instead, and fit the other videos (``eval_every_k`` unused): the held-out
    PSNR then says how well the other videos predict this one (``evaluate.cross_video_fits`` does it per video)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    sh_degree: int = 1
    """Highest SH degree of the Gaussians (0-3; generated views carry little view dependence)."""
    max_gaussians: int = 0
    """Densification pauses while there are at least this many Gaussians (0: no limit; bounds a CPU fit's time)."""
    num_random_points: int = 0
    """Random points added to the registration's sparse points at the start (``cvd-scene``)."""
    appearance: Appearance = "per-frame"
    """Colour correction learnt per training frame (or video) to absorb flicker; renders use the neutral one."""
    views: bool = True
    """Render colour and depth at every registered camera into ``fit/views/`` (the export stage's mesh input)."""
    threads: int | None = 1
    """CPU threads for torch while fitting on the CPU (1: no OpenMP thread waiting on a busy machine, where two
    threads measured up to 20x slower; None: torch's default)."""

    def __post_init__(self) -> None:
        """Every check of the fit settings (``ValueError`` names the key)."""
        from cvd.devices import check_device
        from cvd_scene.config import check_fields

        check_fields(
            self,
            {
                "iterations": ">= 1",
                "time_budget_s": "> 0 or null",
                "eval_every_k": ">= 2",
                "sh_degree": "in [0, 3]",
                "max_gaussians": ">= 0",
                "num_random_points": ">= 0",
                "threads": ">= 1 or null",
            },
        )
        if self.method not in METHODS:
            raise ValueError(f"method must be {' or '.join(METHODS)}, got {self.method!r}")
        if self.appearance not in APPEARANCES:
            raise ValueError(f"appearance must be {', '.join(APPEARANCES)}, got {self.appearance!r}")
        check_device(self.device, "device")
        if self.held_out_video is not None:
            from cvd_scene.paths import check_id

            check_id(self.held_out_video, "fit.held_out_video")
