"""Triangle meshes of simple shapes (quad, box, frustum/cylinder, ellipsoid) with texture coordinates in metres.

Every mesh carries, per triangle corner, texture coordinates in metres on the surface (``uv_m``) and a shading
normal: a textured surface's texels then have one physical size everywhere, and the faces of one shape occupy
separate regions of its texture (no face repeats another). Pure numpy; must not import torch or open3d.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_UV_GAP_M = 0.03  # space between the texture regions of the faces of one shape


@dataclass
class Mesh:
    """Triangles with per-corner texture coordinates (metres) and per-corner shading normals."""

    vertices: np.ndarray
    """[n, 3] float64 positions."""
    triangles: np.ndarray
    """[m, 3] int64 vertex indices."""
    uv_m: np.ndarray
    """[m, 3, 2] float64 texture coordinates of each corner, metres, >= 0."""
    normals: np.ndarray
    """[m, 3, 3] float64 unit shading normals of each corner."""

    @property
    def uv_extent_m(self) -> tuple[float, float]:
        """(width, height) in metres of the texture region the mesh uses."""
        return float(self.uv_m[..., 0].max()), float(self.uv_m[..., 1].max())

    def transformed(self, R: np.ndarray, t: np.ndarray) -> Mesh:
        """The mesh rotated by ``R`` [3, 3] then moved by ``t`` [3]."""
        R = np.asarray(R, np.float64)
        return Mesh(
            self.vertices @ R.T + np.asarray(t, np.float64), self.triangles, self.uv_m, self.normals @ R.T
        )


def rotation_y(angle_rad: float) -> np.ndarray:
    """[3, 3] rotation about the world +y axis."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def merge(meshes: list[Mesh]) -> Mesh:
    """One mesh of several, their texture regions laid side by side along u (so none shares texels)."""
    verts, tris, uvs, norms = [], [], [], []
    offset_v = 0
    offset_u = 0.0
    for m in meshes:
        verts.append(m.vertices)
        tris.append(m.triangles + offset_v)
        uv = m.uv_m.copy()
        uv[..., 0] += offset_u
        uvs.append(uv)
        norms.append(m.normals)
        offset_v += len(m.vertices)
        offset_u += m.uv_extent_m[0] + _UV_GAP_M
    return Mesh(np.concatenate(verts), np.concatenate(tris), np.concatenate(uvs), np.concatenate(norms))


def quad(origin: np.ndarray, edge_u: np.ndarray, edge_v: np.ndarray, uv_origin_m=(0.0, 0.0)) -> Mesh:
    """A parallelogram ``origin + a * edge_u + b * edge_v`` (a, b in [0, 1]); texture u runs along ``edge_u``,
    v along ``edge_v``."""
    o = np.asarray(origin, np.float64)
    eu = np.asarray(edge_u, np.float64)
    ev = np.asarray(edge_v, np.float64)
    verts = np.stack([o, o + eu, o + eu + ev, o + ev])
    lu, lv = np.linalg.norm(eu), np.linalg.norm(ev)
    n = np.cross(eu, ev)
    norm = np.linalg.norm(n)
    if norm < 1e-12:
        raise ValueError(f"quad edges are parallel or zero: {edge_u=} {edge_v=}")
    n = n / norm
    uv = np.array([[0, 0], [lu, 0], [lu, lv], [0, lv]], np.float64) + np.asarray(uv_origin_m, np.float64)
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    return Mesh(verts, tris, uv[tris], np.broadcast_to(n, (2, 3, 3)).copy())


def box(size: tuple[float, float, float], center: tuple[float, float, float], yaw_rad: float = 0.0) -> Mesh:
    """An axis-aligned box of ``size`` (x, y, z) metres turned by ``yaw_rad`` about +y around ``center``.

    Side faces have v along +y (so bricks and planks lie level); all six faces get their own texture region.
    """
    sx, sy, sz = (float(s) for s in size)
    if min(sx, sy, sz) <= 0:
        raise ValueError(f"box size must be positive, got {size}")
    h = np.array([sx, sy, sz]) / 2
    faces = [
        ([-h[0], -h[1], h[2]], [sx, 0, 0], [0, sy, 0]),  # +z
        ([h[0], -h[1], h[2]], [0, 0, -sz], [0, sy, 0]),  # +x
        ([h[0], -h[1], -h[2]], [-sx, 0, 0], [0, sy, 0]),  # -z
        ([-h[0], -h[1], -h[2]], [0, 0, sz], [0, sy, 0]),  # -x
        ([-h[0], h[1], h[2]], [sx, 0, 0], [0, 0, -sz]),  # +y
        ([-h[0], -h[1], -h[2]], [sx, 0, 0], [0, 0, sz]),  # -y
    ]
    mesh = merge([quad(np.array(o), np.array(eu), np.array(ev)) for o, eu, ev in faces])
    return mesh.transformed(rotation_y(yaw_rad), np.asarray(center, np.float64))


def frustum(
    radius_bottom: float,
    radius_top: float,
    height: float,
    base_center: tuple[float, float, float],
    segments: int = 24,
    caps: bool = True,
) -> Mesh:
    """A cylinder (equal radii) or truncated cone standing on ``base_center``, smooth-shaded sides, flat caps."""
    if height <= 0 or min(radius_bottom, radius_top) < 0 or max(radius_bottom, radius_top) <= 0:
        raise ValueError(
            f"frustum needs height > 0 and radii >= 0 (one > 0), got {radius_bottom=} {radius_top=} {height=}"
        )
    a = np.linspace(0, 2 * np.pi, segments + 1)  # [S+1]; the seam vertex repeats with u = circumference
    ca, sa = np.cos(a), np.sin(a)
    bottom = np.stack([radius_bottom * ca, np.zeros_like(a), radius_bottom * sa], -1)
    top = np.stack([radius_top * ca, np.full_like(a, height), radius_top * sa], -1)
    slope = (radius_bottom - radius_top) / height
    nrm = np.stack([ca, np.full_like(a, slope), sa], -1)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    r_mid = 0.5 * (radius_bottom + radius_top)
    u = a * r_mid
    verts = np.concatenate([bottom, top])  # [2(S+1), 3]
    tris, uvs, ns = [], [], []
    n1 = segments + 1
    for i in range(segments):
        for tri in ((i, n1 + i + 1, i + 1), (i, n1 + i, n1 + i + 1)):
            tris.append(tri)
            uvs.append([[u[k % n1], 0.0 if k < n1 else height] for k in tri])
            ns.append([nrm[k % n1] for k in tri])
    side = Mesh(verts, np.array(tris), np.array(uvs, np.float64), np.array(ns, np.float64))
    parts = [side]
    if caps:
        for y, r, sign in ((0.0, radius_bottom, -1.0), (height, radius_top, 1.0)):
            if r <= 0:
                continue
            ring = np.stack([r * ca[:-1], np.full(segments, y), r * sa[:-1]], -1)
            centre = np.array([[0.0, y, 0.0]])
            v = np.concatenate([centre, ring])
            t = np.array(
                [
                    [0, 1 + (i + 1) % segments, 1 + i] if sign > 0 else [0, 1 + i, 1 + (i + 1) % segments]
                    for i in range(segments)
                ]
            )
            uv = (v[:, [0, 2]] + r)[t]
            parts.append(Mesh(v, t, uv, np.broadcast_to([0.0, sign, 0.0], (segments, 3, 3)).copy()))
    return merge(parts).transformed(np.eye(3), np.asarray(base_center, np.float64))


def ellipsoid(
    radii: tuple[float, float, float], center: tuple[float, float, float], segments: int = 24, rings: int = 12
) -> Mesh:
    """An ellipsoid (a sphere with equal radii), smooth-shaded; u along longitude, v along latitude, metres."""
    rx, ry, rz = (float(r) for r in radii)
    if min(rx, ry, rz) <= 0:
        raise ValueError(f"ellipsoid radii must be positive, got {radii}")
    lon = np.linspace(0, 2 * np.pi, segments + 1)
    lat = np.linspace(0, np.pi, rings + 1)
    LON, LAT = np.meshgrid(lon, lat)  # [R+1, S+1]
    unit = np.stack([np.sin(LAT) * np.cos(LON), -np.cos(LAT), np.sin(LAT) * np.sin(LON)], -1)
    verts = (unit * np.array([rx, ry, rz])).reshape(-1, 3)
    nrm = unit / np.array([rx, ry, rz])
    nrm = (nrm / np.linalg.norm(nrm, axis=-1, keepdims=True)).reshape(-1, 3)
    r_eq = (rx + rz) / 2
    uv = np.stack([LON * r_eq, LAT * ry], -1).reshape(-1, 2)
    tris = []
    w = segments + 1
    for j in range(rings):
        for i in range(segments):
            a, b, c, d = j * w + i, j * w + i + 1, (j + 1) * w + i + 1, (j + 1) * w + i
            if j > 0:
                tris.append((a, c, b))
            if j < rings - 1:
                tris.append((a, d, c))
    t = np.array(tris)
    return Mesh(verts + np.asarray(center, np.float64), t, uv[t], nrm[t])
