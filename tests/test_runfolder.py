"""The run folder contract: atomic stages, skip on rerun, locks, versions, no silent deletion."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cvd_scene.runfolder import RUN_VERSION, RunFolder, RunFolderError, StageResult, run_lock


def _write(out, name, text):
    (out / name).write_text(text)
    return StageResult(summary={"file": name})


def test_stage_output_is_renamed_into_place_and_recorded(tmp_path):
    run = RunFolder.open(tmp_path / "r", {"a": 1}, "demo")
    res = run.run_stage("plan", lambda out: _write(out, "x.txt", "hello"), {"a": 1})
    assert res.status == "finished"
    assert (tmp_path / "r" / "plan" / "x.txt").read_text() == "hello"
    state = json.loads((tmp_path / "r" / "run.json").read_text())
    assert state["stages"]["plan"]["status"] == "finished"
    assert state["stages"]["plan"]["seconds"] >= 0
    assert state["versions"]["numpy"]
    assert not list((tmp_path / "r").glob(".tmp-*"))


def test_failing_stage_keeps_previous_outputs_and_rerun_finishes(tmp_path):
    run = RunFolder.open(tmp_path / "r", {"a": 1}, "demo")
    run.run_stage("plan", lambda out: _write(out, "x.txt", "v1"), {"a": 1})
    before = (tmp_path / "r" / "run.json").read_text()

    def crash(out):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("boom in the middle")

    with pytest.raises(RuntimeError, match="boom"):
        run.run_stage("generate", crash, {"b": 1})
    assert (tmp_path / "r" / "plan" / "x.txt").read_text() == "v1"
    assert not (tmp_path / "r" / "generate").exists()
    assert not list((tmp_path / "r").glob(".tmp-*"))
    assert (tmp_path / "r" / "run.json").read_text() == before
    # the rerun skips the finished stage and finishes the one that crashed
    run = RunFolder.open(tmp_path / "r", {"a": 1}, "demo", fresh=True)
    assert run.run_stage("plan", lambda out: pytest.fail("finished stage must be skipped"), {"a": 1}) is None
    assert run.run_stage("generate", lambda out: _write(out, "g.txt", "ok"), {"b": 1}).status == "finished"
    assert (tmp_path / "r" / "generate" / "g.txt").read_text() == "ok"


def test_redo_replaces_and_changed_config_is_refused(tmp_path):
    run = RunFolder.open(tmp_path / "r", {"a": 1}, "demo")
    run.run_stage("plan", lambda out: _write(out, "x.txt", "v1"), {"a": 1})
    with pytest.raises(RunFolderError, match="--redo plan"):
        run.run_stage("plan", lambda out: _write(out, "x.txt", "v2"), {"a": 2})
    run.run_stage("plan", lambda out: _write(out, "x.txt", "v2"), {"a": 2}, redo=True)
    assert (tmp_path / "r" / "plan" / "x.txt").read_text() == "v2"


def test_finished_run_with_other_config_needs_overwrite(tmp_path):
    run = RunFolder.open(tmp_path / "r", {"a": 1}, "demo", fresh=True)
    run.run_stage("plan", lambda out: _write(out, "x.txt", "v1"), {"a": 1})
    (tmp_path / "r" / "my_notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="a: 1 -> 2.*--overwrite"):
        RunFolder.open(tmp_path / "r", {"a": 2}, "demo", fresh=True)
    assert (tmp_path / "r" / "plan" / "x.txt").exists()
    RunFolder.open(tmp_path / "r", {"a": 2}, "demo", fresh=True, overwrite=True)
    assert not (tmp_path / "r" / "plan").exists()
    assert (tmp_path / "r" / "my_notes.txt").read_text() == "mine"  # not ours: kept


def test_user_folder_is_not_taken_without_overwrite(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "photo.png").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="not a cvd-scene run folder"):
        RunFolder.open(tmp_path / "r", {}, "demo")
    # a stage folder without a run.json recording it is someone's own: refused, not replaced, even with overwrite
    (tmp_path / "s" / "plan").mkdir(parents=True)
    (tmp_path / "s" / "plan" / "mine.json").write_text("{}")
    with pytest.raises(RunFolderError, match="no run.json but holds plan"):
        RunFolder.open(tmp_path / "s", {}, "demo", overwrite=True)
    # ... and so is one that run.json does not record
    run = RunFolder.open(tmp_path / "t", {}, "demo")
    run.run_stage("generate", lambda out: _write(out, "g.txt", "v1"), {})
    (tmp_path / "t" / "plan").mkdir()
    (tmp_path / "t" / "plan" / "mine.json").write_text("{}")
    with pytest.raises(RunFolderError, match="may hold your own files"):
        run.run_stage("plan", lambda out: _write(out, "x.txt", "v1"), {}, redo=True)
    assert (tmp_path / "s" / "plan" / "mine.json").exists() and (tmp_path / "t" / "plan" / "mine.json").exists()


def test_incompatible_version_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    doc = {"format": "cvd-scene/run", "version": RUN_VERSION + 1, "cvd_scene_version": "9.0", "stages": {}}
    (tmp_path / "r" / "run.json").write_text(json.dumps(doc))
    with pytest.raises(RunFolderError, match=r"cvd-scene 9\.0 .*version 2.*reads version 1"):
        RunFolder.open(tmp_path / "r", {}, "demo")
    with pytest.raises(RunFolderError, match="reads version 1"):
        RunFolder.read(tmp_path / "r")


def test_second_lock_is_refused_in_process(tmp_path):
    with (
        run_lock(tmp_path / "r", "first"),
        pytest.raises(RunFolderError, match=r"in use by another cvd-scene run.*rm .*\.lock"),
        run_lock(tmp_path / "r", "second"),
    ):
        pass
    with run_lock(tmp_path / "r", "third"):  # released after the first
        pass


def test_concurrent_process_is_refused_and_stale_lock_explained(tmp_path):
    d = tmp_path / "r"
    code = (
        "import sys, time; from pathlib import Path; from cvd_scene.runfolder import run_lock\n"
        f"with run_lock(Path({str(d)!r}), 'holder'):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="in use by another cvd-scene run"), run_lock(d, "second"):
            pass
    finally:
        proc.kill()
        proc.wait()
    # the killed holder left its lock behind: it is reported as stale, with the command that clears it
    time.sleep(0.1)
    with pytest.raises(RunFolderError, match="no longer exists, so the lock is stale"), run_lock(d, "third"):
        pass


def test_only_a_finished_stage_changes_the_runs_config(tmp_path):
    run = RunFolder.open(tmp_path / "r", {"seed": 0, "plan": {"n": 1}, "register": {"mode": "a"}}, "demo")
    run.run_stage("plan", lambda out: _write(out, "x.txt", "v1"), {"n": 1})
    run.run_stage("register", lambda out: _write(out, "r.txt", "v1"), {"mode": "a"})
    # a stage that ends "failed" is recorded as failed, but the run's config keeps the section it had
    run = RunFolder.open(tmp_path / "r", {"seed": 0, "plan": {"n": 1}, "register": {"mode": "b"}}, "demo")
    run.run_stage("register", lambda out: StageResult(status="failed", message="no"), {"mode": "b"}, redo=True)
    state = json.loads((tmp_path / "r" / "run.json").read_text())
    assert state["stages"]["register"]["status"] == "failed" and state["config"]["register"] == {"mode": "a"}
    run = RunFolder.open(tmp_path / "r", {"seed": 0, "plan": {"n": 1}, "register": {"mode": "c"}}, "demo")
    run.run_stage("register", lambda out: _write(out, "r.txt", "v3"), {"mode": "c"}, redo=True)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["register"] == {"mode": "c"}
