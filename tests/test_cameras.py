"""The camera type, every convention conversion (round trips) and the camera file readers."""

from __future__ import annotations

import numpy as np
import pytest

from cvd_scene.camera_io import (
    CameraFileError,
    cameras_from_dict,
    cameras_to_dict,
    parse_re10k,
    read_cameras_json,
    read_re10k,
    read_transforms_json,
    write_cameras_json,
    write_transforms_json,
)
from cvd_scene.cameras import (
    Cameras,
    axis_angle_to_rotation,
    check_rotations,
    from_colmap,
    from_model_poses,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    project,
    quaternion_to_rotation,
    rigid,
    rotation_to_quaternion,
    to_colmap,
    to_model_poses,
)


def random_poses(rng, shape):
    axis = rng.normal(size=shape + (3,))
    angle = rng.uniform(-np.pi, np.pi, size=shape)
    return rigid(axis_angle_to_rotation(axis, angle), rng.normal(size=shape + (3,)))


def random_cameras(rng, V=3, F=5, w=64, h=48):
    return Cameras(random_poses(rng, (V, F)), intrinsics_from_fov(60, w, h), w, h)


def test_look_at_axes_follow_opencv_and_y_up():
    T = look_at(np.array([0.0, 1.5, 0.0]), np.array([0.0, 1.5, -2.0]))
    check_rotations(T)
    R = T[:3, :3]
    np.testing.assert_allclose(R[:, 2], [0, 0, -1], atol=1e-12)  # camera +z forward
    np.testing.assert_allclose(R[:, 1], [0, -1, 0], atol=1e-12)  # camera +y (image down) is world down
    np.testing.assert_allclose(R[:, 0], [1, 0, 0], atol=1e-12)  # looking along -z, right is +x
    # a point in front of the camera and above the centre projects above the image centre
    K = intrinsics_from_fov(90, 100, 100)
    uv, z = project(np.array([[0.0, 2.0, -2.0]]), T, K)
    assert z[0] > 0 and uv[0, 1] < 50


def test_opengl_round_trip_and_axes():
    rng = np.random.default_rng(0)
    T = random_poses(rng, (4, 6))
    np.testing.assert_allclose(opengl_to_opencv(opencv_to_opengl(T)), T, atol=1e-12)
    gl = opencv_to_opengl(T)
    np.testing.assert_allclose(gl[..., :3, 2], -T[..., :3, 2])  # OpenGL looks down its -z
    np.testing.assert_allclose(gl[..., :3, 3], T[..., :3, 3])


def test_colmap_round_trip():
    rng = np.random.default_rng(1)
    T = random_poses(rng, (7,))
    q, t = to_colmap(T)
    np.testing.assert_allclose(from_colmap(q, t), T, atol=1e-10)
    # cam_from_world maps the camera centre to the origin
    R = quaternion_to_rotation(q)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", R, T[:, :3, 3]) + t, 0, atol=1e-10)


def test_quaternion_round_trip_including_180_degrees():
    rng = np.random.default_rng(2)
    R = axis_angle_to_rotation(rng.normal(size=(50, 3)), rng.uniform(-np.pi, np.pi, 50))
    R = np.concatenate([R, axis_angle_to_rotation(np.eye(3), np.full(3, np.pi))])
    np.testing.assert_allclose(quaternion_to_rotation(rotation_to_quaternion(R)), R, atol=1e-10)


def test_model_poses_round_trip_and_first_frame_identity():
    rng = np.random.default_rng(3)
    T = random_poses(rng, (2, 8))
    M = to_model_poses(T, model_units_per_metre=0.5)
    assert M.dtype == np.float32
    np.testing.assert_allclose(M[:, 0], np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-6)
    back = from_model_poses(M, T[:, 0], model_units_per_metre=0.5)
    np.testing.assert_allclose(back, T, atol=1e-5)
    # translations scale by model units
    d_world = np.linalg.norm(T[0, 3, :3, 3] - T[0, 0, :3, 3])
    assert np.linalg.norm(M[0, 3, :3, 3]) == pytest.approx(0.5 * d_world, rel=1e-5)


def test_cameras_json_round_trip(tmp_path):
    cams = random_cameras(np.random.default_rng(4))
    write_cameras_json(cams, tmp_path / "cameras.json")
    back = read_cameras_json(tmp_path / "cameras.json")
    np.testing.assert_allclose(back.world_from_cam, cams.world_from_cam, atol=1e-12)
    np.testing.assert_allclose(back.K, cams.K)
    assert (back.width, back.height, back.video_ids) == (cams.width, cams.height, cams.video_ids)


def test_cameras_json_errors_name_the_place():
    doc = cameras_to_dict(random_cameras(np.random.default_rng(5)))
    del doc["videos"][1]["frames"][2]["fx"]
    with pytest.raises(CameraFileError, match=r"videos\[1\]\.frames\[2\] is missing key 'fx'"):
        cameras_from_dict(doc)
    doc = cameras_to_dict(random_cameras(np.random.default_rng(5)))
    doc["videos"][0]["frames"][0]["world_from_cam"][0][0] = 3.0
    with pytest.raises(CameraFileError, match="not rigid"):
        cameras_from_dict(doc)
    doc = cameras_to_dict(random_cameras(np.random.default_rng(5)))
    doc["videos"][2]["frames"].pop()
    with pytest.raises(CameraFileError, match="same count"):
        cameras_from_dict(doc)


def test_transforms_json_round_trip(tmp_path):
    cams = random_cameras(np.random.default_rng(6))
    write_transforms_json(cams, tmp_path / "transforms.json", "../generate/frames", extra={"ply_file_path": "sparse_pc.ply"})
    tf = read_transforms_json(tmp_path / "transforms.json")
    np.testing.assert_allclose(tf.cameras.world_from_cam, cams.world_from_cam, atol=1e-12)
    np.testing.assert_allclose(tf.cameras.K, cams.K)
    assert tf.file_paths[1][3] == "../generate/frames/v01/0003.png"
    assert tf.extra["ply_file_path"] == "sparse_pc.ply"


RE10K_FILES = sorted((__import__("pathlib").Path(__file__).parent / "data" / "re10k_poses").glob("*.txt"))


def test_all_re10k_files_parse_with_hand_computed_intrinsics():
    assert len(RE10K_FILES) == 10
    for path in RE10K_FILES:
        c2w, K, clip = read_re10k(path, 256, 256)
        assert c2w.shape == (16, 4, 4) and K.shape == (16, 3, 3)
        check_rotations(c2w)
        np.testing.assert_allclose(invert_rigid(c2w[0]) @ c2w[0], np.eye(4), atol=1e-12)
        assert clip.source_aspect == pytest.approx(16 / 9, rel=1e-4)
    # First pose line of 0bf152ef84195293.txt: fx=0.474812461 fy=0.844111024 cx=cy=0.5 of a 16:9 source.
    # Cover-resize 1280x720 to height 256 (x 256/720) and centre-crop the width to 256:
    #   fx = 0.474812461 * 1280 * 256/720 = 216.0924 px, fy = 0.844111024 * 720 * 256/720 = 216.0924 px,
    #   cx = 0.5 * 1280 * 256/720 - (455.11 - 256)/2 = 128.0, cy = 128.0.
    # (The released code's swapped width/height would give fx ~ 121.6, fy ~ 384.2.)
    _, K, _ = read_re10k(RE10K_FILES[0], 256, 256)
    assert K[0, 0, 0] == pytest.approx(216.0924, abs=1e-3)
    assert K[0, 1, 1] == pytest.approx(216.0924, abs=1e-3)
    assert K[0, 0, 2] == pytest.approx(128.0, abs=1e-9) and K[0, 1, 2] == pytest.approx(128.0, abs=1e-9)
    # rectangular target 320x256: scale by 256/720 still covers (455 >= 320); fx unchanged, cx at the centre
    _, K2, _ = read_re10k(RE10K_FILES[0], 320, 256)
    assert K2[0, 0, 0] == pytest.approx(216.0924, abs=1e-3) and K2[0, 0, 2] == pytest.approx(160.0)


def test_re10k_scale_and_reverse():
    c2w, _, _ = read_re10k(RE10K_FILES[0], 256, 256)
    c2w2, _, _ = read_re10k(RE10K_FILES[0], 256, 256, metres_per_unit=2.0)
    np.testing.assert_allclose(c2w2[:, :3, 3] - c2w2[0, :3, 3], 2 * (c2w[:, :3, 3] - c2w[0, :3, 3]), atol=1e-9)
    rev, _, _ = read_re10k(RE10K_FILES[0], 256, 256, reverse=True)
    # reversed: starts where the forward clip ended, relative to that end pose
    np.testing.assert_allclose(rev[-1], c2w[0] @ invert_rigid(c2w[-1]) @ c2w[0], atol=1e-9)


@pytest.mark.parametrize(
    "line, msg",
    [
        ("1 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1", r":3: expected 19 numbers"),
        ("1 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 x", r":3: could not convert"),
        ("1 0.5 0.8 0.5 0.5 0 0 2 0 0 0 0 1 0 0 0 0 1 0", r":3: .*not a rotation"),
        ("1 -0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0", r":3: focal lengths must be positive"),
    ],
)
def test_malformed_pose_line_names_line_number(line, msg):
    good = "1 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    with pytest.raises(CameraFileError, match=msg):
        parse_re10k(f"https://example.com/v\n{good}\n{line}\n", source="clip.txt")
