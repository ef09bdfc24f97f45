"""Property test of the command line against generated input: valid, borderline and hostile.

Hypothesis writes ``cameras.json`` files, RealEstate10K pose files, splat PLY files and ``KEY=VALUE`` overrides, runs
``plan``, ``run --until generate`` (reference renderer, tiny sizes) and ``export --from`` in-process, and checks:

* the command succeeds, or exits 2 with one line on stderr that names the injected key, file or value;
* it never raises (no traceback);
* nothing outside the run folder changes (a neighbouring folder of the user's is compared byte for byte);
* nothing inside the run folder that cvd-scene did not write is touched (a file of the user's sits in it).

About 200 examples in the default suite; ``-m slow`` runs 1,200.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvd_scene.cli import main
from cvd_scene.runfolder import RunFolder
from tests.test_inputs import TINY_GENERATE, TINY_PLAN, cameras_doc

FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------------------------- values

HOSTILE_STRINGS = ["", ".", "..", "../../../escaped", "/tmp/x/victim", "a/b", "~", "$HOME", "\x00", "é", "v" * 200]
numbers = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan]),
)
anything = st.one_of(
    numbers,
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-2, 5), max_size=3),
    st.dictionaries(st.sampled_from(["a", "x"]), st.integers(), max_size=2),
)

# Keys a run config has, each with values a user might give (the generic strategy adds hostile ones).
PLAN_KEYS = {
    "plan.num_videos": st.integers(-1, 4),
    "plan.num_frames": st.integers(-1, 4),
    "plan.width": st.sampled_from([0, 1, 7, 16, 9000, 100000]),
    "plan.height": st.sampled_from([0, 1, 9, 16]),
    "plan.fov_x_deg": st.sampled_from([0.0, 1.0, 60.0, 179.9, 180.0, -5.0]),
    "plan.fps": st.sampled_from([0.0, 8.0, math.inf, math.nan, -1.0]),
    "plan.perturb_m": st.sampled_from([0.0, 0.05, -1.0, math.nan, 1e300]),
    "plan.perturb_deg": st.sampled_from([0.0, 5.0, -1.0, math.inf]),
    "plan.pattern": st.sampled_from(["auto", "orbit", "spiral", "look-around", "nope", ""]),
    "plan.scene": st.sampled_from(["room", "table", "courtyard", "moon", None]),
    "plan.step_m": st.sampled_from([None, 0.0, 0.3, -1.0, 1e6]),
    "plan.start_m": st.sampled_from([None, [0, 1, 0], [0, 1], [1e300, 0, 0]]),
    "plan.look_at_m": st.sampled_from([None, [0, 1, 0], [0, 1, -1]]),
    "seed": st.sampled_from([0, 1, -1, 2**32, 2**64]),
    "prompt": st.sampled_from(["a red room", "", "table", "\x00", "../../x"]),
    "fit.iterations": st.sampled_from([-1, 0, 1]),
    "fit.time_budget_s": st.sampled_from([-5.0, 0.0, 1.0, None, math.nan]),
    "export.formats": st.sampled_from([["ply"], ["plyy"], [], "ply"]),
    "register.covisibility_min": st.sampled_from([-0.1, 0.2, 1.5]),
}
GENERATE_KEYS = {
    "generate.samples_per_pixel": st.sampled_from([0, 1, 2, 10**9]),
    "generate.scene": st.sampled_from(["room", "table", "courtyard", "x", None]),
    "generate.texels_per_m": st.sampled_from([0.5, 20.0, 1e9, None]),
    "generate.moving_objects": st.sampled_from([-1, 0, 1, 9, None]),
    "generate.contact_sheet_frames": st.sampled_from([0, 1, 3]),
    "generate.model": st.sampled_from(["tiny", "../../../x", "/tmp/x", "a/b"]),
    "generate.generator": st.sampled_from(["reference", "bogus"]),
}
UNKNOWN_KEYS = ["plan.nope", "nope", "plan", "plan.width.x", "fit..iterations", "generate.weights.x"]


def yaml_value(value) -> str:
    """The text of a KEY=VALUE override that parses back to ``value`` (YAML flow style)."""
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value)


@st.composite
def overrides(draw, keys: dict, max_items: int = 2):
    """(list of KEY=VALUE, {key: value}) with values from the key's own strategy or anything at all."""
    chosen = draw(st.lists(st.sampled_from(sorted(keys)), max_size=max_items, unique=True))
    items, injected = [], {}
    for key in chosen:
        value = draw(st.one_of(keys[key], anything) if draw(st.booleans()) else keys[key])
        items.append(f"{key}={yaml_value(value)}")
        injected[key] = value
    if draw(st.integers(0, 9)) == 0:
        key = draw(st.sampled_from(UNKNOWN_KEYS))
        items.append(f"{key}=1")
        injected[key] = 1
    return items, injected


# ---------------------------------------------------------------------------------------------- files

CAMERA_FIELDS = ["index", "time_s", "width", "height", "fx", "fy", "cx", "cy", "world_from_cam"]


@st.composite
def camera_files(draw):
    """(document or raw bytes, description of what was injected)."""
    doc = cameras_doc(ids=tuple(draw(st.sampled_from([("v00", "v01"), ("a", "b.c"), ("x",)]))),
                      frames=draw(st.integers(1, 3)))  # fmt: skip
    kind = draw(st.sampled_from(["valid", "top", "frame", "id", "bytes", "drop"]))
    if kind == "valid":
        return doc, {}
    if kind == "bytes":
        raw = draw(st.sampled_from([b"", b"\xff\xfe\x00", b"[" * 5000, b"{}", b"null", b"[1,2]", b'{"format": 1}']))
        return raw, {}
    doc = copy.deepcopy(doc)
    if kind == "top":
        key = draw(st.sampled_from(["fps", "extras", "videos", "format", "version", "convention"]))
        value = draw(anything)
        doc[key] = value
        return doc, {key: value}
    if kind == "id":
        vi = draw(st.integers(0, len(doc["videos"]) - 1))
        value = draw(st.one_of(st.sampled_from(HOSTILE_STRINGS), anything))
        doc["videos"][vi]["id"] = value
        return doc, {f"videos[{vi}].id": value}
    vi = draw(st.integers(0, len(doc["videos"]) - 1))
    fi = draw(st.integers(0, len(doc["videos"][vi]["frames"]) - 1))
    key = draw(st.sampled_from(CAMERA_FIELDS))
    if kind == "drop":
        del doc["videos"][vi]["frames"][fi][key]
        return doc, {f"videos[{vi}].frames[{fi}].{key}": None}
    value = draw(anything)
    doc["videos"][vi]["frames"][fi][key] = value
    return doc, {f"videos[{vi}].frames[{fi}].{key}": value}


RE10K_OK = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


@st.composite
def re10k_files(draw):
    """(text or bytes of a pose file, injected token)."""
    frames = draw(st.integers(1, 4))
    rows = [RE10K_OK.split() for _ in range(frames)]
    for i, row in enumerate(rows):
        row[0] = str(33366 * i)
    injected = None
    kind = draw(st.sampled_from(["valid", "token", "drop", "bytes"]))
    if kind == "bytes":
        return draw(st.sampled_from([b"", b"\x00\xff", b"url\n\xff\xfe"])), None
    if kind != "valid":
        r = draw(st.integers(0, frames - 1))
        c = draw(st.integers(0, 18))
        if kind == "drop":
            del rows[r][c]
        else:
            injected = draw(st.sampled_from(["1e20", "nan", "inf", "-1", "0", "1e300", "x", "40", "-3.5", "1e15"]))
            rows[r][c] = injected
    return "https://example.invalid/clip\n" + "\n".join(" ".join(r) for r in rows) + "\n", injected


# ---------------------------------------------------------------------------------------------- checks


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(args: list[str]) -> tuple[int, str]:
    """``cvd-scene ARGS`` in this process: exit status and stderr (any exception fails the test).

    The plan's two matplotlib figures (two thirds of a tiny plan's second) are left out: they show the cameras
    and take no input of their own."""
    err = io.StringIO()
    with (
        contextlib.redirect_stderr(err),
        mock.patch("cvd_scene.plan.plots.plot_trajectories"),
        mock.patch("cvd_scene.plan.plots.plot_covisibility"),
    ):
        rc = main(args)
    return rc, err.getvalue()


def names_something(line: str, names: list[str]) -> bool:
    low = line.lower()
    return any(n and n.lower() in low for n in names)


def check_outcome(rc: int, err: str, names: list[str], sandbox: Path, run_dir: Path, before: dict) -> None:
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err
    if rc == 2:
        lines = [line for line in err.strip().splitlines() if line.startswith("cvd-scene: error:")]
        assert len(lines) == 1, err
        assert names_something(lines[0], names), (lines[0], names)
    # The user's neighbouring folder and the user's file inside the run folder are untouched.
    assert files_of(sandbox / "neighbour") == before["neighbour"]
    assert (run_dir / "notes.txt").read_bytes() == before["notes"]
    outside = {p for p in sandbox.rglob("*") if run_dir not in p.parents and p != run_dir}
    assert outside == before["outside"], outside ^ before["outside"]


def setup_sandbox(sandbox: Path) -> tuple[Path, dict]:
    neighbour = sandbox / "neighbour"
    (neighbour / "victim").mkdir(parents=True)
    (neighbour / "victim" / "0000.png").write_bytes(b"user data")
    (neighbour / "escaped.mp4").write_bytes(b"user video")
    run_dir = sandbox / "a" / "b" / "run"  # ../../../ from inside the run lands in the sandbox
    run_dir.mkdir(parents=True)
    RunFolder.open(run_dir, {}, None).save()  # an empty run folder (run.json only) ...
    (run_dir / "notes.txt").write_text("the user's own notes")  # ... holding a file of the user's
    return run_dir, {"neighbour": files_of(neighbour), "notes": (run_dir / "notes.txt").read_bytes()}


def describe(injected: dict) -> list[str]:
    """What a message about an injected key or value may name: the key, its last part, or the value."""
    names = []
    for key, value in injected.items():
        names += [key, key.split(".")[-1].split("[")[0], key.split("]")[-1].lstrip(".")]
        if isinstance(value, str) and value:
            names.append(value)
        elif value is not None and not isinstance(value, (list, dict)):
            names.append(str(value))
    return names


# ---------------------------------------------------------------------------------------------- properties


def plan_property(case) -> None:
    (source, payload, injected_file), (items, injected) = case
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        run_dir, before = setup_sandbox(sandbox)
        items, injected = case[1]
        args = ["plan", str(run_dir), "--quiet", *TINY_PLAN, *items]  # overrides before the file options
        if source == "cameras":
            path = sandbox / "in" / "cams.json"
            path.parent.mkdir()
            path.write_bytes(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
            args += ["--cameras", str(path)]
        elif source == "re10k":
            path = sandbox / "in" / "clip.txt"
            path.parent.mkdir()
            path.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
            args += ["--from-re10k", str(path)]
        else:
            path = None
        before["outside"] = {p for p in sandbox.rglob("*") if run_dir not in p.parents and p != run_dir}
        rc, err = run_cli(args)
        names = describe(injected) + describe(injected_file) + ([str(path)] if path else [])
        check_outcome(rc, err, names, sandbox, run_dir, before)
        if rc == 0:
            cams = json.loads((run_dir / "plan" / "cameras.json").read_text())
            assert all((run_dir / "plan").is_dir() for _ in cams["videos"])


@st.composite
def plan_cases(draw):
    source = draw(st.sampled_from(["pattern", "pattern", "cameras", "re10k"]))
    if source == "cameras":
        doc, injected = draw(camera_files())
        file_case = (source, doc, injected)
    elif source == "re10k":
        text, token = draw(re10k_files())
        file_case = (source, text, {"token": token} if token else {})
    else:
        file_case = (source, None, {})
    keys = PLAN_KEYS if source == "pattern" else {k: v for k, v in PLAN_KEYS.items() if k.startswith(("seed", "fit", "export"))}
    return file_case, draw(overrides(keys))


def generate_property(items_injected) -> None:
    items, injected = items_injected
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        run_dir, before = setup_sandbox(sandbox)
        before["outside"] = {p for p in sandbox.rglob("*") if run_dir not in p.parents and p != run_dir}
        rc, err = run_cli(["run", str(run_dir), "--until", "generate", "--quiet", *TINY_PLAN, *TINY_GENERATE,
                           "plan.num_frames=1", "plan.num_videos=1", *items])  # fmt: skip
        check_outcome(rc, err, describe(injected), sandbox, run_dir, before)
        if rc == 0:
            assert (run_dir / "generate" / "frames").is_dir()


@st.composite
def ply_files(draw):
    """(bytes of a splat PLY, what was done to it)."""
    from cvd_scene.export import write_ply
    from tests.fit_helpers import random_gaussians

    n = draw(st.integers(0, 6))
    g = random_gaussians(n, sh_coeffs=0, seed=draw(st.integers(0, 3)))
    if n and draw(st.booleans()):
        g.means[0, 0] = draw(st.sampled_from([math.nan, math.inf, 1e30]))
    with tempfile.TemporaryDirectory() as tmp:
        write_ply(g, Path(tmp) / "x.ply")
        data = (Path(tmp) / "x.ply").read_bytes()
    cut = draw(st.sampled_from([None, None, 0, 10, 200, -7]))
    if cut is not None:
        data = data[:cut]
    if draw(st.integers(0, 5)) == 0:
        data = draw(st.sampled_from([b"hello\n", b"ply\nformat ascii 1.0\nend_header\n", b"\xff" * 40]))
    return data


def export_property(case) -> None:
    data, (items, injected), out_kind = case
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        run_dir, before = setup_sandbox(sandbox)  # here: the --out folder, holding the user's notes
        src = sandbox / "in" / "scene.ply"
        src.parent.mkdir()
        src.write_bytes(data)
        out = {"folder": run_dir, "file": run_dir / "notes.txt", "new": run_dir / "new" / "deeper"}[out_kind]
        before["outside"] = {p for p in sandbox.rglob("*") if run_dir not in p.parents and p != run_dir}
        rc, err = run_cli(["export", "--from", str(src), "--out", str(out), "--formats", "ply,splat", "--quiet", *items])
        check_outcome(rc, err, [str(src), str(out), *describe(injected)], sandbox, run_dir, before)
        if rc != 0 and out_kind == "new":
            assert not (run_dir / "new").exists()


EXPORT_KEYS = {
    "export.max_splats": st.sampled_from([None, 0, 1, 3, -1]),
    "export.spz_versions": st.sampled_from([[3], [5], []]),
    "export.camera_path_fps": st.sampled_from([0.0, 30.0, math.nan]),
}


@st.composite
def export_cases(draw):
    return draw(ply_files()), draw(overrides(EXPORT_KEYS, 1)), draw(st.sampled_from(["folder", "file", "new"]))


# The default suite: 200 examples in all (plan 110, export 75, generate 15).


@settings(FAST, max_examples=110)
@given(plan_cases())
def test_plan_on_generated_input(case):
    plan_property(case)


@settings(FAST, max_examples=75)
@given(export_cases())
def test_export_from_on_generated_files(case):
    export_property(case)


@settings(FAST, max_examples=15)
@given(overrides(GENERATE_KEYS))
def test_generate_on_generated_overrides(items_injected):
    generate_property(items_injected)


@pytest.mark.slow
@settings(SLOW, max_examples=800)
@given(plan_cases())
def test_plan_on_generated_input_many(case):
    plan_property(case)


@pytest.mark.slow
@settings(SLOW, max_examples=300)
@given(export_cases())
def test_export_from_on_generated_files_many(case):
    export_property(case)


@pytest.mark.slow
@settings(SLOW, max_examples=100)
@given(overrides(GENERATE_KEYS))
def test_generate_on_generated_overrides_many(items_injected):
    generate_property(items_injected)
