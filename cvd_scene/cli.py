"""The ``cvd-scene`` command line: ``run`` (every stage), one command per stage, tools and benchmarks.

Commands are functions registered on :data:`cvd_scene.commands.common.app` (help text from their docstrings, via
tyro), one module per command under ``cvd_scene/commands/``; this module imports each by name and runs the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading

from cvd_scene.commands import (  # noqa: F401  # noqa: F401, I001
    batch,
    bench,
    convert,
    evaluate,
    export,
    fit,
    generate,
    imports,
    plan,
    register,
    train,
    view,
)

# Each command module registers its commands on ``app`` when imported, in this order in ``--help``.
from cvd_scene.commands import run as _run  # noqa: F401  (first: the command most people want)
from cvd_scene.commands.common import CliError, app, command_line, resolve_config, run_single_stage  # noqa: F401
from cvd_scene.config import ConfigError
from cvd_scene.runfolder import (
    RunFolderError,
    StageRefused,
    Stopped,
    clear_stop,
    describe_os_error,
    request_stop,
    stop_requested,
)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Signals handled like SIGINT (``kill``, ``timeout``, a closed terminal, a scheduler ending a job)."""


@contextlib.contextmanager
def stop_signals_raise():
    """While inside, SIGTERM and SIGHUP raise :class:`~cvd_scene.runfolder.Stopped` in the main thread (as SIGINT
    raises ``KeyboardInterrupt``), so every ``finally`` and cleanup runs; the previous handlers come back after
    (the request itself stays readable through :func:`~cvd_scene.runfolder.stop_requested` until cleared).
    A signal ignored on entry stays ignored: ``nohup cvd-scene run ...`` keeps running when its terminal closes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        request_stop(signum)

    clear_stop()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


OVERRIDE = re.compile(r"[A-Za-z_][^=/\\\s]*=")
"""A ``KEY=VALUE`` config override: a dotted key (``fit.iterations=300``) or a top-level one (``prompt=...``);
unknown or malformed keys too (``nope=1``, ``fit..iterations=1``), so that the config check names them. A path
(anything with a slash before the ``=``) is not one."""


def overrides_last(argv: list[str]) -> list[str]:
    """``argv`` with its ``KEY=VALUE`` overrides moved after everything else, in their order: the overrides are the
    last positional argument of every command, and tyro takes a positional list only in one piece, so
    ``plan RUN plan.num_videos=2 --quiet plan.num_frames=4`` means what it says. A token right after an option
    (``--prompt a=b``) is that option's value and stays where it is."""
    rest: list[str] = []
    moved: list[str] = []
    for i, token in enumerate(argv):
        after_option = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
        is_flag_before = after_option and argv[i - 1].lstrip("-").replace("-", "_") in boolean_flags()
        if OVERRIDE.match(token) and (not after_option or is_flag_before):
            moved.append(token)
        else:
            rest.append(token)
    return rest + moved


def boolean_flags() -> frozenset[str]:
    """Options of the commands that take no value (``--quiet``, ``--redo``, ...; ``--no-X`` too), from the command
    functions' signatures: a ``KEY=VALUE`` after one of them is an override, not the option's value."""
    import inspect

    from cvd_scene import commands

    names = set()
    for module in vars(commands).values():
        for fn in vars(module).values() if inspect.ismodule(module) else ():
            if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                for name, param in inspect.signature(fn).parameters.items():
                    if param.annotation in (bool, "bool"):
                        names.update((name, f"no_{name}"))
    return frozenset(names)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cvd-scene`` console script."""
    try:
        with stop_signals_raise():
            app.cli(prog="cvd-scene", args=overrides_last(list(sys.argv[1:] if argv is None else argv)))
    except BaseException as e:
        # A stop signal whose exception a library turned into another one (or swallowed) still ends as a stop.
        signum = e.signum if isinstance(e, Stopped) else stop_requested()
        if signum is not None or isinstance(e, KeyboardInterrupt):
            signum = signal.SIGINT if signum is None else signum
            how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            print(f"cvd-scene: {how}; finished stages are kept, run the same command to resume", file=sys.stderr)
            return 128 + signum
        if isinstance(e, BrokenPipeError):  # stdout piped into a reader that stopped (`cvd-scene --help | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
            return 0
        if not isinstance(e, (ConfigError, RunFolderError, StageRefused, CliError, ValueError, OSError)):
            raise
        # Bad input (a config, a file, an argument) or a place that cannot be written (full disk, read-only) is
        # one line; --verbose shows where it came from.
        if logging.getLogger("cvd_scene").isEnabledFor(logging.DEBUG):
            logging.getLogger("cvd_scene").exception("details")
        message = describe_os_error(e) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else e
        print(f"cvd-scene: error: {message}", file=sys.stderr)
        return 2
    finally:
        clear_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
