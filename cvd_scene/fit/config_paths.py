"""Paths in the fit's nerfstudio ``config.yml`` that follow the file, so a moved or copied run folder loads its
own checkpoint and frames.

nerfstudio saves ``output_dir`` and ``data`` as absolute paths and resolves relative ones against the working
directory; a copied run therefore loaded the original's checkpoint, silently. Every nerfstudio loader
(``ns-viewer``, ``ns-render``, ``ns-eval``, ``ns-export``: ``nerfstudio.utils.eval_utils.eval_setup``) reads the
file with ``yaml.load(config_path.read_text(), Loader=yaml.Loader)``, which calls back into Python for
``!!python/object/apply`` tags and nothing else of ours runs before the checkpoint path is built. So the fit writes
these two paths as ``!!python/object/apply:cvd_scene.fit.config_paths.resolve_config_path [relative, absolute]``:
while the file is being loaded, :func:`resolve_config_path` finds its location (the ``config_path`` of the
loading frame, as ``eval_setup`` names it) and returns the relative path joined to the file's folder; loaded any
other way (no such frame) it returns the absolute path recorded at write time, which is what the file held
before. This module's import path is named in every ``config.yml``: keep it.

Must not import nerfstudio.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOADING_FRAME_VARIABLE = "config_path"
"""Name of the local variable that holds the config file in nerfstudio's loader (``eval_setup``)."""


class ConfigRelativePath:
    """A path written into ``config.yml`` relative to the file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, config_dir: str | os.PathLike) -> None:
        self.absolute = str(Path(path).resolve())
        self.relative = os.path.relpath(self.absolute, Path(config_dir).resolve())

    def __reduce__(self):
        return resolve_config_path, (self.relative, self.absolute)

    def __fspath__(self) -> str:
        return self.absolute

    def __str__(self) -> str:
        return self.absolute


def config_file_being_loaded() -> Path | None:
    """The YAML file whose loading called us (a ``config_path`` local of a calling frame), or None."""
    frame = sys._getframe(1)
    while frame is not None:
        value = frame.f_locals.get(LOADING_FRAME_VARIABLE)
        if isinstance(value, (str, os.PathLike)) and str(value).endswith((".yml", ".yaml")):
            path = Path(value)
            if path.is_file():
                return path
        frame = frame.f_back
    return None


def resolve_config_path(relative: str, absolute: str) -> Path:
    """The path ``relative`` to the folder of the ``config.yml`` being loaded, else ``absolute``."""
    config_file = config_file_being_loaded()
    if config_file is None:
        return Path(absolute)
    return Path(os.path.normpath(config_file.resolve().parent / relative))
