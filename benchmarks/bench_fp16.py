"""How far one SD1.5-size CVD UNet call moves when the converted weights are stored in fp16, and when the epipolar
bias is built in fp16, against fp32 (random weights, CPU, one model, the cases in sequence).

Case: one unguided pair (2 rows) x 2 frames at 256² (``--frames``), a folded RealEstate10K clip (``tests/data/re10k_poses``,
epipole inside the image; frame 0 shared), the release's bias convention, t = 500. Weights: random, with the
zero-initialised CVSM output projections and pose merges drawn at the scale of the other projections
(1/sqrt(fan_in)), so the cross-view attention and its bias act as in a trained model. Reference: fp32 weights and
an fp32 bias. Cases, each a change of one thing against the reference, computed in fp32:

* ``bias fp16``: the bias built as the pipeline does by default (``EpipolarBiasConfig.dtype = float16``);
* ``weights fp16``: every UNet and pose-encoder weight rounded to fp16 (what ``cvd-scene convert --dtype float16``
  stores), computed in fp32, bias fp32;
* both.

Peak process memory stays under ~12 GiB (one fp32 model; the weight rounding is done in place last). A few
minutes on 2 idle CPU cores (building the random model takes most of it).

    .venv/bin/python benchmarks/bench_fp16.py [--frames 2] [--size 256]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cameras(frames: int, size: int):
    """A folded RealEstate10K clip: video A = frames m, m-1, ..., video B = m, m+1, ... (file units)."""
    import numpy as np
    import torch

    from cvd_scene.camera_io import read_re10k

    c2w, K, _ = read_re10k(ROOT / "tests" / "data" / "re10k_poses" / "0bf152ef84195293.txt", size, size)
    m = len(c2w) // 2
    a, b = [m - k for k in range(frames)], [m + k for k in range(frames)]
    K2 = torch.from_numpy(np.stack([K[a], K[b]]))  # [2, F, 3, 3]
    world = torch.from_numpy(np.stack([c2w[a], c2w[b]]))  # [2, F, 4, 4]
    rel = torch.linalg.inv(world[:, :1]) @ world  # each video relative to its first frame (pose encoder)
    return K2, world, rel


def _diff(x, ref) -> tuple[float, float]:
    d = (x.double() - ref.double())
    return float(d.abs().max()), float(d.norm() / ref.double().norm())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=2, help="frames per video (frame 0 shared, then baselines)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--model", default="sd15")
    a = p.parse_args(argv)
    import dataclasses

    import torch

    from cvd.context import CrossViewContext, epipolar_biases
    from cvd.geometry import plucker_embedding
    from cvd.model_config import load_model_config
    from cvd.pose_encoder import CameraPoseEncoder
    from cvd.unet import CVDUNet

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    cfg = load_model_config(ROOT / "configs" / "model" / f"{a.model}.yaml")
    cfg = dataclasses.replace(cfg, epipolar_bias=dataclasses.replace(cfg.epipolar_bias, convention="release"))
    torch.manual_seed(0)
    unet = CVDUNet(cfg).eval().requires_grad_(False)
    pose = CameraPoseEncoder(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for _, cvsm in unet.cvsms():
            w = cvsm.epi_transformer.proj_out.weight
            torch.nn.init.normal_(w, std=w.shape[1] ** -0.5)
        for proc in unet._processors:
            torch.nn.init.normal_(proc.qkv_merge.weight, std=proc.qkv_merge.weight.shape[1] ** -0.5)
    params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in pose.parameters())
    build_s = time.perf_counter() - t_start
    print(f"built {params / 1e9:.2f} B parameters in {build_s:.0f} s", flush=True)

    F, S = a.frames, a.size
    K, world, rel = _cameras(F, S)
    latent = S // cfg.vae_scale_factor
    grids = unet.level_grids((latent, latent))
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, cfg.unet.in_channels, F, latent, latent, generator=g)
    timestep = torch.full((2,), 500, dtype=torch.long)
    text = torch.randn(2, 77, cfg.unet.cross_attention_dim, generator=g)
    rays = plucker_embedding(K.float(), rel.float(), S, S)  # [2, F, 6, S, S]

    def bias_in(dtype: str):
        bc = dataclasses.replace(cfg.epipolar_bias, dtype=dtype)
        return epipolar_biases(K, world, [1, 0], image_hw=(S, S), grids=grids, config=bc,
                               generator=torch.Generator().manual_seed(1))

    def call(bias) -> torch.Tensor:
        with torch.no_grad():
            features = pose(rays)
            ctx = CrossViewContext.for_videos(row_video=[0, 1], partner_video=[1, 0], num_frames=F, device="cpu",
                                              dtype=torch.float32, bias=bias, pose_features=features)
            t = time.perf_counter()
            out = unet(sample, timestep, text, ctx)
            times.append(time.perf_counter() - t)
            print(f"UNet call {len(times)}: {times[-1]:.0f} s", flush=True)
            return out

    times: list[float] = []
    b32, b16 = bias_in("float32"), bias_in("float16")
    bias_diff = max(float((x16.float() - x32).abs().max()) for x16, x32 in zip(b16, b32))
    ref = call(b32)
    rows = [("bias fp16 (weights fp32)", call(b16))]
    with torch.no_grad():  # round every weight to fp16 in place (what an fp16 conversion stores)
        for m in (unet, pose):
            for prm in m.parameters():
                prm.copy_(prm.half().float())
    rows.append(("weights fp16 (bias fp32)", call(b32)))
    rows.append(("weights fp16 and bias fp16", call(b16)))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"{a.model}: {params / 1e9:.2f} B parameters (UNet + pose encoder), random; one unguided pair 2 x {F} frames "
          f"at {S}², t = 500, folded RealEstate10K clip, release convention; fp32 compute on the CPU")
    print(f"noise prediction: rms {float(ref.pow(2).mean().sqrt()):.3f}, max |x| {float(ref.abs().max()):.2f}; "
          f"bias: fp16 rounding moves it by at most {bias_diff:.3g} (values down to {float(b32[0].min()):.1f})\n")
    print("| case vs fp32 | max abs diff | relative L2 |")
    print("| --- | ---: | ---: |")
    for name, out in rows:
        mx, rel_l2 = _diff(out, ref)
        print(f"| {name} | {mx:.3g} | {rel_l2:.3g} |")
    print(f"\nbuild {build_s:.0f} s, UNet calls {', '.join(f'{t:.0f}' for t in times)} s, "
          f"total {time.perf_counter() - t_start:.0f} s, peak process memory {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
