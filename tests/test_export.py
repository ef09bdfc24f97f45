"""Export formats: round trips within each format's quantisation, axis conventions, independent readers."""

from __future__ import annotations

import numpy as np
import pytest

from cvd_scene.export.ply import PlyFormatError, read_ply, write_ply
from cvd_scene.gaussians import Gaussians

FIELDS = ("means", "log_scales", "quats_wxyz", "opacity_logits", "sh_dc", "sh_rest")


def random_gaussians(n: int, sh_coeffs: int = 15, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        means=rng.uniform(-3, 3, size=(n, 3)),
        log_scales=rng.uniform(-5, -1, size=(n, 3)),
        quats_wxyz=rng.normal(size=(n, 4)),
        opacity_logits=rng.normal(0, 2, size=n),
        sh_dc=rng.normal(0, 1, size=(n, 3)),
        sh_rest=rng.normal(0, 0.3, size=(n, sh_coeffs, 3)),
    )


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
            np.testing.assert_allclose(getattr(back, name), getattr(g, name), rtol=1e-6, atol=1e-6, err_msg=name)


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
