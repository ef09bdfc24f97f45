"""The register stage's config, :class:`RegisterConfig`, where both the stage (:mod:`cvd_scene.register.run`)
and the registration library (:mod:`cvd_scene.register.registration`) import it without importing each other.

Pure Python: must not import numpy, pycolmap or any stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class RegisterConfig:
    """How frames are registered."""

    mode: Literal["known-poses", "free", "planned"] = "known-poses"
    """``known-poses``: triangulate with the planned cameras then bundle-adjust; ``free``: incremental mapping then a
    similarity alignment to the plan (pictures imported without poses: the world levelled from the cameras and the
    sparse points instead, see ``camera_height_m``); ``planned``: trust the plan's cameras (the ones the generator was conditioned
    on) for every frame, seeding points from the matches that verify and from random points inside the views."""
    fallback: Literal["none", "planned"] = "none"
    """What to do when ``known-poses`` or ``free`` registration fails: ``none`` (the stage fails: later stages refuse,
    so a failed registration of generated videos is seen), or ``planned`` (continue on the planned cameras as in
    ``mode: planned``; the report says so prominently)."""
    planned_seed_points: int = 5000
    """``planned`` (and the fallback): top the triangulated points up to this many with random points inside the
    planned views, coloured by the frames (0: triangulated points only)."""
    max_num_features: int = 4096
    """SIFT features per image."""
    covisibility_min: float = 0.2
    """Also match frame pairs whose planned co-visibility is at least this."""
    pairing: Literal["structured", "exhaustive"] = "structured"
    """``structured``: pairs from the plan's structure (neighbours within a video, the same frame index across
    videos, co-visible pairs); ``exhaustive``: every pair (slow; the baseline)."""
    sequential_overlap: int = 3
    """Match every frame with the next this many frames of its video."""
    loop_gaps: bool = True
    """Also match frames 4, 8, 16, ... apart within a video."""
    cross_neighbours: int = 1
    """Across co-visible videos, also match frame k with frames k +- 1 .. this many of the other video."""
    overlap_top_k: int = 4
    """Also match every frame with this many frames of other videos whose planned views overlap it most (at least
    ``covisibility_min``), whatever their index: videos that pass the same place at different times."""
    min_num_inliers: int = 15
    """Verified matches a frame pair needs (geometric verification)."""
    min_observations: int = 15
    """Triangulated keypoints a frame needs to count as registered."""
    min_features_per_frame: int = 30
    """Below this many SIFT features per frame on average a video is reported as blank or featureless."""
    min_registered_fraction: float = 0.5
    """Below this share of registered frames the stage fails (and later stages refuse to run)."""
    refine_poses: bool = True
    """known-poses: let bundle adjustment move the planned poses (the report says how far they moved)."""
    position_prior_fraction: float = 0.02
    """known-poses: standard deviation of the Gaussian prior keeping each camera centre near its planned place during
    bundle adjustment, as a fraction of the plan's extent (0: no prior; a similarity alignment follows anyway)."""
    free_mapper: Literal["auto", "incremental", "global"] = "auto"
    """free: ``incremental`` (COLMAP's incremental mapper), ``global`` (GLOMAP-style global mapper) or ``auto``:
    incremental, then global when frames are left out, keeping the model that registers more frames (ties: the
    incremental one). Rotation-dominant plans (look-around) leave little parallax, where global mapping copes better."""
    init_min_num_inliers: int = 100
    """free: inliers the mapper's initial pair needs (COLMAP relaxes it when no pair qualifies)."""
    init_min_tri_angle_deg: float = 16.0
    """free: triangulation angle the mapper's initial pair needs, degrees (relaxed likewise)."""
    min_tri_angle_deg: float = 1.0
    """Smallest triangulation angle of a 3D point, degrees (known-poses triangulation and the incremental mapper;
    COLMAP's default 1.5 drops the far points of rotation-dominant plans, leaving their last frames unregistered)."""
    min_baseline_fraction: float = 1e-3
    """Frame pairs whose planned baseline is below this fraction of the plan's extent have no translation direction
    and are left out of the translation-direction error."""
    exhaustive_below: int = 100
    """free, pictures without poses: match every pair of frames when there are at most this many frames; above it,
    each frame with the next ``sequential_overlap`` and (``loop_gaps``) frames 4, 8, 16, ... further in its video,
    and every 4th frame of each video with every 4th frame of the others."""
    camera_height_m: float = 1.6
    """free, pictures without poses: the scale: the cameras' median height above the dominant horizontal plane of
    the sparse points in metres (without such a plane, the median depth of the points), unless ``scale_m``."""
    scale_m: float | None = None
    """free, pictures without poses: the distance from the first to the last picture's camera, metres, when known;
    it sets the scale instead of ``camera_height_m``."""
    keep_database: bool = False
    """Keep the COLMAP database (``register/colmap/database.db``, several MB) for inspection."""

    def __post_init__(self) -> None:
        from cvd_scene.config import check_fields

        check_fields(
            self,
            {
                "max_num_features": ">= 1",
                "covisibility_min": "in [0, 1]",
                "sequential_overlap": ">= 0",
                "cross_neighbours": ">= 0",
                "overlap_top_k": ">= 0",
                "min_num_inliers": ">= 1",
                "min_observations": ">= 1",
                "min_features_per_frame": ">= 0",
                "min_registered_fraction": "in [0, 1]",
                "position_prior_fraction": ">= 0",
                "init_min_num_inliers": ">= 1",
                "init_min_tri_angle_deg": "in [0, 180)",
                "min_tri_angle_deg": "in [0, 180)",
                "min_baseline_fraction": ">= 0",
                "exhaustive_below": ">= 0",
                "camera_height_m": "> 0",
                "scale_m": "> 0 or null",
            },
        )
    text_model: bool = False
    """Also write the COLMAP model as text (``register/sparse_text/``)."""
