"""The warp measure of a CVD model on a scene whose geometry is known, next to its ceiling and floor.

The run preset's plan is made in a scratch folder; the reference renderer's scene of its prompt is rendered along
it (colour and depth); the model generates the plan with video 0's ground-truth first frame held, once as it is and
once with its cross-view modules off (same seed and conditioning); all three are scored against the ground-truth
depth (:mod:`cvd_scene.evaluate.known_scene`). One table, one JSON.

    python benchmarks/bench_warp.py                                   # tiny-trained on the demo-learned plan
    python benchmarks/bench_warp.py --seeds 0 1 2 generate.steps=20   # several seeds, any run override
    python benchmarks/bench_warp.py generate.weights=runs/ablation/epipolar/model --out warp.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="run config overrides, key=value (e.g. generate.steps=20)")
    parser.add_argument("--preset", default="demo-learned", help="run preset (default demo-learned)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (scene, noise, pairing)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from cvd_scene.camera_io import read_cameras_json
    from cvd_scene.config import load_config, merge, parse_overrides
    from cvd_scene.evaluate.known_scene import known_scene_warp
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import RunLayout

    rows = []
    for seed in args.seeds:
        config = load_config(RunConfig, "run", args.preset, merge(parse_overrides(args.overrides), {"seed": seed}))
        with tempfile.TemporaryDirectory(prefix="bench-warp-") as tmp:
            run_dir = Path(tmp) / "run"
            run_stages(run_dir, config, ["plan"])
            cams = read_cameras_json(RunLayout(run_dir).cameras)
            t0 = time.perf_counter()
            warp = known_scene_warp(config, cams, run_dir, rel_tol=config.evaluate.warp_rel_tol)
        warp.pop("per_pair")
        warp["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(warp)
        print(f"seed {seed}: {warp['seconds']} s", file=sys.stderr)
    gen = config.generate
    print(
        f"\nwarp measure, {gen.weights or gen.model}, {args.preset} plan {cams.num_videos}x{cams.num_frames} at "
        f"{cams.width}x{cams.height}, {gen.steps} steps, {rows[0]['pairs']} frame pairs per seed\n"
    )
    print("| seed | generated PSNR / SSIM | ceiling (ground truth) | floor (cross-view off) | kept fraction |")
    print("| --- | --- | --- | --- | --- |")
    for seed, w in zip(args.seeds, rows):
        c, f = w["ceiling"], w["floor"]
        print(
            f"| {seed} | {w['psnr']:.2f} dB / {w['ssim']:.3f} | {c['psnr']:.2f} dB / {c['ssim']:.3f} | "
            f"{f['psnr']:.2f} dB / {f['ssim']:.3f} | {w['kept_fraction']:.3f} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"preset": args.preset, "overrides": args.overrides, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
