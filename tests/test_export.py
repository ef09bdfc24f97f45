"""Export formats: round trips within each format's quantisation, axis conventions, independent readers."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cvd_scene.cameras import quaternion_to_rotation
from cvd_scene.export.axes import readers_from_run, run_from_readers
from cvd_scene.export.common import normalized_quats
from cvd_scene.export.gltf import read_glb, read_khr_glb, write_khr_glb
from cvd_scene.export.ply import PlyFormatError, read_ply, write_ply
from cvd_scene.export.splat import SplatFormatError, read_splat, splat_order, write_splat
from cvd_scene.export.spz import SpzFormatError, read_spz, read_spz_packed, write_spz, zstd_available
from cvd_scene.gaussians import SH_C0, Gaussians
from tests.fit_helpers import random_gaussians

FIELDS = ("means", "log_scales", "quats_wxyz", "opacity_logits", "sh_dc", "sh_rest")
REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO / ".tools" / "node_modules"


def rotation_error_deg(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """[N] angle between the rotations of two [N, 4] w-first quaternion sets (sign-insensitive)."""
    a, b = np.asarray(q_a, np.float64), np.asarray(q_b, np.float64)
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    b = b * np.where(np.sum(a * b, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return np.degrees(
        4 * np.arcsin(np.clip(np.linalg.norm(a - b, axis=1) / 2, 0, 1))
    )  # well conditioned at 0


def asymmetric_gaussians() -> Gaussians:
    """Three splats, each 2 m out along one world axis, elongated along that axis, coloured by it:
    +x red (long axis x), +y green (long axis y), +z blue (long axis z)."""
    s = np.sqrt(0.5)
    return Gaussians(
        means=np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]]),
        log_scales=np.log(np.tile([0.5, 0.05, 0.02], (3, 1))),  # long local x, then y, then z
        quats_wxyz=np.array([[1.0, 0, 0, 0], [s, 0, 0, s], [s, 0, -s, 0]]),  # local x -> world x, y, z
        opacity_logits=np.array([2.0, 1.0, 0.0]),
        sh_dc=(np.eye(3) * 0.9 + 0.05 - 0.5) / SH_C0,
        sh_rest=np.zeros((3, 0, 3)),
    )


def check_asymmetric(means, long_axes, colours, tol_pos=1e-3, tol_axis_deg=3.0, where=""):
    """Splat i sits at 2 e_i, its long axis is +-e_i and its colour's largest channel is i."""
    for i in range(3):
        np.testing.assert_allclose(means[i], 2.0 * np.eye(3)[i], atol=tol_pos, err_msg=f"{where} splat {i}")
        cos = abs(float(np.dot(long_axes[i], np.eye(3)[i])) / np.linalg.norm(long_axes[i]))
        assert np.degrees(np.arccos(min(cos, 1.0))) < tol_axis_deg, (
            f"{where} splat {i} long axis {long_axes[i]}"
        )
        assert int(np.argmax(colours[i])) == i, f"{where} splat {i} colour {colours[i]}"


def long_axis(q_wxyz: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[3] world direction of the largest scale axis of one splat."""
    return quaternion_to_rotation(np.asarray(q_wxyz, np.float64))[:, int(np.argmax(scales))]


def splat_transform() -> Path:
    """The independent reader `splat-transform` installed by scripts/install.sh, or skip."""
    exe = NODE_MODULES / ".bin" / "splat-transform"
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/install.sh installs it); independent reader not run")
    if not exe.exists():
        pytest.skip(
            f"{exe} is missing (scripts/install.sh installs @playcanvas/splat-transform); reader not run"
        )
    return exe


def run_splat_transform(*args: str) -> str:
    out = subprocess.run(
        [str(splat_transform()), "-q", *args], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"splat-transform {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def splat_transform_count(path: Path) -> int:
    """Number of Gaussians splat-transform reads from ``path`` (its --info summary)."""
    info = json.loads(run_splat_transform(str(path), "--info", "json", "null"))
    return int(info["numGaussians"])


def gltf_validate(path: Path) -> dict:
    """The Khronos glTF validator's report on ``path`` (tests/tools/validate_gltf.js), or skip."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/install.sh installs it); glTF validator not run")
    if not (NODE_MODULES / "gltf-validator").is_dir():
        pytest.skip(f"{NODE_MODULES / 'gltf-validator'} is missing (scripts/install.sh installs it)")
    script = REPO / "tests" / "tools" / "validate_gltf.js"
    out = subprocess.run(
        ["node", str(script), str(path), str(NODE_MODULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 1), f"validator could not run: {out.stderr}"
    return json.loads(out.stdout)


# ----------------------------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("sh_coeffs", [0, 3, 8, 15])
def test_ply_round_trip_is_exact(tmp_path, sh_coeffs):
    g = random_gaussians(257, sh_coeffs)
    back = read_ply(write_ply(g, tmp_path / "s.ply"))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(g, name), err_msg=name)


def test_ply_layout_is_inria(tmp_path):
    """Property names and order as the Inria viewer writes them; f_rest channel-major on disk."""
    from plyfile import PlyData

    g = random_gaussians(10, 15)
    path = write_ply(g, tmp_path / "s.ply")
    head = path.read_bytes()[:4000].split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in head and "element vertex 10" in head
    props = [line.split()[-1] for line in head.splitlines() if line.startswith("property")]
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert props[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(line.split()[1] == "float" for line in head.splitlines() if line.startswith("property"))
    assert path.stat().st_size == len(head) + len("end_header\n") + 10 * 62 * 4
    v = PlyData.read(str(path))["vertex"].data
    np.testing.assert_array_equal(v["f_rest_0"], g.sh_rest[:, 0, 0])
    np.testing.assert_array_equal(v["f_rest_14"], g.sh_rest[:, 14, 0])
    np.testing.assert_array_equal(v["f_rest_15"], g.sh_rest[:, 0, 1])  # first green coefficient
    np.testing.assert_array_equal(v["f_rest_44"], g.sh_rest[:, 14, 2])


def test_ply_reader_accepts_foreign_layouts(tmp_path):
    """Extra properties, no normals, double precision, ASCII, big-endian, shuffled order (other writers)."""
    from plyfile import PlyData, PlyElement

    g = random_gaussians(20, 3)
    names = ["opacity", "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "scale_0", "scale_1", "scale_2"]
    names += ["rot_0", "rot_1", "rot_2", "rot_3"] + [f"f_rest_{i}" for i in range(9)] + ["filter_3D", "red"]
    arr = np.zeros(20, dtype=[(n, "f8") for n in names])
    arr["x"], arr["y"], arr["z"] = g.means.T
    for i in range(3):
        arr[f"f_dc_{i}"] = g.sh_dc[:, i]
        arr[f"scale_{i}"] = g.log_scales[:, i]
        for k in range(3):
            arr[f"f_rest_{i * 3 + k}"] = g.sh_rest[:, k, i]
    for i in range(4):
        arr[f"rot_{i}"] = g.quats_wxyz[:, i]
    arr["opacity"] = g.opacity_logits
    for text, order in ((False, ">"), (True, "=")):
        path = tmp_path / f"foreign_{text}.ply"
        PlyData([PlyElement.describe(arr, "vertex")], text=text, byte_order=order).write(str(path))
        back = read_ply(path)
        for name in FIELDS:
            np.testing.assert_allclose(
                getattr(back, name), getattr(g, name), rtol=1e-6, atol=1e-6, err_msg=name
            )


def test_ply_reader_refuses_non_splat_plys(tmp_path):
    from plyfile import PlyData, PlyElement

    cloud = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")])
    PlyData([PlyElement.describe(cloud, "vertex")]).write(str(tmp_path / "cloud.ply"))
    with pytest.raises(PlyFormatError, match="lacks f_dc_0"):
        read_ply(tmp_path / "cloud.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all\n")
    with pytest.raises(PlyFormatError, match="not a readable PLY"):
        read_ply(tmp_path / "junk.ply")
    bad = random_gaussians(3, 3)
    path = write_ply(bad, tmp_path / "odd.ply")
    text = path.read_bytes().replace(b"property float f_rest_8\n", b"property float f_rest_99\n")
    path.write_bytes(text)
    with pytest.raises(PlyFormatError, match="f_rest"):
        read_ply(path)


# ---------------------------------------------------------------------------------------------- .splat


def test_splat_round_trip_within_quantisation(tmp_path):
    """Positions/scales float32; colour and opacity within 0.5/255; orientation within 1 degree."""
    g = random_gaussians(500, 15)
    path = write_splat(g, tmp_path / "s.splat")
    assert path.stat().st_size == 500 * 32
    back = read_splat(path)
    ref = g.subset(splat_order(g))  # file order: volume x opacity, largest first
    np.testing.assert_array_equal(back.means, ref.means)
    np.testing.assert_allclose(back.log_scales, ref.log_scales, atol=1e-6)
    np.testing.assert_allclose(back.colors, ref.colors, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.opacities, ref.opacities, atol=0.5 / 255 + 1e-6)
    assert rotation_error_deg(back.quats_wxyz, ref.quats_wxyz).max() < 1.0
    assert back.sh_degree == 0


def test_splat_is_sorted_by_size_times_opacity(tmp_path):
    g = random_gaussians(300, 0, seed=3)
    rec = np.frombuffer(write_splat(g, tmp_path / "s.splat").read_bytes(), np.uint8).reshape(-1, 32)
    score = np.prod(np.exp(g.log_scales.astype(np.float64)), axis=1) / (
        1 + np.exp(-g.opacity_logits.astype(float))
    )
    np.testing.assert_array_equal(rec[:, :12].copy().view("<f4"), g.means[np.argsort(-score)])


def test_splat_reader_refuses_other_files(tmp_path):
    (tmp_path / "x.splat").write_bytes(b"\0" * 33)
    with pytest.raises(SplatFormatError, match="multiple of 32"):
        read_splat(tmp_path / "x.splat")


# ------------------------------------------------------------------------------------------------- SPZ


def spz_versions() -> list[int]:
    return [3, 4] if zstd_available() else [3]


@pytest.mark.parametrize("version", spz_versions())
@pytest.mark.parametrize("sh_coeffs", [0, 3, 15])
def test_spz_round_trip_within_quantisation(tmp_path, version, sh_coeffs):
    """Positions 1/2**13 m; log-scales 1/32; opacity 0.5/255; SH DC 0.5/(255*0.15); orientation 0.25 degree;
    SH rest 4.5/128 (degree 1) and 8.5/128 (degrees 2-3)."""
    g = random_gaussians(400, sh_coeffs, seed=version)
    back = read_spz(write_spz(g, tmp_path / "s.spz", version=version))
    assert len(back) == len(g) and back.sh_degree == g.sh_degree
    np.testing.assert_allclose(back.means, g.means, atol=0.5 / 4096 + 1e-7)
    np.testing.assert_allclose(back.log_scales, g.log_scales, atol=1 / 32 + 1e-6)
    np.testing.assert_allclose(back.opacities, g.opacities, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.sh_dc, g.sh_dc, atol=0.5 / (255 * 0.15) + 1e-6)
    assert rotation_error_deg(back.quats_wxyz, g.quats_wxyz).max() < 0.25
    if sh_coeffs:
        np.testing.assert_allclose(back.sh_rest[:, :3], g.sh_rest[:, :3], atol=4.5 / 128)
        np.testing.assert_allclose(back.sh_rest[:, 3:], g.sh_rest[:, 3:], atol=8.5 / 128)


@pytest.mark.parametrize("version", spz_versions())
def test_spz_header_layout(tmp_path, version):
    g = random_gaussians(7, 3)
    data = write_spz(g, tmp_path / "s.spz", version=version).read_bytes()
    if version == 3:
        assert data[:2] == b"\x1f\x8b"
        inner = gzip.decompress(data)
        assert struct.unpack_from("<IIIBBBB", inner) == (0x5053474E, 3, 7, 1, 12, 0, 0)
        assert len(inner) == 16 + 7 * (9 + 1 + 3 + 3 + 4 + 9)
    else:
        assert data[:4] == b"NGSP"
        _magic, ver, n, degree, bits, flags, streams, toc = struct.unpack_from("<IIIBBBBI", data)
        assert (ver, n, degree, bits, flags, streams, toc) == (4, 7, 1, 12, 0, 6, 32)
        assert data[20:32] == b"\0" * 12


def test_spz_large_scene_lowers_fractional_bits(tmp_path):
    g = random_gaussians(20, 0)
    g.means[0] = [3000.0, -10.0, 5.0]  # beyond the +-2048 m of 12 fractional bits
    back_packed = read_spz_packed(write_spz(g, tmp_path / "s.spz"))
    assert back_packed.fractional_bits == 11
    np.testing.assert_allclose(read_spz(tmp_path / "s.spz").means, g.means, atol=0.5 / 2048 + 1e-6)


def test_spz_reader_refuses_other_files(tmp_path):
    (tmp_path / "a.spz").write_bytes(b"PK\3\4 not spz")
    with pytest.raises(SpzFormatError, match="not an SPZ file"):
        read_spz(tmp_path / "a.spz")
    (tmp_path / "b.spz").write_bytes(gzip.compress(b"hello world, not a splat"))
    with pytest.raises(SpzFormatError, match="magic"):
        read_spz(tmp_path / "b.spz")


def _smallest_three_reference(word: int) -> np.ndarray:
    """Slow, obviously-correct decode of one SPZ v3 rotation word to x, y, z, w."""
    largest = word >> 30
    q = [0.0] * 4
    others = [i for i in range(4) if i != largest]
    for slot, i in enumerate(others):  # first stored component in the highest 10 bits
        bits = (word >> (10 * (2 - slot))) & 0x3FF
        q[i] = (bits & 0x1FF) / 511 * np.sqrt(0.5) * (-1 if bits & 0x200 else 1)
    q[largest] = np.sqrt(max(0.0, 1 - sum(v * v for v in q)))
    return np.array(q)


def test_spz_rotations_decode_with_reference_decoder(tmp_path):
    g = random_gaussians(50, 0, seed=5)
    inner = gzip.decompress(write_spz(g, tmp_path / "s.spz", version=3).read_bytes())
    off = 16 + 50 * (9 + 1 + 3 + 3)
    words = np.frombuffer(inner[off : off + 200], "<u4")
    q_xyzw = np.stack([_smallest_three_reference(int(w)) for w in words])
    assert rotation_error_deg(q_xyzw[:, [3, 0, 1, 2]], g.quats_wxyz).max() < 0.25


# ------------------------------------------------------------------------------------ glTF KHR splats


@pytest.mark.parametrize("sh_coeffs", [0, 8, 15])
def test_khr_glb_round_trip(tmp_path, sh_coeffs):
    """float32 attributes: exact up to the activations (exp/log, sigmoid/logit, quaternion normalisation)."""
    g = random_gaussians(300, sh_coeffs)
    back = read_khr_glb(write_khr_glb(g, tmp_path / "s.glb"))
    np.testing.assert_array_equal(back.means, g.means)
    np.testing.assert_allclose(back.log_scales, g.log_scales, atol=1e-5)
    np.testing.assert_allclose(back.opacities, g.opacities, atol=1e-6)
    np.testing.assert_array_equal(back.sh_dc, g.sh_dc)
    np.testing.assert_array_equal(back.sh_rest, g.sh_rest)
    assert rotation_error_deg(back.quats_wxyz, g.quats_wxyz).max() < 1e-3


def test_khr_glb_follows_the_extension_spec(tmp_path):
    g = random_gaussians(40, 8)
    doc, binary = read_glb(write_khr_glb(g, tmp_path / "s.glb"))
    assert doc["extensionsUsed"] == ["KHR_gaussian_splatting"] and "extensionsRequired" not in doc
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0
    ext = prim["extensions"]["KHR_gaussian_splatting"]
    assert ext["kernel"] == "ellipse" and ext["colorSpace"] == "srgb_rec709_display"
    names = set(prim["attributes"])
    want = {"POSITION", "COLOR_0"} | {f"KHR_gaussian_splatting:{a}" for a in ("ROTATION", "SCALE", "OPACITY")}
    want |= {"KHR_gaussian_splatting:SH_DEGREE_0_COEF_0"}
    want |= {f"KHR_gaussian_splatting:SH_DEGREE_1_COEF_{n}" for n in range(3)}
    want |= {f"KHR_gaussian_splatting:SH_DEGREE_2_COEF_{n}" for n in range(5)}
    assert names == want
    acc = doc["accessors"]
    types = {"ROTATION": "VEC4", "SCALE": "VEC3", "OPACITY": "SCALAR", "SH_DEGREE_0_COEF_0": "VEC3"}
    for short, type_ in types.items():
        a = acc[prim["attributes"][f"KHR_gaussian_splatting:{short}"]]
        assert (a["type"], a["componentType"], a["count"]) == (type_, 5126, 40)
    rot_view = doc["bufferViews"][acc[prim["attributes"]["KHR_gaussian_splatting:ROTATION"]]["bufferView"]]
    rot = np.frombuffer(binary, "<f4", count=160, offset=rot_view["byteOffset"]).reshape(40, 4)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-6)  # unit, as the spec requires
    q = normalized_quats(g.quats_wxyz)
    np.testing.assert_allclose(np.abs(np.sum(rot * q[:, [1, 2, 3, 0]], axis=1)), 1.0, atol=1e-6)  # x, y, z, w
    pos = acc[prim["attributes"]["POSITION"]]
    np.testing.assert_allclose(pos["min"], g.means.min(axis=0))
    np.testing.assert_allclose(pos["max"], g.means.max(axis=0))
    # degree-1 coefficient n of the spec = our sh_rest[:, n] (same basis and order as 3DGS)
    v = doc["bufferViews"][acc[prim["attributes"]["KHR_gaussian_splatting:SH_DEGREE_1_COEF_2"]]["bufferView"]]
    np.testing.assert_array_equal(
        np.frombuffer(binary, "<f4", count=120, offset=v["byteOffset"]).reshape(40, 3), g.sh_rest[:, 2]
    )


def test_khr_glb_passes_the_khronos_validator(tmp_path):
    """Zero errors except the validator's known refusal of extension-prefixed attribute names.

    glTF-Validator 2.0.0-dev.3.10 (the newest on npm) predates KHR_gaussian_splatting and reports every
    ``KHR_gaussian_splatting:*`` attribute as MESH_PRIMITIVE_INVALID_ATTRIBUTE (KhronosGroup/glTF-Validator
    issue 252); every other check must pass.
    """
    path = write_khr_glb(random_gaussians(50, 15), tmp_path / "s.glb")
    report = gltf_validate(path)
    errors = [m for m in report["issues"]["messages"] if m["severity"] == 0]
    known = [
        m for m in errors
        if m["code"] == "MESH_PRIMITIVE_INVALID_ATTRIBUTE"
        and m["pointer"].startswith("/meshes/0/primitives/0/attributes/KHR_gaussian_splatting:")
    ]  # fmt: skip
    assert errors == known, json.dumps(errors, indent=1)
    assert len(known) == 4 + 15  # ROTATION, SCALE, OPACITY, SH DC, and the 15 higher-band attributes
    assert report["issues"]["numWarnings"] == 0
    assert report["info"]["totalVertexCount"] == 50 and report["info"]["drawCallCount"] == 1


def test_khr_glb_fallback_is_a_point_cloud_for_trimesh(tmp_path):
    """A loader without the extension (trimesh) sees a coloured point cloud of the right size."""
    import trimesh

    g = random_gaussians(64, 0)
    scene = trimesh.load(write_khr_glb(g, tmp_path / "s.glb"))
    (cloud,) = scene.geometry.values()
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == 64
    np.testing.assert_allclose(cloud.vertices, g.means, atol=1e-6)


# ------------------------------------------------------------------------------ axes in every format


def test_asymmetric_splats_land_where_expected_in_every_format(tmp_path):
    """Decode each file with a few lines written here (not the module's readers): +x/+y/+z stay there."""
    g = asymmetric_gaussians()
    # PLY: the frame given, as written
    from plyfile import PlyData

    v = PlyData.read(str(write_ply(g, tmp_path / "a.ply")))["vertex"].data
    means = np.stack([v["x"], v["y"], v["z"]], 1)
    quats = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    scales = np.stack([v[f"scale_{i}"] for i in range(3)], 1)
    check_asymmetric(
        means,
        [long_axis(quats[i], scales[i]) for i in range(3)],
        np.stack([v["f_dc_0"], v["f_dc_1"], v["f_dc_2"]], 1),
        where="ply",
    )
    # .splat: same frame, sorted by volume x opacity (all volumes equal here -> opacity order = ours)
    rec = np.frombuffer(write_splat(g, tmp_path / "a.splat").read_bytes(), np.uint8).reshape(3, 32)
    means = rec[:, :12].copy().view("<f4")
    scales = rec[:, 12:24].copy().view("<f4")
    q = (rec[:, 28:32].astype(float) - 128) / 128
    check_asymmetric(means, [long_axis(q[i], scales[i]) for i in range(3)], rec[:, 24:27], where="splat")
    # SPZ: the frame given (the writers never turn; the export step does), positions 24-bit fixed point
    inner = gzip.decompress(write_spz(g, tmp_path / "a.spz", version=3).read_bytes())
    _, _, _, _, bits, _, _ = struct.unpack_from("<IIIBBBB", inner)
    b = np.frombuffer(inner, np.uint8, count=27, offset=16).astype(np.int64).reshape(3, 3, 3)
    fixed = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16
    means = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed) / (1 << bits)
    colours = np.frombuffer(inner, np.uint8, count=9, offset=16 + 27 + 3).reshape(3, 3)
    scales = np.frombuffer(inner, np.uint8, count=9, offset=16 + 27 + 3 + 9).reshape(3, 3)
    words = np.frombuffer(inner, "<u4", count=3, offset=16 + 27 + 3 + 9 + 9)
    q_xyzw = [_smallest_three_reference(int(w)) for w in words]
    axes = [long_axis(q_xyzw[i][[3, 0, 1, 2]], scales[i]) for i in range(3)]
    check_asymmetric(means, axes, colours, where="spz")
    # glTF: +y up right-handed = the world frame; rotation x, y, z, w
    doc, binary = read_glb(write_khr_glb(g, tmp_path / "a.glb"))
    attrs = doc["meshes"][0]["primitives"][0]["attributes"]

    def accessor(name, width):
        view = doc["bufferViews"][doc["accessors"][attrs[name]]["bufferView"]]
        return np.frombuffer(binary, "<f4", count=3 * width, offset=view["byteOffset"]).reshape(3, width)

    q = accessor("KHR_gaussian_splatting:ROTATION", 4)[:, [3, 0, 1, 2]]
    scales = accessor("KHR_gaussian_splatting:SCALE", 3)
    colours = accessor("KHR_gaussian_splatting:SH_DEGREE_0_COEF_0", 3)
    check_asymmetric(
        accessor("POSITION", 3), [long_axis(q[i], scales[i]) for i in range(3)], colours, where="glb"
    )


# --------------------------------------------------------------------------- independent readers (npm)


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz3", "spz4"])
def test_splat_transform_reads_our_files(tmp_path, fmt):
    """splat-transform reports the right count, and its decode (to PLY) agrees with ours within quantisation."""
    if fmt == "spz4" and not zstd_available():
        pytest.skip("zstandard is not installed: SPZ v4 is not written")
    g = random_gaussians(333, 15)
    path = {
        "ply": lambda: write_ply(g, tmp_path / "s.ply"),
        "splat": lambda: write_splat(g, tmp_path / "s.splat"),
        "spz3": lambda: write_spz(g, tmp_path / "s.spz", version=3),
        "spz4": lambda: write_spz(g, tmp_path / "s4.spz", version=4),
    }[fmt]()
    assert splat_transform_count(path) == 333
    run_splat_transform(str(path), str(tmp_path / "decoded.ply"))
    theirs = read_ply(tmp_path / "decoded.ply")
    ours = {"ply": read_ply, "splat": read_splat, "spz3": read_spz, "spz4": read_spz}[fmt](path)
    # splat-transform reads .ply/.splat/.spz all as "PLY space" and writes PLY in that space: no axis change.
    np.testing.assert_allclose(theirs.means, ours.means, atol=1e-6)
    np.testing.assert_allclose(theirs.log_scales, ours.log_scales, atol=1e-5)
    np.testing.assert_allclose(theirs.opacities, ours.opacities, atol=1e-5)
    np.testing.assert_allclose(theirs.sh_dc, ours.sh_dc, atol=1e-5)
    assert rotation_error_deg(theirs.quats_wxyz, ours.quats_wxyz).max() < (1.0 if fmt == "splat" else 1e-3)
    assert theirs.sh_degree == ours.sh_degree
    if ours.sh_degree:
        np.testing.assert_allclose(theirs.sh_rest, ours.sh_rest, atol=1e-5)


def test_ply_reader_names_compressed_plys(tmp_path):
    """A PlayCanvas compressed PLY (chunked, quantised) is refused with a hint, not misread."""
    src = write_ply(random_gaussians(300, 0), tmp_path / "s.ply")
    run_splat_transform(str(src), str(tmp_path / "s.compressed.ply"))
    with pytest.raises(PlyFormatError, match="compressed splat PLY"):
        read_ply(tmp_path / "s.compressed.ply")


@pytest.mark.parametrize("version", [3, 4])
def test_our_spz_bytes_match_the_reference_encoder(tmp_path, version):
    """splat-transform writes SPZ with Niantic's own encoder (WASM build, no axis conversion): same bytes."""
    if version == 4 and not zstd_available():
        pytest.skip("zstandard is not installed: SPZ v4 is not written")
    g = random_gaussians(500, 15, seed=11)
    src = write_ply(g, tmp_path / "s.ply")
    run_splat_transform("--spz-version", str(version), str(src), str(tmp_path / "ref.spz"))
    ours = write_spz(g, tmp_path / "ours.spz", version=version).read_bytes()
    ref = (tmp_path / "ref.spz").read_bytes()
    if version == 3:  # gzip levels differ; the content must not
        ours, ref = gzip.decompress(ours), gzip.decompress(ref)
    assert ours == ref


def test_our_glb_matches_splat_transforms_glb(tmp_path):
    """splat-transform cannot read GLB (3.7.0 inputs: ply, splat, spz, sog, ...) but writes
    KHR_gaussian_splatting; its GLB of our PLY must carry the same splats as ours, up to the 180-degree turn
    about z it applies because it assumes a PLY is y-down."""
    g = random_gaussians(120, 8)
    run_splat_transform(str(write_ply(g, tmp_path / "s.ply")), str(tmp_path / "theirs.glb"))
    theirs = read_khr_glb(tmp_path / "theirs.glb")
    ours = read_khr_glb(write_khr_glb(g, tmp_path / "ours.glb"))
    turn = np.diag([-1.0, -1.0, 1.0])  # 180 degrees about z
    np.testing.assert_allclose(theirs.means, ours.means @ turn.T, atol=1e-5)
    np.testing.assert_allclose(theirs.log_scales, ours.log_scales, atol=1e-5)
    np.testing.assert_allclose(theirs.opacities, ours.opacities, atol=1e-6)
    np.testing.assert_allclose(theirs.sh_dc, ours.sh_dc, atol=1e-6)
    R_ours = quaternion_to_rotation(ours.quats_wxyz.astype(np.float64))
    R_theirs = quaternion_to_rotation(theirs.quats_wxyz.astype(np.float64))
    np.testing.assert_allclose(R_theirs, turn @ R_ours, atol=1e-5)


# --------------------------------------------------------------------------------- cleaning and budget


def look_around_cameras(num_videos: int = 2, num_frames: int = 5, size: int = 32, fov_deg: float = 70.0):
    """Cameras at 1.5 m height near the origin looking out horizontally, each video sweeping 60 degrees."""
    from cvd_scene.cameras import Cameras, intrinsics_from_fov, look_at

    c2w = np.zeros((num_videos, num_frames, 4, 4))
    for v in range(num_videos):
        for f in range(num_frames):
            yaw = 2 * np.pi * v / num_videos + np.radians(60) * f / max(num_frames - 1, 1)
            eye = np.array([0.1 * np.cos(yaw), 1.5, 0.1 * np.sin(yaw)])
            c2w[v, f] = look_at(eye, eye + [np.cos(yaw), 0.0, np.sin(yaw)])
    K = intrinsics_from_fov(fov_deg, size, size)
    return Cameras(world_from_cam=c2w, K=K, width=size, height=size, fps=8.0)


def test_nonfinite_splats_are_removed_and_counted(tmp_path):
    from cvd_scene.export.config import ExportConfig
    from cvd_scene.export.pipeline import export_gaussians

    g = random_gaussians(200, 3)
    g.means[3, 1] = np.nan
    g.opacity_logits[10] = np.inf
    g.sh_rest[20, 2, 1] = -np.inf
    g.log_scales[20, 0] = np.nan  # one splat bad in two fields: counted once
    g.quats_wxyz[30] = 0.0  # degenerate but finite: fixed to the identity, kept
    report = export_gaussians(g, tmp_path, ExportConfig(formats=("ply", "spz")))
    s = report["splats"]
    assert (s["in"], s["nonfinite_removed"], s["out"], s["zero_rotation_fixed"]) == (200, 3, 197, 1)
    assert s["nonfinite_by_field"] == {"means": 1, "log_scales": 1, "opacity_logits": 1, "sh_rest": 1}
    back = read_ply(tmp_path / "scene.ply")
    assert len(back) == 197 and back.finite_mask().all()
    assert len(read_spz(tmp_path / "scene.spz")) == 197


def test_budget_keeps_the_most_important_splats():
    from cvd_scene.export.budget import apply_budget, clean_and_budget

    rng = np.random.default_rng(0)
    n = 1000
    important = rng.choice(n, 100, replace=False)
    g = random_gaussians(n, 0)
    g.log_scales[:] = np.log(0.01)
    g.opacity_logits[:] = -2.0
    g.log_scales[important] = np.log(0.05)  # 25x the area ...
    g.opacity_logits[important] = 3.0  # ... and 8x the opacity
    kept, pruned = apply_budget(g, 100)
    assert pruned == 900
    np.testing.assert_array_equal(kept.means, g.means[np.sort(important)])  # original order kept
    out, report = clean_and_budget(g, max_splats=2000)
    assert len(out) == n and report.pruned_by_budget == 0
    with pytest.raises(ValueError, match="max_splats"):
        apply_budget(g, 0)


def test_budget_with_cameras_prunes_what_no_camera_sees_first():
    from cvd_scene.export.budget import apply_budget

    cams = look_around_cameras(num_videos=1, num_frames=3)  # looking towards +x, sweeping to +z
    g = random_gaussians(4, 0)
    g.means[:] = [[3.0, 1.5, 0.5], [-3.0, 1.5, -0.5], [3.0, 1.5, 1.0], [0.0, 1.5, -3.0]]
    g.log_scales[:] = np.log(0.05)
    g.log_scales[1] = np.log(0.5)  # the biggest splat is behind every camera
    g.opacity_logits[:] = 2.0
    kept, _ = apply_budget(g, 2, cams)
    np.testing.assert_array_equal(kept.means, g.means[[0, 2]])
    kept_no_cams, _ = apply_budget(g, 1)
    np.testing.assert_array_equal(kept_no_cams.means, g.means[[1]])  # without cameras: area x opacity


def test_importance_matches_a_per_camera_reference():
    """The vectorised projected-area importance against a plain loop over splats and cameras."""
    from cvd_scene.export.budget import importance

    cams = look_around_cameras(num_videos=2, num_frames=3, size=40)
    g = random_gaussians(60, 0, seed=2)
    fast = importance(g, cams)
    ref = np.zeros(len(g))
    c2w_all, K_all = cams.world_from_cam.reshape(-1, 4, 4), cams.K.reshape(-1, 3, 3)
    for i in range(len(g)):
        s = sorted(np.exp(g.log_scales[i].astype(np.float64)))
        area = np.pi * s[1] * s[2]
        opacity = 1 / (1 + np.exp(-float(g.opacity_logits[i])))
        total = 0.0
        for c2w, K in zip(c2w_all, K_all):
            p = np.linalg.inv(c2w) @ np.append(g.means[i].astype(np.float64), 1.0)
            if p[2] <= 1e-3:
                continue
            u, v = K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2]
            if 0 <= u < cams.width and 0 <= v < cams.height:
                total += min(area * K[0, 0] * K[1, 1] / p[2] ** 2, cams.width * cams.height)
        ref[i] = opacity * total / len(c2w_all)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-12)
    assert np.count_nonzero(ref) > 5


# --------------------------------------------------------------------------------------- camera path


def test_camera_path_loads_with_nerfstudios_own_loader():
    from nerfstudio.cameras.camera_paths import get_path_from_json

    from cvd_scene.cameras import opencv_to_opengl
    from cvd_scene.export.camera_path import camera_path_json

    cams = look_around_cameras(num_videos=2, num_frames=5, size=48)
    doc = json.loads(json.dumps(camera_path_json(cams, fps=24.0, transition_s=0.5)))  # as read from disk
    path = get_path_from_json(doc)  # what `ns-render camera-path` calls (after reading "seconds" and "crop")
    assert doc["crop"] is None  # ns-render's get_crop_from_json: no crop box
    n = len(doc["camera_path"])
    # each video lasts 4 frames at 8 fps = 0.5 s -> 13 samples at 24 fps; one 0.5 s transition = 12 frames
    assert n == 13 + 12 + 13 and doc["seconds"] == pytest.approx(n / 24.0)
    assert path.camera_to_worlds.shape == (n, 3, 4)
    np.testing.assert_allclose(
        path.camera_to_worlds[0].numpy(), opencv_to_opengl(cams.world_from_cam[0, 0])[:3], atol=1e-6
    )
    np.testing.assert_allclose(
        path.camera_to_worlds[12].numpy(), opencv_to_opengl(cams.world_from_cam[0, -1])[:3], atol=1e-6
    )
    np.testing.assert_allclose(
        path.camera_to_worlds[-1].numpy(), opencv_to_opengl(cams.world_from_cam[1, -1])[:3], atol=1e-6
    )
    np.testing.assert_allclose(path.fy.numpy(), cams.K[0, 0, 1, 1], rtol=1e-6)  # fov round trip
    assert int(path.height[0]) == 48 and int(path.width[0]) == 48
    # the viewer's "load path" reads these keys of every keyframe
    assert len(doc["keyframes"]) == 10
    assert all({"matrix", "fov", "aspect"} <= set(k) for k in doc["keyframes"])
    assert {
        "default_fov",
        "default_transition_sec",
        "render_height",
        "render_width",
        "fps",
        "seconds",
    } <= set(doc)


def test_camera_path_in_a_nerfstudio_model_frame():
    from nerfstudio.cameras.camera_paths import get_path_from_json

    from cvd_scene.cameras import axis_angle_to_rotation, opencv_to_opengl
    from cvd_scene.export.camera_path import camera_path_json, nerfstudio_from_world

    cams = look_around_cameras(num_videos=1, num_frames=3)
    T = np.eye(4)[:3]
    T[:, :3] = axis_angle_to_rotation(np.array([1.0, 0.0, 0.0]), -np.pi / 2)  # y-up world -> z-up model
    T[:, 3] = [0.1, -0.2, 0.3]
    M = nerfstudio_from_world(T, scale=0.25)
    path = get_path_from_json(
        json.loads(json.dumps(camera_path_json(cams, ns_from_world=M, frame_name="ns")))
    )
    c2w = opencv_to_opengl(cams.world_from_cam[0, 0])
    want_R = T[:, :3] @ c2w[:3, :3]
    want_t = 0.25 * (
        T[:, :3] @ c2w[:3, 3] + T[:, 3]
    )  # nerfstudio's dataparser: transform, then scale positions
    np.testing.assert_allclose(path.camera_to_worlds[0, :, :3].numpy(), want_R, atol=1e-6)
    np.testing.assert_allclose(path.camera_to_worlds[0, :, 3].numpy(), want_t, atol=1e-6)


def test_viewer_settings_make_a_web_page_with_splat_transform(tmp_path):
    """splat-transform validates the SuperSplat settings and writes a self-contained viewer page playing them."""
    from cvd_scene.camera_io import write_json
    from cvd_scene.export.camera_path import supersplat_viewer_settings

    splat_transform()
    settings = supersplat_viewer_settings(look_around_cameras(num_videos=2, num_frames=4), fps=10.0)
    track = settings["animTracks"][0]
    assert len(track["keyframes"]["times"]) * 3 == len(track["keyframes"]["values"]["position"])
    write_json(tmp_path / "viewer_settings.json", settings)
    src = write_ply(readers_from_run(random_gaussians(30, 0)), tmp_path / "scene.ply", frame="readers")
    html = tmp_path / "scene.html"
    args = [
        "-g",
        "cpu",
        str(src),
        "--viewer-settings",
        str(tmp_path / "viewer_settings.json"),
    ]
    run_splat_transform(*args, str(html))
    assert "planned flythrough" in html.read_text(errors="replace")
    settings["tonemapping"] = "sepia"  # the same call refuses invalid settings: the check above is real
    write_json(tmp_path / "viewer_settings.json", settings)
    out = subprocess.run(
        [str(splat_transform()), "-q", *args, str(tmp_path / "bad.html")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "tonemapping" in out.stdout + out.stderr


# ----------------------------------------------------------------------------------- mesh and points


ROOM_LO, ROOM_HI = np.array([-2.0, 0.0, -2.0]), np.array([2.0, 2.5, 2.0])


def room_views(size: int = 32):
    """Exact depth and colour of the inside of a box room (floor at y = 0) seen from look-around cameras;
    walls coloured by their axis (x red, y green, z blue)."""
    from cvd_scene.export.mesh import View, ring_cameras

    cams = ring_cameras(ROOM_LO + 0.5, ROOM_HI - 0.5, size_px=size, n_yaw=6, pitches_deg=(-35.0, 0.0, 35.0))
    views = []
    for c2w, K in zip(cams.world_from_cam.reshape(-1, 4, 4), cams.K.reshape(-1, 3, 3)):
        vs, us = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
        ray_cam = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], -1)
        ray = ray_cam @ c2w[:3, :3].T  # [H, W, 3], z-depth 1 along the optical axis
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(ray > 0, (ROOM_HI - c2w[:3, 3]) / ray, (ROOM_LO - c2w[:3, 3]) / ray)
        t = np.where(np.isfinite(t), t, np.inf)
        colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]], np.uint8)
        views.append(
            View(rgb=colours[np.argmin(t, -1)], depth_m=t.min(-1).astype(np.float32), K=K, world_from_cam=c2w)
        )
    return views


def distance_to_room(points: np.ndarray) -> np.ndarray:
    return np.minimum(np.abs(points - ROOM_LO), np.abs(points - ROOM_HI)).min(axis=1)


def test_tsdf_mesh_of_a_room_lies_on_its_walls_and_passes_the_validator(tmp_path):
    import trimesh

    from cvd_scene.export.mesh import fuse_tsdf, write_mesh_glb

    mesh = fuse_tsdf(room_views(), voxel_m=0.1, max_triangles=3000)
    assert 1000 < mesh.info["triangles"] <= 3000 and mesh.info["triangles_fused"] > 3000
    d = distance_to_room(mesh.vertices.astype(np.float64))
    assert np.median(d) < 0.01 and np.percentile(d, 90) < 0.05
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    np.testing.assert_allclose(lo, ROOM_LO, atol=0.2)  # Y-up, floor at y = 0: no axis change
    np.testing.assert_allclose(hi, ROOM_HI, atol=0.2)
    floor = mesh.vertices[:, 1] < 0.05
    assert np.mean(mesh.colors[floor, 1]) > 150  # the floor (a y face) is green
    path = write_mesh_glb(mesh, tmp_path / "mesh.glb")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == mesh.info["triangles"]
    report = gltf_validate(path)
    assert report["issues"]["numErrors"] == 0, json.dumps(report["issues"]["messages"][:5], indent=1)
    assert report["info"]["totalTriangleCount"] == mesh.info["triangles"]


def test_mesh_from_splats_rendered_with_the_fit_rasteriser():
    from cvd_scene.cameras import rotation_to_quaternion
    from cvd_scene.export.mesh import fuse_tsdf, render_views_from_gaussians, ring_cameras, splat_bounds

    rng = np.random.default_rng(0)
    means, quats, cols, per_face = [], [], [], 1500
    for axis in range(3):
        for side in (ROOM_LO, ROOM_HI):
            p = rng.uniform(ROOM_LO, ROOM_HI, size=(per_face, 3))
            p[:, axis] = side[axis]
            R = np.eye(3)[:, [(axis + 1) % 3, (axis + 2) % 3, axis]]  # thin local z along the wall normal
            R[:, 0] *= np.sign(np.linalg.det(R))
            means.append(p)
            quats.append(np.tile(rotation_to_quaternion(R), (per_face, 1)))
            c = np.full((per_face, 3), 0.1)
            c[:, axis] = 0.9
            cols.append(c)
    n = 6 * per_face
    g = Gaussians(
        means=np.concatenate(means),
        log_scales=np.log(np.tile([0.05, 0.05, 0.003], (n, 1))),
        quats_wxyz=np.concatenate(quats),
        opacity_logits=np.full(n, 4.0),
        sh_dc=(np.concatenate(cols) - 0.5) / SH_C0,
        sh_rest=np.zeros((n, 0, 3)),
    )
    lo, hi = splat_bounds(g)
    views = render_views_from_gaussians(
        g, ring_cameras(lo, hi, size_px=40, n_yaw=6, pitches_deg=(-30.0, 30.0))
    )
    assert np.mean([np.mean(v.depth_m > 0) for v in views]) > 0.95
    mesh = fuse_tsdf(views, voxel_m=0.1, max_triangles=3000)
    assert np.median(distance_to_room(mesh.vertices.astype(np.float64))) < 0.06


def test_nerf_fit_exports_mesh_and_coloured_points(tmp_path):
    from plyfile import PlyData

    from cvd_scene.export.config import ExportConfig
    from cvd_scene.export.pipeline import export_views

    views = room_views()
    report = export_views(
        views, tmp_path, ExportConfig(mesh_voxel_m=0.1, mesh_max_triangles=2000, point_cloud_max_points=5000)
    )
    assert set(report["files"]) == {"mesh", "collider", "points"}
    assert set(report["skipped"]) == {"ply", "splat", "spz", "glb", "sog", "cply", "viewer"}
    v = PlyData.read(str(tmp_path / "points.ply"))["vertex"].data
    assert 1000 < len(v) <= 5000 and report["files"]["points"]["points"] == len(v)
    pts = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    assert distance_to_room(pts).max() < 1e-3
    green = np.abs(pts[:, 1] - ROOM_LO[1]) < 1e-3  # floor points
    assert green.any() and np.all(v["green"][green] == 220)


# ------------------------------------------------------------------------------------- stage and command


def make_run(tmp_path: Path, with_views: bool = True) -> Path:
    """A run folder with the files the export stage reads: plan, registration, fit (splats and views)."""
    import imageio.v3 as iio

    from cvd_scene.camera_io import write_cameras_json, write_transforms_json
    from cvd_scene.cameras import Cameras

    run = tmp_path / "run"
    views = room_views(size=24)
    c2w = np.stack([v.world_from_cam for v in views]).reshape(2, -1, 4, 4)
    K = np.stack([v.K for v in views]).reshape(2, -1, 3, 3)
    cams = Cameras(world_from_cam=c2w, K=K, width=24, height=24)
    write_cameras_json(cams, run / "plan" / "cameras.json")
    write_transforms_json(cams, run / "register" / "transforms.json", "../generate/frames")
    g = random_gaussians(500, 3)
    g.means[:] = np.random.default_rng(1).uniform(ROOM_LO, ROOM_HI, size=(500, 3))
    g.means[7] = np.nan
    write_ply(g, run / "fit" / "gaussians.ply")
    if with_views:
        for i, view in enumerate(views):
            vid, f = cams.video_ids[i // cams.num_frames], i % cams.num_frames
            (run / "fit" / "views" / "rgb" / vid).mkdir(parents=True, exist_ok=True)
            (run / "fit" / "views" / "depth" / vid).mkdir(parents=True, exist_ok=True)
            iio.imwrite(run / "fit" / "views" / "rgb" / vid / f"{f:04d}.png", view.rgb)
            np.save(run / "fit" / "views" / "depth" / vid / f"{f:04d}.npy", view.depth_m)
    return run


def test_export_stage_writes_every_asset_and_the_report(tmp_path):
    from cvd_scene.export.run import run_export
    from cvd_scene.runconfig import RunConfig

    run = make_run(tmp_path)
    config = RunConfig()
    config.export.formats = ["ply", "splat", "spz", "glb", "mesh"]  # sog and cply: test_export_frames.py
    config.export.max_splats = 300
    config.export.mesh_voxel_m = 0.1
    config.export.mesh_max_triangles = 2000
    out = tmp_path / "out"
    out.mkdir()
    result = run_export(config, run, out)
    assert result.status == "finished"
    names = {p.name for p in out.iterdir()}
    want = {
        "scene.ply",
        "scene.splat",
        "scene.spz",
        "scene_khr.glb",
        "mesh.glb",
        "camera_path.json",
        "report.json",
    }
    assert want <= names and ("scene_v4.spz" in names) == zstd_available()
    report = json.loads((out / "report.json").read_text())
    assert report["splats"]["in"] == 500 and report["splats"]["nonfinite_removed"] == 1
    assert report["splats"]["pruned_by_budget"] == 199 and report["splats"]["out"] == 300
    assert report["files"]["ply"]["bytes"] == (out / "scene.ply").stat().st_size
    assert report["files"]["spz"]["ratio_to_ply"] < 0.5
    assert report["mesh"]["source"].startswith("fit views") and report["mesh"]["triangles"] <= 2000
    assert report["camera_path"]["frame"] == "world"
    assert len(read_ply(out / "scene.ply")) == 300
    assert report["files"]["ply"]["frame"] == "readers" and report["files"]["glb"]["frame"] == "run"
    world = run_from_readers(read_ply(out / "scene.ply"))  # the bounding box is in the run's world
    np.testing.assert_allclose(report["bounding_box"]["min"], world.means.min(axis=0))
    assert result.summary["splats_out"] == 300


def test_export_stage_refuses_without_a_fit(tmp_path):
    from cvd_scene.export.run import run_export
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import StageRefused

    run = make_run(tmp_path, with_views=False)
    (run / "fit" / "gaussians.ply").unlink()
    with pytest.raises(StageRefused, match="gaussians.ply"):
        run_export(RunConfig(), run, tmp_path / "out")


def cli(*args: str) -> int:
    import importlib

    from cvd_scene.cli import main

    importlib.import_module("cvd_scene.commands.export")
    return main(list(args))


def test_export_from_file_converts_and_refuses_to_overwrite(tmp_path, capsys):
    src = write_ply(random_gaussians(50, 0), tmp_path / "in.ply")
    out = tmp_path / "out"
    assert cli("export", "--from", str(src), "--out", str(out), "--formats", "ply,splat,glb", "--quiet") == 0
    assert {p.name for p in out.iterdir()} == {"scene.ply", "scene.splat", "scene_khr.glb", "report.json"}
    before = (out / "scene.ply").read_bytes()
    write_ply(random_gaussians(60, 0, seed=9), src)
    assert cli("export", "--from", str(src), "--out", str(out), "--formats", "ply", "--quiet") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "scene.ply").read_bytes() == before  # untouched
    assert (
        cli("export", "--from", str(src), "--out", str(out), "--formats", "ply", "--overwrite", "--quiet")
        == 0
    )
    assert len(read_ply(out / "scene.ply")) == 60
    assert (
        cli("export", "--from", str(tmp_path / "missing.ply"), "--out", str(tmp_path / "o2"), "--quiet") == 2
    )
    assert (
        cli("export", "--from", str(src), "--out", str(tmp_path / "o3"), "--formats", "ply,obj", "--quiet")
        == 2
    )
    assert "obj" in capsys.readouterr().err
