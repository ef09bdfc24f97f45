"""The evaluate stage's config, :class:`EvaluateConfig`, where both the stage (:mod:`cvd_scene.evaluate.run`)
and the consistency measure (:mod:`cvd_scene.evaluate.consistency`) import it without importing each other.

Pure Python: must not import numpy, pycolmap or any stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class EvaluateConfig:
    """Settings of the consistency evaluation."""

    epipolar_threshold: float = 5e-4
    """A match is correct when its epipolar error (normalised image coordinates) is below this."""
    max_num_features: int = 4096
    """SIFT features per frame."""
    match_max_ratio: float = 0.8
    """Lowe ratio test of the SIFT matcher (matches are also mutual nearest neighbours)."""
    ransac_max_error_px: float = 1.0
    """RANSAC inlier threshold of the essential matrix, pixels."""
    min_baseline_fraction: float = 1e-3
    """Pairs whose planned baseline is below this fraction of the plan's extent are skipped (no translation)."""
    warp_rel_tol: float = 0.03
    """Warp measure (where ground-truth depth exists): a pixel is kept when its depth projected into the other
    view is within this fraction of the depth there (occlusion test)."""
    warp_known_scene: bool = False
    """CVD runs: also score the warp measure on the reference renderer's scene of the run's prompt (its kind and
    seed as ``generate`` names them): render the plan's ground-truth frames and depth, generate again with video 0's
    ground-truth first frame held as frame 0 of every video, and report the generated videos next to the ceiling
    (the ground-truth renders) and the floor (the same model, cross-view modules off, same seed). Costs two
    generations and one render; off by default."""
    cross_video_fits: bool = False
    """Cross-video reconstruction: for each video, fit the registered frames of the other videos (the fit stage's
    settings, ``fit.held_out_video``) and score the fit at that video's cameras against its frames (PSNR, SSIM):
    videos that agree with each other predict each other. Needs ``register/transforms.json``; costs one fit per
    video; off by default."""
    cross_video_iterations: int | None = None
    """Iterations of each cross-video fit (None: ``fit.iterations``)."""
    covisibility_min: float = 0.2
    """Pairs whose planned co-visibility (either direction) is below this are skipped and counted: an essential
    matrix from the few matches of a sliver of shared view is ill-conditioned (on the demo run, pairs sharing under
    15 % of their view gave rotation errors of 8-16 deg from 13-28 correct matches)."""

    def __post_init__(self) -> None:
        from cvd_scene.config import check_fields

        check_fields(
            self,
            {
                "epipolar_threshold": "> 0",
                "max_num_features": ">= 1",
                "match_max_ratio": "in (0, 1]",
                "ransac_max_error_px": "> 0",
                "min_baseline_fraction": ">= 0",
                "covisibility_min": "in [0, 1]",
                "cross_video_iterations": ">= 1 or null",
            },
        )
