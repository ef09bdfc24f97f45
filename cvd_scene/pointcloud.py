"""Coloured point clouds as PLY files (the registration's sparse points, the export's fused points).

numpy only; must not import torch or any stage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cvd_scene.jsonio import write_bytes_atomic


def write_points_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray) -> Path:
    """Binary little-endian PLY of points [P, 3] (float32 ``x y z``) with colours [P, 3] (uint8 ``red green
    blue``), the layout every point viewer and nerfstudio's dataparsers read; written atomically."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    if len(xyz) != len(rgb):
        raise ValueError(f"{path}: {len(xyz)} points but {len(rgb)} colours")
    rec = np.zeros(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["red"], rec["green"], rec["blue"] = rgb.T
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", "comment written by cvd-scene (coloured point cloud)",
         f"element vertex {len(xyz)}", "property float x", "property float y", "property float z",
         "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    )  # fmt: skip
    return write_bytes_atomic(path, (header + "\n").encode("ascii") + rec.tobytes())
