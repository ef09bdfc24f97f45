"""CVDPipeline on the tiny model (2 steps, small images, CPU): determinism, N = 1…6, the batched evaluation
against a per-pair reference, guidance branches never paired across, the released call counts, fixed
ground-truth partners, caching, warnings and input errors; and the CVD branch of the generate stage."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from cvd.context import epipolar_biases, guided_rows
from cvd.geometry import EpipolarBiasConfig
from cvd.pipeline import CVDPipeline, model_poses
from tests.cvd_testing import camera_inputs, random_model, tiny_config

torch.set_num_threads(1)
SIZE = 32
FRAMES = 3
PROMPT = "a red room"


@pytest.fixture(scope="module")
def pipe() -> CVDPipeline:
    # Every weight random (CVSMs and pose merges not zero, so cross-view attention matters); the zero-baseline
    # first frame constrains each query to its homography point, so the bias has no random orientation.
    cfg = tiny_config(epipolar_bias=EpipolarBiasConfig(zero_baseline="homography-point"))
    p = CVDPipeline.from_model(random_model(seed=3, config=cfg))
    p.set_progress_bar_config(disable=True)
    return p


def _cams(n: int, frames: int = FRAMES, size: int = SIZE):
    return camera_inputs(n, frames, size)


def _run(pipe, n, **kwargs):
    K, c2w = _cams(n)
    args = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "seed": 0}
    args.update(kwargs)
    return pipe(PROMPT, c2w, K, **args)


class UNetSpy:
    """Records what every UNet call receives."""

    def __init__(self, pipe, monkeypatch):
        self.calls = []
        orig = pipe.unet.forward

        def forward(sample, timestep, encoder_hidden_states, context=None):
            self.calls.append(
                {
                    "sample": sample.clone(),
                    "text": encoder_hidden_states.clone(),
                    "partner_rows": None if context.partner_rows is None else context.partner_rows.clone(),
                    "biased": any(b is not None for b in context.biases),
                }
            )
            return orig(sample, timestep, encoder_hidden_states, context)

        monkeypatch.setattr(pipe.unet, "forward", forward)


# ---------------------------------------------------------------------------------------------- basics


def test_same_seed_same_frames_other_seed_other_frames(pipe):
    a = _run(pipe, 3, pairing="partition").frames
    b = _run(pipe, 3, pairing="partition").frames
    c = _run(pipe, 3, pairing="partition", seed=1).frames
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_every_n_runs(pipe, n):
    out = _run(pipe, n)
    assert out.frames.shape == (n, FRAMES, SIZE, SIZE, 3) and out.frames.dtype == np.float32
    assert out.frames.min() >= 0 and out.frames.max() <= 1 and np.isfinite(out.frames).all()
    s = out.stats
    assert s.unet_calls == 2 and s.evaluations == 2 and s.wall_time_s > 0 and s.peak_memory_mb > 0
    assert s.unet_rows == sum(2 * g for g in [_rows(ev) for step in out.schedule for ev in step])


def _rows(evaluation) -> int:
    return evaluation.merged().num_rows


def test_one_video_is_plain_camera_controlled_video(pipe, monkeypatch):
    spy = UNetSpy(pipe, monkeypatch)
    out = _run(pipe, 1)
    assert out.stats.unet_rows == 4  # 2 steps x (uncond, cond)
    assert all(c["partner_rows"] is None and not c["biased"] for c in spy.calls)


def test_rectangular_images(pipe):
    K, c2w = camera_inputs(2, 2, 32)
    K[..., 0, 2] = 32.0  # principal point of a 64 x 32 image
    out = pipe(PROMPT, c2w, K, num_inference_steps=1, height=32, width=64, seed=0)
    assert out.frames.shape == (2, 2, 32, 64, 3)


# ---------------------------------------------------------------------------------------------- reference


def _reference_step(pipe, noise, c2w, K, evaluation, guidance):
    """One DDIM step of every video, each pair run as its own UNet call through the model's documented
    per-video context (the obviously-correct path), predictions mixed by the evaluation's weights."""
    from diffusers import DDIMScheduler

    cfg = pipe.model_config
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    text = pipe.encode_prompt(PROMPT, "worst quality, low quality, letterboxed", True, torch.device("cpu"))
    grids = pipe.unet.level_grids((SIZE // 8, SIZE // 8))
    eps = torch.zeros_like(noise)
    for s in evaluation.pair_sets:
        for (a, b), (wa, wb) in zip(s.pairs.tolist(), s.weights.tolist()):
            idx = [a, b]
            bias = epipolar_biases(
                K[idx], c2w[idx], [1, 0], image_hw=(SIZE, SIZE), grids=grids, config=cfg.epipolar_bias
            )
            feats = pipe.encode_cameras(
                K[idx], model_poses(c2w[idx], cfg.model_units_per_metre), SIZE, SIZE, torch.device("cpu")
            )
            rv, rb = guided_rows(2)
            ctx = pipe.unet.make_context(
                row_video=rv,
                row_branch=rb,
                partner_video=[1, 0],
                num_frames=FRAMES,
                bias=bias,
                pose_features=feats,
            )
            x = noise[[a, a, b, b]]
            out = pipe.unet(x, t, text[[0, 1, 0, 1]], ctx)  # [4, C, F, h, w]
            eps[a] += wa * (out[0] + guidance * (out[1] - out[0]))
            eps[b] += wb * (out[2] + guidance * (out[3] - out[2]))
    return sched.step(eps, t, noise).prev_sample


@pytest.mark.parametrize(
    "n,pairing,max_rows",
    [(3, "exhaustive", "auto"), (3, "partition", "auto"), (4, "covisibility", 4), (2, "released", None)],
)
def test_batched_evaluation_equals_per_pair_reference(pipe, n, pairing, max_rows):
    K, c2w = _cams(n)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(n, 4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
    out = pipe(
        PROMPT,
        c2w,
        K,
        num_inference_steps=1,
        height=SIZE,
        width=SIZE,
        seed=0,
        latents=noise,
        pairing=pairing,
        guidance_scale=7.0,
        output_type="latent",
        max_rows_per_call=max_rows,
    )
    (evaluation,) = out.schedule[0]
    ref = _reference_step(pipe, noise, c2w.double().float(), K.float(), evaluation, 7.0)
    torch.testing.assert_close(out.frames, ref, rtol=1e-4, atol=1e-5)
    if max_rows == 4:
        assert out.stats.unet_calls == evaluation.merged().num_pairs  # one guided pair per call
    # The partners matter: pairing video 0 differently changes its prediction.
    if n == 3 and pairing == "exhaustive":
        from cvd.pairing import Evaluation, PairSet

        only_01 = Evaluation(
            pair_sets=(PairSet(num_videos=3, pairs=[[0, 1], [2, 1]], weights=[[1, 0.5], [1, 0.5]]),)
        )
        other = _reference_step(pipe, noise, c2w.float(), K.float(), only_01, 7.0)
        assert (other[0] - ref[0]).abs().max() > 1e-4


def test_guidance_branches_are_never_paired_across(pipe, monkeypatch):
    spy = UNetSpy(pipe, monkeypatch)
    _run(pipe, 5, pairing="exhaustive", guidance_scale=9.0)
    _run(pipe, 4, pairing="released")
    for call in spy.calls:
        rows = call["sample"].shape[0]
        partner_rows = call["partner_rows"]
        assert partner_rows.shape == (rows * FRAMES,)
        text = call["text"]  # [B, L, D]: the uncond rows carry the negative prompt, the cond rows the prompt
        kinds = {bytes(t.numpy().tobytes()) for t in text}
        assert len(kinds) == 2
        for r in range(rows):
            for f in range(FRAMES):
                q = int(partner_rows[r * FRAMES + f])
                p, pf = divmod(q, FRAMES)
                assert pf == f and p != r  # same frame of another row
                assert torch.equal(text[p], text[r])  # same guidance branch
                assert int(partner_rows[p * FRAMES + f]) == r * FRAMES + f  # mutual


def test_guidance_off_runs_one_branch(pipe, monkeypatch):
    spy = UNetSpy(pipe, monkeypatch)
    out = _run(pipe, 2, guidance_scale=1.0)
    assert out.stats.unet_rows == 4 and all(c["sample"].shape[0] == 2 for c in spy.calls)


@pytest.mark.parametrize("n,calls", [(2, 2), (4, 1 * 3 * 1 + 1), (6, 1 * 6 * 2 + 2)])
def test_released_schedules_make_the_released_calls(pipe, n, calls):
    out = _run(pipe, n, pairing="released")
    assert out.stats.unet_calls == calls  # (S-1)·R·Q + Q with S = 2
    assert out.stats.max_rows_per_call == 2 * n
    ours = _run(pipe, n)
    assert ours.stats.unet_calls == 2  # one batched call a step


def test_recurrences_renoise_and_need_ddim(pipe):
    from diffusers import EulerDiscreteScheduler

    plain = _run(pipe, 2, pairing="exhaustive")
    twice = _run(pipe, 2, pairing="exhaustive", recurrences=2)
    assert twice.stats.evaluations == 3 and np.abs(plain.frames - twice.frames).max() > 1e-4
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="recurrences=2.*EulerDiscreteScheduler"):
        _run(pipe, 2, recurrences=2, scheduler=euler)
    out = _run(pipe, 2, scheduler=euler)  # R = 1 works with any scheduler
    assert np.isfinite(out.frames).all()


# ---------------------------------------------------------------------------------------------- efficiency


def test_bias_built_once_per_directed_pair_and_contexts_reused(pipe, monkeypatch):
    import cvd.pipeline as module
    from cvd.context import CrossViewContext

    pairs_built, contexts = [], []
    orig_bias, orig_build = module.epipolar_bias_pyramid, CrossViewContext.build

    def bias(K_q, *args, **kwargs):
        pairs_built.append(K_q.shape[0])
        return orig_bias(K_q, *args, **kwargs)

    def build(*args, **kwargs):
        contexts.append(kwargs["num_rows"])
        return orig_build(*args, **kwargs)

    monkeypatch.setattr(module, "epipolar_bias_pyramid", bias)
    monkeypatch.setattr(CrossViewContext, "build", build)
    out = _run(pipe, 4, pairing="exhaustive", num_inference_steps=3)
    assert sum(pairs_built) == 12  # 4·3 directed pairs, once for all 3 steps
    assert contexts == [24]  # one call plan, built once, reused by every step
    assert out.stats.unet_calls == 3 and out.stats.bias_cache_mb > 0


def test_text_and_cameras_encoded_once(pipe, monkeypatch):
    counts = {"text": 0, "pose": 0}
    orig_text, orig_pose = pipe.text_encoder.forward, pipe.pose_encoder.forward

    def text(*a, **k):
        counts["text"] += 1
        return orig_text(*a, **k)

    def pose(*a, **k):
        counts["pose"] += 1
        return orig_pose(*a, **k)

    monkeypatch.setattr(pipe.text_encoder, "forward", text)
    monkeypatch.setattr(pipe.pose_encoder, "forward", pose)
    _run(pipe, 3, num_inference_steps=3, pairing="released")
    assert counts == {"text": 1, "pose": 1}


# ---------------------------------------------------------------------------------------------- partners


def test_fixed_ground_truth_partner(pipe, monkeypatch):
    """A fixed video enters every UNet call as its ground truth noised to the current timestep (with its own
    initial noise) and comes out as that ground truth; the other videos are generated."""
    K, c2w = _cams(3)
    gt = torch.rand(FRAMES, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    spy = UNetSpy(pipe, monkeypatch)
    noise = torch.randn(3, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))
    out = pipe(
        PROMPT,
        c2w,
        K,
        num_inference_steps=2,
        height=SIZE,
        width=SIZE,
        seed=0,
        latents=noise,
        pairing="exhaustive",
        fixed_frames={1: gt},
        output_type="pt",
    )
    x0 = pipe.encode_frames(gt, torch.device("cpu"))
    sched = pipe.scheduler
    for call, t in zip(spy.calls, sched.timesteps.tolist()):
        a = float(sched.alphas_cumprod[t])
        expected = a**0.5 * x0 + (1 - a) ** 0.5 * noise[1]
        rows_of_1 = [
            r
            for r in range(call["sample"].shape[0])
            if torch.allclose(call["sample"][r], expected, atol=1e-5)
        ]
        assert len(rows_of_1) == 4  # (0, 1) and (1, 2), both branches; the (1, 1) pair does not exist
    torch.testing.assert_close(out.frames[1], pipe.decode_latents(x0[None])[0])
    assert (out.frames[0] - out.frames[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="fixes all 3 videos"):
        pipe(
            PROMPT, c2w, K, num_inference_steps=1, height=SIZE, width=SIZE, fixed_frames={0: gt, 1: gt, 2: gt}
        )


def test_model_without_cvsms_samples_every_video_alone(monkeypatch):
    from cvd.model_config import CVSMConfig

    cfg = tiny_config(cvsm=CVSMConfig(enabled=False, num_attention_heads=4, norm_num_groups=8))
    p = CVDPipeline.from_model(random_model(seed=4, config=cfg))
    p.set_progress_bar_config(disable=True)
    spy = UNetSpy(p, monkeypatch)
    out = _run(p, 3, pairing="exhaustive")
    assert out.stats.unet_calls == 2 and out.stats.unet_rows == 12
    assert all(c["partner_rows"] is None for c in spy.calls)


def test_callback_on_step_end(pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, t, tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"] * 0.0} if i == 1 else {}

    out = _run(pipe, 2, callback_on_step_end=callback, output_type="latent")
    assert [s[0] for s in seen] == [0, 1] and seen[0][2] == (2, 4, FRAMES, SIZE // 8, SIZE // 8)
    assert torch.count_nonzero(out.frames) == 0


def test_videos_not_sharing_their_first_camera_warn_and_run(pipe, caplog):
    K, c2w = _cams(2)
    c2w[1, :, 0, 3] += 0.3  # video 1 starts 30 cm to the side
    with caplog.at_level(logging.WARNING, logger="cvd.pipeline"):
        out = pipe(PROMPT, c2w, K, num_inference_steps=1, height=SIZE, width=SIZE, seed=0)
    assert "training distribution" in caplog.text
    assert not out.stats.shared_first_camera and np.isfinite(out.frames).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cvd.pipeline"):
        _run(pipe, 2)
    assert "training distribution" not in caplog.text


def test_pose_features_see_each_video_relative_to_its_first_frame():
    _K, c2w = _cams(2)
    moved = c2w.clone()
    moved[:, :, :3, 3] += torch.tensor(
        [1.0, 2.0, 3.0], dtype=c2w.dtype
    )  # the same plan, shifted in the world
    torch.testing.assert_close(model_poses(moved, 2.0), model_poses(c2w, 2.0))
    rel = model_poses(c2w, 2.0)
    torch.testing.assert_close(rel[:, 0], torch.eye(4, dtype=rel.dtype).expand(2, 4, 4))
    torch.testing.assert_close(rel[:, -1, :3, 3], 2.0 * (c2w[:, -1, :3, 3] - c2w[:, 0, :3, 3]))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"prompt": 3}, TypeError, "prompt must be a str.*3"),
        ({"height": 40}, ValueError, "height must be a positive multiple of 16.*height=40"),
        ({"width": 0}, ValueError, "width=0"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps=0"),
        ({"num_inference_steps": 2000}, ValueError, "num_inference_steps=2000"),
        ({"guidance_scale": -1.0}, ValueError, "guidance_scale=-1.0"),
        ({"pairing": "pairs"}, ValueError, "unknown pairing 'pairs'"),
        ({"recurrences": 0}, ValueError, "recurrences=0"),
        ({"num_frames": 5}, ValueError, "num_frames=5"),
        ({"seed": -2}, ValueError, "seed=-2"),
        ({"generator": 7}, TypeError, "generator must be a torch.Generator"),
        ({"output_type": "pil"}, ValueError, "output_type='pil'"),
        ({"max_rows_per_call": 2}, ValueError, "max_rows_per_call=2"),
        ({"covisibility": np.ones((2, 2))}, ValueError, r"covisibility.shape=\(2, 2\)"),
        ({"latents": torch.zeros(1, 4, 3, 4, 4)}, ValueError, "latents must be a tensor of shape"),
        ({"fixed_frames": {7: torch.zeros(3, 32, 32, 3)}}, ValueError, "fixed_frames key 7"),
        ({"K": torch.zeros(3, 3, 3, 3)}, ValueError, "positive focal lengths"),
        ({"world_from_cam": torch.zeros(3, 3, 4)}, ValueError, r"world_from_cam.shape=\(3, 3, 4\)"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "noise"),
    ],
)
def test_bad_inputs_name_the_argument(pipe, change, error, match):
    K, c2w = _cams(3)
    args = {
        "prompt": PROMPT,
        "world_from_cam": c2w,
        "K": K,
        "num_inference_steps": 1,
        "height": SIZE,
        "width": SIZE,
    }
    args.update(change)
    with pytest.raises(error, match=match):
        pipe(**args)


def test_non_rigid_pose_is_named(pipe):
    K, c2w = _cams(2)
    c2w[1, 2, 0, 0] = 2.0
    with pytest.raises(ValueError, match=r"world_from_cam\[1, 2\] is not a rigid"):
        pipe(PROMPT, c2w, K, num_inference_steps=1, height=SIZE, width=SIZE)


def test_pipeline_is_a_diffusion_pipeline_with_our_components(pipe, tmp_path):
    from diffusers import DiffusionPipeline

    assert isinstance(pipe, DiffusionPipeline)
    assert set(pipe.components) == {"vae", "text_encoder", "tokenizer", "unet", "pose_encoder", "scheduler"}
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    path = pipe.save_pretrained(tmp_path / "m")
    again = CVDPipeline.from_pretrained(path)
    again.set_progress_bar_config(disable=True)
    a = _run(pipe, 2, num_inference_steps=1).frames
    b = _run(again, 2, num_inference_steps=1).frames
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.gpu
def test_fp16_and_cpu_offload_on_cuda():
    p = CVDPipeline.from_model(random_model(seed=3).to("cuda", torch.float16))
    p.set_progress_bar_config(disable=True)
    K, c2w = _cams(3)
    orig = p.unet.forward

    def no_sync_forward(*args, **kwargs):  # no host synchronisation inside a UNet call of the pipeline
        torch.cuda.set_sync_debug_mode("error")
        try:
            return orig(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    p.unet.forward = no_sync_forward
    out = p(PROMPT, c2w, K, num_inference_steps=2, height=SIZE, width=SIZE, seed=0)
    del p.unet.forward
    assert np.isfinite(out.frames).all() and out.stats.memory_kind == "cuda-allocated"
    p.enable_model_cpu_offload()
    off = p(PROMPT, c2w, K, num_inference_steps=2, height=SIZE, width=SIZE, seed=0)
    np.testing.assert_allclose(off.frames, out.frames, atol=2e-2)
    assert p._offload.moves >= 4 and p.unet.device.type == "cpu"  # every model came and went
    p.enable_sequential_cpu_offload()
    seq = p(PROMPT, c2w, K, num_inference_steps=2, height=SIZE, width=SIZE, seed=0, max_pairs_per_call=1)
    np.testing.assert_allclose(seq.frames, out.frames, atol=2e-2)
    assert all(t.device.type == "cpu" for t in p.unet.parameters())


# ---------------------------------------------------------------------------------------------- the stage


def _planned_run(tmp_path, videos=3, frames=3, size=(40, 24)):
    from cvd_scene.camera_io import write_cameras_json
    from cvd_scene.cameras import Cameras, intrinsics_matrix
    from cvd_scene.config import load_config, to_dict
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import RunFolder, StageResult

    W, H = size
    K, c2w = camera_inputs(videos, frames, 32)
    K = np.broadcast_to(intrinsics_matrix(0.8 * W, 0.8 * W, W / 2, H / 2), (videos, frames, 3, 3))
    c2w = c2w.numpy().copy()
    c2w[..., 1, 3] += 1.5
    cams = Cameras(world_from_cam=c2w, K=K, width=W, height=H)
    run_dir = tmp_path / "run"
    run = RunFolder.open(run_dir, to_dict(load_config(RunConfig, "run", None, {})), None)

    def plan(out):
        write_cameras_json(cams, out / "cameras.json")
        cov = np.full((videos, videos, frames), 0.3)
        cov[np.arange(videos), np.arange(videos)] = 1.0
        (out / "covisibility.json").write_text(
            json.dumps(
                {
                    "format": "cvd-scene/covisibility",
                    "version": 1,
                    "videos": list(cams.video_ids),
                    "frames": frames,
                    "covisibility": cov.tolist(),
                    "coverage": 0.5,
                }
            )
        )
        return StageResult()

    run.run_stage("plan", plan, {"cameras": "given"})
    return run_dir, cams


def test_generate_cvd_tiny_writes_every_file(tmp_path):
    from PIL import Image

    from cvd_scene.camera_io import read_transforms_json
    from cvd_scene.cli import main
    from cvd_scene.media import read_mp4

    run_dir, cams = _planned_run(tmp_path)
    rc = main(
        ["generate", str(run_dir), "--quiet", "--generator", "cvd", "--model", "tiny", "generate.steps=2"]
    )
    assert rc == 0
    gen = run_dir / "generate"
    for vid in cams.video_ids:
        for f in range(3):
            with Image.open(gen / "frames" / vid / f"{f:04d}.png") as im:
                assert im.size == (40, 24) and im.mode == "RGB"
        assert read_mp4(gen / "videos" / f"{vid}.mp4").shape[0] == 3
    assert (gen / "contact_sheet.png").is_file()
    tf = read_transforms_json(gen / "transforms.json")
    np.testing.assert_allclose(tf.cameras.world_from_cam, cams.world_from_cam, atol=1e-9)
    rep = json.loads((gen / "report.json").read_text())
    assert (
        rep["generator"] == "cvd" and rep["model"]["name"] == "tiny" and rep["model"]["weights"] == "random"
    )
    assert (
        rep["unet_calls"] == 2 and rep["seed"] == 0 and rep["wall_time_s"] > 0 and rep["peak_memory_mb"] > 0
    )
    assert (
        rep["pairing"]["strategy"] == "covisibility"
        and rep["pairing"]["covisibility"] == "plan/covisibility.json"
    )
    assert rep["generated_size"] == [48, 32]  # the plan's 40 x 24 rounded up to the tiny model's stride of 16
    assert not (gen / "gt").exists()


def test_generate_cvd_with_saved_weights_and_missing_files(tmp_path):
    from cvd.model import CVDModel
    from cvd_scene.cli import main

    run_dir, _ = _planned_run(tmp_path, videos=2, frames=2)
    folder = tmp_path / "weights"
    CVDModel.from_config(tiny_config(), seed=1).save_pretrained(folder)
    rc = main(
        [
            "generate",
            str(run_dir),
            "--quiet",
            "--generator",
            "cvd",
            "--weights",
            str(folder),
            "generate.steps=1",
            "generate.pairing=released",
        ]
    )
    assert rc == 0
    rep = json.loads((run_dir / "generate" / "report.json").read_text())
    assert rep["model"]["weights"] == str(folder.resolve()) and rep["pairing"]["batching"] == "per-set"
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    from cvd_scene.generate.cvd_models import load_cvd_model

    with pytest.raises(FileNotFoundError, match=r"unet/diffusion_pytorch_model.safetensors.*vae/"):
        load_cvd_model("tiny", str(folder))
    with pytest.raises(FileNotFoundError, match="sd15.*--weights"):
        load_cvd_model("sd15", None)
    with pytest.raises(FileNotFoundError, match="tiny-trained"):
        load_cvd_model("tiny-trained", None, models_dir=tmp_path / "nowhere")


def test_consistency_hook_runs_on_a_saved_model(tmp_path):
    """The bench's toy-consistency hook end to end on one held-out clip (random weights: the numbers mean
    nothing here, the path is what is tested; the committed tiny-trained model's numbers are in the README)."""
    import importlib.util
    from pathlib import Path

    from cvd.model import CVDModel

    root = Path(__file__).resolve().parents[1]
    held_out = root / "data" / "reference" / "heldout-96.npz"
    if not held_out.is_file():
        pytest.skip("no held-out clip cache")
    spec = importlib.util.spec_from_file_location("bench_sampling", root / "benchmarks" / "bench_sampling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = tiny_config(num_frames=3, height_px=32, width_px=32)
    CVDModel.from_config(cfg, seed=0).save_pretrained(tmp_path / "m")
    rows = bench.consistency(tmp_path / "m", held_out, clips=1, steps=1)
    labels = [r["pairing"] for r in rows]
    assert labels[0].startswith("released R=3") and "autoencoder (ceiling)" in labels
    assert all(np.isfinite(r["psnr_db"]) and r["clips"] == 1 for r in rows)
    assert {r["rows"] for r in rows if r["pairing"].startswith("alone")} == {3}  # 3 generated videos, alone


def model_of(pipe):
    """The :class:`CVDModel` holding ``pipe``'s components (what the trainer's sampler takes)."""
    from cvd.model import CVDModel

    return CVDModel(config=pipe.model_config, unet=pipe.unet, pose_encoder=pipe.pose_encoder, vae=pipe.vae,
                    text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler)  # fmt: skip


def test_pair_with_fixed_partner_matches_the_trainers_pair_sampler(pipe):
    """The toy measure's sampling: ``CVDPipeline`` with a fixed ground-truth partner (default pairing and seed)
    and the trainer's pair sampler (``cvd.training.sampling.sample_pair``, the pipeline with fixed latents) agree
    for the same noise."""
    from cvd.training import sampling

    model = model_of(pipe)
    K, c2w = _cams(2)
    z0 = torch.randn(4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(3)
    theirs = sampling.sample_pair(
        model,
        sampling.PairCameras(K=K, world_from_cam=c2w),
        PROMPT,
        height=SIZE,
        width=SIZE,
        steps=3,
        generator=g,
        fixed_video=0,
        fixed_latents=z0,
    )
    g = torch.Generator().manual_seed(3)  # the same draws: both videos' noise, then the fixed partner's
    noise = torch.randn(2, 4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
    noise[0] = torch.randn(4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
    ours = pipe(
        PROMPT,
        c2w,
        K,
        height=SIZE,
        width=SIZE,
        num_inference_steps=3,
        guidance_scale=1.0,
        latents=noise,
        fixed_latents={0: z0},
        output_type="latent",
        seed=0,
    ).frames
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_the_trainers_pair_sampler_is_the_pipeline_with_fixed_latents(pipe, monkeypatch):
    """``sample_pair`` keeps no denoising loop of its own: it runs ``CVDPipeline.denoise`` once per call, and its
    result is the pipeline's, bit for bit, for the same noise (both videos', then the fixed partner's own)."""
    import inspect

    from diffusers import DDIMScheduler

    from cvd.training import sampling

    source = inspect.getsource(sampling)
    for loop_part in (".unet(", "scheduler.step", ".step(", "make_context", "epipolar_biases", "add_noise"):
        assert loop_part not in source, loop_part
    model = model_of(pipe)
    denoised = []
    denoise = CVDPipeline.denoise

    def counting_denoise(self, state, **kwargs):
        denoised.append(state.stats)
        return denoise(self, state, **kwargs)

    monkeypatch.setattr(CVDPipeline, "denoise", counting_denoise)
    K, c2w = _cams(2)
    z0 = torch.randn(4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7))
    theirs = sampling.sample_pair(
        model, sampling.PairCameras(K=K, world_from_cam=c2w), PROMPT, height=SIZE, width=SIZE, steps=3,
        guidance_scale=3.0, generator=torch.Generator().manual_seed(3), fixed_video=1, fixed_latents=z0, bias_seed=5,
    )
    assert len(denoised) == 1 and denoised[0].unet_calls == 3  # one guided pair per step, through the pipeline
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
    noise[1] = torch.randn(4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
    ours = pipe(
        PROMPT, c2w, K, negative_prompt="", height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=3.0,
        pairing="exhaustive", scheduler=DDIMScheduler.from_config(pipe.scheduler.config), seed=5, latents=noise,
        fixed_latents={1: z0}, output_type="latent",
    ).frames
    assert len(denoised) == 2
    assert torch.equal(ours, theirs)
    assert torch.equal(theirs[1], z0)  # the fixed partner is put back clean


def test_prepare_then_denoise_is_the_call(pipe):
    """``__call__`` is ``prepare`` then ``denoise`` then decoding, sharing one state: the steps run by hand give
    the call's frames bit for bit (3 videos, guided, two recurrences with re-noising, a fixed partner)."""
    K, c2w = _cams(3)
    args = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "seed": 4, "pairing": "partition",
            "recurrences": 2, "fixed_latents": {2: torch.randn(4, FRAMES, SIZE // 8, SIZE // 8)}}
    out = pipe(PROMPT, c2w, K, **args)
    state = pipe.prepare(PROMPT, c2w, K, **args)
    assert state.latents.shape == (3, 4, FRAMES, SIZE // 8, SIZE // 8) and state.branches == 2
    assert state.guidance_scale == 14.0  # the release's rule for more than two videos
    latents = pipe.denoise(state)
    assert latents is state.latents and state.stats.unet_calls == out.stats.unet_calls
    assert np.array_equal(pipe.decode_latents(latents).numpy(), out.frames)
    assert pipe._bias_cache is None  # the loop's caches live in the state, not on the pipeline


# ---------------------------------------------------------------------------------------------- frame-0 redraw


@pytest.mark.parametrize("line_draw", ["per-call", "per-pair"])
def test_frame0_line_redraw_one_angle_per_attention_call_shared_by_all_rows(line_draw, monkeypatch):
    """``per-call`` (the release): every cross-view attention call draws one new angle, and every row's frame-0
    (identical cameras) queries use that same angle; frames with a baseline keep their cached bias. ``per-pair``:
    frame 0 keeps one angle per directed pair for the whole run."""
    import cvd.cvsm
    from cvd.context import LineRedraw
    from cvd.geometry import pseudo_line_bias

    bias_cfg = EpipolarBiasConfig(line_draw=line_draw, dtype="float32", convention="release")
    p = CVDPipeline.from_model(random_model(seed=3, config=tiny_config(epipolar_bias=bias_cfg)))
    p.set_progress_bar_config(disable=True)
    seen, angles = [], []
    attention, draw = cvd.cvsm.cross_view_attention, LineRedraw.draw

    def spy_attention(q, k, v, heads, bias=None):
        seen.append(bias.clone())
        return attention(q, k, v, heads, bias)

    def spy_draw(self):
        angles.append(draw(self))
        return angles[-1]

    monkeypatch.setattr(cvd.cvsm, "cross_view_attention", spy_attention)
    monkeypatch.setattr(LineRedraw, "draw", spy_draw)
    K, c2w = _cams(2)
    p(PROMPT, c2w, K, num_inference_steps=2, height=SIZE, width=SIZE, seed=0, output_type="latent")
    n_cvsm = sum(1 for _ in p.unet.cvsms())
    assert len(seen) == 2 * 2 * n_cvsm  # 2 UNet calls (one guided pair per step) x 2 attentions per CVSM
    rows = 4  # [uncond_a, cond_a, uncond_b, cond_b]
    grids = p.unet.level_grids((SIZE // 8, SIZE // 8))
    by_size = {g[0] * g[1]: g for g in grids}
    first = {}
    for i, bias in enumerate(seen):
        b = bias.reshape(rows, FRAMES, *bias.shape[-2:])  # [B, F, N, N]
        n = b.shape[-1]
        if line_draw == "per-call":
            want = pseudo_line_bias(torch.eye(3, dtype=torch.float64), by_size[n], (SIZE, SIZE), angles[i], bias_cfg)
            for r in range(rows):
                assert torch.allclose(b[r, 0], want, atol=1e-5), (i, r)
        else:
            for r in range(rows):  # unchanged from call to call
                assert torch.equal(b[r, 0], first.setdefault((n, r), b[r, 0]))
        for r in range(rows):  # frames with a baseline: the cached bias, never redrawn
            assert torch.equal(b[r, 1:], first.setdefault((n, r, "rest"), b[r, 1:]))
    if line_draw == "per-call":
        assert len(angles) == len(seen) and len(set(angles)) == len(angles)
        assert not torch.equal(seen[0].reshape(rows, FRAMES, -1)[0, 0], seen[1].reshape(rows, FRAMES, -1)[0, 0])
    else:
        assert angles == []


# ---------------------------------------------------------------------------------------------- memory modes


def test_pair_cap_changes_no_output(pipe):
    """Four videos, partition pairing: two pairs per evaluation in one call, or one pair per call. One step
    (the random tiny model amplifies float32 rounding of other GEMM batch sizes ~10x per step: 1.3e-6 after one
    step, 6.5e-5 on latents of magnitude 14 after two)."""
    K, c2w = _cams(4)
    args = {"num_inference_steps": 1, "height": SIZE, "width": SIZE, "seed": 0, "pairing": "partition"}
    for output_type in ("latent", "pt"):
        together = pipe(PROMPT, c2w, K, output_type=output_type, **args)
        apart = pipe(PROMPT, c2w, K, max_pairs_per_call=1, output_type=output_type, **args)
        assert together.stats.max_rows_per_call == 8 and apart.stats.max_rows_per_call == 4
        assert apart.stats.unet_calls == 2 * together.stats.unet_calls
        assert (together.frames - apart.frames).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="max_pairs_per_call=0"):
        pipe(PROMPT, c2w, K, max_pairs_per_call=0, output_type="latent", **args)


def _fake_placement(monkeypatch) -> dict:
    """Record where cvd.offload puts each module instead of moving it (on a CPU-only machine the test
    checks the hook logic, i.e. which module is placed where at each call; the copies themselves are plain
    tensor moves, run on a GPU by benchmarks/gpu_check.sh)."""
    import cvd.offload

    where: dict[int, str] = {}

    def place(module, device, *, recurse):
        for m in module.modules() if recurse else (module,):
            where[id(m)] = str(device)

    monkeypatch.setattr(cvd.offload, "place", place)
    return where


def test_model_offload_puts_each_model_on_the_device_when_it_runs(pipe, monkeypatch):
    where = _fake_placement(monkeypatch)
    models = pipe._offload_models()
    reference = _run(pipe, 2, output_type="latent").frames
    pipe.enable_model_cpu_offload(device="cpu", offload_device="meta")
    seen = []

    def check(name):
        on = {n for n, m in models.items() if all(where.get(id(s)) == "cpu" for s in m.modules())}
        off = {n for n, m in models.items() if all(where.get(id(s)) == "meta" for s in m.modules())}
        seen.append((name, on, off))

    handles = [models[n].register_forward_pre_hook(lambda m, a, n=n: check(n)) for n in ("text_encoder", "pose_encoder", "unet")]
    decode = pipe.vae.decode
    pipe.vae.decode = lambda *a, **k: (check("vae"), decode(*a, **k))[1]
    try:
        out = _run(pipe, 2, output_type="np")
    finally:
        for h in handles:
            h.remove()
        del pipe.vae.decode
        pipe.disable_cpu_offload()
    assert [s[0] for s in seen][:3] == ["text_encoder", "pose_encoder", "unet"] and seen[-1][0] == "vae"
    for name, on, off in seen:  # the running model alone on the device, every other one offloaded
        assert on == {name} and off == set(models) - {name}, (name, on, off)
    assert all(where[id(m)] == "meta" for model in models.values() for m in model.modules())  # all back at the end
    assert np.isfinite(out.frames).all()
    assert torch.equal(_run(pipe, 2, output_type="latent").frames, reference)


def test_sequential_offload_moves_each_layer_for_its_own_forward_only(pipe, monkeypatch):
    where = _fake_placement(monkeypatch)
    models = pipe._offload_models()
    reference = _run(pipe, 2, output_type="latent").frames
    pipe.enable_sequential_cpu_offload(device="cpu", offload_device="meta")
    owners = [m for model in models.values() for m in model.modules()
              if any(t is not None for t in (*m._parameters.values(), *m._buffers.values()))]
    checked, most_on = [], [0]

    def check(module, args):
        checked.append(where[id(module)] == "cpu")
        most_on[0] = max(most_on[0], sum(where[id(m)] == "cpu" for m in owners))

    handles = [m.register_forward_pre_hook(check) for m in owners]
    try:
        out = _run(pipe, 2, output_type="latent")
    finally:
        for h in handles:
            h.remove()
        pipe.disable_cpu_offload()
    assert len(checked) > 100 and all(checked)  # every layer on the device when it runs
    assert most_on[0] <= 6  # a layer and the few modules it runs inside, never a whole model
    assert all(where[id(m)] == "meta" for m in owners)
    assert torch.equal(out.frames, reference)


def test_memory_modes_set_their_switches_and_give_the_same_latents(pipe):
    from cvd.pipeline import MEMORY_MODES

    K, c2w = _cams(4)
    args = {"num_inference_steps": 1, "height": SIZE, "width": SIZE, "seed": 0, "pairing": "partition",
            "output_type": "latent"}
    outs = {}
    try:
        for mode in ("fast", "balanced", "low"):
            pipe.set_memory_mode(mode, device="cpu")
            assert pipe.memory_mode == mode and pipe._vae_slicing == MEMORY_MODES[mode]["vae_slicing"]
            assert pipe.vae.use_tiling == MEMORY_MODES[mode]["vae_tiling"]
            assert type(pipe._offload).__name__ == {"fast": "NoneType", "balanced": "ModelOffload",
                                                    "low": "SequentialOffload"}[mode]
            outs[mode] = pipe(PROMPT, c2w, K, **args)
    finally:
        pipe.set_memory_mode("fast", device="cpu")
    assert outs["fast"].stats.max_rows_per_call == 8 and outs["low"].stats.max_rows_per_call == 4
    for mode in ("balanced", "low"):
        assert (outs[mode].frames - outs["fast"].frames).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="memory mode"):
        pipe.set_memory_mode("tiny")


def test_vae_tiling_above_the_tile_size_stays_close():
    """The committed tiny-trained VAE (a trained decoder) on 192² frames, 2x2 tiles of its 96 px sample size:
    tiled decoding stays within mean |diff| 0.05 and 99th percentile 0.2 of the untiled decoding ([0, 1]
    frames; measured 0.032 / 0.15). One frame per VAE call (slicing) is exact."""
    from pathlib import Path

    from cvd.model import CVDModel

    model = CVDModel.from_pretrained(Path(__file__).parents[1] / "models" / "tiny-trained")
    p = CVDPipeline.from_model(model)
    assert model.vae.tile_sample_min_size == 96
    H = 192
    y, x = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, H), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(6 * x + 2 * y), 0.5 + 0.3 * torch.cos(5 * y), x * y], -1)
    img[60:120, 40:150] = torch.tensor([0.8, 0.2, 0.1])
    z = p.encode_frames(img[None].expand(2, H, H, 3).clone(), torch.device("cpu"))[None]  # [1, C, F, h, w]
    full = p.decode_latents(z)
    p.enable_vae_slicing()
    assert torch.allclose(p.decode_latents(z), full, atol=1e-5)
    p.enable_vae_tiling()
    tiled = p.decode_latents(z)
    diff = (tiled - full).abs()
    assert diff.mean() <= 0.05 and diff.flatten().quantile(0.99) <= 0.2, (diff.mean(), diff.flatten().quantile(0.99))
    assert diff.max() > 1e-3  # the tiled path did run


@pytest.mark.slow
def test_peak_memory_estimate_against_process_memory_on_the_cpu():
    """The estimator against the resident memory one sampling call adds (fresh process, tiny model, 4 videos x 8
    frames at 128², 8 rows per call): within -25 % / +35 % (benchmarks/bench_memory.py measures more cases)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_memory.py"
    spec = importlib.util.spec_from_file_location("bench_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure_in_subprocess({"config": "tiny", "videos": 4, "frames": 8, "size": 128})
    assert r["rows"] == 8 and r["measured_mib"] > 50
    assert 0.75 <= r["estimated_mib"] / r["measured_mib"] <= 1.35, r


def test_peak_memory_estimate_orders_the_modes(pipe):
    est = {m: pipe.estimate_peak_memory(num_videos=6, num_frames=8, height=128, width=128, mode=m, device_type="cuda")
           for m in ("fast", "balanced", "low")}
    assert [est[m].rows_per_call for m in ("fast", "balanced", "low")] == [12, 8, 4]
    assert est["fast"].peak > est["balanced"].peak > est["low"].peak
    assert est["low"].weights < est["balanced"].weights < est["fast"].weights


def test_generate_stage_memory_modes(tmp_path, capsys):
    """``generate.memory=low`` runs the stage with one pair per UNet call and offload, and makes the same frames
    as ``fast`` (PNG levels); a bad mode is refused naming the key."""
    from PIL import Image

    from cvd_scene.cli import main

    reports, frames = {}, {}
    for mode in ("fast", "low"):
        run_dir, _ = _planned_run(tmp_path / mode)
        rc = main(["generate", str(run_dir), "--quiet", "--generator", "cvd", "--model", "tiny", "generate.steps=2",
                   f"generate.memory={mode}"])
        assert rc == 0
        reports[mode] = json.loads((run_dir / "generate" / "report.json").read_text())
        frames[mode] = np.stack([np.asarray(Image.open(p)) for p in sorted((run_dir / "generate" / "frames").rglob("*.png"))])
    assert reports["low"]["memory_mode"] == "low" and reports["fast"]["memory_mode"] == "fast"
    assert reports["low"]["max_rows_per_call"] == 4 < reports["fast"]["max_rows_per_call"]
    assert np.abs(frames["low"].astype(int) - frames["fast"].astype(int)).max() <= 1
    run_dir, _ = _planned_run(tmp_path / "bad")
    assert main(["generate", str(run_dir), "--quiet", "--generator", "cvd", "--model", "tiny", "generate.memory=huge"]) == 2
    assert "memory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- one home


def test_release_defaults_and_peak_memory_are_spelled_once():
    """The release's negative prompt, the 8.5/14 guidance rule and the peak-memory measurement live in
    ``cvd/defaults.py`` alone; the pipeline and the generate stage (config and report) take them from there."""
    from pathlib import Path

    from cvd.defaults import DEFAULT_NEGATIVE_PROMPT, default_guidance_scale, peak_memory_mb
    from cvd_scene.generate.config import GenerateConfig

    root = Path(__file__).resolve().parents[1]
    home = root / "cvd" / "defaults.py"
    spellings = ("worst quality", "8.5 if", "14.0 if", "ru_maxrss", "max_memory_allocated", "reset_peak_memory_stats")
    found = [
        f"{path.relative_to(root)}: {word}"
        for pkg in ("cvd", "cvd_scene", "plugins")
        for path in sorted((root / pkg).rglob("*.py"))
        if path != home
        for word in spellings
        if word in path.read_text(encoding="utf-8")
    ]
    assert not found, found
    assert all(word in home.read_text(encoding="utf-8") for word in spellings[:2] + spellings[3:])
    assert GenerateConfig().negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert [default_guidance_scale(n) for n in (1, 2, 3, 6)] == [8.5, 8.5, 14.0, 14.0]
    mb, kind = peak_memory_mb()
    assert kind == "process-rss" and mb > 1


def test_the_model_and_the_pipeline_share_their_encoders(pipe):
    """``CVDModel.encode_text/encode_cameras`` and the pipeline's ``encode_prompt/encode_cameras`` are one code
    path (``cvd.model.text_embeddings`` and ``camera_features``): equal outputs, float64 cameras included."""
    from cvd.model import CVDModel

    model = CVDModel(
        config=pipe.model_config, unet=pipe.unet, pose_encoder=pipe.pose_encoder, vae=pipe.vae,
        text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler,
    )
    cpu = torch.device("cpu")
    assert torch.equal(pipe.encode_prompt(PROMPT, "blurry", True, cpu), model.encode_text(["blurry", PROMPT]))
    K, c2w = _cams(2)
    poses = model_poses(c2w.double(), 1.0)
    ours = pipe.encode_cameras(K.double(), poses, SIZE, SIZE, cpu)
    theirs = model.encode_cameras(K.double(), poses, SIZE, SIZE)
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
