"""Bad input is refused before work starts, in one line naming the file, key or value; nothing escapes the run.

Each test is a case found by trying cvd-scene as a hostile user would: ids that become paths, nulls and zeros in
camera files, overflowing numbers, corrupt frames and files, sizes no machine can hold, and commands on folders
that are not run folders. Every CLI call runs in-process (``cvd_scene.cli.main``) and checks the exit status, the
one-line message and what is on disk afterwards.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from cvd_scene.camera_io import CameraFileError, cameras_from_dict, cameras_to_dict, parse_re10k
from cvd_scene.cameras import look_at
from cvd_scene.cli import main
from cvd_scene.paths import UnsafePathError, check_id, join_inside
from cvd_scene.plan.planning import make_cameras

TINY_PLAN = ["plan.num_videos=2", "plan.num_frames=2", "plan.width=24", "plan.height=16",
             "plan.covisibility_width_px=8", "plan.coverage_points=200", "plan.reference_depth=false"]  # fmt: skip
"""A plan that takes well under a second."""
TINY_GENERATE = ["generate.samples_per_pixel=1", "generate.texels_per_m=20"]


def cameras_doc(ids=("v00", "v01"), frames=2, width=24, height=16) -> dict:
    """A valid ``cameras.json`` document: videos turning from one common start."""
    c2w = np.stack(
        [
            np.stack([look_at([0.0, 1.5, 0.1 * f * (v + 1)], [np.sin(v + 0.3 * f), 1.4, -2.0]) for f in range(frames)])
            for v in range(len(ids))
        ]
    )
    cams = make_cameras(c2w, width, height, 60.0, 8.0, {})
    doc = cameras_to_dict(cams)
    for video, vid in zip(doc["videos"], ids):
        video["id"] = vid
    return doc


def write_doc(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cvd-scene: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------ ids and paths

HOSTILE_IDS = ["/tmp/x/victim", "../../../escaped", "", ".", "..", "a/b", "v00/../..", "-rf", "a" * 65, "v\x00", 7]


@pytest.mark.parametrize("vid", HOSTILE_IDS)
def test_hostile_video_ids_are_refused_by_the_id_check(vid):
    with pytest.raises(UnsafePathError, match="not allowed"):
        check_id(vid)


@pytest.mark.parametrize("vid", ["v00", "kitchen.left", "A-1_b", "0", "x" * 64])
def test_safe_video_ids_pass(vid):
    assert check_id(vid) == vid


def test_join_inside_refuses_escapes_and_links_out(tmp_path):
    base = tmp_path / "run"
    (base / "frames").mkdir(parents=True)
    assert join_inside(base, "frames", "v00", "0000.png") == base / "frames" / "v00" / "0000.png"
    for parts in (("..", "x"), ("/tmp/x",), ("frames", "..", ".."), (".",), ("",)):
        with pytest.raises(UnsafePathError):
            join_inside(base, *parts)
    (base / "frames" / "out").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="not inside"):
        join_inside(base, "frames", "out", "victim.png")


@pytest.mark.parametrize("vid", ["/tmp/x/victim", "../../../escaped", "", "."])
def test_plan_and_generate_with_hostile_ids_write_nothing_outside(tmp_path, capsys, vid):
    victim = tmp_path / "victim-area"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    cams = write_doc(tmp_path / "cams.json", cameras_doc(ids=("v00", vid)))
    before = snapshot(tmp_path)
    run_dir = victim / "a" / "b" / "run"  # so that ../../../ lands in victim-area
    assert main(["plan", str(run_dir), "--cameras", str(cams), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "videos[1].id" in line and str(cams) in line
    assert snapshot(tmp_path) == before
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------------ cameras.json


def _broken(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


FRAME = ("videos", 0, "frames", 1)
CAMERA_CASES = [
    (FRAME + ("index",), None, "videos[0].frames[1].index"),
    (FRAME + ("time_s",), None, "videos[0].frames[1].time_s"),
    (("fps",), 0, "fps"),
    (("fps",), "fast", "fps"),
    (("extras",), [1, 2], "'extras'"),
    (FRAME + ("fx",), -200.0, "videos[0].frames[1].fx"),
    (FRAME + ("fx",), 0, "videos[0].frames[1].fx"),
    (FRAME + ("fy",), float("nan"), "videos[0].frames[1].fy"),
    (FRAME + ("cx",), 1e9, "videos[0].frames[1].cx"),
    (FRAME + ("width",), 0, "videos[0].frames[1].width"),
    (FRAME + ("width",), 10**6, "videos[0].frames[1].width"),
    (FRAME + ("height",), "16", "videos[0].frames[1].height"),
    (FRAME + ("world_from_cam",), None, "videos[0].frames[1].world_from_cam"),
    (FRAME + ("world_from_cam",), [[1, 0, 0, 1e300], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "world_from_cam"),
    (("videos", 1, "id"), "v00", "videos[1].id"),
    (("videos", 1, "id"), None, "videos[1].id"),
    (("videos", 0, "frames", 0), [1, 2], "videos[0].frames[0]"),
]


@pytest.mark.parametrize(("path", "value", "named"), CAMERA_CASES, ids=[c[2] + "=" + repr(c[1])[:12] for c in CAMERA_CASES])
def test_bad_cameras_json_values_are_named(path, value, named):
    doc = _broken(cameras_doc(), path, value)
    with pytest.raises(CameraFileError, match="^mine.json: ") as info:
        cameras_from_dict(doc, source="mine.json")
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_cameras_json_defaults_still_parse():
    doc = cameras_doc()
    for video in doc["videos"]:
        for fr in video["frames"]:
            del fr["index"], fr["time_s"]
    del doc["fps"]
    cams = cameras_from_dict(doc)
    assert cams.fps == 8.0 and cams.time_s[1] == pytest.approx(1 / 8.0)


@pytest.mark.parametrize(
    ("content", "named"),
    [(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a JSON text file"), (b"[" * 100000, "nested too deeply")],
)
def test_binary_or_hostile_cameras_file_is_named(tmp_path, capsys, content, named):
    path = tmp_path / "cams.json"
    path.write_bytes(content)
    assert main(["plan", str(tmp_path / "run"), "--cameras", str(path), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(path) in line and named in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ RealEstate10K

RE10K_LINE = "{ts} 0.5 0.9 {cx} 0.5 0 0 1 0 0 {tx} 0 1 0 0 0 0 1 0"


def re10k_text(ts="0", cx="0.5", tx="0"):
    return "https://example.invalid/v\n" + "\n".join(
        RE10K_LINE.format(ts=int(ts) + i if ts.isdigit() else ts, cx=cx, tx=tx) for i in range(3)
    )


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"ts": "1e20"}, "timestamp 1e20"),
        ({"ts": "100000000000000000000"}, "timestamp 100000000000000000000"),
        ({"ts": "-5"}, "timestamp -5"),
        ({"cx": "40.0"}, "principal point"),
        ({"tx": "1e300"}, "translation"),
    ],
)
def test_bad_re10k_numbers_are_named_with_their_line(kwargs, named):
    with pytest.raises(CameraFileError, match=r"^pose.txt:2: ") as info:
        parse_re10k(re10k_text(**kwargs), source="pose.txt")
    assert named in str(info.value)


def test_binary_re10k_file_is_named(tmp_path, capsys):
    path = tmp_path / "clip.txt"
    path.write_bytes(b"\x00\xff\xfe\x89binary")
    assert main(["plan", str(tmp_path / "run"), "--from-re10k", str(path), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(path) in line and "not a text" in line


# ------------------------------------------------------------------------------------------ config keys


RUN_CASES = [
    ("plan.fps=.inf", "plan.fps=inf"),
    ("plan.perturb_m=.nan", "plan.perturb_m=nan"),
    ("fit.time_budget_s=-5", "time_budget_s"),
    ("fit.iterations=-1", "iterations"),
    ("fit.eval_every_k=1", "eval_every_k"),
    ("fit.eval_every_k=3", "fit.eval_every_k=3"),  # 2 frames per video: nothing held out
    ("seed=-1", "seed=-1"),
    ("seed=4294967296", "seed=4294967296"),
    ("register.covisibility_min=2", "covisibility_min"),
    ("export.camera_path_fps=0", "camera_path_fps"),
    ("export.formats=[plyy]", "plyy"),
    ("evaluate.match_max_ratio=0", "match_max_ratio"),
    ("plan.num_frames=1", "plan.num_frames"),
    ("plan.width=100000", "width must be in [1, 8192], got 100000"),
    ("plan.num_videos=64 plan.width=8192 plan.height=8192", "plan.width=8192"),
    ("plan.num_frames=1000000", "plan.num_frames=1000000"),
    ("generate.samples_per_pixel=1000000000", "generate.samples_per_pixel=1000000000"),
    ("generate.model=../../../x", "generate.model"),
]


@pytest.mark.parametrize(("override", "named"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_refuses_bad_config_before_the_first_stage(tmp_path, capsys, override, named):
    """Every stage's config is checked by ``cvd-scene run`` before plan starts: no run folder is made."""
    args = ["run", str(tmp_path / "run"), "--preset", "demo", "--quiet", *TINY_PLAN, "fit.eval_every_k=2",
            *override.split()]  # fmt: skip
    if override.startswith("generate.model"):
        args.append("generate.generator=cvd")
    assert main(args) == 2
    line = one_line_error(capsys)
    assert named in line, line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ files


def _gaussians_ply(path: Path, n: int) -> Path:
    from cvd_scene.export import write_ply
    from tests.fit_helpers import random_gaussians

    write_ply(random_gaussians(n, sh_coeffs=0), path)
    return path


def test_export_from_into_an_existing_file_is_refused(tmp_path, capsys):
    src = _gaussians_ply(tmp_path / "in.ply", 20)
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    assert main(["export", "--from", str(src), "--out", str(out), "--quiet"]) == 2
    assert str(out) in one_line_error(capsys)
    assert out.read_text() == "mine"
    assert main(["export", "--from", str(src), "--out", str(out / "sub"), "--quiet"]) == 2
    assert "is a file" in one_line_error(capsys)


def test_export_from_an_empty_ply_names_it_and_leaves_no_folder(tmp_path, capsys):
    src = _gaussians_ply(tmp_path / "empty.ply", 0)
    out = tmp_path / "new" / "out"
    assert main(["export", "--from", str(src), "--out", str(out), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(src) in line and "no splats" in line
    assert not (tmp_path / "new").exists()


def test_export_from_a_text_file_named_ply_is_named(tmp_path, capsys):
    src = tmp_path / "notes.ply"
    src.write_text("hello, not a ply\n")
    assert main(["export", "--from", str(src), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert str(src) in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_convert_on_a_text_file_named_ckpt_names_it(tmp_path):
    from cvd.checkpoints import CheckpointError, read_state_file

    path = tmp_path / "CVD.ckpt"
    path.write_text("this is not a checkpoint\n" * 4)
    with pytest.raises(CheckpointError, match="CVD.ckpt"):
        read_state_file(path, label="--cvd")


def test_truncated_frame_is_named_by_read_frames_and_check_image(tmp_path):
    from cvd_scene.media import ImageFileError, check_image, read_frames, write_frames

    frames = np.random.default_rng(0).random((1, 2, 16, 24, 3)).astype(np.float32)
    write_frames(frames, tmp_path / "frames", ["v00"])
    bad = tmp_path / "frames" / "v00" / "0001.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    check_image(tmp_path / "frames" / "v00" / "0000.png")
    with pytest.raises(ImageFileError, match="0001.png"):
        check_image(bad)
    with pytest.raises(ImageFileError, match="0001.png"):
        read_frames(tmp_path / "frames", ["v00"], 2)


# ------------------------------------------------------------------------------------------ run folders


@pytest.mark.parametrize("stage", ["generate", "register", "fit", "export", "evaluate"])
def test_stage_command_on_a_missing_folder_creates_nothing(tmp_path, capsys, stage):
    typo = tmp_path / "typo"
    assert main([stage, str(typo), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(typo) in line and "does not exist" in line
    assert not typo.exists()


def test_register_on_a_folder_that_is_not_a_run_folder_does_not_suggest_overwrite(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"x")
    assert main(["register", str(tmp_path / "photos"), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "not a cvd-scene run folder" in line and "--overwrite" not in line
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["me.jpg"]


def test_corrupt_run_json_is_named(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"format": "cvd-scene/run", ')
    assert main(["generate", str(run_dir), "--quiet"]) == 2
    assert str(run_dir / "run.json") in one_line_error(capsys)


def test_dataparser_on_a_non_run_folder_and_on_a_failed_registration(tmp_path):
    pytest.importorskip("nerfstudio")
    from cvd_scene.fit.dataparser import RunFolderDataError, locate_registration

    with pytest.raises(RunFolderDataError, match="no such folder"):
        locate_registration(tmp_path / "nowhere")
    with pytest.raises(RunFolderDataError, match="not a cvd-scene run folder"):
        locate_registration(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"stages": {"register": {"status": "failed", "message": "0/8 frames"}}}))
    with pytest.raises(RunFolderDataError, match=r"register stage failed \(0/8 frames\)"):
        locate_registration(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"stages": {}}))
    with pytest.raises(RunFolderDataError, match="has not run"):
        locate_registration(tmp_path)


# ------------------------------------------------------------------------------------------ presets


def test_extends_is_resolved_from_the_yaml_files_folder(tmp_path, monkeypatch):
    from cvd_scene.config import load_config
    from cvd_scene.runconfig import RunConfig

    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "base.yaml").write_text("plan:\n  num_videos: 3\n")
    (tmp_path / "presets" / "mine.yaml").write_text("extends: base.yaml\nplan:\n  num_frames: 5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "base.yaml").write_text("plan:\n  num_videos: 9\n")
    monkeypatch.chdir(elsewhere)
    config = load_config(RunConfig, "run", str(tmp_path / "presets" / "mine.yaml"))
    assert (config.plan.num_videos, config.plan.num_frames) == (3, 5)


def test_binary_preset_is_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00plan: 1")
    assert main(["run", str(tmp_path / "run"), "--preset", str(path), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(path) in line
    assert not (tmp_path / "run").exists()


def test_coinciding_start_and_target_is_refused_with_the_reason(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "run"), "--quiet", *TINY_PLAN, "plan.pattern=orbit",
                 "plan.start_m=[0,1,0]", "plan.look_at_m=[0,1,0]"]) == 2  # fmt: skip
    assert "no view direction" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------ real stages


def test_odd_frame_size_keeps_frames_and_pads_only_the_video(tmp_path, capsys):
    from cvd_scene.media import read_mp4

    run_dir = tmp_path / "run"
    plan = [a for a in TINY_PLAN if not a.startswith(("plan.width", "plan.height"))]
    assert main(["run", str(run_dir), "--until", "generate", *plan, *TINY_GENERATE, "plan.width=7", "plan.height=9"]) == 0
    import imageio.v3 as iio

    assert iio.imread(run_dir / "generate" / "frames" / "v00" / "0000.png").shape == (9, 7, 3)
    assert read_mp4(run_dir / "generate" / "videos" / "v00.mp4").shape[1:3] == (10, 8)
    report = json.loads((run_dir / "generate" / "report.json").read_text())
    assert report["video_size"] == [8, 10] and (report["width"], report["height"]) == (7, 9)
    assert "mp4 are padded to 8x10" in " ".join(capsys.readouterr().err.split())


def test_truncated_frame_at_register_names_the_file(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(run_dir), "--until", "generate", "--quiet", *TINY_PLAN, *TINY_GENERATE]) == 0
    bad = run_dir / "generate" / "frames" / "v01" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:100])
    assert main(["register", str(run_dir), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(bad) in line and "truncated" in line


def test_truncated_frame_is_named_by_the_dataparser(tmp_path):
    pytest.importorskip("nerfstudio")
    from cvd_scene.camera_io import cameras_from_dict, write_transforms_json
    from cvd_scene.fit.dataparser import CvdSceneDataParserConfig, RunFolderDataError
    from cvd_scene.media import write_frames

    cams = cameras_from_dict(cameras_doc(frames=3))
    write_frames(np.full((2, 3, 16, 24, 3), 0.5, np.float32), tmp_path / "generate" / "frames", cams.video_ids)
    write_transforms_json(cams, tmp_path / "register" / "transforms.json", "../generate/frames")
    bad = tmp_path / "generate" / "frames" / "v01" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    parser = CvdSceneDataParserConfig(data=tmp_path, eval_every_k=3, load_points=False).setup()
    with pytest.raises(RunFolderDataError, match="v01/0001.png: cannot be read as an image, truncated"):
        parser.get_dataparser_outputs(split="train")


@pytest.mark.slow
def test_truncated_frame_at_fit_names_the_file(tmp_path, capsys):
    pytest.importorskip("nerfstudio")
    from tests.fit_helpers import make_run

    run_dir = tmp_path / "run"
    make_run(run_dir, num_videos=1, num_frames=3, size=24, points_per_frame=20)
    bad = run_dir / "generate" / "frames" / "v00" / "0000.png"
    bad.write_bytes(bad.read_bytes()[:60])
    assert main(["fit", str(run_dir), "--iterations", "1", "--quiet", "fit.eval_every_k=3"]) == 2
    line = one_line_error(capsys)
    assert str(bad) in line and "truncated" in line


def test_ns_train_prints_a_run_folder_error_in_one_line(capsys):
    pytest.importorskip("nerfstudio")
    import sys

    from cvd_scene.fit.dataparser import RunFolderDataError, install_error_hook

    previous = sys.excepthook
    try:
        install_error_hook()
        sys.excepthook(RunFolderDataError, RunFolderDataError("--data x is not a cvd-scene run folder"), None)
        assert capsys.readouterr().err == "error: --data x is not a cvd-scene run folder\n"
    finally:
        sys.excepthook = previous


def test_estimates_pass_the_demo_and_name_the_keys_when_refusing():
    from cvd_scene.estimates import EstimateError, check_estimate, plan_estimate, reference_estimate

    demo = reference_estimate(4, 12, 192, 192, 4, {"plan.width": 192})
    assert demo.memory_bytes < 1.5 * 1024**3 and demo.seconds < 60  # the demo run fits a laptop
    assert check_estimate(demo, available_bytes=4 * 1024**3) is demo
    with pytest.raises(EstimateError, match=r"more than the 100 MiB available \(plan.width=192\)"):
        check_estimate(demo, available_bytes=100 * 1024**2)
    many = plan_estimate(1, 200_000, 16, 16, 8, {"plan.num_frames": 200_000})
    with pytest.raises(EstimateError, match=r"2e\+05 cameras .*plan.num_frames=200000"):
        check_estimate(many, available_bytes=1e15)


def test_dataparser_refuses_frame_paths_outside_the_run_folder(tmp_path):
    pytest.importorskip("nerfstudio")
    from cvd_scene.camera_io import cameras_from_dict, write_transforms_json
    from cvd_scene.fit.dataparser import CvdSceneDataParserConfig, RunFolderDataError
    from cvd_scene.media import write_frames

    cams = cameras_from_dict(cameras_doc(frames=3))
    outside = tmp_path / "outside"
    write_frames(np.full((2, 3, 16, 24, 3), 0.5, np.float32), outside, cams.video_ids)
    run_dir = tmp_path / "run"
    write_transforms_json(cams, run_dir / "register" / "transforms.json", "../../outside")
    parser = CvdSceneDataParserConfig(data=run_dir, eval_every_k=3, load_points=False).setup()
    with pytest.raises(RunFolderDataError, match="not inside the run folder"):
        parser.get_dataparser_outputs(split="train")
