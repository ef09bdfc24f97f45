"""A run folder made by an earlier version of cvd-scene, before config keys were added, resumes: its finished stages
stay finished while the new keys are at their defaults, and setting one is a config change like any other."""

from __future__ import annotations

import json

import numpy as np

from cvd_scene.cameras import opencv_to_opengl
from cvd_scene.cli import main
from cvd_scene.runfolder import config_hash

TINY = [
    "--preset", "demo", "--quiet", "plan.num_videos=2", "plan.num_frames=3", "plan.width=64", "plan.height=64",
    "plan.reference_depth=false", "plan.covisibility_width_px=16", "plan.coverage_points=1000",
    "generate.samples_per_pixel=1",
]  # fmt: skip


def _as_if_made_before(run_dir, stage: str, key: str) -> str:
    """Rewrite run.json as the version before ``<stage>.<key>`` existed would have written it: the key absent from
    the recorded config, the stage's config hash computed without it. Returns the stage's finish time."""
    path = run_dir / "run.json"
    state = json.loads(path.read_text())
    del state["config"][stage][key]
    rec = state["stages"][stage]
    upstream = {"plan": state["stages"]["plan"]["config_hash"]} if stage == "generate" else {}
    cfg = state["config"]
    rec["config_hash"] = config_hash(
        {"prompt": cfg["prompt"], "seed": cfg["seed"], "section": cfg[stage], "upstream": upstream}
    )
    path.write_text(json.dumps(state))
    return rec["finished"]


def test_a_run_made_before_a_key_existed_resumes_and_the_key_still_counts_when_set(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(run), "--until", "generate", *TINY]) == 0
    finished = _as_if_made_before(run, "generate", "memory")
    # The same command resumes: generate stays finished (not redone, not refused).
    assert main(["run", str(run), "--until", "generate", *TINY]) == 0
    state = json.loads((run / "run.json").read_text())
    assert state["stages"]["generate"]["finished"] == finished
    assert main(["generate", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["stages"]["generate"]["finished"] == finished
    # Setting the new key away from its default is a change of config, as for any other key.
    capsys.readouterr()
    assert main(["run", str(run), "--until", "generate", *TINY, "generate.memory=low"]) == 2
    assert "generate.memory" in capsys.readouterr().err


def test_a_run_whose_cameras_json_is_version_1_still_runs(tmp_path):
    """``plan/cameras.json`` version 2 added ``"poses"`` (pictures imported without poses); a run folder whose file is
    version 1, without that key, is read as before: its cameras are known and the next stage runs on them."""
    run = tmp_path / "run"
    assert main(["run", str(run), "--until", "plan", *TINY]) == 0
    path = run / "plan" / "cameras.json"
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and doc.pop("poses") == "known"
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    assert main(["run", str(run), "--until", "generate", *TINY]) == 0
    transforms = json.loads((run / "generate" / "transforms.json").read_text())
    planned = [fr["world_from_cam"] for v in doc["videos"] for fr in v["frames"]]
    assert len(transforms["frames"]) == len(planned) == 6
    got = [fr["transform_matrix"] for fr in transforms["frames"]]
    assert np.allclose(got, opencv_to_opengl(np.asarray(planned)))  # the version 1 poses, used as they are
