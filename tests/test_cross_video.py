"""Cross-video reconstruction: the fit's split that holds out one whole video (``fit.held_out_video``, the
dataparser's ``held_out_video``) and ``evaluate.cross_video_fits``, which fits all videos but one, once per video,
and scores each fit on the video it did not see. Real nerfstudio fits of the reference renderer's videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from cvd_scene import cli
from cvd_scene.evaluate.run import flat_psnr
from cvd_scene.fit.dataparser import CvdSceneDataParserConfig, RunFolderDataError, held_out_frames
from tests.fit_helpers import make_run


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cross") / "run"
    # Two look-arounds fanned over 40 degrees: each sees much of what the other sees.
    make_run(run_dir, num_videos=2, num_frames=6, size=48, points_per_frame=150, plan={"spread_deg": 40.0})
    return run_dir


def test_held_out_frames_are_one_whole_video_or_every_kth_frame():
    every_third = held_out_frames(["v00", "v01"], 6, 3)
    assert every_third.tolist() == [[False, False, True, False, False, True]] * 2
    one_video = held_out_frames(["v00", "v01", "v02"], 4, 3, "v01")
    assert one_video.tolist() == [[False] * 4, [True] * 4, [False] * 4]
    with pytest.raises(RunFolderDataError, match="v00, v01"):
        held_out_frames(["v00", "v01"], 4, 3, "v07")
    with pytest.raises(RunFolderDataError, match="one video"):
        held_out_frames(["v00"], 4, 3, "v00")


def test_the_dataparser_trains_on_the_other_videos_and_evaluates_on_the_held_out_one(two_videos):
    parser = CvdSceneDataParserConfig(data=two_videos, held_out_video="v01").setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    assert {(f.video_id, f.frame) for f in train.metadata["cvd_frames"]} == {("v00", f) for f in range(6)}
    assert {(f.video_id, f.frame) for f in test.metadata["cvd_frames"]} == {("v01", f) for f in range(6)}
    # Both splits in one frame: the same similarity, so the held-out cameras see the fitted scene.
    np.testing.assert_array_equal(train.dataparser_transform, test.dataparser_transform)
    assert train.dataparser_scale == test.dataparser_scale
    with pytest.raises(RunFolderDataError, match="v00, v01"):
        CvdSceneDataParserConfig(data=two_videos, held_out_video="v02").setup().get_dataparser_outputs("train")


def test_flat_psnr_is_the_psnr_of_a_frames_own_mean_colour():
    half = np.zeros((4, 8, 3), np.uint8)
    half[:, 4:] = 255  # mean 0.5 everywhere, error 0.5 everywhere: MSE 0.25
    assert flat_psnr(half) == pytest.approx(-10 * np.log10(0.25))
    assert flat_psnr(np.full((4, 4, 3), 77, np.uint8)) == pytest.approx(120.0)  # a flat frame: no error (capped)


def test_ns_train_takes_the_held_out_video_on_its_dataparser():
    """``ns-train cvd-scene --data RUN_DIR cvd-scene-data --held-out-video v01``, as nerfstudio's tyro reads it."""
    import tyro
    from cvd_scene_plugins.methods import cvd_scene_method

    spec = cvd_scene_method.config
    config = tyro.cli(type(spec), default=spec, args=["cvd-scene-data", "--held-out-video", "v01"])
    assert isinstance(config.pipeline.datamanager.dataparser, CvdSceneDataParserConfig)
    assert config.pipeline.datamanager.dataparser.held_out_video == "v01"


def test_fit_held_out_video_is_checked_when_the_config_is_read():
    from cvd_scene.fit.config import FitConfig

    with pytest.raises(ValueError, match="fit.held_out_video"):
        FitConfig(held_out_video="../v00")


def _evaluate(run_dir: Path, iterations: int) -> dict:
    args = ["evaluate", str(run_dir), "--quiet", "evaluate.cross_video_fits=true",
            f"evaluate.cross_video_iterations={iterations}", "fit.max_gaussians=3000"]  # fmt: skip
    assert cli.main(args) == 0
    return json.loads((run_dir / "evaluate" / "consistency.json").read_text())["cross_video_reconstruction"]


def test_evaluate_fits_every_video_but_one_and_scores_the_one(two_videos, tmp_path):
    """Two short fits: each scores the video it never saw; scores and pictures kept, the fits themselves not."""
    run_dir = shutil.copytree(two_videos, tmp_path / "run")
    result = _evaluate(run_dir, 20)
    assert set(result["per_video"]) == {"v00", "v01"} and result["iterations"] == 20
    for m in result["per_video"].values():
        assert m["frames"] == 6 and m["train_frames"] == 6 and m["iterations"] == 20
    assert result["psnr"] == pytest.approx(np.mean([m["psnr"] for m in result["per_video"].values()]))
    assert result["gain_over_flat"] == pytest.approx(result["psnr"] - result["flat_psnr"])
    out = run_dir / "evaluate"
    for vid in ("v00", "v01"):
        kept = {p.relative_to(out / "cross_video" / vid).as_posix() for p in (out / "cross_video" / vid).rglob("*")}
        assert "metrics.json" in kept and f"eval/{vid}_0000_pred.png" in kept
        assert not any(k.startswith("nerfstudio") or k.endswith(".ply") for k in kept), kept
        frames = [iio.imread(p) for p in sorted((out / "cross_video" / vid / "eval").glob("*_gt.png"))]
        assert result["per_video"][vid]["flat_psnr"] == pytest.approx(np.mean([flat_psnr(f) for f in frames]))
    assert iio.imread(out / "cross_video.png").ndim == 3
    record = json.loads((run_dir / "run.json").read_text())["stages"]["evaluate"]
    assert record["summary"]["cross_video_fit_psnr"] == pytest.approx(result["psnr"])
    assert "Cross-video reconstruction" in (run_dir / "report.html").read_text()


@pytest.mark.slow  # four fits of 300 iterations, about a minute on 2 cores
def test_consistent_videos_predict_each_other_and_a_mirrored_one_is_not_predicted(two_videos, tmp_path):
    """Measured: 19.3 dB for the two consistent videos, 16.4 dB with one of them mirrored (another scene)."""
    consistent = _evaluate(shutil.copytree(two_videos, tmp_path / "run"), 300)
    mirrored = shutil.copytree(two_videos, tmp_path / "mirrored")
    for path in (mirrored / "generate" / "frames" / "v01").glob("*.png"):
        iio.imwrite(path, iio.imread(path)[:, ::-1])
    other = _evaluate(mirrored, 300)
    assert consistent["psnr"] > other["psnr"] + 2.0, (consistent["psnr"], other["psnr"])
    assert consistent["gain_over_flat"] > other["gain_over_flat"] + 2.0


def test_cross_video_fits_need_a_registration(tmp_path, capsys):
    run_dir = tmp_path / "run"
    make_run(run_dir, num_videos=2, num_frames=4, size=32, points_per_frame=20)
    shutil.rmtree(run_dir / "register")
    assert cli.main(["evaluate", str(run_dir), "--quiet", "evaluate.cross_video_fits=true"]) == 2
    assert "evaluate.cross_video_fits" in capsys.readouterr().err
