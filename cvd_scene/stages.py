"""The stages of a run, the order they run in, and the plan size every stage's config check reads.

Each stage is a package ``cvd_scene/<stage>/`` with its config (``config.py``) and its ``run.py``:
``run_<stage>(config, run_dir, out_dir) -> StageResult`` (``config`` the whole
:class:`cvd_scene.runconfig.RunConfig`, ``run_dir`` the run folder, ``out_dir`` the temporary folder the stage
writes into, renamed to ``run_dir/<stage>``) and ``validate(config, size)``. :mod:`cvd_scene.runners` lists them.
This module imports nothing of the project, so every module may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_ORDER: tuple[str, ...] = ("plan", "generate", "register", "fit", "export", "evaluate")
"""Every stage, in run order."""

REQUIRES: dict[str, tuple[str, ...]] = {
    "plan": (),
    "generate": ("plan",),
    "register": ("generate",),
    "fit": ("register",),
    "export": ("fit",),
    "evaluate": ("generate",),
}
"""The stages whose outputs each stage reads."""


def downstream(name: str) -> list[str]:
    """Stages that read (directly or not) the outputs of ``name``, in run order."""
    out: list[str] = []
    for s in STAGE_ORDER:
        if any(d == name or d in out for d in REQUIRES[s]):
            out.append(s)
    return out


@dataclass(frozen=True)
class PlanSize:
    """How many videos and frames, at what size, the run's plan has (or will have)."""

    videos: int
    frames: int
    width: int
    height: int
    source: str
    """Where the numbers come from: ``plan.*`` keys, a cameras file, RealEstate10K files or ``plan/cameras.json``."""
    keys: dict
    """The config keys (dotted) or files that set the size, for messages."""
