"""Small numeric helpers shared by the export formats (activations, quaternions, atomic writes).

Pure numpy; must not import torch.
"""

from __future__ import annotations

import numpy as np

from cvd_scene.jsonio import write_bytes_atomic  # noqa: F401  (the export modules write through it)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, computed in float64 and returned as float32."""
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Inverse of :func:`sigmoid` with ``p`` clipped to ``[eps, 1 - eps]`` so 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def normalized_quats(quats: np.ndarray) -> np.ndarray:
    """[N, 4] unit quaternions, w first; a zero quaternion becomes the identity (1, 0, 0, 0)."""
    q = np.asarray(quats, np.float64)  # [N, 4]
    norm = np.linalg.norm(q, axis=1, keepdims=True)  # [N, 1]
    out = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), 0.0)
    out[norm[:, 0] == 0, 0] = 1.0
    return out.astype(np.float32)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (C's ``round``, as the reference encoders use)."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)
