"""``cvd-scene import`` of captures that bring their own cameras (a nerfstudio ``transforms.json`` folder, a COLMAP
model) and of video files; the capture's poses converted once into the run's world, lens distortion removed.

The real photographs are ``tests/data/buddha_gray``: 23 views of the AliceVision Buddha dataset (CC BY 4.0; its
README and LICENSE are next to it) at 256x144, with the same calibrated cameras as a ``transforms.json`` and as a
COLMAP text model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pycolmap
import pytest
from PIL import Image

from cvd_scene.camera_io import read_cameras_json, write_cameras_json
from cvd_scene.cameras import Cameras, axis_angle_to_rotation, intrinsics_from_fov, look_at, project, rigid
from cvd_scene.cli import main
from cvd_scene.generate.sources import Lens, capture_points, posed_cameras, read_posed_source, undistort

DATA = __import__("pathlib").Path(__file__).parent / "data" / "buddha_gray"
MODEL = DATA / "colmap" / "sparse" / "0"
VIEWS = 23


def test_transforms_json_and_the_colmap_model_give_the_same_run_cameras():
    """Both readers of the same capture agree; the run's world is level (mean camera up = +y), starts at the first
    camera looking along -z, keeps the capture's scale, and the model's points land on their observations."""
    from_json = read_posed_source(DATA)
    from_colmap = read_posed_source(MODEL)
    assert from_json.kind == "transforms.json" and from_colmap.kind == "colmap"
    assert from_json.files == tuple(f"images/{n}" for n in from_colmap.files)  # natural file-name order, both
    a, b = posed_cameras(from_json), posed_cameras(from_colmap)
    assert a.num_frames == b.num_frames == VIEWS and (a.width, a.height) == (256, 144)
    assert np.abs(a.world_from_cam - b.world_from_cam).max() < 1e-6
    assert np.abs(a.K - b.K).max() < 1e-4
    c2w = b.world_from_cam[0]  # [F, 4, 4]
    up = (-c2w[:, :3, 1]).mean(axis=0)
    assert np.abs(up / np.linalg.norm(up) - [0, 1, 0]).max() < 1e-9
    assert np.abs(c2w[0, :3, 3]).max() < 1e-9
    forward = c2w[0, :3, 2]
    assert forward[0] == pytest.approx(0, abs=1e-9) and forward[2] < 0
    src_c = from_colmap.world_from_cam[:, :3, 3]
    assert np.linalg.norm(c2w[5, :3, 3] - c2w[17, :3, 3]) == pytest.approx(np.linalg.norm(src_c[5] - src_c[17]))
    # Every observation of the model's points, projected with the run's cameras: the conversion is exact.
    run_from_source = np.asarray(b.extras["import"]["run_from_source"])
    rec = pycolmap.Reconstruction(str(MODEL))
    errors = []
    for f, name in enumerate(from_colmap.files):
        image = next(im for im in rec.images.values() if im.name == name)
        for p in image.points2D:
            if p.has_point3D():
                x = run_from_source[:3, :3] @ rec.points3D[p.point3D_id].xyz + run_from_source[:3, 3]
                uv, depth = project(x[None], c2w[f], b.K[0, f])
                errors.append(np.linalg.norm(uv[0] - p.xy))
                assert depth[0] > 0
    assert len(errors) > 1000 and max(errors) < 1e-3


def test_applied_transform_opengl_axes_and_instant_ngp_focal(tmp_path):
    """A transforms.json whose poses went through an ``applied_transform`` (nerfstudio's axis swap and shift) and
    whose focal length is instant-ngp's ``camera_angle_x`` gives the same run cameras: the world conversion
    depends on the cameras alone; the points of its ``ply_file_path`` follow them."""
    doc = json.loads((DATA / "transforms.json").read_text())
    applied = rigid(axis_angle_to_rotation(np.array([1.0, -2.0, 0.5]), 2.0), np.array([3.0, -1.0, 0.2]))
    for fr in doc["frames"]:
        fr["transform_matrix"] = (applied @ np.asarray(fr["transform_matrix"])).tolist()
    doc["applied_transform"] = applied[:3].tolist()
    fx = doc.pop("fl_x")
    doc["fl_y"] = fx  # one focal length: instant-ngp's angle gives both
    doc["camera_angle_x"] = 2 * np.arctan(0.5 * doc["w"] / fx)
    shutil.copytree(DATA / "images", tmp_path / "images")
    # The model's points as the capture's ply_file_path, in the file's applied world (as ns-process-data writes it).
    from cvd_scene.pointcloud import write_points_ply

    colmap = read_posed_source(MODEL)
    write_points_ply(tmp_path / "sparse_pc.ply", colmap.points @ applied[:3, :3].T + applied[:3, 3], colmap.colors)
    doc["ply_file_path"] = "sparse_pc.ply"
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    got = posed_cameras(read_posed_source(tmp_path))
    want = posed_cameras(read_posed_source(DATA))
    assert np.abs(got.world_from_cam - want.world_from_cam).max() < 1e-9
    assert got.K[0, 0, 0, 0] == pytest.approx(fx)
    # Without undoing the applied transform the cameras would still be level, but the file's shift and turn
    # show in the recorded similarity.
    S_got = np.asarray(got.extras["import"]["run_from_source"])
    S_want = np.asarray(want.extras["import"]["run_from_source"])
    assert np.abs(S_got - S_want).max() < 1e-9
    # Its points land where the COLMAP model's do in the run's world (float32 in the PLY).
    xyz, rgb = capture_points(got.extras["import"])
    xyz_colmap, rgb_colmap = capture_points(posed_cameras(colmap).extras["import"])
    assert len(xyz) == 1120 and np.abs(xyz - xyz_colmap).max() < 1e-4 and (rgb == rgb_colmap).all()


def _pinhole_and_distorted(rgb: np.ndarray, lens: Lens) -> np.ndarray:
    """The picture ``rgb`` [H, W, 3] (a pinhole camera with the lens's K) as ``lens`` would have taken it: every
    distorted pixel centre is unprojected by pycolmap and looked up in ``rgb`` (bilinear)."""
    from scipy.ndimage import map_coordinates

    H, W = rgb.shape[:2]
    cam = pycolmap.Camera(model=lens.model, width=W, height=H, params=list(lens.params))
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.asarray(cam.cam_from_img(np.stack([u, v], -1).reshape(-1, 2)))  # [H*W, 2] normalised
    K = lens.pinhole_K()
    px = (rays[:, 0] * K[0, 0] + K[0, 2]).reshape(H, W)
    py = (rays[:, 1] * K[1, 1] + K[1, 2]).reshape(H, W)
    return np.stack([map_coordinates(rgb[..., c], [py - 0.5, px - 0.5], order=1, mode="nearest")
                     for c in range(3)], -1)  # fmt: skip


@pytest.mark.parametrize(
    "model, params",
    [
        ("OPENCV", (170.0, 170.0, 128.0, 72.0, -0.25, 0.06, 0.002, -0.001)),
        ("OPENCV_FISHEYE", (150.0, 150.0, 128.0, 72.0, 0.05, -0.02, 0.004, 0.0)),
    ],
)
def test_undistort_returns_the_pinhole_picture(model, params):
    """A real photograph distorted through a lens comes back to within a few grey levels (two bilinear lookups),
    while the distorted picture is far from it. Measured: OPENCV 1.9 / 7.7 levels, fisheye 2.0 / 10.0 (mean over
    the middle of the picture, 0-255; the bilinear lookups' blur of the JPEG is most of the 2)."""
    rgb = np.asarray(Image.open(DATA / "images" / "00004._g.jpg").convert("RGB"), np.float32)
    lens = Lens(model, 256, 144, params)
    distorted = _pinhole_and_distorted(rgb, lens)
    back = undistort(distorted, lens)
    inner = (slice(20, 124), slice(30, 226))
    err_back = np.abs(back - rgb)[inner].mean()
    err_distorted = np.abs(distorted - rgb)[inner].mean()
    assert err_back < 2.5, err_back
    assert err_distorted > 3 * err_back, (err_distorted, err_back)


def test_a_distorted_capture_is_imported_undistorted(tmp_path):
    """A transforms.json capture with an OPENCV lens (k1, k2, p1, p2): the run's frames are the pinhole pictures,
    the original lens is recorded, the run's cameras are pinhole with the lens's K."""
    doc = json.loads((DATA / "transforms.json").read_text())
    lens = Lens("OPENCV", 256, 144, (doc["fl_x"], doc["fl_y"], doc["cx"], doc["cy"], -0.2, 0.05, 0.001, 0.0))
    doc["frames"] = doc["frames"][:4]
    doc.update(k1=-0.2, k2=0.05, p1=0.001, p2=0.0)
    (tmp_path / "images").mkdir()
    pinholes = []
    for fr in doc["frames"]:
        rgb = np.asarray(Image.open(DATA / fr["file_path"]).convert("RGB"), np.float32)
        pinholes.append(rgb)
        Image.fromarray(np.round(_pinhole_and_distorted(rgb, lens)).astype(np.uint8)).save(
            tmp_path / fr["file_path"].replace(".jpg", ".png"))  # fmt: skip
        fr["file_path"] = fr["file_path"].replace(".jpg", ".png")
    (tmp_path / "capture").mkdir()
    shutil.move(tmp_path / "images", tmp_path / "capture" / "images")
    (tmp_path / "capture" / "transforms.json").write_text(json.dumps(doc))
    run = tmp_path / "run"
    assert main(["import", str(run), str(tmp_path / "capture"), "--quiet"]) == 0
    report = json.loads((run / "generate" / "report.json").read_text())
    assert report["lenses"] == [lens.to_dict()] and report["undistorted_frames"] == 4
    assert report["source_kind"] == "transforms.json"
    cams = read_cameras_json(run / "plan" / "cameras.json")
    assert np.abs(cams.K[0, 0] - lens.pinhole_K()).max() < 1e-9
    inner = (slice(20, 124), slice(30, 226))
    for f, want in enumerate(pinholes):
        got = np.asarray(Image.open(run / f"generate/frames/capture/{f:04d}.png"), np.float32)
        assert np.abs(got - want)[inner].mean() < 4.0, f


def test_images_n_downscale_folders(tmp_path):
    """``--downscale 2`` reads the ``images_2/`` copies with the cameras scaled to them."""
    shutil.copytree(DATA / "colmap", tmp_path / "colmap")
    shutil.copytree(DATA / "images", tmp_path / "images")
    (tmp_path / "images_2").mkdir()
    for p in sorted((DATA / "images").iterdir()):
        Image.open(p).resize((128, 72), Image.LANCZOS).save(tmp_path / "images_2" / p.name)
    full = posed_cameras(read_posed_source(tmp_path / "colmap"))
    half = posed_cameras(read_posed_source(tmp_path / "colmap", downscale=2))
    assert (half.width, half.height) == (128, 72)
    assert np.abs(half.K[..., :2, :] - full.K[..., :2, :] / 2).max() < 1e-9
    assert np.abs(half.world_from_cam - full.world_from_cam).max() < 1e-12


def test_a_binary_colmap_model_with_several_cameras(tmp_path):
    """The model written as .bin by pycolmap, with a second camera (another focal length and an OPENCV lens) for
    every other picture: per-frame pinhole K from each picture's camera, the lenses recorded, the poses unchanged."""
    text = tmp_path / "text"
    shutil.copytree(MODEL, text)
    with open(text / "cameras.txt", "a") as fh:
        fh.write("2 OPENCV 256 144 190 191 127 73 0.1 0 0 0\n")
    lines = (text / "images.txt").read_text().splitlines()
    data = [i for i, line in enumerate(lines) if not line.startswith("#")][0::2]  # IMAGE_ID ... CAMERA_ID NAME
    for i in data:
        fields = lines[i].split()
        if int(fields[9][:5]) % 2 == 0:  # 00004, 00010, ...: every other picture
            fields[8] = "2"
        lines[i] = " ".join(fields)
    (text / "images.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(text)).write(str(tmp_path / "sparse" / "0"))
    assert (tmp_path / "sparse" / "0" / "cameras.bin").is_file()
    src = read_posed_source(tmp_path, images=DATA / "images")
    assert src.kind == "colmap" and [lens.model for lens in src.lenses] == ["PINHOLE", "OPENCV"]
    assert src.lens_of_frame[:4] == (0, 1, 0, 1)
    cams = posed_cameras(src)
    assert cams.K[0, 1, 0, 0] == 190.0 and cams.K[0, 1, 1, 2] == 73.0
    assert cams.K[0, 0, 0, 0] == pytest.approx(174.119, abs=1e-3)
    want = posed_cameras(read_posed_source(MODEL))
    assert np.abs(cams.world_from_cam - want.world_from_cam).max() < 1e-9


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The real capture imported from its COLMAP model and registered with its poses (``known-poses``)."""
    run = tmp_path_factory.mktemp("capture") / "run"
    assert main(["import", str(run), str(MODEL), "--quiet", "register.min_registered_fraction=0.4"]) == 0
    assert main(["register", str(run), "--quiet"]) == 0
    return run


def test_a_real_capture_registers_with_its_own_poses(imported):
    """Measured at 256x144 (23 views all round the object; every pair matched, 22 verified): 11 of 23 frames
    registered (the others share too few SIFT matches at this size), 87 triangulated points, 1.28 deg median
    rotation between the bundle-adjusted and the capture's poses, about 10-16 s for import and register."""
    state = json.loads((imported / "run.json").read_text())
    assert state["config"]["plan"]["cameras_file"] == str(MODEL.resolve())
    assert state["config"]["register"]["pairing"] == "exhaustive"
    assert state["stages"]["generate"]["summary"]["generator"] == "imported"
    report = json.loads((imported / "generate" / "report.json").read_text())
    assert report["source_kind"] == "colmap" and report["lenses"][0]["model"] == "PINHOLE"
    assert report["undistorted_frames"] == 0
    assert state["stages"]["generate"]["summary"]["lens_models"] == ["PINHOLE"]
    frame = np.asarray(Image.open(imported / "generate/frames/buddha_gray/0000.png"), np.float32)
    source = np.asarray(Image.open(DATA / "images" / "00001._g.jpg").convert("RGB"), np.float32)
    assert np.abs(frame - source).max() == 0  # a pinhole capture's pictures pass through unchanged
    reg = json.loads((imported / "register" / "report.json").read_text())
    assert reg["mode"] == "known-poses"
    assert reg["registered"] >= 10, reg["message"]
    assert reg["rotation_error_deg_median"] < 3.0
    # The model's 1120 points join the triangulated ones as the fit's seed points, in the run's world.
    from plyfile import PlyData

    ply = PlyData.read(str(imported / "register" / "sparse_pc.ply"))["vertex"]
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], -1)
    assert reg["capture_points"] == 1120 and len(xyz) == reg["num_points"] + 1120
    cams = read_cameras_json(imported / "plan" / "cameras.json")
    S = np.asarray(cams.extras["import"]["run_from_source"])
    first = next(iter(pycolmap.Reconstruction(str(MODEL)).points3D.values())).xyz
    assert np.abs(xyz - (S[:3, :3] @ first + S[:3, 3])).sum(axis=1).min() < 1e-5


@pytest.mark.slow
def test_a_real_capture_goes_on_to_a_fit_and_the_exports(imported, tmp_path):
    """A short fit and the PLY export on the registered capture (measured: 15.2 dB held-out after 100 iterations
    from the 87 triangulated and 1120 capture points, 14.5 dB from the 87 alone; 50-70 s)."""
    run = tmp_path / "run"
    shutil.copytree(imported, run)
    assert main(["fit", str(run), "--quiet", "fit.iterations=100", "fit.time_budget_s=90"]) == 0
    assert main(["export", str(run), "--quiet", "--formats", "ply"]) == 0
    metrics = json.loads((run / "fit" / "metrics.json").read_text())
    assert metrics["psnr"] > 12, metrics["psnr"]
    assert (run / "export" / "scene.ply").stat().st_size > 1000


# ----------------------------------------------------------------------------------------------- videos


def _write_video(path, frames: np.ndarray, fps: float) -> None:
    import imageio_ffmpeg

    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", macro_block_size=1,
                                         output_params=["-crf", "0"], pix_fmt_out="yuv444p")  # fmt: skip
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _clip(n: int, w: int, h: int) -> np.ndarray:
    """[n, h, w, 3] uint8 frames whose red channel counts the frame index (3 levels a frame)."""
    out = np.zeros((n, h, w, 3), np.uint8)
    out[..., 0] = (3 * np.arange(n))[:, None, None]
    out[..., 1] = (np.arange(w) * 255 // w)[None, None, :]
    return out


def _nearest(frame: np.ndarray, clip: np.ndarray) -> int:
    """Index of the frame of ``clip`` [N, H, W, 3] closest to ``frame`` [H, W, 3] (mean absolute difference)."""
    return int(np.argmin(np.abs(clip.astype(int) - frame.astype(int)).mean(axis=(1, 2, 3))))


def _cameras(ids: tuple[str, ...], frames: int, fps: float, w: int = 64, h: int = 48) -> Cameras:
    eye = np.stack([[0.1 * k, 1.6, 0.0] for k in range(frames)])
    c2w = np.stack([look_at(eye + [0.5 * v, 0, 0], eye + [0.5 * v, 0, -3.0]) for v in range(len(ids))])
    return Cameras(c2w, intrinsics_from_fov(60.0, w, h), w, h, ids, fps=fps)


def test_video_files_are_sampled_at_the_import_fps(tmp_path):
    """Two 3 s clips at 24 fps imported at 4 fps (generate.import_fps): 12 frames each, frame k the clip's frame
    6k, ids from the file names made safe; the cameras' own fps is the default."""
    src = tmp_path / "clips"
    src.mkdir()
    clip = _clip(72, 64, 48)
    _write_video(src / "walk 1.mp4", clip, 24)
    _write_video(src / "walk-2.mp4", clip[::-1], 24)
    cams = tmp_path / "cameras.json"
    write_cameras_json(_cameras(("walk_1", "walk-2"), 12, fps=4.0), cams)
    run = tmp_path / "run"
    assert main(["import", str(run), str(src), "--cameras", str(cams), "--quiet"]) == 0  # the cameras' 4 fps
    for vid, frames in (("walk_1", clip), ("walk-2", clip[::-1])):
        got = np.stack([np.asarray(Image.open(run / f"generate/frames/{vid}/{f:04d}.png")) for f in range(12)])
        assert [_nearest(g, frames) for g in got] == list(range(0, 72, 6)), vid
        assert np.abs(got.astype(int) - frames[::6]).mean() < 1.0  # H.264 in yuv444 rounds the colours
    report = json.loads((run / "generate" / "report.json").read_text())
    assert report["source_videos"] == {"walk_1": ["walk 1.mp4"], "walk-2": ["walk-2.mp4"]}
    assert report["import_fps"] == 4.0
    # One file as SOURCE, sampled at 8 fps by the key: 24 frames, frame k the clip's frame 3k.
    write_cameras_json(_cameras(("walk_1",), 24, fps=8.0), cams)
    run = tmp_path / "run8"
    assert main(["import", str(run), str(src / "walk 1.mp4"), "--cameras", str(cams), "--quiet",
                 "generate.import_fps=8"]) == 0  # fmt: skip
    got = np.asarray(Image.open(run / "generate/frames/walk_1/0005.png"))
    assert _nearest(got, clip) == 15


def test_bad_sources_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    src = tmp_path / "clips"
    src.mkdir()
    _write_video(src / "a.mp4", _clip(24, 64, 48), 24)
    _write_video(src / "b.mp4", _clip(24, 80, 48), 24)
    cams = tmp_path / "cameras.json"
    write_cameras_json(_cameras(("a", "b"), 8, fps=8.0), cams)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(src / "a.mp4", one / "a.mp4")
    write_cameras_json(_cameras(("a",), 5, fps=8.0), tmp_path / "five.json")
    no_frames = tmp_path / "no_frames"
    no_frames.mkdir()
    (no_frames / "transforms.json").write_text(json.dumps({"fl_x": 100, "frames": []}))
    empty_model = tmp_path / "empty_model"
    shutil.copytree(MODEL, empty_model)
    (empty_model / "images.txt").write_text("# no images\n")
    (empty_model / "points3D.txt").write_text("")
    renamed = tmp_path / "renamed"
    shutil.copytree(DATA / "colmap", renamed / "colmap")
    shutil.copytree(DATA / "images", renamed / "images")
    (renamed / "images" / "00007._g.jpg").rename(renamed / "images" / "IMG_0007.jpg")
    missing_frame = tmp_path / "missing_frame"
    shutil.copytree(DATA / "images", missing_frame / "images")
    doc = json.loads((DATA / "transforms.json").read_text())
    doc["frames"][3]["file_path"] = "images/nothere.jpg"
    (missing_frame / "transforms.json").write_text(json.dumps(doc))
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    cases = [
        ([str(src), "--cameras", str(cams)], "import: the videos differ in size (a.mp4 64x48, b.mp4 80x48)"),
        ([str(broken), "--cameras", str(cams)], f"import: {broken}: not a video ffmpeg can read"),
        ([str(one), "--cameras", str(tmp_path / "five.json")], "a.mp4 gives 8 frames at the import's frame rate"),
        ([str(no_frames)], f"{no_frames / 'transforms.json'}: 'frames' must be a non-empty list"),
        ([str(empty_model)], f"{empty_model}: the COLMAP model has no registered images"),
        ([str(renamed / "colmap")], f"image '00007._g.jpg' not found in {renamed / 'images'}"),
        ([str(missing_frame)], "frames[3].file_path 'images/nothere.jpg': no such file"),
        ([str(MODEL), "--images", str(tmp_path / "nowhere")], f"--images {tmp_path / 'nowhere'}: no such folder"),
        ([str(src), "--cameras", str(cams), "--downscale", "2"], f"{src} is given with --cameras"),
        ([str(MODEL), "--downscale", "2"], f"{MODEL}: downscale 2 needs the folder {DATA / 'images_2'}"),
    ]
    for i, (args, why) in enumerate(cases):
        run = tmp_path / f"run{i}"
        assert main(["import", str(run), *args, "--quiet"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert why in err, err
        assert not run.exists()
