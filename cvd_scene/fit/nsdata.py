"""The ``cvd-scene`` method's datamanager: nerfstudio's full-image datamanager that starts the splat from the
dataset's points whatever the dataparser.

``ns-train cvd-scene --data DIR nerfstudio-data`` gets nerfstudio's ``NerfstudioDataParserConfig``, whose
``load_3D_points`` is off by default, so nerfstudio's pipeline would hand the model no points and splatfacto would
start from 50,000 random Gaussians. :class:`CvdDatamanagerConfig` turns ``load_3D_points`` on (its own
``load_3D_points`` field, ``--pipeline.datamanager.load-3D-points False`` to leave the dataparser as set):

* ``transforms.json`` naming a ``ply_file_path``: nerfstudio loads it;
* no ``ply_file_path`` but a COLMAP model in ``colmap/sparse/0`` (``points3D.bin`` or ``.txt``): read here, in
  memory, with nerfstudio's own reader and the same transforms nerfstudio would apply (nerfstudio itself would ask
  on the terminal whether to write a ``sparse_pc.ply`` into the dataset and rewrite its ``transforms.json``);
* neither: no points, and the model starts from a capped random initialisation inside the cameras' bounds
  (:class:`cvd_scene.fit.splat_model.CvdSplatModelConfig` ``num_random``, ``random_init_max_gaussians``).

The cameras' centres (training split, dataparser frame) go to the model in the dataset metadata as
``cvd_camera_centres``. A run folder (``cvd-scene-data``) is read as before: its dataparser has its own points.

Imports nerfstudio (the fit subpackage is the only place that may).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
)
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

NSDATA_TRANSFORMS = "transforms.json"
"""The cameras file of a nerfstudio-data folder (``--data`` may also name the file itself)."""
NSDATA_COLMAP_MODEL = "colmap/sparse/0"
"""Where nerfstudio-data looks for a COLMAP model next to ``transforms.json`` (a dataset's layout, not a run
folder's)."""
CAMERA_CENTRES_KEY = "cvd_camera_centres"
"""Dataset metadata key of the training cameras' centres [C, 3] (dataparser frame) handed to the model."""


def _colmap_model_without_ply(parser: NerfstudioDataParserConfig) -> Path | None:
    """The ``colmap/sparse/0`` folder nerfstudio-data would ask about (points wanted, no ``ply_file_path``), else
    None."""
    data = Path(parser.data)
    meta_path = data if data.suffix == ".json" else data / NSDATA_TRANSFORMS
    colmap = data / NSDATA_COLMAP_MODEL
    if not meta_path.is_file() or not colmap.is_dir():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None  # nerfstudio's own parse names the file
    return None if "ply_file_path" in meta else colmap


def colmap_points(colmap: Path, outputs: DataparserOutputs) -> dict[str, torch.Tensor]:
    """``points3D`` of a COLMAP model in the dataparser frame of ``outputs``: ``points3D_xyz`` [P, 3] float32 and
    ``points3D_rgb`` [P, 3] uint8, as nerfstudio-data yields them from the ``sparse_pc.ply`` it would write (the
    applied transform, then the dataparser transform and scale: ``outputs.dataparser_transform`` and
    ``dataparser_scale`` hold both)."""
    from nerfstudio.data.utils.colmap_parsing_utils import read_points3D_binary, read_points3D_text

    if (colmap / "points3D.bin").is_file():
        points = read_points3D_binary(colmap / "points3D.bin")
    elif (colmap / "points3D.txt").is_file():
        points = read_points3D_text(colmap / "points3D.txt")
    else:
        raise ValueError(f"{colmap}: no points3D.bin or points3D.txt in the COLMAP model")
    if not points:
        return {}
    xyz = torch.from_numpy(np.array([p.xyz for p in points.values()], dtype=np.float32))  # [P, 3]
    rgb = torch.from_numpy(np.array([p.rgb for p in points.values()], dtype=np.uint8))  # [P, 3]
    T = outputs.dataparser_transform.float()  # [3, 4]
    xyz = (xyz @ T[:3, :3].T + T[:3, 3]) * float(outputs.dataparser_scale)
    return {"points3D_xyz": xyz, "points3D_rgb": rgb}


@dataclass
class CvdDatamanagerConfig(FullImageDatamanagerConfig):
    """nerfstudio's full-image datamanager config that loads the dataset's points (see the module docstring)."""

    _target: type = field(default_factory=lambda: CvdDatamanager)
    load_3D_points: bool = True
    """Start from the dataset's points: turn on the dataparser's ``load_3D_points`` and read a COLMAP model's
    ``points3D`` when ``transforms.json`` names no PLY (False: the dataparser's own setting)."""


class CvdDatamanager(FullImageDatamanager[InputDataset]):
    """:class:`FullImageDatamanager` loading the dataset's points and handing the cameras' centres to the model."""

    config: CvdDatamanagerConfig

    def __init__(self, config: CvdDatamanagerConfig, *args, **kwargs):
        parser = config.dataparser
        if config.data is not None:
            parser.data = Path(config.data)
        colmap = None
        # A config.yml written before this class existed holds nerfstudio's own datamanager config: no field, the
        # dataparser's setting as it was.
        if getattr(config, "load_3D_points", False) and hasattr(parser, "load_3D_points"):
            parser.load_3D_points = True
            if isinstance(parser, NerfstudioDataParserConfig):
                colmap = _colmap_model_without_ply(parser)
                if colmap is not None:
                    parser.load_3D_points = False  # nerfstudio would prompt and write into the dataset
        super().__init__(config, *args, **kwargs)
        if colmap is not None:
            self.train_dataparser_outputs.metadata.update(colmap_points(colmap, self.train_dataparser_outputs))
        centres = self.train_dataparser_outputs.cameras.camera_to_worlds[:, :3, 3].float()  # [C, 3]
        self.train_dataset.metadata[CAMERA_CENTRES_KEY] = centres
