"""Trajectory planning: the cameras of N videos that all start at one common camera.

Every pattern is a pure function ``pattern(num_videos, num_frames, params) -> world_from_cam [V, F, 4, 4]``
(OpenCV camera axes, Y-up metric world, floor at y = 0, see docs/architecture.md) whose first frame is the
same camera for every video, as the CVD model was trained. :data:`PATTERNS` names them; :class:`SceneLayout`
says where the scene of each kind (room, table, courtyard) is, so a plan frames it; :func:`trajectory_params`
fills the parameters a config leaves open from the layout.

Pure numpy (plus the camera readers of :mod:`cvd_scene.camera_io`). Must not import torch, the model package
or any stage implementation.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cvd_scene.camera_io import read_re10k
from cvd_scene.cameras import Cameras, axis_angle_to_rotation, intrinsics_from_fov, look_at, rigid

log = logging.getLogger(__name__)

SCENE_KINDS: tuple[str, ...] = ("room", "table", "courtyard")
"""The scene kinds the reference renderer builds, and whose layouts plans frame."""

DEFAULT_PATTERN: dict[str, str] = {"room": "look-around", "table": "orbit", "courtyard": "forward-fan"}
"""The pattern ``pattern: auto`` picks for each scene kind."""


# ------------------------------------------------------------------------------------------- scene layout


@dataclass(frozen=True, kw_only=True)
class SceneLayout:
    """Where the scene of one kind is, in the world frame (metres, +y up, floor / ground at y = 0).

    The reference renderer builds its scenes inside this layout; plans start at ``start_m`` and co-visibility
    uses the proxy surfaces (``proxy_boxes``) when no exact depth is given.
    """

    kind: str
    """``room``, ``table`` or ``courtyard``."""
    start_m: tuple[float, float, float]
    """Natural position of the common first camera."""
    look_at_m: tuple[float, float, float]
    """The point the common first camera looks at (the orbit target of the table)."""
    step_m: float
    """Default translation of one video over its clip (look-around, forward-fan, spiral radius)."""
    bounds_min_m: tuple[float, float, float]
    """Lower corner of the box cameras must stay inside (the room's walls, floor; the courtyard's
    buildings)."""
    bounds_max_m: tuple[float, float, float]
    """Upper corner of that box (the ceiling, the walls)."""
    proxy_boxes: tuple[
        tuple[tuple[float, float, float], tuple[float, float, float], tuple[str, ...], tuple[str, ...]], ...
    ]
    """Proxy surfaces: axis-aligned boxes ``(min_m, max_m, counted_faces, open_faces)``; faces are named
    ``-x``, ``+x``, ``-y``, ``+y`` (top), ``-z``, ``+z``. Counted faces make up the surface whose coverage is
    measured; open faces are left out (the courtyard's sky)."""


ROOM_HALF_X_M = 3.0
"""Room: walls at x = +-3 m."""
ROOM_HALF_Z_M = 3.0
"""Room: walls at z = +-3 m."""
ROOM_HEIGHT_M = 2.7
"""Room: ceiling height."""
TABLE_TOP_Y_M = 0.75
"""Table: height of the tabletop."""
TABLE_HALF_M = 0.6
"""Table: half-size of the (square) tabletop."""
TABLE_OBJECTS_HALF_M = 0.25
"""Table: the objects stand within this half-size around the origin (proxy: one block)."""
TABLE_OBJECTS_HEIGHT_M = 0.25
"""Table: height of the proxy block standing for the objects."""
TABLE_TARGET_M = (0.0, 0.85, 0.0)
"""Table: the point an orbit looks at."""
TABLE_ORBIT_RADIUS_M = 1.2
"""Table: natural orbit radius."""
TABLE_ORBIT_ELEVATION_DEG = 25.0
"""Table: natural orbit elevation above the target."""
ALL_FACES = ("-x", "+x", "-y", "+y", "-z", "+z")
"""Every face of a proxy box."""
COURTYARD_HALF_M = 12.0
"""Courtyard: buildings stand about this far from the origin (8-15 m), proxy walls at +-12 m."""
COURTYARD_BUILDING_HEIGHT_M = 10.0
"""Courtyard: proxy height of the buildings."""


def _table_start() -> tuple[float, float, float]:
    el = math.radians(TABLE_ORBIT_ELEVATION_DEG)
    tx, ty, tz = TABLE_TARGET_M
    r = TABLE_ORBIT_RADIUS_M
    return (tx, ty + r * math.sin(el), tz + r * math.cos(el))


LAYOUTS: dict[str, SceneLayout] = {
    "room": SceneLayout(
        kind="room",
        start_m=(0.0, 1.5, 0.0),
        look_at_m=(0.0, 1.3, -1.2),
        step_m=0.6,
        bounds_min_m=(-ROOM_HALF_X_M, 0.0, -ROOM_HALF_Z_M),
        bounds_max_m=(ROOM_HALF_X_M, ROOM_HEIGHT_M, ROOM_HALF_Z_M),
        proxy_boxes=(
            (
                (-ROOM_HALF_X_M, 0.0, -ROOM_HALF_Z_M),
                (ROOM_HALF_X_M, ROOM_HEIGHT_M, ROOM_HALF_Z_M),
                ALL_FACES,
                (),
            ),
        ),
    ),
    "table": SceneLayout(
        kind="table",
        start_m=_table_start(),
        look_at_m=TABLE_TARGET_M,
        step_m=0.3,
        bounds_min_m=(-3.0, 0.0, -3.0),
        bounds_max_m=(3.0, ROOM_HEIGHT_M, 3.0),
        proxy_boxes=(
            ((-3.0, 0.0, -3.0), (3.0, ROOM_HEIGHT_M, 3.0), (), ()),
            (
                (-TABLE_HALF_M, TABLE_TOP_Y_M - 0.04, -TABLE_HALF_M),
                (TABLE_HALF_M, TABLE_TOP_Y_M, TABLE_HALF_M),
                ("+y",),
                (),
            ),
            (
                (-TABLE_OBJECTS_HALF_M, TABLE_TOP_Y_M, -TABLE_OBJECTS_HALF_M),
                (TABLE_OBJECTS_HALF_M, TABLE_TOP_Y_M + TABLE_OBJECTS_HEIGHT_M, TABLE_OBJECTS_HALF_M),
                ("-x", "+x", "+y", "-z", "+z"),
                ("-y",),
            ),
        ),
    ),
    "courtyard": SceneLayout(
        kind="courtyard",
        start_m=(0.0, 1.6, 0.0),
        look_at_m=(0.0, 1.6, -4.0),
        step_m=3.0,
        bounds_min_m=(-COURTYARD_HALF_M, 0.0, -COURTYARD_HALF_M),
        bounds_max_m=(COURTYARD_HALF_M, COURTYARD_BUILDING_HEIGHT_M, COURTYARD_HALF_M),
        proxy_boxes=(
            (
                (-COURTYARD_HALF_M, 0.0, -COURTYARD_HALF_M),
                (COURTYARD_HALF_M, COURTYARD_BUILDING_HEIGHT_M, COURTYARD_HALF_M),
                ("-x", "+x", "-y", "-z", "+z"),
                ("+y",),  # open to the sky
            ),
        ),
    ),
}
"""The layout of every scene kind."""


def scene_layout(kind: str) -> SceneLayout:
    """The :class:`SceneLayout` of a scene kind; an unknown kind is an error listing the known ones."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown scene kind {kind!r}; known kinds: {', '.join(SCENE_KINDS)}")
    return LAYOUTS[kind]


def scene_kind_from_prompt(prompt: str, default: str = "room") -> str:
    """The scene kind a prompt names (``default`` when none): room and courtyard words win over table words
    ("a room with a table" is a room); between room and courtyard the one named more often, ties to the first.

    The reference renderer reads prompts with this rule and more synonyms; the plan stage uses its reading
    when it is installed, this one otherwise.
    """
    names = {
        "room": "room",
        "rooms": "room",
        "courtyard": "courtyard",
        "courtyards": "courtyard",
        "table": "table",
        "tables": "table",
        "tabletop": "table",
    }
    hits: dict[str, list[int]] = {k: [] for k in SCENE_KINDS}
    for i, word in enumerate(re.findall(r"[a-z]+", prompt.lower())):
        if word in names:
            hits[names[word]].append(i)
    place = [k for k in ("room", "courtyard") if hits[k]]
    if place:
        return max(place, key=lambda k: (len(hits[k]), -hits[k][0]))
    return "table" if hits["table"] else default


# ------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True, kw_only=True)
class TrajectoryParams:
    """Every number a pattern uses, resolved (no defaults left open). Metres and degrees, world frame."""

    start_m: tuple[float, float, float]
    """Position of the common first camera (the orbit moves it onto its sphere when the radius is given)."""
    look_at_m: tuple[float, float, float]
    """Point the common first camera looks at; target of orbit and of the released patterns."""
    step_m: float
    """Translation of one video over its clip (look-around, forward-fan) or final spiral radius."""
    spread_deg: float
    """Angle spanned by the N directions (360: all around, evenly spaced)."""
    turn_fraction: float = 1.0
    """look-around / forward-fan: part of the clip (0-1] over which a video turns to its direction."""
    spin_deg: float = 90.0
    """spiral: extra turn of every video over its clip, on top of its own direction."""
    rise_m: float = 0.2
    """spiral: height gained over the clip."""
    orbit_radius_m: float | None = None
    """orbit: distance to ``look_at_m``; None keeps the start's distance."""
    orbit_elevation_deg: float | None = None
    """orbit: elevation of the start above the target; None keeps the start's elevation."""
    orbit_arc_deg: float = 160.0
    """orbit: azimuth travelled by a video heading sideways (videos spread in azimuth and elevation); below
    180 so that videos going round both ways do not meet (a zero baseline) at the far side."""
    orbit_swing_deg: float = 20.0
    """orbit: elevation travelled by a video heading up or down."""
    released_offset_m: float | None = None
    """circle / hemisphere / interpolate: distance of every video's last camera from the start (the release's
    ``camera_dist``); None: half the distance to ``look_at_m`` (the release's 0.5 for a look-at 1 unit ahead),
    at most 0.8 x the start's height (:func:`trajectory_params` fills it in)."""


def trajectory_params(layout: SceneLayout, pattern: str, **overrides) -> TrajectoryParams:
    """The parameters of ``pattern`` in ``layout``: the layout's natural values, replaced by every override
    that is not None (keys are :class:`TrajectoryParams` fields)."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; known patterns: {', '.join(PATTERNS)}")
    spread = {"forward-fan": 90.0}.get(pattern, 360.0)
    turn_fraction = {"forward-fan": 0.5}.get(pattern, 1.0)
    params = TrajectoryParams(
        start_m=layout.start_m,
        look_at_m=layout.look_at_m,
        step_m=layout.step_m,
        spread_deg=spread,
        turn_fraction=turn_fraction,
    )
    known = set(TrajectoryParams.__dataclass_fields__)
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown trajectory parameter(s) {bad}; known: {', '.join(sorted(known))}")
    given = {
        k: (tuple(float(x) for x in v) if k.endswith("_m") and isinstance(v, Sequence) else v)
        for k, v in overrides.items()
        if v is not None
    }
    params = replace(params, **given)
    check_params(params)
    if params.released_offset_m is None:
        # The release's ratio (offset 0.5 for a look-at 1 unit ahead), kept above the floor: a video's last
        # camera may sit the offset straight below the start.
        look_m = float(np.linalg.norm(np.subtract(params.look_at_m, params.start_m)))
        params = replace(params, released_offset_m=min(0.5 * look_m, 0.8 * max(params.start_m[1], 0.1)))
    return params


def check_params(p: TrajectoryParams) -> None:
    """Raise ``ValueError`` naming the first parameter that no pattern can use."""
    for name in ("start_m", "look_at_m"):
        v = np.asarray(getattr(p, name), dtype=np.float64)
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be 3 finite numbers (x, y, z metres), got {getattr(p, name)!r}")
    if np.linalg.norm(np.subtract(p.look_at_m, p.start_m)) < 1e-6:
        raise ValueError(
            f"look_at_m {p.look_at_m} equals start_m {p.start_m}: the first camera has no view direction"
        )
    if not (p.step_m >= 0 and math.isfinite(p.step_m)):
        raise ValueError(f"step_m must be >= 0, got {p.step_m!r}")
    if not (0 <= p.spread_deg <= 360):
        raise ValueError(f"spread_deg must be in [0, 360], got {p.spread_deg!r}")
    if not (0 < p.turn_fraction <= 1):
        raise ValueError(f"turn_fraction must be in (0, 1], got {p.turn_fraction!r}")
    if p.orbit_radius_m is not None and not p.orbit_radius_m > 0:
        raise ValueError(f"orbit_radius_m must be > 0, got {p.orbit_radius_m!r}")
    if p.released_offset_m is not None and not p.released_offset_m > 0:
        raise ValueError(f"released_offset_m must be > 0, got {p.released_offset_m!r}")


def _check_counts(num_videos: int, num_frames: int) -> None:
    for name, n in (("num_videos", num_videos), ("num_frames", num_frames)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")


# -------------------------------------------------------------------------------------------- helpers


def progress(num_frames: int) -> np.ndarray:
    """[F] progress of every frame along a clip, 0 at the first frame and 1 at the last (0 when F = 1)."""
    return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def heading_dir(yaw_rad: np.ndarray, pitch_rad: np.ndarray | float = 0.0) -> np.ndarray:
    """[..., 3] view direction for a yaw about +y (0 looks along -z, positive turns left towards -x) and a
    pitch (positive looks up)."""
    yaw = np.asarray(yaw_rad, dtype=np.float64)
    pitch = np.broadcast_to(np.asarray(pitch_rad, dtype=np.float64), yaw.shape)
    c = np.cos(pitch)
    return np.stack([-np.sin(yaw) * c, np.sin(pitch), -np.cos(yaw) * c], axis=-1)


def yaw_pitch_of(direction: np.ndarray) -> tuple[float, float]:
    """Yaw and pitch (radians, conventions of :func:`heading_dir`) of a direction [3]."""
    d = np.asarray(direction, dtype=np.float64)
    yaw = math.atan2(-d[0], -d[2])
    pitch = math.atan2(d[1], math.hypot(d[0], d[2]))
    if abs(pitch) > math.radians(89.0):
        raise ValueError(
            f"the first camera looks straight up or down (pitch {math.degrees(pitch):.1f} deg); "
            "move look_at_m off the vertical through start_m"
        )
    return yaw, pitch


def start_pose(params: TrajectoryParams) -> np.ndarray:
    """[4, 4] the common first camera: at ``start_m`` looking at ``look_at_m``, image up along world +y."""
    yaw_pitch_of(np.subtract(params.look_at_m, params.start_m))
    return look_at(np.asarray(params.start_m, float), np.asarray(params.look_at_m, float))


def fan_offsets_rad(num_videos: int, spread_deg: float) -> np.ndarray:
    """[V] direction of every video relative to the start heading, radians.

    A full 360 degrees spaces them evenly all around (0, 360/V, ... wrapped to (-180, 180]); a smaller spread
    spaces them evenly from -spread/2 to +spread/2 (one video: straight ahead).
    """
    if spread_deg >= 360.0 - 1e-9:
        deg = 360.0 * np.arange(num_videos) / num_videos
        deg = np.where(deg > 180.0, deg - 360.0, deg)
    elif num_videos == 1:
        deg = np.zeros(1)
    else:
        deg = np.linspace(-spread_deg / 2.0, spread_deg / 2.0, num_videos)
    return np.deg2rad(deg)


def slerp_rotations(R0: np.ndarray, R1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[..., T, 3, 3] rotations along the shortest arc from R0 [..., 3, 3] to R1 [..., 3, 3] at fractions t
    [T]."""
    R0 = np.asarray(R0, dtype=np.float64)
    R1 = np.asarray(R1, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    rel = np.swapaxes(R0, -1, -2) @ R1  # [..., 3, 3] R0^T R1
    axis, angle = _rotation_to_axis_angle(rel)  # [..., 3], [...]
    steps = axis_angle_to_rotation(axis[..., None, :], angle[..., None] * t)  # [..., T, 3, 3]
    return R0[..., None, :, :] @ steps


def _rotation_to_axis_angle(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis [..., 3] (unit; x for the identity) and angle [...] in [0, pi] of rotations [..., 3, 3]."""
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    w = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    axis = w.copy()
    norm = np.linalg.norm(w, axis=-1)
    # Near pi the antisymmetric part vanishes: take the axis from the symmetric part (R + I)/2 = a a^T.
    near_pi = norm < 1e-6
    if np.any(near_pi):
        S = (R[near_pi] + np.eye(3)) / 2.0  # [n, 3, 3]
        col = np.argmax(np.diagonal(S, axis1=-2, axis2=-1), axis=-1)
        a = S[np.arange(S.shape[0]), :, col]  # [n, 3] the axis up to sign
        a *= np.where(np.sum(a * w[near_pi], axis=-1) < 0, -1.0, 1.0)[:, None]  # the sign of the tiny w
        axis[near_pi] = a
        norm = np.linalg.norm(axis, axis=-1)
    small = norm < 1e-12
    axis = np.where(small[..., None], np.array([1.0, 0.0, 0.0]), axis / np.where(small, 1.0, norm)[..., None])
    angle = np.where(small & (cos > 0), 0.0, angle)
    return axis, angle


def interpolate_poses(src: np.ndarray, dst: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[..., T, 4, 4] poses from ``src`` [..., 4, 4] to ``dst`` [..., 4, 4] at fractions t [T]: rotations by
    SLERP, positions linearly."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    R = slerp_rotations(src[..., :3, :3], dst[..., :3, :3], t)  # [..., T, 3, 3]
    p0 = src[..., None, :3, 3]
    p = p0 + (dst[..., None, :3, 3] - p0) * t[:, None]  # [..., T, 3]
    return rigid(R, p)


def interpolate_trajectories(
    a: np.ndarray, b: np.ndarray, weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """[N, F, 4, 4] trajectories between ``a`` [F, 4, 4] (weight 0) and ``b`` [F, 4, 4] (weight 1), frame by
    frame: rotations by SLERP, positions linearly. Two trajectories with one first camera give N with that
    first camera."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[-2:] != (4, 4):
        raise ValueError(f"need two trajectories [F, 4, 4] of one length, got {a.shape=} {b.shape=}")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    R = slerp_rotations(a[:, :3, :3], b[:, :3, :3], w)  # [F, N, 3, 3]
    p = a[:, None, :3, 3] + (b[:, None, :3, 3] - a[:, None, :3, 3]) * w[:, None]  # [F, N, 3]
    return np.swapaxes(rigid(R, p), 0, 1)  # [N, F, 4, 4]


def perturb(world_from_cam: np.ndarray, position_m: float, rotation_deg: float, seed: int) -> np.ndarray:
    """[V, F, 4, 4] trajectories with a seeded random drift that grows linearly from 0 at the first frame (so
    the common first camera stays) to about ``position_m`` / ``rotation_deg`` (standard deviations) at the
    last."""
    world_from_cam = np.asarray(world_from_cam, dtype=np.float64)
    V, F = world_from_cam.shape[:2]
    if position_m < 0 or rotation_deg < 0:
        raise ValueError(
            f"perturbation must be >= 0, got position_m={position_m} rotation_deg={rotation_deg}"
        )
    rng = np.random.default_rng(seed)
    t = progress(F)  # [F]
    dp = rng.normal(scale=position_m, size=(V, 3))  # [V, 3]
    rotvec = rng.normal(scale=np.deg2rad(rotation_deg), size=(V, 3))  # [V, 3]
    angle = np.linalg.norm(rotvec, axis=-1)  # [V]
    axis = np.where(
        angle[:, None] > 0, rotvec / np.maximum(angle, 1e-300)[:, None], np.array([1.0, 0.0, 0.0])
    )
    dR = axis_angle_to_rotation(axis[:, None, :], angle[:, None] * t)  # [V, F, 3, 3] in camera axes
    out = world_from_cam.copy()
    out[..., :3, :3] = world_from_cam[..., :3, :3] @ dR
    out[..., :3, 3] += dp[:, None, :] * t[None, :, None]
    return out


# ------------------------------------------------------------------------------------------- patterns


def look_around(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """From a room centre: video i turns (yaw, over ``turn_fraction`` of the clip) towards direction i of
    :func:`fan_offsets_rad` while moving ``step_m`` along that direction in a straight level line."""
    return _fan(num_videos, num_frames, p)


def forward_fan(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """Outdoors: video i walks ``step_m`` forward along direction i of a fan of ``spread_deg`` (default 90)
    centred on the start heading, facing that direction from ``turn_fraction`` of the clip on."""
    return _fan(num_videos, num_frames, p)


def _fan(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    _check_counts(num_videos, num_frames)
    yaw0, pitch0 = yaw_pitch_of(np.subtract(p.look_at_m, p.start_m))
    t = progress(num_frames)  # [F]
    off = fan_offsets_rad(num_videos, p.spread_deg)  # [V]
    turn = np.minimum(t / p.turn_fraction, 1.0)  # [F]
    yaw = yaw0 + off[:, None] * turn[None, :]  # [V, F]
    move = heading_dir(yaw0 + off)  # [V, 3] level unit directions
    eye = np.asarray(p.start_m) + p.step_m * t[None, :, None] * move[:, None, :]  # [V, F, 3]
    return look_at(eye, eye + heading_dir(yaw, pitch0))


def spiral(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """Video i leaves the start on a widening level spiral: at progress t it is ``step_m * t`` from the start
    in direction ``(offset_i + spin_deg * t)``, ``rise_m * t`` higher, and its heading has turned by
    ``(offset_i + spin_deg) * t`` (offsets spread over ``spread_deg``)."""
    _check_counts(num_videos, num_frames)
    yaw0, pitch0 = yaw_pitch_of(np.subtract(p.look_at_m, p.start_m))
    t = progress(num_frames)  # [F]
    off = fan_offsets_rad(num_videos, p.spread_deg)  # [V]
    spin = math.radians(p.spin_deg)
    angle = yaw0 + off[:, None] + spin * t[None, :]  # [V, F] direction of travel from the start
    radial = heading_dir(angle)  # [V, F, 3] level unit vectors
    eye = np.asarray(p.start_m) + p.step_m * t[None, :, None] * radial  # [V, F, 3]
    eye[..., 1] += p.rise_m * t[None, :]
    yaw = yaw0 + (off[:, None] + spin) * t[None, :]  # [V, F]
    return look_at(eye, eye + heading_dir(yaw, pitch0))


def orbit(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """Around an object at ``look_at_m``, always looking at it: video i travels on the sphere of radius
    ``orbit_radius_m`` by ``(orbit_arc_deg * cos a_i, orbit_swing_deg * sin a_i)`` in (azimuth, elevation),
    a_i = 2 pi i / N; so two videos go left and right, four also up and down."""
    _check_counts(num_videos, num_frames)
    target = np.asarray(p.look_at_m, dtype=np.float64)
    rel = np.asarray(p.start_m, dtype=np.float64) - target
    dist = float(np.linalg.norm(rel))
    radius = p.orbit_radius_m if p.orbit_radius_m is not None else dist
    el0 = (
        math.radians(p.orbit_elevation_deg) if p.orbit_elevation_deg is not None else math.asin(rel[1] / dist)
    )
    az0 = math.atan2(rel[0], rel[2])
    t = progress(num_frames)  # [F]
    a = 2.0 * np.pi * np.arange(num_videos) / num_videos  # [V]
    az = az0 + math.radians(p.orbit_arc_deg) * np.cos(a)[:, None] * t[None, :]  # [V, F]
    el = el0 + math.radians(p.orbit_swing_deg) * np.sin(a)[:, None] * t[None, :]  # [V, F]
    if np.abs(el).max() > math.radians(85.0):
        raise ValueError(
            f"orbit elevation reaches {math.degrees(np.abs(el).max()):.1f} deg (start "
            f"{math.degrees(el0):.1f} + swing {p.orbit_swing_deg}); keep it within +-85 deg"
        )
    eye = target + radius * np.stack(
        [np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1
    )  # [V, F, 3]
    return look_at(eye, np.broadcast_to(target, eye.shape))


def _released(num_videos: int, num_frames: int, p: TrajectoryParams, offsets_cam: np.ndarray) -> np.ndarray:
    """The released CVD patterns: video i goes from the start to the last camera at ``offsets_cam[i]`` (start
    camera axes, [V, 3]) looking at ``look_at_m``: rotations by SLERP, positions linearly."""
    start = start_pose(p)  # [4, 4]
    R_s = start[:3, :3]
    eye = start[:3, 3] + offsets_cam @ R_s.T  # [V, 3]
    target = np.broadcast_to(np.asarray(p.look_at_m, dtype=np.float64), eye.shape)
    up = np.broadcast_to(-R_s[:, 1], eye.shape)  # the start camera's image-up: no roll relative to it
    last = look_at(eye, target, up)  # [V, 4, 4]
    return interpolate_poses(np.broadcast_to(start, last.shape), last, progress(num_frames))


def _released_offset(p: TrajectoryParams) -> float:
    if p.released_offset_m is not None:
        return p.released_offset_m
    return 0.5 * float(np.linalg.norm(np.subtract(p.look_at_m, p.start_m)))


def circle(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """Released ``circle``: last cameras evenly around a circle of radius ``released_offset_m`` in the start
    camera's image plane (angle 2 pi i / N), all looking at ``look_at_m``."""
    _check_counts(num_videos, num_frames)
    a = 2.0 * np.pi * np.arange(num_videos) / num_videos
    off = _released_offset(p) * np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], -1)  # [V, 3]
    return _released(num_videos, num_frames, p, off)


def hemisphere(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """Released ``upper_hemi``: last cameras evenly on the upper half of that circle (angles pi ... 2 pi;
    image up is camera -y), all looking at ``look_at_m``."""
    _check_counts(num_videos, num_frames)
    a = np.pi + (
        np.pi * np.arange(num_videos) / (num_videos - 1) if num_videos > 1 else np.array([np.pi / 2])
    )
    off = _released_offset(p) * np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], -1)  # [V, 3]
    return _released(num_videos, num_frames, p, off)


def interpolate(num_videos: int, num_frames: int, p: TrajectoryParams) -> np.ndarray:
    """Released ``interpolate``: last cameras on a tilted half-ellipse in front of the start, angle a = pi i /
    (N-1), offset (cos a, 0.3 cos(a + 0.5), -0.2 sin a) x ``released_offset_m``."""
    _check_counts(num_videos, num_frames)
    a = np.pi * np.arange(num_videos) / (num_videos - 1) if num_videos > 1 else np.zeros(1)
    off = _released_offset(p) * np.stack([np.cos(a), 0.3 * np.cos(a + 0.5), -0.2 * np.sin(a)], -1)  # [V, 3]
    return _released(num_videos, num_frames, p, off)


PatternFn = Callable[[int, int, TrajectoryParams], np.ndarray]

PATTERNS: dict[str, PatternFn] = {
    "look-around": look_around,
    "orbit": orbit,
    "forward-fan": forward_fan,
    "spiral": spiral,
    "circle": circle,
    "hemisphere": hemisphere,
    "interpolate": interpolate,
}
"""Every trajectory pattern by name: ``fn(num_videos, num_frames, params) -> world_from_cam [V, F, 4, 4]``."""


def plan_pattern(name: str, num_videos: int, num_frames: int, params: TrajectoryParams) -> np.ndarray:
    """``world_from_cam`` [V, F, 4, 4] of the pattern ``name``; an unknown name lists the known ones."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; known patterns: {', '.join(PATTERNS)}")
    _check_counts(num_videos, num_frames)
    check_params(params)
    world_from_cam = PATTERNS[name](num_videos, num_frames, params)
    assert world_from_cam.shape == (num_videos, num_frames, 4, 4), world_from_cam.shape
    return world_from_cam


def make_cameras(
    world_from_cam: np.ndarray,
    width: int,
    height: int,
    fov_x_deg: float,
    fps: float = 8.0,
    extras: dict | None = None,
) -> Cameras:
    """A :class:`Cameras` plan of poses [V, F, 4, 4] with one square-pixel pinhole of ``fov_x_deg``."""
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg!r}")
    K = intrinsics_from_fov(fov_x_deg, width, height)
    return Cameras(
        world_from_cam=world_from_cam, K=K, width=width, height=height, fps=fps, extras=dict(extras or {})
    )


# ----------------------------------------------------------------------------------- plans from files


def cameras_from_re10k(
    paths: Sequence[str | os.PathLike],
    width: int,
    height: int,
    metres_per_unit: float = 1.0,
    reverse: bool = False,
    max_frames: int | None = None,
    blend_videos: int = 0,
    world_from_start: np.ndarray | None = None,
    fps: float = 8.0,
) -> Cameras:
    """One video per RealEstate10K/CameraCtrl pose file, every one relative to its own first pose and placed
    at ``world_from_start`` [4, 4] (so all videos share that first camera). Files of different lengths are cut
    to the shortest. ``blend_videos`` = N > 0 with exactly two files makes N videos interpolated from the
    first file's trajectory to the second's (SLERP rotations, linear positions)."""
    if not paths:
        raise ValueError("no RealEstate10K pose files given")
    if metres_per_unit <= 0:
        raise ValueError(f"re10k scale (metres per file unit) must be > 0, got {metres_per_unit!r}")
    kwargs = {} if world_from_start is None else {"world_from_start": world_from_start}
    trajs, Ks = [], []
    for path in paths:
        world_from_cam, K, _ = read_re10k(
            path, width, height, metres_per_unit, reverse=reverse, max_frames=max_frames, **kwargs
        )
        trajs.append(world_from_cam)
        Ks.append(K)
    n = min(len(c) for c in trajs)
    if any(len(c) != n for c in trajs):
        log.warning(
            "RealEstate10K files have %s frames; using the first %d of each", [len(c) for c in trajs], n
        )
    world_from_cam = np.stack([c[:n] for c in trajs])  # [V, F, 4, 4]
    K = np.stack([k[:n] for k in Ks])  # [V, F, 3, 3]
    ids = tuple(f"v{i:02d}" for i in range(len(paths)))
    if blend_videos:
        if len(paths) != 2:
            raise ValueError(f"blending RealEstate10K trajectories needs exactly 2 files, got {len(paths)}")
        if blend_videos < 1:
            raise ValueError(f"blend_videos must be >= 1, got {blend_videos}")
        w = np.linspace(0.0, 1.0, blend_videos) if blend_videos > 1 else np.zeros(1)
        world_from_cam = interpolate_trajectories(world_from_cam[0], world_from_cam[1], w)
        K = K[0] + (K[1] - K[0]) * w[:, None, None, None]
        ids = tuple(f"v{i:02d}" for i in range(blend_videos))
    extras = {
        "source": "re10k",
        "files": [os.fspath(p) for p in paths],
        "re10k_scale_m": metres_per_unit,
        "reversed": bool(reverse),
    }
    return Cameras(world_from_cam=world_from_cam, K=K, width=width, height=height, video_ids=ids, fps=fps, extras=extras)


# --------------------------------------------------------------------------------------------- checks


def common_start_error(cams: Cameras) -> float:
    """Largest difference (metres / rotation-matrix entries) between any video's first camera and video
    0's."""
    first = cams.world_from_cam[:, 0]  # [V, 4, 4]
    return float(np.abs(first - first[:1]).max())


def min_baseline_m(cams: Cameras) -> np.ndarray:
    """[F] smallest distance between the camera centres of two different videos at every frame (inf for V =
    1)."""
    pos = cams.positions  # [V, F, 3]
    V = pos.shape[0]
    if V < 2:
        return np.full(pos.shape[1], np.inf)
    d = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)  # [V, V, F]
    d[np.arange(V), np.arange(V)] = np.inf
    return d.min(axis=(0, 1))
