"""Tests of the fit stage: the rasteriser against its slow references and gsplat's torch projection, the world-frame
round trip of exported Gaussians, the nerfstudio plugin through ``ns-train`` and both methods in reduced
configurations through ``cvd-scene fit`` on a tiny reference run folder (CPU)."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cvd_scene.cameras import axis_angle_to_rotation, invert_rigid, look_at, rotation_to_quaternion
from cvd_scene.fit import raster
from cvd_scene.fit.raster_reference import composite_reference
from cvd_scene.gaussians import Gaussians

sys.path.insert(0, str(Path(__file__).parent))
from fit_helpers import make_run

NS_TRAIN = Path(sys.executable).parent / "ns-train"


def random_scene(n: int, width: int, height: int, seed: int, opacity=(0.05, 0.95), dtype=torch.float64):
    """Gaussians in front of one camera at the origin looking along +z (OpenCV axes)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.6
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.02
    opac = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype)[None]
    Ks = torch.tensor([[[0.9 * width, 0, width / 2], [0, 0.9 * width, height / 2], [0, 0, 1]]], dtype=dtype)
    return means, quats, scales, opac, colors, viewmats, Ks


# ------------------------------------------------------------------------------------------------ raster


@pytest.mark.parametrize(
    "case",
    [
        {"n": 25, "seed": 0, "tile_size": 4, "chunks": (3, 5)},
        {"n": 25, "seed": 1, "tile_size": 8, "chunks": (16,)},
        # Many opaque Gaussians: pixels stop on the transmittance threshold and alphas hit the 0.999 clamp.
        {"n": 40, "seed": 2, "tile_size": 16, "chunks": (4,), "opacity": (0.97, 1.0)},
    ],
)
def test_composite_matches_per_pixel_reference(case):
    W, H = 13, 11
    means, quats, scales, opac, colors, viewmats, Ks = random_scene(
        case["n"], W, H, case["seed"], opacity=case.get("opacity", (0.05, 0.95))
    )
    params = (means, quats, scales, opac, colors)
    for p in params:
        p.requires_grad_(True)
    bg = torch.tensor([[0.2, 0.3, 0.4]], dtype=torch.float64)
    radii, m2, depths, conics = raster.project_gaussians(means, quats, scales, viewmats, Ks, W, H)
    img, alpha = raster.composite(
        m2, conics, colors[None], opac[None], radii, depths, W, H,
        tile_size=case["tile_size"], backgrounds=bg, chunk_sizes=case["chunks"],
    )  # fmt: skip
    ref, ref_alpha = composite_reference(m2[0], conics[0], colors, opac, radii[0], depths[0], W, H, bg[0])
    assert (img[0] - ref).abs().max() < 1e-10
    assert (alpha[0] - ref_alpha).abs().max() < 1e-10
    if case["seed"] == 2:
        assert float(ref_alpha.detach().max()) > 1 - 1e-3, "the opaque case must reach the transmittance threshold"
    w_img = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    w_alpha = torch.randn(ref_alpha.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    fast = torch.autograd.grad((img[0] * w_img).sum() + (alpha[0] * w_alpha).sum(), params, retain_graph=True)
    slow = torch.autograd.grad((ref * w_img).sum() + (ref_alpha * w_alpha).sum(), params)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), fast, slow):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), f"gradient of {name} differs: {(a - b).abs().max()}"


def test_composite_gradient_matches_finite_differences():
    W, H = 9, 7
    means, quats, scales, opac, colors, viewmats, Ks = random_scene(6, W, H, seed=3)
    opac = opac.clone().requires_grad_(True)
    radii, m2, depths, conics = raster.project_gaussians(means, quats, scales, viewmats, Ks, W, H)

    def loss(o):
        img, alpha = raster.composite(m2, conics, colors[None], o[None], radii, depths, W, H, tile_size=4)
        return (img * torch.linspace(0, 1, 3, dtype=torch.float64)).sum() + alpha.sum()

    (grad,) = torch.autograd.grad(loss(opac), opac)
    eps = 1e-6
    for i in range(len(opac)):
        d = torch.zeros_like(opac)
        d[i] = eps
        fd = (loss(opac.detach() + d) - loss(opac.detach() - d)) / (2 * eps)
        assert abs(float(fd) - float(grad[i])) < 1e-5 * max(1.0, abs(float(fd)))


def test_projection_and_sh_match_gsplat_torch_implementation():
    from gsplat.cuda._torch_impl import (
        _fully_fused_projection,
        _quat_scale_to_covar_preci,
        _spherical_harmonics,
    )

    g = torch.Generator().manual_seed(0)
    N, W, H = 400, 64, 48
    means = torch.randn(N, 3, generator=g, dtype=torch.float64) * 1.5
    means[:, 2] += 2.0  # some behind the cameras, some outside the images
    quats = torch.randn(N, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(N, 3, generator=g, dtype=torch.float64) * 0.2 + 0.01
    view = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    view[1, :3, :3] = torch.from_numpy(axis_angle_to_rotation(np.array([0.2, 1.0, 0.1]), 0.3))
    view[1, :3, 3] = torch.tensor([0.3, -0.2, 0.5])
    Ks = torch.tensor([[50.0, 0, 32], [0, 55, 24], [0, 0, 1]], dtype=torch.float64)[None].repeat(2, 1, 1)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    r1, m1, d1, c1, _ = _fully_fused_projection(means, covars, view, Ks, W, H)
    r2, m2, d2, c2 = raster.project_gaussians(means, quats, scales, view, Ks, W, H)
    valid = r1 > 0
    assert 100 < int(valid.sum()) < 2 * N, "the case must cull some Gaussians and keep others"
    assert torch.equal(r1, r2)
    assert torch.allclose(m1[valid], m2[valid], atol=1e-9)
    assert torch.allclose(d1, d2, atol=1e-12)
    assert torch.allclose(c1[valid], c2[valid], rtol=1e-9, atol=1e-9)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    for degree in range(4):
        assert torch.allclose(_spherical_harmonics(degree, dirs, coeffs), raster.eval_sh(degree, dirs, coeffs), atol=1e-12)


def test_rasterize_on_cpu_uses_the_torch_path_and_feeds_gsplat_strategy(monkeypatch):
    import gsplat
    from gsplat.strategy import DefaultStrategy

    def no_cuda(*args, **kwargs):
        raise AssertionError("gsplat.rasterization must not be called with CPU tensors")

    monkeypatch.setattr(gsplat, "rasterization", no_cuda)
    means, quats, scales, opac, colors, viewmats, Ks = random_scene(50, 24, 20, seed=4, dtype=torch.float32)
    params = {
        "means": torch.nn.Parameter(means),
        "scales": torch.nn.Parameter(torch.log(scales)),
        "quats": torch.nn.Parameter(quats),
        "opacities": torch.nn.Parameter(torch.logit(opac)),
    }
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, absgrad=True, grow_grad2d=0.0)
    state = strategy.initialize_state()
    render, alpha, info = raster.rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        colors, viewmats, Ks, 24, 20, render_mode="RGB+ED", absgrad=True,
    )  # fmt: skip
    assert render.shape == (1, 20, 24, 4) and alpha.shape == (1, 20, 24, 1) and info["backend"] == "torch"
    strategy.step_pre_backward(params, optimizers, state, 1, info)
    (render[..., :3].sum() + render[..., 3].mean()).backward()
    assert info["means2d"].grad.shape == (1, 50, 2) and info["means2d"].absgrad.shape == (1, 50, 2)
    visible = info["radii"][0] > 0
    assert torch.all(info["means2d"].absgrad[0][visible].sum(-1) >= info["means2d"].grad[0][visible].norm(dim=-1) - 1e-6)
    strategy.step_post_backward(params, optimizers, state, 1, info)
    assert len(params["means"]) > 50, "every visible Gaussian has a gradient above 0, so some must grow"
    with pytest.raises(ValueError, match="CUDA"):
        raster.rasterize(means, quats, scales, opac, colors, viewmats, Ks, 24, 20, backend="gsplat")


def _strategy_step(strategy, opacities: torch.Tensor, seed: int = 4) -> int:
    """One refinement step of ``strategy`` on 50 Gaussians rendered on the CPU; returns how many remain."""
    means, quats, scales, _, colors, viewmats, Ks = random_scene(50, 24, 20, seed=seed, dtype=torch.float32)
    params = {
        "means": torch.nn.Parameter(means),
        "scales": torch.nn.Parameter(torch.log(scales)),
        "quats": torch.nn.Parameter(quats),
        "opacities": torch.nn.Parameter(torch.logit(opacities)),
    }
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    state = strategy.initialize_state()
    render, _, info = raster.rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        colors, viewmats, Ks, 24, 20, render_mode="RGB+ED", absgrad=True,
    )  # fmt: skip
    strategy.step_pre_backward(params, optimizers, state, 1, info)
    (render[..., :3].sum() + render[..., 3].mean()).backward()
    torch.manual_seed(0)  # splitting samples new positions
    strategy.step_post_backward(params, optimizers, state, 1, info)
    assert all(len(p) == len(params["means"]) for p in params.values())
    assert all(o.param_groups[0]["params"][0] is params[k] for k, o in optimizers.items())
    return len(params["means"])


@pytest.mark.parametrize(("cap", "grows"), [(0, True), (1000, True), (51, True), (50, False), (20, False)])
def test_gaussian_cap_skips_gsplats_grow_step_and_keeps_pruning(cap, grows):
    """The cap as a gsplat strategy: below it the step is gsplat's own DefaultStrategy step (as many Gaussians after it);
    at or above it nothing is duplicated or split, and pruning still removes the transparent ones."""
    from gsplat.strategy import DefaultStrategy

    from cvd_scene.fit.splat_model import CappedDefaultStrategy

    opacities = torch.full((50,), 0.5)
    opacities[:5] = 0.001  # below prune_opa (0.005): pruned at the step
    settings = {"refine_start_iter": 0, "refine_every": 1, "absgrad": True, "grow_grad2d": 0.0, "verbose": False}
    plain = _strategy_step(DefaultStrategy(**settings), opacities)
    capped = _strategy_step(CappedDefaultStrategy(max_gaussians=cap, **settings), opacities)
    assert plain > 50
    assert capped == (plain if grows else 45)


def test_the_fit_config_is_what_the_trainer_config_is_built_from():
    from cvd_scene.fit.config import FitConfig
    from cvd_scene.fit.train import trainer_config

    fit = FitConfig(
        iterations=40, time_budget_s=12.5, eval_every_k=4, device="cpu", sh_degree=2, max_gaussians=1234,
        num_random_points=7, appearance="per-video",
    )  # fmt: skip
    config = trainer_config(Path("run"), Path("out"), fit, seed=3)
    model = config.pipeline.model
    assert (model.sh_degree, model.max_gaussians, model.num_random_points, model.appearance) == (2, 1234, 7, "per-video")
    assert model.max_train_seconds == 12.5 and config.max_num_iterations == config.steps_per_save == 40
    assert config.pipeline.datamanager.dataparser.eval_every_k == 4
    assert config.machine.device_type == "cpu" and config.machine.seed == 3
    assert trainer_config(Path("run"), Path("out"), FitConfig(device="cpu")).pipeline.model.max_train_seconds == 0


def test_expected_depth_of_an_opaque_plane():
    # A wall of flat opaque Gaussians at z = 2: the expected depth is 2 wherever alpha is high.
    xs, ys = torch.meshgrid(torch.linspace(-2.5, 2.5, 41), torch.linspace(-2.5, 2.5, 41), indexing="ij")
    means = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((41 * 41,), 2.0)], -1)
    n = len(means)
    scales = torch.tensor([0.1, 0.1, 0.001]).repeat(n, 1)
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(n, 1)
    Ks = torch.tensor([[[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]]])
    render, alpha, _ = raster.rasterize(
        means, quats, scales, torch.full((n,), 0.9), torch.rand(n, 3), torch.eye(4)[None], Ks, 32, 32,
        render_mode="RGB+ED",
    )  # fmt: skip
    solid = alpha[0, ..., 0] > 0.99
    assert solid.float().mean() > 0.9
    assert torch.allclose(render[0, ..., 3][solid], torch.tensor(2.0), atol=1e-3)


# --------------------------------------------------------------------------------------- world frame


def test_exported_gaussians_land_back_in_the_world():
    from cvd_scene.fit.frames import gaussians_to_world, nerfstudio_frame, quat_multiply

    frame = nerfstudio_frame(np.array([0.3, 1.4, -0.2]), radius_m=2.5)
    # A known Gaussian in the run's world: 1.2 m in front of a camera, elongated along world x.
    world = Gaussians(
        means=np.array([[0.5, 1.2, -1.4]]),
        log_scales=np.log([[0.2, 0.05, 0.01]]),
        quats_wxyz=rotation_to_quaternion(axis_angle_to_rotation(np.array([0.0, 1.0, 0.0]), 0.4))[None],
        opacity_logits=np.array([2.0]),
        sh_dc=np.array([[0.5, -0.2, 0.1]]),
        sh_rest=np.random.default_rng(0).normal(size=(1, 3, 3)) * 0.3,
    )
    # What the dataparser hands the model for it: the same Gaussian in the nerfstudio frame.
    q_frame = rotation_to_quaternion(frame.rotation)
    from cvd_scene.fit.frames import rotate_sh_rest

    fitted = Gaussians(
        means=frame.points_to_ns(world.means),
        log_scales=world.log_scales + np.log(frame.scale),
        quats_wxyz=quat_multiply(q_frame[None], world.quats_wxyz),
        opacity_logits=world.opacity_logits,
        sh_dc=world.sh_dc,
        sh_rest=rotate_sh_rest(world.sh_rest, frame.rotation.T),
    )
    back = gaussians_to_world(fitted, frame)
    assert np.allclose(back.means, world.means, atol=1e-6)
    assert np.allclose(back.log_scales, world.log_scales, atol=1e-6)
    q, q0 = back.quats_wxyz / np.linalg.norm(back.quats_wxyz), world.quats_wxyz
    assert min(np.abs(q - q0).max(), np.abs(q + q0).max()) < 1e-6
    assert np.allclose(back.sh_rest, world.sh_rest, atol=1e-5)

    # Rendered from a registered camera, the exported Gaussian looks as the fitted one does from the same camera.
    c2w = look_at(np.array([0.2, 1.3, 0.2]), world.means[0])
    K = torch.tensor([[[40.0, 0, 24], [0, 40.0, 24], [0, 0, 1]]], dtype=torch.float64)

    def render(g: Gaussians, viewmat: np.ndarray):
        coeffs = torch.from_numpy(np.concatenate([g.sh_dc[:, None], g.sh_rest], 1))
        img, alpha, _ = raster.rasterize(
            torch.from_numpy(g.means).double(), torch.from_numpy(g.quats_wxyz).double(),
            torch.from_numpy(np.exp(g.log_scales)).double(), torch.from_numpy(g.opacities).double(), coeffs.double(),
            torch.from_numpy(viewmat)[None], K, 48, 48, sh_degree=1, render_mode="RGB+ED",
        )  # fmt: skip
        return img[0], alpha[0]

    img_world, a_world = render(back, invert_rigid(c2w))
    img_ns, _ = render(fitted, frame.viewmats(c2w))
    assert float(a_world.max()) > 0.5
    assert torch.allclose(img_world[..., :3], img_ns[..., :3], atol=1e-6)
    # Expected depth: metres in the world, metres x scale in the nerfstudio frame.
    solid = a_world[..., 0] > 0.5
    assert torch.allclose(img_world[..., 3][solid] * frame.scale, img_ns[..., 3][solid], rtol=1e-6)


# ------------------------------------------------------------------------------------------ nerfstudio


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    make_run(run_dir, num_videos=2, num_frames=6, size=32, points_per_frame=60)
    return run_dir


def _ns_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=os.environ.get("TORCH_HOME", str(Path.home() / ".cache/torch")))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.mark.slow  # ns-train imports every method (18 s); test_ns_train_cvd_scene_on_cpu runs the real entry point
def test_ns_train_lists_both_methods():
    out = subprocess.run([str(NS_TRAIN), "--help"], check=False, capture_output=True, text=True, timeout=300, env=_ns_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cvd-scene-nerf" in out.stdout and "{cvd-scene," in out.stdout.replace(" ", "")


def ns_train_config(method: str, *args: str):
    """The trainer config ``ns-train METHOD ARGS`` trains with: tyro over the plugin's method specification (what
    nerfstudio's ``tyro.cli`` does for the chosen subcommand)."""
    import tyro
    from cvd_scene_plugins.methods import cvd_scene_method, cvd_scene_nerf_method

    spec = {"cvd-scene": cvd_scene_method, "cvd-scene-nerf": cvd_scene_nerf_method}[method].config
    return tyro.cli(type(spec), default=spec, args=list(args))


SCHEDULE_CASES = [("cvd-scene", 3000), ("cvd-scene", 1000), ("cvd-scene", 7), ("cvd-scene-nerf", 5000), ("cvd-scene-nerf", 1000)]


@pytest.mark.parametrize(("method", "iterations"), SCHEDULE_CASES)
def test_ns_train_and_cvd_scene_fit_train_with_the_same_schedule(method, iterations):
    """``ns-train METHOD --max-num-iterations N`` and ``cvd-scene fit fit.iterations=N``: the same model config and
    the same optimizers and learning-rate schedules, for the default count and others."""
    from cvd_scene.fit.config import FitConfig
    from cvd_scene.fit.train import trainer_config

    ns = ns_train_config(method, "--max-num-iterations", str(iterations))
    ours = trainer_config(Path("run"), Path("out"), FitConfig(method=method, iterations=iterations, device="cpu"))
    assert ns.max_num_iterations == ours.max_num_iterations == iterations
    assert ns.optimizers == ours.optimizers
    for k in ("means", "camera_opt") if method == "cvd-scene" else ("fields", "proposal_networks"):
        assert ns.optimizers[k]["scheduler"].max_steps == iterations
    if method == "cvd-scene-nerf":  # nerfacto's own schedule, unscaled (the CPU fit only shrinks its fields)
        for k in ("proposal_warmup", "proposal_update_every", "proposal_weights_anneal_max_num_iters"):
            assert getattr(ns.pipeline.model, k) == getattr(ours.pipeline.model, k)
    else:
        assert ns.pipeline.model == ours.pipeline.model
        fields = {k: getattr(ns.pipeline.model, k) for k in ns.pipeline.model.SCHEDULE_FIELDS}
        written_for_3000 = {"warmup_length": 300, "stop_split_at": 2500, "stop_screen_size_at": 0,
                            "resolution_schedule": 600, "sh_degree_interval": 1000}  # fmt: skip
        assert fields == {k: max(1 if k in ("resolution_schedule", "sh_degree_interval") else 0, v * iterations // 3000)
                          for k, v in written_for_3000.items()}  # fmt: skip


def test_a_schedule_given_in_steps_of_the_fit_is_kept():
    """``--schedule-iterations N`` with ``--max-num-iterations N``: the model's step counts are taken as given."""
    ns = ns_train_config("cvd-scene", "--max-num-iterations", "1000", "--schedule-iterations", "1000",
                         "--pipeline.model.warmup-length", "50")  # fmt: skip
    assert ns.pipeline.model.warmup_length == 50 and ns.pipeline.model.stop_split_at == 2500
    scaled = ns_train_config("cvd-scene", "--max-num-iterations", "1000", "--pipeline.model.warmup-length", "60")
    assert scaled.pipeline.model.warmup_length == 20 and scaled.schedule_iterations == 1000


def test_ns_train_cvd_scene_on_cpu(tiny_run, tmp_path):
    cmd = [
        str(NS_TRAIN), "cvd-scene", "--machine.device-type", "cpu", "--data", str(tiny_run),
        "--max-num-iterations", "3", "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
        "--output-dir", str(tmp_path), "--timestamp", "t",
    ]  # fmt: skip
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=_ns_env(), cwd=tmp_path)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    base = tmp_path / "run" / "cvd-scene" / "t"
    assert (base / "config.yml").is_file()
    assert list((base / "nerfstudio_models").glob("step-*.ckpt"))
    ckpt = next((base / "nerfstudio_models").glob("step-*.ckpt"))
    assert torch.load(ckpt, map_location="cpu")["step"] == 2  # torch's weights_only default, as ns-viewer loads it
    doc = json.loads((base / "dataparser_transforms.json").read_text())
    assert np.asarray(doc["transform"]).shape == (3, 4) and doc["scale"] > 0
    # ns-train trained with the schedules `cvd-scene fit fit.iterations=3` trains with (scaled from 3000 steps).
    from cvd_scene.fit.config import FitConfig
    from cvd_scene.fit.train import trainer_config

    saved = yaml.load((base / "config.yml").read_text(), Loader=yaml.Loader)
    ours = trainer_config(tiny_run, tmp_path, FitConfig(iterations=3, device="cpu"))
    assert saved.pipeline.model == ours.pipeline.model and saved.optimizers == ours.optimizers
    assert saved.pipeline.model.stop_split_at == 2 and saved.optimizers["means"]["scheduler"].max_steps == 3


def test_fit_command_both_methods_reduced(tiny_run, tmp_path, monkeypatch):
    from cvd_scene import cli
    from cvd_scene.export.ply import read_ply
    from cvd_scene.fit import train

    make_config = train.trainer_config  # the methods' tiny configurations
    monkeypatch.setattr(train, "trainer_config", functools.partial(make_config, reduced=True))
    for method in ("cvd-scene", "cvd-scene-nerf"):
        run_dir = tmp_path / method
        shutil.copytree(tiny_run, run_dir)
        rc = cli.main(["fit", str(run_dir), "--method", method, "--iterations", "2", "--quiet", "fit.eval_every_k=3"])
        assert rc == 0
        fit = run_dir / "fit"
        metrics = json.loads((fit / "metrics.json").read_text())
        assert metrics["method"] == method and metrics["iterations"] == 2 and metrics["device"] == "cpu"
        assert metrics["heldout_frames"] == 4 and math.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
        assert "depth_abs_error_m" in metrics  # the reference generator's ground-truth depth exists
        assert len(list((fit / "eval").glob("v0?_000[25]_gt.png"))) == len(list((fit / "eval").glob("*_pred.png"))) == 4
        assert len(list((fit / "views" / "rgb").rglob("*.png"))) == 12
        depth = np.load(fit / "views" / "depth" / "v00" / "0000.npy")
        assert depth.shape == (32, 32) and depth.dtype == np.float32 and np.all(depth >= 0)
        config_yml = next(fit.rglob("config.yml"))
        saved = yaml.load(config_yml.read_text(), Loader=yaml.Loader)  # nerfstudio's own format
        assert Path(saved.output_dir) == fit.resolve(), "config.yml must point at the final fit folder"
        assert Path(saved.get_base_dir()) == config_yml.parent.resolve()
        assert list(fit.rglob("step-*.ckpt")) and list(fit.rglob("dataparser_transforms.json"))
        # What ns-viewer / ns-render / ns-eval do with it (checkpoints load under torch's weights_only default).
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, step = eval_setup(config_yml, test_mode="inference")
        assert step == 1 and type(pipeline.model).__name__ == ("CvdSplatModel" if method == "cvd-scene" else "CvdNerfModel")
        record = json.loads((run_dir / "run.json").read_text())["stages"]["fit"]
        assert record["status"] == "finished" and record["summary"]["method"] == method
        if method == "cvd-scene":
            splats = read_ply(fit / "gaussians.ply")
            assert len(splats) == metrics["gaussians"] > 0
            # World frame: the splats sit inside the reference room (metres, floor at y = 0).
            centre = np.median(splats.means, axis=0)
            assert -0.5 < centre[1] < 3.0 and np.all(np.abs(centre[[0, 2]]) < 4.0)
        else:
            assert not (fit / "gaussians.ply").exists()


def test_fit_refuses_a_failed_registration(tmp_path, capsys):
    # The real register stage on 32 px frames: too few SIFT features, so the registration fails.
    from cvd_scene import cli
    from cvd_scene.config import from_dict
    from cvd_scene.fit.run import run_fit
    from cvd_scene.orchestrate import run_stages
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import StageRefused

    run_dir = tmp_path / "run"
    config = from_dict(RunConfig, {"plan": {"num_videos": 2, "num_frames": 3, "width": 32, "height": 32},
                                   "generate": {"samples_per_pixel": 1}})  # fmt: skip
    results = run_stages(run_dir, config, ["plan", "generate", "register"])
    assert results["register"].status == "failed"
    reason = results["register"].message
    with pytest.raises(StageRefused, match="registration.*failed") as refused:
        run_fit(config, run_dir, tmp_path / "out")
    assert reason in str(refused.value)
    assert cli.main(["fit", str(run_dir), "--quiet"]) == 2
    assert "register" in capsys.readouterr().err
    assert not (run_dir / "fit").exists()
