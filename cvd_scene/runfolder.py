"""The run folder: ``run.json``, the lock, and running one stage so that a crash loses nothing.

A stage writes into ``RUN_DIR/.tmp-<stage>-<pid>/`` and the folder is renamed into place only when the stage
returns; ``run.json`` records its status, timings, summary, the hash of the config it ran with and the manifest of
every file it wrote (``outputs``). Re-running skips finished stages whose config is unchanged; a changed config is
refused with the keys that differ, unless the stage is redone. The run's config in ``run.json`` changes only when a
stage finishes. Replacing a stage's outputs (``--redo``, ``--overwrite``) removes exactly the files its manifest
lists (or, in a run folder written before manifests existed, the files the stage is known to write) and refuses,
naming them, when anything else is there; nothing is ever followed through a symbolic link.

Must not import torch or any stage implementation.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
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
from cvd_scene.jsonio import write_json
from cvd_scene.paths import check_id, join_inside

log = logging.getLogger(__name__)

RUN_FORMAT = "cvd-scene/run"
RUN_VERSION = 1
LOCK_NAME = ".lock"
JOB_ID_VARIABLES = ("CVD_SCENE_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")
"""Environment variables that name the scheduler job a run belongs to (the first one set is recorded in the lock)."""
LOW_DISK_BYTES = 64 << 20
"""Free space below which an ``OSError`` without an error number is reported as a full disk."""

StageStatus = Literal["finished", "partial", "failed"]


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message says why and what to do."""


class StageRefused(RuntimeError):
    """A stage refuses to run (for example on a failed registration); the message gives the reason."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: handled like Ctrl-C (the stage's temporary folder and the lock are removed on
    the way out, finished stages are kept)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stop: dict[str, int | None] = {"signum": None}


def request_stop(signum: int) -> None:
    """What the command line's SIGTERM/SIGHUP handler does: raise :class:`Stopped` now, and remember it. A C
    extension can swallow an exception raised while it calls back into Python (a signal during a module import);
    :meth:`RunFolder.run_stage` then raises it again when the stage returns, before anything is recorded."""
    _stop["signum"] = signum
    raise Stopped(signum)


def clear_stop() -> None:
    _stop["signum"] = None


def stop_requested() -> int | None:
    """The signal number of a stop requested through :func:`request_stop` (None: none)."""
    return _stop["signum"]


def raise_if_stopped() -> None:
    if _stop["signum"] is not None:
        raise Stopped(_stop["signum"])


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


# ------------------------------------------------------------------------------------------- layout

EXPORT_FILES = {
    "ply": "scene.ply",
    "splat": "scene.splat",
    "spz": "scene.spz",
    "spz4": "scene_v4.spz",
    "glb": "scene_khr.glb",
    "sog": "scene.sog",
    "cply": "scene.compressed.ply",
    "viewer": "viewer.html",
    "mesh": "mesh.glb",
    "collider": "collider.glb",
    "points": "points.ply",
    "camera_path": "camera_path.json",
    "viewer_settings": "viewer_settings.json",
    "report": "report.json",
}
"""File written for each export output, inside the export folder (``RUN_DIR/export`` or ``--out DIR``)."""


def frame_key(video_id: str, index: int) -> str:
    """``<vid>/<NNNN>``: how a frame is named everywhere (files below, metrics keys, messages)."""
    return f"{video_id}/{index:04d}"


def frame_name(video_id: str, index: int, suffix: str = ".png") -> str:
    """``<vid>/<NNNN><suffix>``, a frame's file below its folder (frames, depth maps, rendered views)."""
    return frame_key(video_id, index) + suffix


def frame_file(folder: str | os.PathLike, video_id: str, index: int, suffix: str = ".png") -> Path:
    """``<folder>/<vid>/<NNNN><suffix>``; refused (``UnsafePathError``) for an id that would leave ``folder``."""
    return join_inside(folder, check_id(video_id), f"{index:04d}{suffix}")


@dataclass(frozen=True)
class RunLayout:
    """Every path that passes between stages, inside one run folder (docs/architecture.md, "The run folder").

    ``RunLayout(run_dir)`` names where each stage's outputs lie once it finished. A stage writes into a temporary
    folder that is renamed into place afterwards; ``layout.writing(stage, out_dir)`` is the same layout with that
    stage's folder at ``out_dir``, so a stage names its outputs and its inputs the same way. Paths only: nothing
    here reads or writes.
    """

    root: Path
    """The run folder."""
    moved: tuple[tuple[str, Path], ...] = ()
    """Stage folders that are elsewhere (the temporary folder a stage writes into)."""

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def writing(self, stage: str, folder: str | os.PathLike) -> RunLayout:
        """This layout with the folder of ``stage`` at ``folder``."""
        if stage not in _STAGE_NAMES:
            raise ValueError(f"stage must be one of {', '.join(_STAGE_NAMES)}, got {stage!r}")
        return RunLayout(self.root, (*((s, p) for s, p in self.moved if s != stage), (stage, Path(folder))))

    @classmethod
    def of_stage(cls, stage: str, folder: str | os.PathLike) -> RunLayout:
        """The layout of a writer given only the folder of ``stage`` (the other stages' paths lie beside it)."""
        folder = Path(folder)
        return cls(folder.parent).writing(stage, folder)

    def stage(self, name: str) -> Path:
        """The folder of stage ``name``."""
        if name not in _STAGE_NAMES:
            raise ValueError(f"stage must be one of {', '.join(_STAGE_NAMES)}, got {name!r}")
        return dict(self.moved).get(name, self.root / name)

    @staticmethod
    def relative(path: Path, start: Path) -> str:
        """``path`` relative to the folder ``start`` (``/``-separated), as transforms.json and reports name files."""
        return Path(os.path.relpath(path, start)).as_posix()

    # run-wide
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # plan
    @property
    def cameras(self) -> Path:
        """``plan/cameras.json``: every planned camera."""
        return self.stage("plan") / "cameras.json"

    @property
    def covisibility(self) -> Path:
        """``plan/covisibility.json``."""
        return self.stage("plan") / "covisibility.json"

    @property
    def covisibility_png(self) -> Path:
        return self.stage("plan") / "covisibility.png"

    @property
    def trajectories_png(self) -> Path:
        return self.stage("plan") / "trajectories.png"

    # generate
    @property
    def frames(self) -> Path:
        """``generate/frames``, holding ``<vid>/<NNNN>.png``."""
        return self.stage("generate") / "frames"

    def frame(self, video_id: str, index: int) -> Path:
        """``generate/frames/<vid>/<NNNN>.png``."""
        return frame_file(self.frames, video_id, index)

    @property
    def videos(self) -> Path:
        return self.stage("generate") / "videos"

    def video(self, video_id: str) -> Path:
        """``generate/videos/<vid>.mp4``."""
        return join_inside(self.videos, f"{check_id(video_id)}.mp4")

    @property
    def contact_sheet(self) -> Path:
        return self.stage("generate") / "contact_sheet.png"

    @property
    def generate_transforms(self) -> Path:
        """``generate/transforms.json``: the planned poses in nerfstudio's format."""
        return self.stage("generate") / "transforms.json"

    @property
    def generate_report(self) -> Path:
        return self.stage("generate") / "report.json"

    @property
    def gt(self) -> Path:
        """``generate/gt``: the reference generator's ground truth."""
        return self.stage("generate") / "gt"

    @property
    def gt_depth_dir(self) -> Path:
        """``generate/gt/depth``, holding ``<vid>/<NNNN>.npy`` (float32 metres, 0 where empty)."""
        return self.gt / "depth"

    def gt_depth(self, video_id: str, index: int) -> Path:
        """``generate/gt/depth/<vid>/<NNNN>.npy``."""
        return frame_file(self.gt_depth_dir, video_id, index, ".npy")

    @property
    def gt_scene_glb(self) -> Path:
        return self.gt / "scene.glb"

    @property
    def gt_scene_json(self) -> Path:
        return self.gt / "scene.json"

    # register
    @property
    def colmap_work(self) -> Path:
        """``register/colmap``: COLMAP's database and scratch models."""
        return self.stage("register") / "colmap"

    @property
    def sparse(self) -> Path:
        """``register/sparse``: the COLMAP model."""
        return self.stage("register") / "sparse"

    @property
    def sparse_text(self) -> Path:
        return self.stage("register") / "sparse_text"

    @property
    def sparse_pc(self) -> Path:
        """``register/sparse_pc.ply``: the triangulated points (named by ``ply_file_path`` in transforms.json)."""
        return self.stage("register") / "sparse_pc.ply"

    @property
    def register_transforms(self) -> Path:
        """``register/transforms.json``: the registered poses, the fit's input."""
        return self.stage("register") / "transforms.json"

    @property
    def register_report(self) -> Path:
        return self.stage("register") / "report.json"

    # evaluate
    @property
    def consistency(self) -> Path:
        """``evaluate/consistency.json``."""
        return self.stage("evaluate") / "consistency.json"

    @property
    def consistency_md(self) -> Path:
        return self.stage("evaluate") / "consistency.md"

    @property
    def warp_contact_sheet(self) -> Path:
        """``evaluate/warp_known_scene.png``: ground truth, generated and cross-view-off videos of the known scene."""
        return self.stage("evaluate") / "warp_known_scene.png"

    def cross_video_fit(self, video_id: str) -> Path:
        """``evaluate/cross_video/<vid>/``: the fit of the other videos scored on this one (``metrics.json``,
        ``eval/``), laid out as a ``fit`` folder."""
        return join_inside(self.stage("evaluate") / "cross_video", check_id(video_id))

    @property
    def cross_video_sheet(self) -> Path:
        """``evaluate/cross_video.png``: each video's frames above the fit of the other videos rendered there."""
        return self.stage("evaluate") / "cross_video.png"

    # fit
    @property
    def fit_gaussians(self) -> Path:
        """``fit/gaussians.ply``: the Gaussians in the run's world frame."""
        return self.stage("fit") / "gaussians.ply"

    @property
    def fit_frame(self) -> Path:
        """``fit/frame.json``: the normalisation from the run's world into the nerfstudio model's frame."""
        return self.stage("fit") / "frame.json"

    @property
    def fit_metrics(self) -> Path:
        """``fit/metrics.json``."""
        return self.stage("fit") / "metrics.json"

    @property
    def fit_nerfstudio(self) -> Path:
        """``fit/nerfstudio``: nerfstudio's own output (config.yml, checkpoints)."""
        return self.stage("fit") / "nerfstudio"

    @property
    def fit_eval(self) -> Path:
        """``fit/eval``: held-out frames and their renders."""
        return self.stage("fit") / "eval"

    def fit_eval_stem(self, video_id: str, index: int) -> Path:
        """``fit/eval/<vid>_<NNNN>``, completed by ``_gt.png`` and ``_pred.png``."""
        return join_inside(self.fit_eval, f"{check_id(video_id)}_{index:04d}")

    @property
    def fit_views(self) -> Path:
        """``fit/views``: colour and depth rendered at every registered camera."""
        return self.stage("fit") / "views"

    def fit_view_rgb(self, video_id: str, index: int) -> Path:
        """``fit/views/rgb/<vid>/<NNNN>.png``."""
        return frame_file(self.fit_views / "rgb", video_id, index)

    def fit_view_depth(self, video_id: str, index: int) -> Path:
        """``fit/views/depth/<vid>/<NNNN>.npy`` (float32 metres, 0 where empty)."""
        return frame_file(self.fit_views / "depth", video_id, index, ".npy")

    # export
    @property
    def export(self) -> Path:
        return self.stage("export")

    def export_file(self, kind: str) -> Path:
        """``export/<file>`` for an output kind of :data:`EXPORT_FILES` (``ply``, ``viewer``, ``report``, ...)."""
        if kind not in EXPORT_FILES:
            raise ValueError(f"export file kind must be one of {', '.join(EXPORT_FILES)}, got {kind!r}")
        return self.export / EXPORT_FILES[kind]


# ------------------------------------------------------------------------------------------- OS errors

_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
"""Error numbers that mean "cannot write here" (full disk or quota, read-only, permissions, file-size limit)."""


def read_stage_record(run_dir: str | os.PathLike, name: str) -> dict | None:
    """Stage ``name``'s record in ``run_dir/run.json``, read without opening the run (None when the file, the
    record or valid JSON is missing)."""
    try:
        record = json.loads(RunLayout(run_dir).run_json.read_text(encoding="utf-8")).get("stages", {}).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def check_registration(run_dir: str | os.PathLike, who: str = "stage 'fit'") -> None:
    """Refuse (:class:`StageRefused`, with the reason, naming ``who`` needs it) when the registration failed or
    left nothing to fit."""
    record = read_stage_record(run_dir, "register")
    if record is not None and record.get("status") == "failed":
        raise StageRefused(f"{who} needs a registration, and it failed: {record.get('message') or 'no reason given'}")
    transforms = RunLayout(run_dir).register_transforms
    if not transforms.is_file():
        why = (record or {}).get("message") or "no frame was registered"
        raise StageRefused(f"{who} needs {transforms}, which is missing ({why}); run or redo the register stage")


def free_bytes(path: Path) -> int | None:
    """Free space on the file system of ``path`` (or its nearest existing parent), or None when unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full(e: OSError, path: Path) -> bool:
    """Whether ``e`` means a full disk: ENOSPC/EDQUOT, or an ``OSError`` without an error number (``np.save`` and
    ``ndarray.tofile`` raise ``OSError("N requested and M written")``) while little space is left under ``path``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if e.errno is None:
        free = free_bytes(path)
        return free is not None and free < LOW_DISK_BYTES
    return False


def describe_os_error(e: OSError, path: Path | None = None) -> str:
    """One line for an ``OSError``: the path, what went wrong, and what to do. ``path`` names the place when the
    error itself names no file."""
    where = e.filename if e.filename is not None else path
    prefix = f"{where}: " if where is not None else ""
    reason = e.strerror or str(e) or type(e).__name__
    if disk_full(e, Path(where) if where is not None else Path.cwd()):
        return f"{prefix}the disk is full ({reason}); free some space and run the same command again"
    if e.errno == errno.EROFS:
        return f"{prefix}the file system is read-only; use a folder cvd-scene can write to"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{prefix}permission denied ({reason}); use a folder cvd-scene can write to"
    if e.errno == errno.EFBIG:
        return f"{prefix}file too large ({reason}): the file-size limit of this process (ulimit -f) or of the file system"
    return f"{prefix}{reason}"


def _remove_path(p: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree (links inside it are not followed)."""
    if p.is_symlink() or not p.is_dir():
        p.unlink()
    else:
        shutil.rmtree(p)


def _remove_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        _remove_path(p)


# ------------------------------------------------------------------------------------------------- lock


def job_id() -> str | None:
    """The scheduler job this process belongs to (first of :data:`JOB_ID_VARIABLES` that is set), or None."""
    for var in JOB_ID_VARIABLES:
        if os.environ.get(var):
            return os.environ[var]
    return None


def describe_owner(info: dict) -> str:
    """``process 123 on host node7 (job 42) since 2026-01-01T00:00:00+00:00: cvd-scene run ...``."""
    job = f" (job {info['job']})" if info.get("job") else ""
    return (
        f"process {info.get('pid')} on host {info.get('host')}{job} since {info.get('since')}: "
        f"{info.get('command') or '?'}"
    )


def _held_message(run_dir: Path, lock: Path) -> str:
    try:
        other = json.loads(lock.read_text())
    except (OSError, ValueError):
        other = None
    if not isinstance(other, dict) or not other:
        return (
            f"{run_dir} is locked by {lock}, which is empty or unreadable (a cvd-scene process stopped while "
            f"taking it). If no cvd-scene process is working on this folder, remove the lock file and try again: "
            f"rm {lock}"
        )
    pid, host, here = other.get("pid"), other.get("host"), socket.gethostname()
    if host != here:
        why = (
            f" It was taken on another host; from {here} cvd-scene cannot tell whether that process still runs"
            + (f" (ask the scheduler about job {other['job']})." if other.get("job") else ".")
        )
    elif isinstance(pid, int) and not _pid_alive(pid):
        why = " That process no longer exists, so the lock is stale (left by a crash)."
    else:
        why = ""
    return (
        f"{run_dir} is in use by another cvd-scene run ({describe_owner(other)}).{why} If no cvd-scene process is "
        f"working on this folder, remove the lock file and try again: rm {lock}"
    )


def check_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """Refuse a run folder path that is a file, a broken link or under a file (creating nothing); returns the
    folders that creating it would make, deepest first."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        return []
    if run_dir.is_symlink() and not run_dir.exists():
        raise RunFolderError(f"{run_dir} is a broken symbolic link (to {os.readlink(run_dir)}), not a folder")
    if run_dir.exists():
        raise RunFolderError(f"{run_dir} is a file, not a folder: give a folder for the run (created if missing)")
    missing, p = [], run_dir
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise RunFolderError(f"{run_dir} cannot be created: {p} is a file, not a folder")
    return missing


def _make_run_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` if missing; returns the folders created, deepest first (removed again if left empty)."""
    missing = check_run_dir(run_dir)
    if not missing:
        return []
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise RunFolderError(f"run folder {run_dir} cannot be created: {describe_os_error(e)}") from None
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    for d in created:
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str = "") -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` for the duration; a second holder is refused with how to clear a stale lock.

    The lock names its owner by host, process and scheduler job (:func:`job_id`); a lock taken on another host is
    never judged by whether a process with that number runs here. Taking it creates ``run_dir`` if missing (and
    removes it again if nothing was written there) and then removes what interrupted processes left behind
    (:func:`clean_leftovers`).
    """
    run_dir = Path(run_dir)
    created = _make_run_dir(run_dir)
    lock = run_dir / LOCK_NAME
    info = {
        "pid": os.getpid(), "host": socket.gethostname(), "job": job_id(), "since": utc_now(), "command": command,
    }  # fmt: skip
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise RunFolderError(_held_message(run_dir, lock)) from None
    except OSError as e:
        _remove_if_empty(created)
        raise RunFolderError(
            f"cannot take the lock of run folder {run_dir}: {describe_os_error(e, lock)}"
        ) from None
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
    except OSError as e:
        _remove_quietly(lock)
        _remove_if_empty(created)
        raise RunFolderError(
            f"cannot take the lock of run folder {run_dir}: {describe_os_error(e, lock)}"
        ) from None
    try:
        clean_leftovers(run_dir)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            held = json.loads(lock.read_text())
            if held.get("pid") == info["pid"] and held.get("host") == info["host"]:
                lock.unlink()
        _remove_if_empty(created)


def clear_stale_lock(run_dir: Path, job: str) -> bool:
    """Remove ``run_dir``'s lock when scheduler job ``job`` took it on this host and its process is gone (a lost
    worker about to be retried); returns whether it did. Anyone else's lock is left alone: the stage then refuses
    to run, naming its owner."""
    lock = Path(run_dir) / LOCK_NAME
    try:
        info = json.loads(lock.read_text())
    except (OSError, ValueError):
        return False
    if (
        isinstance(info, dict)
        and info.get("job") == job
        and info.get("host") == socket.gethostname()
        and isinstance(info.get("pid"), int)
        and not _pid_alive(info["pid"])
    ):
        log.warning("%s: removing the lock of a lost worker (process %s, job %s)", run_dir, info["pid"], job)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STAGE_NAMES = ("plan", "generate", "register", "fit", "export", "evaluate")
_LEFTOVER = re.compile(rf"^\.tmp-(?:{'|'.join(_STAGE_NAMES)})-(\d+)$|^\.(?:run\.json|report\.html)\.tmp(\d+)$")
"""Names of what an interrupted cvd-scene process leaves: a stage's temporary folder, a half-written run.json or
report.html. Nothing else in a run folder is ever removed as a leftover."""


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary folders and files that stopped cvd-scene processes left in ``run_dir`` and say so.

    Call it holding the run folder's lock: then no other cvd-scene process writes there. A leftover of a process
    that still runs on this host is kept (with a warning). Returns what was removed.
    """
    removed = []
    for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):
        m = _LEFTOVER.match(entry.name)
        if m is None:
            continue
        pid, path = int(m.group(1) or m.group(2)), Path(entry.path)
        if pid != os.getpid() and _pid_alive(pid):
            log.warning("kept %s: process %d, which wrote it, is still running on this host", path, pid)
            continue
        _remove_path(path)
        removed.append(path)
        log.warning("removed %s, left by cvd-scene process %d, which stopped before finishing", path, pid)
    return removed


# --------------------------------------------------------------------------------------- stage outputs

KNOWN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "plan": ("cameras.json", "covisibility.json", "trajectories.png", "covisibility.png"),
    "generate": (
        "frames/*/*.png", "videos/*.mp4", "contact_sheet.png", "transforms.json", "report.json",
        "gt/depth/*/*.npy", "gt/scene.glb", "gt/scene.json",
    ),
    "register": ("colmap/**", "sparse/**", "sparse_text/**", "sparse_pc.ply", "transforms.json", "report.json"),
    "fit": (
        "nerfstudio/**", "gaussians.ply", "metrics.json", "frame.json", "eval/*.png",
        "views/rgb/*/*.png", "views/depth/*/*.npy",
    ),
    "export": (
        "scene.ply", "scene.splat", "scene.spz", "scene_v4.spz", "scene_khr.glb", "mesh.glb", "points.ply",
        "camera_path.json", "viewer_settings.json", "report.json",
    ),
    "evaluate": ("consistency.json", "consistency.md", "warp_known_scene.png"),
}  # fmt: skip
"""What each stage is known to write (``*``: one name, ``**``: anything below), for run folders whose ``run.json``
predates output manifests: ``--overwrite`` and ``--redo`` remove only these there."""


def _glob_regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*") + "$")


class _Known:
    """Judges entries of a stage folder by :data:`KNOWN_OUTPUTS` (run folders without manifests)."""

    def __init__(self, stage: str):
        patterns = KNOWN_OUTPUTS.get(stage, ())
        self.files = [_glob_regex(p) for p in patterns]
        dirs = set()
        for p in patterns:
            parts = p.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            if parts[-1] == "**":
                dirs.add(p)
        self.dirs = [_glob_regex(d) for d in dirs]

    def file(self, rel: str, size: int) -> str | None:
        return None if any(r.match(rel) for r in self.files) else ""

    def dir(self, rel: str) -> bool:
        return any(r.match(rel) for r in self.dirs)

    def link(self, rel: str, target: str) -> bool:
        return False


class _Manifest:
    """Judges entries of a stage folder by the manifest the stage recorded when it finished."""

    def __init__(self, outputs: dict):
        self.files = outputs.get("files") or {}
        self.dirs = set(outputs.get("dirs") or ())
        self.links = outputs.get("links") or {}

    def file(self, rel: str, size: int) -> str | None:
        if rel not in self.files:
            return ""
        if self.files[rel] != size:
            return f" (changed since cvd-scene wrote it: {size} bytes, was {self.files[rel]})"
        return None

    def dir(self, rel: str) -> bool:
        return rel in self.dirs

    def link(self, rel: str, target: str) -> bool:
        return self.links.get(rel) == target


def _valid_outputs(outputs: object) -> bool:
    return isinstance(outputs, dict) and isinstance(outputs.get("files"), dict)


def scan_outputs(folder: Path) -> dict:
    """The manifest of what a stage wrote into ``folder``: ``files`` (relative path -> bytes), ``dirs`` and
    ``links`` (relative path -> target). Links are recorded as links, never followed."""
    files: dict[str, int] = {}
    dirs: list[str] = []
    links: dict[str, str] = {}

    def visit(rel_dir: str) -> None:
        with os.scandir(folder / rel_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            if e.is_symlink():
                links[rel] = os.readlink(e.path)
            elif e.is_dir(follow_symlinks=False):
                dirs.append(rel)
                visit(rel)
            else:
                files[rel] = e.stat(follow_symlinks=False).st_size

    visit("")
    return {"files": files, "dirs": dirs, "links": links}


@dataclass
class StageInventory:
    """What is in a stage folder: the entries cvd-scene wrote and everything else."""

    ours: list[Path] = field(default_factory=list)
    """Files and links cvd-scene wrote, then its folders deepest first: the order to remove them in."""
    foreign: list[str] = field(default_factory=list)
    """Everything else, relative to the run folder, with the reason when it is not just unknown."""


def stage_inventory(run_dir: Path, stage: str, record: dict | None) -> StageInventory:
    """Sort ``run_dir/stage`` into what cvd-scene wrote there and anything else, by the stage's manifest in
    ``record`` (or :data:`KNOWN_OUTPUTS` when the record has none). A folder not recorded at all (``record`` None)
    is foreign as a whole; so is a stage "folder" that is a link or a file. Links are never followed."""
    folder = Path(run_dir) / stage
    out = StageInventory()
    if folder.is_symlink():
        out.foreign.append(f"{stage} (a symbolic link to {os.readlink(folder)}; cvd-scene never writes one)")
        return out
    if not folder.is_dir():
        out.foreign.append(f"{stage} (a file where the stage's folder belongs)")
        return out
    if record is None:
        out.foreign.append(f"{stage}/ (run.json does not record this stage)")
        return out
    outputs = record.get("outputs")
    judge = _Manifest(outputs) if _valid_outputs(outputs) else _Known(stage)
    files: list[Path] = []
    dirs: list[Path] = []

    def visit(rel_dir: str) -> None:
        with os.scandir(folder / rel_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            path = Path(e.path)
            if e.is_symlink():
                if judge.link(rel, os.readlink(e.path)):
                    files.append(path)
                else:
                    out.foreign.append(f"{stage}/{rel} (a symbolic link)")
            elif e.is_dir(follow_symlinks=False):
                if judge.dir(rel):
                    visit(rel)
                    dirs.append(path)
                else:
                    out.foreign.append(f"{stage}/{rel}/")
            elif e.is_file(follow_symlinks=False):
                reason = judge.file(rel, e.stat(follow_symlinks=False).st_size)
                if reason is None:
                    files.append(path)
                else:
                    out.foreign.append(f"{stage}/{rel}{reason}")
            else:
                out.foreign.append(f"{stage}/{rel} (not a regular file)")

    visit("")
    out.ours = files + dirs  # dirs were appended after their contents: deepest first
    return out


def _name_them(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _remove_ours(inventory: StageInventory, folder: Path) -> None:
    """Remove what :func:`stage_inventory` found cvd-scene wrote, then the stage folder (empty by then)."""
    for p in inventory.ours:
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            p.rmdir()
    folder.rmdir()


# ------------------------------------------------------------------------------------------ run folder

_DONE = ("finished", "partial")
_RECORDED = ("finished", "partial", "failed")


class RunFolder:
    """A run folder and its ``run.json``. Open it with :meth:`open` inside :func:`run_lock`."""

    STAGE_FOLDERS = _STAGE_NAMES
    RESERVED = (*_STAGE_NAMES, "run.json", "report.html")
    """Names cvd-scene writes at the top of a run folder."""

    def __init__(self, path: Path, state: dict, config: dict | None = None, preset: str | None = None):
        self.path = path
        self.state = state
        self.config = config
        """The config of the command running now; each stage's section enters ``run.json`` when it finishes."""
        self.preset = preset

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
        if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
            fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise RunFolderError(f"{path}/run.json is not a cvd-scene run file (format {fmt!r})")
        if state.get("version") != RUN_VERSION:
            raise RunFolderError(
                f"{path} was written by cvd-scene {state.get('cvd_scene_version', '?')} with run-folder version "
                f"{state.get('version')!r}; this cvd-scene ({__version__}) reads version {RUN_VERSION}. "
                "Use a new run folder, or pass --overwrite to replace this one."
            )

    @staticmethod
    def _load_own(rj: Path) -> dict:
        """``run.json`` when it is a cvd-scene run file (any version); refuses anything else, even with
        ``--overwrite``: cvd-scene never replaces a file it did not write."""
        keep = "cvd-scene will not replace it (not even with --overwrite): restore it, move it away or choose another folder"
        try:
            state = json.loads(rj.read_text())
        except OSError as e:
            raise RunFolderError(f"cannot read {describe_os_error(e, rj)}") from None
        except ValueError as e:
            raise RunFolderError(f"{rj} is not valid JSON ({e}); {keep}") from None
        if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
            fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise RunFolderError(f"{rj} is not a cvd-scene run file (format {fmt!r}); {keep}")
        return state

    @classmethod
    def open(
        cls, path: str | os.PathLike, config: dict, preset: str | None, overwrite: bool = False, fresh: bool = False
    ) -> RunFolder:
        """Open or create the run folder for ``config`` (a JSON-able dict of the whole run config).

        ``fresh=True`` (``cvd-scene run``) demands that the stages already run used the same config, or
        ``overwrite`` (which removes cvd-scene's recorded outputs first, and refuses if anything else is in a stage
        folder). Stage commands (``fresh=False``) run with ``config``; stages whose config changed must be redone.
        Opening writes nothing: ``run.json`` and the run's config change only when a stage finishes.
        """
        path = Path(path)
        rj = path / "run.json"
        state: dict | None = None
        if rj.exists() or rj.is_symlink():
            state = cls._load_own(rj)
            if state.get("version") != RUN_VERSION:
                if not overwrite:
                    cls._check_version(path, state)
                cls._clear(path, None)
                state = None
            elif overwrite and fresh:
                cls._clear(path, state)
                state = None
            elif fresh and state.get("stages"):
                done = {n for n, r in state["stages"].items() if isinstance(r, dict) and r.get("status") in _DONE}
                diff = _diff_keys(_ran_part(state.get("config"), done), _ran_part(config, done))
                if diff:
                    raise RunFolderError(
                        f"{path} holds a run with a different config ({'; '.join(diff[:6])}"
                        f"{' ...' if len(diff) > 6 else ''}). Pass --overwrite to replace it, --redo STAGE to redo "
                        "the stages concerned, or use another folder."
                    )
        elif path.is_dir():
            taken = [n for n in cls.RESERVED if (path / n).exists() or (path / n).is_symlink()]
            if taken:
                raise RunFolderError(
                    f"{path} has no run.json but holds {', '.join(taken)}: cvd-scene has no record of writing them, "
                    "so it will not use or delete them (not even with --overwrite). Move them away or choose "
                    "another folder."
                )
            others = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
            if others and not overwrite:
                hint = (
                    "pass --overwrite to use it anyway (files that are not cvd-scene outputs are kept)"
                    if fresh
                    else "start a run there with `cvd-scene run DIR --overwrite` (files that are not cvd-scene "
                    "outputs are kept)"
                )
                raise RunFolderError(
                    f"{path} exists, is not empty ({_name_them(others, 4)}) and is not a cvd-scene run folder "
                    f"(no run.json); {hint} or choose another folder"
                )
        if state is None:
            state = {
                "format": RUN_FORMAT,
                "version": RUN_VERSION,
                "cvd_scene_version": __version__,
                "created": utc_now(),
                "stages": {},
            }
        return cls(path, state, config=config, preset=preset)

    @classmethod
    def _clear(cls, path: Path, state: dict | None) -> None:
        """``--overwrite``: remove every output cvd-scene wrote, then ``report.html`` and ``run.json``; anything else
        is kept, and a stage folder holding anything else is refused (naming it) before anything is deleted.

        ``state`` is the run's ``run.json`` (None: one of another version, judged by :data:`KNOWN_OUTPUTS`). The
        record is updated (every stage ``removing``) before the first file goes, so an interrupted removal is taken
        up by the next ``--overwrite``.
        """
        stages = (state or {}).get("stages") or {}
        inventories: dict[str, StageInventory] = {}
        foreign: list[str] = []
        for name in cls.STAGE_FOLDERS:
            folder = path / name
            if not (folder.exists() or folder.is_symlink()):
                continue
            rec = stages.get(name) if state is not None else {}
            inv = stage_inventory(path, name, rec if isinstance(rec, dict) else None)
            inventories[name] = inv
            foreign += inv.foreign
        for name in ("report.html", "run.json"):
            p = path / name
            if p.is_symlink() or (p.exists() and not p.is_file()):
                foreign.append(f"{name} (not a file cvd-scene wrote)")
        if foreign:
            raise RunFolderError(
                f"--overwrite: {path} holds what cvd-scene did not write (or what changed since): "
                f"{_name_them(foreign)}. cvd-scene deletes only its own outputs and has deleted nothing; move "
                "these away and run the same command again."
            )
        record = {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "cvd_scene_version": __version__,
            "created": (state or {}).get("created", utc_now()),
            "config": (state or {}).get("config"),
            "stages": {
                name: {
                    "status": "removing",
                    "message": "--overwrite was removing this stage's outputs; run it again",
                    "outputs": (stages.get(name) or {}).get("outputs") if state is not None else None,
                }
                for name in inventories
            },
        }
        run = cls(path, record)
        if inventories:
            run.save()  # the record first: an interrupted removal leaves no stage recorded as finished
        for name, inv in inventories.items():
            log.info("--overwrite: removing %d files and folders of stage %s", len(inv.ours), name)
            _remove_ours(inv, path / name)
        for name in ("report.html", "run.json"):
            (path / name).unlink(missing_ok=True)

    def save(self) -> None:
        self.state["updated"] = utc_now()
        try:
            write_json(self.run_json, self.state)
        except OSError as e:
            _remove_quietly(self.path / f".run.json.tmp{os.getpid()}")
            raise RunFolderError(f"cannot write {describe_os_error(e, self.run_json)}") from e

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
            if rec is None or rec.get("status") not in _RECORDED:
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

    def _replaceable(self, name: str) -> StageInventory:
        """The inventory of ``RUN_DIR/name`` before its outputs are replaced; refuses, naming them, when anything
        in it is not what the stage's record says cvd-scene wrote."""
        inv = stage_inventory(self.path, name, self.stage_record(name))
        if inv.foreign:
            raise RunFolderError(
                f"stage {name!r} would replace {self.path / name}, which holds what cvd-scene did not write (or "
                f"what changed since): {_name_them(inv.foreign)}; it may hold your own files. Move these away and "
                "run the same command again."
            )
        return inv

    def _record_config(self, name: str) -> None:
        """Enter the config this command ran stage ``name`` with into ``run.json``: the stage's section and the
        run-wide keys (prompt, seed); the first stage of a new run records the whole config."""
        if self.config is None:
            return
        current = self.state.get("config")
        if not isinstance(current, dict):
            self.state["config"] = json.loads(json.dumps(self.config, default=str))
        else:
            for key, value in self.config.items():
                if key == name or key not in self.STAGE_FOLDERS:
                    current[key] = value
        if self.preset is not None or "preset" not in self.state:
            self.state["preset"] = self.preset
        self.state["versions"] = package_versions()

    def _write_error(self, name: str, e: OSError, tmp: Path) -> RunFolderError | None:
        """A one-line error for a stage that could not write (full disk, read-only, permissions, size limit)."""
        if disk_full(e, self.path):
            where = e.filename if e.filename is not None else tmp
            return RunFolderError(
                f"stage {name!r}: the disk is full writing {where} ({e.strerror or e}); earlier outputs in "
                f"{self.path} are intact. Free some space and run the same command again."
            )
        if e.errno in _WRITE_ERRNOS:
            return RunFolderError(
                f"stage {name!r}: {describe_os_error(e, tmp)}; earlier outputs in {self.path} are intact"
            )
        if e.errno is None and e.filename is None:  # names no file: say which stage and run folder
            return RunFolderError(f"stage {name!r}: {e}; earlier outputs in {self.path} are intact")
        return None

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
        ``redo``. If ``fn`` raises, the previous outputs and ``run.json`` are left as they were. Previous outputs
        are replaced only when everything in their folder is what the stage's record says cvd-scene wrote; the
        new record (with the manifest of the new outputs) is saved before the folder is renamed into place.
        """
        raise_if_stopped()
        stages = self.state.setdefault("stages", {})
        rec = stages.get(name)
        h = config_hash(stage_config)
        final = self.path / name
        if rec is not None and rec.get("status") in _DONE and not redo:
            if rec.get("config_hash") == h and final.is_dir():
                log.info("stage %s: already %s, skipped (use --redo %s to run it again)", name, rec["status"], name)
                return None
            if final.is_dir():
                raise RunFolderError(
                    f"stage {name!r} already ran in {self.path} with a different config; pass --redo {name} "
                    "to run it again (and the stages after it), or --overwrite to start the run over"
                )
        if final.exists() or final.is_symlink():
            if rec is None:
                raise RunFolderError(
                    f"{final} exists but run.json does not record stage {name!r}; it may hold your own files. "
                    "Move it away and run the same command again."
                )
            self._replaceable(name)
        tmp = self.path / f".tmp-{name}-{os.getpid()}"
        if tmp.exists() or tmp.is_symlink():
            _remove_path(tmp)
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise (self._write_error(name, e, tmp) or e) from None
        started = utc_now()
        t0 = time.perf_counter()
        try:
            result = fn(tmp)
        except OSError as e:
            _remove_quietly(tmp)
            error = self._write_error(name, e, tmp)
            if error is not None:
                raise error from e
            raise
        except BaseException:
            _remove_quietly(tmp)
            raise
        seconds = time.perf_counter() - t0
        try:
            raise_if_stopped()
            if not isinstance(result, StageResult):
                raise TypeError(f"stage {name!r} returned {type(result).__name__}, expected StageResult")
            outputs = scan_outputs(tmp)
            if final.exists() or final.is_symlink():
                inv = self._replaceable(name)  # again: the stage may have run for hours
                rec["status"] = "replacing"
                rec["message"] = "its outputs were being replaced; run this stage again"
                self.save()  # the record first, then the deletion
                _remove_ours(inv, final)
            stages[name] = {
                "status": result.status,
                "started": started,
                "finished": utc_now(),
                "seconds": round(seconds, 3),
                "config_hash": h,
                "summary": result.summary,
                "message": result.message,
                "outputs": outputs,
            }
            if result.status in _DONE or not isinstance(self.state.get("config"), dict):
                self._record_config(name)  # a failed stage leaves the run's config as it was (unless it is new)
            self.save()
            os.replace(tmp, final)
        except BaseException:
            _remove_quietly(tmp)
            raise
        return result


def _ran_part(config: object, done: set[str]) -> object:
    """The part of a run config that the finished stages ``done`` depend on: every run-wide key and their
    sections (a section whose stage has not run yet may change freely)."""
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if k not in _STAGE_NAMES or k in done}
