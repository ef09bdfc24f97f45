"""Niantic's SPZ format (compressed Gaussian splats), versions 2-4 read, versions 3 and 4 written.

Layout (from the format's specification in the nianticlabs/spz repository):

- v1-v3 ("legacy"): the whole file is gzip; inside, a 16-byte header ``<u32 magic 0x5053474e ("NGSP"), u32
  version, u32 count, u8 SH degree, u8 fractional bits, u8 flags, u8 reserved>`` followed by the attribute
  blocks positions, alphas, colours, scales, rotations, SH, each for all splats in turn.
- v4: a plain 32-byte header ``<u32 magic, u32 version=4, u32 count, u8 SH degree, u8 fractional bits, u8 flags,
  u8 stream count, u32 table-of-contents offset, 12 reserved zero bytes>``, optional extension records up to
  the table of contents, the table (per stream ``<u64 compressed size, u64 uncompressed size>``), then one ZSTD
  frame per non-empty attribute block in the same order. Written only when :mod:`zstandard` is installed.

Encodings, per splat: position 3 x 24-bit signed fixed point with ``fractional bits`` (12 by default, i.e.
0.24 mm, range +-2048 m; fewer bits are chosen automatically for larger scenes); alpha ``u8 = 255 *
sigmoid(opacity)``; colour ``u8 = 255 * (0.15 * sh_dc + 0.5)`` (SH DC coefficients, not display colours);
log-scale ``u8 = 16 * (log_scale + 10)``; rotation of the unit quaternion in x, y, z, w order: v3/v4 "smallest
three" (2 bits for the index of the largest component, then the other three as sign + 9-bit magnitude scaled by
sqrt(2), packed into a little-endian u32), v2 the x, y, z components as ``u8 = 127.5 * c + 127.5`` with w >= 0;
SH coefficients ``u8 = 128 * c + 128`` coefficient-major with the colour channel innermost (our [N, K, 3]
layout), rounded to 5 significant bits for degree 1 and 4 bits for higher degrees (as the reference encoder
does, for compression).

Axes: the specification says RUB (x right, y up, z back), but the readers people use (SuperSplat and
splat-transform 3.x, Babylon.js, Spark) treat an SPZ like a 3DGS PLY, i.e. +y down (measured; docs/formats.md,
"Axes"). This module writes and reads the frame it is given (:data:`SPZ_FROM_WORLD` is the identity, applied in
:func:`pack_spz` and undone in :func:`unpack_spz`); the export step turns the run's world into the readers' frame
first (:mod:`cvd_scene.export.axes`), as it does for PLY and ``.splat``.

Round-trip tolerances (what the tests check): positions 0.5 / 2**fractional_bits; log-scales 1/32; opacity
(post-sigmoid) 0.5/255; SH DC 0.5 / (255 * 0.15) ~ 0.013 (colour 0.0037); rotations within 0.2 degrees (v3/v4) or
about 1.5 degrees (v2); SH rest within 4/128 (degree 1) and 8/128 (higher), for coefficients in [-1, 1].

Pure numpy (gzip from the standard library, zstandard optional); must not import torch.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvd_scene.export.common import logit, normalized_quats, round_half_away, sigmoid, write_bytes_atomic
from cvd_scene.gaussians import Gaussians

log = logging.getLogger(__name__)

NGSP_MAGIC = 0x5053474E
"""``NGSP`` read as a little-endian u32."""
COLOR_SCALE = 0.15
"""SPZ colour byte = 255 * (COLOR_SCALE * sh_dc + 0.5)."""
DEFAULT_FRACTIONAL_BITS = 12
"""Fixed-point fraction of positions (1/4096 m) when the scene fits in +-2048 m."""
SH1_BITS = 5
"""Significant bits kept for degree-1 SH coefficients."""
SH_REST_BITS = 4
"""Significant bits kept for degree-2 and degree-3 SH coefficients."""
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
SPZ_FROM_WORLD = np.eye(3, dtype=np.float64)
"""Axes of the SPZ file from the frame of the Gaussians given: the identity (the export step turns first)."""

_LEGACY_HEADER = struct.Struct("<IIIBBBB")  # 16 bytes
_V4_HEADER = struct.Struct("<IIIBBBBI12x")  # 32 bytes
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
_SQRT1_2 = np.sqrt(0.5)


class SpzFormatError(ValueError):
    """A file that is not a readable SPZ file; the message names the file and what is wrong."""


@dataclass
class PackedSpz:
    """The quantised attribute blocks of an SPZ file (what is compressed), all ``uint8``."""

    version: int
    """Format version (2, 3 or 4)."""
    num_points: int
    sh_degree: int
    fractional_bits: int
    flags: int
    positions: np.ndarray
    """[N, 9] three 24-bit little-endian signed integers."""
    alphas: np.ndarray
    """[N]"""
    colors: np.ndarray
    """[N, 3]"""
    scales: np.ndarray
    """[N, 3]"""
    rotations: np.ndarray
    """[N, 4] (v3, v4 smallest-three u32) or [N, 3] (v2 x, y, z)."""
    sh: np.ndarray
    """[N, 3K] coefficient-major, channel innermost."""

    def blocks(self) -> list[bytes]:
        """The attribute blocks in file order (empty SH block included)."""
        parts = (self.positions, self.alphas, self.colors, self.scales, self.rotations, self.sh)
        return [np.ascontiguousarray(p, np.uint8).tobytes() for p in parts]


def _fractional_bits_for(means: np.ndarray) -> int:
    extent = float(np.max(np.abs(means))) if means.size else 0.0
    for bits in range(DEFAULT_FRACTIONAL_BITS, -1, -1):
        if extent * (1 << bits) < (1 << 23) - 1:
            return bits
    raise ValueError(f"SPZ cannot hold positions this far from the origin: max |coordinate| = {extent:.6g} m")


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = round_half_away(x * 128.0) + 128.0
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _pack_smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    """[N, 4] unit quaternions (x, y, z, w) -> [N, 4] bytes of the little-endian smallest-three u32."""
    q = q_xyzw.astype(np.float64)  # [N, 4]
    n = len(q)
    largest = np.argmax(np.abs(q), axis=1)  # [N]
    negate = q[np.arange(n), largest] < 0  # [N]
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / _SQRT1_2 + 0.5), 511).astype(np.uint32)
        comp = np.where(keep, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def _unpack_smallest_three(b: np.ndarray) -> np.ndarray:
    """[N, 4] bytes -> [N, 4] unit quaternions (x, y, z, w)."""
    comp = np.ascontiguousarray(b, np.uint8).view("<u4")[:, 0].astype(np.uint32)  # [N]
    n = len(comp)
    largest = (comp >> np.uint32(30)).astype(np.int64)
    q = np.zeros((n, 4), np.float64)
    for i in range(3, -1, -1):
        here = largest != i
        mag = (comp & np.uint32(511)).astype(np.float64)
        neg = ((comp >> np.uint32(9)) & np.uint32(1)).astype(bool)
        value = _SQRT1_2 * mag / 511.0 * np.where(neg, -1.0, 1.0)
        q[:, i] = np.where(here, value, 0.0)
        comp = np.where(here, comp >> np.uint32(10), comp)
    rest = np.sum(q * q, axis=1)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return q


def pack_spz(gaussians: Gaussians, version: int = 3, antialiased: bool = False) -> PackedSpz:
    """Quantise ``gaussians`` (in the frame the file is to hold) into SPZ attribute blocks: the one place where
    SPZ's axes, quaternion order, activations and quantisation are applied."""
    if version not in (2, 3, 4):
        raise ValueError(f"SPZ version must be 2, 3 or 4, got {version!r}")
    g = gaussians
    n = len(g)
    means = g.means.astype(np.float64) @ SPZ_FROM_WORLD.T  # [N, 3]
    bits = _fractional_bits_for(means)
    fixed = round_half_away(means * (1 << bits)).astype(np.int64)  # [N, 3]
    fixed &= 0xFFFFFF
    positions = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8).reshape(n, 9)
    alphas = np.clip(round_half_away(sigmoid(g.opacity_logits) * 255.0), 0, 255).astype(np.uint8)  # [N]
    colors = np.clip(round_half_away(g.sh_dc * (COLOR_SCALE * 255.0) + 127.5), 0, 255).astype(np.uint8)
    scales = np.clip(round_half_away((g.log_scales + 10.0) * 16.0), 0, 255).astype(np.uint8)  # [N, 3]
    q_wxyz = normalized_quats(g.quats_wxyz).astype(np.float64)  # [N, 4]
    rot_world = _rotate_quaternions(q_wxyz, SPZ_FROM_WORLD)
    q_xyzw = rot_world[:, [1, 2, 3, 0]]  # [N, 4]
    if version >= 3:
        rotations = _pack_smallest_three(q_xyzw)
    else:
        q = q_xyzw * np.where(q_xyzw[:, 3:] < 0, -1.0, 1.0)
        rotations = np.clip(round_half_away(q[:, :3] * 127.5 + 127.5), 0, 255).astype(np.uint8)  # [N, 3]
    k = g.sh_rest.shape[1]
    sh = np.zeros((n, k, 3), np.uint8)
    if k:
        sh[:, :3] = _quantize_sh(
            g.sh_rest[:, :3], SH1_BITS
        )  # degree 1 (axes unchanged: no SH rotation)
        sh[:, 3:] = _quantize_sh(g.sh_rest[:, 3:], SH_REST_BITS)
    return PackedSpz(
        version=version,
        num_points=n,
        sh_degree=g.sh_degree,
        fractional_bits=bits,
        flags=FLAG_ANTIALIASED if antialiased else 0,
        positions=positions,
        alphas=alphas,
        colors=colors,
        scales=scales,
        rotations=rotations,
        sh=sh.reshape(n, 3 * k),  # [N, 3K] coefficient-major, channel innermost
    )


def _rotate_quaternions(q_wxyz: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Quaternions of ``R @ rot(q)``; ``R`` must be a rotation (here the identity, kept to show where it goes)."""
    if np.allclose(R, np.eye(3)):
        return q_wxyz
    raise NotImplementedError("SPZ_FROM_WORLD is the identity: the export step turns the splats first")


def unpack_spz(packed: PackedSpz) -> Gaussians:
    """Decode attribute blocks back into :class:`Gaussians` in the file's frame (inverse of :func:`pack_spz`)."""
    n = packed.num_points
    b = packed.positions.astype(np.int64).reshape(n, 3, 3)
    fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)  # [N, 3]
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) / (1 << packed.fractional_bits)  # [N, 3] in SPZ (RUB) axes
    means = means @ SPZ_FROM_WORLD  # inverse of a rotation = its transpose
    if packed.version >= 3:
        q_xyzw = _unpack_smallest_three(packed.rotations)
    else:
        xyz = packed.rotations.astype(np.float64) / 127.5 - 1.0  # [N, 3]
        w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz * xyz, axis=1, keepdims=True)))
        q_xyzw = np.concatenate([xyz, w], axis=1)
    q_wxyz = q_xyzw[:, [3, 0, 1, 2]]
    k = _SH_DIM[packed.sh_degree]
    sh = (packed.sh.astype(np.float64).reshape(n, k, 3) - 128.0) / 128.0  # [N, K, 3]
    if k > 15:
        log.warning("SPZ file has SH degree 4; degree 4 is dropped (cvd-scene keeps degrees 0-3)")
        sh = sh[:, :15]
    return Gaussians(
        means=means,
        log_scales=packed.scales.astype(np.float64) / 16.0 - 10.0,
        quats_wxyz=normalized_quats(q_wxyz),
        opacity_logits=logit(packed.alphas.astype(np.float64) / 255.0, eps=0.5 / 255.0),
        sh_dc=(packed.colors.astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE,
        sh_rest=sh,
    )


def zstd_available() -> bool:
    """Whether SPZ v4 (ZSTD streams) can be written and read here."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def encode_spz(packed: PackedSpz) -> bytes:
    """The bytes of an SPZ file holding ``packed`` (gzip for v2/v3, NGSP + ZSTD streams for v4)."""
    blocks = packed.blocks()
    if packed.version < 4:
        header = _LEGACY_HEADER.pack(
            NGSP_MAGIC,
            packed.version,
            packed.num_points,
            packed.sh_degree,
            packed.fractional_bits,
            packed.flags,
            0,
        )
        return gzip.compress(
            header + b"".join(blocks), compresslevel=6, mtime=0
        )  # zlib default, as the reference
    if not zstd_available():
        raise RuntimeError(
            "SPZ version 4 needs the 'zstandard' package (pip install zstandard); or write version 3"
        )
    import zstandard

    streams = [blk for blk in blocks if blk]
    cctx = zstandard.ZstdCompressor(level=12)
    chunks = [cctx.compress(s) for s in streams]
    toc = b"".join(struct.pack("<QQ", len(c), len(s)) for c, s in zip(chunks, streams))
    header = _V4_HEADER.pack(
        NGSP_MAGIC,
        4,
        packed.num_points,
        packed.sh_degree,
        packed.fractional_bits,
        packed.flags,
        len(streams),
        _V4_HEADER.size,
    )
    return header + toc + b"".join(chunks)


def write_spz(gaussians: Gaussians, path: str | os.PathLike, version: int = 3) -> Path:
    """Write ``gaussians`` (in the frame the file is to hold) as an SPZ file; ``version`` 3 (gzip, read by every SPZ reader) or
    4 (ZSTD, needs :mod:`zstandard`)."""
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"write_spz needs a Gaussians, got {type(gaussians).__name__}")
    if version not in (3, 4):
        raise ValueError(f"write_spz writes SPZ version 3 or 4, got {version!r}")
    return write_bytes_atomic(path, encode_spz(pack_spz(gaussians, version)))


def _legacy_blocks(data: bytes, source: str) -> PackedSpz:
    if len(data) < _LEGACY_HEADER.size:
        raise SpzFormatError(f"{source}: {len(data)} bytes after gzip is shorter than the 16-byte SPZ header")
    magic, version, n, degree, bits, flags, _ = _LEGACY_HEADER.unpack_from(data)
    if magic != NGSP_MAGIC:
        raise SpzFormatError(
            f"{source}: gzip content does not start with the SPZ magic NGSP (got {magic:#x})"
        )
    if version not in (1, 2, 3):
        raise SpzFormatError(f"{source}: gzip SPZ of version {version}; versions 1-3 are gzip")
    return _split_blocks(
        data[_LEGACY_HEADER.size :], version, n, degree, bits, flags, source, trailing_ok=True
    )


def _split_blocks(
    body: bytes, version: int, n: int, degree: int, bits: int, flags: int, source: str, trailing_ok: bool
) -> PackedSpz:
    if degree not in _SH_DIM:
        raise SpzFormatError(f"{source}: SH degree {degree} is not 0-4")
    k = _SH_DIM[degree]
    pos_bytes = 6 if version == 1 else 9
    rot_bytes = 4 if version >= 3 else 3
    sizes = [n * pos_bytes, n, 3 * n, 3 * n, rot_bytes * n, 3 * k * n]
    if n <= 0 or sum(sizes) > len(body):
        raise SpzFormatError(
            f"{source}: header says {n} splats (SH degree {degree}) but holds {len(body)} bytes"
        )
    if sum(sizes) < len(body) and not (trailing_ok and flags & FLAG_EXTENSIONS):
        log.warning("%s: %d bytes after the splat data ignored", source, len(body) - sum(sizes))
    if flags & FLAG_EXTENSIONS:
        log.warning("%s: SPZ extension records ignored (e.g. a coordinate-system extension)", source)
    offsets = np.cumsum([0, *sizes])
    raw = np.frombuffer(body, np.uint8)
    parts = [raw[offsets[i] : offsets[i + 1]] for i in range(6)]
    positions = parts[0].reshape(n, pos_bytes)
    if version == 1:  # float16 positions: re-encode as 24-bit fixed point so one decoder serves all versions
        means = parts[0].view("<f2").astype(np.float64).reshape(n, 3)
        bits = _fractional_bits_for(means)
        fixed = round_half_away(means * (1 << bits)).astype(np.int64) & 0xFFFFFF
        positions = (
            np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8).reshape(n, 9)
        )
    return PackedSpz(
        version=max(version, 2),
        num_points=n,
        sh_degree=degree,
        fractional_bits=bits,
        flags=flags,
        positions=positions,
        alphas=parts[1],
        colors=parts[2].reshape(n, 3),
        scales=parts[3].reshape(n, 3),
        rotations=parts[4].reshape(n, rot_bytes),
        sh=parts[5].reshape(n, 3 * k),
    )


def _v4_blocks(data: bytes, source: str) -> PackedSpz:
    if len(data) < _V4_HEADER.size:
        raise SpzFormatError(f"{source}: {len(data)} bytes is shorter than the 32-byte SPZ v4 header")
    _magic, version, n, degree, bits, flags, num_streams, toc_offset = _V4_HEADER.unpack_from(data)
    if version < 4:
        raise SpzFormatError(
            f"{source}: plain NGSP header with version {version}; only version 4+ is unzipped"
        )
    if version > 4:
        raise SpzFormatError(f"{source}: SPZ version {version} is newer than this reader (reads 1-4)")
    if not zstd_available():
        raise SpzFormatError(f"{source}: SPZ version 4 needs the 'zstandard' package (pip install zstandard)")
    import zstandard

    toc_end = toc_offset + 16 * num_streams
    if toc_offset < _V4_HEADER.size or toc_end > len(data):
        raise SpzFormatError(
            f"{source}: table of contents at {toc_offset} ({num_streams} streams) is out of range"
        )
    dctx = zstandard.ZstdDecompressor()
    offset = toc_end
    streams = []
    for i in range(num_streams):
        csize, usize = struct.unpack_from("<QQ", data, toc_offset + 16 * i)
        if offset + csize > len(data):
            raise SpzFormatError(f"{source}: stream {i} runs past the end of the file")
        out = dctx.decompress(data[offset : offset + csize], max_output_size=usize)
        if len(out) != usize:
            raise SpzFormatError(
                f"{source}: stream {i} holds {len(out)} bytes, table of contents says {usize}"
            )
        streams.append(out)
        offset += csize
    body = b"".join(streams)
    return _split_blocks(body, version, n, degree, bits, flags & ~FLAG_EXTENSIONS, source, trailing_ok=False)


def read_spz_packed(path: str | os.PathLike) -> PackedSpz:
    """Read the quantised blocks of an SPZ file of any version (1-3 gzip, 4 NGSP + ZSTD)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise SpzFormatError(f"{path}: broken gzip stream ({e})") from None
        return _legacy_blocks(inner, str(path))
    if data[:4] == struct.pack("<I", NGSP_MAGIC):
        packed = _v4_blocks(data, str(path))
        if data[14] & FLAG_EXTENSIONS:
            log.warning("%s: SPZ extension records ignored (e.g. a coordinate-system extension)", path)
        return packed
    raise SpzFormatError(f"{path}: neither gzip (SPZ v1-v3) nor NGSP (SPZ v4) at the start; not an SPZ file")


def read_spz(path: str | os.PathLike) -> Gaussians:
    """Read an SPZ file (versions 1-4) into :class:`Gaussians` in the file's frame (for SPZ files from the export
    step and from other tools: the readers' frame, +y down; :func:`cvd_scene.export.axes.run_from_readers`
    turns them into a run's world)."""
    return unpack_spz(read_spz_packed(path))
