"""The two frames export files are written in, and the one turn between them.

``run``: the run's world (right-handed, +y up, metres), the frame of :class:`~cvd_scene.gaussians.Gaussians`
everywhere else in cvd-scene, and the frame glTF defines (``scene_khr.glb``, ``mesh.glb``).

``readers``: the frame the 3DGS readers assume for PLY, ``.splat`` and SPZ (measured; docs/formats.md, "Axes"):
the run's world turned 180 degrees about z, so +y points down as in COLMAP and the Inria PLY. The turn maps

- positions (x, y, z) -> (-x, -y, z);
- rotations R -> Rz(180) R, i.e. quaternions q -> (0, 0, 0, 1) * q;
- view-dependent colour f(d) -> f(Rz(180)^-1 d): in the real SH basis of 3DGS every coefficient k = 1..15 of a
  channel is multiplied by (-1)^k (degree 1: - + -, degree 2: + - + - +, degree 3: - + - + - + -), because each
  basis function of order m is even or odd in (x, y) together.

Positions and SH are exact (sign changes only); :func:`readers_from_run` and :func:`run_from_readers` are exact
inverses of each other also on the stored quaternion (not only its rotation), so a PLY read and written again in
the same frame keeps its bytes.

Pure numpy; must not import torch.
"""

from __future__ import annotations

import numpy as np

from cvd_scene.gaussians import Gaussians

RUN = "run"
READERS = "readers"
FRAMES = {
    RUN: "run world: right-handed, +y up, metres",
    READERS: "3DGS readers' frame: the run world turned 180 degrees about z (x, y -> -x, -y), +y down, metres",
}
"""Frame names (``--frame``, ``export/report.json``) and what each means."""

TURN_Z180 = np.diag([-1.0, -1.0, 1.0])
"""Rotation matrix of the turn (its own inverse)."""

SH_REST_SIGNS = np.array([(-1.0) ** k for k in range(1, 16)], np.float32)
"""[15] sign of SH coefficient k = 1..15 (3DGS order after the DC term) under the turn."""


def check_frame(frame: str, what: str = "frame") -> str:
    """``frame`` if it is a known frame name, else ``ValueError`` naming it."""
    if frame not in FRAMES:
        raise ValueError(f"{what} must be one of {', '.join(FRAMES)}, got {frame!r}")
    return frame


def _turned(g: Gaussians, quats_wxyz: np.ndarray) -> Gaussians:
    k = g.sh_rest.shape[1]
    return Gaussians(
        means=g.means * TURN_Z180.diagonal().astype(np.float32),  # [N, 3]
        log_scales=g.log_scales.copy(),
        quats_wxyz=quats_wxyz,  # [N, 4]
        opacity_logits=g.opacity_logits.copy(),
        sh_dc=g.sh_dc.copy(),
        sh_rest=g.sh_rest * SH_REST_SIGNS[:k, None],  # [N, K, 3]: sign by coefficient, same for every channel
    )


def readers_from_run(gaussians: Gaussians) -> Gaussians:
    """``gaussians`` in the run's world turned into the readers' frame (see the module docstring)."""
    w, x, y, z = gaussians.quats_wxyz.T  # each [N]
    return _turned(gaussians, np.stack([-z, -y, x, w], axis=1))  # (0, 0, 0, 1) * (w, x, y, z)


def run_from_readers(gaussians: Gaussians) -> Gaussians:
    """``gaussians`` in the readers' frame turned back into the run's world (exact inverse of
    :func:`readers_from_run`)."""
    w, x, y, z = gaussians.quats_wxyz.T  # each [N]
    return _turned(gaussians, np.stack([z, y, -x, -w], axis=1))  # (0, 0, 0, -1) * (w, x, y, z)


def convert(gaussians: Gaussians, src: str, dst: str) -> Gaussians:
    """``gaussians`` from frame ``src`` into frame ``dst`` (the same object when the frames agree)."""
    check_frame(src, "source frame")
    check_frame(dst, "target frame")
    if src == dst:
        return gaussians
    return readers_from_run(gaussians) if dst == READERS else run_from_readers(gaussians)
