"""A picture as frame 0 of every video (``cvd-scene run/generate --image``): reading it upright with its EXIF
focal length, holding its latent in the CVD pipeline, the run folder keeping it, and the refusals.

The pictures are made here with PIL (JPEG with EXIF tags); the in-domain one is a reference-renderer view of a room,
what ``tiny-trained``'s autoencoder was trained on."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cvd.pipeline import CVDPipeline
from cvd_scene.cli import main
from cvd_scene.generate.picture import crop_box, fov_x_deg, read_picture
from tests.cvd_testing import camera_inputs, random_model, tiny_config

FRAMES = 12
RUN = ["--preset", "demo-learned", "--until", "generate", "--quiet", "plan.num_videos=2", "generate.steps=4"]


def save_jpeg(path, rgb: np.ndarray, orientation: int | None = None, focal_35mm: int | None = None) -> None:
    """``rgb`` [H, W, 3] uint8 as a JPEG with the given EXIF orientation and 35 mm-equivalent focal length."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if focal_35mm is not None:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm
    Image.fromarray(rgb).save(path, exif=exif, quality=95)


def quadrants(height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8: red, green / blue, white quadrants (survive JPEG, show any rotation or flip)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    rgb[:h, :w] = (220, 30, 30)
    rgb[:h, w:] = (30, 200, 30)
    rgb[h:, :w] = (30, 30, 220)
    rgb[h:, w:] = (240, 240, 240)
    return rgb


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(((a - b) ** 2).mean()))


# ---------------------------------------------------------------------------------------------- the picture


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored turned 90 deg anticlockwise: shown turned clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    stored = quadrants(40, 64)
    save_jpeg(tmp_path / "p.jpg", stored, orientation=orientation)
    pic = read_picture(tmp_path / "p.jpg")
    want = upright(stored)
    assert pic.rgb.shape == want.shape
    assert pic.orientation == orientation
    assert np.abs(pic.rgb.astype(int) - want.astype(int)).mean() < 6  # JPEG


def test_field_of_view_from_the_35mm_equivalent_focal_length(tmp_path):
    # A 3:2 picture has a full frame's 36 mm width at its 35 mm-equivalent focal length.
    save_jpeg(tmp_path / "wide.jpg", quadrants(60, 90), focal_35mm=36)
    pic = read_picture(tmp_path / "wide.jpg")
    assert pic.focal_35mm_mm == 36
    assert fov_x_deg(pic, 96, 64) == pytest.approx(2 * math.degrees(math.atan(18 / 36)), abs=1e-9)
    # A square crop keeps two thirds of the width.
    assert fov_x_deg(pic, 96, 96) == pytest.approx(2 * math.degrees(math.atan(12 / 36)), abs=1e-9)
    assert crop_box(90, 60, 96, 96) == pytest.approx((15, 0, 75, 60))
    # Portrait (EXIF 6 on a landscape-stored photo): the upright width is the short side.
    save_jpeg(tmp_path / "portrait.jpg", quadrants(60, 90), orientation=6, focal_35mm=36)
    portrait = read_picture(tmp_path / "portrait.jpg")
    assert (portrait.width, portrait.height) == (60, 90)
    assert fov_x_deg(portrait, 64, 96) == pytest.approx(2 * math.degrees(math.atan(12 / 36)), abs=1e-9)
    save_jpeg(tmp_path / "plain.jpg", quadrants(60, 90))
    assert fov_x_deg(read_picture(tmp_path / "plain.jpg"), 96, 96) is None


def test_run_takes_the_plan_field_of_view_from_exif_unless_given(tmp_path):
    save_jpeg(tmp_path / "p.jpg", quadrants(60, 90), focal_35mm=36)
    want = 2 * math.degrees(math.atan(12 / 36))  # square 96 px plan
    run = tmp_path / "run"
    assert main(["run", str(run), "--image", str(tmp_path / "p.jpg"), *RUN[:2], "--until", "plan", "--quiet"]) == 0
    cams = json.loads((run / "plan" / "cameras.json").read_text())
    fx = cams["videos"][0]["frames"][0]["fx"]
    assert 2 * math.degrees(math.atan(96 / (2 * fx))) == pytest.approx(want, abs=0.01)
    state = json.loads((run / "run.json").read_text())
    assert state["config"]["prompt"] == ""  # the prompt is optional with a picture
    given = tmp_path / "given"
    args = ["run", str(given), "--image", str(tmp_path / "p.jpg"), *RUN[:2], "--until", "plan", "--quiet"]
    assert main([*args, "plan.fov_x_deg=70"]) == 0
    fx = json.loads((given / "plan" / "cameras.json").read_text())["videos"][0]["frames"][0]["fx"]
    assert 2 * math.degrees(math.atan(96 / (2 * fx))) == pytest.approx(70, abs=0.01)


# ---------------------------------------------------------------------------------------------- the pipeline


def test_pipeline_holds_the_first_frame_latent_at_the_picture():
    """Every video's frame-0 latent enters each UNet call as the picture's latent noised to that step with the
    video's own initial noise, and comes out as the picture's latent; the other frames are generated."""
    pipe = CVDPipeline.from_model(random_model(seed=1))
    pipe.set_progress_bar_config(disable=True)
    K, c2w = camera_inputs(3, 3, 32)
    picture = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    forward = pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states, context=None):
        seen.append((sample.clone(), int(timestep)))
        return forward(sample, timestep, encoder_hidden_states, context)

    pipe.unet.forward = spy
    args = {"num_inference_steps": 2, "height": 32, "width": 32, "seed": 0, "latents": noise, "pairing": "exhaustive"}
    out = pipe("a room", c2w, K, first_frame=picture, output_type="latent", **args)
    x0 = pipe.encode_frames(picture[None], torch.device("cpu"))[:, 0]  # [C, h, w]
    torch.testing.assert_close(out.frames[:, :, 0], x0.expand(3, *x0.shape))
    for sample, t in seen:
        a = float(pipe.scheduler.alphas_cumprod[t])
        for row in sample:  # every row is one of the three videos (guided: both branches)
            first = row[:, 0]
            assert any(
                torch.allclose(first, a**0.5 * x0 + (1 - a) ** 0.5 * noise[v, :, 0], atol=1e-5) for v in range(3)
            )
    free = pipe("a room", c2w, K, output_type="latent", **args).frames
    assert not torch.allclose(free[:, :, 0], out.frames[:, :, 0], atol=1e-3)
    assert not torch.allclose(free[:, :, 1:], out.frames[:, :, 1:], atol=1e-6)  # the picture reaches the rest
    with pytest.raises(ValueError, match=r"first_frame must be a tensor of shape \(32, 32, 3\)"):
        pipe("a room", c2w, K, first_frame=picture[:16], **args)


def test_a_model_trained_first_frame_conditioned_gets_the_picture_clean_at_every_step():
    """``config.first_frame == "clean"`` (what ``optim.first_frame_fraction`` saves): frame 0 of every row of every
    UNet call is the picture's latent itself, as in training."""
    model = random_model(seed=1, config=dataclasses.replace(tiny_config(), first_frame="clean"))
    pipe = CVDPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    K, c2w = camera_inputs(2, 3, 32)
    picture = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    seen = []
    forward = pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states, context=None):
        seen.append(sample.clone())
        return forward(sample, timestep, encoder_hidden_states, context)

    pipe.unet.forward = spy
    args = {"num_inference_steps": 3, "height": 32, "width": 32, "seed": 0, "pairing": "exhaustive"}
    out = pipe("a room", c2w, K, first_frame=picture, output_type="latent", **args)
    x0 = pipe.encode_frames(picture[None], torch.device("cpu"))[:, 0]
    assert len(seen) == 3
    for sample in seen:
        for row in sample:
            torch.testing.assert_close(row[:, 0], x0)
    torch.testing.assert_close(out.frames[:, :, 0], x0.expand(2, *x0.shape))
    with pytest.raises(ValueError, match="first_frame must be 'noised' or 'clean'"):
        dataclasses.replace(model.config, first_frame="sharp")


# ---------------------------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def room_picture(tmp_path_factory):
    """A reference-renderer view of a room from the plan's first camera, 128x96, as a JPEG with EXIF (26 mm)."""
    from cvd_scene.cameras import look_at
    from cvd_scene.plan.planning import make_cameras
    from cvd_scene.reference import build_scene, render

    c2w = look_at(np.array([0.0, 1.5, 0.0]), np.array([0.0, 1.3, -1.2]))[None, None]  # [1, 1, 4, 4]
    cams = make_cameras(c2w, 128, 96, 70.0)
    rgb = render(build_scene("a cosy room with a red sofa", 3), cams, samples_per_pixel=1, progress=False).rgb
    path = tmp_path_factory.mktemp("picture") / "room.jpg"
    save_jpeg(path, (rgb[0, 0] * 255).round().astype(np.uint8), focal_35mm=26)
    return path


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, room_picture):
    """The same tiny-trained run (2 videos, 4 steps, seed 0, empty prompt) with and without the picture."""
    root = tmp_path_factory.mktemp("image-runs")
    assert main(["run", str(root / "with"), "--image", str(room_picture), *RUN]) == 0
    fov = json.loads((root / "with" / "run.json").read_text())["config"]["plan"]["fov_x_deg"]
    assert main(["run", str(root / "without"), "--prompt", "", *RUN, f"plan.fov_x_deg={fov}"]) == 0
    return root / "with", root / "without"


def frames_of(run) -> np.ndarray:  # [V, F, H, W, 3]
    return np.stack([[read_png(run / f"generate/frames/v{v:02d}/{f:04d}.png") for f in range(FRAMES)] for v in range(2)])


def test_frame_0_of_every_video_is_the_auto_encoded_picture(image_runs, room_picture):
    run, _ = image_runs
    crop = read_png(run / "generate" / "input_crop.png")  # [96, 96, 3]: the picture as the model got it
    from cvd_scene.generate.cvd_models import load_cvd_model

    model, _ = load_cvd_model("tiny-trained", None)
    pipe = CVDPipeline.from_model(model)
    z = pipe.encode_frames(torch.from_numpy(crop)[None], torch.device("cpu"))  # [C, 1, h, w]
    auto_encoded = pipe.decode_latents(z[None])[0, 0].numpy()  # [96, 96, 3]
    frames = frames_of(run)
    for v in range(2):
        # Equal to the auto-encoded picture up to the PNG's 8 bits.
        assert np.abs(frames[v, 0] - auto_encoded).max() <= 1.01 / 255
        # And to the picture within tiny-trained's autoencoder error: measured 21.8 dB on this render (its
        # reconstruction ceiling on held-out renders is 20.6 dB, README).
        assert psnr(frames[v, 0], crop) > 19.0
    # The crop is the cover-resize of the 128x96 picture to 96x96: its centre 96 columns (at scale 1).
    original = np.asarray(Image.open(room_picture), dtype=np.float32) / 255
    assert np.abs(crop - original[:, 16:112]).max() <= 1.01 / 255


def test_the_next_frames_come_closer_to_the_picture_than_without_it(image_runs):
    """Against the same run (same seed, so the same noise) without the picture. Measured at 4 steps: frame 0
    10.2 and 9.6 dB closer; frames 1-3 of the two videos 10.97 dB on average against 10.85 dB (+0.11 dB; five of
    the six frames closer). tiny-trained's motion modules carry little of frame 0 into the next frames."""
    with_, without = image_runs
    crop = read_png(with_ / "generate" / "input_crop.png")
    a, b = frames_of(with_), frames_of(without)
    for v in range(2):
        assert psnr(a[v, 0], crop) > psnr(b[v, 0], crop) + 6
    near_with = np.mean([psnr(a[v, f], crop) for v in range(2) for f in (1, 2, 3)])
    near_without = np.mean([psnr(b[v, f], crop) for v in range(2) for f in (1, 2, 3)])
    assert near_with > near_without + 0.05, (near_with, near_without)


def test_the_run_keeps_the_picture_and_the_report_shows_it(image_runs, room_picture):
    run, _ = image_runs
    state = json.loads((run / "run.json").read_text())
    assert state["config"]["generate"]["image"] == str(room_picture.resolve())
    assert state["stages"]["generate"]["summary"]["image"] == "generate/input.jpg"
    assert (run / "generate" / "input.jpg").read_bytes() == room_picture.read_bytes()
    rep = json.loads((run / "generate" / "report.json").read_text())["image"]
    assert rep["size"] == [128, 96] and rep["focal_35mm_mm"] == 26
    assert rep["fov_x_deg_exif"] == pytest.approx(state["config"]["plan"]["fov_x_deg"], abs=0.01)
    assert "input.jpg" in state["stages"]["generate"]["outputs"]["files"]
    html = (run / "report.html").read_text()
    assert "Input picture room.jpg (128×96" in html


# ---------------------------------------------------------------------------------------------- refusals


def test_the_reference_generator_refuses_a_picture(tmp_path, capsys):
    save_jpeg(tmp_path / "p.jpg", quadrants(32, 32))
    run = tmp_path / "run"
    assert main(["run", str(run), "--image", str(tmp_path / "p.jpg"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "the reference generator renders procedural scenes and cannot start from a picture" in err
    assert not run.exists()  # refused before anything was written


@pytest.mark.parametrize("command", ["run", "generate"])
def test_a_missing_or_unreadable_picture_is_one_line(tmp_path, capsys, command):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture\n")
    run = tmp_path / "run"
    if command == "generate":
        assert main(["plan", str(run), *RUN[:2], "--quiet"]) == 0
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for path, why in ((tmp_path / "missing.jpg", "no such file"), (not_image, "not an image that can be read")):
        args = ["run", str(run), *RUN] if command == "run" else ["generate", str(run), "--quiet"]
        assert main([*args, "--image", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"cvd-scene: error: --image {path}: {why}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing lost


def test_a_plan_whose_videos_start_apart_is_refused(tmp_path, capsys):
    save_jpeg(tmp_path / "p.jpg", quadrants(32, 32))
    planned = tmp_path / "planned"
    assert main(["plan", str(planned), *RUN[:2], "plan.num_videos=2", "--quiet"]) == 0
    cams = json.loads((planned / "plan" / "cameras.json").read_text())
    cams["videos"][1]["frames"][0]["world_from_cam"][0][3] += 0.3  # video 1 starts 0.3 m to the side
    (tmp_path / "apart.json").write_text(json.dumps(cams))
    run = tmp_path / "run"
    args = ["run", str(run), "--image", str(tmp_path / "p.jpg"), *RUN, f"plan.cameras_file={tmp_path / 'apart.json'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (
        "cvd-scene: error: generate.image needs the plan's videos to start at one camera (the picture is frame 0 of "
        "every video); their first cameras differ by up to 0.3"
    )
    assert not (run / "generate").exists()


