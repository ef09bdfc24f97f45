"""The README pictures of the training work: a contact sheet of a trained model's videos next to ground truth on
held-out scenes, and the loss curves of the ablation arms.

    .venv/bin/python benchmarks/train_figures.py --model models/tiny-trained --runs runs/ablation-cpu --out docs

Contact sheet rows per held-out clip: the ground-truth videos A and B (reference renderer), the pair generated
from the caption and cameras alone (both videos free, each the other's cross-view partner), and B generated next
to the fixed ground-truth A (the toy measure's setting). Loss plot: ``<runs>/<arm>/loss.csv`` of every arm found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARM_LABELS = {
    "epipolar": "cross-view attention + epipolar bias (CVD)",
    "plain": "cross-view attention, no bias",
    "none": "no cross-view module",
}


def contact(model_dir: Path, held_out: Path, clips: list[int], out: Path, steps: int, guidance: float, seed: int) -> dict:
    import numpy as np
    import torch

    from cvd.model import CVDModel
    from cvd.training.cache import ClipCache
    from cvd.training.datasets import fit_clip_size
    from cvd.training.metrics import psnr
    from cvd.training.sampling import PairCameras, decode_latents, encode_frames, sample_pair
    from cvd_scene.media import contact_sheet

    model = CVDModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = model.config
    F, H, W = cfg.num_frames, cfg.height_px, cfg.width_px
    held = ClipCache(held_out)
    rows, ids, scores = [], [], []
    for c in clips:
        frames = np.stack([held.video(c, 0)[:F], held.video(c, 1)[:F]])
        frames, K = fit_clip_size(frames, held.K[c, [0, 1], :F], H, W)
        cams = PairCameras(K=torch.from_numpy(np.ascontiguousarray(K)),
                           world_from_cam=torch.from_numpy(held.world_from_cam[c, [0, 1], :F].copy()))
        caption = held.captions[c]
        free = decode_latents(model, sample_pair(model, cams, caption, height=H, width=W, steps=steps,
                                                 guidance_scale=guidance, generator=torch.Generator().manual_seed(seed)))
        z = encode_frames(model, frames)
        fixed = decode_latents(model, sample_pair(model, cams, caption, height=H, width=W, steps=steps,
                                                  guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                                                  fixed_video=0, fixed_latents=z[0]))
        gt = frames.astype(np.float32) / 255.0
        rows += [gt[0], gt[1], free[0], free[1], fixed[1]]
        ids += [f"{c}:gt A", f"{c}:gt B", f"{c}:gen A", f"{c}:gen B", f"{c}:B|gt A"]

        def p(x, y):
            return float(psnr(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y).permute(0, 3, 1, 2)).mean())

        scores.append({"clip": c, "caption": caption, "free_A_psnr_db": p(free[0], gt[0]),
                       "free_B_psnr_db": p(free[1], gt[1]), "B_next_to_gt_A_psnr_db": p(fixed[1], gt[1])})
    contact_sheet(np.stack(rows), out, max_frames=max(1, F // 2), video_ids=ids)
    return {"sheet": str(out), "model": str(model_dir), "steps": steps, "guidance_scale": guidance, "clips": scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "tiny-trained"))
    ap.add_argument("--held-out", default=str(ROOT / "data" / "reference" / "heldout-96.npz"))
    ap.add_argument("--clips", default="0,3", help="held-out clip indices")
    ap.add_argument("--runs", default=None, help="ablation folder with <arm>/loss.csv (for the loss plot)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = contact(Path(args.model), Path(args.held_out), [int(c) for c in args.clips.split(",")],
                   out / "tiny_trained_contact_sheet.png", args.steps, args.guidance, args.seed)
    print(json.dumps(info, indent=1))
    if args.runs:
        from cvd.training.trainer import plot_losses, read_loss_csv

        curves = {label: read_loss_csv(Path(args.runs) / arm / "loss.csv") for arm, label in ARM_LABELS.items()
                  if (Path(args.runs) / arm / "loss.csv").is_file()}
        path = plot_losses(curves, out / "training_loss.png",
                           title="tiny-cpu ablation arms: training loss (same steps, same data)")
        print(f"loss plot: {path}")


if __name__ == "__main__":
    main()
