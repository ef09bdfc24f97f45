"""The NeRF model of the ``cvd-scene-nerf`` method: nerfacto that starts without any download.

nerfacto builds torchmetrics' LPIPS in ``populate_modules``, which downloads AlexNet weights; here LPIPS is built
only when those weights are already on disk (a logged notice otherwise) and evaluation reports it only then.
Everything else is nerfacto. Imports nerfstudio (the fit subpackage is the only place that may).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal

import torch
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

from cvd_scene.fit.splat_model import make_lpips


@dataclass
class CvdNerfModelConfig(NerfactoModelConfig):
    """nerfacto's settings plus the fields below."""

    _target: type = field(default_factory=lambda: CvdNerfModel)
    lpips: Literal["auto", "off"] = "auto"
    """LPIPS in evaluation: ``auto`` when its AlexNet weights are on disk (never downloads), ``off``."""


@contextlib.contextmanager
def _lpips_from(factory):
    """While active, torchmetrics' LPIPS class is replaced by ``factory`` (nerfacto imports it at build time)."""
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = factory
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


class CvdNerfModel(NerfactoModel):
    """nerfacto without downloads at start; see the module docstring."""

    config: CvdNerfModelConfig

    def populate_modules(self):
        lpips = make_lpips(self.config.lpips)
        with _lpips_from(lambda **kwargs: lpips):
            super().populate_modules()

    def get_image_metrics_and_images(self, outputs, batch):
        if self.lpips is not None:
            return super().get_image_metrics_and_images(outputs, batch)
        # nerfacto's evaluation with a stand-in for LPIPS, whose value is then dropped.
        self.lpips = lambda a, b: torch.tensor(float("nan"))
        try:
            metrics, images = super().get_image_metrics_and_images(outputs, batch)
        finally:
            self.lpips = None
        metrics.pop("lpips", None)
        return metrics, images
