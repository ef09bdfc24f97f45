"""Presets, overrides and strict typing of configs."""

from __future__ import annotations

import pytest

from cvd_scene.config import ConfigError, from_dict, load_config, parse_overrides, preset_names, to_dict
from cvd_scene.runconfig import RunConfig


def test_demo_preset_loads_and_round_trips():
    cfg = load_config(RunConfig, "run", "demo")
    assert cfg.generate.generator == "reference"
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_overrides_are_typed():
    cfg = load_config(RunConfig, "run", "demo", parse_overrides(["fit.iterations=17", "plan.num_videos=6", "prompt=a red room"]))
    assert cfg.fit.iterations == 17 and cfg.plan.num_videos == 6 and cfg.prompt == "a red room"
    # an int is accepted where a float is expected, and converted
    assert load_config(RunConfig, "run", "demo", parse_overrides(["plan.fov_x_deg=70"])).plan.fov_x_deg == 70.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("fit.iterationz=3", ["fit.iterationz", "Did you mean 'fit.iterations'"]),
        ("fit.iterations=abc", ["fit.iterations", "expected int", "'abc'"]),
        ("generate.generator=dall-e", ["generate.generator", "'reference' | 'cvd'"]),
        ("plan.num_videos=2.5", ["plan.num_videos", "expected int"]),
        ("nosuch=1", ["nosuch", "valid keys"]),
    ],
)
def test_bad_override_names_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, "run", "demo", parse_overrides([override]))
    for w in words:
        assert w in str(e.value)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown run preset 'dem0'.*demo.*Did you mean 'demo'"):
        load_config(RunConfig, "run", "dem0")
    assert "demo" in preset_names("run")


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["fit.iterations"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("plan:\n  num_videos: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(RunConfig, "run", str(p))


def test_preset_extends_another(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: demo\nfit:\n  iterations: 5\n")
    cfg = load_config(RunConfig, "run", str(p))
    assert cfg.fit.iterations == 5 and cfg.generate.generator == "reference"


@pytest.mark.parametrize("name", ["demo", "default", "quality"])
def test_every_shipped_preset_loads(name):
    cfg = load_config(RunConfig, "run", name)
    assert cfg.plan.num_videos >= 1 and cfg.fit.iterations > 0
    assert name in preset_names("run")


FIT_AND_EXPORT_CASES = [
    ("fit.iterations=0", ["fit", "iterations must be >= 1, got 0"]),
    ("fit.eval_every_k=1", ["fit", "eval_every_k must be >= 2"]),
    ("fit.sh_degree=4", ["fit", "sh_degree must be in [0, 3], got 4"]),
    ("fit.threads=0", ["fit", "threads must be >= 1 or null"]),
    ("fit.time_budget_s=.nan", ["fit", "time_budget_s", "nan"]),
    ("fit.device=gpu", ["fit", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"]),
    ("fit.device=cuda:x", ["fit", "device", "'cuda:x'"]),
    ("export.formats=[ply,plyy]", ["export", "unknown export format(s) ['plyy']"]),
    ("export.formats=[]", ["export", "no export format given"]),
    ("export.spz_versions=[3,5]", ["export", "spz_versions may hold 3 and 4, got [3, 5]"]),
    ("export.max_splats=0", ["export", "max_splats must be >= 1 or null, got 0"]),
    ("export.collider_max_triangles=0", ["export", "collider_max_triangles must be >= 1, got 0"]),
    ("export.frame=sideways", ["export", "frame must be one of run, readers, got 'sideways'"]),
    ("export.device=tpu", ["export", "device must be auto, cpu, cuda or cuda:N, got 'tpu'"]),
]


@pytest.mark.parametrize(("override", "words"), FIT_AND_EXPORT_CASES, ids=[c[0] for c in FIT_AND_EXPORT_CASES])
def test_fit_and_export_settings_are_refused_when_the_config_is_loaded(override, words):
    """Every check of the fit and export sections runs in their config's ``__post_init__``: a bad value is a
    ConfigError naming the section and the key when the run config is loaded, before any stage could run."""
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, "run", "demo", parse_overrides([override]))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_fit_and_export_configs_normalise_and_accept_every_device_spelling():
    from cvd_scene.export.config import ExportConfig
    from cvd_scene.fit.config import FitConfig

    assert ExportConfig(formats=["PLY", " splat", "ply"]).formats == ["ply", "splat"]
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert FitConfig(device=device).device == ExportConfig(device=device).device == device
    with pytest.raises(ValueError, match="method must be cvd-scene or cvd-scene-nerf, got 'nerfacto'"):
        FitConfig(method="nerfacto")
    with pytest.raises(ValueError, match="appearance must be none, per-frame, per-video, got 'per-pixel'"):
        FitConfig(appearance="per-pixel")
