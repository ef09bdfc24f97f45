"""Nothing lost, nothing escapes: ``--overwrite``, refused commands, interrupted runs and unwritable run folders,
each through the real command line on a tiny real run (reference renderer, 2 videos x 3 frames at 64 px).

Faults the test user (root) cannot provoke -- a read-only folder, a full disk -- are injected at the write calls
(an ``OSError`` with EROFS/ENOSPC, or without an error number as ``np.save`` raises it); the file-size limit is real
(``RLIMIT_FSIZE`` in a subprocess).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cvd_scene.cli import main
from cvd_scene.runfolder import RunFolder, StageResult, run_lock

TINY = [
    "--preset", "demo", "--quiet",
    "plan.num_videos=2", "plan.num_frames=3", "plan.width=64", "plan.height=64", "plan.reference_depth=false",
    "plan.covisibility_width_px=16", "plan.coverage_points=1000", "generate.samples_per_pixel=1",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A run folder after ``cvd-scene run --until generate`` (plan, generate, run.json, report.html)."""
    run = tmp_path_factory.mktemp("generated") / "run"
    assert main(["run", str(run), "--until", "generate", *TINY]) == 0
    return run


@pytest.fixture
def run_dir(generated, tmp_path) -> Path:
    """A private copy of the generated run folder."""
    dst = tmp_path / "run"
    shutil.copytree(generated, dst, symlinks=True)
    return dst


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): files by content hash, links by target, folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def error_line(capsys) -> str:
    """The one error line of a command that exited 2 (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("cvd-scene: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def overwrite(run_dir: Path, *more: str) -> int:
    return main(["run", str(run_dir), "--overwrite", "--until", "plan", *TINY, *more])


# --------------------------------------------------------------------------------------------- --overwrite


def test_overwrite_never_deletes_a_users_folder(tmp_path, capsys):
    d = tmp_path / "mine"
    files = {
        "run.json": '{"my": "own run.json"}',
        "fit/weights.bin": "weights",
        "export/final.ply": "ply",
        ".tmp-keep/a.txt": "kept",
        "notes.txt": "notes",
    }
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    before = tree(d)
    assert overwrite(d) == 2
    line = error_line(capsys)
    assert f"{d / 'run.json'} is not a cvd-scene run file" in line and "not even with --overwrite" in line
    assert tree(d) == before
    # Without the user's run.json the stage-named folders are still theirs: refused, naming them; no run.json left.
    (d / "run.json").unlink()
    before = tree(d)
    assert overwrite(d) == 2
    line = error_line(capsys)
    assert "has no run.json but holds fit, export" in line
    assert tree(d) == before


def test_overwrite_removes_exactly_what_cvd_scene_wrote(run_dir, capsys):
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / ".tmp-keep").mkdir()
    (run_dir / ".tmp-keep" / "a.txt").write_text("mine")
    (run_dir / "plan" / "my_plan.txt").write_text("mine")
    (run_dir / "export").mkdir()
    (run_dir / "export" / "my.splat").write_bytes(b"mine")
    before = tree(run_dir)
    assert overwrite(run_dir) == 2
    line = error_line(capsys)
    assert "plan/my_plan.txt" in line and "export/ (run.json does not record this stage)" in line
    assert "has deleted nothing" in line
    assert tree(run_dir) == before
    # An output the user edited is theirs too.
    (run_dir / "plan" / "my_plan.txt").unlink()
    shutil.rmtree(run_dir / "export")
    cameras = run_dir / "plan" / "cameras.json"
    original = cameras.read_bytes()
    cameras.write_bytes(original + b"\n")
    before = tree(run_dir)
    assert overwrite(run_dir) == 2
    assert "plan/cameras.json (changed since cvd-scene wrote it" in error_line(capsys)
    assert tree(run_dir) == before
    # Only cvd-scene's outputs left in the stage folders: the run is replaced, everything else kept.
    cameras.write_bytes(original)
    assert overwrite(run_dir, "plan.num_frames=2") == 0
    assert not (run_dir / "generate").exists()
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / ".tmp-keep" / "a.txt").read_text() == "mine"
    state = json.loads((run_dir / "run.json").read_text())
    assert set(state["stages"]) == {"plan"} and state["config"]["plan"]["num_frames"] == 2
    assert sorted(state["stages"]["plan"]["outputs"]["files"]) == sorted(os.listdir(run_dir / "plan"))


def test_overwrite_treats_links_as_links_and_resumes_a_removal_cut_short(run_dir, tmp_path, capsys, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.ply").write_text("keep")
    outside_before = tree(outside)
    # A stage folder that is a link, and a link inside a stage folder: refused, nothing followed or deleted.
    (run_dir / "export").symlink_to(outside, target_is_directory=True)
    before = tree(run_dir)
    assert overwrite(run_dir) == 2
    assert f"export (a symbolic link to {outside}" in error_line(capsys)
    assert tree(run_dir) == before and tree(outside) == outside_before
    (run_dir / "export").unlink()
    (run_dir / "generate" / "frames" / "v00" / "more").symlink_to(outside, target_is_directory=True)
    before = tree(run_dir)
    assert overwrite(run_dir) == 2
    assert "generate/frames/v00/more (a symbolic link)" in error_line(capsys)
    assert tree(run_dir) == before and tree(outside) == outside_before
    (run_dir / "generate" / "frames" / "v00" / "more").unlink()
    # The removal stops half-way (a file that cannot be deleted): run.json already says that no stage finished...
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "0001.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert overwrite(run_dir) == 2
    assert "0001.png: permission denied" in error_line(capsys)
    monkeypatch.undo()
    state = json.loads((run_dir / "run.json").read_text())
    assert {n: r["status"] for n, r in state["stages"].items()} == {"plan": "removing", "generate": "removing"}
    assert (run_dir / "generate").is_dir()
    # ... and the next --overwrite finishes the job.
    assert overwrite(run_dir) == 0
    assert not (run_dir / "generate").exists() and (run_dir / "plan" / "cameras.json").is_file()
    assert tree(outside) == outside_before


def test_run_folders_without_manifests_keep_working(run_dir, capsys):
    """run.json written before output manifests: the files each stage is known to write are removed, others refused."""
    rj = run_dir / "run.json"
    state = json.loads(rj.read_text())
    for rec in state["stages"].values():
        del rec["outputs"]
    rj.write_text(json.dumps(state))
    (run_dir / "generate" / "frames" / "v00" / "notes.txt").write_text("mine")
    (run_dir / "generate" / "extra").mkdir()
    before = tree(run_dir)
    assert overwrite(run_dir) == 2
    line = error_line(capsys)
    assert "generate/extra/" in line and "generate/frames/v00/notes.txt" in line
    assert tree(run_dir) == before
    (run_dir / "generate" / "frames" / "v00" / "notes.txt").unlink()
    (run_dir / "generate" / "extra").rmdir()
    assert overwrite(run_dir) == 0
    assert not (run_dir / "generate").exists()
    assert "outputs" in json.loads(rj.read_text())["stages"]["plan"]


def test_redo_refuses_to_replace_a_stage_folder_holding_other_files(run_dir, capsys):
    (run_dir / "plan" / "sketch.png").write_bytes(b"mine")
    before = tree(run_dir)
    assert main(["plan", str(run_dir), "--quiet", "--redo"]) == 2
    assert "plan/sketch.png" in error_line(capsys)
    assert tree(run_dir) == before
    (run_dir / "plan" / "sketch.png").unlink()
    assert main(["plan", str(run_dir), "--quiet", "--redo"]) == 0


# ------------------------------------------------------------------------------------------ the run's config


def test_a_refused_or_failed_command_never_rewrites_the_run_config(run_dir, capsys):
    rj = run_dir / "run.json"
    before = rj.read_bytes()
    for argv in (
        ["plan", str(run_dir), "--quiet", "plan.num_videos=3"],  # refused: plan already ran with another config
        ["export", str(run_dir), "--quiet", "export.formats=[ply]"],  # refused: no fit yet
        ["export", str(run_dir), "--quiet", "export.formats=[plyy]"],  # a typo
        ["plan", str(run_dir), "--quiet", "plan.num_vidoes=3"],  # an unknown key
        ["generate", str(run_dir), "--quiet", "--redo", "generate.samples_per_pixel=0"],  # fails in the stage
    ):
        assert main(argv) == 2, argv
        error_line(capsys)
        assert rj.read_bytes() == before, argv
    # A command that finishes records the config its stage ran with.
    assert main(["plan", str(run_dir), "--quiet", "--redo", "plan.num_videos=3"]) == 0
    state = json.loads(rj.read_text())
    assert state["config"]["plan"]["num_videos"] == 3 and state["stages"]["generate"]["status"] == "outdated"


@pytest.mark.slow  # loads the diffusion pipeline's libraries (about 25 s on 2 busy cores)
def test_a_missing_model_never_rewrites_the_run_config(run_dir, capsys):
    rj = run_dir / "run.json"
    before = rj.read_bytes()
    # A model name that would leave the models folder is refused as a name; a safe name without weights as such.
    for model, message in (("../../../x", "'../../../x' is not allowed"), ("no-such-model", "'no-such-model' has no weights")):
        argv = ["generate", str(run_dir), "--quiet", "--redo", "generate.generator=cvd", f"generate.model={model}"]
        assert main(argv) == 2
        assert message in error_line(capsys)
        assert rj.read_bytes() == before


def test_a_refused_command_leaves_no_run_folder_behind(tmp_path, capsys):
    for argv in (["fit", str(tmp_path / "typo")], ["run", str(tmp_path / "a" / "b"), *TINY, "plan.num_videos=0"]):
        assert main([*argv, "--quiet"]) == 2
        error_line(capsys)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- export


def _fake_register_and_fit(run_dir: Path, method: str, gaussians: bool) -> None:
    """``register/`` and ``fit/`` made from the reference renderer's ground truth (the fit's views are its frames
    and depth), recorded as finished stages; with ``gaussians`` also a small ``fit/gaussians.ply``."""
    from cvd_scene.export.ply import write_ply
    from cvd_scene.gaussians import Gaussians
    from tests.fit_helpers import write_register_fixture

    def fit(out: Path) -> StageResult:
        for kind, src, ext in (("rgb", "frames", "png"), ("depth", "gt/depth", "npy")):
            for vid_dir in sorted((run_dir / "generate" / src).iterdir()):
                (out / "views" / kind / vid_dir.name).mkdir(parents=True)
                for f in vid_dir.glob(f"*.{ext}"):
                    shutil.copy(f, out / "views" / kind / vid_dir.name / f.name)
        (out / "metrics.json").write_text(json.dumps({"method": method, "psnr": 20.0}))
        if gaussians:
            rng = np.random.default_rng(0)
            n = 500
            g = Gaussians(
                means=rng.uniform(-1, 1, (n, 3)) + [0, 1.2, 0], log_scales=np.full((n, 3), -3.0),
                quats_wxyz=np.tile([1.0, 0, 0, 0], (n, 1)), opacity_logits=np.full(n, 2.0),
                sh_dc=rng.normal(size=(n, 3)), sh_rest=np.zeros((n, 0, 3)),
            )  # fmt: skip
            write_ply(g, out / "gaussians.ply")
        return StageResult(summary={"method": method})

    with run_lock(run_dir):
        run = RunFolder.read(run_dir)
        run.run_stage("register", lambda out: write_register_fixture(run_dir, out, 50), {"fixture": 1}, redo=True)
        run.run_stage("fit", fit, {"fixture": method, "gaussians": gaussians}, redo=True)


def test_export_refuses_a_splat_fit_without_its_gaussians(run_dir, capsys):
    _fake_register_and_fit(run_dir, "cvd-scene", gaussians=False)
    before = (run_dir / "run.json").read_bytes()
    assert main(["export", str(run_dir), "--quiet", "export.formats=[ply,splat]"]) == 2
    line = error_line(capsys)
    assert f"{run_dir / 'fit' / 'gaussians.ply'} is missing" in line and "'cvd-scene'" in line
    assert not (run_dir / "export").exists() and (run_dir / "run.json").read_bytes() == before
    # With the file, the splats are exported and the report calls the fit what it is.
    _fake_register_and_fit(run_dir, "cvd-scene", gaussians=True)
    assert main(["export", str(run_dir), "--quiet", "export.formats=[ply,splat]"]) == 0
    assert (run_dir / "export" / "scene.splat").is_file()
    page = (run_dir / "report.html").read_text()
    assert "From the Gaussian splat fit (method cvd-scene): fit/gaussians.ply, 500 splats." in page
    assert "NeRF" not in page


def test_export_of_a_nerf_fit_uses_its_views_and_says_so(run_dir):
    _fake_register_and_fit(run_dir, "cvd-scene-nerf", gaussians=False)
    assert main(["export", str(run_dir), "--quiet", "export.formats=[ply]"]) == 0
    report = json.loads((run_dir / "export" / "report.json").read_text())
    assert report["source"]["kind"] == "views" and report["skipped"] == {"ply": "a NeRF fit has no Gaussians"}
    assert "From the NeRF fit (method cvd-scene-nerf): 6 depth and colour views" in (run_dir / "report.html").read_text()


# -------------------------------------------------------------------------------------- training checkpoints


class _RunsCode:
    """A pickled object that creates a folder when unpickled: what a crafted checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_training_resume_never_unpickles_code(tmp_path, capsys):
    import torch

    from cvd.model import CVDModel
    from tests.cvd_testing import tiny_config

    # The crafted file is real: unpickled fully, it runs code.
    proof = tmp_path / "proof.pt"
    torch.save({"step": 1, "x": _RunsCode(tmp_path / "ran-in-proof")}, proof)
    torch.load(proof, weights_only=False)
    assert (tmp_path / "ran-in-proof").is_dir()
    # The same in a training checkpoint: resuming refuses it, naming the file, and nothing runs.
    out = tmp_path / "train"
    ckpt = out / "checkpoints" / "step-0000001"
    CVDModel.from_config(tiny_config(), seed=0).save_pretrained(ckpt / "model")
    torch.save({"step": 1, "x": _RunsCode(tmp_path / "ran")}, ckpt / "trainer_state.pt")
    argv = ["train", "--config", "tiny-cpu", "--quiet", f"output_dir={out}"]
    assert main(argv) == 2
    line = error_line(capsys)
    assert f"{ckpt / 'trainer_state.pt'}: not a trainer state cvd-scene can resume from safely" in line
    assert not (tmp_path / "ran").exists()


# ------------------------------------------------------------------------------------------- interruptions


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cvd_scene.cli", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **kw,
    )  # fmt: skip


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout_s: float = 120) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        found = list(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {folder}")


SLOW_GENERATE = [*TINY, "generate.samples_per_pixel=64"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_run_leaves_no_lock_and_no_temporary_folder(tmp_path, capsys, how):
    run = tmp_path / "run"
    proc = _cli("run", str(run), "--until", "generate", *SLOW_GENERATE)
    tmp = _wait_for(".tmp-generate-*", run, proc)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    state = json.loads((run / "run.json").read_text())
    assert set(state["stages"]) == {"plan"}, (proc.returncode, err)  # the finished stage is kept
    if how == "SIGTERM":  # handled like Ctrl-C: cleaned up on the way out
        assert proc.returncode == 128 + signal.SIGTERM
        assert err.strip().splitlines()[-1] == (
            "cvd-scene: stopped by SIGTERM; finished stages are kept, run the same command to resume"
        )
        assert sorted(os.listdir(run)) == ["plan", "run.json"]
        return
    # kill -9 cannot be handled: the next start names the stale lock, and once it is gone cleans the rest, saying so
    assert proc.returncode == -signal.SIGKILL and tmp.is_dir() and (run / ".lock").is_file()
    assert main(["run", str(run), "--until", "generate", *TINY]) == 2
    assert "no longer exists, so the lock is stale" in error_line(capsys)
    (run / ".lock").unlink()
    assert main(["run", str(run), "--until", "generate", *TINY]) == 0
    said = "".join(f"removed {tmp}, left by cvd-scene process {proc.pid}, which stopped".split())
    logged = capsys.readouterr()
    assert said in "".join((logged.out + logged.err).split())  # (rich wraps long lines)
    assert sorted(os.listdir(run)) == ["generate", "plan", "report.html", "run.json"]


def test_a_hangup_ignored_on_entry_stays_ignored(run_dir, monkeypatch):
    """``nohup cvd-scene ...``: SIGHUP is ignored when the command starts, so a closed terminal must not stop it."""
    from cvd_scene import media

    real = media.write_mp4
    hung_up = []

    def hang_up(*args, **kw):
        hung_up.append(True)
        os.kill(os.getpid(), signal.SIGHUP)
        return real(*args, **kw)

    monkeypatch.setattr(media, "write_mp4", hang_up)
    on_entry = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(["generate", str(run_dir), "--quiet", "--redo"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, on_entry)
    assert hung_up


def test_sighup_is_handled_like_ctrl_c(run_dir, capsys, monkeypatch):
    from cvd_scene import media

    real = media.write_mp4

    def hang_up(*args, **kw):  # the terminal closes while the stage writes its videos
        os.kill(os.getpid(), signal.SIGHUP)
        return real(*args, **kw)

    monkeypatch.setattr(media, "write_mp4", hang_up)
    before = tree(run_dir)
    on_entry = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as from a terminal (the suite may run under nohup)
    try:
        assert main(["generate", str(run_dir), "--quiet", "--redo"]) == 128 + signal.SIGHUP
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # the handler is the command's alone
    finally:
        signal.signal(signal.SIGHUP, on_entry)
    assert "stopped by SIGHUP" in capsys.readouterr().err
    assert tree(run_dir) == before  # previous outputs intact, no lock, no temporary folder

    def swallowed(*args, **kw):  # a library that catches everything (as a C extension's import can) and goes on
        with contextlib.suppress(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(media, "write_mp4", swallowed)
    assert main(["generate", str(run_dir), "--quiet", "--redo"]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert tree(run_dir) == before  # the stop is raised again when the stage returns: nothing recorded


def test_sigterm_during_registration_is_handled_like_ctrl_c(run_dir):
    """Importing pycolmap installs glog's failure-signal handler over Python's for SIGTERM: a ``kill`` during
    registration printed a stack trace and aborted the process, skipping every cleanup. (In a subprocess: the old
    behaviour would abort the test process itself.)"""
    before = tree(run_dir)
    code = (
        "import os, signal, sys\n"
        "from cvd_scene.register import colmap\n"
        "real = colmap.read_database_stats\n"
        "def stop(*a, **kw):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*a, **kw)\n"
        "colmap.read_database_stats = stop\n"
        "from cvd_scene.cli import main\n"
        f"sys.exit(main(['register', {str(run_dir)!r}, '--quiet']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "stack trace" not in proc.stderr and "stopped by SIGTERM" in proc.stderr
    assert tree(run_dir) == before  # no lock, no temporary folder, nothing recorded


# ---------------------------------------------------------------------------------------------------- locks


def test_the_lock_names_host_process_and_job(tmp_path, capsys):
    run = tmp_path / "run"
    code = (
        "import time; from pathlib import Path; from cvd_scene.runfolder import run_lock\n"
        f"with run_lock(Path({str(run)!r}), 'cvd-scene run held'):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "CVD_SCENE_JOB_ID": "job-4711"})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert main(["plan", str(run), "--quiet"]) == 2
        line = error_line(capsys)
        assert f"process {proc.pid} on host {socket.gethostname()} (job job-4711)" in line
        assert "cvd-scene run held" in line and "stale" not in line
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_from_another_host_is_not_judged_by_local_processes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer exists here
    lock = {"pid": dead.pid, "host": "node-elsewhere", "job": "812", "since": "2026-01-01T00:00:00+00:00",
            "command": "cvd-scene run x"}  # fmt: skip
    (run / ".lock").write_text(json.dumps(lock))
    assert main(["plan", str(run), "--quiet"]) == 2
    line = error_line(capsys)
    assert "taken on another host" in line and "job 812" in line and "stale" not in line
    assert (run / ".lock").is_file()


# ---------------------------------------------------------------------------------------- unwritable folders


def test_a_run_folder_that_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["plan", str(f), "--quiet"]) == 2
    assert f"{f} is a file, not a folder" in error_line(capsys)
    assert main(["run", str(f / "run"), *TINY]) == 2
    assert f"{f / 'run'} cannot be created: {f} is a file, not a folder" in error_line(capsys)
    assert f.read_text() == "x"


def test_a_read_only_run_folder_is_refused_at_the_lock(run_dir, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kw):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only)
    before = tree(run_dir)
    assert main(["generate", str(run_dir), "--quiet", "--redo"]) == 2
    line = error_line(capsys)
    assert f"cannot take the lock of run folder {run_dir}: {run_dir / '.lock'}: the file system is read-only" in line
    assert tree(run_dir) == before
    assert main(["run", str(run_dir.parent / "new"), *TINY]) == 2
    error_line(capsys)
    assert not (run_dir.parent / "new").exists()


@pytest.mark.parametrize("fault", ["ENOSPC", "no errno, disk nearly full", "no errno, space left"])
def test_a_full_disk_during_np_save_is_one_line(run_dir, capsys, monkeypatch, fault):
    from cvd_scene import runfolder as rf

    def full(path, *args, **kw):
        if fault == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        raise OSError("16384 requested and 0 written")  # what ndarray.tofile raises, without an errno

    monkeypatch.setattr(np, "save", full)
    if fault == "no errno, disk nearly full":
        nearly_full = shutil.disk_usage(run_dir)._replace(free=4096)
        monkeypatch.setattr(rf.shutil, "disk_usage", lambda p: nearly_full)
    before = tree(run_dir)
    assert main(["generate", str(run_dir), "--quiet", "--redo"]) == 2
    line = error_line(capsys)
    if fault == "no errno, space left":
        assert line == (
            f"cvd-scene: error: stage 'generate': 16384 requested and 0 written; earlier outputs in {run_dir} "
            "are intact"
        )
    else:
        assert "stage 'generate': the disk is full writing" in line and "earlier outputs" in line
        assert str(run_dir) in line
    assert tree(run_dir) == before


def test_the_file_size_limit_is_one_line(tmp_path):
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, resource.RLIM_INFINITY))

    run = tmp_path / "run"
    proc = _cli("plan", str(run), *TINY, preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("cvd-scene: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "stage 'plan':" in lines[0] and "file too large" in lines[0] and str(run) in lines[0]
    assert not run.exists()  # no lock, no temporary folder, no run.json: the folder it created is gone again
