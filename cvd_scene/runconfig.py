"""The whole config of a run: global settings plus one section per stage (``configs/run/<preset>.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cvd_scene.config import nonfinite_keys
from cvd_scene.evaluate.config import EvaluateConfig
from cvd_scene.export.config import ExportConfig
from cvd_scene.fit.config import FitConfig
from cvd_scene.generate.config import GenerateConfig
from cvd_scene.plan.config import PlanConfig
from cvd_scene.register.config import RegisterConfig


@dataclass(kw_only=True)
class RunConfig:
    """A run: the prompt, the seed and one section per stage."""

    prompt: str = "a cosy room"
    """Text prompt. With the reference generator its words pick the scene kind and colours."""
    seed: int = 0
    """Seed of every random choice in the run."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Stage ``plan``."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Stage ``generate``."""
    register: RegisterConfig = field(default_factory=RegisterConfig)
    """Stage ``register``."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Stage ``fit``."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Stage ``export``."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Stage ``evaluate``."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got seed={self.seed!r}")
        bad = nonfinite_keys(self)
        if bad:
            raise ValueError(f"{bad[0]}: every number of a config must be finite")
