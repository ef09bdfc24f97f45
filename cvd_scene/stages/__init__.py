"""The stages of a run and the order they run in.

Each stage module defines its config dataclass and ``run_<stage>(config, run_dir, out_dir) -> StageResult``:
``config`` is the whole :class:`cvd_scene.runconfig.RunConfig`, ``run_dir`` the run folder (read the outputs of
earlier stages there), ``out_dir`` the temporary folder the stage writes into (renamed to ``run_dir/<stage>``).
Stage modules are import-light: heavy libraries are imported inside ``run_<stage>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

STAGE_ORDER: tuple[str, ...] = ("plan", "generate", "register", "fit", "export", "evaluate")
"""Every stage of the design, in run order."""

REQUIRES: dict[str, tuple[str, ...]] = {
    "plan": (),
    "generate": ("plan",),
    "register": ("generate",),
    "fit": ("register",),
    "export": ("fit",),
    "evaluate": ("generate",),
}
"""The stages whose outputs each stage reads."""

BUILT: tuple[str, ...] = ("plan", "generate", "register", "fit", "export", "evaluate")
"""The stages that exist in this version (a stage is listed once it is real)."""


def stage_function(name: str) -> Callable:
    """``run_<name>`` of a built stage."""
    if name not in BUILT:
        raise KeyError(f"stage {name!r} is not built in this version; built stages: {', '.join(BUILT) or 'none'}")
    module = importlib.import_module(f"cvd_scene.stages.{name}")
    return getattr(module, f"run_{name}")


def downstream(name: str) -> list[str]:
    """Stages that read (directly or not) the outputs of ``name``, in run order."""
    out: list[str] = []
    for s in STAGE_ORDER:
        if any(d == name or d in out for d in REQUIRES[s]):
            out.append(s)
    return out
