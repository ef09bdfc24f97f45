"""The one place cvd-scene calls pycolmap: SIFT, matching, two-view geometry, triangulation, mapping, models.

Everything that crosses this module's boundary is numpy or plain Python in the project's conventions (pixels with
centres at +0.5, ``world_from_cam`` with OpenCV axes); pycolmap objects stay opaque handles (``Model`` wraps a
``pycolmap.Reconstruction``). Written against pycolmap 4.2 (names changed across versions: keep them here).
COLMAP's own ``cam_from_world`` is reached only through :func:`cvd_scene.cameras.invert_rigid`.

Must not import torch or any stage.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvd_scene.cameras import invert_rigid

log = logging.getLogger(__name__)

CAMERA_ID = 1
"""Every image of a run shares one PINHOLE camera (the plan's intrinsics)."""


def _pycolmap():
    try:
        import pycolmap
    except ImportError as e:  # pragma: no cover - pycolmap is a dependency
        raise ImportError("registration needs pycolmap (pip install 'pycolmap>=3.11')") from e
    # COLMAP logs every image at INFO and solver hiccups at WARNING through glog; the report carries the outcome.
    pycolmap.logging.minloglevel = 2
    _reassert_sigterm()
    return pycolmap


def _reassert_sigterm() -> None:
    """Importing pycolmap installs glog's failure-signal handler, SIGTERM included, over Python's: a ``kill`` then
    printed a stack trace and aborted instead of stopping the stage cleanly (``cvd_scene.cli.stop_signals_raise``).
    Python still reports its own handler, so setting it again puts it back in force (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


def _threads(num_threads: int) -> int:
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


def pinhole_params(K: np.ndarray) -> list[float]:
    """``[fx, fy, cx, cy]`` of a pinhole matrix [3, 3] (COLMAP's PINHOLE parameter order)."""
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or abs(K[0, 1]) > 1e-9:
        raise ValueError(
            f"need a [3, 3] pinhole matrix without skew, got {K.shape=} skew={K[0, 1] if K.ndim == 2 else None}"
        )
    return [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])]


def _camera(K: np.ndarray, width: int, height: int):
    pycolmap = _pycolmap()
    return pycolmap.Camera(
        model="PINHOLE", width=int(width), height=int(height), params=pinhole_params(K), camera_id=CAMERA_ID
    )


# ------------------------------------------------------------------------------------ in-memory SIFT


@dataclass
class Features:
    """SIFT features of one image."""

    keypoints: np.ndarray
    """[N, 4] float32 keypoints: x, y in pixels (pixel centres at +0.5), scale, orientation (radians)."""
    descriptors: np.ndarray
    """[N, 128] uint8 SIFT descriptors."""

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def xy(self) -> np.ndarray:
        """[N, 2] float64 keypoint positions in pixels."""
        return self.keypoints[:, :2].astype(np.float64)


def extract_sift(
    images: Sequence[np.ndarray], max_num_features: int = 4096, num_threads: int = -1
) -> list[Features]:
    """SIFT features of each image [H, W, 3] or [H, W] float in [0, 1] (colour is averaged to grey)."""
    pycolmap = _pycolmap()
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_num_features)
    opts.num_threads = _threads(num_threads)
    extractor = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
    out = []
    for image in images:
        img = np.asarray(image, np.float32)
        if img.ndim == 3:
            img = img.mean(-1)  # [H, W]
        if img.ndim != 2:
            raise ValueError(f"extract_sift needs images [H, W, 3] or [H, W], got shape {np.shape(image)}")
        kps, desc = extractor.extract_from_float32_array(np.ascontiguousarray(np.clip(img, 0.0, 1.0)))
        kp = np.asarray(pycolmap.keypoints_to_matrix(kps), np.float32).reshape(-1, 4)  # [N, 4]
        out.append(Features(kp, np.asarray(desc.data, np.uint8).reshape(-1, 128)))
    return out


def match_sift(
    features: Sequence[Features],
    pairs: Sequence[tuple[int, int]],
    max_ratio: float = 0.8,
    cross_check: bool = True,
    num_threads: int = -1,
) -> list[np.ndarray]:
    """Putative SIFT matches [M, 2] (indices into each image's keypoints) for every pair ``(i, j)`` of ``features``:
    nearest neighbours passing the ratio test, mutual when ``cross_check``."""
    pycolmap = _pycolmap()
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = _threads(num_threads)
    opts.sift.max_ratio = float(max_ratio)
    opts.sift.cross_check = bool(cross_check)
    matcher = pycolmap.FeatureMatcher.create(opts, pycolmap.Device.cpu)
    handles: dict[int, tuple] = {}

    def handle(i: int) -> tuple:
        if i not in handles:
            f = features[i]
            handles[i] = (
                pycolmap.keypoints_from_matrix(np.ascontiguousarray(f.keypoints, np.float32)),
                pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, f.descriptors),
            )
        return handles[i]

    out = []
    for i, j in pairs:
        if len(features[i]) < 2 or len(features[j]) < 2:
            out.append(np.zeros((0, 2), np.int64))
            continue
        k1, d1 = handle(i)
        k2, d2 = handle(j)
        out.append(np.asarray(matcher.match(k1, d1, k2, d2), np.int64).reshape(-1, 2))
    return out


def estimate_relative_pose(
    points1_px: np.ndarray,
    points2_px: np.ndarray,
    K1: np.ndarray,
    K2: np.ndarray,
    width: int,
    height: int,
    max_error_px: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Essential matrix by LO-RANSAC and its decomposition (cheirality) from matched pixels [M, 2] and [M, 2].

    Returns ``cam2_from_cam1`` [4, 4] (unit translation) and the inlier mask [M], or None when no model was found.
    """
    pycolmap = _pycolmap()
    if len(points1_px) < 5:
        return None
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = float(max_error_px)
    ransac.random_seed = int(seed)
    ransac.confidence = 0.99999
    ransac.num_threads = 1
    res = pycolmap.estimate_essential_matrix(
        np.ascontiguousarray(points1_px, np.float64),
        np.ascontiguousarray(points2_px, np.float64),
        _camera(K1, width, height),
        _camera(K2, width, height),
        ransac,
    )
    if res is None:
        return None
    T = np.eye(4)
    T[:3, :4] = res["cam2_from_cam1"].matrix()
    return T, np.asarray(res["inlier_mask"], bool)


# -------------------------------------------------------------------------------- database pipeline


def extract_features_to_database(
    database_path: Path,
    image_dir: Path,
    image_names: Sequence[str],
    K: np.ndarray,
    max_num_features: int = 4096,
    num_threads: int = -1,
) -> None:
    """SIFT features of the images ``image_dir/<name>`` into a new COLMAP database, one shared PINHOLE camera ``K``."""
    pycolmap = _pycolmap()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    reader.camera_params = ",".join(f"{p:.10g}" for p in pinhole_params(K))
    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_num_features)
    opts.num_threads = _threads(num_threads)
    pycolmap.extract_features(
        database_path,
        image_dir,
        image_names=list(image_names),
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=opts,
        device=pycolmap.Device.cpu,
    )


def _matching_options(num_threads: int, max_ratio: float):
    pycolmap = _pycolmap()
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = _threads(num_threads)
    opts.sift.max_ratio = float(max_ratio)
    return opts


def _verification_options(min_num_inliers: int, max_error_px: float, seed: int):
    pycolmap = _pycolmap()
    opts = pycolmap.TwoViewGeometryOptions()
    opts.min_num_inliers = int(min_num_inliers)
    opts.ransac.max_error = float(max_error_px)
    opts.ransac.random_seed = int(seed)
    # Rendered frames have no watermark; the detector would drop pairs of near-identical views.
    opts.detect_watermark = False
    return opts


def match_pairs_in_database(
    database_path: Path,
    pairs: Sequence[tuple[str, str]],
    pairs_file: Path,
    num_threads: int = -1,
    max_ratio: float = 0.8,
    min_num_inliers: int = 15,
    max_error_px: float = 4.0,
    seed: int = 0,
) -> None:
    """Match and geometrically verify the image pairs ``(name_a, name_b)`` (written to ``pairs_file``)."""
    pycolmap = _pycolmap()
    pairs_file.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pairs_file)
    pycolmap.match_image_pairs(
        database_path,
        matching_options=_matching_options(num_threads, max_ratio),
        pairing_options=pairing,
        verification_options=_verification_options(min_num_inliers, max_error_px, seed),
        device=pycolmap.Device.cpu,
    )


def match_all_in_database(
    database_path: Path,
    num_threads: int = -1,
    max_ratio: float = 0.8,
    min_num_inliers: int = 15,
    max_error_px: float = 4.0,
    seed: int = 0,
) -> None:
    """Match and verify every pair of images in the database (exhaustive; the baseline of structured pairs)."""
    pycolmap = _pycolmap()
    pycolmap.match_exhaustive(
        database_path,
        matching_options=_matching_options(num_threads, max_ratio),
        verification_options=_verification_options(min_num_inliers, max_error_px, seed),
        device=pycolmap.Device.cpu,
    )


@dataclass
class DatabaseStats:
    """What the feature database holds, by image name."""

    image_ids: dict[str, int]
    """COLMAP image id of every image name."""
    num_keypoints: dict[str, int]
    """Keypoints per image name."""
    num_matched_pairs: int
    """Image pairs with putative matches."""
    verified_inliers: dict[tuple[str, str], int]
    """Geometrically verified inlier matches per verified pair (names in database order)."""


def read_database_stats(database_path: Path) -> DatabaseStats:
    """Image ids, keypoint counts and verified pairs of a COLMAP database."""
    pycolmap = _pycolmap()
    with pycolmap.Database.open(database_path) as db:
        images = db.read_all_images()
        ids = {im.name: int(im.image_id) for im in images}
        names = {v: k for k, v in ids.items()}
        kps = {im.name: int(db.num_keypoints_for_image(im.image_id)) for im in images}
        pair_ids, geometries = db.read_two_view_geometries()
        verified = {}
        for pid, g in zip(pair_ids, geometries):
            n = len(g.inlier_matches)
            if n == 0:
                continue
            a, b = pycolmap.pair_id_to_image_pair(pid)
            verified[(names[int(a)], names[int(b)])] = n
        matched = int(db.num_matched_image_pairs())
    return DatabaseStats(ids, kps, matched, verified)


# ------------------------------------------------------------------------------------------- models


class Model:
    """A COLMAP reconstruction (opaque handle; read it through the methods, which speak numpy)."""

    def __init__(self, reconstruction) -> None:
        self._rec = reconstruction

    @property
    def num_points(self) -> int:
        return int(self._rec.num_points3D())

    def world_from_cam(self) -> dict[str, np.ndarray]:
        """``world_from_cam`` [4, 4] (OpenCV axes, the model's world) of every image with a pose, by name."""
        out = {}
        for image in self._rec.images.values():
            if not image.has_pose:
                continue
            cam_from_world = np.eye(4)
            cam_from_world[:3, :4] = image.cam_from_world().matrix()
            out[image.name] = invert_rigid(cam_from_world)
        return out

    def lenses(self) -> dict[str, tuple[str, int, int, tuple[float, ...]]]:
        """The camera of every image with a pose, by name: (COLMAP model name, width, height, parameters)."""
        out = {}
        for image in self._rec.images.values():
            if image.has_pose:
                cam = self._rec.cameras[image.camera_id]
                out[image.name] = (cam.model.name, int(cam.width), int(cam.height), tuple(float(p) for p in cam.params))
        return out

    def intrinsics(self) -> np.ndarray:
        """[3, 3] pinhole matrix of the model's shared camera (after any refinement)."""
        camera = next(iter(self._rec.cameras.values()))
        return np.asarray(camera.calibration_matrix(), np.float64)

    def observations(self) -> dict[str, int]:
        """Number of triangulated keypoints (3D point observations) of every image with a pose, by name."""
        return {im.name: int(im.num_points3D) for im in self._rec.images.values() if im.has_pose}

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sparse points: positions [P, 3] float64, colours [P, 3] uint8, reprojection errors [P] px, track lengths [P]."""
        pts = list(self._rec.points3D.values())
        if not pts:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64)
        xyz = np.array([p.xyz for p in pts], np.float64).reshape(-1, 3)
        rgb = np.array([p.color for p in pts], np.uint8).reshape(-1, 3)
        err = np.array([p.error for p in pts], np.float64)
        track = np.array([p.track.length() for p in pts], np.int64)
        return xyz, rgb, err, track

    def deregister(self, names: Sequence[str]) -> None:
        """Drop the poses of these images (and their observations) from the model."""
        by_name = {im.name: im for im in self._rec.images.values()}
        for n in names:
            im = by_name.get(n)
            if im is not None and im.has_pose:
                self._rec.deregister_frame(im.frame_id)

    def transform(self, scale: float, rotation: np.ndarray, translation: np.ndarray) -> None:
        """Apply ``x_new = scale * rotation @ x + translation`` to every camera and point."""
        pycolmap = _pycolmap()
        M = np.zeros((3, 4))
        M[:, :3] = float(scale) * np.asarray(rotation, np.float64)
        M[:, 3] = np.asarray(translation, np.float64)
        self._rec.transform(pycolmap.Sim3d(M))

    def write(self, folder: Path, text: bool = False) -> None:
        """Write the model as COLMAP ``cameras/images/points3D`` (binary, or text)."""
        folder.mkdir(parents=True, exist_ok=True)
        if text:
            self._rec.write_text(str(folder))
        else:
            self._rec.write_binary(str(folder))

    @staticmethod
    def read(folder: Path) -> Model:
        """The model in ``folder`` (``cameras/images/points3D`` as ``.bin`` or ``.txt``); ``ValueError`` with
        pycolmap's first line of explanation when it cannot be read."""
        pycolmap = _pycolmap()
        try:
            return Model(pycolmap.Reconstruction(str(folder)))
        except (ValueError, RuntimeError, OSError) as e:  # pycolmap's failed checks arrive as ValueError
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(why) from None


def lens_pixels(model: str, width: int, height: int, params: Sequence[float], rays: np.ndarray) -> np.ndarray:
    """Pixel coordinates [N, 2] (pixel centres at +0.5) where camera rays [N, 3] (OpenCV axes) land through a
    lens of COLMAP camera ``model`` (``OPENCV``, ``OPENCV_FISHEYE``, ``SIMPLE_RADIAL``, ...) with ``params``."""
    pycolmap = _pycolmap()
    cam = pycolmap.Camera(model=model, width=int(width), height=int(height), params=list(params))
    return np.asarray(cam.img_from_cam(np.asarray(rays, np.float64)), dtype=np.float64).reshape(-1, 2)


def triangulate_known_poses(
    database_path: Path,
    image_dir: Path,
    output_dir: Path,
    world_from_cam: dict[str, np.ndarray],
    K: np.ndarray,
    width: int,
    height: int,
    min_tri_angle_deg: float = 1.5,
    num_threads: int = -1,
) -> Model:
    """Triangulate the verified matches of the database with the given poses (``world_from_cam`` [4, 4] by name);
    points need a triangulation angle of at least ``min_tri_angle_deg``."""
    pycolmap = _pycolmap()
    stats = read_database_stats(database_path)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(_camera(K, width, height))
    for name, T in world_from_cam.items():
        if name not in stats.image_ids:
            raise ValueError(f"image {name!r} is not in the database {database_path}")
        cam_from_world = invert_rigid(T)
        image = pycolmap.Image(name=name, camera_id=CAMERA_ID, image_id=stats.image_ids[name])
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam_from_world[:3, :4]))
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = _threads(num_threads)
    opts.triangulation.min_angle = float(min_tri_angle_deg)
    opts.mapper.filter_min_tri_angle = float(min_tri_angle_deg)
    output_dir.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.triangulate_points(rec, database_path, image_dir, output_dir, options=opts)
    return Model(rec)


def bundle_adjust(
    model: Model,
    refine_poses: bool = True,
    position_priors_m: dict[str, np.ndarray] | None = None,
    position_prior_sigma_m: float = 0.0,
    num_threads: int = -1,
) -> None:
    """Global bundle adjustment (robust soft-L1 loss) with the shared intrinsics fixed.

    With ``refine_poses`` the poses move; ``position_priors_m`` (camera centre [3] in the model's world, by image
    name) and ``position_prior_sigma_m`` > 0 then add a Gaussian prior on every camera centre, which also fixes the
    gauge (without it the solution may drift by a similarity, to be removed by an alignment afterwards).
    """
    pycolmap = _pycolmap()
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = False
    opts.refine_principal_point = False
    opts.refine_extra_params = False
    opts.refine_rig_from_world = bool(refine_poses)
    opts.print_summary = False
    opts.ceres.solver_options.num_threads = _threads(num_threads)
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.SOFT_L1
    rec = model._rec
    if refine_poses and position_priors_m and position_prior_sigma_m > 0:
        config = pycolmap.BundleAdjustmentConfig()
        priors = []
        for image_id in rec.reg_image_ids():
            image = rec.image(image_id)
            config.add_image(image_id)
            if image.name not in position_priors_m:
                continue
            prior = pycolmap.PosePrior()
            prior.pose_prior_id = int(image_id)
            prior.corr_data_id = image.data_id
            prior.coordinate_system = pycolmap.PosePriorCoordinateSystem.CARTESIAN
            prior.position = np.asarray(position_priors_m[image.name], np.float64).reshape(3)
            prior.position_covariance = np.eye(3) * float(position_prior_sigma_m) ** 2
            priors.append(prior)
        for point_id in rec.point3D_ids():
            config.add_variable_point(point_id)
        prior_opts = pycolmap.PosePriorBundleAdjustmentOptions()
        pycolmap.create_pose_prior_bundle_adjuster(opts, prior_opts, config, priors, rec).solve()
    else:
        pycolmap.bundle_adjustment(rec, opts)
    rec.update_point_3d_errors()


@dataclass
class MapperSettings:
    """Settings of COLMAP's incremental mapper that this project changes."""

    min_num_matches: int = 15
    """Verified matches a pair needs to be used."""
    init_min_num_inliers: int = 100
    """Inliers the initial pair needs (COLMAP halves it when no pair qualifies)."""
    init_min_tri_angle_deg: float = 16.0
    """Triangulation angle the initial pair needs (COLMAP halves it when no pair qualifies)."""
    abs_pose_min_num_inliers: int = 30
    """2D-3D inliers needed to register a further image."""
    abs_pose_min_inlier_ratio: float = 0.25
    """Share of 2D-3D inliers needed to register a further image."""
    min_tri_angle_deg: float = 1.5
    """Smallest triangulation angle a 3D point may have (when created, and when filtered), degrees."""
    ignore_two_view_tracks: bool = True
    """Do not triangulate points seen in only two images while registering further images."""
    max_reg_trials: int = 3
    """How often the mapper retries an image that failed to register."""
    refine_focal_length: bool = False
    """Let bundle adjustment refine the shared focal length (pictures whose field of view is a guess or EXIF's)."""
    seed: int = 0
    """Random seed of every RANSAC."""
    num_threads: int = -1
    """Threads (-1: all cores)."""


def incremental_mapping(
    database_path: Path, image_dir: Path, output_dir: Path, settings: MapperSettings
) -> list[Model]:
    """COLMAP incremental mapping with the shared intrinsics fixed; the models found, largest first."""
    pycolmap = _pycolmap()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = _threads(settings.num_threads)
    opts.random_seed = int(settings.seed)
    opts.min_num_matches = int(settings.min_num_matches)
    opts.min_model_size = 2
    opts.ba_refine_focal_length = bool(settings.refine_focal_length)
    opts.ba_refine_principal_point = False
    opts.ba_refine_extra_params = False
    opts.mapper.init_min_num_inliers = int(settings.init_min_num_inliers)
    opts.mapper.init_min_tri_angle = float(settings.init_min_tri_angle_deg)
    opts.mapper.abs_pose_min_num_inliers = int(settings.abs_pose_min_num_inliers)
    opts.mapper.abs_pose_min_inlier_ratio = float(settings.abs_pose_min_inlier_ratio)
    opts.mapper.filter_min_tri_angle = float(settings.min_tri_angle_deg)
    opts.mapper.max_reg_trials = int(settings.max_reg_trials)
    opts.triangulation.min_angle = float(settings.min_tri_angle_deg)
    opts.triangulation.ignore_two_view_tracks = bool(settings.ignore_two_view_tracks)
    opts.mapper.abs_pose_refine_focal_length = False
    opts.mapper.abs_pose_refine_extra_params = False
    output_dir.mkdir(parents=True, exist_ok=True)
    recs = pycolmap.incremental_mapping(database_path, image_dir, output_dir, options=opts)
    models = [Model(r) for r in recs.values()]
    models.sort(key=lambda m: (-m._rec.num_reg_images(), -m.num_points))
    return models


def global_mapping(
    database_path: Path, image_dir: Path, output_dir: Path, settings: MapperSettings
) -> list[Model]:
    """COLMAP global mapping (GLOMAP: rotation averaging, global positioning, bundle adjustment) with the shared
    intrinsics fixed, on the CPU; the models found, largest first. Copes with rotation-dominant camera motion (small
    triangulation angles) better than incremental mapping."""
    pycolmap = _pycolmap()
    opts = pycolmap.GlobalPipelineOptions()
    opts.num_threads = _threads(settings.num_threads)
    opts.random_seed = int(settings.seed)
    opts.min_num_matches = int(settings.min_num_matches)
    opts.min_model_size = 2
    mapper = opts.mapper
    mapper.num_threads = opts.num_threads
    mapper.random_seed = opts.random_seed
    mapper.global_positioning.use_gpu = False
    mapper.global_positioning.random_seed = opts.random_seed
    mapper.rotation_averaging.random_seed = opts.random_seed
    ba = mapper.bundle_adjustment
    ba.refine_focal_length = bool(settings.refine_focal_length)
    ba.refine_principal_point = False
    ba.refine_extra_params = False
    ba.ceres.use_gpu = False
    output_dir.mkdir(parents=True, exist_ok=True)
    recs = pycolmap.global_mapping(database_path, image_dir, output_dir, opts)
    models = [Model(r) for r in recs.values()]
    models.sort(key=lambda m: (-m._rec.num_reg_images(), -m.num_points))
    return models
