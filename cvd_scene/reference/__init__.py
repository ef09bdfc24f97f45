"""The reference generator: procedural 3D scenes and a CPU ray caster that renders them along any plan.

It produces what a perfect multi-view video model would: videos of one static (or rigidly moving) scene that
agree exactly across views, with ground-truth depth and the scene mesh. The demo's default generator, the upper
bound of every consistency and reconstruction metric, and training data for our own small model.

numpy, open3d (rendering) and trimesh (mesh export) only; must not import torch or the model package ``cvd``.
"""

from cvd_scene.reference.render import RenderOutput, cast, render, render_clip, shade
from cvd_scene.reference.scene import (
    KINDS,
    Lighting,
    Motion,
    Scene,
    Surface,
    build_scene,
    parse_prompt,
    scene_kind_from_prompt,
)

__all__ = [
    "KINDS",
    "Lighting",
    "Motion",
    "RenderOutput",
    "Scene",
    "Surface",
    "build_scene",
    "cast",
    "parse_prompt",
    "render",
    "render_clip",
    "scene_kind_from_prompt",
    "shade",
]
