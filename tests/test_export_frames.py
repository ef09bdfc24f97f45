"""The frames of the export files: PLY, .splat and SPZ in the 3DGS readers' frame (the run's world turned 180
degrees about z), glTF in the run's world; checked against closed-form signs, gsplat's own SH evaluator, renders of
the turned scene, and splat-transform (an independent reader with its own idea of the PLY frame)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cvd_scene.cameras import quaternion_to_rotation
from cvd_scene.export.axes import (
    FRAMES,
    READERS,
    RUN,
    SH_REST_SIGNS,
    TURN_Z180,
    convert,
    readers_from_run,
    run_from_readers,
)
from cvd_scene.export.config import ExportConfig
from cvd_scene.export.gltf import read_khr_glb
from cvd_scene.export.pipeline import export_gaussians, write_report
from cvd_scene.export.ply import ply_frame, read_ply, write_ply
from cvd_scene.export.splat import read_splat
from cvd_scene.export.spz import read_spz
from cvd_scene.gaussians import Gaussians
from tests.test_export import FIELDS, cli, random_gaussians, rotation_error_deg, run_splat_transform

# The turn's signs written out by hand, per degree (3DGS order of coefficients 1..15 within one channel).
HAND_SIGNS = [-1, +1, -1] + [+1, -1, +1, -1, +1] + [-1, +1, -1, +1, -1, +1, -1]


def test_sh_signs_are_the_closed_form():
    np.testing.assert_array_equal(SH_REST_SIGNS, HAND_SIGNS)


def test_turn_positions_rotations_and_sh_follow_the_closed_form():
    g = random_gaussians(64, 15, seed=3)
    t = readers_from_run(g)
    np.testing.assert_array_equal(t.means, g.means * [-1, -1, 1])
    R, R_t = (quaternion_to_rotation(q.astype(np.float64)) for q in (g.quats_wxyz, t.quats_wxyz))
    np.testing.assert_allclose(R_t, TURN_Z180 @ R, atol=1e-6)
    np.testing.assert_array_equal(np.sort(np.abs(t.quats_wxyz), axis=1), np.sort(np.abs(g.quats_wxyz), axis=1))
    np.testing.assert_array_equal(t.sh_rest, g.sh_rest * np.array(HAND_SIGNS, np.float32)[None, :, None])
    for name in ("log_scales", "opacity_logits", "sh_dc"):
        np.testing.assert_array_equal(getattr(t, name), getattr(g, name))


def test_turn_back_is_exact_in_both_directions():
    g = random_gaussians(100, 8, seed=4)
    for a, b in ((readers_from_run, run_from_readers), (run_from_readers, readers_from_run)):
        back = b(a(g))
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(back, name), getattr(g, name), err_msg=name)
    assert convert(g, RUN, RUN) is g and convert(g, READERS, READERS) is g
    with pytest.raises(ValueError, match="'up'"):
        convert(g, RUN, "up")


def test_ply_f_rest_signs_follow_the_index_within_a_channel(tmp_path):
    """f_rest is channel-major on disk: f_rest_i is channel i // 15, coefficient i % 15 + 1."""
    from plyfile import PlyData

    g = random_gaussians(20, 15, seed=5)
    a = PlyData.read(str(write_ply(g, tmp_path / "run.ply")))["vertex"].data
    b = PlyData.read(str(write_ply(readers_from_run(g), tmp_path / "readers.ply")))["vertex"].data
    for i in range(45):
        sign = HAND_SIGNS[i % 15]
        np.testing.assert_array_equal(b[f"f_rest_{i}"], sign * a[f"f_rest_{i}"], err_msg=f"f_rest_{i}")


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_turned_colours_match_gsplats_sh_evaluator(degree):
    """gsplat's torch SH (an independent evaluator): the turned scene seen along the turned direction has the
    colour the original has along the original direction; without the sign change it would not."""
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = random_gaussians(200, (degree + 1) ** 2 - 1, seed=6)
    t = readers_from_run(g)
    dirs = torch.from_numpy(np.random.default_rng(7).normal(size=(200, 3)))  # [N, 3] one direction a splat

    def colours(gs: Gaussians, d: torch.Tensor) -> torch.Tensor:
        coeffs = torch.from_numpy(np.concatenate([gs.sh_dc[:, None], gs.sh_rest], axis=1)).double()  # [N, K+1, 3]
        return _spherical_harmonics(degree, d, coeffs)  # [N, 3]

    turned_dirs = dirs @ torch.from_numpy(TURN_Z180).T
    want = colours(g, dirs)
    torch.testing.assert_close(colours(t, turned_dirs), want, atol=1e-5, rtol=1e-5)
    unsigned = Gaussians(t.means, t.log_scales, t.quats_wxyz, t.opacity_logits, t.sh_dc, g.sh_rest)
    assert (colours(unsigned, turned_dirs) - want).abs().max() > 0.1


def test_turned_scene_renders_the_same_from_the_turned_camera():
    """The rasteriser (same maths as gsplat) sees the same image of the turned scene from the turned camera."""
    from cvd_scene.fit.raster import rasterize

    rng = np.random.default_rng(8)
    g = random_gaussians(300, 15, seed=8)
    g.means[:] = rng.uniform([-1, -1, 2], [1, 1, 4], size=(300, 3))
    g.log_scales[:] = rng.uniform(-3.5, -2, size=(300, 3))
    cam_from_world = np.eye(4)
    cam_from_world[:3, :3] = quaternion_to_rotation(np.array([0.98, 0.1, -0.15, 0.05]) / 1.0)
    K = torch.tensor([[40.0, 0, 24], [0, 40, 24], [0, 0, 1]], dtype=torch.float64)[None]

    def render(gs: Gaussians, view: np.ndarray) -> torch.Tensor:
        image, _, _ = rasterize(
            torch.from_numpy(gs.means).double(),
            torch.from_numpy(gs.quats_wxyz).double(),
            torch.from_numpy(np.exp(gs.log_scales)).double(),
            torch.from_numpy(gs.opacities).double(),
            torch.from_numpy(np.concatenate([gs.sh_dc[:, None], gs.sh_rest], 1)).double(),
            torch.from_numpy(view)[None],
            K,
            48,
            48,
            sh_degree=3,
        )
        return image[0]  # [H, W, 3]

    turn = np.eye(4)
    turn[:3, :3] = TURN_Z180
    cam_from_world[:3, :3] /= np.cbrt(np.linalg.det(cam_from_world[:3, :3]))
    original = render(g, cam_from_world)
    assert original.std() > 0.05, "the image must show something"
    turned = render(readers_from_run(g), cam_from_world @ np.linalg.inv(turn))
    torch.testing.assert_close(turned, original, atol=1e-6, rtol=1e-6)
    plain = Gaussians(
        readers_from_run(g).means, readers_from_run(g).log_scales, readers_from_run(g).quats_wxyz,
        g.opacity_logits, g.sh_dc, g.sh_rest,
    )  # fmt: skip
    assert (render(plain, cam_from_world @ np.linalg.inv(turn)) - original).abs().max() > 0.02


def test_export_writes_splat_files_in_the_readers_frame_and_glb_in_the_run_world(tmp_path):
    g = random_gaussians(150, 15, seed=9)
    options = ExportConfig(formats=("ply", "splat", "spz", "glb"), spz_versions=(3,))
    report = export_gaussians(g, tmp_path / "out", options, source={"path": "test"})
    write_report(tmp_path / "out", report)
    out = tmp_path / "out"
    want = readers_from_run(g)
    ply = read_ply(out / "scene.ply")
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(ply, name), getattr(want, name), err_msg=name)
    assert ply_frame(out / "scene.ply") == READERS
    assert "comment cvd-scene frame: readers" in (out / "scene.ply").read_bytes()[:2000].decode("ascii", "replace")
    splat = read_splat(out / "scene.splat")
    order = np.argsort(splat.means[:, 0])
    np.testing.assert_allclose(splat.means[order], want.means[np.argsort(want.means[:, 0])], atol=1e-6)
    spz = read_spz(out / "scene.spz")
    np.testing.assert_allclose(spz.means, want.means, atol=1e-3)
    assert rotation_error_deg(spz.quats_wxyz, want.quats_wxyz).max() < 0.3
    np.testing.assert_allclose(spz.sh_rest, want.sh_rest, atol=9 / 128)  # 4-bit SH: half a step of 16/128
    glb = read_khr_glb(out / "scene_khr.glb")
    np.testing.assert_allclose(glb.means, g.means, atol=1e-6)
    doc = json.loads((out / "report.json").read_text())
    assert {k: v["frame"] for k, v in doc["files"].items()} == {
        "ply": READERS, "splat": READERS, "spz": READERS, "glb": RUN,
    }  # fmt: skip
    assert doc["frames"] == {RUN: FRAMES[RUN], READERS: FRAMES[READERS]} and doc["source"]["frame"] == RUN


def test_frame_run_writes_the_raw_world(tmp_path):
    g = random_gaussians(40, 3, seed=10)
    report = export_gaussians(g, tmp_path, ExportConfig(formats=("ply",), frame=RUN))
    np.testing.assert_array_equal(read_ply(tmp_path / "scene.ply").means, g.means)
    assert ply_frame(tmp_path / "scene.ply") == RUN and report["files"]["ply"]["frame"] == RUN
    with pytest.raises(ValueError, match="'sideways'"):
        ExportConfig(frame="sideways")


def test_export_from_keeps_ply_and_turns_between_glb_and_splat_files(tmp_path):
    g = random_gaussians(60, 8, seed=12)
    src = write_ply(g, tmp_path / "inria.ply")  # no frame comment: taken to be in the readers' frame
    assert cli("export", "--from", str(src), "--out", str(tmp_path / "a"), "--formats", "ply,glb", "--quiet") == 0
    again = read_ply(tmp_path / "a" / "scene.ply")
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(g, name), err_msg=name)
    glb = read_khr_glb(tmp_path / "a" / "scene_khr.glb")
    np.testing.assert_allclose(glb.means, g.means * [-1, -1, 1], atol=1e-6)  # PLY -> glTF turns
    # glTF -> PLY turns the other way: back to the input
    glb_src = tmp_path / "a" / "scene_khr.glb"
    assert cli("export", "--from", str(glb_src), "--out", str(tmp_path / "b"), "--formats", "ply", "--quiet") == 0
    np.testing.assert_allclose(read_ply(tmp_path / "b" / "scene.ply").means, g.means, atol=1e-6)
    # a PLY that states the run frame is read as such; --frame run keeps it
    write_ply(g, tmp_path / "run.ply", frame=RUN)
    args = ("--formats", "ply,glb", "--quiet")
    assert cli("export", "--from", str(tmp_path / "run.ply"), "--out", str(tmp_path / "c"), "--frame", "run", *args) == 0
    np.testing.assert_array_equal(read_ply(tmp_path / "c" / "scene.ply").means, g.means)
    np.testing.assert_allclose(read_khr_glb(tmp_path / "c" / "scene_khr.glb").means, g.means, atol=1e-6)
    assert cli("export", "--from", str(src), "--out", str(tmp_path / "d"), "--frame", "up", "--quiet") == 2


def test_splat_transform_turns_our_ply_into_our_glb(tmp_path):
    """splat-transform reads a PLY in the readers' frame and writes glTF Y-up (a 180-degree turn about z), so
    its GLB of our scene.ply is our scene_khr.glb, up to float rounding, SH included (its own SH rotation)."""
    g = random_gaussians(120, 15, seed=13)
    export_gaussians(g, tmp_path, ExportConfig(formats=("ply", "glb")))
    run_splat_transform(str(tmp_path / "scene.ply"), str(tmp_path / "theirs.glb"))
    theirs, ours = read_khr_glb(tmp_path / "theirs.glb"), read_khr_glb(tmp_path / "scene_khr.glb")
    np.testing.assert_allclose(theirs.means, ours.means, atol=1e-5)
    np.testing.assert_allclose(theirs.log_scales, ours.log_scales, atol=1e-5)
    np.testing.assert_allclose(theirs.sh_dc, ours.sh_dc, atol=1e-6)
    np.testing.assert_allclose(theirs.sh_rest, ours.sh_rest, atol=1e-5)
    assert rotation_error_deg(theirs.quats_wxyz, ours.quats_wxyz).max() < 1e-3
    assert np.abs(theirs.sh_rest - read_ply(tmp_path / "scene.ply").sh_rest).max() > 0.5  # the PLY's are turned


@pytest.mark.parametrize(
    "fmt", ["cply", pytest.param("sog", marks=pytest.mark.slow)]  # SOG: k-means on the CPU, about 30 s here
)
def test_sog_and_compressed_ply_come_from_splat_transform_in_the_readers_frame(tmp_path, monkeypatch, fmt):
    """SOG and compressed PLY are splat-transform's own writers fed with scene.ply: decoded again by it they hold
    scene.ply's splats (readers' frame) within their quantisation; without splat-transform they are skipped."""
    from scipy.spatial import cKDTree

    from cvd_scene.export import splat_transform
    from tests.test_export import splat_transform as require_splat_transform

    require_splat_transform()
    g = random_gaussians(200, 3, seed=14)
    report = export_gaussians(g, tmp_path, ExportConfig(formats=("ply", fmt)))
    ply = read_ply(tmp_path / "scene.ply")
    name = {"sog": "scene.sog", "cply": "scene.compressed.ply"}[fmt]
    assert report["files"][fmt]["file"] == name and report["files"][fmt]["frame"] == READERS
    decoded = tmp_path / "decoded.ply"
    run_splat_transform(str(tmp_path / name), str(decoded))
    theirs = read_ply(decoded)
    assert len(theirs) == 200
    distance, _ = cKDTree(ply.means).query(theirs.means)  # [200] to the nearest splat of scene.ply
    assert distance.max() < 0.02, distance.max()
    monkeypatch.setattr(splat_transform, "REPO_TOOL", tmp_path / "absent")
    monkeypatch.setenv(splat_transform.ENV_VARIABLE, str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # node stays findable, splat-transform not
    report = export_gaussians(g, tmp_path / "none", ExportConfig(formats=("ply", fmt)))
    assert set(report["files"]) == {"ply"} and set(report["skipped"]) == {fmt}
    assert "splat-transform" in report["skipped"][fmt]
