"""``ns-train cvd-scene --data DIR nerfstudio-data``: the splat starts from the dataset's points (a PLY named by
``transforms.json``, or a COLMAP model read in memory), and from a capped random start inside the cameras' bounds
without them. Real data (``tests/data/buddha_gray``: 23 photographs with a ``transforms.json`` and a COLMAP text
model of 1120 points), the config parsed by tyro as ``ns-train`` parses it and nerfstudio's own pipeline setup."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

BUDDHA = Path(__file__).parent / "data" / "buddha_gray"
IDENTITY_3x4 = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]


def buddha_points() -> tuple[np.ndarray, np.ndarray]:
    """The COLMAP model's points [P, 3] (the transforms' world) and colours [P, 3] uint8."""
    rows = [line.split() for line in (BUDDHA / "colmap/sparse/0/points3D.txt").read_text().splitlines()]
    rows = [r for r in rows if r and not r[0].startswith("#")]
    return np.array([r[1:4] for r in rows], dtype=np.float64), np.array([r[4:7] for r in rows], dtype=np.uint8)


def nsdata_folder(root: Path, points: str) -> Path:
    """A nerfstudio-data folder of the Buddha photographs; ``points``: ``ply`` (``ply_file_path``), ``colmap`` (the
    COLMAP model only) or ``none``."""
    from tests.fit_helpers import write_points_ply

    folder = root / points
    shutil.copytree(BUDDHA / "images", folder / "images")
    meta = json.loads((BUDDHA / "transforms.json").read_text())
    meta["applied_transform"] = IDENTITY_3x4  # the COLMAP model is in the transforms' own world
    if points == "ply":
        write_points_ply(folder / "sparse_pc.ply", *buddha_points())
        meta["ply_file_path"] = "sparse_pc.ply"
    elif points == "colmap":
        shutil.copytree(BUDDHA / "colmap", folder / "colmap")
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def ns_train_pipeline(folder: Path, *extra: str):
    """nerfstudio's pipeline as ``ns-train cvd-scene --data FOLDER [EXTRA] nerfstudio-data`` sets it up (CPU)."""
    import tyro
    from cvd_scene_plugins.methods import cvd_scene_method

    spec = cvd_scene_method.config  # bool options take a value, as nerfstudio's union of methods parses them
    args = ["--data", str(folder), *extra, "nerfstudio-data"]
    config = tyro.cli(tyro.conf.FlagConversionOff[type(spec)], default=spec, args=args)
    config.pipeline.datamanager.data = config.data
    return config.pipeline.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nsdata")
    return {k: nsdata_folder(root, k) for k in ("ply", "colmap", "none")}


@pytest.fixture(scope="module")
def started(folders) -> dict:
    """The model's starting means [N, 3], its Gaussian cap and the dataparser outputs, per dataset."""
    out = {}
    for k, folder in folders.items():
        pipeline = ns_train_pipeline(folder)
        model = pipeline.model
        out[k] = (model.means.detach().clone(), model.strategy.max_gaussians, pipeline.datamanager.train_dataparser_outputs)
    return out


def test_the_dataset_s_ply_seeds_the_splat(started):
    means, cap, outputs = started["ply"]
    xyz, _ = buddha_points()
    T = outputs.dataparser_transform.double().numpy()  # [3, 4]
    expected = (xyz @ T[:3, :3].T + T[:3, 3]) * outputs.dataparser_scale
    assert means.shape == (len(xyz), 3) == (1120, 3)
    np.testing.assert_allclose(means.double().numpy(), expected, atol=1e-4)
    assert cap == 0  # the method's default: no cap on a dataset with points


def test_a_colmap_model_seeds_the_splat_without_asking_or_writing(folders, started):
    means, _, _ = started["colmap"]
    assert means.shape == (1120, 3)
    torch.testing.assert_close(means, started["ply"][0], atol=1e-4, rtol=0)  # the same points, read from COLMAP
    assert not (folders["colmap"] / "sparse_pc.ply").exists()  # nerfstudio would write one into the dataset
    assert "ply_file_path" not in json.loads((folders["colmap"] / "transforms.json").read_text())


def test_without_points_a_capped_random_start_inside_the_cameras(started):
    from cvd_scene.fit.splat_model import CvdSplatModelConfig

    means, cap, outputs = started["none"]
    defaults = CvdSplatModelConfig()
    assert len(means) == defaults.num_random == 3000
    assert cap == defaults.random_init_max_gaussians == 60000
    centres = outputs.cameras.camera_to_worlds[:, :3, 3]
    lo, hi = centres.min(0).values, centres.max(0).values
    half = ((hi - lo) / 2).clamp_min(float((hi - lo).max()) / 4)
    mid = (lo + hi) / 2
    assert bool(((means >= mid - half - 1e-5) & (means <= mid + half + 1e-5)).all())
    assert float((means.max(0).values - means.min(0).values).min()) > float((hi - lo).max()) / 2 * 0.9  # a volume


def test_loading_points_can_be_turned_off_and_a_random_start_is_logged_once(folders, caplog):
    with caplog.at_level(logging.WARNING, logger="cvd_scene.fit.splat_model"):
        pipeline = ns_train_pipeline(folders["ply"], "--pipeline.datamanager.load-3D-points", "False")
    assert len(pipeline.model.means) == 3000
    said = [r.getMessage() for r in caplog.records if "random Gaussians" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("no points in the dataset: starting from 3000"), said
