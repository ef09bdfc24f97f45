"""Procedural albedo textures of the reference scenes, baked to images at scene-build time.

Every texture is a function of texel positions in metres on the surface's own plane, so its detail has a
physical size (planks 15 cm wide, bricks 22 cm long) whatever the surface. Each pattern mixes a structure
(planks, bricks, tiles, cells, windows, blobs) with mid-frequency value noise and per-cell colour variation, and
every surface draws its own random lattice, offsets and colours from its own generator: no two surfaces look
alike, which is what feature matching (SIFT) and a splat fit need.

Pure numpy; must not import torch, open3d or anything of the pipeline.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

Rgb = tuple[float, float, float]

_LATTICE = 256  # value-noise lattice size (periodic); a power of two for cheap wrapping

CONTRAST = 1.3
"""Default contrast boost of baked textures (more, and more distinctive, features for SIFT)."""


# ---------------------------------------------------------------------------------------------- noise


class ValueNoise:
    """Smooth value noise on a random periodic lattice (one lattice per surface: no two surfaces alike)."""

    def __init__(self, rng: np.random.Generator):
        self.table = rng.random((_LATTICE, _LATTICE), dtype=np.float32)  # [L, L]
        self.flat = self.table.ravel()
        self.offset = rng.uniform(0, _LATTICE, size=2)
        self.angle = rng.uniform(0, np.pi)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Noise in [0, 1] at lattice coordinates ``x``, ``y`` (same shape; one lattice cell = one unit)."""
        c, s = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        xr = c * x - s * y + np.float32(self.offset[0])
        yr = s * x + c * y + np.float32(self.offset[1])
        x0 = np.floor(xr)
        y0 = np.floor(yr)
        fx = xr - x0
        fy = yr - y0
        fx = fx * fx * (3 - 2 * fx)
        fy = fy * fy * (3 - 2 * fy)
        m = _LATTICE - 1
        xi = x0.astype(np.int32) & m
        yi = (y0.astype(np.int32) & m) * _LATTICE
        xj = (xi + 1) & m
        yj = (yi + _LATTICE) & (m * _LATTICE + m)
        t = self.flat
        a = t.take(yi + xi)
        top = a + fx * (t.take(yi + xj) - a)
        b = t.take(yj + xi)
        bottom = b + fx * (t.take(yj + xj) - b)
        return top + fy * (bottom - top)

    def fbm(self, x: np.ndarray, y: np.ndarray, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
        """Fractal sum of ``octaves`` octaves (frequency doubling), normalised to about [0, 1]."""
        total = np.zeros(np.shape(x), np.float32)
        amp, norm, f = 1.0, 0.0, 1.0
        for k in range(octaves):
            total += amp * self(x * f + 17.3 * k, y * f - 9.1 * k)
            norm += amp
            amp *= gain
            f *= 2.0
        return total / norm


def cell_hash(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer cell (i, j) (arrays of one shape)."""
    h = (np.asarray(i, np.int64) * 73856093) ^ (np.asarray(j, np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return ((h & 0xFFFFFF).astype(np.float32)) / float(0x1000000)


# -------------------------------------------------------------------------------------------- colours


COLOURS: dict[str, Rgb] = {
    "red": (0.78, 0.16, 0.13),
    "crimson": (0.66, 0.08, 0.17),
    "orange": (0.92, 0.48, 0.12),
    "yellow": (0.92, 0.80, 0.20),
    "golden": (0.83, 0.66, 0.22),
    "gold": (0.83, 0.66, 0.22),
    "green": (0.22, 0.60, 0.25),
    "olive": (0.47, 0.50, 0.20),
    "teal": (0.12, 0.52, 0.52),
    "cyan": (0.20, 0.72, 0.80),
    "turquoise": (0.22, 0.75, 0.70),
    "blue": (0.18, 0.32, 0.75),
    "navy": (0.10, 0.15, 0.42),
    "purple": (0.50, 0.24, 0.62),
    "violet": (0.56, 0.34, 0.78),
    "pink": (0.92, 0.52, 0.66),
    "magenta": (0.80, 0.20, 0.62),
    "brown": (0.46, 0.29, 0.16),
    "beige": (0.84, 0.76, 0.60),
    "white": (0.92, 0.92, 0.90),
    "grey": (0.52, 0.52, 0.52),
    "gray": (0.52, 0.52, 0.52),
    "silver": (0.72, 0.73, 0.75),
    "black": (0.10, 0.10, 0.11),
}
"""Colour words a prompt may use, as sRGB albedo in [0, 1]."""


def jitter_colour(
    rgb: Rgb, rng: np.random.Generator, hue: float = 0.03, sat: float = 0.1, val: float = 0.1
) -> Rgb:
    """``rgb`` with its hue, saturation and value moved by up to the given amounts."""
    h, s, v = colorsys.rgb_to_hsv(*np.clip(rgb, 0, 1))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    s = float(np.clip(s + rng.uniform(-sat, sat), 0, 1))
    v = float(np.clip(v + rng.uniform(-val, val), 0.03, 1))
    return colorsys.hsv_to_rgb(h, s, v)


def mix(a: Rgb, b: Rgb, t: float) -> Rgb:
    return tuple(float((1 - t) * x + t * y) for x, y in zip(a, b))


def _rgb(c: Rgb | np.ndarray) -> np.ndarray:
    return np.asarray(c, np.float32).reshape(1, 1, 3)


def _cell_colours(base: Rgb, h: np.ndarray, h2: np.ndarray, spread: float) -> np.ndarray:
    """[..., 3] per-cell colours around ``base`` from two cell hashes in [0, 1) (value and warmth)."""
    b = _rgb(base)
    value = 1.0 + spread * (h[..., None] - 0.5) * 2
    warm = np.asarray([1.0, 0.0, -1.0], np.float32) * (spread * 0.35) * (h2[..., None] - 0.5)
    return b * value + warm


def decals(
    u, v, rng, img: np.ndarray, cell_m: float = 0.45, chance: float = 0.45, strength: float = 0.8
) -> np.ndarray:
    """Sparse one-off marks over ``img`` [h, w, 3]: discs, rings and bars of random colour, size and angle, at most
    one per ``cell_m`` cell. They make every patch of a regular pattern unique, so features match unambiguously."""
    salt = int(rng.integers(1 << 30))
    ci = np.floor(u / cell_m)
    cj = np.floor(v / cell_m)
    h0 = cell_hash(ci, cj, salt)
    on = h0 < chance
    cx = (ci + 0.25 + 0.5 * cell_hash(cj, ci, salt + 1)) * cell_m
    cy = (cj + 0.25 + 0.5 * cell_hash(ci, cj, salt + 2)) * cell_m
    r = cell_m * (0.06 + 0.12 * cell_hash(ci, cj, salt + 3))
    ang = cell_hash(cj, ci, salt + 4) * np.pi
    du, dv = u - cx, v - cy
    along = du * np.cos(ang) + dv * np.sin(ang)
    across = -du * np.sin(ang) + dv * np.cos(ang)
    kind = (cell_hash(ci, cj, salt + 5) * 3).astype(np.int64)
    dist = np.sqrt(du * du + dv * dv)
    shape = np.where(
        kind == 0,
        dist < r,
        np.where(
            kind == 1, np.abs(dist - r) < r * 0.3, (np.abs(along) < r * 1.6) & (np.abs(across) < r * 0.35)
        ),
    )
    m = (on & shape).astype(np.float32)[..., None] * strength
    col = np.stack(
        [cell_hash(ci, cj, salt + 6), cell_hash(ci, cj, salt + 7), cell_hash(ci, cj, salt + 8)], -1
    )
    col = (0.15 + 0.75 * col).astype(np.float32)
    return img * (1 - m) + col * m


# ------------------------------------------------------------------------------------------- patterns
# Each pattern: (u [h, w] m, v [h, w] m, rng, colours) -> [h, w, 3] float32 albedo.


def planks(u, v, rng, base: Rgb) -> np.ndarray:
    """Wooden planks along u: per-plank tone, staggered ends, grain and knots, dark joints."""
    n = ValueNoise(rng)
    width = rng.uniform(0.11, 0.2)
    length = rng.uniform(0.7, 1.6)
    salt = int(rng.integers(1 << 30))
    row = np.floor(v / width)
    shift = cell_hash(row, row * 7 + 1, salt) * length
    col = np.floor((u + shift) / length)
    tone = _cell_colours(base, cell_hash(row, col, salt), cell_hash(col, row, salt + 1), 0.28)
    grain = n.fbm(u * 2.5, (v - row * width) * 45 + cell_hash(row, col, salt + 2) * 50, octaves=3)
    knots = n.fbm(u * 6 + 3, v * 6, octaves=2)
    shade = 0.78 + 0.35 * grain - 0.25 * np.clip((knots - 0.68) * 6, 0, 1)
    fv = (v / width) - row
    fu = ((u + shift) / length) - col
    joint = (fv < 0.05) | (fu < 0.012)
    out = tone * shade[..., None]
    out[joint] *= 0.45
    return out


def bricks(u, v, rng, base: Rgb, mortar: Rgb = (0.78, 0.76, 0.72)) -> np.ndarray:
    """Running-bond bricks with per-brick colour, speckle and light mortar."""
    n = ValueNoise(rng)
    bw = rng.uniform(0.2, 0.26)
    bh = rng.uniform(0.06, 0.085)
    m = 0.011
    salt = int(rng.integers(1 << 30))
    row = np.floor(v / bh)
    shifted = u + (row % 2) * 0.5 * bw
    col = np.floor(shifted / bw)
    tone = _cell_colours(base, cell_hash(row, col, salt), cell_hash(col, row, salt + 3), 0.35)
    speck = n.fbm(u * 40, v * 40, octaves=2)
    blotch = n.fbm(u * 1.5, v * 1.5, octaves=2)
    out = tone * (0.75 + 0.35 * speck + 0.25 * (blotch - 0.5))[..., None]
    fu = shifted - col * bw
    fv = v - row * bh
    joint = (fu < m) | (fv < m)
    mortar_px = _rgb(mortar) * (0.85 + 0.3 * speck[..., None])
    return np.where(joint[..., None], mortar_px, out)


def tiles(u, v, rng, colours: list[Rgb], grout: Rgb = (0.35, 0.34, 0.33)) -> np.ndarray:
    """Square tiles of a few colours (checker or random) with grout lines, speckle and stains."""
    n = ValueNoise(rng)
    size = rng.uniform(0.25, 0.5)
    g = size * 0.04
    salt = int(rng.integers(1 << 30))
    i = np.floor(u / size)
    j = np.floor(v / size)
    h = cell_hash(i, j, salt)
    if rng.random() < 0.5 and len(colours) > 1:
        pick = ((i + j) % 2).astype(np.int64)
    else:
        pick = np.minimum((h * len(colours)).astype(np.int64), len(colours) - 1)
    pal = np.asarray(colours, np.float32)
    tone = pal[pick] * (0.85 + 0.3 * cell_hash(j, i, salt + 1))[..., None]
    speck = n.fbm(u * 30, v * 30, octaves=2)
    stain = n.fbm(u * 2, v * 2, octaves=3)
    out = tone * (0.8 + 0.3 * speck + 0.3 * (stain - 0.5))[..., None]
    out = decals(u, v, rng, out, cell_m=size * 0.9, chance=0.35, strength=0.5)
    fu = u - i * size
    fv = v - j * size
    joint = (fu < g) | (fv < g)
    return np.where(joint[..., None], _rgb(grout) * (0.8 + 0.4 * speck[..., None]), out)


def wallpaper(u, v, rng, base: Rgb, accent: Rgb) -> np.ndarray:
    """Stripes with a motif of dots or diamonds, hand-printed colour variation and faded blotches."""
    n = ValueNoise(rng)
    period = rng.uniform(0.18, 0.35)
    salt = int(rng.integers(1 << 30))
    stripe = np.floor(u / period)
    fu = u / period - stripe
    light = mix(base, (1, 1, 1), 0.25)
    tone = np.where(((stripe % 2) == 0)[..., None], _rgb(base), _rgb(light))
    row = np.floor(v / period)
    fv = v / period - row
    cell_jit = cell_hash(stripe, row, salt)
    mu = fu - 0.5 - 0.2 * (cell_hash(row, stripe, salt + 2) - 0.5)  # motifs a little off their grid
    mv = fv - 0.5 - 0.2 * (cell_hash(stripe, row, salt + 3) - 0.5)
    if rng.random() < 0.5:
        motif = (mu**2 + mv**2) < (0.11 + 0.08 * cell_jit) ** 2
    else:
        motif = (np.abs(mu) + np.abs(mv)) < 0.16 + 0.1 * cell_jit
    motif &= cell_hash(row, stripe, salt + 4) < 0.85  # some missing
    acc = _cell_colours(accent, cell_jit, cell_hash(row, stripe, salt + 1), 0.4)
    out = np.where(motif[..., None], acc, tone)
    blotch = n.fbm(u * 1.2, v * 1.2, octaves=3)
    fine = n.fbm(u * 25, v * 25, octaves=2)
    out = out * (0.78 + 0.35 * blotch + 0.15 * (fine - 0.5))[..., None]
    return decals(u, v, rng, out, chance=0.3, strength=0.6)


def plaster(u, v, rng, base: Rgb) -> np.ndarray:
    """Painted plaster: multi-scale mottling, patches of repaint, small dark spots and cracks."""
    n = ValueNoise(rng)
    m1 = n.fbm(u * 1.5, v * 1.5, octaves=3)
    m2 = n.fbm(u * 9, v * 9, octaves=3)
    patches = np.clip((n.fbm(u * 0.8 + 50, v * 0.8, octaves=2) - 0.55) * 8, 0, 1)
    spots = np.clip((n(u * 14 + 9, v * 14) - 0.8) * 6, 0, 1)
    cracks = np.clip(1 - np.abs(n.fbm(u * 3 + 99, v * 3, octaves=3) - 0.5) * 40, 0, 1)
    other = _rgb(jitter_colour(base, rng, 0.05, 0.15, 0.15))
    out = _rgb(base) * (1 - patches[..., None]) + other * patches[..., None]
    m3 = n.fbm(u * 24 + 31, v * 24, octaves=2)
    shade = 0.72 + 0.3 * m1 + 0.45 * (m2 - 0.5) + 0.2 * (m3 - 0.5) - 0.35 * spots - 0.3 * cracks
    return decals(u, v, rng, out * shade[..., None], cell_m=0.3, chance=0.4, strength=0.35)


def panels(u, v, rng, base: Rgb) -> np.ndarray:
    """Ceiling or wall panels: a grid of framed squares, each with its own tone and noise."""
    n = ValueNoise(rng)
    size = rng.uniform(0.5, 0.8)
    salt = int(rng.integers(1 << 30))
    i = np.floor(u / size)
    j = np.floor(v / size)
    tone = _cell_colours(base, cell_hash(i, j, salt), cell_hash(j, i, salt + 1), 0.18)
    fu = u / size - i
    fv = v / size - j
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv))
    frame = (edge < 0.06).astype(np.float32)
    bevel = ((edge > 0.06) & (edge < 0.1)).astype(np.float32)
    tex = n.fbm(u * 12, v * 12, octaves=3)
    dots = np.clip((n(u * 30, v * 30 + 5) - 0.75) * 5, 0, 1)
    shade = 0.82 + 0.25 * tex - 0.3 * frame - 0.12 * bevel - 0.2 * dots
    return decals(u, v, rng, tone * shade[..., None], cell_m=size * 0.8, chance=0.35, strength=0.45)


def fabric(u, v, rng, base: Rgb) -> np.ndarray:
    """Woven fabric: a patchwork of tones, a visible weave, pile noise and worn areas."""
    n = ValueNoise(rng)
    weave_f = rng.uniform(35, 55)
    weave = 0.5 + 0.5 * np.sin(u * weave_f * 2 * np.pi) * np.sin(v * weave_f * 2 * np.pi)
    cells = voronoi_ids(u, v, rng, rng.uniform(0.12, 0.25))
    salt = int(rng.integers(1 << 30))
    tone = _cell_colours(base, cell_hash(cells[0], cells[1], salt), cell_hash(cells[1], cells[0], salt), 0.3)
    pile = n.fbm(u * 15, v * 15, octaves=3)
    worn = n.fbm(u * 2, v * 2, octaves=2)
    shade = 0.72 + 0.12 * weave + 0.25 * pile + 0.2 * (worn - 0.5)
    return tone * shade[..., None]


def voronoi_ids(u, v, rng, size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered-grid Voronoi cells: (cell i, cell j, F2 - F1 edge distance in metres) per texel."""
    salt = int(rng.integers(1 << 30))
    gx = u / size
    gy = v / size
    ci = np.floor(gx)
    cj = np.floor(gy)
    best = np.full(gx.shape, np.inf, np.float32)
    second = np.full(gx.shape, np.inf, np.float32)
    bi = np.zeros(gx.shape, np.float32)
    bj = np.zeros(gx.shape, np.float32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ni = ci + di
            nj = cj + dj
            px = ni + 0.1 + 0.8 * cell_hash(ni, nj, salt)
            py = nj + 0.1 + 0.8 * cell_hash(nj, ni, salt + 1)
            d = ((px - gx) ** 2 + (py - gy) ** 2).astype(np.float32)
            closer = d < best
            second = np.where(closer, best, np.minimum(second, d))
            best = np.where(closer, d, best)
            bi = np.where(closer, ni, bi)
            bj = np.where(closer, nj, bj)
    edge = (np.sqrt(second) - np.sqrt(best)) * size
    return bi, bj, edge


def stones(u, v, rng, base: Rgb, size: float | None = None, joint: Rgb = (0.25, 0.24, 0.22)) -> np.ndarray:
    """Cobbles or flagstones: Voronoi cells with their own tone, rough faces and dark joints."""
    n = ValueNoise(rng)
    size = size if size is not None else rng.uniform(0.12, 0.3)
    i, j, edge = voronoi_ids(u, v, rng, size)
    salt = int(rng.integers(1 << 30))
    tone = _cell_colours(base, cell_hash(i, j, salt), cell_hash(j, i, salt), 0.4)
    rough = n.fbm(u * 25, v * 25, octaves=2)
    dirt = n.fbm(u * 0.7, v * 0.7, octaves=3)
    out = tone * (0.75 + 0.3 * rough + 0.3 * (dirt - 0.5))[..., None]
    j_w = size * 0.07
    return np.where((edge < j_w)[..., None], _rgb(joint) * (0.8 + 0.4 * rough[..., None]), out)


def grass(u, v, rng, base: Rgb = (0.3, 0.55, 0.2)) -> np.ndarray:
    """Lawn: greens at several scales, bare patches and small flowers."""
    n = ValueNoise(rng)
    a = n.fbm(u * 0.6, v * 0.6, octaves=3)
    b = n.fbm(u * 8, v * 8, octaves=3)
    c = n(u * 40, v * 40)
    dry = _rgb(mix(base, (0.62, 0.55, 0.3), 0.8))
    t = np.clip((a - 0.45) * 3, 0, 1)[..., None]
    out = _rgb(base) * (1 - t) + dry * t
    out = out * (0.7 + 0.35 * b + 0.2 * (c - 0.5))[..., None]
    cells = voronoi_ids(u, v, rng, 0.35)
    salt = int(rng.integers(1 << 30))
    h = cell_hash(cells[0], cells[1], salt)
    flower = (cells[2] > 0.1) & (h > 0.8)
    hue = cell_hash(cells[1], cells[0], salt)
    petals = np.stack([0.9 + 0 * hue, 0.3 + 0.6 * hue, 0.9 - 0.7 * hue], -1).astype(np.float32)
    return np.where(flower[..., None], petals, out)


def leaves(u, v, rng, base: Rgb = (0.2, 0.45, 0.18)) -> np.ndarray:
    """Foliage: small leaf cells of varied greens with dark gaps between them."""
    n = ValueNoise(rng)
    i, j, edge = voronoi_ids(u, v, rng, rng.uniform(0.05, 0.09))
    salt = int(rng.integers(1 << 30))
    tone = _cell_colours(base, cell_hash(i, j, salt), cell_hash(j, i, salt), 0.55)
    light = n.fbm(u * 2, v * 2, octaves=2)
    out = tone * (0.65 + 0.55 * light)[..., None]
    return np.where((edge < 0.008)[..., None], out * 0.35, out)


def bark(u, v, rng, base: Rgb = (0.36, 0.26, 0.18)) -> np.ndarray:
    """Tree bark: vertical ridges, deep furrows and lichen spots."""
    n = ValueNoise(rng)
    ridges = n.fbm(u * 25, v * 3, octaves=3)
    furrow = np.clip((0.45 - ridges) * 5, 0, 1)
    lichen = np.clip((n.fbm(u * 6 + 7, v * 6, octaves=2) - 0.68) * 6, 0, 1)
    out = _rgb(base) * (0.75 + 0.5 * ridges - 0.45 * furrow)[..., None]
    return out * (1 - lichen[..., None]) + _rgb((0.55, 0.6, 0.4)) * lichen[..., None]


def metal(u, v, rng, base: Rgb = (0.6, 0.61, 0.63)) -> np.ndarray:
    """Brushed metal: streaks along u, scratches and a few rust spots."""
    n = ValueNoise(rng)
    brush = n.fbm(u * 3, v * 80, octaves=3)
    scratch = np.clip((n(u * 8, v * 8 + 3) - 0.85) * 8, 0, 1)
    rust = np.clip((n.fbm(u * 5 + 4, v * 5, octaves=3) - 0.66) * 5, 0, 1)
    out = _rgb(base) * (0.75 + 0.4 * brush + 0.25 * scratch)[..., None]
    return out * (1 - rust[..., None]) + _rgb((0.5, 0.28, 0.14)) * rust[..., None]


def painting(u, v, rng, canvas_w_m: float, canvas_h_m: float) -> np.ndarray:
    """An abstract painting: coloured blobs and brush strokes on a canvas inside a wooden frame."""
    n = ValueNoise(rng)
    bg = jitter_colour((0.85, 0.8, 0.7), rng, 0.5, 0.4, 0.2)
    out = np.broadcast_to(_rgb(bg), u.shape + (3,)).copy()
    out *= (0.85 + 0.3 * n.fbm(u * 4, v * 4, octaves=3))[..., None]
    for _ in range(int(rng.integers(6, 12))):
        c = np.asarray(jitter_colour(tuple(rng.random(3)), rng, 0.1, 0.3, 0.2), np.float32)
        cx, cy = rng.uniform(0, canvas_w_m), rng.uniform(0, canvas_h_m)
        r = rng.uniform(0.04, 0.22) * min(canvas_w_m, canvas_h_m) * 2
        if rng.random() < 0.6:
            d = ((u - cx) ** 2 + (v - cy) ** 2) / r**2
            w = np.clip((1.0 - d) * 4 + (n(u * 20, v * 20) - 0.5) * 2, 0, 1)
        else:
            ang = rng.uniform(0, np.pi)
            along = (u - cx) * np.cos(ang) + (v - cy) * np.sin(ang)
            across = -(u - cx) * np.sin(ang) + (v - cy) * np.cos(ang)
            w = ((np.abs(along) < r) & (np.abs(across) < r * rng.uniform(0.06, 0.2))).astype(np.float32)
        out = out * (1 - w[..., None]) + c * w[..., None]
    frame_w = 0.035
    frame = (u < frame_w) | (v < frame_w) | (u > canvas_w_m - frame_w) | (v > canvas_h_m - frame_w)
    wood = planks(u, v, rng, (0.45, 0.3, 0.15))
    return np.where(frame[..., None], wood, out)


def rug(u, v, rng, base: Rgb, accent: Rgb, canvas_w_m: float, canvas_h_m: float) -> np.ndarray:
    """A rug: bordered bands around a field of nested diamonds, with pile noise."""
    n = ValueNoise(rng)
    cu, cv = canvas_w_m / 2, canvas_h_m / 2
    border = np.minimum(np.minimum(u, canvas_w_m - u), np.minimum(v, canvas_h_m - v))
    band = np.floor(border / 0.07)
    diamond = np.abs(u - cu) / canvas_w_m + np.abs(v - cv) / canvas_h_m
    ring = np.floor(diamond * rng.uniform(10, 16))
    pal = np.asarray(
        [
            base,
            accent,
            mix(base, (1, 1, 1), 0.5),
            mix(accent, (0, 0, 0), 0.4),
            jitter_colour(accent, rng, 0.2),
        ],
        np.float32,
    )
    idx = np.where(band < 4, band % 2 + 2, ring % 5).astype(np.int64)
    out = pal[idx]
    out *= (0.75 + 0.35 * n.fbm(u * 18, v * 18, octaves=3) + 0.2 * (n.fbm(u, v, 2) - 0.5))[..., None]
    return out


def facade(u, v, rng, base: Rgb, storey_m: float, bay_m: float) -> np.ndarray:
    """A building front: plaster or brick wall with a grid of framed windows, some lit, and storey bands."""
    wall = bricks(u, v, rng, base) if rng.random() < 0.4 else plaster(u, v, rng, base)
    n = ValueNoise(rng)
    salt = int(rng.integers(1 << 30))
    col = np.floor(u / bay_m)
    row = np.floor(v / storey_m)
    fu = u / bay_m - col
    fv = v / storey_m - row
    win_w = rng.uniform(0.3, 0.5)
    win_h = rng.uniform(0.35, 0.55)
    inside = (np.abs(fu - 0.5) < win_w / 2) & (np.abs(fv - 0.55) < win_h / 2) & (row >= 0)
    frame = (np.abs(fu - 0.5) < win_w / 2 + 0.04) & (np.abs(fv - 0.55) < win_h / 2 + 0.04) & ~inside
    lit = cell_hash(col, row, salt)
    glass = np.stack([0.15 + 0.6 * lit, 0.2 + 0.5 * lit, 0.28 + 0.25 * lit], -1).astype(np.float32)
    glass = glass * (0.7 + 0.5 * n.fbm(u * 3, v * 3, 2))[..., None]
    mullion = inside & ((np.abs(fu - 0.5) < 0.015) | (np.abs(fv - 0.55) < 0.02))
    frame_c = _rgb(jitter_colour((0.9, 0.9, 0.86), rng, 0.5, 0.4, 0.1))
    out = np.where(inside[..., None], glass, wall)
    out = np.where((frame | mullion)[..., None], frame_c, out)
    band = (fv < 0.04) & (row >= 1)
    return np.where(band[..., None], out * 0.6, out)


def labels(u, v, rng, base: Rgb) -> np.ndarray:
    """Printed packaging: horizontal colour bands, a checker or dot motif and fine print-like noise."""
    n = ValueNoise(rng)
    pal = [
        base,
        jitter_colour(base, rng, 0.5, 0.3, 0.3),
        (0.95, 0.94, 0.9),
        jitter_colour(base, rng, 0.3, 0.4, 0.4),
    ]
    pal_arr = np.asarray(pal, np.float32)
    band_h = rng.uniform(0.015, 0.04)
    band = np.floor(v / band_h)
    salt = int(rng.integers(1 << 30))
    idx = (cell_hash(band, band + 3, salt) * 4).astype(np.int64).clip(0, 3)
    out = pal_arr[idx]
    cell = rng.uniform(0.01, 0.025)
    checker = ((np.floor(u / cell) + np.floor(v / cell)) % 2 == 0) & (cell_hash(band, band, salt + 1) > 0.5)
    out = np.where(checker[..., None], out * 0.55, out)
    return out * (0.8 + 0.3 * n.fbm(u * 60, v * 60, 2) + 0.2 * (n.fbm(u * 8, v * 8, 2) - 0.5))[..., None]


def glow(u, v, rng, base: Rgb = (0.95, 0.93, 0.85)) -> np.ndarray:
    """A bright, nearly uniform panel (lamp shade, window light) with faint structure."""
    n = ValueNoise(rng)
    return _rgb(base) * (0.85 + 0.2 * n.fbm(u * 6, v * 6, 3))[..., None]


PATTERNS: dict[str, Callable[..., np.ndarray]] = {
    "planks": planks,
    "bricks": bricks,
    "tiles": tiles,
    "wallpaper": wallpaper,
    "plaster": plaster,
    "panels": panels,
    "fabric": fabric,
    "stones": stones,
    "grass": grass,
    "leaves": leaves,
    "bark": bark,
    "metal": metal,
    "painting": painting,
    "rug": rug,
    "facade": facade,
    "labels": labels,
    "glow": glow,
}
"""Every texture pattern by name."""


def bake(
    pattern: str,
    width_m: float,
    height_m: float,
    texels_per_m: float,
    rng: np.random.Generator,
    contrast: float = CONTRAST,
    **params,
) -> np.ndarray:
    """Bake ``pattern`` over ``width_m`` x ``height_m`` metres; returns [h, w, 3] float32 albedo in [0, 1].

    Texel (row r, column c) holds the pattern at the texel centre ``((c + 0.5) / texels_per_m, (r + 0.5) /
    texels_per_m)`` metres; ``contrast`` scales every texel's difference from the texture's mean colour; extra
    keyword parameters go to the pattern (colours, sizes).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown texture pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    if texels_per_m <= 0:
        raise ValueError(f"texels_per_m must be positive, got {texels_per_m}")
    w = max(2, int(np.ceil(width_m * texels_per_m)) + 1)
    h = max(2, int(np.ceil(height_m * texels_per_m)) + 1)
    u = ((np.arange(w, dtype=np.float64) + 0.5) / texels_per_m)[None, :].repeat(h, 0)  # [h, w]
    v = ((np.arange(h, dtype=np.float64) + 0.5) / texels_per_m)[:, None].repeat(w, 1)  # [h, w]
    img = np.asarray(PATTERNS[pattern](u, v, rng, **params), np.float32)
    if contrast != 1.0:
        mean = img.reshape(-1, 3).mean(0)
        img = mean + np.float32(contrast) * (img - mean)
    return np.clip(img, 0.0, 1.0).reshape(h, w, 3)
