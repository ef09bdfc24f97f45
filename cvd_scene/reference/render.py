"""The reference renderer: a CPU ray caster of procedural scenes along any camera plan.

Rays are cast with open3d's ``RaycastingScene`` (Embree on the CPU; no GPU, no Vulkan), which returns the
triangle and barycentric coordinates of every hit. Shading is view-independent on purpose, so every view of a
surface agrees: ``albedo(texture at the hit) * (ambient + Lambert of fixed directional lights)``. Several jittered
rays per pixel (stratified within the pixel, the same pattern for every image, fixed by a seed) are averaged for
anti-aliasing; one extra ray through each pixel centre gives the z-depth, the validity mask and the surface id.
Moving objects are cast in their own frame (their rigid motion applied to the rays), at the time of each frame
index, so all videos agree at every frame index.

Cameras follow the project's convention: OpenCV axes, ``world_from_cam``, intrinsics in pixels with pixel centres
at +0.5. Depth is z-depth along the camera's +z in metres, 0 where a ray hits nothing.

numpy and open3d; must not import torch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from cvd_scene.cameras import Cameras
from cvd_scene.reference.scene import Scene
from cvd_scene.reference.textures import ValueNoise

log = logging.getLogger(__name__)

_CHUNK_RAYS = 1 << 19  # rays shaded per step: large enough for numpy, small enough for the cache and memory


@dataclass
class RenderOutput:
    """Images of a plan: colour, depth, validity and which surface each pixel centre sees."""

    rgb: np.ndarray
    """[V, F, H, W, 3] float32 in [0, 1]."""
    depth: np.ndarray
    """[V, F, H, W] float32 z-depth in metres along the camera's +z; 0 where the pixel centre hits nothing."""
    mask: np.ndarray
    """[V, F, H, W] bool: the pixel centre hits a surface."""
    surface_id: np.ndarray
    """[V, F, H, W] int32 index into ``scene.surfaces`` of the surface at the pixel centre, -1 where empty."""
    seconds: float = 0.0
    """Wall time of the render."""


@dataclass
class _Compiled:
    """What rendering needs, built once per scene: ray-casting structures and flat per-triangle tables."""

    static: object
    """open3d RaycastingScene of the static surfaces (world frame), or None."""
    moving: list
    """(RaycastingScene in the object's frame, first global triangle index, Motion) per moving surface."""
    tri_table: np.ndarray
    """[T, 16] float32 per triangle: texel coordinates t0 (2), t1 - t0 (2), t2 - t0 (2), shading normals n0 (3),
    n1 - n0 (3), n2 - n0 (3) (object frame for moving surfaces), padding (1); interpolated with barycentrics."""
    tri_texture: np.ndarray
    """[T, 4] int32 per triangle: first texel of its surface's texture in ``atlas``, texture width and height,
    surface index."""
    tri_surface: np.ndarray
    """[T] int32 surface index of each triangle."""
    atlas: np.ndarray
    """[total texels, 4] float32 every texture (RGB + padding), flattened row-major one after another."""
    light_dirs: np.ndarray
    """[K, 3] float32 unit directions towards the lights."""
    light_intensity: np.ndarray
    """[K] float32."""
    ambient: float
    sky_noise: ValueNoise | None


def _gather(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for a C-contiguous 2-D table: rows copied as opaque blocks (several times faster)."""
    row = np.dtype((np.void, table.shape[1] * table.itemsize))
    return table.view(row).ravel().take(index).view(table.dtype).reshape(len(index), table.shape[1])


def _compile(scene: Scene) -> _Compiled:
    if scene._compiled is not None:
        return scene._compiled
    try:
        import open3d as o3d
    except ImportError as e:  # pragma: no cover - open3d is a dependency
        raise ImportError(
            "the reference renderer needs open3d (pip install open3d; on Debian also apt install libusb-1.0-0)"
        ) from e
    tex_info = []
    atlas = []
    offset = 0
    for s in scene.surfaces:
        h, w = s.texture.shape[:2]
        tex_info.append((offset, w, h))
        atlas.append(np.concatenate([s.texture.reshape(-1, 3), np.zeros((h * w, 1), np.float32)], 1))
        offset += h * w
    if offset >= 2**31:
        raise ValueError(f"scene textures hold {offset} texels, more than 2^31; lower texels_per_m")
    # Static triangles first, then each moving surface: global triangle index = cast primitive id + offset.
    order = [i for i, s in enumerate(scene.surfaces) if s.motion is None]
    order += [i for i, s in enumerate(scene.surfaces) if s.motion is not None]
    tables, textures_, surfaces = [], [], []
    static_v, static_t, moving = [], [], []
    n_static_v = 0
    tri_count = 0
    for i in order:
        s = scene.surfaces[i]
        m = s.mesh
        tx = m.uv_m * s.texels_per_m  # [m, 3, 2]
        nr = m.normals  # [m, 3, 3]
        tab = np.zeros((len(m.triangles), 16), np.float32)
        tab[:, 0:2] = tx[:, 0]
        tab[:, 2:4] = tx[:, 1] - tx[:, 0]
        tab[:, 4:6] = tx[:, 2] - tx[:, 0]
        tab[:, 6:9] = nr[:, 0]
        tab[:, 9:12] = nr[:, 1] - nr[:, 0]
        tab[:, 12:15] = nr[:, 2] - nr[:, 0]
        tables.append(tab)
        textures_.append(np.broadcast_to(np.array([*tex_info[i], i], np.int32), (len(m.triangles), 4)))
        surfaces.append(np.full(len(m.triangles), i, np.int32))
        if s.motion is None:
            static_v.append(m.vertices)
            static_t.append(m.triangles + n_static_v)
            n_static_v += len(m.vertices)
        else:
            moving.append((_raycasting_scene(o3d, m.vertices, m.triangles), tri_count, s.motion))
        tri_count += len(m.triangles)
    static = _raycasting_scene(o3d, np.concatenate(static_v), np.concatenate(static_t)) if static_v else None
    L = np.asarray(scene.lighting.directions, np.float64)
    L = L / np.linalg.norm(L, axis=1, keepdims=True)
    compiled = _Compiled(
        static=static,
        moving=moving,
        tri_table=np.ascontiguousarray(np.concatenate(tables)),
        tri_texture=np.ascontiguousarray(np.concatenate(textures_)),
        tri_surface=np.concatenate(surfaces),
        atlas=np.ascontiguousarray(np.concatenate(atlas), dtype=np.float32),
        light_dirs=L.astype(np.float32),
        light_intensity=np.asarray(scene.lighting.intensities, np.float32),
        ambient=float(scene.lighting.ambient),
        sky_noise=ValueNoise(np.random.default_rng([scene.seed, 99])) if scene.sky else None,
    )
    scene._compiled = compiled
    return compiled


def _raycasting_scene(o3d, vertices: np.ndarray, triangles: np.ndarray):
    """An open3d RaycastingScene of one triangle mesh, committed (one ray cast) so threads can share it."""
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(
        o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32))
    )
    rs.cast_rays(o3d.core.Tensor(np.array([[0, 0, 0, 0, 0, 1]], np.float32)))
    return rs


# ------------------------------------------------------------------------------------------- casting


@dataclass
class Hits:
    """Nearest hits of a batch of rays."""

    t: np.ndarray
    """[N] float32 ray parameter (distance in units of the ray direction's length); inf where nothing is hit."""
    triangle: np.ndarray
    """[N] int64 global triangle index, -1 where nothing is hit."""
    bary: np.ndarray
    """[N, 2] float32 barycentric (u, v) of the hit: point = (1 - u - v) p0 + u p1 + v p2."""
    moving: np.ndarray
    """[N] int16 index of the moving surface hit (into the compiled moving list), -1 for static or none."""


def cast(scene: Scene, origins: np.ndarray, directions: np.ndarray, time_s: float = 0.0) -> Hits:
    """Nearest hits of rays ``origins`` [N, 3] + t ``directions`` [N, 3] (world frame) at ``time_s``."""
    import open3d as o3d

    c = _compile(scene)
    o = np.asarray(origins, np.float32)
    d = np.asarray(directions, np.float32)
    n = len(o)
    if c.static is not None:
        out = c.static.cast_rays(o3d.core.Tensor(np.concatenate([o, d], 1)))
        t = out["t_hit"].numpy()
        tri = out["primitive_ids"].numpy().astype(np.int64)
        bary = out["primitive_uvs"].numpy()
    else:
        t = np.full(n, np.inf, np.float32)
        tri = np.zeros(n, np.int64)
        bary = np.zeros((n, 2), np.float32)
    moving = np.full(n, -1, np.int16)
    for k, (rs, first, motion) in enumerate(c.moving):
        T = motion.world_from_object(time_s)
        R = T[:3, :3]
        o_local = ((o - T[:3, 3]) @ R).astype(np.float32)  # R^T (o - p), rows
        d_local = (d @ R).astype(np.float32)
        out = rs.cast_rays(o3d.core.Tensor(np.concatenate([o_local, d_local], 1)))
        tk = out["t_hit"].numpy()
        closer = tk < t
        if closer.any():
            t = np.where(closer, tk, t)
            tri = np.where(closer, out["primitive_ids"].numpy().astype(np.int64) + first, tri)
            bary = np.where(closer[:, None], out["primitive_uvs"].numpy(), bary)
            moving[closer] = k
    hit = np.isfinite(t)
    tri = np.where(hit, tri, -1)
    return Hits(t=t, triangle=tri, bary=bary, moving=moving)


# ------------------------------------------------------------------------------------------- shading


def sample_texture(c: _Compiled, texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear albedo [N, 3] at texel coordinates ``x``, ``y`` [N] (texel centres at +0.5) of the textures
    ``texture`` [N, 4] int32 (first texel in the atlas, width, height, surface); coordinates outside a texture
    clamp to its edge texels."""
    off, w, h = texture[:, 0], texture[:, 1], texture[:, 2]
    x = x - np.float32(0.5)
    y = y - np.float32(0.5)
    x0f = np.floor(x)
    y0f = np.floor(y)
    fx = (x - x0f)[:, None]
    fy = (y - y0f)[:, None]
    x0 = x0f.astype(np.int32)
    y0 = y0f.astype(np.int32)
    wm = w - 1
    x1 = np.clip(x0 + 1, 0, wm)
    y1 = np.clip(y0 + 1, 0, h - 1)
    np.clip(x0, 0, wm, out=x0)
    np.clip(y0, 0, h - 1, out=y0)
    row0 = off + y0 * w
    row1 = off + y1 * w
    a = c.atlas
    top = _gather(a, row0 + x0)
    top += fx * (_gather(a, row0 + x1) - top)
    bottom = _gather(a, row1 + x0)
    bottom += fx * (_gather(a, row1 + x1) - bottom)
    top += fy * (bottom - top)
    return top[:, :3]


def sky_colour(c: _Compiled, directions: np.ndarray) -> np.ndarray:
    """[N, 3] colour of the sky (or, below the horizon, distant haze) seen along ``directions`` [N, 3]."""
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    e = d[:, 1:2]
    zenith = np.array([0.32, 0.52, 0.86], np.float32)
    horizon = np.array([0.82, 0.87, 0.93], np.float32)
    haze = np.array([0.55, 0.6, 0.55], np.float32)
    t = np.clip(e, 0, 1) ** 0.6
    col = horizon * (1 - t) + zenith * t
    if c.sky_noise is not None:
        up = np.maximum(e[:, 0], 0.02)
        px = d[:, 0] / up
        pz = d[:, 2] / up
        cloud = np.clip((c.sky_noise.fbm(px * 1.5, pz * 1.5, octaves=4) - 0.45) * 2.5, 0, 1)
        cloud *= np.clip(e[:, 0] * 8, 0, 1)
        col = col * (1 - cloud[:, None]) + np.float32(0.96) * cloud[:, None]
    return np.where(e < 0, haze, col).astype(np.float32)


def shade(scene: Scene, hits: Hits, directions: np.ndarray, time_s: float = 0.0) -> np.ndarray:
    """[N, 3] colour of each ray: albedo times fixed Lambert lighting at hits, sky or black elsewhere."""
    c = _compile(scene)
    n = len(hits.t)
    hit = hits.triangle >= 0
    all_hit = bool(hit.all())
    idx = None if all_hit else np.nonzero(hit)[0]
    tri = hits.triangle if all_hit else hits.triangle[idx]
    bary = hits.bary if all_hit else hits.bary[idx]
    rgb = np.zeros((n, 3), np.float32)
    if len(tri):
        u = np.ascontiguousarray(bary[:, 0])
        v = np.ascontiguousarray(bary[:, 1])
        tab = _gather(c.tri_table, tri).T  # [16, n]: one row per quantity (see _Compiled.tri_table)
        tex_x = tab[0] + u * tab[2] + v * tab[4]
        tex_y = tab[1] + u * tab[3] + v * tab[5]
        albedo = sample_texture(c, _gather(c.tri_texture, tri), tex_x, tex_y)
        nx = tab[6] + u * tab[9] + v * tab[12]
        ny = tab[7] + u * tab[10] + v * tab[13]
        nz = tab[8] + u * tab[11] + v * tab[14]
        if c.moving:
            mv = hits.moving if all_hit else hits.moving[idx]
            for k, (_, _, motion) in enumerate(c.moving):
                sel = np.nonzero(mv == k)[0]
                if len(sel):
                    R = motion.world_from_object(time_s)[:3, :3].astype(np.float32)
                    n_obj = np.stack([nx[sel], ny[sel], nz[sel]])  # [3, m]
                    nx[sel], ny[sel], nz[sel] = R @ n_obj
        d = directions if all_hit else directions[idx]
        # Face the viewer (both sides of a surface are lit alike) and normalise for the lights.
        facing = nx * d[:, 0] + ny * d[:, 1] + nz * d[:, 2]
        inv = np.float32(1) / np.sqrt(nx * nx + ny * ny + nz * nz + np.float32(1e-20))
        inv[facing > 0] *= -1
        light = np.full(len(u), c.ambient, np.float32)
        for (lx, ly, lz), li in zip(c.light_dirs, c.light_intensity):
            light += li * np.maximum((nx * lx + ny * ly + nz * lz) * inv, 0)
        albedo *= light[:, None]
        if all_hit:
            rgb = albedo
        else:
            rgb[idx] = albedo
    if scene.sky and not all_hit:
        miss = np.nonzero(~hit)[0]
        rgb[miss] = sky_colour(c, directions[miss])
    return np.clip(rgb, 0.0, 1.0, out=rgb)


# --------------------------------------------------------------------------------------------- cameras


def pixel_jitter(samples_per_pixel: int, height: int, width: int, seed: int) -> np.ndarray:
    """[S, H, W, 2] sub-pixel offsets in [0, 1): stratified (an n x n grid when S = n^2) and jittered.

    One ray per pixel goes through the pixel centre (offset 0.5); the same ``seed`` gives the same pattern.
    """
    S = int(samples_per_pixel)
    if S < 1:
        raise ValueError(f"samples_per_pixel must be >= 1, got {samples_per_pixel}")
    if S == 1:
        return np.full((1, height, width, 2), 0.5, np.float32)
    rng = np.random.default_rng([seed, S, height, width])
    n = round(np.sqrt(S))
    if n * n == S:
        sy, sx = np.divmod(np.arange(S), n)
        cell = np.stack([sx, sy], -1).astype(np.float32)  # [S, 2] stratum of each sample
        jit = rng.random((S, height, width, 2), dtype=np.float32)
        return (cell[:, None, None, :] + jit) / n
    # Not a square: S strata along a random direction per pixel, jittered (1-D stratified, 2-D uniform).
    strata = (
        np.arange(S, dtype=np.float32)[:, None, None] + rng.random((S, height, width), dtype=np.float32)
    ) / S
    other = rng.random((S, height, width), dtype=np.float32)
    swap = rng.random((1, height, width)) < 0.5
    return np.stack([np.where(swap, strata, other), np.where(swap, other, strata)], -1)


def camera_rays(
    world_from_cam: np.ndarray, K: np.ndarray, pixel_xy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World rays through image points of one camera per view.

    Args:
        world_from_cam: [G, 4, 4] poses (OpenCV axes).
        K: [G, 3, 3] intrinsics in pixels.
        pixel_xy: [..., 2] image points in pixels (centres at +0.5), the same for every view.

    Returns:
        origins [G, 3] and directions [G, ..., 3] float32, scaled so their camera-z component is 1: the ray
        parameter of a hit is then its z-depth.
    """
    G = len(world_from_cam)
    extra = (1,) * (pixel_xy.ndim - 1)
    fx = K[:, 0, 0].reshape(G, *extra).astype(np.float32)
    fy = K[:, 1, 1].reshape(G, *extra).astype(np.float32)
    cx = K[:, 0, 2].reshape(G, *extra).astype(np.float32)
    cy = K[:, 1, 2].reshape(G, *extra).astype(np.float32)
    x = ((pixel_xy[..., 0] - cx) / fx)[..., None]  # [G, ..., 1]
    y = ((pixel_xy[..., 1] - cy) / fy)[..., None]
    R = world_from_cam[:, :3, :3].astype(np.float32)
    cols = [R[:, :, k].reshape(G, *extra, 3) for k in range(3)]
    d = x * cols[0] + y * cols[1] + cols[2]
    return world_from_cam[:, :3, 3].astype(np.float32), d


def _centre_outputs(scene: Scene, hits: Hits) -> tuple[np.ndarray, np.ndarray]:
    """z-depth (0 where empty) and surface id (-1 where empty) of rays through pixel centres."""
    hit = hits.triangle >= 0
    z = np.where(hit, hits.t, 0.0).astype(np.float32)
    sid = np.where(hit, _compile(scene).tri_surface[np.maximum(hits.triangle, 0)], -1).astype(np.int32)
    return z, sid


def _check_inputs(scene: Scene, cameras: Cameras, samples_per_pixel: int) -> None:
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a cvd_scene.reference.Scene, got {type(scene).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be a cvd_scene.cameras.Cameras, got {type(cameras).__name__}")
    if (
        isinstance(samples_per_pixel, bool)
        or not isinstance(samples_per_pixel, (int, np.integer))
        or samples_per_pixel < 1
    ):
        raise ValueError(f"samples_per_pixel must be an int >= 1, got {samples_per_pixel!r}")
    if not np.all(np.isfinite(cameras.world_from_cam)):
        raise ValueError("cameras.world_from_cam has non-finite entries")


def render(
    scene: Scene,
    cameras: Cameras,
    samples_per_pixel: int = 4,
    progress: bool = True,
    jitter_seed: int | None = None,
    threads: int | None = None,
) -> RenderOutput:
    """Render every frame of every video of ``cameras`` (OpenCV axes, ``world_from_cam``; any size).

    Args:
        scene: A scene from :func:`cvd_scene.reference.build_scene`.
        cameras: The plan; frame k of every video is rendered at time ``cameras.time_s[k]``.
        samples_per_pixel: Jittered rays averaged per pixel (1: one ray through the pixel centre).
        progress: Show a progress bar (on a terminal, unless logging is quiet).
        jitter_seed: Seed of the sub-pixel pattern (default: the scene's seed); fixed seed, identical images.
        threads: Shading threads (default: the CPUs this process may use). Results do not depend on it.

    Returns:
        :class:`RenderOutput` with ``rgb`` [V, F, H, W, 3], ``depth``/``mask``/``surface_id`` [V, F, H, W].
    """
    _check_inputs(scene, cameras, samples_per_pixel)
    t0 = time.perf_counter()
    _compile(scene)
    V, F, H, W = cameras.num_videos, cameras.num_frames, cameras.height, cameras.width
    S = int(samples_per_pixel)
    jitter = pixel_jitter(S, H, W, scene.seed if jitter_seed is None else jitter_seed).reshape(S, H * W, 2)
    base = (
        np.stack(np.meshgrid(np.arange(W), np.arange(H)), -1).reshape(H * W, 2).astype(np.float32)
    )  # [HW, 2]
    sample_xy = base[None] + jitter  # [S, HW, 2] where every ray goes
    rgb = np.empty((V, F, H, W, 3), np.float32)
    depth = np.zeros((V, F, H, W), np.float32)
    surface_id = np.full((V, F, H, W), -1, np.int32)
    # A task renders some views (or a pixel range of one view) of one frame index, about _CHUNK_RAYS rays.
    per_view = S * H * W
    tasks = []
    for f in range(F):
        if per_view <= _CHUNK_RAYS:
            g = max(1, _CHUNK_RAYS // per_view)
            tasks += [(f, v, min(V, v + g), 0, H * W) for v in range(0, V, g)]
        else:
            step = max(1, _CHUNK_RAYS // S)
            tasks += [(f, v, v + 1, p, min(H * W, p + step)) for v in range(V) for p in range(0, H * W, step)]

    def run(task) -> None:
        f, v0, v1, p0, p1 = task
        time_s = float(cameras.time_s[f])
        world_from_cam = cameras.world_from_cam[v0:v1, f]  # [G, 4, 4]
        K = cameras.K[v0:v1, f]  # [G, 3, 3]
        G, P = v1 - v0, p1 - p0
        o, d = camera_rays(world_from_cam, K, sample_xy[:, p0:p1])  # [G, 3], [G, S, P, 3]
        d = d.reshape(-1, 3)
        o = np.repeat(o, S * P, axis=0)
        hits = cast(scene, o, d, time_s)
        col = shade(scene, hits, d, time_s).reshape(G, S, P, 3)
        out = rgb[v0:v1, f].reshape(G, H * W, 3)
        out[:, p0:p1] = col[:, 0] if S == 1 else col.mean(axis=1)
        if S > 1:  # one more cast through the pixel centres for depth, mask and surface id
            oc, dc = camera_rays(world_from_cam, K, base[p0:p1] + np.float32(0.5))
            hits = cast(scene, np.repeat(oc, P, axis=0), dc.reshape(-1, 3), time_s)
        z, sid = _centre_outputs(scene, hits)
        depth[v0:v1, f].reshape(G, H * W)[:, p0:p1] = z.reshape(G, P)
        surface_id[v0:v1, f].reshape(G, H * W)[:, p0:p1] = sid.reshape(G, P)

    n_threads = max(1, min(threads or _cpu_count(), len(tasks)))
    done = _run_tasks(run, tasks, n_threads)
    if progress:
        from cvd_scene.logs import track

        done = track(done, total=len(tasks), description=f"rendering {V}x{F} frames at {W}x{H}")
    for _ in done:
        pass
    mask = surface_id >= 0
    seconds = time.perf_counter() - t0
    log.debug("rendered %d x %d frames at %dx%d, %d spp, in %.2f s", V, F, W, H, S, seconds)
    return RenderOutput(rgb=rgb, depth=depth, mask=mask, surface_id=surface_id, seconds=seconds)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_tasks(fn, tasks: list, n_threads: int):
    """Run ``fn`` on every task (in a thread pool when ``n_threads`` > 1); yields once per finished task."""
    if n_threads == 1:
        for t in tasks:
            fn(t)
            yield t
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        futures = [pool.submit(fn, t) for t in tasks]
        for fut in as_completed(futures):
            fut.result()
            yield fut


def render_clip(
    scene: Scene, cameras: Cameras, samples_per_pixel: int = 2, jitter_seed: int | None = None
) -> np.ndarray:
    """Just the colour frames [V, F, H, W, 3] float32 of a (small) plan, no progress bar: for training data."""
    return render(
        scene, cameras, samples_per_pixel=samples_per_pixel, progress=False, jitter_seed=jitter_seed
    ).rgb
