"""The CVD generator of the ``generate`` stage as a library function: the configured model samples the plan's videos
(:func:`generate_cvd`), optionally from a held first frame and with the cross-view modules switched off, so the stage
(:mod:`cvd_scene.generate.run`) and the known-scene warp measure (:mod:`cvd_scene.evaluate.known_scene`) sample the
same way. Import-light: numpy and torch are imported inside the functions; must not import a stage runner.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from cvd_scene.cameras import Cameras
    from cvd_scene.runconfig import RunConfig

__all__ = ["generate_cvd", "plan_covisibility"]

log = logging.getLogger(__name__)


def generate_cvd(
    config: RunConfig,
    cams: Cameras,
    run_dir: Path,
    picture: tuple[object, dict] | None = None,
    *,
    first_frame_rgb: np.ndarray | None = None,  # [H, W, 3] float in [0, 1], the plan's size
    cross_view: bool = True,
) -> tuple[np.ndarray, dict]:
    """The CVD model's videos along the plan: frames [V, F, H, W, 3] float32 in [0, 1] and report entries
    (``model``, ``unet_calls``, pairing, device and timing details).

    The model generates at the plan's size rounded up to its stride (64 px for SD1.5), with the intrinsics scaled
    to match, and the frames are resized back to the plan's size. ``plan/covisibility.json`` (when present)
    weights the ``covisibility`` pairing. ``picture`` (the ``generate`` stage's reading of ``generate.image``) is
    cover-cropped to the generated size and held as frame 0 of every video; ``first_frame_rgb`` (a frame of the plan's size, e.g. a
    ground-truth render) is held the same way, resized to the generated size. ``cross_view=False`` samples every
    video alone, the cross-view modules skipped (the pipeline's ``cross_view``), with the same noise and conditioning.
    """
    import numpy as np
    import torch

    from cvd.defaults import default_guidance_scale
    from cvd.devices import resolve_device
    from cvd.pipeline import CVDPipeline
    from cvd_scene.cameras import scale_intrinsics
    from cvd_scene.generate.cvd_models import load_cvd_model
    from cvd_scene.logs import progress_enabled

    gen = config.generate
    device = torch.device(resolve_device(gen.device, "generate.device"))
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
        gen.dtype, torch.float16 if device.type == "cuda" else torch.float32
    )
    t0 = time.perf_counter()
    model, model_info = load_cvd_model(
        gen.model, gen.weights, device="cpu" if gen.offload or gen.memory != "fast" else device, dtype=dtype,
        seed=config.seed, keep=not gen.offload and gen.memory == "fast",  # offload hooks stay on the model
    )
    load_s = time.perf_counter() - t0
    pipe = CVDPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=not progress_enabled(), desc="denoising", leave=False)
    if gen.offload:
        if device.type != "cuda":
            raise ValueError("generate.offload needs a CUDA device (it moves components between CPU and GPU)")
        pipe.enable_model_cpu_offload(device=device)
    if gen.memory != "fast":
        pipe.set_memory_mode(gen.memory, device=device)
    stride = model.config.image_stride_px
    H, W = cams.height, cams.width
    Hg, Wg = -(-H // stride) * stride, -(-W // stride) * stride
    if (Hg, Wg) != (H, W):
        log.info(
            "the %s model generates at multiples of %d px: %dx%d, resized to the plan's %dx%d",
            model.config.name,
            stride,
            Wg,
            Hg,
            W,
            H,
        )
    K = scale_intrinsics(cams.K, Wg / W, Hg / H)
    cov, cov_source = plan_covisibility(run_dir, cams)
    first_frame = None
    if picture is not None:
        from cvd_scene.generate.picture import cover_crop

        first_frame = torch.from_numpy(cover_crop(picture[0], Wg, Hg))  # [Hg, Wg, 3]
    elif first_frame_rgb is not None:
        first_frame = torch.as_tensor(np.asarray(first_frame_rgb, np.float32)).permute(2, 0, 1)[None]  # [1, 3, H, W]
        if (Hg, Wg) != (H, W):
            first_frame = torch.nn.functional.interpolate(
                first_frame, size=(Hg, Wg), mode="bilinear", align_corners=False
            )  # [1, 3, Hg, Wg]
        first_frame = first_frame[0].permute(1, 2, 0).clamp(0, 1).contiguous()  # [Hg, Wg, 3]
    out = pipe(
        config.prompt,
        cams.world_from_cam,
        K,
        height=Hg,
        width=Wg,
        num_inference_steps=gen.steps,
        guidance_scale=gen.guidance_scale,
        negative_prompt=gen.negative_prompt,
        pairing=gen.pairing,
        recurrences=gen.recurrences,
        accumulations=gen.accumulations,
        covisibility=cov,
        seed=config.seed,
        max_rows_per_call=gen.max_rows_per_call or "auto",
        output_type="pt",
        first_frame=first_frame,
        cross_view=cross_view,
    )
    frames = out.frames  # [V, F, Hg, Wg, 3]
    if (Hg, Wg) != (H, W):
        flat = frames.reshape(-1, Hg, Wg, 3).permute(0, 3, 1, 2)  # [(V F), 3, Hg, Wg]
        flat = torch.nn.functional.interpolate(
            flat, size=(H, W), mode="bilinear", antialias=True, align_corners=False
        )
        frames = flat.clamp(0, 1).permute(0, 2, 3, 1).reshape(cams.num_videos, cams.num_frames, H, W, 3)
    s = out.stats
    report = {
        "model": model_info,
        "memory_mode": gen.memory,
        "unet_calls": s.unet_calls,
        "unet_rows": s.unet_rows,
        "evaluations": s.evaluations,
        "pairing": {**s.pairing, "covisibility": cov_source},
        "steps": gen.steps,
        "guidance_scale": gen.guidance_scale
        if gen.guidance_scale is not None
        else default_guidance_scale(cams.num_videos),
        "device": s.device,
        "dtype": s.dtype,
        "generated_size": [Wg, Hg],
        "shared_first_camera": s.shared_first_camera,
        "model_load_s": round(load_s, 3),
        "denoise_time_s": round(s.denoise_time_s, 3),
        "decode_time_s": round(s.decode_time_s, 3),
        "sampling_time_s": round(s.wall_time_s, 3),
        "max_rows_per_call": s.max_rows_per_call,
        "bias_cache_mb": round(s.bias_cache_mb, 1),
    }
    if s.memory_kind == "cuda-allocated":
        report["gpu_peak_memory_mb"] = round(s.peak_memory_mb, 1)
    return np.ascontiguousarray(frames.numpy(), dtype=np.float32), report


def plan_covisibility(run_dir: Path, cams: Cameras) -> tuple[np.ndarray | None, str | None]:
    """``plan/covisibility.json`` as [V, V, F] in the plan's video order when it describes this plan's videos,
    else (None, None); the second value names the file relative to the run folder."""
    from cvd_scene.plan.covisibility import read_covisibility
    from cvd_scene.runfolder import RunLayout

    files = RunLayout(run_dir)
    cov = read_covisibility(files.covisibility, cams)
    return (None, None) if cov is None else (cov, files.relative(files.covisibility, files.root))
