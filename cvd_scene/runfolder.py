"""The run folder: ``run.json``, the lock, and running one stage so that a crash loses nothing.

A stage writes into ``RUN_DIR/.tmp-<stage>-<pid>/`` and the folder is renamed into place only when the stage
returns; ``run.json`` records its status, timings, summary and the hash of the config it ran with. Re-running skips
finished stages whose config is unchanged; a changed config is refused with the keys that differ, unless the stage
is redone. Nothing a user made is deleted without ``overwrite``.

Must not import torch or any stage implementation.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from cvd_scene import __version__
from cvd_scene.camera_io import write_json

log = logging.getLogger(__name__)

RUN_FORMAT = "cvd-scene/run"
RUN_VERSION = 1
LOCK_NAME = ".lock"

StageStatus = Literal["finished", "partial", "failed"]


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message says why and what to do."""


class StageRefused(RuntimeError):
    """A stage refuses to run (for example on a failed registration); the message gives the reason."""


@dataclass
class StageResult:
    """What a stage returns: its status, a small JSON summary for ``run.json`` and a message for people."""

    status: StageStatus = "finished"
    """``finished``; ``partial`` (usable, with problems the report lists); ``failed`` (later stages refuse)."""
    summary: dict = field(default_factory=dict)
    """Headline numbers (e.g. frames registered, PSNR) copied into ``run.json``."""
    message: str = ""
    """One line for people: what happened, or why it failed."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def config_hash(data: object) -> str:
    """A short stable hash of JSON-able config data."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes a run's outputs."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "cvd-scene": __version__}
    for name in ("torch", "numpy", "diffusers", "pycolmap", "open3d", "nerfstudio", "gsplat", "trimesh"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _diff_keys(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


# ------------------------------------------------------------------------------------------------- lock


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str = "") -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` for the duration; a second holder is refused with how to clear a stale lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "command": command}
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            other = json.loads(lock.read_text())
        except (OSError, ValueError):
            other = {}
        pid, host = other.get("pid"), other.get("host")
        stale = ""
        if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            stale = " That process no longer exists, so the lock is stale (left by a crash)."
        raise RunFolderError(
            f"{run_dir} is in use by another cvd-scene run (pid {pid} on {host} since {other.get('since')}: "
            f"{other.get('command', '?')}).{stale} If no cvd-scene process is working on this folder, "
            f"remove the lock file and try again: rm {lock}"
        ) from None
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------ run folder


class RunFolder:
    """A run folder and its ``run.json``. Open it with :meth:`open` inside :func:`run_lock`."""

    STAGE_FOLDERS = ("plan", "generate", "register", "fit", "export", "evaluate")

    def __init__(self, path: Path, state: dict):
        self.path = path
        self.state = state

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    # ------------------------------------------------------------------ opening

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunFolder:
        """Open an existing run folder for reading (no lock): refuses other formats and versions."""
        path = Path(path)
        rj = path / "run.json"
        if not rj.is_file():
            raise RunFolderError(f"{path} is not a cvd-scene run folder (no run.json)")
        try:
            state = json.loads(rj.read_text())
        except ValueError as e:
            raise RunFolderError(f"{rj} is not valid JSON ({e}); restore it or start a new run folder") from None
        cls._check_version(path, state)
        return cls(path, state)

    @staticmethod
    def _check_version(path: Path, state: dict) -> None:
        if state.get("format") != RUN_FORMAT:
            raise RunFolderError(f"{path}/run.json is not a cvd-scene run file (format {state.get('format')!r})")
        if state.get("version") != RUN_VERSION:
            raise RunFolderError(
                f"{path} was written by cvd-scene {state.get('cvd_scene_version', '?')} with run-folder version "
                f"{state.get('version')!r}; this cvd-scene ({__version__}) reads version {RUN_VERSION}. "
                "Use a new run folder, or pass --overwrite to replace this one."
            )

    @classmethod
    def open(
        cls, path: str | os.PathLike, config: dict, preset: str | None, overwrite: bool = False, fresh: bool = False
    ) -> RunFolder:
        """Open or create the run folder for ``config`` (a JSON-able dict of the whole run config).

        ``fresh=True`` (``cvd-scene run``) demands that an existing run used the same config, or ``overwrite``.
        Stage commands (``fresh=False``) adopt the new config; stages whose config changed must be redone.
        """
        path = Path(path)
        rj = path / "run.json"
        if rj.exists():
            try:
                state = json.loads(rj.read_text())
                cls._check_version(path, state)
            except (ValueError, RunFolderError) as e:
                if not overwrite:
                    raise RunFolderError(str(e)) from None
                state = None
            if state is not None and overwrite and fresh:
                cls._clear(path)
                state = None
            elif state is not None and fresh and state.get("config") != config and state.get("stages"):
                diff = _diff_keys(state.get("config"), config)
                raise RunFolderError(
                    f"{path} holds a run with a different config ({'; '.join(diff[:6])}"
                    f"{' ...' if len(diff) > 6 else ''}). Pass --overwrite to replace it, --redo STAGE to redo "
                    "the stages concerned, or use another folder."
                )
            elif state is None:
                cls._clear(path)
        else:
            state = None
            if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()) and not overwrite:
                raise RunFolderError(
                    f"{path} exists, is not empty and is not a cvd-scene run folder; pass --overwrite to use it "
                    "anyway (files that are not cvd-scene outputs are kept) or choose another folder"
                )
        if state is None:
            state = {
                "format": RUN_FORMAT,
                "version": RUN_VERSION,
                "cvd_scene_version": __version__,
                "created": utc_now(),
                "stages": {},
            }
        state["preset"] = preset if preset is not None else state.get("preset")
        state["config"] = config
        state["versions"] = package_versions()
        state["updated"] = utc_now()
        run = cls(path, state)
        run.save()
        return run

    @classmethod
    def _clear(cls, path: Path) -> None:
        """Remove cvd-scene's own outputs (stage folders, run.json, report); keep anything else."""
        for name in (*cls.STAGE_FOLDERS, "run.json", "report.html"):
            p = path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in path.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    def save(self) -> None:
        self.state["updated"] = utc_now()
        write_json(self.run_json, self.state)

    # ------------------------------------------------------------------ stages

    def stage_record(self, name: str) -> dict | None:
        return self.state.get("stages", {}).get(name)

    def stage_status(self, name: str) -> str | None:
        rec = self.stage_record(name)
        return None if rec is None else rec.get("status")

    def require(self, name: str, need: tuple[str, ...]) -> None:
        """Refuse unless every stage in ``need`` finished (``partial`` counts) with its folder in place."""
        for dep in need:
            rec = self.stage_record(dep)
            if rec is None or rec.get("status") in (None, "running", "outdated"):
                raise StageRefused(f"stage {name!r} needs stage {dep!r}, which has not run yet (run it first)")
            if rec.get("status") == "failed":
                raise StageRefused(f"stage {name!r} needs stage {dep!r}, which failed: {rec.get('message', '')}")
            if not (self.path / dep).is_dir():
                raise StageRefused(f"stage {name!r} needs {self.path / dep}, which is missing; redo stage {dep!r}")

    def invalidate_after(self, names: list[str]) -> None:
        """Mark the records of ``names`` outdated (their folders stay until the stage runs again)."""
        for n in names:
            rec = self.stage_record(n)
            if rec is not None and rec.get("status") != "outdated":
                rec["status"] = "outdated"
                rec["message"] = "an earlier stage was redone; run this stage again"
        self.save()

    def run_stage(
        self,
        name: str,
        fn: Callable[[Path], StageResult],
        stage_config: object,
        redo: bool = False,
    ) -> StageResult | None:
        """Run one stage into a temporary folder and rename it into place; returns None when skipped.

        ``fn(out_dir)`` does the work and writes only inside ``out_dir``. ``stage_config`` is the JSON-able config
        the stage depends on: a finished stage with the same hash is skipped, a different hash is refused unless
        ``redo``. If ``fn`` raises, the previous outputs and ``run.json`` are left as they were.
        """
        stages = self.state.setdefault("stages", {})
        rec = stages.get(name)
        h = config_hash(stage_config)
        final = self.path / name
        if rec is not None and rec.get("status") in ("finished", "partial") and not redo:
            if rec.get("config_hash") == h and final.is_dir():
                log.info("stage %s: already %s, skipped (use --redo %s to run it again)", name, rec["status"], name)
                return None
            if final.is_dir():
                raise RunFolderError(
                    f"stage {name!r} already ran in {self.path} with a different config; pass --redo {name} "
                    "to run it again (and the stages after it), or --overwrite to start the run over"
                )
        if final.exists() and (rec is None or rec.get("status") == "running") and not redo:
            raise RunFolderError(
                f"{final} exists but run.json does not record stage {name!r} as finished; it may hold your own "
                f"files. Move it away, or pass --redo {name} to replace it."
            )
        tmp = self.path / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        started = utc_now()
        t0 = time.perf_counter()
        try:
            result = fn(tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno == errno.ENOSPC:
                raise RunFolderError(
                    f"stage {name!r}: the disk is full ({e}); earlier outputs in {self.path} are intact. "
                    "Free some space and run the same command again."
                ) from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - t0
        if not isinstance(result, StageResult):
            shutil.rmtree(tmp, ignore_errors=True)
            raise TypeError(f"stage {name!r} returned {type(result).__name__}, expected StageResult")
        old = None
        if final.exists():
            old = self.path / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        stages[name] = {
            "status": result.status,
            "started": started,
            "finished": utc_now(),
            "seconds": round(seconds, 3),
            "config_hash": h,
            "summary": result.summary,
            "message": result.message,
        }
        self.save()
        return result
