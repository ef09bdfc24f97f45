"""Strict, typed configs: YAML presets and ``KEY=VALUE`` overrides into ``@dataclass(kw_only=True)`` trees.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key, the expected type and
the valid keys. Presets live in ``configs/<kind>/<name>.yaml`` at the top of the repository (or any path).
The strict conversion itself is :mod:`cvd.dataconfig` (shared with the model configs). Pure Python + PyYAML;
must not import torch or any stage implementation.
"""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path

import yaml

from cvd.dataconfig import ConfigError, from_dict, to_dict

__all__ = ["ConfigError", "from_dict", "load_config", "merge", "parse_overrides", "preset_path", "to_dict"]


def configs_dir() -> Path:
    """The folder of presets: ``$CVD_SCENE_CONFIGS`` or ``configs/`` at the top of the repository."""
    env = os.environ.get("CVD_SCENE_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "configs"


def preset_names(kind: str) -> list[str]:
    """Names of the presets of one kind (``run``, ``model``, ``train``)."""
    d = configs_dir() / kind
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def preset_path(kind: str, name_or_path: str | os.PathLike) -> Path:
    """Resolve a preset by name (``configs/<kind>/<name>.yaml``) or as a path to a YAML file."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s or "/" in s:
        p = Path(s)
        if not p.is_file():
            raise ConfigError(f"{kind} config file {p} does not exist")
        return p
    p = configs_dir() / kind / f"{s}.yaml"
    if not p.is_file():
        names = preset_names(kind)
        hint = difflib.get_close_matches(s, names, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown {kind} preset {s!r}; known presets: {', '.join(names) or '(none)'}.{extra}")
    return p


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a malformed file raises :class:`ConfigError` naming the file and line."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------- typed loading

T = typing.TypeVar("T")


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["fit.iterations=300", "prompt=a red room"]`` -> a nested mapping; values parsed as YAML scalars."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (for example fit.iterations=300)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_preset_data(kind: str, preset: str | os.PathLike, _seen: tuple = ()) -> dict:
    """The mapping of a preset, with ``extends: OTHER`` resolved (the other preset's data, updated by this one)."""
    path = preset_path(kind, preset)
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = load_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' must name another {kind} preset")
    return merge(load_preset_data(kind, base, _seen + (path,)), data)


def load_config(cls: type[T], kind: str, preset: str | os.PathLike | None, overrides: dict | None = None) -> T:
    """Preset (by name or path) + overrides -> a validated ``cls``. ``preset=None`` starts from the defaults."""
    data = load_preset_data(kind, preset) if preset is not None else {}
    return from_dict(cls, merge(data, overrides or {}))
