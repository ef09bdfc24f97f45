"""The small trained model's toy consistency measure: a video generated next to a fixed ground-truth partner
(its latents replaced by the noised ground truth at every step) against the same model generating it alone
(cross-view attention off: the baseline), same noise, held-out scenes, same run. PSNR and SSIM of the generated
video against its own ground-truth render, over all frames and over the frames after the shared first one.

Model: the committed ``models/tiny-trained`` (12 frames at 96x96); scenes: ``data/reference/heldout-96.npz``.
One trained-step timing row: a training step of the tiny-cpu recipe (forward + backward + AdamW) against one
denoising call of the same model (the baseline).

    .venv/bin/python benchmarks/bench_train.py            # 8 held-out pairs, 20 DDIM steps
    .venv/bin/python benchmarks/bench_train.py --quick    # 2 pairs, 8 steps
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(quick: bool) -> list:
    import torch

    from cvd.model import CVDModel
    from cvd.training.cache import ClipCache
    from cvd.training.datasets import CachedPairs, collate_pairs
    from cvd.training.sampling import toy_consistency
    from cvd.training.trainer import Denoiser, encode_videos, masked_mse, prepare_inputs, trainable_parameters
    from cvd_scene.bench import BenchRow

    folder = ROOT / "models" / "tiny-trained"
    if not (folder / "cvd_model.json").is_file():
        raise FileNotFoundError(f"{folder} is missing: train it with `cvd-scene train --config tiny-cpu`")
    held = ClipCache(ROOT / "data" / "reference" / "heldout-96.npz")
    model = CVDModel.from_pretrained(folder, dtype=torch.float32).eval()
    pairs, steps = (2, 8) if quick else (8, 20)
    res = toy_consistency(model, held, num_pairs=pairs, steps=steps)
    m = res["mean"]
    case = f"tiny-trained, {pairs} held-out pairs, {steps} DDIM steps"
    out = [
        BenchRow("train", f"{case}: PSNR, all frames", "PSNR (dB)", m["partner_psnr_db"],
                 "same model alone (no cross-view)", m["alone_psnr_db"], lower_is_better=False),
        BenchRow("train", f"{case}: PSNR, frames 1..F-1", "PSNR (dB)", m["partner_psnr_db_later"],
                 "same model alone (no cross-view)", m["alone_psnr_db_later"], lower_is_better=False),
        BenchRow("train", f"{case}: SSIM, all frames", "SSIM", m["partner_ssim"],
                 "same model alone (no cross-view)", m["alone_ssim"], lower_is_better=False),
    ]
    # Cost of one training step against one denoising call (same pair, same model).
    batch = collate_pairs([CachedPairs(held, model.config.num_frames, model.config.height_px,
                                       model.config.width_px).pair(0, 0, 1)])
    params = [p for _, p in trainable_parameters(model, "all")]
    opt = torch.optim.AdamW(params, lr=1e-6)
    den = Denoiser(model)
    lat = encode_videos(model, batch["frames"].reshape(2, *batch["frames"].shape[2:]))

    def step(train: bool) -> float:
        inp = prepare_inputs(model, batch, lat, generator=torch.Generator().manual_seed(0), bias_seed=0,
                             caption_dropout=0.0)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(train):
            pred = den(inp["noisy"], inp["timesteps"], inp["ids"], inp["rays"], inp["bias"], inp["partner"])
            if train:
                masked_mse(pred, inp["target"], inp["mask"]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    reps = 2 if quick else 5
    step(True), step(False)
    train_s = min(step(True) for _ in range(reps))
    call_s = min(step(False) for _ in range(reps))
    out.append(BenchRow("train", "tiny-cpu training step (1 pair, 12 frames, 96x96)", "time (s)", train_s,
                        "one denoising call of the pair", call_s))
    return out


def main() -> None:
    from cvd_scene.bench import format_table, machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs, 8 steps")
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    print(format_table(rows(quick=args.quick)))


if __name__ == "__main__":
    main()
