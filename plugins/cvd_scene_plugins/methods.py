"""nerfstudio method entry points ``cvd-scene`` and ``cvd-scene-nerf`` (configs in :mod:`cvd_scene.fit.methods`)."""

from nerfstudio.plugins.types import MethodSpecification

from cvd_scene.fit.dataparser import install_error_hook
from cvd_scene.fit.methods import NERF_DESCRIPTION, SPLAT_DESCRIPTION, nerf_config, splat_config

install_error_hook()  # a --data folder that cannot be used is one line, not a traceback

cvd_scene_method = MethodSpecification(config=splat_config(), description=SPLAT_DESCRIPTION)
"""Gaussian splatting on a cvd-scene run folder: ``ns-train cvd-scene --data RUN_DIR``."""

cvd_scene_nerf_method = MethodSpecification(config=nerf_config(), description=NERF_DESCRIPTION)
"""NeRF (nerfacto) on a cvd-scene run folder: ``ns-train cvd-scene-nerf --data RUN_DIR``."""
