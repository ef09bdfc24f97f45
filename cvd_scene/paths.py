"""Input strings that become paths: safe ids and joins that stay inside their folder.

A video id from a ``cameras.json``, a RealEstate10K file name or a ``transforms.json`` names folders and files of
a run (``generate/frames/<vid>/``, ``generate/videos/<vid>.mp4``). Every such id must match :data:`SAFE_ID`, and
every join of an input string under a folder goes through :func:`join_inside`, which refuses a result outside that
folder. Pure Python: must not import numpy, torch or any stage.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A video id: a letter or digit, then up to 63 letters, digits, ``_``, ``.`` or ``-`` (no ``/``, no ``..``)."""


class UnsafePathError(ValueError):
    """An input string that would name a path outside its folder (or no path at all)."""


def check_id(value: object, what: str = "video id") -> str:
    """``value`` if it is a safe id (:data:`SAFE_ID`, no ``..``); else :class:`UnsafePathError` naming it."""
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value) or ".." in value:
        raise UnsafePathError(
            f"{what} {value!r} is not allowed: ids are 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit, without '..' (they name folders and files of the run)"
        )
    return value


def join_inside(base: str | os.PathLike, *parts: str) -> Path:
    """``base / parts...``, refused (:class:`UnsafePathError`) unless the result lies strictly inside ``base``.

    Symbolic links already on disk are followed for the check, so a link inside ``base`` that points out of it
    is refused too.
    """
    base = Path(base)
    path = base.joinpath(*parts)
    root = os.path.realpath(base)
    real = os.path.realpath(path)
    if real == root or not real.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(f"{'/'.join(parts)!r} would name {real}, which is not inside {root}")
    return path
