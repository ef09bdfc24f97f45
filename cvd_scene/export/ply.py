"""The master export: the 3DGS PLY (Inria layout) read and written without loss.

Layout written (what SuperSplat, PlayCanvas, nerfstudio's viewer, gsplat and the Inria viewers read):
binary little-endian, one ``element vertex N`` with float32 properties in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3K-1} opacity scale_0 scale_1 scale_2 rot_0 .. rot_3

``f_rest`` is channel-major on disk (all K red coefficients, then green, then blue); in memory
:class:`~cvd_scene.gaussians.Gaussians` keeps ``sh_rest`` channel-last ``[N, K, 3]``. Opacity is a logit, scales
are log standard deviations, rotations are w-first quaternions as fitted (not normalised). Positions are written
in whatever frame the Gaussians are in: the writer never turns anything. ``fit/gaussians.ply`` holds the run's Y-up
world; ``export/scene.ply`` the readers' frame (turned by the export step, :mod:`cvd_scene.export.axes`). A
``frame`` given to :func:`write_ply` is recorded as a header comment (``comment cvd-scene frame: readers ...``)
that :func:`ply_frame` reads back.

The reader accepts any such PLY (nerfstudio, gsplat, Inria, SuperSplat uncompressed): ASCII or binary of either
byte order, any property type, extra properties (ignored), normals present or not, SH degree 0-3. Anything else
(a mesh or point-cloud PLY, a compressed splat PLY) is refused with :class:`PlyFormatError` naming what is missing.

Pure numpy and plyfile; must not import torch.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from cvd_scene.gaussians import Gaussians

log = logging.getLogger(__name__)

REQUIRED_PROPERTIES: tuple[str, ...] = (
    "x", "y", "z",
    "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity",
    "scale_0", "scale_1", "scale_2",
    "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip
"""Vertex properties every 3DGS PLY has (``f_rest_*`` and normals are optional)."""

_F_REST = re.compile(r"^f_rest_(\d+)$")
_FRAME_COMMENT = re.compile(r"^cvd-scene frame: (\w+)")


class PlyFormatError(ValueError):
    """A file that is not a readable 3DGS PLY; the message names the file and what is wrong."""


def ply_property_names(sh_coeffs_per_channel: int) -> list[str]:
    """The Inria property order for K = ``sh_coeffs_per_channel`` higher-order SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * sh_coeffs_per_channel)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def gaussians_to_ply_table(gaussians: Gaussians) -> np.ndarray:
    """[N, P] float32 property table in the Inria order of :func:`ply_property_names`."""
    n, k = len(gaussians), gaussians.sh_rest.shape[1]
    rest = gaussians.sh_rest.transpose(0, 2, 1).reshape(n, 3 * k)  # [N, 3, K] -> [N, 3K] channel-major
    table = np.concatenate(
        [
            gaussians.means,  # [N, 3]
            np.zeros((n, 3), np.float32),  # [N, 3] normals (unused by every splat viewer)
            gaussians.sh_dc,  # [N, 3]
            rest,  # [N, 3K]
            gaussians.opacity_logits[:, None],  # [N, 1]
            gaussians.log_scales,  # [N, 3]
            gaussians.quats_wxyz,  # [N, 4]
        ],
        axis=1,
    )  # [N, 17 + 3K]
    return np.ascontiguousarray(table, dtype="<f4")


def write_ply(gaussians: Gaussians, path: str | os.PathLike, frame: str | None = None) -> Path:
    """Write ``gaussians`` as a binary little-endian Inria 3DGS PLY at ``path``; returns the path.

    Positions are written as given, in the frame the caller names in ``frame`` (``run`` or ``readers``, see
    :mod:`cvd_scene.export.axes`; recorded as a header comment, no comment when None). Non-finite values are
    written as they are: callers that want them removed do so first (the export stage does, and counts them).
    """
    from cvd_scene.export.axes import FRAMES, check_frame

    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"write_ply needs a Gaussians, got {type(gaussians).__name__}")
    path = Path(path)
    k = gaussians.sh_rest.shape[1]
    names = ply_property_names(k)
    header = ["ply", "format binary_little_endian 1.0", "comment written by cvd-scene (3DGS, Inria layout)"]
    if frame is not None:
        header.append(f"comment cvd-scene frame: {check_frame(frame)} ({FRAMES[frame]})")
    header.append(f"element vertex {len(gaussians)}")
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    table = gaussians_to_ply_table(gaussians)  # [N, P]
    assert table.shape[1] == len(names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(table.tobytes())
    os.replace(tmp, path)
    return path


def ply_frame(path: str | os.PathLike) -> str | None:
    """The frame a cvd-scene PLY header states (``run`` or ``readers``), or None when it states none."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            return None
        for _ in range(10_000):  # header lines; a header never gets near this
            line = fh.readline()
            if not line or line.strip() == b"end_header":
                break
            if line.startswith(b"comment ") and (m := _FRAME_COMMENT.match(line[8:].decode("ascii", "replace"))):
                return m.group(1)
    return None


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (Inria, nerfstudio, gsplat, SuperSplat uncompressed; any SH degree) into :class:`Gaussians`.

    Raises :class:`PlyFormatError` for a file that is not a PLY, has no ``vertex`` element, lacks one of
    :data:`REQUIRED_PROPERTIES`, or has a number of ``f_rest_*`` properties that is not 0, 9, 24 or 45.
    """
    from plyfile import PlyData, PlyElementParseError, PlyHeaderParseError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such PLY file: {path}")
    try:
        ply = PlyData.read(str(path))
    except (PlyHeaderParseError, PlyElementParseError, UnicodeDecodeError, ValueError) as e:
        raise PlyFormatError(f"{path} is not a readable PLY file ({e})") from None
    names = [el.name for el in ply.elements]
    compressed = "chunk" in names
    hint = " (a compressed splat PLY: decompress it first, e.g. with splat-transform)" if compressed else ""
    if "vertex" not in names:
        raise PlyFormatError(
            f"{path} has no 'vertex' element (elements: {names}){hint}; it is not a 3DGS PLY"
        )
    vertex = ply["vertex"].data
    props = set(vertex.dtype.names or ())
    missing = [p for p in REQUIRED_PROPERTIES if p not in props]
    if missing:
        raise PlyFormatError(
            f"{path} is not a 3DGS PLY{hint}: its vertex element lacks {', '.join(missing)} "
            f"(it has {', '.join(sorted(props)) or 'no properties'})"
        )
    rest_idx = sorted(int(m.group(1)) for p in props if (m := _F_REST.match(p)))
    if rest_idx != list(range(len(rest_idx))) or len(rest_idx) not in (0, 9, 24, 45):
        raise PlyFormatError(
            f"{path} has {len(rest_idx)} f_rest_* properties (indices {rest_idx[:3]}..{rest_idx[-3:]}); "
            "a 3DGS PLY has 0, 9, 24 or 45 (SH degree 0-3), numbered from 0"
        )
    n, k = len(vertex), len(rest_idx) // 3

    def cols(*keys: str) -> np.ndarray:
        return np.stack([np.asarray(vertex[key], dtype=np.float32) for key in keys], axis=1)  # [N, len(keys)]

    if k:
        rest = cols(*(f"f_rest_{i}" for i in range(3 * k))).reshape(n, 3, k).transpose(0, 2, 1)  # [N, K, 3]
    else:
        rest = np.zeros((n, 0, 3), np.float32)  # [N, 0, 3]
    extra = sorted(props - set(REQUIRED_PROPERTIES) - {f"f_rest_{i}" for i in rest_idx} - {"nx", "ny", "nz"})
    if extra:
        log.debug("%s: ignoring extra vertex properties %s", path, extra)
    return Gaussians(
        means=cols("x", "y", "z"),
        log_scales=cols("scale_0", "scale_1", "scale_2"),
        quats_wxyz=cols("rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logits=np.asarray(vertex["opacity"], dtype=np.float32),
        sh_dc=cols("f_dc_0", "f_dc_1", "f_dc_2"),
        sh_rest=rest,
    )
