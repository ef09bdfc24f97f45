"""One home for the run folder's paths: ``RunLayout`` names them, one reader takes ``plan/covisibility.json`` in
any video order, and no other module spells a run-folder path."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest

from cvd_scene.camera_io import write_json
from cvd_scene.paths import UnsafePathError
from cvd_scene.plan import covisibility as C
from cvd_scene.plan import planning as P
from cvd_scene.runfolder import EXPORT_FILES, RunLayout, frame_key, frame_name

REPO = Path(__file__).resolve().parents[1]


def test_layout_names_the_documented_run_folder(tmp_path):
    run = RunLayout(tmp_path)
    expected = {
        run.run_json: "run.json",
        run.report_html: "report.html",
        run.cameras: "plan/cameras.json",
        run.covisibility: "plan/covisibility.json",
        run.trajectories_png: "plan/trajectories.png",
        run.frame("v00", 3): "generate/frames/v00/0003.png",
        run.video("v01"): "generate/videos/v01.mp4",
        run.contact_sheet: "generate/contact_sheet.png",
        run.generate_transforms: "generate/transforms.json",
        run.generate_report: "generate/report.json",
        run.gt_depth("v02", 15): "generate/gt/depth/v02/0015.npy",
        run.gt_scene_glb: "generate/gt/scene.glb",
        run.sparse: "register/sparse",
        run.register_transforms: "register/transforms.json",
        run.sparse_pc: "register/sparse_pc.ply",
        run.register_report: "register/report.json",
        run.consistency: "evaluate/consistency.json",
        run.fit_gaussians: "fit/gaussians.ply",
        run.fit_frame: "fit/frame.json",
        run.fit_metrics: "fit/metrics.json",
        run.fit_eval_stem("v00", 2): "fit/eval/v00_0002",
        run.fit_view_rgb("v01", 4): "fit/views/rgb/v01/0004.png",
        run.fit_view_depth("v01", 4): "fit/views/depth/v01/0004.npy",
        run.export_file("ply"): "export/scene.ply",
        run.export_file("report"): "export/report.json",
        run.export_file("viewer"): "export/viewer.html",
    }
    assert {run.relative(p, tmp_path): rel for p, rel in expected.items()} == {r: r for r in expected.values()}
    assert frame_key("v03", 7) == "v03/0007" and frame_name("v03", 7, ".npy") == "v03/0007.npy"
    # transforms.json names frames relative to its own folder
    assert run.relative(run.frames, run.register_transforms.parent) == "../generate/frames"
    assert run.relative(run.frames, run.generate_transforms.parent) == "frames"


def test_a_stage_writing_into_its_temporary_folder_names_its_outputs_there(tmp_path):
    run = RunLayout(tmp_path)
    tmp = tmp_path / ".tmp-fit-123"
    writing = run.writing("fit", tmp)
    assert writing.fit_frame == tmp / "frame.json" and writing.fit_view_rgb("v00", 0) == tmp / "views/rgb/v00/0000.png"
    assert writing.register_transforms == run.register_transforms  # the other stages stay where they are
    assert RunLayout.of_stage("generate", tmp_path / "g").frame("v00", 1) == tmp_path / "g/frames/v00/0001.png"
    with pytest.raises(ValueError, match="'colmap'"):
        run.stage("colmap")
    with pytest.raises(ValueError, match="'png'"):
        run.export_file("png")


@pytest.mark.parametrize("vid", ["../v00", "v00/../../x", "", ".."])
def test_frame_paths_refuse_ids_that_leave_their_folder(tmp_path, vid):
    run = RunLayout(tmp_path)
    for name in (run.frame, run.gt_depth, run.fit_view_depth):
        with pytest.raises(UnsafePathError):
            name(vid, 0)


# ---------------------------------------------------------------------------------------------- covisibility


def _plan_and_covisibility():
    layout = P.scene_layout("table")
    cams = P.make_cameras(P.plan_pattern("orbit", 3, 4, P.trajectory_params(layout, "orbit")), 64, 48, 60.0)
    res = C.covisibility(cams, layout, sample_width_px=16, coverage_points=500)
    return cams, C.covisibility_to_dict(res, cams.video_ids)


def test_one_covisibility_reader_takes_the_file_in_any_video_order(tmp_path):
    from cvd_scene.generate.cvd_sampling import plan_covisibility

    cams, doc = _plan_and_covisibility()
    cov = np.asarray(doc["covisibility"])  # [V, V, F] in the plan's order
    assert not np.allclose(cov, cov[::-1, ::-1])  # reordering matters for this plan
    run = RunLayout(tmp_path)
    write_json(run.covisibility, doc)
    np.testing.assert_array_equal(C.read_covisibility(run.covisibility, cams), cov)

    order = [2, 0, 1]  # the same matrix with the videos listed in another order
    shuffled = dict(doc, videos=[doc["videos"][i] for i in order], covisibility=cov[np.ix_(order, order)].tolist())
    write_json(run.covisibility, shuffled)
    np.testing.assert_array_equal(C.read_covisibility(run.covisibility, cams), cov)
    got, source = plan_covisibility(tmp_path, cams)  # the generate stage reads it the same way
    np.testing.assert_array_equal(got, cov)
    assert source == "plan/covisibility.json"


def test_covisibility_of_other_videos_is_ignored_with_a_warning(tmp_path, caplog):
    cams, doc = _plan_and_covisibility()
    path = RunLayout(tmp_path).covisibility
    bad = {
        "other ids": dict(doc, videos=["v00", "v01", "x"]),
        "repeated id": dict(doc, videos=["v00", "v00", "v01"]),
        "other frames": dict(doc, covisibility=np.asarray(doc["covisibility"])[..., :3].tolist()),
        "no matrix": {k: v for k, v in doc.items() if k != "covisibility"},
    }
    for what, d in bad.items():
        write_json(path, d)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cvd_scene.plan.covisibility"):
            assert C.read_covisibility(path, cams) is None, what
        assert str(path) in caplog.text and "ignoring it" in caplog.text, what
    path.write_text("{not json")
    assert C.read_covisibility(path, cams) is None
    path.unlink()
    assert C.read_covisibility(path, cams) is None


# ----------------------------------------------------------------------------------------- one home for paths

_NAMES = {
    "plan", "generate", "register", "fit", "export", "evaluate", "run.json", "report.html",
    "cameras.json", "covisibility.json", "covisibility.png", "trajectories.png", "frames", "videos",
    "contact_sheet.png", "transforms.json", "gt", "depth", "scene.glb", "scene.json", "sparse", "sparse_text",
    "sparse_pc.ply", "colmap", "consistency.json", "consistency.md", "gaussians.ply", "frame.json",
    "metrics.json", "eval", "views", "rgb", "dataparser_transforms.json", *EXPORT_FILES.values(),
}  # fmt: skip
"""Names of run-folder files and folders: joined onto a path only inside runfolder.py."""


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        for i, stmt in enumerate(body):  # module/class/function docstrings and attribute docstrings
            text = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)
            if text and (i == 0 or isinstance(body[i - 1], (ast.Assign, ast.AnnAssign))):
                ids.add(id(stmt.value))
    return ids


def run_folder_paths(source: str) -> list[tuple[int, str]]:
    """(line, what) for every run-folder path spelled in ``source``: a run-folder name joined onto a path
    (``x / "plan"``, ``joinpath``/``join_inside``/``Path`` arguments), a string naming ``<stage>/...``
    outside docstrings, and inline 4-digit frame numbers (``f"{f:04d}"``)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    stages = ("plan/", "generate/", "register/", "fit/", "export/", "evaluate/", "../generate/")
    found = []

    def named(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            first = node.value.split("/")[0]
            return node.value if node.value in _NAMES or (first in _NAMES and "/" in node.value) else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and named(node.right):
            found.append((node.lineno, f'/ "{named(node.right)}"'))
        elif isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in ("joinpath", "join_inside", "Path", "join"):
                found += [(node.lineno, f'{fn}("{named(a)}")') for a in node.args if named(a)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value.startswith(stages) and " " not in node.value:
                found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            spec = node.format_spec.values
            if len(spec) == 1 and isinstance(spec[0], ast.Constant) and spec[0].value == "04d":
                found.append((node.lineno, ":04d frame number"))
    return found


def test_the_scanner_finds_each_kind_of_run_folder_path():
    bad = (
        'p = run_dir / "plan" / "cameras.json"\n'
        'q = Path(out, "gaussians.ply")\n'
        'r = join_inside(run_dir, "generate/frames")\n'
        'prefix = "../generate/frames"\n'
        'name = f"{vid}/{f:04d}.png"\n'
        'def g():\n    """Reads ``plan/cameras.json``."""\n    return x / "other.txt"\n'
    )
    assert sorted({line for line, _ in run_folder_paths(bad)}) == [1, 2, 3, 4, 5]


def test_run_folder_paths_are_spelled_only_in_runfolder():
    offenders = []
    for folder in ("cvd_scene", "plugins"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "runfolder.py" and path.parent.name == "cvd_scene":
                continue
            for line, what in run_folder_paths(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not offenders, "run-folder paths outside cvd_scene/runfolder.py (use RunLayout):\n" + "\n".join(offenders)


# ------------------------------------------------------------------------------------ export reads fit/frame.json


def test_export_places_the_camera_path_by_the_fits_frame_json(tmp_path):
    from cvd_scene.camera_io import read_cameras_json, read_json
    from cvd_scene.export.run import run_export
    from cvd_scene.fit.frames import nerfstudio_frame
    from cvd_scene.runconfig import RunConfig
    from cvd_scene.runfolder import StageRefused
    from tests.test_export import make_run

    run_dir = make_run(tmp_path, with_views=False)
    run = RunLayout(run_dir)
    frame = nerfstudio_frame(np.array([0.5, 1.0, -0.25]), 2.5)
    write_json(run.fit_frame, frame.to_json())
    stale = run.stage("fit") / "nerfstudio" / "cvd-scene" / "run" / "dataparser_transforms.json"
    write_json(stale, {"transform": np.eye(4)[:3].tolist(), "scale": 7.0})  # newest, but not the fit's frame
    config = RunConfig()
    config.export.formats = ["ply"]
    out = tmp_path / "out"
    out.mkdir()
    run_export(config, run_dir, out)
    doc = read_json(out / EXPORT_FILES["camera_path"])
    assert doc["cvd_scene"]["frame"] == "nerfstudio model frame (fit/frame.json)"
    planned = read_cameras_json(run.cameras)
    first = np.asarray(doc["keyframes"][0]["matrix"]).reshape(4, 4)
    np.testing.assert_allclose(first[:3, 3], frame.poses_to_ns(planned.world_from_cam[0, 0])[:3, 3], atol=1e-9)

    write_json(run.fit_frame, {"transform": np.eye(4)[:3].tolist(), "scale": -1.0})
    with pytest.raises(StageRefused, match=r"frame\.json is not a fit frame .*scale must be positive"):
        run_export(config, run_dir, tmp_path / "out2")
