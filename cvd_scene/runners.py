"""Every stage's module by name: the function that runs it and the check of its config made before any stage
runs. Imported by the orchestration and the preflight checks; stage modules themselves never import it."""

from __future__ import annotations

from collections.abc import Callable

from cvd_scene.evaluate import run as evaluate
from cvd_scene.export import run as export
from cvd_scene.fit import run as fit
from cvd_scene.generate import run as generate
from cvd_scene.plan import run as plan
from cvd_scene.register import run as register

RUN: dict[str, Callable] = {
    "plan": plan.run_plan,
    "generate": generate.run_generate,
    "register": register.run_register,
    "fit": fit.run_fit,
    "export": export.run_export,
    "evaluate": evaluate.run_evaluate,
}
"""``run_<stage>(config, run_dir, out_dir) -> StageResult`` of every stage."""

VALIDATE: dict[str, Callable] = {
    "plan": plan.validate,
    "generate": generate.validate,
    "register": register.validate,
    "fit": fit.validate,
    "export": export.validate,
    "evaluate": evaluate.validate,
}
"""``validate(config, size)`` of every stage: cross-key checks and the memory and time estimates."""
