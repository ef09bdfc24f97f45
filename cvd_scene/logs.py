"""Logging and progress bars for the command line (library code logs through ``logging`` and never prints)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_state = {"progress": True}


def stderr_console():
    """The rich console every log line and progress bar goes to: stderr, so stdout carries only what a command
    prints as its result (tables, paths) and can be piped."""
    from rich.console import Console

    return Console(stderr=True)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log to stderr through rich: warnings only with ``quiet``, debug with ``verbose``; progress bars off when quiet."""
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=stderr_console(), show_path=verbose, rich_tracebacks=verbose, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("cvd", "cvd_scene"):
        logging.getLogger(name).setLevel(level)
    _state["progress"] = not quiet


def progress_enabled() -> bool:
    return _state["progress"] and sys.stderr.isatty()


def track(iterable: Iterable[T], total: int | None = None, description: str = "working") -> Iterator[T]:
    """Iterate with a rich progress bar on stderr when it is a terminal (silent otherwise or with ``--quiet``)."""
    if not progress_enabled():
        yield from iterable
        return
    from rich.progress import track as rich_track

    yield from rich_track(iterable, total=total, description=description, transient=True, console=stderr_console())
