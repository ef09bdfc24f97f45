"""Collaborative sampling of one scene: UNet calls, UNet rows and denoising time under our pairing schedules
against the release's (pairs R=1 Q=1; 4 views R=3 Q=1; 6+ views R=6 Q=2: (S-1)·R·Q + Q calls), both run by
:class:`cvd.pipeline.CVDPipeline` in the same run, for N = 2, 4, 6, 8 videos of a look-around plan sharing their
first camera. A *row* is one video in one guidance branch through the whole UNet: rows measure compute, calls
measure launches (ours batches every pair of an evaluation into one call).

CPU (the tiny model, random weights; what ``cvd-scene bench sampling`` runs):
    .venv/bin/python benchmarks/bench_sampling.py [--quick]

GPU (SD1.5-sized CVD model with random weights built from configs/model/sd15.yaml, nothing downloaded; 6 views,
256², 16 frames, 25 steps; needs only torch, diffusers, numpy, pyyaml and this repo's cvd/ — the text encoder is
a stand-in embedding, since transformers may be absent and text is encoded once per scene):
    python benchmarks/bench_sampling.py --model sd15 --device cuda --dtype float16
Our schedules run all 25 steps. The release's 290 calls are timed over its first steps (2 steps = 14 calls after
a warm-up) and extrapolated by its exact call count; the output says so.

``--consistency`` (once the committed small trained model ``models/tiny-trained`` exists): the trainer's toy
consistency measure widened to N videos, for every schedule at its default and at compute matched to the
release's: on the held-out reference-renderer clips (``data/reference/heldout-96.npz``), video 0 is replaced by
its ground-truth render noised to the current timestep at every step and the other videos are generated
together; PSNR/SSIM against their own renders, with the UNet rows and calls each schedule spent:
    .venv/bin/python benchmarks/bench_sampling.py --consistency [--quick]

Contract of ``cvd-scene bench``: ``rows(quick)`` returns the table rows; torch is imported inside functions.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OURS = "covisibility"
"""Our default schedule (cvd.pairing.DEFAULT_PRESET)."""
OTHERS = ("exhaustive", "partition")
BASELINE = "release schedule (same pipeline, same run)"


# ---------------------------------------------------------------------------------------------- inputs


def look_around(num_videos: int, num_frames: int, size: int, step_m: float = 0.6):
    """``K [V, F, 3, 3]``, ``world_from_cam [V, F, 4, 4]`` (float64, OpenCV axes in a +y-up world): every video
    starts at one camera and turns towards its own direction (evenly spread) while moving ``step_m`` that way."""
    import torch

    f = 0.5 * size / math.tan(math.radians(30))  # 60° horizontal field of view
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    K = K.expand(num_videos, num_frames, 3, 3).clone()
    c2w = torch.eye(4, dtype=torch.float64).expand(num_videos, num_frames, 4, 4).clone()
    base = torch.diag(
        torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
    )  # camera looking along world +z, up +y
    t = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    for v in range(num_videos):
        yaw = 2 * math.pi * v / num_videos
        a = yaw * t  # [F]
        c, s = torch.cos(a), torch.sin(a)
        Ry = torch.zeros(num_frames, 3, 3, dtype=torch.float64)
        Ry[:, 0, 0], Ry[:, 0, 2], Ry[:, 1, 1], Ry[:, 2, 0], Ry[:, 2, 2] = c, s, 1, -s, c
        c2w[v, :, :3, :3] = Ry @ base
        c2w[v, :, 0, 3] = step_m * t * math.sin(yaw)
        c2w[v, :, 1, 3] = 1.5
        c2w[v, :, 2, 3] = step_m * t * math.cos(yaw)
    return K, c2w


def view_covisibility(c2w):  # [V, F, 4, 4] -> [V, V, F]
    """A camera-only stand-in for the plan's co-visibility: the cosine of the angle between viewing directions,
    clipped at 0 (the bench has no scene to ray-cast)."""
    import torch

    z = c2w[..., :3, 2]  # [V, F, 3] viewing directions
    return torch.einsum("vfc,wfc->vwf", z, z).clamp(min=0).numpy()


class StubTokenizer:
    """Stands in for the CLIP tokenizer where transformers is absent (GPU timing only): fixed ids per text."""

    model_max_length = 77

    def __call__(self, texts, padding=None, max_length=None, truncation=None, return_tensors=None):
        import torch

        class Out:
            pass

        out = Out()
        out.input_ids = torch.stack(
            [torch.tensor([(hash(t) + i) % 1000 for i in range(self.model_max_length)]) for t in texts]
        )
        return out


def stub_text_encoder(width: int):
    """An embedding of the stand-in ids ([N, 77] -> ([N, 77, width],)), for GPU timing without transformers."""
    import torch

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(1000, width)

        def forward(self, ids):
            return (self.embedding(ids),)

    return Embed()


def build_pipeline(model: str, device: str, dtype: str):
    """A :class:`CVDPipeline` with random weights: the tiny model through :class:`CVDModel`; other configs from
    their components directly on the device (no transformers: stand-in text encoder)."""
    import torch

    from cvd.model_config import load_model_config
    from cvd.pipeline import CVDPipeline

    path = Path(model) if model.endswith((".yaml", ".yml")) else ROOT / "configs" / "model" / f"{model}.yaml"
    cfg = load_model_config(path)
    dev, dt = torch.device(device), getattr(torch, dtype)
    if cfg.tokenizer == "tiny":
        from cvd.model import CVDModel

        pipe = CVDPipeline.from_model(CVDModel.from_config(cfg, device=dev, dtype=dt, seed=0).eval())
    else:
        from diffusers import AutoencoderKL, DDIMScheduler

        from cvd.pose_encoder import CameraPoseEncoder
        from cvd.unet import CVDUNet

        with torch.random.fork_rng(devices=[]), torch.device(dev):
            torch.manual_seed(0)
            unet = CVDUNet(cfg)
            for _, m in unet.cvsms():  # zero-initialised outputs would not change timings; randomise anyway
                torch.nn.init.normal_(m.epi_transformer.proj_out.weight, std=1e-3)
            pose = CameraPoseEncoder(cfg)
            vae = AutoencoderKL(**cfg.vae.diffusers_kwargs())
            text = stub_text_encoder(cfg.unet.cross_attention_dim)
        for m in (unet, pose, vae, text):
            torch.nn.Module.to(m, device=dev, dtype=dt)
            m.eval()
        pipe = CVDPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=StubTokenizer(),
            unet=unet,
            pose_encoder=pose,
            scheduler=DDIMScheduler(**cfg.scheduler.diffusers_kwargs()),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- timing


def run_scene(
    pipe, num_videos: int, pairing: str, *, steps: int, size: int, frames: int, seed: int = 0
) -> dict:
    """One scene's denoising (latents out, no decoding): calls, rows, loop seconds, peak memory."""
    K, c2w = look_around(num_videos, frames, size)
    out = pipe(
        "a cosy room with a red sofa",
        c2w,
        K,
        height=size,
        width=size,
        num_inference_steps=steps,
        pairing=pairing,
        covisibility=view_covisibility(c2w),
        seed=seed,
        output_type="latent",
    )
    s = out.stats
    return {
        "pairing": pairing,
        "videos": num_videos,
        "steps": steps,
        "calls": s.unet_calls,
        "rows": s.unet_rows,
        "loop_s": s.denoise_time_s,
        "peak_mb": s.peak_memory_mb,
        "memory_kind": s.memory_kind,
        "device": s.device,
        "max_rows": s.max_rows_per_call,
    }


def extrapolated_release(
    pipe, num_videos: int, *, steps: int, size: int, frames: int, timed_steps: int = 2
) -> dict:
    """The release's schedule timed over its first ``timed_steps`` steps (one of them the single-recurrence last
    step), scaled to its exact call count for ``steps`` steps."""
    from cvd.pairing import schedule_cost, schedule_preset

    short = run_scene(pipe, num_videos, "released", steps=timed_steps, size=size, frames=frames)
    full = schedule_cost(schedule_preset("released", num_videos), num_videos, steps)
    per_call = short["loop_s"] / short["calls"]
    return {
        **short,
        "steps": steps,
        "calls": full.unet_calls,
        "rows": full.unet_rows,
        "loop_s": per_call * full.unet_calls,
        "timed_calls": short["calls"],
        "timed_s": short["loop_s"],
    }


def measure_cpu(quick: bool) -> list[dict]:
    """Tiny model on the CPU, every schedule run in full, N = 2, 4, 6, 8."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: stable timings on a shared machine (ratios are what is compared)
    try:
        torch.manual_seed(0)
        pipe = build_pipeline("tiny", "cpu", "float32")
        steps, size, frames = (5, 32, 4) if quick else (25, 64, 8)
        run_scene(pipe, 2, OURS, steps=1, size=size, frames=frames)  # warm-up
        results = []
        for n in (2, 4, 6, 8):
            for pairing in ("released", OURS, *OTHERS):
                r = run_scene(pipe, n, pairing, steps=steps, size=size, frames=frames)
                r.update(size=size, frames=frames)
                results.append(r)
    finally:
        torch.set_num_threads(threads)
    return results


def to_rows(results: list[dict]) -> list[dict]:
    rows = []
    by = {(r["videos"], r["pairing"]): r for r in results}
    for (n, pairing), r in by.items():
        if pairing != OURS:  # the other schedules are in the script's own table
            continue
        base = by[(n, "released")]
        case = f"{n} videos, {pairing}, tiny {r['size']}² x {r['frames']} frames, {r['steps']} steps, cpu"
        for metric, key in (
            ("UNet calls per scene", "calls"),
            ("UNet rows per scene", "rows"),
            ("denoising time (s)", "loop_s"),
        ):
            rows.append(
                {
                    "benchmark": "sampling",
                    "case": case,
                    "metric": metric,
                    "ours": float(r[key]),
                    "baseline_name": BASELINE,
                    "baseline": float(base[key]),
                }
            )
    return rows


def rows(quick: bool = False) -> list[dict]:
    """``cvd-scene bench`` entry: the tiny model on the CPU."""
    return to_rows(measure_cpu(quick))


def table(results: list[dict]) -> str:
    by = {(r["videos"], r["pairing"]): r for r in results}
    lines = [
        "| videos | schedule | UNet calls | UNet rows | denoising (s) | release/ours calls | release/ours rows | release/ours time |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        b = by[(r["videos"], "released")]
        lines.append(
            f"| {r['videos']} | {r['pairing']} | {r['calls']} | {r['rows']} | {r['loop_s']:.2f} | "
            f"{b['calls'] / r['calls']:.1f}x | {b['rows'] / r['rows']:.1f}x | {b['loop_s'] / r['loop_s']:.1f}x |"
        )
    return "\n".join(lines)


def host_syncs_in_unet_calls(pipe, videos: int, *, size: int, frames: int) -> str:
    """Run one step with CUDA's sync debug mode set to ``error`` inside every UNet call of the pipeline:
    ``none`` when no call reads device values on the host, else the first error."""
    import torch

    orig = pipe.unet.forward
    caught: list[str] = []

    def forward(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return orig(*args, **kwargs)
        except RuntimeError as e:
            caught.append(str(e).splitlines()[0])
            raise
        finally:
            torch.cuda.set_sync_debug_mode("default")

    pipe.unet.forward = forward
    try:
        run_scene(pipe, videos, OURS, steps=1, size=size, frames=frames)
    except RuntimeError:
        pass
    finally:
        del pipe.unet.forward
        torch.cuda.synchronize()
    return "none" if not caught else f"host sync: {caught[0]}"


def measure_gpu(
    model: str,
    device: str,
    dtype: str,
    videos: int,
    steps: int,
    size: int,
    frames: int,
    schedules: tuple[str, ...],
) -> str:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    pipe = build_pipeline(model, device, dtype)
    build_s = time.perf_counter() - t0
    card = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    run_scene(pipe, videos, OURS, steps=2, size=size, frames=frames)  # warm-up (kernels, allocator)
    results = [run_scene(pipe, videos, s, steps=steps, size=size, frames=frames) for s in schedules]
    rel = extrapolated_release(pipe, videos, steps=steps, size=size, frames=frames)
    syncs = (
        host_syncs_in_unet_calls(pipe, videos, size=size, frames=frames)
        if device.startswith("cuda")
        else "n/a"
    )
    lines = [
        (
            f"card: {card}   torch {torch.__version__}   model {model} (random weights, built in {build_s:.0f} s)   "
            f"{dtype}   {videos} videos x {frames} frames at {size}²   {steps} DDIM steps   guidance 14"
        ),
        "",
        "| schedule | UNet calls | UNet rows | largest call (rows) | denoising loop (s) | peak memory (GiB) | vs release |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['pairing']} (measured) | {r['calls']} | {r['rows']} | {r['max_rows']} | {r['loop_s']:.2f} | "
            f"{r['peak_mb'] / 1024:.1f} | {rel['loop_s'] / r['loop_s']:.1f}x faster |"
        )
    lines.append(
        f"| released R=6 Q=2 (extrapolated) | {rel['calls']} | {rel['rows']} | {rel['max_rows']} | "
        f"{rel['loop_s']:.2f} | {rel['peak_mb'] / 1024:.1f} | 1.0x |"
    )
    lines += [
        "",
        (
            f"The release's schedule was timed over {rel['timed_calls']} calls (its first 2 steps: {rel['timed_s']:.2f} s) and "
            f"extrapolated to its exact {rel['calls']} calls per scene ({rel['loop_s'] / rel['calls'] * 1e3:.0f} ms per "
            f"{rel['max_rows']}-row call). Target: our {videos}-view loop <= 20 s. Host syncs inside the "
            f"pipeline's UNet calls: {syncs}."
        ),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- consistency


def consistency(
    model_dir: Path | None = None,
    held_out: Path | None = None,
    *,
    clips: int = 16,
    steps: int = 25,
    guidance_scale: float = 1.0,
    seed: int = 1234,
) -> list[dict]:
    """The toy consistency measure (the trainer's, ``cvd.training.sampling.toy_consistency``, widened from a pair
    to all videos of a clip) of every schedule at its default and at compute matched to the release's: on each
    held-out clip (``data/reference/heldout-96.npz``: unseen reference-renderer scenes, 4 videos sharing their
    first camera), video 0 is the fixed ground-truth partner (noised to the current timestep at every step) and
    the other videos are generated together; PSNR/SSIM of each generated video against its own render. Also the
    same sampling with cross-view attention off (``alone``) and the autoencoder's reconstruction (the ceiling)."""
    import numpy as np
    import torch

    from cvd.pipeline import CVDPipeline
    from cvd.training.cache import ClipCache
    from cvd.training.datasets import fit_clip_size
    from cvd.training.metrics import psnr, ssim

    model_dir = model_dir or ROOT / "models" / "tiny-trained"
    if not (model_dir / "cvd_model.json").is_file():
        raise FileNotFoundError(f"no trained model at {model_dir} (the trainer commits models/tiny-trained)")
    cache = ClipCache(held_out or ROOT / "data" / "reference" / "heldout-96.npz")
    pipe = CVDPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.model_config
    F, H, W = min(cfg.num_frames, cache.num_frames), cfg.height_px, cfg.width_px
    V = cache.num_videos

    def score(pred, gt) -> dict:  # [V', F, H, W, 3] float in [0, 1] each
        p = torch.as_tensor(pred).flatten(0, 1).permute(0, 3, 1, 2).float()  # [(V' F), 3, H, W]
        g = torch.as_tensor(gt).flatten(0, 1).permute(0, 3, 1, 2).float()
        ps, ss = psnr(p, g).view(-1, F), ssim(p, g).view(-1, F)  # [V', F]
        later = slice(1, None) if F > 1 else slice(None)
        return {
            "psnr_db": float(ps.mean()),
            "psnr_db_later": float(ps[:, later].mean()),
            "ssim": float(ss.mean()),
        }

    schedules = [(label, sched, True) for label, sched in equal_compute_schedules(V, steps)]
    schedules.append(("alone (no cross-view attention)", "partition", False))
    totals: dict[str, list] = {label: [] for label, _, _ in schedules}
    totals["autoencoder (ceiling)"] = []
    for clip in range(min(clips, cache.num_clips)):
        frames = np.stack([cache.video(clip, v)[:F] for v in range(V)])  # [V, F, h, w, 3] uint8
        frames, K = fit_clip_size(frames, cache.K[clip][:, :F], H, W)
        gt = frames.astype(np.float32) / 255.0  # [V, F, H, W, 3]
        c2w = cache.world_from_cam[clip][:, :F]
        cov = view_covisibility(torch.from_numpy(np.ascontiguousarray(c2w)))
        for label, sched, cross in schedules:
            out = pipe(
                cache.captions[clip],
                c2w,
                K,
                height=H,
                width=W,
                num_inference_steps=steps,
                pairing=sched,
                covisibility=cov,
                guidance_scale=guidance_scale,
                negative_prompt="",
                seed=seed + clip,
                fixed_frames={0: torch.from_numpy(gt[0])},
                cross_view=cross,
            )
            totals[label].append(
                {**score(out.frames[1:], gt[1:]), "rows": out.stats.unet_rows, "calls": out.stats.unet_calls}
            )
        recon = pipe.decode_latents(
            torch.stack([pipe.encode_frames(torch.from_numpy(x), pipe.device) for x in gt[1:]])
        )
        totals["autoencoder (ceiling)"].append({**score(recon.numpy(), gt[1:]), "rows": 0, "calls": 0})
    return [
        {"pairing": label, **{k: float(np.mean([r[k] for r in rs])) for k in rs[0]}, "clips": len(rs)}
        for label, rs in totals.items()
    ]


def equal_compute_schedules(videos: int, steps: int) -> list[tuple[str, object]]:
    """The release's schedule, each of ours at its default (R = 1), and each of ours with the recurrences that
    bring its UNet rows closest to the release's (equal compute)."""
    import dataclasses

    from cvd.pairing import schedule_cost, schedule_preset

    release = schedule_preset("released", videos)
    budget = schedule_cost(release, videos, steps).unet_rows
    out: list[tuple[str, object]] = [(f"released R={release.recurrences} Q={release.accumulations}", release)]
    for name in (OURS, *OTHERS):
        base = schedule_preset(name)
        out.append((f"{name} R=1 Q={base.accumulations}", base))
        costs = {
            r: schedule_cost(dataclasses.replace(base, recurrences=r), videos, steps).unet_rows
            for r in range(1, 13)
        }
        r = min(costs, key=lambda k: abs(costs[k] - budget))
        if r > 1:
            out.append(
                (
                    f"{name} R={r} Q={base.accumulations} (rows matched)",
                    dataclasses.replace(base, recurrences=r),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="tiny", help="tiny (CPU table) or a GPU config such as sd15")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--quick", action="store_true", help="CPU: 5 steps at 32² x 4 frames instead of 25 at 64² x 8"
    )
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--schedules", default=f"{OURS},exhaustive", help="GPU: our schedules to run in full")
    p.add_argument(
        "--consistency", action="store_true", help="toy consistency of every schedule (needs tiny-trained)"
    )
    a = p.parse_args(argv)
    if a.consistency:
        res = consistency(clips=4 if a.quick else 16, steps=a.steps)
        print(
            f"toy consistency: {res[0]['clips']} held-out clips, video 0 fixed to its render, the others generated; "
            f"{a.steps} steps, no guidance\n"
        )
        print("| schedule | PSNR (dB) | PSNR frames 1.. (dB) | SSIM | UNet rows | UNet calls |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in res:
            print(
                f"| {r['pairing']} | {r['psnr_db']:.2f} | {r['psnr_db_later']:.2f} | {r['ssim']:.3f} | "
                f"{r['rows']:.0f} | {r['calls']:.0f} |"
            )
        return
    if a.model == "tiny" and a.device == "cpu":
        res = measure_cpu(a.quick)
        from cvd_scene.bench import machine_description

        print(f"machine: {machine_description()}   model tiny (random weights)   float32\n")
        print(table(res))
        return
    print(
        measure_gpu(
            a.model, a.device, a.dtype, a.videos, a.steps, a.size, a.frames, tuple(a.schedules.split(","))
        )
    )


if __name__ == "__main__":
    main()
