"""Many scenes at once: ``cvd-scene batch`` runs a list of jobs on Ray, each job an ordinary run folder.

Scheduling (the pattern that fits a throughput problem whose every worker must hold the model's weights):

* **model actors** — one per GPU (``generate_gpus`` of a GPU each, ½ by default, so a fit can share the card), or
  one CPU actor where there is no GPU; each loads a CVD model once (:func:`cvd_scene.generate.cvd_models.keep_models_loaded`)
  and serves the ``generate`` stage of the jobs routed to it, in order;
* ``plan``, ``register``, ``evaluate``, ``export`` and a reference-renderer ``generate`` are CPU tasks; ``fit`` is a
  GPU task (a CPU task where the cluster has no GPU);
* a job's stages are chained as futures (each task receives the previous one's result), so different jobs overlap:
  job A registers while job B generates. Stages of one job never run at once (they share the run folder's lock).

Every job is a run folder ``OUT_DIR/<slug>/`` made by the ordinary stage code, so it can be opened, resumed or
rerun with the normal commands; rerunning the batch skips finished stages and resumes interrupted ones. A failing
job records its stage, error and log (``OUT_DIR/logs/<slug>.log``, ``<slug>/batch_job.json``) and does not stop the
others. Only transient failures are retried (a lost worker, out of memory, I/O errors), up to ``max_retries``; a
refused config or a failed stage is not. ``OUT_DIR/batch.json`` holds every job's status and per-stage timings
(start, end, host, process), ``OUT_DIR/index.html`` the gallery (:mod:`cvd_scene.gallery`).

Ray is imported only inside the functions that need it. Must not import torch at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from cvd_scene.camera_io import write_json
from cvd_scene.config import ConfigError, load_config, merge, parse_overrides, to_dict
from cvd_scene.runconfig import RunConfig
from cvd_scene.stages import STAGE_ORDER

log = logging.getLogger(__name__)

BATCH_FORMAT = "cvd-scene/batch"
BATCH_VERSION = 1
CPU_STAGES = ("plan", "register", "export", "evaluate")
"""Stages that always run as CPU tasks (``generate`` does too with the reference renderer)."""


class BatchError(RuntimeError):
    """The batch cannot start as asked (a jobs file that cannot be read, a bad option); the message says why."""


# --------------------------------------------------------------------------------------------------- jobs


@dataclass(kw_only=True)
class Job:
    """One scene: a prompt with its preset, overrides and seed; its run folder is ``OUT_DIR/<slug>``."""

    prompt: str
    """The text prompt."""
    preset: str = "demo"
    """Run preset (a name in configs/run/ or a YAML path)."""
    overrides: dict = field(default_factory=dict)
    """Config overrides (nested mapping, as ``KEY=VALUE`` parses to)."""
    seed: int | None = None
    """The run's seed (None: the preset's)."""
    slug: str = ""
    """Folder name under OUT_DIR (filled by :func:`assign_slugs`)."""
    line: int = 0
    """Where the job was defined in the jobs file (1-based), for messages."""


def read_jobs(path: str | os.PathLike, default_preset: str = "demo") -> list[Job]:
    """Jobs from a text file (one prompt a line; blank lines and ``#`` comments skipped) or a YAML list whose items
    are a prompt string or a mapping with ``prompt`` and optional ``preset``, ``overrides`` (a mapping, or a list of
    ``KEY=VALUE`` strings) and ``seed``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BatchError(f"cannot read the jobs file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise BatchError(f"the jobs file {path} is not UTF-8 text") from None
    jobs: list[Job] = []
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BatchError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(items, list):
            raise BatchError(f"{path}: expected a YAML list of jobs, got {type(items).__name__}")
        for i, item in enumerate(items, 1):
            where = f"{path}: job {i}"
            if isinstance(item, str):
                item = {"prompt": item}
            if not isinstance(item, dict):
                raise BatchError(f"{where}: expected a prompt or a mapping, got {item!r}")
            unknown = set(item) - {"prompt", "preset", "overrides", "seed"}
            if unknown:
                raise BatchError(f"{where}: unknown key(s) {sorted(unknown)}; keys are prompt, preset, overrides, seed")
            prompt = item.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise BatchError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
            ov = item.get("overrides") or {}
            if isinstance(ov, list):
                if not all(isinstance(x, str) for x in ov):
                    raise BatchError(f"{where}: 'overrides' must be KEY=VALUE strings or a mapping")
                try:
                    ov = parse_overrides(ov)
                except ConfigError as e:
                    raise BatchError(f"{where}: {e}") from None
            if not isinstance(ov, dict):
                raise BatchError(f"{where}: 'overrides' must be a mapping or a list of KEY=VALUE, got {ov!r}")
            seed = item.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
                raise BatchError(f"{where}: 'seed' must be a non-negative integer, got {seed!r}")
            preset = item.get("preset", default_preset)
            if not isinstance(preset, str):
                raise BatchError(f"{where}: 'preset' must be a string, got {preset!r}")
            jobs.append(Job(prompt=prompt.strip(), preset=preset, overrides=ov, seed=seed, line=i))
    else:
        for i, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                jobs.append(Job(prompt=line, preset=default_preset, line=i))
    if not jobs:
        raise BatchError(f"{path} holds no jobs")
    return assign_slugs(jobs)


def assign_slugs(jobs: list[Job]) -> list[Job]:
    """Give every job a folder name: words of its prompt and a short hash of everything that defines it (stable
    across reruns); a job identical to an earlier one gets ``-2``, ``-3``, ... in file order."""
    seen: dict[str, int] = {}
    for job in jobs:
        words = re.sub(r"[^a-z0-9]+", "-", job.prompt.lower()).strip("-")[:40].rstrip("-") or "scene"
        key = json.dumps([job.prompt, job.preset, job.overrides, job.seed], sort_keys=True, default=str)
        slug = f"{words}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
        seen[slug] = seen.get(slug, 0) + 1
        job.slug = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
    return jobs


def job_config(job: Job, common: dict) -> RunConfig:
    """The run config of ``job``: its preset, then the batch's ``KEY=VALUE`` overrides, then its own (and seed)."""
    ov = merge(common, job.overrides)
    ov["prompt"] = job.prompt
    if job.seed is not None:
        ov["seed"] = job.seed
    return load_config(RunConfig, "run", job.preset, ov)


# --------------------------------------------------------------------------------------------- resources


@dataclass(kw_only=True)
class BatchResources:
    """What each stage asks Ray for. ``generate_gpus`` is the share of a GPU each model actor holds (one actor per
    ``1 / generate_gpus`` of the cluster's GPUs); ``fit_gpus`` what a fit takes; with ½ each, every card serves one
    model and one fit at a time. Without GPUs, ``cpu_actors`` model actors of one CPU each."""

    cpus: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGE_ORDER, 1.0))
    """CPUs per stage task (``generate`` here: a reference-renderer task, or a CPU model actor)."""
    generate_gpus: float = 0.5
    """Share of a GPU each model actor holds."""
    fit_gpus: float = 0.5
    """Share of a GPU a fit task takes (where the cluster has GPUs)."""
    cpu_actors: int = 1
    """Model actors where the cluster has no GPU."""
    actors: int | None = None
    """Model actors to start at most (None: one per GPU share, or ``cpu_actors``)."""

    def apply(self, items: list[str]) -> BatchResources:
        """Set ``STAGE.cpus=N``, ``generate.gpus=N``, ``fit.gpus=N`` or ``cpu_actors=N`` from ``--resource`` items."""
        for item in items:
            key, sep, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not sep or not number >= 0:
                raise BatchError(f"--resource {item!r}: expected KEY=NUMBER (>= 0), e.g. fit.gpus=1 register.cpus=2")
            stage, _, kind = key.partition(".")
            if key == "cpu_actors" and number >= 1:
                self.cpu_actors = int(number)
            elif key == "actors" and number >= 1:
                self.actors = int(number)
            elif stage in STAGE_ORDER and kind == "cpus":
                self.cpus[stage] = number
            elif key == "generate.gpus" and 0 < number <= 1:
                self.generate_gpus = number
            elif key == "fit.gpus" and number <= 1:
                self.fit_gpus = number
            else:
                raise BatchError(
                    f"--resource {item!r}: keys are STAGE.cpus ({', '.join(STAGE_ORDER)}), generate.gpus (0-1], "
                    "fit.gpus [0-1], cpu_actors (>= 1) and actors (>= 1)"
                )
        return self


# -------------------------------------------------------------------------------------- the worker side


def run_job_stage(previous: dict | None, run_dir: str, config: dict, preset: str, stage: str, job: str,
                  log_path: str) -> dict:  # fmt: skip
    """Run one stage of one job in this worker process (a Ray task or actor method); returns what happened.

    ``previous`` is the result of the job's previous stage (None for the first): when that did not finish, nothing
    runs and the result says so. Refusals (config, run folder, failed stage) are results; transient errors (I/O,
    memory) propagate, so that Ray retries the task.
    """
    from cvd_scene.config import from_dict
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runfolder import RunFolderError, StageRefused, clear_stale_lock

    if previous is not None and previous.get("status") not in ("finished", "partial", "skipped"):
        return {"stage": stage, "status": "blocked", "message": f"stage {previous.get('stage')} did not finish"}
    run_path = Path(run_dir)
    os.environ["CVD_SCENE_JOB_ID"] = job
    handler = _log_to(log_path)
    start = time.time()
    out = {"stage": stage, "start": start, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        clear_stale_lock(run_path, job)
        results = run_stages(
            run_path, from_dict(RunConfig, config), [stage], preset=preset, fresh=True,
            command=f"cvd-scene batch (job {job})",
        )  # fmt: skip
        result = results.get(stage)
        if result is None:
            out.update(status="skipped", message="already finished")
        else:
            out.update(status=result.status, message=result.message, summary=result.summary)
    except (ConfigError, RunFolderError, StageRefused, ValueError, FileNotFoundError, TypeError, KeyError) as e:
        log.error("job %s: stage %s refused: %s", job, stage, e)
        out.update(status="failed", message=f"{type(e).__name__}: {e}")
    finally:
        out["end"] = time.time()
        logging.getLogger("cvd_scene").removeHandler(handler)
        handler.close()
    return out


def _log_to(path: str) -> logging.Handler:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cvd_scene")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


class ModelWorker:
    """A model actor: keeps the models it loads (one load per model per actor) and runs ``generate`` stages."""

    def __init__(self) -> None:
        from cvd_scene.generate.cvd_models import keep_models_loaded

        self._cache = keep_models_loaded()
        self._cache.__enter__()

    def run_stage(self, *args) -> dict:
        from cvd_scene.generate.cvd_models import model_loads

        out = run_job_stage(*args)
        out["actor"] = f"{socket.gethostname()}:{os.getpid()}"
        out["model_loads"] = model_loads()
        return out


# -------------------------------------------------------------------------------------- the driver side


@dataclass
class JobState:
    job: Job
    run_dir: Path
    status: str = "pending"
    """pending, running, finished (every stage finished or partial), failed, or interrupted."""
    stage: str | None = None
    """The stage running now, or the one that failed."""
    message: str = ""
    stages: dict = field(default_factory=dict)
    """stage -> {status, message, start, end, seconds, host, pid[, actor, model_loads]}."""
    todo: tuple[str, ...] = STAGE_ORDER
    """The stages this batch runs (all, or up to ``until``)."""


def transient_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions worth retrying: I/O and memory (CPU, and CUDA where torch has it)."""
    out: list[type[BaseException]] = [OSError, MemoryError]
    with contextlib.suppress(ImportError, AttributeError):
        import torch

        out.append(torch.OutOfMemoryError)
    return tuple(out)


def run_batch(
    jobs: list[Job],
    out_dir: str | os.PathLike,
    overrides: dict | None = None,
    *,
    address: str | None = None,
    max_retries: int = 2,
    resources: BatchResources | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    until: str | None = None,
    progress: bool = True,
) -> dict:
    """Run every job to the end (or its failure) on Ray; returns the ``batch.json`` document.

    ``address``: a Ray cluster (``ray://host:10001`` or ``auto``); None starts a local Ray (``num_cpus``,
    ``num_gpus`` declare its resources: by default the machine's). A Ray already initialised in this process is
    used as it is. ``until``: stop every job after this stage.
    """
    import ray

    if until is not None and until not in STAGE_ORDER:
        raise BatchError(f"until={until!r} is not a stage; stages are {', '.join(STAGE_ORDER)}")
    todo = STAGE_ORDER[: STAGE_ORDER.index(until) + 1] if until else STAGE_ORDER

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    res = resources or BatchResources()
    common = overrides or {}
    started_here = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
        ray.init(address=address, **kwargs)
        started_here = True
    states = [JobState(job, out_dir / job.slug, todo=todo) for job in jobs]
    doc_path = out_dir / "batch.json"
    t_start = time.time()
    pending: dict = {}  # ref -> (job state, stage)

    def document(final: bool = False) -> dict:
        return _document(states, out_dir, address, t_start, final)

    try:
        cluster = ray.cluster_resources()
        gpus = float(cluster.get("GPU", 0))
        actors = _Actors(ray, res, gpus, max_retries)
        configs = {}
        for st in states:
            try:
                configs[st.job.slug] = job_config(st.job, common)
            except ConfigError as e:
                st.status, st.stage, st.message = "failed", "config", f"refused config: {e}"
        model_jobs = 0  # model jobs go to the actors in turn
        for st in states:
            if st.status == "failed":
                continue
            config = configs[st.job.slug]
            _submit_job(ray, st, config, actors, model_jobs, res, gpus, max_retries, pending, out_dir)
            model_jobs += config.generate.generator == "cvd"
        write_json(doc_path, document())
        with _progress(progress, len(states)) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    st, stage = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:  # failed after its retries, or a lost actor
                        result = {"stage": stage, "status": "failed", "message": _short_error(e)}
                    _record(st, stage, result)
                for st in states:
                    if st.status == "running":  # the job's first stage still pending is the one at work
                        st.stage = next((s for owner, s in pending.values() if owner is st), st.stage)
                bar(states)
                if ready:
                    write_json(doc_path, document())
        doc = document(final=True)
        write_json(doc_path, doc)
        from cvd_scene.gallery import write_gallery

        write_gallery(out_dir, doc)
        return doc
    except KeyboardInterrupt:
        for st in states:
            if st.status in ("pending", "running"):
                st.status, st.message = "interrupted", "stopped by Ctrl-C; rerun the batch to resume"
        with contextlib.suppress(Exception):
            for ref in list(pending):
                ray.cancel(ref, force=False)
            time.sleep(2.0)  # let the stages clean their temporary folders and locks
        write_json(doc_path, document(final=True))
        raise
    finally:
        if started_here:
            ray.shutdown()


class _Actors:
    """The model actors, started on first use (a batch of reference-renderer jobs starts none)."""

    def __init__(self, ray, res: BatchResources, gpus: float, max_retries: int):
        self._cls = ray.remote(ModelWorker)
        if gpus > 0:
            self.count = max(1, int(gpus / res.generate_gpus + 1e-9))
            self._opts = {"num_gpus": res.generate_gpus, "num_cpus": 0}
        else:
            self.count = res.cpu_actors
            self._opts = {"num_cpus": res.cpus["generate"]}
        if res.actors is not None:
            self.count = min(self.count, res.actors)
        self._opts.update(max_restarts=max_retries, max_task_retries=max_retries)
        self._handles: dict[int, object] = {}

    def __getitem__(self, i: int):
        i %= self.count
        if i not in self._handles:
            self._handles[i] = self._cls.options(**self._opts).remote()
        return self._handles[i]


def _submit_job(ray, st: JobState, config: RunConfig, actors: _Actors, index: int, res: BatchResources, gpus: float,
                max_retries: int, pending: dict, out_dir: Path) -> None:  # fmt: skip
    """Chain the stages of one job as futures."""
    task = ray.remote(run_job_stage)
    retry = list(transient_exceptions())
    data = to_dict(config)
    log_path = str(out_dir / "logs" / f"{st.job.slug}.log")
    previous = None
    st.status = "running"
    for stage in st.todo:
        args = (previous, str(st.run_dir), data, st.job.preset, stage, f"batch:{st.job.slug}", log_path)
        if stage == "generate" and config.generate.generator == "cvd":
            ref = actors[index].run_stage.remote(*args)
        else:
            opts: dict = {"num_cpus": res.cpus[stage], "max_retries": max_retries, "retry_exceptions": retry}
            if stage == "fit" and gpus > 0:
                opts["num_gpus"] = res.fit_gpus
            ref = task.options(**opts).remote(*args)
        pending[ref] = (st, stage)
        previous = ref


def _record(st: JobState, stage: str, result: dict) -> None:
    if "start" in result and "end" in result:
        result["seconds"] = round(result["end"] - result["start"], 3)
    st.stages[stage] = result
    status = result.get("status")
    if status == "failed":
        st.status, st.stage, st.message = "failed", stage, result.get("message", "")
    elif status == "blocked":
        pass
    elif stage == st.todo[-1] and st.status != "failed":
        st.status, st.stage, st.message = "finished", None, ""


def _short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(e).__name__}: {text[-1] if text else ''}"


def _document(states: list[JobState], out_dir: Path, address: str | None, t_start: float, final: bool) -> dict:
    jobs = []
    for st in states:
        entry = {
            "slug": st.job.slug,
            "prompt": st.job.prompt,
            "preset": st.job.preset,
            "overrides": st.job.overrides,
            "seed": st.job.seed,
            "run_dir": st.job.slug,
            "status": st.status,
            "stage": st.stage,
            "message": st.message,
            "log": f"logs/{st.job.slug}.log",
            "stages": st.stages,
        }
        jobs.append(entry)
        if final and st.run_dir.is_dir():
            with contextlib.suppress(OSError):
                write_json(st.run_dir / "batch_job.json", {**entry, "batch": str(out_dir / "batch.json")})
    counts = {k: sum(1 for st in states if st.status == k) for k in ("finished", "failed", "running", "pending",
                                                                      "interrupted")}  # fmt: skip
    return {
        "format": BATCH_FORMAT,
        "version": BATCH_VERSION,
        "address": address or "local",
        "started": t_start,
        "seconds": round(time.time() - t_start, 3),
        "done": final,
        "counts": counts,
        "jobs": jobs,
    }


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    """A callable that shows jobs done / running / failed and per-stage counts (rich), or does nothing."""
    if not enabled:
        yield lambda states: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cvd_scene.logs import stderr_console

    with Progress(
        TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=stderr_console(),
    ) as prog:
        task = prog.add_task("", total=total)

        def update(states: list[JobState]) -> None:
            done = sum(st.status in ("finished", "failed") for st in states)
            failed = sum(st.status == "failed" for st in states)
            per_stage = {s: 0 for s in STAGE_ORDER}
            for st in states:
                if st.status == "running" and st.stage in per_stage:
                    per_stage[st.stage] += 1
            running = " ".join(f"{s} {n}" for s, n in per_stage.items() if n)
            prog.update(task, completed=done, description=f"failed {failed} | running: {running or '-'}")

        yield update


def summary_line(doc: dict) -> str:
    c = doc["counts"]
    return (
        f"{c['finished']} finished, {c['failed']} failed"
        + (f", {c['interrupted']} interrupted" if c.get("interrupted") else "")
        + f" in {doc['seconds']:.0f} s"
    )


__all__ = [
    "BatchError",
    "BatchResources",
    "Job",
    "assign_slugs",
    "job_config",
    "read_jobs",
    "run_batch",
    "run_job_stage",
    "summary_line",
]
