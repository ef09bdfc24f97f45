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
