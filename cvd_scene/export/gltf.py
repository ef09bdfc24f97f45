"""glTF 2.0 binary (GLB) with Gaussian splats in the ``KHR_gaussian_splatting`` extension, and GLB plumbing.

Written as the extension's specification (KhronosGroup/glTF, ``extensions/2.0/Khronos/KHR_gaussian_splatting``,
Release Candidate) defines it: one ``POINTS`` primitive whose attributes are

- ``POSITION`` (VEC3 float, with min/max), the splat centres;
- ``KHR_gaussian_splatting:ROTATION`` (VEC4 float), unit quaternions in glTF's x, y, z, w order;
- ``KHR_gaussian_splatting:SCALE`` (VEC3 float), linear standard deviations, exp(log-scale);
- ``KHR_gaussian_splatting:OPACITY`` (SCALAR float), sigmoid(opacity logit) in [0, 1];
- ``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0`` (VEC3 float) and, for every band present, all of
  ``SH_DEGREE_l_COEF_n`` (n = 0..2l, ordered m = -l..l, the same real-SH basis and sign convention as 3DGS, so the
  coefficients are copied unchanged);
- ``COLOR_0`` (VEC4 unsigned byte normalised), the fallback point colour: the DC colour decoded from sRGB to
  linear (glTF vertex colours are linear) and the opacity as alpha;

with the extension object ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection":
"perspective", "sortingMethod": "cameraDistance"}`` (3DGS fits sRGB images, display-referred). The extension is
listed in ``extensionsUsed`` only: a viewer without it shows a coloured point cloud.

Axes: glTF is right-handed, +y up, metres: the run's world frame, so :data:`GLTF_FROM_WORLD` is the identity,
applied in :func:`gaussians_to_khr_attributes` only.

Pure numpy; must not import torch.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import numpy as np

from cvd_scene import __version__
from cvd_scene.export.common import logit, normalized_quats, sigmoid, write_bytes_atomic
from cvd_scene.gaussians import Gaussians

log = logging.getLogger(__name__)

EXTENSION = "KHR_gaussian_splatting"
GLTF_FROM_WORLD = np.eye(3, dtype=np.float64)
"""glTF axes from the run's world frame (both right-handed, +y up, metres): the identity."""
SH_COEFFS_PER_DEGREE = (1, 3, 5, 7)

_GLB_MAGIC = 0x46546C67  # "glTF"
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_FLOAT, _UBYTE, _BYTE, _USHORT, _SHORT, _UINT = 5126, 5121, 5120, 5123, 5122, 5125
_ARRAY_BUFFER = 34962
_NUM_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_DTYPES = {_FLOAT: "<f4", _UBYTE: "u1", _BYTE: "i1", _USHORT: "<u2", _SHORT: "<i2", _UINT: "<u4"}


class GltfFormatError(ValueError):
    """A file that is not a readable GLB, or a GLB without Gaussian splats; the message says which and why."""


# --------------------------------------------------------------------------------------- GLB container


class GlbBuilder:
    """Collects typed arrays into one binary buffer with one bufferView and accessor each."""

    def __init__(self) -> None:
        self.doc: dict = {"asset": {"version": "2.0", "generator": f"cvd-scene {__version__}"}}
        self.doc["buffers"], self.doc["bufferViews"], self.doc["accessors"] = [], [], []
        self._chunks: list[bytes] = []
        self._length = 0

    def add_accessor(
        self,
        data: np.ndarray,
        type_: str,
        normalized: bool = False,
        min_max: bool = False,
        target: int | None = None,
    ) -> int:
        """Append ``data`` ([N] or [N, C], float32/uint8/uint16/uint32) and return its accessor index."""
        data = np.ascontiguousarray(data)
        component = {np.dtype("float32"): _FLOAT, np.dtype("uint8"): _UBYTE, np.dtype("uint16"): _USHORT,
                     np.dtype("uint32"): _UINT}[data.dtype]  # fmt: skip
        raw = data.astype(data.dtype.newbyteorder("<")).tobytes()
        view = {"buffer": 0, "byteOffset": self._length, "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        self._chunks.append(raw + b"\0" * (-len(raw) % 4))
        self._length += len(raw) + (-len(raw) % 4)
        self.doc["bufferViews"].append(view)
        acc = {"bufferView": len(self.doc["bufferViews"]) - 1, "componentType": component,
               "count": int(data.shape[0]), "type": type_}  # fmt: skip
        if normalized:
            acc["normalized"] = True
        if min_max:
            flat = data.reshape(len(data), -1)
            acc["min"] = [float(v) for v in flat.min(axis=0)]
            acc["max"] = [float(v) for v in flat.max(axis=0)]
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def to_bytes(self) -> bytes:
        """The GLB file: 12-byte header, JSON chunk (space padded), BIN chunk (zero padded)."""
        binary = b"".join(self._chunks)
        self.doc["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(self.doc, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        out = [struct.pack("<III", _GLB_MAGIC, 2, total), struct.pack("<II", len(text), _CHUNK_JSON), text]
        out += [struct.pack("<II", len(binary), _CHUNK_BIN), binary]
        return b"".join(out)


def read_glb(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The JSON document and the BIN chunk of a GLB file."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 20:
        raise GltfFormatError(f"{path}: {len(data)} bytes is too short for a GLB")
    magic, version, length = struct.unpack_from("<III", data)
    if magic != _GLB_MAGIC or version != 2:
        raise GltfFormatError(f"{path}: not a glTF 2.0 binary (magic {magic:#x}, version {version})")
    if length != len(data):
        raise GltfFormatError(f"{path}: header says {length} bytes, file has {len(data)}")
    offset, doc, binary = 12, None, b""
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8 : offset + 8 + size]
        if kind == _CHUNK_JSON and doc is None:
            doc = json.loads(chunk.decode("utf-8"))
        elif kind == _CHUNK_BIN and not binary:
            binary = chunk
        offset += 8 + size
    if doc is None:
        raise GltfFormatError(f"{path}: no JSON chunk")
    return doc, binary


def read_accessor(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """[N] or [N, C] float64 values of accessor ``index`` (normalised integers mapped to [0, 1] / [-1, 1])."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    comps = _NUM_COMPONENTS[acc["type"]]
    dtype = np.dtype(_DTYPES[acc["componentType"]])
    stride = view.get("byteStride", comps * dtype.itemsize)
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    n = acc["count"]
    raw = np.frombuffer(binary, np.uint8, count=stride * (n - 1) + comps * dtype.itemsize, offset=start)
    rows = np.lib.stride_tricks.as_strided(raw, (n, comps * dtype.itemsize), (stride, 1))
    values = np.ascontiguousarray(rows).view(dtype).reshape(n, comps).astype(np.float64)
    if acc.get("normalized"):
        info = np.iinfo(dtype)
        values = np.maximum(values / info.max, -1.0)
    return values[:, 0] if comps == 1 else values


# -------------------------------------------------------------------------------- KHR_gaussian_splatting


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] to linear (the IEC 61966-2-1 curve)."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def gaussians_to_khr_attributes(gaussians: Gaussians) -> dict[str, tuple[np.ndarray, str]]:
    """The primitive's attributes (semantic -> ([N, C] float32 data, accessor type)): the one place where glTF's
    axes, quaternion order and activations are applied."""
    g = gaussians
    q = normalized_quats(g.quats_wxyz).astype(np.float64)  # [N, 4] w, x, y, z
    if not np.allclose(GLTF_FROM_WORLD, np.eye(3)):
        raise NotImplementedError("GLTF_FROM_WORLD is the identity for the run's world frame")
    attrs: dict[str, tuple[np.ndarray, str]] = {
        "POSITION": ((g.means.astype(np.float64) @ GLTF_FROM_WORLD.T).astype(np.float32), "VEC3"),
        f"{EXTENSION}:ROTATION": (q[:, [1, 2, 3, 0]].astype(np.float32), "VEC4"),  # x, y, z, w
        f"{EXTENSION}:SCALE": (np.exp(g.log_scales.astype(np.float64)).astype(np.float32), "VEC3"),
        f"{EXTENSION}:OPACITY": (sigmoid(g.opacity_logits), "SCALAR"),
        f"{EXTENSION}:SH_DEGREE_0_COEF_0": (g.sh_dc, "VEC3"),
    }
    k = 0
    for degree in range(1, g.sh_degree + 1):
        for n in range(SH_COEFFS_PER_DEGREE[degree]):
            attrs[f"{EXTENSION}:SH_DEGREE_{degree}_COEF_{n}"] = (g.sh_rest[:, k], "VEC3")  # [N, 3]
            k += 1
    return attrs


def write_khr_glb(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write ``gaussians`` (run's world frame) as a GLB with one ``KHR_gaussian_splatting`` primitive."""
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"write_khr_glb needs a Gaussians, got {type(gaussians).__name__}")
    if len(gaussians) == 0:
        raise ValueError("write_khr_glb: no Gaussians to write (glTF accessors need count >= 1)")
    b = GlbBuilder()
    attributes = {}
    for semantic, (data, type_) in gaussians_to_khr_attributes(gaussians).items():
        attributes[semantic] = b.add_accessor(
            data, type_, min_max=semantic == "POSITION", target=_ARRAY_BUFFER
        )
        if semantic == "POSITION":  # fallback colour right after POSITION, as the spec's example
            rgb = srgb_to_linear(gaussians.colors)  # [N, 3]
            rgba = np.concatenate([rgb, gaussians.opacities[:, None]], axis=1)  # [N, 4]
            colour = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
            attributes["COLOR_0"] = b.add_accessor(colour, "VEC4", normalized=True, target=_ARRAY_BUFFER)
    primitive = {
        "attributes": attributes,
        "mode": 0,  # POINTS
        "extensions": {
            EXTENSION: {
                "kernel": "ellipse",
                "colorSpace": "srgb_rec709_display",
                "projection": "perspective",
                "sortingMethod": "cameraDistance",
            }
        },
    }
    b.doc["extensionsUsed"] = [EXTENSION]
    b.doc["meshes"] = [{"name": "gaussian_splats", "primitives": [primitive]}]
    b.doc["nodes"] = [{"name": "gaussian_splats", "mesh": 0}]
    b.doc["scenes"] = [{"nodes": [0]}]
    b.doc["scene"] = 0
    return write_bytes_atomic(path, b.to_bytes())


def read_khr_glb(path: str | os.PathLike) -> Gaussians:
    """Read the first ``KHR_gaussian_splatting`` primitive of a GLB into :class:`Gaussians` (run's world frame).

    Node transforms are not applied (a warning names them); splats written by cvd-scene have none.
    """
    doc, binary = read_glb(path)
    found = None
    for m, mesh in enumerate(doc.get("meshes", [])):
        for p, prim in enumerate(mesh.get("primitives", [])):
            if EXTENSION in prim.get("extensions", {}):
                found = (m, p, prim)
                break
        if found:
            break
    if found is None:
        raise GltfFormatError(f"{path}: no mesh primitive with the {EXTENSION} extension")
    m, p, prim = found
    for node in doc.get("nodes", []):
        if node.get("mesh") == m and any(k in node for k in ("matrix", "translation", "rotation", "scale")):
            log.warning("%s: the transform of node %r is not applied to its splats", path, node.get("name"))
    attrs = prim["attributes"]
    need = ["POSITION"] + [f"{EXTENSION}:{a}" for a in ("ROTATION", "SCALE", "OPACITY", "SH_DEGREE_0_COEF_0")]
    missing = [a for a in need if a not in attrs]
    if missing:
        raise GltfFormatError(f"{path}: {EXTENSION} primitive lacks {', '.join(missing)}")

    def get(semantic: str) -> np.ndarray:
        return read_accessor(doc, binary, attrs[semantic])

    rest = []
    for degree in (1, 2, 3):
        names = [f"{EXTENSION}:SH_DEGREE_{degree}_COEF_{n}" for n in range(SH_COEFFS_PER_DEGREE[degree])]
        present = [n in attrs for n in names]
        if not any(present):
            break
        if not all(present):
            raise GltfFormatError(f"{path}: SH degree {degree} is only partly defined")
        rest += [get(n) for n in names]  # each [N, 3]
    n = len(get("POSITION"))
    sh_rest = np.stack(rest, axis=1) if rest else np.zeros((n, 0, 3))  # [N, K, 3]
    q_xyzw = get(f"{EXTENSION}:ROTATION")  # [N, 4]
    scale = get(f"{EXTENSION}:SCALE")  # [N, 3]
    return Gaussians(
        means=get("POSITION") @ GLTF_FROM_WORLD,
        log_scales=np.log(np.maximum(scale, 1e-30)),
        quats_wxyz=normalized_quats(q_xyzw[:, [3, 0, 1, 2]]),
        opacity_logits=logit(get(f"{EXTENSION}:OPACITY"), eps=1e-7),
        sh_dc=get(f"{EXTENSION}:SH_DEGREE_0_COEF_0"),
        sh_rest=sh_rest,
    )
