"""``cvd-scene batch`` on a real local Ray (one module-scoped instance, no dashboard, a small object store): jobs
files, a failing job among good ones, a rerun that does no work, the gallery in headless Chromium, model actors on
declared GPUs that load a model once and stages of different jobs that overlap; an interrupted batch and a lost
worker (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray

from cvd_scene.batch import BatchError, BatchResources, Job, assign_slugs, read_jobs, run_batch
from cvd_scene.cli import main
from cvd_scene.config import parse_overrides
from tests.browser import chromium, load_page

TINY = [
    "plan.num_videos=2",
    "plan.num_frames=4",
    "plan.width=64",
    "plan.height=64",
    "generate.samples_per_pixel=1",
    "register.fallback=planned",  # 64 px frames are too small for SIFT: the planned cameras carry the fit
    "fit.iterations=10",
    "fit.eval_every_k=2",
    "export.formats=[ply]",
]


def test_jobs_files_give_stable_unique_slugs(tmp_path):
    txt = tmp_path / "jobs.txt"
    txt.write_text("a red room\n\n# a comment\nA Red Room!\na red room\n")
    jobs = read_jobs(txt)
    assert [j.prompt for j in jobs] == ["a red room", "A Red Room!", "a red room"]
    assert jobs[0].slug.startswith("a-red-room-") and jobs[2].slug == jobs[0].slug + "-2"
    assert jobs[1].slug != jobs[0].slug  # another prompt, another hash
    assert [j.slug for j in read_jobs(txt)] == [j.slug for j in jobs]  # stable across reruns
    yml = tmp_path / "jobs.yaml"
    yml.write_text(
        "- a courtyard\n"
        "- {prompt: a table, preset: demo, seed: 3, overrides: [fit.iterations=5]}\n"
        "- {prompt: a table, overrides: {fit: {iterations: 5}}}\n"
    )
    a, b, c = read_jobs(yml)
    assert a.prompt == "a courtyard" and b.seed == 3 and b.overrides == {"fit": {"iterations": 5}}
    assert b.slug != c.slug  # the seed is part of what defines a job
    assert assign_slugs([Job(prompt="!!!")])[0].slug.startswith("scene-")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("prompt: one", "expected a YAML list"),
        ("- {prompt: a, colour: red}", r"job 1: unknown key\(s\) \['colour'\]"),
        ("- {prompt: a, seed: -1}", "'seed' must be a non-negative integer"),
        ("- {prompt: ''}", "'prompt' must be a non-empty string"),
        ("- [1, 2", "not valid YAML"),
    ],
)
def test_a_bad_jobs_file_is_one_line_naming_the_job(tmp_path, text, match):
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    with pytest.raises(BatchError, match=match):
        read_jobs(path)


def test_bad_resources_are_refused():
    with pytest.raises(BatchError, match="keys are STAGE.cpus"):
        BatchResources().apply(["gpu=1"])
    with pytest.raises(BatchError, match="expected KEY=NUMBER"):
        BatchResources().apply(["fit.gpus=lots"])
    assert BatchResources().apply(["register.cpus=2", "actors=3"]).cpus["register"] == 2


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs and 4 declared GPUs (Ray schedules GPU resources without CUDA)."""
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, configure_logging=False)  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def three_jobs(local_ray, tmp_path_factory):
    """A batch of three jobs, the third with a bad override; run once (read-only for the tests)."""
    root = tmp_path_factory.mktemp("batch")
    jobs = root / "jobs.yaml"
    jobs.write_text(
        "- a red room\n- a table with fruit\n- {prompt: a courtyard, overrides: {fit: {iterations: many}}}\n"
    )
    out = root / "out"
    doc = run_batch(read_jobs(jobs), out, parse_overrides(TINY), progress=False)
    return jobs, out, doc


def test_a_failing_job_does_not_stop_the_others(three_jobs):
    _, out, doc = three_jobs
    status = {j["prompt"]: j for j in doc["jobs"]}
    assert status["a red room"]["status"] == status["a table with fruit"]["status"] == "finished"
    bad = status["a courtyard"]
    assert bad["status"] == "failed" and bad["stage"] == "config" and "fit.iterations" in bad["message"]
    assert json.loads((out / "batch.json").read_text())["counts"] == {
        "finished": 2, "failed": 1, "running": 0, "pending": 0, "interrupted": 0,
    }  # fmt: skip
    for job in doc["jobs"][:2]:
        run = out / job["slug"]
        state = json.loads((run / "run.json").read_text())
        assert set(state["stages"]) == {"plan", "generate", "register", "fit", "export", "evaluate"}
        assert (run / "export" / "scene.ply").is_file() and not (run / ".lock").exists()
        assert json.loads((run / "batch_job.json").read_text())["status"] == "finished"
        stages = job["stages"]
        assert all(stages[s]["end"] >= stages[s]["start"] for s in stages)
        assert (out / job["log"]).read_text().strip()


def test_a_second_run_does_no_work(three_jobs):
    jobs, out, _ = three_jobs
    doc = run_batch(read_jobs(jobs), out, parse_overrides(TINY), progress=False)
    good = [j for j in doc["jobs"] if j["status"] == "finished"]
    assert len(good) == 2
    assert all(r["status"] == "skipped" for j in good for r in j["stages"].values())


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_the_gallery_shows_a_card_a_scene_in_headless_chromium(three_jobs, tmp_path):
    _, out, _ = three_jobs
    probe = out / "probe.html"
    probe.write_text(
        (out / "index.html").read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => console.log('GALLERY ' + JSON.stringify({"
            "cards: [...document.querySelectorAll('.card')].map(c => c.dataset.status),"
            "images: [...document.querySelectorAll('img')].map(i => i.naturalWidth),"
            "error: (document.querySelector('.err') || {}).textContent}))); </script></body>",
        )
    )
    try:
        messages = load_page(probe, tmp_path / "gallery.png")
    finally:
        probe.unlink()
    found = [m for m in messages if "GALLERY " in m]
    assert found, messages
    info = json.loads(found[0].split("GALLERY ", 1)[1].rsplit('"', 1)[0].replace('\\"', '"'))
    assert sorted(info["cards"]) == ["failed", "finished", "finished"]
    assert len(info["images"]) == 4 and min(info["images"]) == 64  # first frame and fit render of each scene
    assert "fit.iterations" in info["error"]


@pytest.mark.slow  # 40 s of Ray scheduling on 2 cores: over the default suite's budget
def test_model_actors_load_once_and_stages_of_different_jobs_overlap(local_ray, tmp_path):
    jobs = [Job(prompt=p) for p in ("a red room", "a green room", "a blue room")]
    assign_slugs(jobs)
    ov = parse_overrides([*TINY, "generate.generator=cvd", "generate.model=tiny", "generate.steps=2"])
    res = BatchResources().apply(["generate.gpus=1", "actors=2"])  # 2 actors on the 4 declared GPUs
    doc = run_batch(jobs, tmp_path / "out", ov, resources=res, until="register", progress=False)
    assert [j["status"] for j in doc["jobs"]] == ["finished"] * 3
    gen = [j["stages"]["generate"] for j in doc["jobs"]]
    assert gen[0]["actor"] != gen[1]["actor"] and gen[2]["actor"] == gen[0]["actor"]  # jobs go round the actors
    assert [g["model_loads"] for g in gen] == [1, 1, 1]  # the third job reused the first job's model
    intervals = [(j["slug"], s, r["start"], r["end"]) for j in doc["jobs"] for s, r in j["stages"].items()]
    overlaps = [
        (a, b) for a in intervals for b in intervals
        if a[0] != b[0] and a[1] != b[1] and a[2] < b[3] and b[2] < a[3]
    ]  # fmt: skip
    assert overlaps, intervals  # e.g. one job registers while another generates


def _wait_for(predicate, timeout_s: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_an_interrupted_batch_resumes_where_it_stopped(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red room\na table with fruit\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cvd_scene.cli", "batch", str(jobs), str(out), "--num-cpus", "2", "--quiet", *TINY]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_ADDRESS": ""})

    def some_stage_finished():
        try:
            doc = json.loads((out / "batch.json").read_text())
        except (OSError, ValueError):
            return False
        return any(r.get("status") == "finished" for j in doc["jobs"] for r in j["stages"].values())

    _wait_for(some_stage_finished, 240, "a finished stage")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    doc = json.loads((out / "batch.json").read_text())
    assert "interrupted" in {j["status"] for j in doc["jobs"]}
    assert not list(out.glob("*/.lock"))  # no worker left holding a lock
    done_before = {(j["slug"], s) for j in doc["jobs"] for s, r in j["stages"].items() if r["status"] == "finished"}
    assert main(["batch", str(jobs), str(out), "--num-cpus", "2", "--quiet", *TINY]) == 0
    doc = json.loads((out / "batch.json").read_text())
    assert [j["status"] for j in doc["jobs"]] == ["finished", "finished"]
    for slug, stage in done_before:
        assert next(j for j in doc["jobs"] if j["slug"] == slug)["stages"][stage]["status"] == "skipped"


@pytest.mark.slow
def test_a_lost_worker_is_retried_from_its_last_finished_stage(local_ray, tmp_path):
    jobs = [Job(prompt="a red room")]
    assign_slugs(jobs)
    out = tmp_path / "out"
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(doc=run_batch(jobs, out, parse_overrides(TINY), progress=False)), daemon=True
    )
    thread.start()
    run = out / jobs[0].slug

    def fit_running():
        try:
            lock = json.loads((run / ".lock").read_text())
        except (OSError, ValueError):
            return None
        return lock["pid"] if list(run.glob(".tmp-fit-*")) else None

    pid = _wait_for(fit_running, 240, "the fit stage")
    os.kill(pid, signal.SIGKILL)  # the worker process running the fit dies
    thread.join(timeout=300)
    doc = result["doc"]
    job = doc["jobs"][0]
    assert job["status"] == "finished", job
    assert job["stages"]["fit"]["pid"] != pid  # retried in another worker
    assert "lock of a lost worker" in (out / job["log"]).read_text()
