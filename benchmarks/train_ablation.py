"""The paper's central ablation at small scale: the same training budget with the epipolar bias, with plain
cross-view attention (bias mode none) and with no cross-view module, then the toy consistency measure of each.

    # one H100 (about 6 minutes; see benchmarks/gpu_train.sh):
    OUT=/path/to/results bash benchmarks/gpu_train.sh
    # the CPU fallback (tiny-cpu arms, one thread each):
    python benchmarks/train_ablation.py --preset tiny-cpu --device cpu --out runs/ablation-cpu --threads 1
    # a dry run of the GPU plan on a CPU (tiny sizes, a few steps):
    python benchmarks/train_ablation.py --preset small-gpu --device cpu --dry-run --out /tmp/dry

Steps: (1) the shared autoencoder (``phase=autoencoder``), (2) the three arms as separate processes (concurrently
with ``--concurrent``, e.g. three on one GPU), each reusing that autoencoder and ending with its toy measure,
(3) optionally the paper's SIFT protocol on freely generated held-out pairs (``--protocol``, needs pycolmap) and
contact sheets (``--sheets``), (4) ``results.json``, ``ablation.md`` and ``loss_arms.png`` in ``--out`` with each
arm's model folder (its saved-format files), loss log, plot and toy measure; checkpoints stay in ``--work``.

Needs torch, diffusers, transformers, accelerate, safetensors, numpy, pillow, pyyaml and tqdm (matplotlib for the
plots); no network, no renderer (open3d is never imported on this path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
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

NEEDED = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "PIL", "yaml", "tqdm")
MAX_FILE_BYTES = 16 * 1024 * 1024
COPIED = ("loss.csv", "loss.json", "loss.png", "toy_measure.json", "train_config.json", "autoencoder.json")

DRY_RUN = [
    "optim.steps=3", "optim.batch_pairs=1", "optim.mixed_precision=fp32", "autoencoder.steps=2",
    "autoencoder.batch_frames=4", "eval.num_pairs=1", "eval.steps=2", "data.num_workers=0", "checkpoint_every=2",
    "optim.warmup_steps=1",
]


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

    cfg = load_train_config(args.preset, tuple(args.set))
    cfg.model.autoencoder = None
    gone = missing_inputs(cfg)
    if gone:
        fail("missing inputs:\n  " + "\n  ".join(gone))
    if cfg.data.held_out is None:
        fail(f"preset {args.preset} has no data.held_out cache: the toy measure needs one")


def overrides(args, run_dir: Path, extra: list[str]) -> list[str]:
    ov = [f"output_dir={run_dir}", f"device={args.device}", "progress=false", "resume=false"]
    if args.threads:
        ov.append(f"threads={args.threads}")
    if args.dry_run:
        ov += DRY_RUN
    if args.steps:
        ov.append(f"optim.steps={args.steps}")
    return ov + list(args.set) + extra


def spawn(args, name: str, ov: list[str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--preset", args.preset]
    for o in ov:
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"[{time.strftime('%H:%M:%S')}] start {name}: log {log_path}", flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def wait(procs: dict[str, subprocess.Popen], timeout_s: float | None) -> dict[str, int]:
    t0 = time.time()
    codes = {}
    while len(codes) < len(procs):
        for name, p in procs.items():
            if name not in codes and p.poll() is not None:
                codes[name] = p.returncode
                print(f"[{time.strftime('%H:%M:%S')}] {name} finished with code {p.returncode}", flush=True)
        if timeout_s is not None and time.time() - t0 > timeout_s:
            for name, p in procs.items():
                if name not in codes:
                    p.kill()
                    codes[name] = -9
                    print(f"{name}: killed after {timeout_s:.0f} s", flush=True)
        time.sleep(1.0)
    return codes


def worker(argv: list[str]) -> None:
    """One training run in this process (``worker --preset NAME --set KEY=VALUE ...``)."""
    import logging

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from cvd_scene.train.training import load_train_config, run_training

    cfg = load_train_config(a.preset, tuple(a.set))
    result = run_training(cfg)
    print(json.dumps({"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": result.final_loss}))


def protocol(args, work: Path, arms: list[str]) -> dict:
    """The paper's SIFT protocol (cvd_scene.evaluate.consistency) on freely generated held-out pairs of each arm, next to
    the ground-truth frames (the reference row)."""
    import numpy as np
    import torch

    from cvd.model import CVDModel
    from cvd.training.cache import ClipCache
    from cvd.training.datasets import fit_clip_size
    from cvd.training.sampling import PairCameras, decode_latents, sample_pair
    from cvd_scene.cameras import Cameras
    from cvd_scene.evaluate.consistency import evaluate_consistency
    from cvd_scene.train.training import load_train_config, resolve_path

    cfg = load_train_config(args.preset, tuple(args.set))
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

    out["ground_truth"] = score([c[0].astype(np.float32) / 255.0 for c in clips])
    for arm in arms:
        model = CVDModel.from_pretrained(work / arm / "model", dtype=torch.float32).eval()
        vids = []
        for j, (frames, K, c2w, caption) in enumerate(clips):
            cams = PairCameras(K=torch.from_numpy(np.ascontiguousarray(K)), world_from_cam=torch.from_numpy(c2w))
            lat = sample_pair(model, cams, caption, height=H, width=W, steps=cfg.eval.steps,
                              guidance_scale=cfg.eval.guidance_scale, generator=torch.Generator().manual_seed(j))
            vids.append(decode_latents(model, lat))
        out[arm] = score(vids)
        print(f"protocol {arm}: {out[arm]}", flush=True)
    return out


def sheets(args, work: Path, arms: list[str], out_dir: Path) -> list[str]:
    """Contact sheets of two held-out clips per arm: ground truth A and B, B generated next to the fixed A, B
    generated alone."""
    import numpy as np
    import torch

    from cvd.model import CVDModel
    from cvd.training.cache import ClipCache
    from cvd.training.sampling import toy_consistency
    from cvd_scene.media import contact_sheet
    from cvd_scene.train.training import load_train_config, resolve_path

    cfg = load_train_config(args.preset, tuple(args.set))
    held = ClipCache(resolve_path(cfg.data.held_out))
    written = []
    for arm in arms:
        model = CVDModel.from_pretrained(work / arm / "model", dtype=torch.float32).eval()
        res = toy_consistency(model, held, num_pairs=2, steps=cfg.eval.steps, guidance_scale=cfg.eval.guidance_scale,
                              seed=cfg.eval.seed, return_frames=True)
        rows, ids = [], []
        for k, fr in enumerate(res["frames_out"]):
            rows += [fr["ground_truth"][0], fr["ground_truth"][1], fr["partner"], fr["alone"]]
            ids += [f"{k}:gt A", f"{k}:gt B", f"{k}:B|A", f"{k}:B"]
        path = out_dir / f"contact_{arm}.png"
        contact_sheet(np.stack(rows), path, max_frames=12, video_ids=ids)
        written.append(str(path))
    return written


def collect(args, work: Path, out: Path, arms: list[str], codes: dict[str, int], extra: dict) -> dict:
    from cvd.training.trainer import plot_losses, read_loss_csv

    results: dict = {"preset": args.preset, "device": args.device, "dry_run": args.dry_run, "arms": {}, **extra}
    try:
        import torch

        results["torch"] = torch.__version__
        if args.device == "cuda":
            results["gpu"] = torch.cuda.get_device_name(0)
    except (ImportError, RuntimeError) as e:  # the report must still be written
        results["torch"] = f"unavailable: {e}"
    curves = {}
    for arm in arms:
        run = work / arm
        row: dict = {"label": ARM_LABELS[arm], "exit_code": codes.get(arm)}
        for name in ("loss.json", "toy_measure.json", "autoencoder.json"):
            p = run / name
            if p.is_file():
                data = json.loads(p.read_text())
                row[name.removesuffix(".json")] = {k: v for k, v in data.items() if k != "rows"}
        curves[ARM_LABELS[arm]] = read_loss_csv(run / "loss.csv")
        dest = out / arm
        dest.mkdir(parents=True, exist_ok=True)
        for name in (*COPIED, "train.log"):
            if (run / name).is_file():
                shutil.copy2(run / name, dest / name)
        if (run / "model").is_dir():
            shutil.copytree(run / "model", dest / "model", dirs_exist_ok=True)
        results["arms"][arm] = row
    if any(curves.values()):
        plot_losses(curves, out / "loss_arms.png", title=f"{args.preset}: training loss per arm (same steps)")
    big = [str(p) for p in out.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES]
    results["files_over_16MiB"] = big
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "ablation.md").write_text(table(results) + "\n")
    return results


def table(results: dict) -> str:
    lines = [
        "| arm | steps | s/step | final loss | toy PSNR B\\|A (dB) | later frames | B alone (dB) | SSIM B\\|A | SSIM alone | AE ceiling (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["arms"].values():
        loss, toy = r.get("loss", {}), r.get("toy_measure", {}).get("mean", {})

        def f(x, d=2):
            return "—" if x is None else f"{x:.{d}f}"

        lines.append(
            f"| {r['label']} | {loss.get('steps', '—')} | {f(loss.get('seconds_per_step'), 3)} | "
            f"{f(loss.get('last_10pct_mean_loss'), 4)} | {f(toy.get('partner_psnr_db'))} | "
            f"{f(toy.get('partner_psnr_db_later'))} | {f(toy.get('alone_psnr_db'))} | {f(toy.get('partner_ssim'), 3)} | "
            f"{f(toy.get('alone_ssim'), 3)} | {f(toy.get('autoencoder_psnr_db'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small-gpu", help="train preset (small-gpu, tiny-cpu)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    ap.add_argument("--work", default=None, help="training folders (default: <out>/../<out name>-work)")
    ap.add_argument("--arms", default="epipolar,plain,none")
    ap.add_argument("--concurrent", action="store_true", help="train the arms at the same time")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps of every arm (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (CPU)")
    ap.add_argument("--timeout-min", type=float, default=None, help="kill arms still running after this")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes and a few steps (checks the whole plan)")
    ap.add_argument("--protocol", action="store_true", help="also the SIFT protocol (needs pycolmap)")
    ap.add_argument("--protocol-pairs", type=int, default=8)
    ap.add_argument("--sheets", action="store_true", help="also contact sheets of each arm")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs in --work (no retraining)")
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE override for every run")
    args = ap.parse_args()
    if not args.out:
        fail("give --out or set OUT")
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out.parent / f"{out.name}-work"
    arms = [a for a in args.arms.split(",") if a]
    for a in arms:
        if a not in ARMS:
            fail(f"unknown arm {a!r}; arms: {', '.join(ARMS)}")
    check_environment(args)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings = {}
    # 1. The shared autoencoder.
    ae = work / "autoencoder-run"
    if not (args.reuse and (ae / "autoencoder" / "config.json").is_file()):
        if ae.exists():
            shutil.rmtree(ae)
        code = wait({"autoencoder": spawn(args, "autoencoder", overrides(args, ae, ["phase=autoencoder"]),
                                          out / "autoencoder.log")}, None)["autoencoder"]
        if code != 0:
            fail(f"the autoencoder run failed (code {code}); see {out / 'autoencoder.log'}")
    timings["autoencoder_s"] = round(time.time() - t0, 1)
    if (ae / "autoencoder.json").is_file():
        shutil.copy2(ae / "autoencoder.json", out / "autoencoder.json")
    # 2. The arms.
    t1 = time.time()
    procs: dict[str, subprocess.Popen] = {}
    codes: dict[str, int] = {}
    for arm in arms:
        run = work / arm
        if args.reuse and (run / "toy_measure.json").is_file():
            codes[arm] = 0
            continue
        if run.exists():
            shutil.rmtree(run)
        ov = overrides(args, run, [f"model.autoencoder={ae / 'autoencoder'}", *ARMS[arm]])
        p = spawn(args, arm, ov, run / "train.log")
        if args.concurrent:
            procs[arm] = p
        else:
            codes.update(wait({arm: p}, None if args.timeout_min is None else 60 * args.timeout_min))
    if procs:
        codes.update(wait(procs, None if args.timeout_min is None else 60 * args.timeout_min))
    timings["arms_s"] = round(time.time() - t1, 1)
    extra: dict = {"timings": timings}
    ok = [a for a in arms if codes.get(a) == 0]
    # 3. Optional extras.
    if args.protocol and ok:
        try:
            extra["protocol"] = protocol(args, work, ok)
        except ImportError as e:
            extra["protocol"] = f"skipped: {e}"
    if args.sheets and ok:
        extra["sheets"] = sheets(args, work, ok, out)
    timings["total_s"] = round(time.time() - t0, 1)
    results = collect(args, work, out, arms, codes, extra)
    print(table(results))
    print(f"results: {out / 'results.json'}  ({timings})")
    if results["files_over_16MiB"]:
        print("warning: files over 16 MiB: " + ", ".join(results["files_over_16MiB"]), file=sys.stderr)
    failed = [a for a in arms if codes.get(a) != 0]
    if failed:
        fail(f"arms failed: {failed}; see the train.log of each in {work}")


if __name__ == "__main__":
    main()
