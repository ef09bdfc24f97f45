"""The reference generator: scenes from prompts, the CPU ray caster against slow references and multi-view
geometry, the shared frame/video writers and the ``generate`` stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvd_scene.camera_io import read_transforms_json, write_cameras_json
from cvd_scene.cameras import Cameras, intrinsics_from_fov, intrinsics_matrix, look_at, project
from cvd_scene.reference import KINDS, build_scene, parse_prompt, render, scene_kind_from_prompt
from cvd_scene.reference.render import _compile, camera_rays, cast, pixel_jitter, sample_texture, shade
from cvd_scene.reference.scene import make_caption

FAST_TEXELS = 40.0  # coarse textures: scene building in a fraction of a second where detail does not matter


def _cams(eyes, targets, size=(64, 64), fov=70.0, frames=1) -> Cameras:
    """One video per eye (static over ``frames`` frames) looking at its target."""
    w, h = size
    c2w = look_at(np.asarray(eyes, float), np.asarray(targets, float))[:, None].repeat(frames, 1)
    return Cameras(c2w, intrinsics_from_fov(fov, w, h), w, h)


@pytest.fixture(scope="module")
def room():
    return build_scene("a cosy room", 3, texels_per_m=FAST_TEXELS)


# ----------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    "prompt, kind",
    [
        ("a cosy room with a red sofa", "room"),
        ("a sunny courtyard with trees", "courtyard"),
        ("a table with two cups and a vase", "table"),
        ("a room with a table", "room"),
        ("a garden behind a room in a garden", "courtyard"),
        ("something nice", "room"),
        ("a wooden desk with books", "table"),
    ],
)
def test_scene_kind_from_prompt(prompt, kind):
    assert scene_kind_from_prompt(prompt) == kind


def test_prompt_words_colours_and_counts():
    w = parse_prompt("a red room with two blue boxes and a green sofa", "room")
    assert w.tint == "red"
    assert w.object_colours == {"box": "blue", "sofa": "green"}
    assert w.object_counts["box"] == 2 and w.object_counts["sofa"] == 1
    assert parse_prompt("a room with a spinning ball", "room").moving == 1
    assert make_caption("room", "red", ["box", "box", "sofa"], {"sofa": "green"}, []) == (
        "a red room with two boxes and a green sofa"
    )


def test_caption_says_what_was_built():
    s = build_scene("a red room with two boxes", 0, texels_per_m=FAST_TEXELS)
    assert s.caption.startswith("a red room with ")
    assert "two boxes" in s.caption or "three boxes" in s.caption  # a cabinet may carry one more
    assert s.objects.count("box") >= 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kind"):
        build_scene("a room", 0, kind="castle")
    with pytest.raises(TypeError, match="seed"):
        build_scene("a room", "zero")
    with pytest.raises(ValueError, match="samples_per_pixel"):
        render(build_scene("a room", 0, texels_per_m=FAST_TEXELS), _cams([[0, 1.5, 0]], [[0, 1.5, 1]]), 0)


# ---------------------------------------------------------------------------------- kernels vs references


def test_camera_rays_match_per_pixel_loop():
    c2w = look_at(np.array([[0.3, 1.4, -0.2], [1.0, 1.0, 1.0]]), np.array([[1.0, 1.1, 2.0], [0.0, 0.5, 0.0]]))
    K = np.stack([intrinsics_matrix(50.0, 55.0, 20.0, 14.0), intrinsics_matrix(70.0, 70.0, 16.5, 12.0)])
    xy = np.random.default_rng(0).uniform(0, 32, size=(7, 2)).astype(np.float32)
    o, d = camera_rays(c2w, K, xy)
    for g in range(2):
        for n in range(7):
            ray_cam = np.linalg.inv(K[g]) @ np.array([xy[n, 0], xy[n, 1], 1.0])  # camera z = 1
            np.testing.assert_allclose(d[g, n], c2w[g, :3, :3] @ ray_cam, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(o[g], c2w[g, :3, 3], atol=1e-6)


def test_bilinear_texture_sampling_matches_loop(room):
    c = _compile(room)
    rng = np.random.default_rng(1)
    tri = rng.integers(0, len(c.tri_surface), 300)
    tex = c.tri_texture[tri]
    x = rng.uniform(-3, tex[:, 1] + 3).astype(np.float32)  # some outside: clamped to the edge
    y = rng.uniform(-3, tex[:, 2] + 3).astype(np.float32)
    got = sample_texture(c, tex, x, y)
    for n in range(len(tri)):
        img = room.surfaces[tex[n, 3]].texture  # [h, w, 3]
        h, w = img.shape[:2]
        px, py = float(x[n]) - 0.5, float(y[n]) - 0.5
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        fx, fy = px - x0, py - y0
        t00, t10 = (
            img[np.clip(y0, 0, h - 1), np.clip(x0, 0, w - 1)],
            img[np.clip(y0, 0, h - 1), np.clip(x0 + 1, 0, w - 1)],
        )
        t01 = img[np.clip(y0 + 1, 0, h - 1), np.clip(x0, 0, w - 1)]
        t11 = img[np.clip(y0 + 1, 0, h - 1), np.clip(x0 + 1, 0, w - 1)]
        want = (1 - fy) * ((1 - fx) * t00 + fx * t10) + fy * ((1 - fx) * t01 + fx * t11)
        np.testing.assert_allclose(got[n], want, atol=2e-5)


def test_pixel_jitter_is_stratified_and_deterministic():
    j = pixel_jitter(4, 5, 6, seed=2)  # [S, H, W, 2]
    assert j.shape == (4, 5, 6, 2)
    strata = np.floor(j * 2).astype(int)
    # Sample s lies in stratum (s % 2, s // 2) of every pixel.
    assert np.all(strata[..., 0] == (np.arange(4) % 2)[:, None, None])
    assert np.all(strata[..., 1] == (np.arange(4) // 2)[:, None, None])
    np.testing.assert_array_equal(j, pixel_jitter(4, 5, 6, seed=2))
    assert not np.array_equal(j, pixel_jitter(4, 5, 6, seed=3))
    assert np.all(pixel_jitter(1, 3, 3, seed=0) == 0.5)
    j3 = pixel_jitter(3, 4, 4, seed=0)
    assert j3.shape == (3, 4, 4, 2) and (j3 >= 0).all() and (j3 < 1).all()


def test_barycentric_hit_points_lie_on_the_ray(room):
    """open3d's barycentrics (u, v) weight corners 1 and 2: the interpolated corner equals origin + t * dir."""
    c = _compile(room)
    cams = _cams([[0.2, 1.5, 0.1]], [[1.0, 1.2, 1.0]], size=(16, 16))
    o, d = camera_rays(
        cams.world_from_cam[:, 0],
        cams.K[:, 0],
        np.random.default_rng(0).uniform(0, 16, (50, 2)).astype(np.float32),
    )
    d = d.reshape(-1, 3)
    hits = cast(room, np.repeat(o, len(d), 0), d)
    assert (hits.triangle >= 0).all()
    order = [i for i, s in enumerate(room.surfaces) if s.motion is None]  # static triangles come first
    verts = np.concatenate([room.surfaces[i].mesh.vertices[room.surfaces[i].mesh.triangles] for i in order])
    tri = verts[hits.triangle]  # [N, 3, 3]
    u, v = hits.bary[:, :1], hits.bary[:, 1:]
    p = (1 - u - v) * tri[:, 0] + u * tri[:, 1] + v * tri[:, 2]
    np.testing.assert_allclose(p, o[0] + hits.t[:, None] * d, atol=2e-4)
    assert c.tri_surface.shape == (len(verts),)


# ------------------------------------------------------------------------------------------ geometry


def test_depth_of_floor_matches_ray_plane_intersection(room):
    cams = _cams([[0.1, 1.6, 0.2]], [[0.6, 0.0, 1.5]], size=(48, 40))
    out = render(room, cams, samples_per_pixel=1, progress=False)
    floor = next(i for i, s in enumerate(room.surfaces) if s.name == "floor")
    sel = out.surface_id[0, 0] == floor  # [H, W]
    assert sel.mean() > 0.3
    c2w, K = cams.world_from_cam[0, 0], cams.K[0, 0]
    ys, xs = np.nonzero(sel)
    ray_cam = np.linalg.inv(K) @ np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs)], 0).astype(float)  # z = 1
    ray_world = c2w[:3, :3] @ ray_cam
    z = -c2w[1, 3] / ray_world[1]  # the floor is y = 0; with camera-z 1 the ray parameter is the z-depth
    np.testing.assert_allclose(out.depth[0, 0][sel], z, rtol=1e-4)


def test_same_surface_point_has_the_same_colour_from_every_view(room):
    """Exact: a point seen through one pixel centre, looked at from other cameras, hits the same point and has the
    same colour (view-independent shading), unless something is in front of it."""
    rng = np.random.default_rng(5)
    eyes = rng.uniform([-1.2, 0.8, -1.2], [1.2, 2.2, 1.2], size=(6, 3))
    targets = eyes + rng.normal(size=(6, 3)) * [1, 0.3, 1]
    cams = _cams(eyes, targets, size=(32, 24))
    checked = 0
    for a in range(6):
        xy = rng.uniform(0, [32, 24], size=(200, 2)).astype(np.float32)
        oa, da = camera_rays(cams.world_from_cam[a : a + 1, 0], cams.K[a : a + 1, 0], xy)
        da = da.reshape(-1, 3)
        ha = cast(room, np.repeat(oa, len(da), 0), da)
        pts = oa[0] + ha.t[:, None] * da
        col_a = shade(room, ha, da)
        for b in range(6):
            if b == a:
                continue
            ob = cams.world_from_cam[b, 0, :3, 3].astype(np.float32)
            db = (pts - ob).astype(np.float32)  # t = 1 at the point
            hb = cast(room, np.repeat(ob[None], len(db), 0), db)
            visible = np.abs(hb.t - 1.0) < 1e-4
            c = _compile(room)
            same = visible & (c.tri_surface[hb.triangle] == c.tri_surface[ha.triangle])
            assert same.sum() >= 0.97 * visible.sum()  # the rest: points on an edge shared by two surfaces
            col_b = shade(room, hb, db)
            np.testing.assert_allclose(col_b[same], col_a[same], atol=3e-3)
            checked += int(same.sum())
    assert checked > 1500


def test_pixels_reproject_to_the_same_colour_in_other_views():
    """Image level: a pixel's 3D point from its depth, projected into another rendered view, shows the same
    colour there (anti-aliased images, bilinear lookup), where the other view's depth says it is visible."""
    scene = build_scene("a room", 11)
    rng = np.random.default_rng(0)
    eyes = np.array([[0.0, 1.5, 0.0], [0.25, 1.45, 0.1], [-0.2, 1.6, -0.15], [0.1, 1.5, 0.3]])
    targets = np.array([[2.0, 1.2, 2.5], [2.2, 1.0, 2.0], [1.5, 1.3, 2.8], [2.5, 1.2, 1.8]])
    W, H = 96, 80
    cams = _cams(eyes, targets, size=(W, H), fov=75)
    out = render(scene, cams, samples_per_pixel=4, progress=False)
    errs, shuffled = [], []
    for a in range(4):
        for b in range(4):
            if a == b:
                continue
            ys, xs = rng.integers(2, H - 2, 400), rng.integers(2, W - 2, 400)
            z = out.depth[a, 0, ys, xs]
            ok = out.mask[a, 0, ys, xs]
            ray = np.linalg.inv(cams.K[a, 0]) @ np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs)]).astype(float)
            p_cam = ray * z
            p_world = (cams.world_from_cam[a, 0, :3, :3] @ p_cam).T + cams.world_from_cam[a, 0, :3, 3]
            uv, zb = project(p_world, cams.world_from_cam[b, 0], cams.K[b, 0])
            inside = (
                ok & (zb > 0.1) & (uv[:, 0] > 1) & (uv[:, 0] < W - 2) & (uv[:, 1] > 1) & (uv[:, 1] < H - 2)
            )
            ub, vb = uv[inside, 0] - 0.5, uv[inside, 1] - 0.5
            xi, yi = np.round(ub).astype(int), np.round(vb).astype(int)
            visible = np.abs(out.depth[b, 0, yi, xi] - zb[inside]) < 0.02 * zb[inside]
            col_b = _bilinear(out.rgb[b, 0], ub[visible], vb[visible])
            col_a = out.rgb[a, 0, ys[inside][visible], xs[inside][visible]]
            errs.append(np.abs(col_a - col_b).mean(axis=1))
            shuffled.append(np.abs(col_a - rng.permutation(col_b)).mean(axis=1))
    errs, shuffled = np.concatenate(errs), np.concatenate(shuffled)
    assert len(errs) > 1000
    assert np.median(errs) < 0.03, np.median(errs)
    assert np.mean(errs < 0.08) > 0.85
    assert np.median(shuffled) > 3 * np.median(errs)  # the check can fail: wrong correspondences do


def _bilinear(img, x, y):
    """Bilinear lookup of img [H, W, 3] at pixel-index coordinates x, y [N]."""
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return (1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x0 + 1]) + fy * (
        (1 - fx) * img[y0 + 1, x0] + fx * img[y0 + 1, x0 + 1]
    )


def test_rectangular_images_are_crops_of_wider_views(room):
    """A 40x24 image with its principal point moved up by 8 rows is rows 8..31 of the 40x40 image."""
    c2w = look_at(np.array([[0.0, 1.5, 0.0]]), np.array([[1.0, 1.3, 2.0]]))[:, None]
    K_sq = intrinsics_matrix(30.0, 30.0, 20.0, 20.0)
    K_rect = intrinsics_matrix(30.0, 30.0, 20.0, 12.0)
    sq = render(room, Cameras(c2w, K_sq, 40, 40), samples_per_pixel=1, progress=False)
    rect = render(room, Cameras(c2w, K_rect, 40, 24), samples_per_pixel=1, progress=False)
    assert rect.rgb.shape == (1, 1, 24, 40, 3) and rect.depth.shape == (1, 1, 24, 40)
    np.testing.assert_allclose(rect.rgb[0, 0], sq.rgb[0, 0, 8:32], atol=1e-5)
    np.testing.assert_allclose(rect.depth[0, 0], sq.depth[0, 0, 8:32], rtol=1e-5)
    tall = render(room, Cameras(c2w, intrinsics_matrix(30.0, 30.0, 8.0, 20.0), 17, 40), 2, progress=False)
    assert tall.rgb.shape == (1, 1, 40, 17, 3)


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_same_frames_different_seed_different_scene():
    cams = _cams([[0, 1.5, 0], [0, 1.5, 0]], [[1, 1.4, 1], [-1, 1.2, -0.5]], size=(40, 32))
    a = render(build_scene("a room", 7, texels_per_m=FAST_TEXELS), cams, 4, progress=False)
    b = render(build_scene("a room", 7, texels_per_m=FAST_TEXELS), cams, 4, progress=False, threads=1)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    s8 = build_scene("a room", 8, texels_per_m=FAST_TEXELS)
    c = render(s8, cams, 4, progress=False)
    assert np.abs(a.rgb - c.rgb).mean() > 0.05
    assert not np.allclose(a.depth, c.depth, rtol=0.02)
    assert build_scene("a room", 7, texels_per_m=FAST_TEXELS).describe() != s8.describe()


def test_no_two_surfaces_alike():
    s = build_scene("a room", 2, texels_per_m=FAST_TEXELS)
    walls = [x.texture for x in s.surfaces if x.name.startswith("wall")]
    assert len(walls) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            h = min(walls[i].shape[0], walls[j].shape[0])
            w = min(walls[i].shape[1], walls[j].shape[1])
            assert np.abs(walls[i][:h, :w] - walls[j][:h, :w]).mean() > 0.02


# ---------------------------------------------------------------------------------------------- colours


def _mean_albedo(scene, prefix):
    return np.mean(
        [s.texture.reshape(-1, 3).mean(0) for s in scene.surfaces if s.name.startswith(prefix)], axis=0
    )


def test_prompt_colours_tint_the_scene_and_objects():
    red = _mean_albedo(build_scene("a red room", 4, texels_per_m=FAST_TEXELS), "wall")
    blue = _mean_albedo(build_scene("a blue room", 4, texels_per_m=FAST_TEXELS), "wall")
    assert red[0] > red[2] + 0.1 and blue[2] > blue[0] + 0.1
    sofa = _mean_albedo(build_scene("a room with a green sofa", 4, texels_per_m=FAST_TEXELS), "sofa")
    assert sofa[1] > sofa[0] + 0.1 and sofa[1] > sofa[2] + 0.1
    yard = build_scene("a yellow courtyard", 4, texels_per_m=20.0)
    assert "yellow" in yard.caption


# ------------------------------------------------------------------------------------------ every kind


def _texture_energy(img, mask):
    """Mean absolute Laplacian of the luminance over valid pixels (detail a feature matcher can use)."""
    lum = img @ np.array([0.299, 0.587, 0.114])
    lap = np.abs(4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2] - lum[1:-1, 2:])
    return float(lap[mask[1:-1, 1:-1]].mean())


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_textured_in_every_direction_from_its_start(kind):
    scene = build_scene(f"a {kind}", 1, kind=kind)
    start = scene.start_position
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    if kind == "table":  # around the tabletop, looking at it from about 1.2 m
        eyes = np.stack([1.2 * np.sin(angles), np.full(6, start[1]), 1.2 * np.cos(angles)], 1)
        targets = np.repeat(scene.focus[None], 6, 0)
    else:  # turning around on the spot
        eyes = np.repeat(start[None], 6, 0)
        targets = start + np.stack([np.sin(angles), np.full(6, -0.1), np.cos(angles)], 1)
    out = render(scene, _cams(eyes, targets, size=(64, 64), fov=60), samples_per_pixel=1, progress=False)
    for v in range(6):
        m = out.mask[v, 0]
        assert m.mean() > (0.45 if kind == "courtyard" else 0.99), (kind, v, m.mean())
        img = out.rgb[v, 0]
        assert img[m].std(axis=0).mean() > 0.04, (kind, v)
        assert _texture_energy(img, m) > 0.03, (kind, v, _texture_energy(img, m))
    if kind == "courtyard":  # the sky is empty (depth 0) and blue-ish
        sky = ~out.mask
        assert sky.any() and (out.depth[sky] == 0).all()
        upper = sky[:, :, :28]  # above the horizon (the camera looks slightly down)
        assert (out.rgb[:, :, :28][upper][:, 2] > out.rgb[:, :, :28][upper][:, 0]).mean() > 0.9
    lo, hi = scene.bounds
    assert np.all(lo <= start) and np.all(start <= hi)


def test_layout_agreed_with_the_planner():
    room = build_scene("a room", 5, texels_per_m=FAST_TEXELS)
    lo, hi = room.bounds
    assert lo[1] == pytest.approx(0.0) and 2.55 < hi[1] < 2.85
    assert np.all(np.abs(lo[[0, 2]]) > 2.6) and np.all(hi[[0, 2]] > 2.6)
    table = build_scene("a table", 5, texels_per_m=FAST_TEXELS)
    top = next(s for s in table.surfaces if s.name == "tabletop")
    assert top.mesh.vertices[:, 1].max() == pytest.approx(0.75)
    on_top = [
        s for s in table.surfaces if abs(s.mesh.vertices[:, 1].min() - 0.75) < 1e-6 and s.name != "tabletop"
    ]
    assert len(on_top) >= 4  # the objects stand on the top, within about 0.4 m of its centre
    assert all(np.hypot(s.mesh.vertices[:, 0], s.mesh.vertices[:, 2]).max() < 0.45 for s in on_top)
    yard = build_scene("a courtyard", 5, texels_per_m=10.0)
    buildings = [s for s in yard.surfaces if s.name == "building"]
    d = [np.hypot(s.mesh.vertices[:, 0], s.mesh.vertices[:, 2]).min() for s in buildings]
    assert len(buildings) >= 5 and min(d) > 7.5 and max(d) < 16


# ----------------------------------------------------------------------------------------- moving objects


def test_moving_objects_are_synchronised_across_videos():
    scene = build_scene("a table", 2, moving_objects=1, texels_per_m=FAST_TEXELS)
    (idx,) = [i for i, s in enumerate(scene.surfaces) if s.motion is not None]
    mover = scene.surfaces[idx]
    F = 4
    eyes = np.array([[0.0, 1.3, 1.1], [1.0, 1.35, -0.4], [-0.9, 1.2, 0.5]])
    c2w = look_at(eyes, np.repeat(scene.focus[None], 3, 0))[:, None].repeat(F, 1)
    cams = Cameras(c2w, intrinsics_from_fov(55, 64, 64), 64, 64, time_s=np.arange(F) * 0.6)
    out = render(scene, cams, samples_per_pixel=1, progress=False)
    seen = 0
    for f in range(F):
        centre = mover.motion.world_from_object(float(cams.time_s[f]))[:3, 3]
        for v in range(3):
            uv, z = project(centre[None], c2w[v, f], cams.K[v, f])
            x, y = np.floor(uv[0]).astype(int)
            assert 0 <= x < 64 and 0 <= y < 64
            # The object's centre is inside it: the pixel shows the mover, or something nearer hides it.
            if out.surface_id[v, f, y, x] == idx:
                seen += 1
                pts_cam = out.depth[v, f][out.surface_id[v, f] == idx]
                assert np.all(pts_cam < z[0] + 0.1)
            else:
                assert out.depth[v, f, y, x] < z[0]
    assert seen >= 8
    # It moves: its pixels differ between the first and the last frame in every video.
    for v in range(3):
        assert (out.surface_id[v, 0] == idx).sum() > 0
        assert not np.array_equal(out.surface_id[v, 0] == idx, out.surface_id[v, -1] == idx)


def test_static_scene_does_not_change_over_time(room):
    cams = _cams([[0, 1.5, 0]], [[1, 1.2, 1]], size=(24, 24), frames=3)
    out = render(room, cams, samples_per_pixel=1, progress=False)
    np.testing.assert_array_equal(out.rgb[0, 0], out.rgb[0, 2])


# ---------------------------------------------------------------------------------------------- media


def test_frames_png_round_trip_and_mp4(tmp_path):
    from cvd_scene.media import contact_sheet, read_frames, read_mp4, write_frames, write_mp4

    rng = np.random.default_rng(0)
    frames = rng.random((2, 3, 15, 21, 3)).astype(np.float32)  # odd sizes
    paths = write_frames(frames, tmp_path / "frames", ["a", "b"])
    assert paths[0] == tmp_path / "frames" / "a" / "0000.png" and len(paths) == 6
    back = read_frames(tmp_path / "frames", ["a", "b"], 3)
    assert back.shape == frames.shape and back.dtype == np.float32
    assert np.abs(back - frames).max() <= 0.5 / 255 + 1e-6
    smooth = np.repeat(np.linspace(0, 1, 21, dtype=np.float32)[None, None, :, None], 15, 1).repeat(3, 3)
    clip = np.repeat(smooth, 5, 0)  # [5, 15, 21, 3]
    write_mp4(clip, tmp_path / "v.mp4", fps=8)
    dec = read_mp4(tmp_path / "v.mp4")
    assert dec.shape == (5, 16, 22, 3)  # padded to even sizes for yuv420p
    assert np.abs(dec[:, :15, :21].astype(float) / 255 - clip).mean() < 0.03
    sheet = contact_sheet(frames, tmp_path / "sheet.png", max_frames=2, video_ids=["a", "b"])
    assert sheet.ndim == 3 and (tmp_path / "sheet.png").is_file() and sheet.shape[1] > 2 * 21
    with pytest.raises(ValueError, match="V, F, H, W, 3"):
        write_frames(frames[0], tmp_path / "x", ["a"])
    with pytest.raises(FileNotFoundError, match="0003.png"):
        read_frames(tmp_path / "frames", ["a"], 4)


# ----------------------------------------------------------------------------------------------- stage


def _plan(run_dir, size=(47, 33), videos=2, frames=3):
    eyes = np.array([[0.0, 1.5, 0.0]] * videos) + np.arange(videos)[:, None] * [0.2, 0.0, 0.0]
    targets = eyes + np.stack(
        [np.sin(np.arange(videos)), np.full(videos, -0.1), np.cos(np.arange(videos))], 1
    )
    cams = _cams(eyes, targets, size=size, frames=frames)
    (run_dir / "plan").mkdir(parents=True)
    write_cameras_json(cams, run_dir / "plan" / "cameras.json")
    return cams


def test_generate_stage_writes_every_file(tmp_path):
    import trimesh

    from cvd_scene.config import load_config
    from cvd_scene.generate.run import run_generate
    from cvd_scene.media import read_mp4
    from cvd_scene.runconfig import RunConfig

    cams = _plan(tmp_path / "run")
    gen = {"samples_per_pixel": 2, "texels_per_m": FAST_TEXELS}
    cfg = load_config(RunConfig, "run", None, {"prompt": "a blue room", "generate": gen})
    out = tmp_path / "out"
    out.mkdir()
    result = run_generate(cfg, tmp_path / "run", out)
    assert result.status == "finished", result.message
    from PIL import Image

    for vid in cams.video_ids:
        for f in range(3):
            with Image.open(out / "frames" / vid / f"{f:04d}.png") as im:
                assert im.size == (47, 33) and im.mode == "RGB"
            d = np.load(out / "gt" / "depth" / vid / f"{f:04d}.npy")
            assert d.shape == (33, 47) and d.dtype == np.float32 and (d > 0).all()
        assert read_mp4(out / "videos" / f"{vid}.mp4").shape == (3, 34, 48, 3)
    assert (out / "contact_sheet.png").is_file()
    tf = read_transforms_json(out / "transforms.json")
    np.testing.assert_allclose(tf.cameras.world_from_cam, cams.world_from_cam, atol=1e-9)
    assert tf.file_paths[0][0] == "frames/v00/0000.png"
    glb = trimesh.load(out / "gt" / "scene.glb")
    scene_info = json.loads((out / "gt" / "scene.json").read_text())
    assert len(glb.geometry) == scene_info["surfaces"] and scene_info["kind"] == "room"
    np.testing.assert_allclose(glb.bounds, scene_info["bounds_m"], atol=1e-3)
    rep = json.loads((out / "report.json").read_text())
    assert rep["generator"] == "reference" and rep["unet_calls"] == 0 and rep["seed"] == 0
    assert rep["wall_time_s"] > 0 and rep["peak_memory_mb"] > 0 and "blue room" in rep["caption"]


def test_generate_command_on_a_planned_run(tmp_path):
    from cvd_scene.cli import main
    from cvd_scene.config import load_config, to_dict
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import RunFolder, StageResult

    run_dir = tmp_path / "run"
    cfg = load_config(RunConfig, "run", None, {})
    run = RunFolder.open(run_dir, to_dict(cfg), None)

    def plan(out):
        cams = _cams([[0, 1.5, 0]], [[0, 1.5, 1]], size=(24, 16), frames=2)
        write_cameras_json(cams, out / "cameras.json")
        return StageResult()

    run.run_stage("plan", plan, {"cameras": "given"})
    rc = main(
        [
            "generate",
            str(run_dir),
            "--quiet",
            "--prompt",
            "a courtyard",
            "generate.samples_per_pixel=1",
            "generate.texels_per_m=10",
        ]
    )
    assert rc == 0
    rep = json.loads((run_dir / "generate" / "report.json").read_text())
    assert rep["scene_kind"] == "courtyard" and rep["samples_per_pixel"] == 1
    assert sorted(p.name for p in (run_dir / "generate" / "frames" / "v00").iterdir()) == [
        "0000.png",
        "0001.png",
    ]
    # A config the stage cannot use is one line on stderr, not a traceback.
    assert main(["generate", str(run_dir), "--quiet", "--redo", "generate.samples_per_pixel=0"]) == 2


def test_scene_pickles_without_its_ray_casting_structures(room):
    """Data loaders send scenes to worker processes: the open3d structures are rebuilt on demand."""
    import pickle

    cams = _cams([[0, 1.5, 0]], [[1, 1.2, -1]], size=(20, 16))
    before = render(room, cams, 1, progress=False)
    copy = pickle.loads(pickle.dumps(room))
    assert copy._compiled is None
    np.testing.assert_array_equal(render(copy, cams, 1, progress=False).rgb, before.rgb)
