"""The seeded ablation driver (benchmarks/train_ablation.py) continues where an interrupted run stopped: the real
trainer on the committed clip cache, tiny sizes and a few steps, two arms of one seed. The runs are ``slow``: each
starts several training processes; the overrides every unit trains with are checked without training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_ablation.py"
TINY = ["--set", "data.num_frames=4", "--set", "data.height_px=48", "--set", "data.width_px=48"]


def driver(out: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, str(SCRIPT), "--preset", "tiny-cpu", "--device", "cpu", "--threads", "1", "--dry-run",
        "--out", str(out), "--arms", "epipolar,none", "--seeds", "0", "--steps", "4", *TINY, *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # three training processes start (about 20 s each): over the default suite's budget
def test_interrupted_ablation_resumes_without_retraining(tmp_path):
    out = tmp_path / "ablation"
    # The committed model's autoencoder (no autoencoder run); the warp measure and the sheets: the slow test below.
    common = ("--autoencoder", str(ROOT / "models" / "tiny-trained" / "vae"), "--warp-seeds", "--no-sheets")
    first = driver(out, *common, "--stop-after", "1")
    assert "stopped after 1 unit(s)" in first.stdout
    state = json.loads((out / "state.json").read_text())
    assert state["units"]["epipolar-s0"]["status"] == "done"
    assert state["units"]["none-s0"]["status"] == "pending"
    done_model = Path(state["units"]["epipolar-s0"]["run_dir"]) / "model"
    saved = json.loads((done_model / "cvd_model.json").read_text())["config"]
    assert saved["epipolar_bias"]["convention"] == "ours"
    assert saved["first_frame"] == "clean"  # trained first-frame conditioned (--first-frame-fraction 0.8)
    # The partial table is already there.
    partial = json.loads((out / "results.json").read_text())
    assert partial["arms"]["epipolar"]["seeds_done"] == [0] and partial["arms"]["none"]["seeds_done"] == []
    assert "| none-s0 | pending |" in (out / "ablation.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in done_model.rglob("*") if p.is_file()}
    toy_before = state["units"]["epipolar-s0"]["measures"]["toy"]

    second = driver(out, *common)
    assert "start epipolar-s0" not in second.stdout and "start none-s0" in second.stdout
    assert "start autoencoder" not in first.stdout + second.stdout
    assert {p: p.stat().st_mtime_ns for p in done_model.rglob("*") if p.is_file()} == stamps
    state = json.loads((out / "state.json").read_text())
    assert {u["status"] for u in state["units"].values()} == {"done"}
    assert state["units"]["epipolar-s0"]["measures"]["toy"] == toy_before
    results = json.loads((out / "results.json").read_text())
    for arm in ("epipolar", "none"):
        row = results["arms"][arm]
        assert row["seeds_done"] == [0]
        assert row["toy_partner_psnr_db"]["n"] == 1 and row["toy_partner_psnr_db"]["mean"] > 5.0
        assert set(row["final_loss"]) == {"mean", "std", "n"}
    table = (out / "ablation.md").read_text()
    assert "mean ± std over seeds" in table and "| none-s0 | done | 4 |" in table
    # Other settings in the same folder are refused, naming the key.
    bad = driver(out, *common, "--steps", "5", ok=False)
    assert bad.returncode == 2 and "steps=4" in bad.stderr and "steps=5" in bad.stderr


@pytest.mark.slow
def test_ablation_measures_every_unit_with_warp_and_sheets(tmp_path):
    out = tmp_path / "ablation"
    driver(out, "--seeds", "0", "1", "--arms", "epipolar,none", "--jobs", "2")
    results = json.loads((out / "results.json").read_text())
    for arm in ("epipolar", "none"):
        row = results["arms"][arm]
        assert row["seeds_done"] == [0, 1]
        for key in ("warp_psnr_db", "warp_floor_psnr_db", "warp_ceiling_psnr_db", "toy_partner_psnr_db"):
            assert row[key]["n"] == 2 and row[key]["std"] >= 0.0, (arm, key, row[key])
        assert row["warp_ceiling_psnr_db"]["mean"] > row["warp_psnr_db"]["mean"]
        assert (out / f"contact_{arm}.png").stat().st_size > 1000
    # No cross-view module to switch off: the floor of `none` is its generated videos.
    for unit in ("none-s0", "none-s1"):
        warp = results["units"][unit]["measures"]["warp"]["0"]
        assert warp["floor"]["psnr"] == pytest.approx(warp["psnr"], abs=1e-6)


def _workers(out: Path) -> list[int]:
    """Process ids of the training workers whose command line names ``out``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "worker" in cmd and str(out) in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_driver_leaves_no_training_process_behind(tmp_path):
    import signal
    import time

    out = tmp_path / "ablation"
    cmd = [
        sys.executable, str(SCRIPT), "--preset", "tiny-cpu", "--device", "cpu", "--threads", "1", "--dry-run",
        "--out", str(out), "--arms", "epipolar", "--seeds", "0", "--steps", "100000", "--warp-seeds", "--no-sheets",
        "--autoencoder", str(ROOT / "models" / "tiny-trained" / "vae"), *TINY,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    driver_proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not _workers(out) and time.time() < deadline:
            time.sleep(0.5)
        assert _workers(out), "no worker started"
    finally:
        driver_proc.send_signal(signal.SIGKILL)  # no finally block of the driver runs
        driver_proc.wait()
    deadline = time.time() + 30
    while _workers(out) and time.time() < deadline:
        time.sleep(0.5)
    assert _workers(out) == []


def test_every_unit_trains_exactly_the_steps_asked_whatever_the_presets_time_cap():
    """tiny-cpu caps training at 46 minutes; on a slow machine a unit stopped at 1170 of 2000 steps. The driver's
    overrides lift the cap (its own --timeout-min is resumable) and pin the steps and the first-frame share."""
    import argparse
    import importlib.util

    from cvd_scene.train.training import load_train_config

    spec = importlib.util.spec_from_file_location("train_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(threads=1, dry_run=False, steps=2000, set=[], first_frame_fraction=0.8,
                              checkpoint_every=100, device="cpu")
    ov = module.overrides(args, Path("/tmp/unit"), ["model.bias_mode=none"], seed=1)
    assert load_train_config("tiny-cpu", ()).optim.max_minutes == 46
    cfg = load_train_config("tiny-cpu", tuple(ov))
    assert cfg.optim.max_minutes is None and cfg.optim.steps == 2000 and cfg.checkpoint_every == 100
    assert cfg.optim.first_frame_fraction == 0.8 and cfg.seed == 1 and cfg.model.bias_mode == "none"
