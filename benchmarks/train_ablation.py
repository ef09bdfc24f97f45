"""The paper's central ablation at small scale, seeded and resumable: the same training budget with the epipolar
bias, with plain cross-view attention (bias mode none) and with no cross-view module, each arm trained from
several seeds, every model measured three ways, mean ± std over seeds per arm.

    # the CPU quick mode (tiny sizes, a few steps; checks the whole plan in about a minute):
    python benchmarks/train_ablation.py --preset tiny-cpu --device cpu --dry-run --out /tmp/abl-dry
    # a reduced CPU run (tiny-cpu arms, one thread; rerun the same command to continue an interrupted run):
    python benchmarks/train_ablation.py --preset tiny-cpu --device cpu --threads 1 --seeds 0 1 --steps 200
    # the full ablation on one GPU (2000 steps a arm, 3 seeds; see benchmarks/gpu_train.sh):
    OUT=/path/to/results bash benchmarks/gpu_train.sh

Units: one (arm, seed) pair each, ``<arm>-s<seed>``. Steps: (1) the shared autoencoder (``phase=autoencoder``,
trained once, seed 0, reused by every unit; or ``--autoencoder FOLDER``), (2) every unit trained in its own process for exactly ``--steps``
optimiser steps (``--jobs`` at a time) from its seed (weights, data stream, noise), with the epipolar-bias
convention pinned to ``ours`` (checked in the saved ``cvd_model.json``), ending with the trainer's toy measure,
(3) its measurements in this process: the warp measure of its model on known scenes (``known_scene_warp`` on the
``--warp-preset`` plan, the ground-truth first frame held, with ceiling and floor; the floor of the ``none`` arm is
its generated videos, as it has no cross-view module to switch off), the paper's SIFT protocol (``--protocol``,
needs pycolmap) and, per arm, a contact sheet of its first seed's model, (4) ``results.json`` and ``ablation.md``
(mean ± std over seeds per arm, and each unit) rewritten after every unit.

Training is first-frame conditioned (``--first-frame-fraction``, default 0.8: that share of the pairs sees frame 0
clean and leaves it out of the loss, ``optim.first_frame_fraction``; each saved model records ``first_frame:
clean``, checked), and so is the warp measure: it holds the ground-truth first frame clean. The toy measure holds
the partner's ground-truth video and no first frame.

Resumable: ``state.json`` in ``--out`` records the settings, which units finished, where each unit's newest
training checkpoint is and every measurement made. Rerunning the same command skips finished units, resumes a
half-trained one from its trainer checkpoint (``trainer_state.pt``) and computes only the measurements missing.
``--stop-after N`` stops after N units finished in this invocation (an interruption on purpose). Checkpoints stay in
``--work``; each unit's model folder, loss log and toy measure are copied to ``--out/units/<unit>``.

Needs torch, diffusers, transformers, accelerate, safetensors, numpy, pillow, pyyaml and tqdm (matplotlib for the
plots); the warp measure also renders the reference scene (no open3d).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS: dict[str, list[str]] = {
    "epipolar": ["model.bias_mode=soft"],
    "plain": ["model.bias_mode=none"],
    "none": ["model.cross_view=false"],
}
"""The three arms: the released soft epipolar bias, plain cross-view attention, no cross-view module."""

ARM_LABELS = {
    "epipolar": "cross-view attention + epipolar bias (CVD)",
    "plain": "cross-view attention, no bias",
    "none": "no cross-view module",
}

PINNED = ["model.changes.epipolar_bias.convention=ours"]
"""Every unit trains with our bias convention (recorded in its saved model, checked after training)."""

NEEDED = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "PIL", "yaml", "tqdm")
MAX_FILE_BYTES = 16 * 1024 * 1024
COPIED = ("loss.csv", "loss.json", "loss.png", "toy_measure.json", "train_config.json", "autoencoder.json")
STATE = "state.json"
DEFAULT_STEPS = 2000

DRY_RUN = [
    "optim.steps=3", "optim.batch_pairs=1", "optim.mixed_precision=fp32", "autoencoder.steps=2",
    "autoencoder.batch_frames=4", "eval.num_pairs=1", "eval.steps=2", "data.num_workers=0", "checkpoint_every=2",
    "optim.warmup_steps=1",
]
DRY_RUN_WARP = [
    "plan.num_videos=2", "plan.num_frames=6", "plan.spread_deg=60", "plan.width=48", "plan.height=48",
    "generate.steps=2", "generate.samples_per_pixel=1",
]
"""The warp measure's plan and sampling in a dry run (before ``--warp-set``)."""


def fail(message: str) -> None:
    print(f"train_ablation: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_environment(args) -> None:
    """Every package and file the run needs, checked before anything starts (one message naming each)."""
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        fail("missing Python packages: " + ", ".join(missing))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        fail(f"--device cuda but torch {torch.__version__} sees no CUDA device")
    from cvd_scene.train.training import load_train_config, missing_inputs

    try:
        cfg = load_train_config(args.preset, tuple(PINNED + args.set))
    except (ValueError, TypeError, KeyError) as e:
        fail(f"preset {args.preset} with --set {args.set}: {e}")
    cfg.model.autoencoder = None
    gone = missing_inputs(cfg)
    if gone:
        fail("missing inputs:\n  " + "\n  ".join(gone))
    if cfg.data.held_out is None:
        fail(f"preset {args.preset} has no data.held_out cache: the toy measure needs one")


def target_steps(args) -> int:
    return args.steps if args.steps is not None else (3 if args.dry_run else DEFAULT_STEPS)


def shared_overrides(args) -> list[str]:
    """The train overrides every unit shares (sizes, steps, the pinned convention, ``--set``)."""
    ov = [f"threads={args.threads}"] if args.threads else []
    if args.dry_run:
        ov += DRY_RUN
    return [*ov, f"optim.steps={target_steps(args)}", f"optim.first_frame_fraction={args.first_frame_fraction}",
            *PINNED, *args.set]


def overrides(args, run_dir: Path, extra: list[str], seed: int = 0) -> list[str]:
    # Every unit trains exactly --steps: a preset's wall-time cap (tiny-cpu stops at 46 minutes) would end a unit
    # early on a slow or shared machine; --timeout-min is the driver's own, resumable cap.
    ov = [f"output_dir={run_dir}", f"device={args.device}", "progress=false", "resume=true", f"seed={seed}",
          "optim.max_minutes=null"]
    if args.checkpoint_every:  # not a setting: a resumed run continues the same loss curve (tests/test_training.py)
        ov.append(f"checkpoint_every={args.checkpoint_every}")
    return ov + shared_overrides(args) + extra


def spawn(args, name: str, ov: list[str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--preset", args.preset]
    for o in ov:
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"[{time.strftime('%H:%M:%S')}] start {name}: log {log_path}", flush=True)
    env["CVD_ABLATION_DRIVER_PID"] = str(os.getpid())
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "a"), stderr=subprocess.STDOUT)


def _die_with_driver() -> None:
    """In a worker (Linux): SIGTERM when the driver dies, even by SIGKILL, which no ``finally`` of the driver sees;
    the unit resumes from its newest checkpoint on the next run. A driver already gone: exit now."""
    driver = os.environ.get("CVD_ABLATION_DRIVER_PID")
    if not driver or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(driver):
        sys.exit(f"worker: the driver {driver} is gone")


def worker(argv: list[str]) -> None:
    """One training run in this process (``worker --preset NAME --set KEY=VALUE ...``)."""
    import logging

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args(argv)
    _die_with_driver()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from cvd_scene.train.training import load_train_config, run_training

    cfg = load_train_config(a.preset, tuple(a.set))
    result = run_training(cfg)
    print(json.dumps({"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss}))


def protocol(args, model_dirs: dict[str, Path], ground_truth: bool = True) -> dict:
    """The paper's SIFT protocol (cvd_scene.evaluate.consistency) on freely generated held-out pairs of each model
    in ``model_dirs`` (name -> saved model folder), next to the ground-truth frames (``ground_truth``: the
    reference row)."""
    import numpy as np
    import torch

    from cvd.model import CVDModel
    from cvd.training.cache import ClipCache
    from cvd.training.datasets import fit_clip_size
    from cvd.training.sampling import PairCameras, decode_latents, sample_pair
    from cvd_scene.cameras import Cameras
    from cvd_scene.evaluate.consistency import evaluate_consistency
    from cvd_scene.train.training import load_train_config, resolve_path

    cfg = load_train_config(args.preset, tuple(shared_overrides(args)))
    held = ClipCache(resolve_path(cfg.data.held_out))
    n = min(args.protocol_pairs, held.num_clips)
    F, H, W = cfg.data.num_frames, cfg.data.height_px, cfg.data.width_px
    out: dict = {}
    clips = []
    for i in range(n):
        frames = np.stack([held.video(i, 0)[:F], held.video(i, 1)[:F]])
        frames, K = fit_clip_size(frames, held.K[i, [0, 1], :F], H, W)
        clips.append((frames, K, held.world_from_cam[i, [0, 1], :F].copy(), held.captions[i]))

    def score(videos: list[np.ndarray]) -> dict:
        # All clips in one evaluation (pooled AUC): a block-diagonal co-visibility skips pairs of different scenes.
        frames = np.concatenate(videos)  # [2n, F, H, W, 3]
        cams = Cameras(world_from_cam=np.concatenate([c[2] for c in clips]), K=np.concatenate([c[1] for c in clips]),
                       width=W, height=H)
        cov = np.zeros((2 * n, 2 * n, F))
        for i in range(n):
            cov[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = 1.0
        result = evaluate_consistency(frames, cams, covisibility=cov, seed=0)
        return {g: {k: v for k, v in result[g].items() if k != "per_pair"} for g in ("cross_video", "within_video")}

    if ground_truth:
        out["ground_truth"] = score([c[0].astype(np.float32) / 255.0 for c in clips])
    for name, model_dir in model_dirs.items():
        model = CVDModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        vids = []
        for j, (frames, K, c2w, caption) in enumerate(clips):
            cams = PairCameras(K=torch.from_numpy(np.ascontiguousarray(K)), world_from_cam=torch.from_numpy(c2w))
            lat = sample_pair(model, cams, caption, height=H, width=W, steps=cfg.eval.steps,
                              guidance_scale=cfg.eval.guidance_scale, generator=torch.Generator().manual_seed(j))
            vids.append(decode_latents(model, lat))
        out[name] = score(vids)
        print(f"protocol {name}: {out[name]}", flush=True)
    return out


def sheet(args, model_dir: Path, path: Path) -> str:
    """A contact sheet of two held-out clips of one model: ground truth A and B, B generated next to the fixed A,
    B generated alone."""
    import numpy as np
    import torch

    from cvd.model import CVDModel
    from cvd.training.cache import ClipCache
    from cvd.training.sampling import toy_consistency
    from cvd_scene.media import contact_sheet
    from cvd_scene.train.training import load_train_config, resolve_path

    cfg = load_train_config(args.preset, tuple(shared_overrides(args)))
    held = ClipCache(resolve_path(cfg.data.held_out))
    model = CVDModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    res = toy_consistency(model, held, num_pairs=2, steps=cfg.eval.steps, guidance_scale=cfg.eval.guidance_scale,
                          seed=cfg.eval.seed, return_frames=True)
    rows, ids = [], []
    for k, fr in enumerate(res["frames_out"]):
        rows += [fr["ground_truth"][0], fr["ground_truth"][1], fr["partner"], fr["alone"]]
        ids += [f"{k}:gt A", f"{k}:gt B", f"{k}:B|A", f"{k}:B"]
    contact_sheet(np.stack(rows), path, max_frames=12, video_ids=ids)
    return str(path)


def warp_one(args, model_dir: Path, scene_seed: int) -> dict:
    """The warp measure of one model on the ``--warp-preset`` plan of scene seed ``scene_seed``
    (:func:`cvd_scene.evaluate.known_scene.known_scene_warp`: generated, ceiling, floor)."""
    from cvd_scene.camera_io import read_cameras_json
    from cvd_scene.config import load_config, merge, parse_overrides
    from cvd_scene.evaluate.known_scene import known_scene_warp
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import RunLayout

    ov = [*(DRY_RUN_WARP if args.dry_run else []), *args.warp_set, f"generate.weights={model_dir}"]
    config = load_config(RunConfig, "run", args.warp_preset, merge(parse_overrides(ov), {"seed": scene_seed}))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ablation-warp-") as tmp:
        run_dir = Path(tmp) / "run"
        run_stages(run_dir, config, ["plan"])
        cams = read_cameras_json(RunLayout(run_dir).cameras)
        warp = known_scene_warp(config, cams, run_dir, rel_tol=config.evaluate.warp_rel_tol)
    warp.pop("per_pair", None)
    warp["seconds"] = round(time.perf_counter() - t0, 1)
    return warp


# ------------------------------------------------------------------------------------------ state and units


def settings(args) -> dict:
    """What a unit's results depend on: a rerun with different settings is refused (a new --out is needed)."""
    return {
        "preset": args.preset,
        "steps": target_steps(args),
        "set": list(args.set),
        "dry_run": bool(args.dry_run),
        "pinned": PINNED,
        "warp_preset": args.warp_preset,
        "warp_set": list(args.warp_set),
        "protocol_pairs": args.protocol_pairs,
        "autoencoder": args.autoencoder,
        "first_frame_fraction": args.first_frame_fraction,
    }


def load_state(out: Path, args) -> dict:
    path = out / STATE
    want = settings(args)
    if not path.is_file():
        return {"settings": want, "units": {}, "sheets": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: not a readable state file ({e}); move it away to start afresh")
    have = state.get("settings", {})
    for key, value in want.items():
        if have.get(key) != value:
            fail(f"{path} was written with {key}={have.get(key)!r}, this run has {key}={value!r}: "
                 f"rerun with the same settings or give another --out")
    state.setdefault("units", {})
    state.setdefault("sheets", {})
    return state


def save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / STATE)


def latest_checkpoint(run: Path) -> str | None:
    done = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "trainer_state.pt").is_file())
    return str(done[-1]) if done else None


def trained_steps(run: Path) -> int | None:
    """Optimiser steps of the finished training in ``run`` (None: no final model yet)."""
    p = run / "loss.json"
    if not (p.is_file() and (run / "model" / "cvd_model.json").is_file()):
        return None
    return int(json.loads(p.read_text()).get("steps", 0))


def saved_settings(model_dir: Path) -> tuple[str | None, str]:
    """The bias convention and the first-frame hold a saved model records."""
    config = json.loads((model_dir / "cvd_model.json").read_text()).get("config", {})
    return (config.get("epipolar_bias") or {}).get("convention"), config.get("first_frame", "noised")


def measure_unit(args, out: Path, state: dict, name: str) -> None:
    """Every measurement of a trained unit that ``state`` does not hold yet (saved after each)."""
    unit = state["units"][name]
    run = Path(unit["run_dir"])
    model_dir = run / "model"
    m = unit.setdefault("measures", {})
    if "toy" not in m:
        toy = json.loads((run / "toy_measure.json").read_text())
        m["toy"] = toy["mean"]
        save_state(out, state)
    if "loss" not in m:
        m["loss"] = {k: v for k, v in json.loads((run / "loss.json").read_text()).items() if k != "rows"}
        save_state(out, state)
    warp = m.setdefault("warp", {})
    for ws in args.warp_seeds:
        if str(ws) not in warp:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: warp measure, scene seed {ws}", flush=True)
            warp[str(ws)] = warp_one(args, model_dir, ws)
            save_state(out, state)
    if args.protocol and "protocol" not in m:
        try:
            if "protocol_ground_truth" not in state:
                state["protocol_ground_truth"] = protocol(args, {}, ground_truth=True)["ground_truth"]
                save_state(out, state)
            m["protocol"] = protocol(args, {name: model_dir}, ground_truth=False)[name]
        except ImportError as e:
            m["protocol"] = f"skipped: {e}"
        save_state(out, state)
    arm = unit["arm"]
    dest = out / f"contact_{arm}.png"
    if args.sheets and (state["sheets"].get(arm) is None or not dest.is_file()):
        state["sheets"][arm] = {"unit": name, "path": sheet(args, model_dir, dest)}
        save_state(out, state)
    copy = out / "units" / name
    copy.mkdir(parents=True, exist_ok=True)
    for f in (*COPIED, "train.log"):
        if (run / f).is_file():
            shutil.copy2(run / f, copy / f)
    shutil.copytree(model_dir, copy / "model", dirs_exist_ok=True)
    unit["status"] = "done"
    save_state(out, state)


def finish_training(args, out: Path, state: dict, name: str, code: int | None) -> bool:
    """Record a unit's training outcome; True when it trained all its steps with the pinned convention."""
    unit = state["units"][name]
    run = Path(unit["run_dir"])
    unit["checkpoint"] = latest_checkpoint(run)
    steps = trained_steps(run)
    if code not in (None, 0):
        unit["status"] = f"failed (exit code {code}, see {run / 'train.log'})"
    elif steps is None or steps < target_steps(args):
        saved = int(Path(unit["checkpoint"]).name.split("-")[-1]) if unit["checkpoint"] else 0
        unit["status"] = (f"partial ({max(steps or 0, saved)}/{target_steps(args)} steps saved; rerun to resume from "
                          f"{unit['checkpoint']})")
    elif not (run / "toy_measure.json").is_file():
        unit["status"] = f"failed (no toy_measure.json in {run})"
    else:
        conv, hold = saved_settings(run / "model")
        want_hold = "clean" if args.first_frame_fraction > 0 else "noised"
        if conv != "ours":
            unit["status"] = f"failed ({run / 'model' / 'cvd_model.json'} records bias convention {conv!r}, not 'ours')"
        elif hold != want_hold:
            unit["status"] = f"failed ({run / 'model' / 'cvd_model.json'} records first_frame {hold!r}, not {want_hold!r})"
        else:
            unit["status"] = "trained"
            unit["bias_convention"] = conv
    save_state(out, state)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {unit['status']}", flush=True)
    return unit["status"] == "trained"


# ------------------------------------------------------------------------------------------ tables


def _stats(values: list[float]) -> dict | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals)}


def unit_numbers(unit: dict) -> dict:
    """The scalar numbers of one unit (warp: averaged over its scene seeds)."""
    m = unit.get("measures", {})
    toy, loss = m.get("toy", {}), m.get("loss", {})
    row = {
        "final_loss": loss.get("last_10pct_mean_loss"),
        "seconds_per_step": loss.get("seconds_per_step"),
        "toy_partner_psnr_db": toy.get("partner_psnr_db"),
        "toy_alone_psnr_db": toy.get("alone_psnr_db"),
        "toy_partner_ssim": toy.get("partner_ssim"),
    }
    warps = list(m.get("warp", {}).values())
    if warps:
        def avg(get):  # over the scene seeds that kept pixels (a seed without any has no PSNR)
            vals = [get(w) for w in warps if w["psnr"] is not None and w["floor"]["psnr"] is not None]
            return sum(vals) / len(vals) if vals else None

        row.update(
            warp_psnr_db=avg(lambda w: w["psnr"]), warp_ssim=avg(lambda w: w["ssim"]),
            warp_ceiling_psnr_db=avg(lambda w: w["ceiling"]["psnr"]),
            warp_floor_psnr_db=avg(lambda w: w["floor"]["psnr"]),
            warp_gain_db=avg(lambda w: w["psnr"] - w["floor"]["psnr"]),
        )
    prot = m.get("protocol")
    if isinstance(prot, dict):
        cv = prot["cross_video"]
        for i, t in enumerate((5, 10, 20)):
            row[f"eval_rot_auc{t}"] = cv["rot_auc"][i]
        row["eval_pairs_pose_failed"] = cv.get("pairs_pose_failed")
        row["eval_pairs_scored"] = cv.get("pairs_scored")
    return row


def summarise(args, state: dict) -> dict:
    arms: dict = {}
    for arm in args.arms:
        done = [u for u in state["units"].values() if u["arm"] == arm and u.get("status") == "done"]
        rows = [unit_numbers(u) for u in done]
        keys = sorted({k for r in rows for k in r})
        arms[arm] = {"label": ARM_LABELS[arm], "seeds_done": sorted(u["seed"] for u in done),
                     **{k: _stats([r.get(k) for r in rows]) for k in keys}}
    return arms


def _ms(s: dict | None, d: int = 2) -> str:
    if not s:
        return "—"
    return f"{s['mean']:.{d}f}" if s["n"] == 1 else f"{s['mean']:.{d}f} ± {s['std']:.{d}f}"


def table(results: dict) -> str:
    st = results["settings"]
    lines = [
        (f"Ablation ({'DRY RUN, ' if st['dry_run'] else ''}preset {st['preset']}, {st['steps']} steps a arm, "
        f"first-frame conditioned on {st.get('first_frame_fraction', 0)} of the pairs, "
        f"bias convention pinned to ours; mean ± std over seeds; warp measure on the {st['warp_preset']} plan, "
        f"scene seeds {results['warp_seeds']}, ground-truth first frame held; the floor of `none` is its generated "
        "videos)"),
        "",
        ("| arm | seeds | final loss | toy PSNR B\\|A (dB) | toy B alone (dB) | toy SSIM B\\|A | warp PSNR (dB) | "
        "warp SSIM | warp floor (dB) | warp ceiling (dB) | warp gain over floor (dB) | `evaluate` rot. AUC@5/10/20 |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["arms"].values():
        auc = "/".join(_ms(r.get(f"eval_rot_auc{t}"), 1) for t in (5, 10, 20)) if r.get("eval_rot_auc5") else "—"
        lines.append(
            f"| {r['label']} | {','.join(map(str, r['seeds_done'])) or '—'} | {_ms(r.get('final_loss'), 4)} | "
            f"{_ms(r.get('toy_partner_psnr_db'))} | {_ms(r.get('toy_alone_psnr_db'))} | "
            f"{_ms(r.get('toy_partner_ssim'), 3)} | {_ms(r.get('warp_psnr_db'))} | {_ms(r.get('warp_ssim'), 3)} | "
            f"{_ms(r.get('warp_floor_psnr_db'))} | {_ms(r.get('warp_ceiling_psnr_db'))} | "
            f"{_ms(r.get('warp_gain_db'))} | {auc} |"
        )
    lines += ["", ("| unit | status | steps | final loss | toy B\\|A (dB) | warp PSNR (dB) | warp floor (dB) | "
              "`evaluate` pose failed |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, u in results["units"].items():
        n = unit_numbers(u)

        def f(x, d=2):
            return "—" if x is None else f"{x:.{d}f}"

        failed = ("—" if n.get("eval_pairs_scored") is None
                  else f"{n['eval_pairs_pose_failed']} of {n['eval_pairs_scored']}")
        lines.append(
            f"| {name} | {u.get('status')} | {u.get('measures', {}).get('loss', {}).get('steps', '—')} | "
            f"{f(n.get('final_loss'), 4)} | {f(n.get('toy_partner_psnr_db'))} | {f(n.get('warp_psnr_db'))} | "
            f"{f(n.get('warp_floor_psnr_db'))} | {failed} |"
        )
    gt = results.get("protocol_ground_truth")
    if isinstance(gt, dict):
        a = gt["cross_video"]["rot_auc"]
        lines += ["", (f"`evaluate` on the ground-truth frames: rotation AUC@5/10/20 across videos "
                  f"{a[0]:.1f} / {a[1]:.1f} / {a[2]:.1f}")]
    if results.get("sheets"):
        lines += ["", "Contact sheets: " + ", ".join(f"{arm}: {s['path']} ({s['unit']})"
                                                    for arm, s in results["sheets"].items())]
    return "\n".join(lines)


def write_tables(args, out: Path, state: dict, extra: dict) -> dict:
    results = {
        "settings": state["settings"], "device": args.device, "warp_seeds": list(args.warp_seeds),
        "arms": summarise(args, state), "units": state["units"], "sheets": state.get("sheets", {}),
        "protocol_ground_truth": state.get("protocol_ground_truth"), **extra,
    }
    try:
        import torch

        results["torch"] = torch.__version__
        if args.device == "cuda":
            results["gpu"] = torch.cuda.get_device_name(0)
    except (ImportError, RuntimeError) as e:  # the report must still be written
        results["torch"] = f"unavailable: {e}"
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "ablation.md").write_text(table(results) + "\n")
    return results


def plot(args, out: Path, state: dict) -> None:
    from cvd.training.trainer import plot_losses, read_loss_csv

    curves = {name: read_loss_csv(Path(u["run_dir"]) / "loss.csv") for name, u in state["units"].items()
              if u.get("status") == "done" and (Path(u["run_dir"]) / "loss.csv").is_file()}
    if curves:
        plot_losses(curves, out / "loss_arms.png", title=f"{args.preset}: training loss per unit (same steps)")


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small-gpu", help="train preset (small-gpu, tiny-cpu)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "outputs" / "ablation"),
                    help="results and state folder (default: $OUT, else benchmarks/outputs/ablation)")
    ap.add_argument("--work", default=None, help="training folders and checkpoints (default: <out>-work)")
    ap.add_argument("--arms", default="epipolar,plain,none")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of every arm")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"optimiser steps of every unit (default {DEFAULT_STEPS}; 3 with --dry-run)")
    ap.add_argument("--jobs", type=int, default=1, help="units trained at the same time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (CPU)")
    ap.add_argument("--timeout-min", type=float, default=None,
                    help="kill a unit's training after this (it resumes from its checkpoint on the next run)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many units finished in this run")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes and a few steps (checks the whole plan)")
    ap.add_argument("--warp-seeds", type=int, nargs="*", default=[0],
                    help="scene seeds of the warp measure (none: skip it)")
    ap.add_argument("--warp-preset", default="demo-learned", help="run preset whose plan the warp measure uses")
    ap.add_argument("--warp-set", action="append", default=[], help="KEY=VALUE run override of the warp measure")
    ap.add_argument("--protocol", action="store_true", help="also the SIFT protocol (`evaluate`; needs pycolmap)")
    ap.add_argument("--protocol-pairs", type=int, default=8)
    ap.add_argument("--no-sheets", dest="sheets", action="store_false", help="no contact sheet per arm")
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE train override for every unit")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="trainer checkpoint interval (default: the preset's); an interrupted unit loses at most "
                    "this many steps")
    ap.add_argument("--first-frame-fraction", type=float, default=0.8,
                    help="share of training pairs first-frame conditioned (frame 0 clean, out of the loss; "
                    "optim.first_frame_fraction); 0: text-to-video training only")
    ap.add_argument("--autoencoder", default=None,
                    help="a trained autoencoder folder every unit reuses (e.g. models/tiny-trained/vae) instead of "
                    "training one first")
    args = ap.parse_args()
    args.arms = [a for a in args.arms.split(",") if a]
    for a in args.arms:
        if a not in ARMS:
            fail(f"unknown arm {a!r}; arms: {', '.join(ARMS)}")
    if not 0.0 <= args.first_frame_fraction <= 1.0:
        fail(f"--first-frame-fraction must lie in [0, 1], got {args.first_frame_fraction}")
    if args.jobs < 1 or (args.stop_after is not None and args.stop_after < 1) or target_steps(args) < 1:
        fail(f"--jobs, --stop-after and --steps must be >= 1, got {args.jobs}, {args.stop_after}, {args.steps}")
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out.parent / f"{out.name}-work"
    if args.autoencoder is not None:
        args.autoencoder = str(Path(args.autoencoder).resolve())
        if not (Path(args.autoencoder) / "config.json").is_file():
            fail(f"--autoencoder {args.autoencoder}: not a diffusers autoencoder folder (no config.json)")
    state = load_state(out, args)  # before the imports: a rerun with other settings is refused at once
    check_environment(args)
    out.mkdir(parents=True, exist_ok=True)
    state["work"] = str(work)
    for arm in args.arms:
        for seed in args.seeds:
            name = f"{arm}-s{seed}"
            state["units"].setdefault(name, {"arm": arm, "seed": seed, "run_dir": str(work / name),
                                             "status": "pending", "checkpoint": None})
    save_state(out, state)
    t0 = time.time()
    extra: dict = {}
    write_tables(args, out, state, extra)

    # 1. The shared autoencoder (seed 0; every unit reuses it).
    ae = work / "autoencoder-run"
    ae_dir = Path(args.autoencoder) if args.autoencoder else ae / "autoencoder"
    if not (ae_dir / "config.json").is_file():
        if ae.exists():
            shutil.rmtree(ae)
        ov = [o for o in overrides(args, ae, ["phase=autoencoder"]) if o != "resume=true"] + ["resume=false"]
        p = spawn(args, "autoencoder", ov, out / "autoencoder.log")
        if p.wait() != 0:
            fail(f"the autoencoder run failed (code {p.returncode}); see {out / 'autoencoder.log'}")
    state["autoencoder"] = str(ae_dir)
    if (ae / "autoencoder.json").is_file():
        shutil.copy2(ae / "autoencoder.json", out / "autoencoder.json")
    save_state(out, state)

    # 2. The units: train (resuming), then measure; the tables after each.
    names = [f"{arm}-s{seed}" for seed in args.seeds for arm in args.arms]
    pending = [n for n in names if state["units"][n]["status"] != "done"]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    finished = 0

    def complete(name: str) -> None:
        nonlocal finished
        measure_unit(args, out, state, name)
        write_tables(args, out, state, extra)
        finished += 1
        print(f"[{time.strftime('%H:%M:%S')}] {name}: done ({finished} unit(s) in this run)", flush=True)

    stopped = False
    # A kill stops the workers too; pycolmap's import no longer replaces this handler (register/colmap._pycolmap).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        while (pending or running) and not stopped:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                unit = state["units"][name]
                run = Path(unit["run_dir"])
                if unit["status"] in ("trained",) or (
                    (trained_steps(run) or 0) >= target_steps(args) and (run / "toy_measure.json").is_file()
                ):
                    if unit["status"] == "trained" or finish_training(args, out, state, name, None):
                        complete(name)
                        if args.stop_after is not None and finished >= args.stop_after:
                            stopped = True
                            break
                    continue
                unit["checkpoint"] = latest_checkpoint(run)
                unit["status"] = "training" + (f" (resuming from {unit['checkpoint']})" if unit["checkpoint"] else "")
                save_state(out, state)
                ov = overrides(args, run, [f"model.autoencoder={ae_dir}", *ARMS[unit["arm"]]],
                               seed=unit["seed"])
                running[name] = (spawn(args, name, ov, run / "train.log"), time.time())
            for name, (p, started) in list(running.items()):
                code = p.poll()
                if code is None and args.timeout_min is not None and time.time() - started > 60 * args.timeout_min:
                    p.kill()
                    p.wait()
                    code = None  # interrupted on purpose: partial, resumed from its checkpoint next time
                    print(f"{name}: killed after {args.timeout_min} min", flush=True)
                elif code is None:
                    continue
                del running[name]
                if finish_training(args, out, state, name, code) and not stopped:
                    complete(name)
                    if args.stop_after is not None and finished >= args.stop_after:
                        stopped = True
            if running and not stopped:
                time.sleep(1.0)
    finally:  # --stop-after, Ctrl-C, SIGTERM: no training process outlives the driver (each resumes next time)
        for name, (p, _) in running.items():
            if p.poll() is None:
                p.kill()
                p.wait()
            finish_training(args, out, state, name, None)
    extra["seconds_this_run"] = round(time.time() - t0, 1)
    plot(args, out, state)
    results = write_tables(args, out, state, extra)
    print(table(results))
    print(f"results: {out / 'results.json'}, state: {out / STATE}")
    big = [str(p) for p in out.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES]
    if big:
        print("warning: files over 16 MiB: " + ", ".join(big), file=sys.stderr)
    left = [n for n in names if state["units"][n]["status"] != "done"]
    if stopped and left:
        print(f"stopped after {finished} unit(s) (--stop-after); rerun the same command to continue: {left}")
        return
    failed = [n for n in left if state["units"][n]["status"].startswith("failed")]
    if failed:
        fail(f"units failed: {failed}; see the train.log of each in {work}")
    if left:
        fail(f"units not finished: {left}; rerun the same command to resume them")


if __name__ == "__main__":
    main()
