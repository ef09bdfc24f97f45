"""Procedural 3D scenes of the reference generator, built from a seed and the words of a prompt.

Three kinds share one layout convention with the planner (world +y up, metres, floor at y = 0):

* ``room``: walls 2.5-4 m from the origin, ceiling about 2.7 m, furniture along the walls, pictures, a rug;
  the natural camera start (0, 1.5, 0) sees textured surfaces in every direction.
* ``courtyard``: paved ground at y = 0 with lawn beyond, buildings 8-15 m away, trees, benches, a sky;
  start (0, 1.6, 0).
* ``table``: a tabletop 0.75 m high at the origin with objects within 0.4 m, inside a room; viewed from about
  1.2 m away.

Colour words tint the scene ("a red room") or the object they qualify ("a red sofa"); object words ask for
those objects; number words before an object ask for that many. Moving objects (asked for by count or by words
such as "moving") follow a :class:`Motion` of the frame time, so every video shows them at the same place at the
same frame index. Pure numpy (textures, meshes); trimesh only for :meth:`Scene.export_glb`; must not import torch.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvd_scene.reference import shapes, textures
from cvd_scene.reference.shapes import Mesh
from cvd_scene.reference.textures import COLOURS, jitter_colour, mix

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("room", "courtyard", "table")
"""Scene kinds the reference generator builds."""

_KIND_WORDS = {
    "room": {
        "room",
        "bedroom",
        "kitchen",
        "office",
        "interior",
        "indoor",
        "indoors",
        "hall",
        "hallway",
        "studio",
        "apartment",
        "library",
        "lounge",
        "livingroom",
        "bathroom",
        "loft",
        "cabin",
        "attic",
    },
    "courtyard": {
        "courtyard",
        "yard",
        "street",
        "plaza",
        "square",
        "outdoor",
        "outdoors",
        "outside",
        "garden",
        "park",
        "city",
        "town",
        "village",
        "buildings",
        "building",
        "alley",
        "patio",
        "backyard",
        "piazza",
        "campus",
    },
    "table": {"tabletop", "table-top", "desk", "desktop", "still-life", "still", "countertop", "workbench"},
}

_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "several": 3,
    "many": 5,
    "some": 2,
    "pair": 2,
}
_NUMBER_NAMES = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

# Object words per kind: word -> (object type, plural). The builders know how to make each type.
_OBJECT_WORDS = {
    "room": {
        "sofa": "sofa",
        "sofas": "sofa",
        "couch": "sofa",
        "couches": "sofa",
        "bed": "bed",
        "beds": "bed",
        "shelf": "shelf",
        "shelves": "shelf",
        "bookshelf": "shelf",
        "bookcase": "shelf",
        "cabinet": "cabinet",
        "cabinets": "cabinet",
        "dresser": "cabinet",
        "cupboard": "cabinet",
        "table": "table",
        "tables": "table",
        "chair": "chair",
        "chairs": "chair",
        "armchair": "chair",
        "lamp": "lamp",
        "lamps": "lamp",
        "plant": "plant",
        "plants": "plant",
        "rug": "rug",
        "carpet": "rug",
        "painting": "painting",
        "paintings": "painting",
        "picture": "painting",
        "pictures": "painting",
        "box": "box",
        "boxes": "box",
        "ball": "ball",
        "balls": "ball",
    },
    "courtyard": {
        "tree": "tree",
        "trees": "tree",
        "bench": "bench",
        "benches": "bench",
        "fountain": "fountain",
        "building": "building",
        "buildings": "building",
        "house": "building",
        "houses": "building",
        "lamppost": "lamppost",
        "lampposts": "lamppost",
        "lamp": "lamppost",
        "lamps": "lamppost",
        "planter": "planter",
        "planters": "planter",
        "box": "box",
        "boxes": "box",
        "ball": "ball",
        "balls": "ball",
    },
    "table": {
        "cup": "cup",
        "cups": "cup",
        "mug": "cup",
        "mugs": "cup",
        "vase": "vase",
        "vases": "vase",
        "book": "book",
        "books": "book",
        "box": "box",
        "boxes": "box",
        "ball": "ball",
        "balls": "ball",
        "apple": "ball",
        "apples": "ball",
        "fruit": "ball",
        "bowl": "bowl",
        "bowls": "bowl",
        "bottle": "bottle",
        "bottles": "bottle",
        "can": "can",
        "cans": "can",
        "jar": "can",
        "jars": "can",
    },
}

_PLURALS = {
    "sofa": "sofas",
    "bed": "beds",
    "shelf": "shelves",
    "cabinet": "cabinets",
    "table": "tables",
    "chair": "chairs",
    "lamp": "lamps",
    "plant": "plants",
    "rug": "rugs",
    "painting": "paintings",
    "box": "boxes",
    "ball": "balls",
    "tree": "trees",
    "bench": "benches",
    "fountain": "fountains",
    "building": "buildings",
    "lamppost": "lamp posts",
    "planter": "planters",
    "cup": "cups",
    "vase": "vases",
    "book": "books",
    "bowl": "bowls",
    "bottle": "bottles",
    "can": "cans",
}
_DISPLAY = {"lamppost": "lamp post"}

_MOTION_WORDS = {
    "moving",
    "spinning",
    "rolling",
    "flying",
    "floating",
    "bouncing",
    "orbiting",
    "dynamic",
    "animated",
}


# ------------------------------------------------------------------------------------------ the scene


@dataclass(frozen=True)
class Motion:
    """Rigid motion of a moving object as a function of time: an orbit with a bob and a spin about +y.

    ``world_from_object(t) = translate(centre + orbit(t)) @ rotate_y(spin)``; the object's mesh is stored in
    its own frame (origin at its centre).
    """

    centre: tuple[float, float, float]
    """Centre of the orbit in the world, metres."""
    radius_m: float = 0.0
    """Orbit radius in the horizontal plane, metres."""
    orbit_rad_per_s: float = 0.0
    """Angular speed of the orbit, radians per second."""
    phase_rad: float = 0.0
    """Orbit angle at t = 0."""
    bob_m: float = 0.0
    """Amplitude of an up-and-down motion, metres."""
    bob_hz: float = 0.0
    """Frequency of the up-and-down motion."""
    spin_rad_per_s: float = 0.0
    """Spin about the object's own +y axis, radians per second."""

    def world_from_object(self, time_s: float) -> np.ndarray:
        """[4, 4] pose of the object at ``time_s``."""
        a = self.phase_rad + self.orbit_rad_per_s * time_s
        p = np.asarray(self.centre, np.float64) + np.array(
            [
                self.radius_m * np.cos(a),
                self.bob_m * np.sin(2 * np.pi * self.bob_hz * time_s),
                self.radius_m * np.sin(a),
            ]
        )
        T = np.eye(4)
        T[:3, :3] = shapes.rotation_y(self.spin_rad_per_s * time_s)
        T[:3, 3] = p
        return T


@dataclass
class Surface:
    """One textured part of a scene: a mesh, its baked albedo texture and, for moving objects, its motion."""

    name: str
    """What it is (``floor``, ``wall_north``, ``sofa``, ...), for people and captions."""
    mesh: Mesh
    """Geometry in the world frame, or in the object's frame when ``motion`` is set."""
    texture: np.ndarray
    """[h, w, 3] float32 albedo in [0, 1]; texel (r, c) covers uv (c, r) / ``texels_per_m`` metres."""
    texels_per_m: float
    """Texture resolution on the surface."""
    motion: Motion | None = None
    """None for static surfaces."""

    def vertices_at(self, time_s: float) -> np.ndarray:
        """[n, 3] world positions of the vertices at ``time_s``."""
        if self.motion is None:
            return self.mesh.vertices
        T = self.motion.world_from_object(time_s)
        return self.mesh.vertices @ T[:3, :3].T + T[:3, 3]


@dataclass(frozen=True)
class Lighting:
    """Fixed, view-independent shading: ``albedo * (ambient + sum_k intensity_k * max(0, n . direction_k))``."""

    ambient: float = 0.45
    """Light reaching every surface."""
    directions: tuple[tuple[float, float, float], ...] = ((0.35, 0.85, 0.4), (-0.5, -0.3, -0.6))
    """Unit-free directions towards each directional light (normalised when used)."""
    intensities: tuple[float, ...] = (0.5, 0.2)
    """Strength of each directional light."""


@dataclass
class Scene:
    """A procedural scene of the reference generator (world +y up, metres, floor at y = 0)."""

    kind: str
    """``room``, ``courtyard`` or ``table``."""
    prompt: str
    """The prompt it was built from."""
    seed: int
    """The seed it was built from (same prompt and seed: the same scene)."""
    caption: str
    """What was built, in words (e.g. ``a red room with a sofa, two lamps and a rug``)."""
    surfaces: list[Surface]
    """Every textured part."""
    lighting: Lighting
    """How surfaces are shaded."""
    sky: bool
    """Whether rays that hit nothing show a sky (courtyard); otherwise they are black (and masked out)."""
    start_position: np.ndarray
    """[3] the natural camera start (room (0, 1.5, 0), courtyard (0, 1.6, 0), table 1.2 m from the top)."""
    focus: np.ndarray
    """[3] a point the scene is arranged around (room centre at eye height, the tabletop, the plaza)."""
    objects: list[str] = field(default_factory=list)
    """Object types placed, one entry per object (for captions and statistics)."""
    _compiled: object = field(default=None, repr=False, compare=False)

    @property
    def moving(self) -> list[Surface]:
        """Surfaces with a motion."""
        return [s for s in self.surfaces if s.motion is not None]

    @property
    def bounds(self) -> np.ndarray:
        """[2, 3] min and max corner of every surface (moving ones over one orbit)."""
        pts = [s.mesh.vertices for s in self.surfaces if s.motion is None]
        for s in self.moving:
            for t in np.linspace(0, 20, 41):
                pts.append(s.vertices_at(float(t)))
        allp = np.concatenate(pts)
        return np.stack([allp.min(0), allp.max(0)])

    @property
    def num_texels(self) -> int:
        return int(sum(s.texture.shape[0] * s.texture.shape[1] for s in self.surfaces))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_compiled"] = None  # ray-casting structures are rebuilt on demand (they do not pickle)
        return state

    def export_glb(self, path: str | Path, time_s: float = 0.0, max_texture_px: int = 256) -> Path:
        """Write the scene's meshes in the world frame (at ``time_s``) to a binary glTF with textures.

        Textures are downsampled to at most ``max_texture_px`` on their longer side to keep the file small.
        """
        import trimesh
        from PIL import Image

        path = Path(path)
        tm_scene = trimesh.Scene()
        for i, s in enumerate(self.surfaces):
            m = s.mesh
            corners = s.vertices_at(time_s)[m.triangles].reshape(-1, 3)  # [3m, 3] unshared corners
            faces = np.arange(len(corners)).reshape(-1, 3)
            h, w = s.texture.shape[:2]
            uv = m.uv_m.reshape(-1, 2) * s.texels_per_m  # texel units
            uv = np.stack([uv[:, 0] / w, 1.0 - uv[:, 1] / h], -1)  # trimesh: v up from the image bottom
            scale = min(1.0, max_texture_px / max(h, w))
            img8 = (np.clip(s.texture, 0, 1) * 255 + 0.5).astype(np.uint8)
            pil = Image.fromarray(img8)
            if scale < 1.0:
                pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            material = trimesh.visual.material.PBRMaterial(
                name=f"{s.name}_{i}", baseColorTexture=pil, metallicFactor=0.0, roughnessFactor=1.0
            )
            visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
            mesh = trimesh.Trimesh(vertices=corners, faces=faces, visual=visual, process=False)
            tm_scene.add_geometry(mesh, node_name=f"{i:03d}_{s.name}", geom_name=f"{i:03d}_{s.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = tm_scene.export(file_type="glb")
        path.write_bytes(data)
        return path

    def describe(self) -> dict:
        """A JSON-able summary (kind, caption, bounds, objects, surfaces)."""
        b = self.bounds
        return {
            "kind": self.kind,
            "prompt": self.prompt,
            "seed": self.seed,
            "caption": self.caption,
            "bounds_m": b.tolist(),
            "start_position": self.start_position.tolist(),
            "focus": self.focus.tolist(),
            "objects": list(self.objects),
            "surfaces": len(self.surfaces),
            "moving_surfaces": [s.name for s in self.moving],
            "triangles": int(sum(len(s.mesh.triangles) for s in self.surfaces)),
            "texels": self.num_texels,
        }


# ---------------------------------------------------------------------------------------- prompt words


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9\-]+", prompt.lower())


def scene_kind_from_prompt(prompt: str, default: str = "room") -> str:
    """The scene kind a prompt's words name: ``room``, ``courtyard`` or ``table`` (``default`` when none does).

    Room and courtyard words win over table words ("a room with a table" is a room); among them the kind with
    more matching words wins, ties to the one named first.
    """
    words = _words(prompt)
    hits = {k: [i for i, w in enumerate(words) if w in _KIND_WORDS[k]] for k in KINDS}
    if "living" in words and "room" not in words:
        hits["room"].append(words.index("living"))
    if "still" in words and "life" not in words:
        hits["table"] = [i for i in hits["table"] if words[i] != "still"]
    place = [k for k in ("room", "courtyard") if hits[k]]
    if place:
        return max(place, key=lambda k: (len(hits[k]), -min(hits[k])))
    if hits["table"] or "table" in words or "tables" in words:
        return "table"
    if default not in KINDS:
        raise ValueError(f"default kind must be one of {', '.join(KINDS)}, got {default!r}")
    return default


@dataclass
class PromptWords:
    """What the builders take from a prompt."""

    tint: str | None = None
    """A colour word that qualifies the scene itself (``a red room``) or stands alone."""
    object_colours: dict[str, str] = field(default_factory=dict)
    """Object type -> colour word (``a red sofa``)."""
    object_counts: dict[str, int] = field(default_factory=dict)
    """Object type -> how many the prompt asks for."""
    moving: int = 0
    """Moving objects asked for by words ("a moving ball")."""


def parse_prompt(prompt: str, kind: str) -> PromptWords:
    """Colours, objects and counts of ``prompt`` for a scene of ``kind``."""
    words = _words(prompt)
    objects = _OBJECT_WORDS[kind]
    out = PromptWords()
    for i, w in enumerate(words):
        if w not in COLOURS:
            continue
        # The colour qualifies the next noun within two words: an object, the scene itself, or nothing.
        target = None
        for nxt in words[i + 1 : i + 3]:
            if nxt in objects:
                target = objects[nxt]
                break
            if nxt in _KIND_WORDS[kind] or nxt in ("room", "walls", "wall", "table", "ground"):
                break
        if target is None or (kind == "table" and target == "table"):
            out.tint = out.tint or w
        else:
            out.object_colours.setdefault(target, w)
    for i, w in enumerate(words):
        if w in objects:
            obj = objects[w]
            if kind == "table" and obj == "table":
                continue
            count = 1
            for prev in words[max(0, i - 3) : i][::-1]:
                if prev.isdigit():
                    count = int(prev)
                    break
                if prev in _NUMBERS:
                    count = _NUMBERS[prev]
                    break
            out.object_counts[obj] = max(out.object_counts.get(obj, 0), min(count, 8))
    if any(w in _MOTION_WORDS for w in words):
        out.moving = 1
    return out


def _count_phrase(obj: str, n: int, colour: str | None) -> str:
    name = _DISPLAY.get(obj, obj)
    if n == 1:
        word = f"{colour} {name}" if colour else name
        return ("an " if word[0] in "aeiou" else "a ") + word
    plural = _PLURALS.get(obj, obj + "s")
    return f"{_NUMBER_NAMES.get(n, str(n))} {colour + ' ' if colour else ''}{plural}"


def make_caption(
    kind: str, tint: str | None, objects: list[str], colours: dict[str, str], moving: list[str]
) -> str:
    """``a red room with a sofa, two lamps and a moving ball`` from what was built."""
    order: list[str] = []
    for o in objects:
        if o not in order:
            order.append(o)
    parts = [_count_phrase(o, objects.count(o), colours.get(o)) for o in order]
    parts += [_count_phrase(o, 1, None).replace(" ", " moving ", 1) for o in moving]
    head = {"room": "room", "courtyard": "courtyard", "table": "table"}[kind]
    lead = f"a {tint} {head}" if tint else f"a {head}"
    if kind == "table":
        lead = f"a {tint + ' ' if tint else ''}tabletop"
    if not parts:
        return lead
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{lead} with {body}"


# ------------------------------------------------------------------------------------------- building


class _Builder:
    """Collects surfaces, bakes their textures, keeps the footprints of placed objects."""

    def __init__(self, seed: int, kind: str, words: PromptWords, texels_per_m: float):
        self.rng = np.random.default_rng([seed, KINDS.index(kind), 7])
        self.seed = seed
        self.words = words
        self.density = texels_per_m
        self.surfaces: list[Surface] = []
        self.objects: list[str] = []
        self.footprints: list[tuple[float, float, float, float]] = []  # x0, z0, x1, z1
        self.pictures: list[tuple[str, float, float]] = []  # wall, position along it, width
        self.tint = COLOURS[words.tint] if words.tint else None

    def child_rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, len(self.surfaces), int(self.rng.integers(1 << 31))])

    def colour(self, base, obj: str | None = None, tint_weight: float = 0.0, jitter: float = 1.0):
        """A colour near ``base``: the prompt's colour for ``obj`` if it names one, else tinted by the scene's
        colour (by ``tint_weight``)."""
        rng = self.rng
        if obj is not None and obj in self.words.object_colours:
            return jitter_colour(COLOURS[self.words.object_colours[obj]], rng, 0.02, 0.05, 0.06)
        c = jitter_colour(base, rng, 0.04 * jitter, 0.12 * jitter, 0.12 * jitter)
        if self.tint is not None and tint_weight > 0:
            c = mix(c, jitter_colour(self.tint, rng, 0.02, 0.08, 0.08), tint_weight)
        return c

    def add(
        self,
        name: str,
        mesh: Mesh,
        pattern: str,
        density: float | None = None,
        motion: Motion | None = None,
        **params,
    ) -> Surface:
        d = density or self.density
        w_m, h_m = mesh.uv_extent_m
        tex = textures.bake(pattern, w_m, h_m, d, self.child_rng(), **params)
        s = Surface(name=name, mesh=mesh, texture=tex, texels_per_m=d, motion=motion)
        self.surfaces.append(s)
        return s

    def free(self, x0: float, z0: float, x1: float, z1: float, margin: float = 0.1) -> bool:
        for a0, b0, a1, b1 in self.footprints:
            if x0 < a1 + margin and a0 < x1 + margin and z0 < b1 + margin and b0 < z1 + margin:
                return False
        return True


def _wood(b: _Builder, obj: str | None = None):
    return b.colour(((0.55, 0.36, 0.2), (0.68, 0.5, 0.3), (0.38, 0.24, 0.14))[int(b.rng.integers(3))], obj)


def _fabric_colour(b: _Builder, obj: str | None = None):
    base = jitter_colour(tuple(b.rng.uniform(0.2, 0.8, 3)), b.rng, 0.0, 0.2, 0.1)
    return b.colour(base, obj, tint_weight=0.3)


# ---------------------------------------------------------------------------- room and its furniture


def _room_shell(
    b: _Builder, x0: float, x1: float, z0: float, z1: float, height: float, wall_density: float
) -> None:
    rng = b.rng
    W, D = x1 - x0, z1 - z0
    floor_pattern = ("planks", "tiles", "stones")[int(rng.integers(3))] if rng.random() < 0.85 else "fabric"
    floor = shapes.quad(np.array([x0, 0.0, z0]), np.array([W, 0.0, 0.0]), np.array([0.0, 0.0, D]))
    if floor_pattern == "planks":
        b.add("floor", floor, "planks", base=_wood(b))
    elif floor_pattern == "tiles":
        c1 = b.colour((0.8, 0.78, 0.72), tint_weight=0.15)
        c2 = b.colour((0.3, 0.3, 0.32), tint_weight=0.15)
        b.add("floor", floor, "tiles", colours=[c1, c2, mix(c1, c2, 0.5)])
    elif floor_pattern == "stones":
        b.add("floor", floor, "stones", base=b.colour((0.62, 0.58, 0.52), tint_weight=0.15), size=0.25)
    else:
        b.add("floor", floor, "fabric", base=b.colour((0.5, 0.42, 0.35), tint_weight=0.3))
    ceiling = shapes.quad(np.array([x0, height, z0]), np.array([W, 0.0, 0.0]), np.array([0.0, 0.0, D]))
    b.add(
        "ceiling", ceiling, "panels", density=wall_density, base=b.colour((0.88, 0.86, 0.8), tint_weight=0.1)
    )
    wall_base = b.colour(
        ((0.82, 0.74, 0.6), (0.6, 0.7, 0.75), (0.75, 0.62, 0.55), (0.7, 0.75, 0.6))[int(rng.integers(4))],
        tint_weight=0.75,
    )
    accent = b.colour(tuple(rng.uniform(0.15, 0.7, 3)), tint_weight=0.3)
    walls = {
        "wall_north": (np.array([x0, 0, z0]), np.array([W, 0, 0])),
        "wall_east": (np.array([x1, 0, z0]), np.array([0, 0, D])),
        "wall_south": (np.array([x1, 0, z1]), np.array([-W, 0, 0])),
        "wall_west": (np.array([x0, 0, z1]), np.array([0, 0, -D])),
    }
    style = ("wallpaper", "plaster", "bricks", "panels")
    first = int(rng.integers(4))
    for k, (name, (o, e)) in enumerate(walls.items()):
        pattern = style[(first + (k % 2) * int(rng.integers(1, 4))) % 4]
        q = shapes.quad(o, e.astype(np.float64), np.array([0.0, height, 0.0]))
        c = jitter_colour(wall_base, rng, 0.02, 0.06, 0.06)
        params = {"base": c, "accent": accent} if pattern == "wallpaper" else {"base": c}
        b.add(name, q, pattern, density=wall_density, **params)


def _wall_slots(x0, x1, z0, z1):
    """For each wall: (name, a point on it, unit direction along it, inward normal, length)."""
    return [
        ("north", np.array([x0, 0, z0]), np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), x1 - x0),
        ("east", np.array([x1, 0, z0]), np.array([0, 0, 1.0]), np.array([-1.0, 0, 0]), z1 - z0),
        ("south", np.array([x1, 0, z1]), np.array([-1.0, 0, 0]), np.array([0, 0, -1.0]), x1 - x0),
        ("west", np.array([x0, 0, z1]), np.array([0, 0, -1.0]), np.array([1.0, 0, 0]), z1 - z0),
    ]


def _place_against_wall(b: _Builder, slots, width: float, depth: float, tries: int = 40):
    """(centre on the floor, yaw) of a ``width`` x ``depth`` footprint backed against a random wall, or None."""
    for _ in range(tries):
        _, p, along, inward, length = slots[int(b.rng.integers(len(slots)))]
        if length < width + 0.4:
            continue
        s = b.rng.uniform(0.2 + width / 2, length - 0.2 - width / 2)
        c = p + along * s + inward * (depth / 2 + 0.03)
        yaw = np.arctan2(inward[0], inward[2])  # local +z (front) faces into the room
        hx = abs(along[0]) * width / 2 + abs(inward[0]) * depth / 2
        hz = abs(along[2]) * width / 2 + abs(inward[2]) * depth / 2
        if b.free(c[0] - hx, c[2] - hz, c[0] + hx, c[2] + hz):
            b.footprints.append((c[0] - hx, c[2] - hz, c[0] + hx, c[2] + hz))
            return c, yaw
    return None


def _local(parts: list[tuple[tuple, tuple]], centre, yaw) -> list[Mesh]:
    """Boxes given as (size, centre in the object's frame) placed at ``centre`` turned by ``yaw``."""
    R = shapes.rotation_y(yaw)
    return [shapes.box(size, R @ np.asarray(c, np.float64) + centre, yaw) for size, c in parts]


def _sofa(b: _Builder, slots) -> bool:
    w, d = b.rng.uniform(1.6, 2.2), b.rng.uniform(0.8, 0.95)
    spot = _place_against_wall(b, slots, w, d)
    if spot is None:
        return False
    c, yaw = spot
    parts = [
        ((w, 0.42, d), (0, 0.21, 0)),
        ((w, 0.45, 0.2), (0, 0.63, -d / 2 + 0.1)),
        ((0.18, 0.22, d), (-w / 2 + 0.09, 0.53, 0)),
        ((0.18, 0.22, d), (w / 2 - 0.09, 0.53, 0)),
    ]
    b.add("sofa", shapes.merge(_local(parts, c, yaw)), "fabric", base=_fabric_colour(b, "sofa"))
    return True


def _bed(b: _Builder, slots) -> bool:
    w, d = b.rng.uniform(1.4, 1.8), b.rng.uniform(1.9, 2.1)
    spot = _place_against_wall(b, slots, w, d)
    if spot is None:
        return False
    c, yaw = spot
    frame = _local([((w, 0.3, d), (0, 0.15, 0)), ((w, 0.6, 0.08), (0, 0.6, -d / 2 + 0.04))], c, yaw)
    b.add("bed_frame", shapes.merge(frame), "planks", base=_wood(b, "bed"))
    cover = _local([((w - 0.05, 0.18, d - 0.15), (0, 0.39, 0.05))], c, yaw)
    b.add("bed", shapes.merge(cover), "fabric", base=_fabric_colour(b, "bed"))
    return True


def _shelf(b: _Builder, slots) -> bool:
    w, d, h = b.rng.uniform(0.8, 1.4), 0.35, b.rng.uniform(1.6, 2.1)
    spot = _place_against_wall(b, slots, w, d)
    if spot is None:
        return False
    c, yaw = spot
    n_shelves = int(b.rng.integers(4, 6))
    parts = [
        ((0.03, h, d), (-w / 2 + 0.015, h / 2, 0)),
        ((0.03, h, d), (w / 2 - 0.015, h / 2, 0)),
        ((w, h, 0.02), (0, h / 2, -d / 2 + 0.01)),
    ]
    for k in range(n_shelves):
        parts.append(((w, 0.025, d), (0, 0.02 + k * (h - 0.04) / (n_shelves - 1), 0)))
    b.add("shelf", shapes.merge(_local(parts, c, yaw)), "planks", base=_wood(b, "shelf"))
    books = []
    for k in range(n_shelves - 1):
        y0 = 0.035 + k * (h - 0.04) / (n_shelves - 1)
        x = -w / 2 + 0.05
        while x < w / 2 - 0.08:
            bw = b.rng.uniform(0.025, 0.06)
            bh = b.rng.uniform(0.16, 0.27)
            if b.rng.random() < 0.85:
                books.append(((bw, bh, d * 0.75), (x + bw / 2, y0 + bh / 2, 0.02)))
            x += bw + 0.004
    if books:
        b.add(
            "books",
            shapes.merge(_local(books, c, yaw)),
            "labels",
            density=b.density * 1.5,
            base=b.colour(tuple(b.rng.uniform(0.2, 0.8, 3)), "book"),
        )
    return True


def _cabinet(b: _Builder, slots) -> bool:
    w, d, h = b.rng.uniform(0.8, 1.5), b.rng.uniform(0.4, 0.55), b.rng.uniform(0.7, 1.1)
    spot = _place_against_wall(b, slots, w, d)
    if spot is None:
        return False
    c, yaw = spot
    pattern = "panels" if b.rng.random() < 0.5 else "planks"
    b.add(
        "cabinet",
        shapes.merge(_local([((w, h, d), (0, h / 2, 0))], c, yaw)),
        pattern,
        base=_wood(b, "cabinet"),
    )
    if b.rng.random() < 0.7:  # a box on top
        s = b.rng.uniform(0.15, 0.3)
        b.add(
            "box",
            shapes.merge(_local([((s, s, s), (b.rng.uniform(-w / 3, w / 3), h + s / 2, 0))], c, yaw)),
            "labels",
            density=b.density * 2,
            base=b.colour(tuple(b.rng.uniform(0.2, 0.9, 3)), "box"),
        )
        b.objects.append("box")
    return True


def _table_with_chairs(b: _Builder, slots) -> bool:
    w, d = b.rng.uniform(1.0, 1.4), b.rng.uniform(0.7, 0.9)
    spot = _place_against_wall(b, slots, w, d + 0.7)
    if spot is None:
        return False
    c, yaw = spot
    R = shapes.rotation_y(yaw)
    tc = c + R @ np.array([0, 0, 0.35])
    legs = [
        ((0.05, 0.72, 0.05), (sx * (w / 2 - 0.05), 0.36, sz * (d / 2 - 0.05)))
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]
    parts = [((w, 0.04, d), (0, 0.74, 0))] + legs
    b.add("table", shapes.merge(_local(parts, tc, yaw)), "planks", base=_wood(b, "table"))
    for k in range(int(b.rng.integers(1, 3))):
        cc = tc + R @ np.array([(k - 0.5) * 0.5 if True else 0, 0, d / 2 + 0.25])
        seat = [((0.42, 0.04, 0.42), (0, 0.45, 0)), ((0.42, 0.45, 0.04), (0, 0.7, 0.2))]
        seat += [((0.04, 0.45, 0.04), (sx * 0.18, 0.225, sz * 0.18)) for sx in (-1, 1) for sz in (-1, 1)]
        b.add("chair", shapes.merge(_local(seat, cc, yaw)), "planks", base=_wood(b, "chair"))
        b.objects.append("chair")
    return True


def _lamp(b: _Builder, slots) -> bool:
    spot = _place_against_wall(b, slots, 0.45, 0.45)
    if spot is None:
        return False
    c, _ = spot
    h = b.rng.uniform(1.3, 1.7)
    stand = shapes.merge(
        [shapes.frustum(0.16, 0.14, 0.04, c), shapes.frustum(0.02, 0.02, h - 0.3, c + [0, 0.04, 0], 12)]
    )
    b.add("lamp_stand", stand, "metal", base=b.colour((0.6, 0.6, 0.62)))
    shade = shapes.frustum(0.22, 0.13, 0.3, c + [0, h - 0.3, 0], caps=False)
    b.add("lamp", shade, "fabric", base=b.colour((0.9, 0.85, 0.7), "lamp"))
    return True


def _plant(b: _Builder, slots) -> bool:
    spot = _place_against_wall(b, slots, 0.5, 0.5)
    if spot is None:
        return False
    c, _ = spot
    ph = b.rng.uniform(0.3, 0.5)
    b.add("pot", shapes.frustum(0.17, 0.21, ph, c), "labels", base=b.colour((0.7, 0.4, 0.25), "plant"))
    r = b.rng.uniform(0.3, 0.45)
    foliage = shapes.ellipsoid((r, r * b.rng.uniform(1.0, 1.6), r), c + [0, ph + r * 0.9, 0])
    b.add("plant", foliage, "leaves", base=b.colour((0.22, 0.48, 0.2)))
    return True


def _painting(b: _Builder, slots, height: float) -> bool:
    """A picture on a random wall, clear of the other pictures (it may hang above low furniture)."""
    name, p, along, inward, length = slots[int(b.rng.integers(len(slots)))]
    w, h = b.rng.uniform(0.5, 1.2), b.rng.uniform(0.4, 0.9)
    if length < w + 0.8:
        return False
    for _ in range(20):
        s = b.rng.uniform(0.3 + w / 2, length - 0.3 - w / 2)
        if any(n2 == name and abs(s - s2) < (w + w2) / 2 + 0.2 for n2, s2, w2 in b.pictures):
            continue
        b.pictures.append((name, s, w))
        y = b.rng.uniform(1.2, min(2.0, height - h / 2 - 0.15))
        origin = p + along * (s - w / 2) + inward * 0.025 + np.array([0.0, y - h / 2, 0.0])
        q = shapes.quad(origin, along * w, np.array([0.0, h, 0.0]))
        b.add("painting", q, "painting", density=b.density * 1.5, canvas_w_m=w, canvas_h_m=h)
        return True
    return False


def _rug(b: _Builder, x0, x1, z0, z1) -> None:
    w, d = b.rng.uniform(1.6, 2.6), b.rng.uniform(1.2, 2.0)
    cx, cz = b.rng.uniform(-0.3, 0.3), b.rng.uniform(-0.3, 0.3)
    q = shapes.quad(
        np.array([cx - w / 2, 0.006, cz - d / 2]), np.array([w, 0.0, 0.0]), np.array([0.0, 0.0, d])
    )
    base = b.colour(tuple(b.rng.uniform(0.3, 0.75, 3)), "rug", tint_weight=0.4)
    accent = b.colour(tuple(b.rng.uniform(0.1, 0.8, 3)))
    b.add("rug", q, "rug", base=base, accent=accent, canvas_w_m=w, canvas_h_m=d)


def _ceiling_lamp(b: _Builder, height: float) -> None:
    c = np.array([b.rng.uniform(-0.4, 0.4), height - 0.45, b.rng.uniform(-0.4, 0.4)])
    b.add("ceiling_lamp_cord", shapes.frustum(0.01, 0.01, 0.4, c + [0, 0.05, 0], 8), "metal")
    b.add(
        "ceiling_lamp",
        shapes.frustum(0.25, 0.08, 0.2, c - [0, 0.15, 0], caps=False),
        "glow",
        base=b.colour((0.95, 0.9, 0.75)),
    )


_ROOM_FURNITURE = {
    "sofa": _sofa,
    "bed": _bed,
    "shelf": _shelf,
    "cabinet": _cabinet,
    "table": _table_with_chairs,
    "lamp": _lamp,
    "plant": _plant,
}


def _build_room(b: _Builder, words: PromptWords) -> dict:
    rng = b.rng
    # Walls 2.7-3.8 m from the origin (the planner's proxy room has walls at +-3 m).
    W, D = 2 * rng.uniform(2.9, 3.6), 2 * rng.uniform(2.9, 3.6)
    ox, oz = rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)
    x0, x1, z0, z1 = ox - W / 2, ox + W / 2, oz - D / 2, oz + D / 2
    height = rng.uniform(2.6, 2.8)
    _room_shell(b, x0, x1, z0, z1, height, b.density)
    slots = _wall_slots(x0, x1, z0, z1)
    # Leave a doorway-free band: a door on one wall.
    name, p, along, inward, length = slots[int(rng.integers(4))]
    s = rng.uniform(0.8, length - 0.8)
    door_c = p + along * s + inward * 0.015
    b.pictures.append((name, s, 1.0))  # pictures keep clear of the door
    b.add(
        "door",
        shapes.quad(door_c - along * 0.45, along * 0.9, np.array([0.0, 2.05, 0.0])),
        "planks",
        base=_wood(b, "door"),
    )
    b.footprints.append(
        tuple(
            np.r_[
                np.minimum(door_c - along * 0.6, door_c + along * 0.6)[[0, 2]] - 0.5,
                np.maximum(door_c - along * 0.6, door_c + along * 0.6)[[0, 2]] + 0.5,
            ]
        )
    )
    wanted = dict(words.object_counts)
    default = [
        k for k in ("sofa", "shelf", "cabinet", "table", "lamp", "plant", "bed") if rng.random() < 0.55
    ]
    for obj in default:
        wanted.setdefault(obj, 1)
    if len([k for k in wanted if k in _ROOM_FURNITURE]) < 3:
        for obj in rng.permutation(["sofa", "shelf", "cabinet", "plant", "lamp"]):
            wanted.setdefault(str(obj), 1)
            if len([k for k in wanted if k in _ROOM_FURNITURE]) >= 3:
                break
    for obj, fn in _ROOM_FURNITURE.items():
        for _ in range(wanted.get(obj, 0)):
            if fn(b, slots):
                b.objects.append(obj)
    for _ in range(max(wanted.get("painting", 0), int(rng.integers(2, 5)))):
        if _painting(b, slots, height):
            b.objects.append("painting")
    if wanted.get("rug", 0) or rng.random() < 0.8:
        _rug(b, x0, x1, z0, z1)
        b.objects.append("rug")
    if rng.random() < 0.6:
        _ceiling_lamp(b, height)
    for k in range(wanted.get("box", 0)):
        s = rng.uniform(0.25, 0.45)
        for _ in range(30):
            cx, cz = rng.uniform(x0 + 0.4, x1 - 0.4), rng.uniform(z0 + 0.4, z1 - 0.4)
            if np.hypot(cx, cz) > 1.2 and b.free(cx - s / 2, cz - s / 2, cx + s / 2, cz + s / 2):
                b.footprints.append((cx - s / 2, cz - s / 2, cx + s / 2, cz + s / 2))
                b.add(
                    "box",
                    shapes.box((s, s, s), (cx, s / 2, cz), rng.uniform(0, np.pi)),
                    "labels",
                    density=b.density * 2,
                    base=b.colour(tuple(rng.uniform(0.2, 0.9, 3)), "box"),
                )
                b.objects.append("box")
                break
    return {
        "start": np.array([0.0, 1.5, 0.0]),
        "focus": np.array([ox, 1.3, oz]),
        "moving_area": (np.array([0.0, 0.0, 0.0]), 1.6, 0.25, height - 0.4),
    }


# ------------------------------------------------------------------------------------------ courtyard


def _building(b: _Builder, centre, yaw, w, d, h) -> None:
    rng = b.rng
    base = b.colour(
        ((0.78, 0.7, 0.58), (0.7, 0.45, 0.35), (0.85, 0.82, 0.75), (0.6, 0.6, 0.62))[int(rng.integers(4))],
        "building",
        tint_weight=0.5,
    )
    body = shapes.box((w, h, d), (centre[0], h / 2, centre[2]), yaw)
    storey = rng.uniform(2.8, 3.4)
    bay = rng.uniform(2.2, 3.2)
    b.add("building", body, "facade", density=b.density * 0.45, base=base, storey_m=storey, bay_m=bay)
    roof_h = rng.uniform(0.4, 1.0)
    roof = shapes.box((w + 0.3, roof_h, d + 0.3), (centre[0], h + roof_h / 2, centre[2]), yaw)
    b.add(
        "roof",
        roof,
        "tiles",
        density=b.density * 0.3,
        colours=[b.colour((0.55, 0.25, 0.2)), b.colour((0.4, 0.2, 0.18)), b.colour((0.3, 0.3, 0.32))],
    )


def _tree(b: _Builder, x: float, z: float) -> None:
    rng = b.rng
    th = rng.uniform(1.6, 2.6)
    r = rng.uniform(0.12, 0.22)
    b.add(
        "trunk",
        shapes.frustum(r * 1.3, r * 0.8, th, (x, 0, z), 12),
        "bark",
        density=b.density * 2,
        base=b.colour((0.36, 0.26, 0.18)),
    )
    for k in range(int(rng.integers(1, 4))):
        cr = rng.uniform(0.8, 1.5)
        c = (x + rng.uniform(-0.5, 0.5), th + cr * 0.7 + k * 0.4, z + rng.uniform(-0.5, 0.5))
        b.add(
            "tree",
            shapes.ellipsoid((cr, cr * rng.uniform(0.8, 1.2), cr), c),
            "leaves",
            density=b.density * 0.8,
            base=b.colour((0.22, 0.5, 0.2), "tree", tint_weight=0.2),
        )


def _bench(b: _Builder, x: float, z: float, yaw: float) -> None:
    c = np.array([x, 0.0, z])
    parts = [
        ((1.6, 0.05, 0.45), (0, 0.45, 0)),
        ((1.6, 0.4, 0.05), (0, 0.7, -0.2)),
        ((0.06, 0.45, 0.4), (-0.7, 0.225, 0)),
        ((0.06, 0.45, 0.4), (0.7, 0.225, 0)),
    ]
    b.add(
        "bench",
        shapes.merge(_local(parts, c, yaw)),
        "planks",
        density=b.density * 1.5,
        base=_wood(b, "bench"),
    )


def _lamppost(b: _Builder, x: float, z: float) -> None:
    post = shapes.merge(
        [
            shapes.frustum(0.08, 0.05, 3.2, (x, 0, z), 12),
            shapes.ellipsoid((0.2, 0.25, 0.2), (x, 3.4, z), 12, 8),
        ]
    )
    b.add("lamppost", post, "metal", density=b.density * 2, base=b.colour((0.2, 0.22, 0.2), "lamppost"))


def _fountain(b: _Builder) -> None:
    r = b.rng.uniform(1.0, 1.5)
    b.add(
        "fountain",
        shapes.merge(
            [shapes.frustum(r, r, 0.5, (0, 0, 0), 32), shapes.frustum(0.2, 0.15, 1.2, (0, 0.5, 0), 16)]
        ),
        "stones",
        density=b.density * 2,
        base=b.colour((0.7, 0.68, 0.62), "fountain"),
        size=0.15,
    )


def _build_courtyard(b: _Builder, words: PromptWords) -> dict:
    rng = b.rng
    plaza = rng.uniform(8.5, 10.0)  # half size of the paved square
    paving = shapes.quad(
        np.array([-plaza, 0.0, -plaza]), np.array([2 * plaza, 0.0, 0.0]), np.array([0.0, 0.0, 2 * plaza])
    )
    if rng.random() < 0.5:
        b.add(
            "ground",
            paving,
            "stones",
            base=b.colour((0.62, 0.58, 0.52), tint_weight=0.2),
            size=rng.uniform(0.2, 0.35),
        )
    else:
        b.add(
            "ground",
            paving,
            "tiles",
            colours=[b.colour((0.7, 0.66, 0.6)), b.colour((0.5, 0.45, 0.4)), b.colour((0.62, 0.55, 0.45))],
        )
    outer = 40.0
    lawn_density = b.density * 0.2
    for name, o, eu, ev in (
        ("lawn_n", (-outer, 0, -outer), (2 * outer, 0, 0), (0, 0, outer - plaza)),
        ("lawn_s", (-outer, 0, plaza), (2 * outer, 0, 0), (0, 0, outer - plaza)),
        ("lawn_w", (-outer, 0, -plaza), (outer - plaza, 0, 0), (0, 0, 2 * plaza)),
        ("lawn_e", (plaza, 0, -plaza), (outer - plaza, 0, 0), (0, 0, 2 * plaza)),
    ):
        b.add(
            name,
            shapes.quad(np.array(o, float), np.array(eu, float), np.array(ev, float)),
            "grass",
            density=lawn_density,
            base=b.colour((0.3, 0.52, 0.2)),
        )
    n_build = max(words.object_counts.get("building", 0), int(rng.integers(5, 8)))
    angles = np.sort(
        (
            rng.uniform(0, 2 * np.pi)
            + np.arange(n_build) * 2 * np.pi / n_build
            + rng.uniform(-0.2, 0.2, n_build)
        )
        % (2 * np.pi)
    )
    for a in angles:
        dist = rng.uniform(10.0, 14.0)
        w, d, h = rng.uniform(6, 10), rng.uniform(5, 8), rng.uniform(6, 14)
        c = np.array([np.cos(a) * (dist + d / 2), 0, np.sin(a) * (dist + d / 2)])
        yaw = -a + np.pi / 2
        _building(b, c, yaw, w, d, h)
        b.objects.append("building")
    if words.object_counts.get("fountain", 0) or rng.random() < 0.4:
        # The fountain stands off-centre so the start (0, 1.6, 0) is free.
        _fountain_at = np.array(
            [rng.choice([-1, 1]) * rng.uniform(3.5, 5), 0, rng.choice([-1, 1]) * rng.uniform(3.5, 5)]
        )
        before = len(b.surfaces)
        _fountain(b)
        for s in b.surfaces[before:]:
            s.mesh = s.mesh.transformed(np.eye(3), _fountain_at)
        b.footprints.append(
            (_fountain_at[0] - 1.6, _fountain_at[2] - 1.6, _fountain_at[0] + 1.6, _fountain_at[2] + 1.6)
        )
        b.objects.append("fountain")
    n_trees = max(words.object_counts.get("tree", 0), int(rng.integers(3, 7)))
    placed = 0
    for _ in range(200):
        if placed >= n_trees:
            break
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(3.5, 7.5)
        x, z = r * np.cos(a), r * np.sin(a)
        if b.free(x - 1.2, z - 1.2, x + 1.2, z + 1.2, margin=0.3):
            b.footprints.append((x - 1.2, z - 1.2, x + 1.2, z + 1.2))
            _tree(b, x, z)
            b.objects.append("tree")
            placed += 1
    extras = [
        ("bench", max(words.object_counts.get("bench", 0), int(rng.integers(1, 4)))),
        ("lamppost", max(words.object_counts.get("lamppost", 0), int(rng.integers(1, 4)))),
        ("planter", max(words.object_counts.get("planter", 0), int(rng.integers(0, 3)))),
        ("box", words.object_counts.get("box", 0)),
    ]
    for obj, n in extras:
        for _ in range(n):
            for _try in range(60):
                a, r = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 8.0)
                x, z = r * np.cos(a), r * np.sin(a)
                if b.free(x - 0.9, z - 0.9, x + 0.9, z + 0.9):
                    b.footprints.append((x - 0.9, z - 0.9, x + 0.9, z + 0.9))
                    if obj == "bench":
                        _bench(b, x, z, -a - np.pi / 2)
                    elif obj == "lamppost":
                        _lamppost(b, x, z)
                    elif obj == "planter":
                        b.add(
                            "planter",
                            shapes.box((1.2, 0.5, 0.8), (x, 0.25, z), rng.uniform(0, np.pi)),
                            "bricks",
                            density=b.density * 1.5,
                            base=b.colour((0.6, 0.35, 0.25)),
                        )
                        b.add("bush", shapes.ellipsoid((0.55, 0.35, 0.4), (x, 0.6, z)), "leaves")
                    else:
                        s = rng.uniform(0.4, 0.7)
                        b.add(
                            "box",
                            shapes.box((s, s, s), (x, s / 2, z), rng.uniform(0, np.pi)),
                            "labels",
                            density=b.density * 2,
                            base=b.colour(tuple(rng.uniform(0.2, 0.9, 3)), "box"),
                        )
                    b.objects.append(obj)
                    break
    return {
        "start": np.array([0.0, 1.6, 0.0]),
        "focus": np.array([0.0, 1.6, 0.0]),
        "moving_area": (np.array([0.0, 0.0, 0.0]), 3.0, 0.4, 2.0),
    }


# ---------------------------------------------------------------------------------------------- table


_TABLE_TOP_Y = 0.75


def _table_object(b: _Builder, obj: str, x: float, z: float) -> float:
    """Place one tabletop object at (x, z); returns its footprint radius."""
    rng = b.rng
    y = _TABLE_TOP_Y
    d = b.density * 4
    col = b.colour(tuple(rng.uniform(0.15, 0.9, 3)), obj)
    if obj == "cup":
        r, h = rng.uniform(0.04, 0.055), rng.uniform(0.08, 0.11)
        b.add("cup", shapes.frustum(r * 0.85, r, h, (x, y, z)), "labels", density=d, base=col)
        return r
    if obj == "vase":
        r, h = rng.uniform(0.05, 0.08), rng.uniform(0.18, 0.3)
        m = shapes.merge(
            [
                shapes.frustum(r * 0.7, r, h * 0.6, (x, y, z)),
                shapes.frustum(r, r * 0.45, h * 0.4, (x, y + h * 0.6, z)),
            ]
        )
        b.add("vase", m, "wallpaper", density=d, base=col, accent=jitter_colour(col, rng, 0.4, 0.3, 0.3))
        return r
    if obj == "bottle":
        r, h = rng.uniform(0.03, 0.04), rng.uniform(0.2, 0.28)
        m = shapes.merge(
            [
                shapes.frustum(r, r, h * 0.65, (x, y, z)),
                shapes.frustum(r, r * 0.35, h * 0.15, (x, y + h * 0.65, z)),
                shapes.frustum(r * 0.35, r * 0.35, h * 0.2, (x, y + h * 0.8, z), 12),
            ]
        )
        b.add("bottle", m, "labels", density=d, base=col)
        return r
    if obj == "can":
        r, h = rng.uniform(0.033, 0.045), rng.uniform(0.1, 0.14)
        b.add("can", shapes.frustum(r, r, h, (x, y, z)), "labels", density=d, base=col)
        return r
    if obj == "bowl":
        r = rng.uniform(0.08, 0.12)
        b.add(
            "bowl",
            shapes.frustum(r * 0.55, r, r * 0.6, (x, y, z)),
            "wallpaper",
            density=d,
            base=col,
            accent=jitter_colour(col, rng, 0.5, 0.2, 0.3),
        )
        return r
    if obj == "ball":
        r = rng.uniform(0.035, 0.06)
        b.add("ball", shapes.ellipsoid((r, r, r), (x, y + r, z), 20, 10), "fabric", density=d, base=col)
        return r
    if obj == "book":
        w, dd, h = rng.uniform(0.13, 0.2), rng.uniform(0.18, 0.25), rng.uniform(0.02, 0.04)
        n = int(rng.integers(1, 4))
        yaw = rng.uniform(0, np.pi)
        stack = [
            shapes.box((w, h, dd), (x, y + h * (k + 0.5), z), yaw + rng.uniform(-0.2, 0.2)) for k in range(n)
        ]
        b.add("book", shapes.merge(stack), "labels", density=d, base=col)
        return 0.5 * float(np.hypot(w, dd))
    s = rng.uniform(0.06, 0.12)  # box
    b.add(
        "box",
        shapes.box((s, s * rng.uniform(0.6, 1.4), s), (x, y + s * 0.5 * 1.0, z), rng.uniform(0, np.pi)),
        "labels",
        density=d,
        base=col,
    )
    return s * 0.72


def _build_table(b: _Builder, words: PromptWords) -> dict:
    rng = b.rng
    # The room around the table: closed, so every view has a textured background.
    half = rng.uniform(2.6, 3.4)
    room_words = PromptWords(tint=None)
    saved = b.tint
    b.tint = None
    _room_shell(b, -half, half, -half, half, rng.uniform(2.6, 2.8), b.density)
    b.tint = saved
    slots = _wall_slots(-half, half, -half, half)
    for _ in range(int(rng.integers(2, 4))):
        _painting(b, slots, 2.7)
    for fn in (_shelf, _cabinet, _plant):
        b.footprints.append((-1.2, -1.2, 1.2, 1.2))
        fn(b, slots)
    b.objects = []  # the caption speaks of the tabletop
    del room_words
    w, d = rng.uniform(1.1, 1.5), rng.uniform(0.8, 1.0)
    top_colour = b.colour(_wood(b), "table", tint_weight=0.6)
    top = shapes.box((w, 0.04, d), (0, _TABLE_TOP_Y - 0.02, 0))
    if rng.random() < 0.5:
        b.add("tabletop", top, "planks", density=b.density * 2, base=top_colour)
    else:
        b.add("tabletop", top, "fabric", density=b.density * 2, base=top_colour)
    legs = [
        shapes.box(
            (0.06, _TABLE_TOP_Y - 0.04, 0.06),
            (sx * (w / 2 - 0.06), (_TABLE_TOP_Y - 0.04) / 2, sz * (d / 2 - 0.06)),
        )
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]
    b.add("table_legs", shapes.merge(legs), "planks", base=_wood(b))
    wanted: list[str] = []
    for obj, n in words.object_counts.items():
        wanted += [obj] * n
    kinds = ["cup", "vase", "book", "box", "ball", "bowl", "bottle", "can"]
    for _ in range(max(0, int(rng.integers(4, 8)) - len(wanted))):
        wanted.append(kinds[int(rng.integers(len(kinds)))])
    placed: list[tuple[float, float, float]] = []
    for obj in wanted[:10]:
        for _try in range(60):
            r = np.sqrt(rng.uniform(0, 1)) * 0.33
            a = rng.uniform(0, 2 * np.pi)
            x, z = r * np.cos(a), r * np.sin(a)
            est = 0.13 if obj == "book" else 0.1
            if all(np.hypot(x - px, z - pz) > est + pr + 0.02 for px, pz, pr in placed):
                fr = _table_object(b, obj, x, z)
                placed.append((x, z, fr))
                b.objects.append(obj)
                break
    return {
        "start": np.array([0.0, 1.25, 1.2]),
        "focus": np.array([0.0, _TABLE_TOP_Y + 0.05, 0.0]),
        "moving_area": (np.array([0.0, _TABLE_TOP_Y, 0.0]), 0.25, 0.28, 0.0),
    }


# -------------------------------------------------------------------------------------- moving objects


def _add_moving(b: _Builder, n: int, area) -> list[str]:
    """``n`` moving objects (balls and spinning boxes) orbiting the area's centre, synchronised by time."""
    centre, radius, height, bob = area
    names = []
    small = radius < 0.5
    for k in range(n):
        rng = b.rng
        size = rng.uniform(0.04, 0.06) if small else rng.uniform(0.2, 0.35)
        obj = "ball" if k % 2 == 0 else "box"
        if obj == "ball":
            mesh = shapes.ellipsoid((size, size, size), (0, 0, 0), 20, 10)
        else:
            mesh = shapes.box((size * 1.6, size * 1.6, size * 1.6), (0, 0, 0))
        motion = Motion(
            centre=(
                float(centre[0]),
                float(centre[1] + height + size * (0 if small else 1)),
                float(centre[2]),
            ),
            radius_m=float(radius * rng.uniform(0.8, 1.0)),
            orbit_rad_per_s=float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0)),
            phase_rad=float(rng.uniform(0, 2 * np.pi) + k * np.pi),
            bob_m=float(0 if small else min(bob, 0.3) * rng.uniform(0.3, 1.0)),
            bob_hz=float(rng.uniform(0.3, 0.6)),
            spin_rad_per_s=float(rng.uniform(1.0, 2.5)),
        )
        col = b.colour(tuple(rng.uniform(0.2, 0.9, 3)), obj)
        b.add(obj, mesh, "labels", density=b.density * (4 if small else 2), motion=motion, base=col)
        names.append(obj)
    return names


# ---------------------------------------------------------------------------------------------- entry


DEFAULT_TEXELS_PER_M = {"room": 90.0, "courtyard": 50.0, "table": 90.0}
"""Base texture resolution of each kind (objects use multiples of it)."""


def build_scene(
    prompt: str,
    seed: int,
    kind: str | None = None,
    moving_objects: int | None = None,
    texels_per_m: float | None = None,
) -> Scene:
    """A procedural scene from a prompt's words and a seed (the same arguments always give the same scene).

    Args:
        prompt: Text whose words choose the kind (unless ``kind`` is given), colours, objects and counts.
        seed: Seed of every random choice.
        kind: ``room``, ``courtyard`` or ``table``; None picks it with :func:`scene_kind_from_prompt`.
        moving_objects: Number of moving objects; None takes it from the prompt's words (``moving``, ``spinning``,
            ... ask for one), default none.
        texels_per_m: Base texture resolution; None uses :data:`DEFAULT_TEXELS_PER_M` of the kind.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    kind = scene_kind_from_prompt(prompt) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; kinds are {', '.join(KINDS)}")
    if moving_objects is not None and not 0 <= moving_objects <= 8:
        raise ValueError(f"moving_objects must be in 0..8, got {moving_objects}")
    words = parse_prompt(prompt, kind)
    density = float(texels_per_m or DEFAULT_TEXELS_PER_M[kind])
    b = _Builder(int(seed) & 0x7FFFFFFF, kind, words, density)
    layout = {"room": _build_room, "courtyard": _build_courtyard, "table": _build_table}[kind](b, words)
    n_moving = words.moving if moving_objects is None else moving_objects
    moving = _add_moving(b, n_moving, layout["moving_area"]) if n_moving else []
    caption_colours = {o: c for o, c in words.object_colours.items() if o in b.objects}
    caption = make_caption(kind, words.tint, b.objects, caption_colours, moving)
    if kind == "courtyard":
        lighting = Lighting(
            ambient=0.5, directions=((0.45, 0.8, 0.35), (-0.6, 0.3, -0.5)), intensities=(0.55, 0.15)
        )
    else:
        lighting = Lighting()
    scene = Scene(
        kind=kind,
        prompt=prompt,
        seed=int(seed),
        caption=caption,
        surfaces=b.surfaces,
        lighting=lighting,
        sky=kind == "courtyard",
        start_position=layout["start"],
        focus=layout["focus"],
        objects=list(b.objects) + moving,
    )
    log.debug(
        "built %s scene (seed %d): %s; %d surfaces, %.1f M texels",
        kind,
        seed,
        caption,
        len(b.surfaces),
        scene.num_texels / 1e6,
    )
    return scene
