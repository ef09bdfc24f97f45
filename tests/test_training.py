"""The trainer and its data: folding, homography pairs, masked loss, the clip cache, the word tokenizer, the
toy measure, and training itself (loss goes down, only the configured parameters move, resume continues the same
curve bit for bit) -- tiny model, small images, CPU."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cvd.geometry import EpipolarBiasConfig, homography_bias
from cvd.model import CVDModel
from cvd.training.cache import Clip, ClipCache, write_clip_cache
from cvd.training.config import (
    AutoencoderSection,
    DataSection,
    EvalSection,
    HomographyWarpConfig,
    ModelSection,
    OptimSection,
    TrainConfig,
)
from cvd.training.datasets import (
    CachedPairs,
    CachedVideos,
    HomographyPairs,
    MixedPairs,
    PairStream,
    Re10kPairs,
    collate_pairs,
)
from cvd.training.homography import (
    homography_sequence,
    min_pool_mask,
    sample_params,
    warp_frames,
    warp_frames_reference,
)
from cvd.training.metrics import psnr, ssim
from cvd.training.samples import PairSample, flip_pair, fold_clip
from cvd.training.sampling import PairCameras, encode_frames, sample_pair, toy_consistency
from cvd.training.tokenizer import build_word_tokenizer, caption_words
from cvd.training.trainer import Trainer, loss_of_batch, masked_mse
from tests.cvd_testing import randomize_, tiny_config

torch.set_num_threads(1)
SIZE = 32
FRAMES = 4


# ------------------------------------------------------------------------------------------------ data


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:  # OpenCV world_from_cam, +y up world
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = eye
    return T


def _synthetic_clips(n: int, seed: int = 0, size: int = SIZE, frames: int = FRAMES, videos: int = 2) -> list[Clip]:
    """Clips of smooth random colour fields with cameras leaving one common start (no renderer needed)."""
    rng = np.random.default_rng(seed)
    out = []
    f = size * 0.9
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    for i in range(n):
        base = rng.uniform(0, 255, (videos, frames, 4, 4, 3))
        img = torch.nn.functional.interpolate(torch.tensor(base).reshape(-1, 4, 4, 3).permute(0, 3, 1, 2),
                                              size=(size, size), mode="bicubic", align_corners=False)
        img = img.clamp(0, 255).round().byte().permute(0, 2, 3, 1).reshape(videos, frames, size, size, 3).numpy()
        c2w = np.zeros((videos, frames, 4, 4))
        for v in range(videos):
            for k in range(frames):
                a = 2 * math.pi * v / videos
                eye = np.array([0.3 * k / frames * math.cos(a), 1.5, 0.3 * k / frames * math.sin(a)])
                c2w[v, k] = _look_at(eye, eye + np.array([math.sin(a) * 0.2, 0.0, -1.0]))
        out.append(Clip(frames=img, world_from_cam=c2w, K=np.broadcast_to(K, (videos, frames, 3, 3)).copy(),
                        caption=f"a {['red', 'blue'][i % 2]} room with {['two boxes', 'a ball'][i % 2]}"))
    return out


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> Path:
    return write_clip_cache(tmp_path_factory.mktemp("cache") / "train.npz", _synthetic_clips(3), codec="raw")


@pytest.fixture(scope="module")
def held_out_path(tmp_path_factory) -> Path:
    return write_clip_cache(tmp_path_factory.mktemp("held") / "held.npz", _synthetic_clips(2, seed=9), codec="raw")


def test_cache_round_trips_raw_exactly_and_jpeg_closely(tmp_path):
    clips = _synthetic_clips(2)
    raw = ClipCache(write_clip_cache(tmp_path / "raw.npz", clips, codec="raw", meta={"note": "x"}))
    jpg = ClipCache(write_clip_cache(tmp_path / "jpg.npz", clips, codec="jpeg", jpeg_quality=95))
    assert (raw.num_clips, raw.num_videos, raw.num_frames, raw.height, raw.width) == (2, 2, FRAMES, SIZE, SIZE)
    assert raw.meta["note"] == "x" and raw.captions == [c.caption for c in clips]
    for i, c in enumerate(clips):
        back = raw.clip(i)
        assert np.array_equal(back.frames, c.frames)
        assert np.array_equal(back.world_from_cam, c.world_from_cam) and np.array_equal(back.K, c.K)
        a = torch.from_numpy(jpg.clip(i).frames.reshape(-1, SIZE, SIZE, 3)).permute(0, 3, 1, 2) / 255.0
        b = torch.from_numpy(c.frames.reshape(-1, SIZE, SIZE, 3)).permute(0, 3, 1, 2) / 255.0
        assert psnr(a, b).min() > 35.0
    assert (tmp_path / "jpg.npz").stat().st_size < (tmp_path / "raw.npz").stat().st_size
    with pytest.raises(ValueError, match="clip 1 has frames"):
        write_clip_cache(tmp_path / "bad.npz", [clips[0], dataclasses.replace(clips[1], frames=clips[1].frames[:, :2])])


def test_fold_clip_shares_the_middle_frame_and_makes_it_the_origin():
    n = 7
    frames = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    c2w = np.stack([_look_at(np.array([0.1 * k, 1.0, 0.0]), np.array([0.1 * k, 1.0, -1.0])) for k in range(n)])
    K = np.broadcast_to(np.eye(3), (n, 3, 3))
    f2, p2, _ = fold_clip(frames, c2w, K)
    assert f2.shape == (2, 4, 2, 2, 3)
    assert f2[0, :, 0, 0, 0].tolist() == [3, 2, 1, 0] and f2[1, :, 0, 0, 0].tolist() == [3, 4, 5, 6]
    assert np.allclose(p2[:, 0], np.eye(4))
    assert np.allclose(p2[1, 3][:3, 3], [0.3, 0.0, 0.0]) and np.allclose(p2[0, 3][:3, 3], [-0.3, 0.0, 0.0])
    with pytest.raises(ValueError, match="odd number"):
        fold_clip(frames[:6], c2w[:6], K[:6])


def _write_re10k(folder: Path, frames: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> None:
    """A RealEstate10K-style clip: pose file (normalised intrinsics, world-to-camera rows) + a frames folder."""
    from PIL import Image

    folder.mkdir(parents=True)
    h, w = frames.shape[1:3]
    lines = ["https://example.invalid/clip"]
    for k in range(len(frames)):
        w2c = np.linalg.inv(c2w[k])[:3].reshape(-1)
        intr = [K[k, 0, 0] / w, K[k, 1, 1] / h, K[k, 0, 2] / w, K[k, 1, 2] / h]
        lines.append(" ".join(str(v) for v in [1000 * k, *intr, 0, 0, *w2c]))
    (folder / "clip0.txt").write_text("\n".join(lines) + "\n")
    (folder / "clip0").mkdir()
    for k, img in enumerate(frames):
        Image.fromarray(img).save(folder / "clip0" / f"{k:05d}.png")


def test_folding_31_rendered_frames_gives_pairs_the_renderer_agrees_with(tmp_path):
    """A 31-frame clip of a reference scene (56x40, RealEstate10K layout) read back as a folded 16+16 pair at
    32x32: both videos start at the middle frame, and re-rendering the scene with the pair's cameras (short side
    resized, centre-cropped, intrinsics adjusted) reproduces its frames; the uncropped intrinsics do not."""
    pytest.importorskip("open3d")
    from cvd_scene.cameras import Cameras
    from cvd_scene.reference import build_scene, render
    from cvd_scene.train.data import random_plan

    scene = build_scene("a red room with two boxes", 3, kind="room", moving_objects=0, texels_per_m=40.0)
    cams = random_plan("room", np.random.default_rng(2), 1, 31, 40, 56)
    src = (np.clip(render(scene, cams, samples_per_pixel=4, progress=False).rgb[0], 0, 1) * 255 + 0.5).astype(np.uint8)
    _write_re10k(tmp_path / "re10k", src, cams.world_from_cam[0], cams.K[0])
    data = Re10kPairs(tmp_path / "re10k", 16, 32, 32)
    pair = data.load_pair(0, 0)
    assert pair.frames.shape == (2, 16, 32, 32, 3)
    assert np.array_equal(pair.frames[0, 0], pair.frames[1, 0])
    assert np.allclose(pair.world_from_cam[:, 0], np.eye(4), atol=1e-6)
    world = cams.world_from_cam[0, 15] @ pair.world_from_cam  # back into the scene's world
    direct = render(scene, Cameras(world_from_cam=world, K=pair.K, width=32, height=32), samples_per_pixel=8,
                    progress=False).rgb
    got = torch.from_numpy(pair.frames.reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2) / 255.0
    ref = torch.from_numpy(direct.reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2).float()
    good = float(psnr(got, ref).mean())
    K_uncropped = pair.K.copy()
    K_uncropped[..., 0, 2] += 6.5  # what forgetting the crop offset would give (45 px wide -> 32 crop)
    wrong = render(scene, Cameras(world_from_cam=world, K=K_uncropped, width=32, height=32), samples_per_pixel=8,
                   progress=False).rgb
    bad = float(psnr(got, torch.from_numpy(wrong.reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2).float()).mean())
    assert good > 22.0 and good > bad + 3.0, (good, bad)
    # A middle frame index: video A frame k is the clip's frame 15-k, video B's frame 15+k.
    assert np.allclose(world[0, 5], cams.world_from_cam[0, 10], atol=1e-6)
    assert np.allclose(world[1, 5], cams.world_from_cam[0, 20], atol=1e-6)


def test_monocular_videos_read_mp4_files_and_frame_folders(tmp_path):
    import imageio
    from PIL import Image

    from cvd.training.datasets import MonocularVideos

    frames = _synthetic_clips(1, size=48, frames=10, videos=1)[0].frames[0]  # [10, 48, 48, 3]
    (tmp_path / "v" / "folder").mkdir(parents=True)
    writer = imageio.get_writer(tmp_path / "v" / "clip.mp4", fps=8)
    for f in frames:
        writer.append_data(f)
    writer.close()
    (tmp_path / "v" / "clip.txt").write_text("a smooth colour field\n")
    for i, f in enumerate(frames[:8]):
        Image.fromarray(f).save(tmp_path / "v" / "folder" / f"{i}.png")
    videos = MonocularVideos(tmp_path / "v", 6, 32, 40, frame_stride=1)
    assert sorted(name for name, _, _ in videos.items) == ["clip", "folder"]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(8):
        v, caption, _ = videos.video(rng)
        assert v.shape == (6, 32, 40, 3) and v.dtype == np.uint8
        seen.add(caption)
    assert seen == {"a smooth colour field", ""}
    long = MonocularVideos(tmp_path / "v", 50, 32, 32)  # the folder is too short to list, the mp4 is read first
    with pytest.raises(ValueError, match="clip.mp4: 10 frames, need 50"):
        long.video(np.random.default_rng(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos"):
        MonocularVideos(tmp_path / "empty", 6, 32, 32)


def test_warp_matches_the_per_pixel_reference():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 12, 10, generator=g)
    params = sample_params(np.random.default_rng(1), HomographyWarpConfig(perspective_max=0.3))
    H = torch.from_numpy(homography_sequence(params, 2, 12, 10))
    fast, valid = warp_frames(frames, H)
    slow, valid_ref = warp_frames_reference(frames, H)
    assert torch.equal(valid, valid_ref)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast[0], frames[0], atol=1e-6) and bool(valid[0].all())  # frame 0: the identity


class _Textured:
    """A video source of smooth random textures (bilinear-friendly)."""

    def __init__(self, n: int = 4, size: int = 48) -> None:
        self.clips = _synthetic_clips(1, seed=3, size=size, frames=n, videos=1)

    def captions(self):
        return ["a textured wall"]

    def video(self, rng):
        return self.clips[0].frames[0], "a textured wall", "tex"


def test_homography_pseudo_epipolar_lines_pass_through_the_warped_pixel():
    warp = HomographyWarpConfig(translation_max_frac=0.1, rotation_max_deg=15, scale_max=0.2, shear_max=0.1,
                                perspective_max=0.2)
    pair = HomographyPairs(_Textured(), warp).draw(np.random.default_rng(5))
    assert pair.kind == "homography" and pair.valid is not None and pair.valid[0].all()
    assert np.allclose(pair.homography[0, 0], np.eye(3)) and np.allclose(pair.homography[1] @ pair.homography[0],
                                                                           np.eye(3), atol=1e-9)
    f = pair.num_frames - 1
    H = pair.homography[0, f]  # A pixels -> B pixels
    a, b = pair.frames[0, f].astype(np.float64), pair.frames[1, f].astype(np.float64)
    # 1. The copy shows at H p what A shows at p (token centres well inside both images).
    grid = 12
    cell = 48 / grid
    checked = 0
    for i in range(2, grid - 2):
        for j in range(2, grid - 2):
            p = np.array([(j + 0.5) * cell, (i + 0.5) * cell, 1.0])
            q = H @ p
            q = q[:2] / q[2]
            if not (4 <= q[0] <= 44 and 4 <= q[1] <= 44):
                continue
            u, v = int(q[0]), int(q[1])  # the pixel containing H p
            near = b[v - 1 : v + 2, u - 1 : u + 2].reshape(-1, 3)
            assert np.abs(near - a[int(p[1]), int(p[0])]).sum(1).min() < 24, (p, q)
            checked += 1
    assert checked > 20
    # 2. The bias lets query p attend to the key token that contains H p (binary band: zero there).
    bias = homography_bias(torch.from_numpy(H), (grid, grid), (48, 48), EpipolarBiasConfig(mode="binary"),
                           line_angle_rad=0.7)  # [Q, K]
    for i in range(2, grid - 2):
        for j in range(2, grid - 2):
            p = np.array([(j + 0.5) * cell, (i + 0.5) * cell, 1.0])
            q = H @ p
            q = q[:2] / q[2]
            if not (0 <= q[0] < 48 and 0 <= q[1] < 48):
                continue
            key = int(q[1] // cell) * grid + int(q[0] // cell)
            assert float(bias[i * grid + j, key]) == 0.0
            assert float(bias[i * grid + j].min()) < 0.0  # and it is a constraint, not everything


def test_min_pool_and_masked_loss_ignore_pixels_outside_the_warp():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(2, 3, 16, 24, generator=g) > 0.1
    pooled = min_pool_mask(valid, 8)
    ref = torch.tensor([[[[bool(valid[n, f, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].all()) for j in range(3)]
                          for i in range(2)] for f in range(3)] for n in range(2)])
    assert torch.equal(pooled, ref)
    valid[:, :, :, :8] = True  # some cells valid for sure
    mask = min_pool_mask(valid, 8)[:, None].float()  # [N, 1, F, h, w]
    pred = torch.randn(2, 4, 3, 2, 3, generator=g)
    target = torch.randn(2, 4, 3, 2, 3, generator=g)
    loss = masked_mse(pred, target, mask)
    changed = pred + 100.0 * (1 - mask)  # garbage only where the warped copy has no pixels
    assert torch.equal(masked_mse(changed, target, mask), loss)
    assert not torch.equal(masked_mse(pred + 0.1 * mask, target, mask), loss)
    assert torch.allclose(masked_mse(pred, target, torch.ones_like(mask)), ((pred - target) ** 2).mean())


def test_flip_keeps_every_correspondence():
    clip = _synthetic_clips(1)[0]
    pair = PairSample(frames=clip.frames, caption="", kind="posed", K=clip.K, world_from_cam=clip.world_from_cam)
    flipped = flip_pair(pair)
    X = np.array([0.3, 1.2, -2.0, 1.0])  # a world point in front of the cameras
    for v in range(2):
        for k in range(FRAMES):
            def proj(K, c2w, X):
                x = K @ (np.linalg.inv(c2w) @ X)[:3]
                return x[:2] / x[2]

            x = proj(pair.K[v, k], pair.world_from_cam[v, k], X)
            xf = proj(flipped.K[v, k], flipped.world_from_cam[v, k], np.diag([-1, 1, 1, 1.0]) @ X)
            assert np.allclose(xf, [SIZE - x[0], x[1]])
            assert np.isclose(np.linalg.det(flipped.world_from_cam[v, k][:3, :3]), 1.0)
    assert np.array_equal(flipped.frames[..., ::-1, :], pair.frames)


def test_mixing_sampler_ratio_and_stream_determinism(cache_path):
    cache = ClipCache(cache_path)
    mixed = MixedPairs([(CachedPairs(cache, FRAMES, SIZE, SIZE), 1.0)],
                       [(HomographyPairs(CachedVideos(cache, FRAMES, SIZE, SIZE), HomographyWarpConfig()), 1.0)],
                       posed_fraction=0.7)
    kinds = [mixed.pick(np.random.default_rng([0, s]))[0] for s in range(2000)]
    assert abs(kinds.count("posed") / 2000 - 0.7) < 0.04
    a = PairStream(mixed, batch_pairs=2, seed=3).batch(17)
    b = PairStream(mixed, batch_pairs=2, seed=3, start_step=10).batch(17)
    assert a["kind"] == b["kind"] and torch.equal(a["frames"], b["frames"])
    assert a["frames"].shape == (2, 2, FRAMES, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="one kind"):
        pair = CachedPairs(cache, FRAMES, SIZE, SIZE).pair(0, 0, 1)
        hom = HomographyPairs(CachedVideos(cache, FRAMES, SIZE, SIZE), HomographyWarpConfig()).draw(np.random.default_rng(0))
        collate_pairs([pair, hom])


def test_word_tokenizer_gives_each_caption_word_one_token_and_saves_with_the_model(tmp_path):
    caps = ["a red room with a bed, a shelf, two paintings and a rug", "a courtyard with three benches",
            "a moon on 3 tables", "a tabletop with a cup and a bowl"]
    tok = build_word_tokenizer(caps, max_length=24)
    for w in caption_words(caps):
        assert len(tok.tokenize(w)) == 1, w
    assert tok("a purple zebra").input_ids[-1] == 1  # unseen words fall back to characters, never unknown
    cfg = tiny_config()
    te = dataclasses.replace(cfg.text_encoder, vocab_size=len(tok), max_position_embeddings=24)
    model = CVDModel.from_config(dataclasses.replace(cfg, text_encoder=te, tokenizer="folder"), tokenizer=tok)
    model.save_pretrained(tmp_path / "m")
    back = CVDModel.from_pretrained(tmp_path / "m")
    assert back.tokenizer(caps[0]).input_ids == tok(caps[0]).input_ids


def test_ssim_matches_scikit_image():
    skimage = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 32, 32, generator=g)
    b = (a + 0.1 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    ref = skimage.structural_similarity(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), channel_axis=2,
                                        data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert abs(float(ssim(a, b)[0]) - ref) < 1e-4
    assert float(ssim(a, a)[0]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny model (random weights, CVSM output projections not zero) in our saved format."""
    cfg = dataclasses.replace(tiny_config(), num_frames=FRAMES, height_px=SIZE, width_px=SIZE)
    model = CVDModel.from_config(cfg, seed=0)
    for _, m in model.unet.cvsms():
        randomize_(m.epi_transformer.proj_out, 5, 0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


def _config(out: Path, cache: Path, held: Path | None, **optim) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out), seed=0, device="cpu", progress=False,
        data=DataSection(num_frames=FRAMES, height_px=SIZE, width_px=SIZE, held_out=None if held is None else str(held)),
        model=ModelSection(init="pretrained", weights="unused", trainable=optim.pop("trainable", "all")),
        optim=OptimSection(**{"steps": 4, "lr": 1e-3, "ema_decay": 0.9, **optim}),
        autoencoder=AutoencoderSection(steps=1),
        eval=EvalSection(enabled=held is not None, num_pairs=1, steps=2),
        checkpoint_every=2, log_every=1,
    )


def _trainer(cfg: TrainConfig, folder: Path, cache: Path, held: Path | None = None) -> Trainer:
    cfg.model.weights = str(folder)
    c = ClipCache(cache)
    data = MixedPairs([(CachedPairs(c, FRAMES, SIZE, SIZE), 1.0)],
                      [(HomographyPairs(CachedVideos(c, FRAMES, SIZE, SIZE), cfg.data.warp), 1.0)], 0.7)
    model_cfg = CVDModel.from_pretrained(folder).config
    return Trainer(cfg, model_cfg, data, held_out=None if held is None else ClipCache(held))


def _state(folder: Path) -> dict[str, torch.Tensor]:
    m = CVDModel.from_pretrained(folder)
    return {f"{n}.{k}": v.clone() for n, mod in m._weight_modules().items() for k, v in mod.state_dict().items()}


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path, cache_path, tiny_folder):
    cache = ClipCache(cache_path)
    fixed = CachedPairs(cache, FRAMES, SIZE, SIZE)

    class Fixed:
        def captions(self):
            return cache.captions

        def draw(self, rng):
            return fixed.pair(0, 0, 1)

    batch = collate_pairs([fixed.pair(0, 0, 1)])
    before = np.mean([loss_of_batch(CVDModel.from_pretrained(tiny_folder), batch, seed=s) for s in range(3)])
    cfg = _config(tmp_path / "run", cache_path, None, steps=12, lr=2e-3, ema_decay=0.0)
    cfg.model.weights = str(tiny_folder)
    cfg.data.flip = cfg.data.swap = False
    Trainer(cfg, CVDModel.from_pretrained(tiny_folder).config, MixedPairs([(Fixed(), 1.0)])).run()
    trained = CVDModel.from_pretrained(tmp_path / "run" / "model")
    after = np.mean([loss_of_batch(trained, batch, seed=s) for s in range(3)])
    assert after < 0.8 * before, (before, after)


def test_only_the_configured_parameters_change(tmp_path, cache_path, tiny_folder):
    cfg = _config(tmp_path / "run", cache_path, None, steps=2, trainable="cvsm", lr=1e-2, ema_decay=0.0)
    _trainer(cfg, tiny_folder, cache_path).run()
    before, after = _state(tiny_folder), _state(tmp_path / "run" / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".epi_modules." in k and k.startswith("unet.") for k in changed), sorted(changed)[:5]
    assert any(k.endswith("proj_out.weight") for k in changed)


def test_resume_continues_the_same_loss_curve(tmp_path, cache_path, tiny_folder):
    import csv

    def rows(run: Path) -> list[tuple[int, str, str]]:
        with open(run / "loss.csv") as fh:
            return [(int(r["step"]), r["loss"], r["kind"]) for r in csv.DictReader(fh)]

    whole = _config(tmp_path / "whole", cache_path, None, steps=4)
    _trainer(whole, tiny_folder, cache_path).run()
    first = _config(tmp_path / "parts", cache_path, None, steps=2)
    _trainer(first, tiny_folder, cache_path).run()
    second = _config(tmp_path / "parts", cache_path, None, steps=4)
    _trainer(second, tiny_folder, cache_path).run()
    a, b = rows(tmp_path / "whole"), rows(tmp_path / "parts")
    assert [r[0] for r in b] == [1, 2, 3, 4]
    assert a == b  # bit-identical losses (the CSV holds their exact repr)
    assert _all_equal(_state(tmp_path / "whole" / "model"), _state(tmp_path / "parts" / "model"))
    assert (tmp_path / "parts" / "loss.png").is_file() and (tmp_path / "parts" / "loss.json").is_file()


def test_the_loss_target_follows_the_models_prediction_type(cache_path, tiny_folder):
    from diffusers import DDPMScheduler

    from cvd.training.trainer import encode_videos, prepare_inputs

    batch = collate_pairs([CachedPairs(ClipCache(cache_path), FRAMES, SIZE, SIZE).pair(0, 0, 1)])
    model = CVDModel.from_pretrained(tiny_folder)
    lat = encode_videos(model, batch["frames"].reshape(2, *batch["frames"].shape[2:]))
    for kind in ("epsilon", "v_prediction", "sample"):
        model.config = dataclasses.replace(model.config, scheduler=dataclasses.replace(model.config.scheduler,
                                                                                      prediction_type=kind))
        inp = prepare_inputs(model, batch, lat, generator=torch.Generator().manual_seed(0), bias_seed=0,
                             caption_dropout=0.0)
        sched = DDPMScheduler.from_config(model.scheduler.config)
        want = {"epsilon": inp["noise"], "sample": lat,
                "v_prediction": sched.get_velocity(lat, inp["noise"], inp["timesteps"])}[kind]
        assert torch.allclose(inp["target"], want)
        assert torch.equal(inp["timesteps"][0] != inp["timesteps"][1], torch.tensor(True))  # one t per video


def test_first_frame_conditioning_gives_frame_0_clean_and_leaves_it_out_of_the_loss(cache_path, tiny_folder):
    from cvd.training.trainer import encode_videos, prepare_inputs

    model = CVDModel.from_pretrained(tiny_folder)
    source = CachedPairs(ClipCache(cache_path), FRAMES, SIZE, SIZE)
    batch = collate_pairs([source.pair(0, 0, 1), source.pair(1, 0, 1)])
    lat = encode_videos(model, batch["frames"].reshape(4, *batch["frames"].shape[2:]))

    def inputs(seed: int, **kw) -> dict:
        return prepare_inputs(model, batch, lat, generator=torch.Generator().manual_seed(seed), bias_seed=0,
                              caption_dropout=0.0, **kw)

    plain, held, never = inputs(0), inputs(0, first_frame_fraction=1.0), inputs(0, first_frame_fraction=0.0)
    assert batch["kind"] == "posed" and plain["mask"] is None
    assert torch.equal(never["noisy"], plain["noisy"]) and "first_frame_held" not in never  # 0: the old stream
    assert torch.equal(held["first_frame_held"], torch.ones(4, dtype=torch.bool))
    assert torch.equal(held["noisy"][:, :, 0], lat[:, :, 0])  # clean at any timestep
    assert torch.equal(held["noisy"][:, :, 1:], plain["noisy"][:, :, 1:])  # same noise and timesteps
    assert torch.equal(held["mask"][:, :, 0], torch.zeros_like(held["mask"][:, :, 0]))
    assert torch.equal(held["mask"][:, :, 1:], torch.ones_like(held["mask"][:, :, 1:]))
    # an error on frame 0 costs nothing; on frame 1 it does
    pred = held["target"].clone()
    pred[:, :, 0] += 5.0
    assert float(masked_mse(pred, held["target"], held["mask"])) == 0.0
    pred[:, :, 1] += 1.0
    assert float(masked_mse(pred, held["target"], held["mask"])) > 0.0
    some = inputs(3, first_frame_fraction=0.5)["first_frame_held"]
    assert torch.equal(some[0::2], some[1::2])  # both videos of a pair together


def test_a_first_frame_conditioned_run_saves_a_model_that_holds_the_picture_clean(tmp_path, cache_path, tiny_folder):
    cfg = _config(tmp_path / "ff", cache_path, None, steps=2, first_frame_fraction=0.5)
    _trainer(cfg, tiny_folder, cache_path).run()
    assert CVDModel.from_pretrained(tmp_path / "ff" / "model").config.first_frame == "clean"
    assert CVDModel.from_pretrained(tiny_folder).config.first_frame == "noised"
    with pytest.raises(ValueError, match="first_frame_fraction must lie in"):
        OptimSection(first_frame_fraction=1.5)


def test_fine_tuning_a_saved_model_starts_from_its_own_config(tmp_path):
    """``model.init=pretrained``: the saved model's architecture and trained vocabulary, not the named config's
    (a fine-tune of tiny-trained failed on the text encoder's vocabulary size)."""
    from cvd_scene.train.training import load_train_config, model_config_for

    weights = Path(__file__).resolve().parents[1] / "models" / "tiny-trained"
    cfg = load_train_config("tiny-cpu", ("model.init=pretrained", f"model.weights={weights}",
                                         "model.changes.pose_injection_scale=0.5"))
    mcfg = model_config_for(cfg)
    saved = CVDModel.from_pretrained(weights).config
    assert mcfg.text_encoder == saved.text_encoder and mcfg.unet == saved.unet
    assert mcfg.pose_injection_scale == 0.5  # model.changes still apply


def _all_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_toy_measure_fixes_the_partner_and_depends_on_it_only_through_cross_view(held_out_path, tiny_folder):
    model = CVDModel.from_pretrained(tiny_folder).eval()
    held = ClipCache(held_out_path)
    clip = held.clip(0)
    z = encode_frames(model, clip.frames)  # [2, C, F, h, w]
    other = encode_frames(model, held.clip(1).frames)
    cams = PairCameras(K=torch.from_numpy(clip.K), world_from_cam=torch.from_numpy(clip.world_from_cam))

    def run(partner: torch.Tensor, cross_view: bool) -> torch.Tensor:
        return sample_pair(model, cams, clip.caption, height=SIZE, width=SIZE, steps=3,
                           generator=torch.Generator().manual_seed(0), fixed_video=0, fixed_latents=partner,
                           cross_view=cross_view)

    with_a, with_b = run(z[0], True), run(other[0], True)
    assert torch.equal(with_a[0], z[0])  # the fixed partner is the ground truth at the end
    assert not torch.allclose(with_a[1], with_b[1])  # the generated video sees its partner ...
    alone_a, alone_b = run(z[0], False), run(other[0], False)
    assert torch.equal(alone_a[1], alone_b[1])  # ... and only through cross-view attention
    result = toy_consistency(model, held, num_pairs=2, steps=2)
    assert result["pairs"] == 2 and all(math.isfinite(v) for v in result["mean"].values())
    assert {"partner_psnr_db", "alone_psnr_db", "autoencoder_psnr_db", "partner_ssim_later"} <= set(result["mean"])


def test_presets_load_strictly_and_paper_names_what_is_missing(tmp_path):
    from cvd_scene.config import ConfigError
    from cvd_scene.train.training import load_train_config, model_config_for, run_training

    for name in ("tiny-cpu", "small-gpu", "paper"):
        cfg = load_train_config(name)
        model_config_for(cfg)
    paper = load_train_config("paper", (f"output_dir={tmp_path}/p", "model.official.sd15=/nonexistent/sd15"))
    assert (paper.optim.lr, paper.optim.weight_decay, paper.optim.grad_clip, paper.optim.mixed_precision) == (
        1e-4, 1e-2, 1.0, "fp16")
    assert paper.optim.steps == 100_000 and paper.optim.batch_pairs * paper.optim.grad_accumulation == 8
    assert paper.model.trainable == "cvsm"
    with pytest.raises(FileNotFoundError, match=r"model\.official\.sd15=/nonexistent/sd15.*\n.*motion"):
        run_training(paper)
    with pytest.raises(ConfigError, match="optim.stepz"):
        load_train_config("tiny-cpu", ("optim.stepz=3",))
