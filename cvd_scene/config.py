"""Strict, typed configs: YAML presets and ``KEY=VALUE`` overrides into ``@dataclass(kw_only=True)`` trees.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key, the expected type and
the valid keys. Presets live in ``configs/<kind>/<name>.yaml`` at the top of the repository (or any path).
The strict conversion itself is :mod:`cvd.dataconfig` (shared with the model configs). Pure Python + PyYAML;
must not import torch or any stage implementation.
"""

from __future__ import annotations

import difflib
import math
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
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------- checks


def check_fields(cfg: object, rules: dict[str, str]) -> None:
    """Check fields of a config dataclass against short rules; ``ValueError`` names the field and its value.

    A rule is ``">= 1"``, ``"> 0"``, ``"in [0, 1]"`` or ``"in (0, 180)"``, optionally followed by ``" or null"``
    (None allowed). Every float must be finite.
    """
    for name, rule in rules.items():
        value = getattr(cfg, name)
        nullable = rule.endswith(" or null")
        cond = rule.removesuffix(" or null")
        if value is None:
            if nullable:
                continue
            raise ValueError(f"{name} must be {rule}, got null")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")
        if cond.startswith("in "):
            lo_s, hi_s = cond[3:].strip("[]()").split(",")
            lo, hi = float(lo_s), float(hi_s)
            ok = (value >= lo if cond[3] == "[" else value > lo) and (value <= hi if cond[-1] == "]" else value < hi)
        else:
            op, bound = cond.split()
            ok = value >= float(bound) if op == ">=" else value > float(bound)
        if not ok:
            raise ValueError(f"{name} must be {rule}, got {value!r}")


def nonfinite_keys(data: object, prefix: str = "") -> list[str]:
    """Keys (dotted) of the NaN or infinite floats in a nested mapping or dataclass tree."""
    import dataclasses

    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if isinstance(data, dict):
        return [k for key, v in data.items() for k in nonfinite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(data, (list, tuple)):
        return [k for i, v in enumerate(data) for k in nonfinite_keys(v, f"{prefix}[{i}]")]
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{prefix}={data}"]
    return []


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
    base = data.pop("extends", None)  # relative to this file's folder when it names a file
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'extends' must name another {kind} preset")
    if base.endswith((".yaml", ".yml")) or os.sep in base or "/" in base:
        # A file named by a preset file is found next to it, not in the current directory.
        base = str(path.parent / Path(base).expanduser())
    return merge(load_preset_data(kind, base, _seen + (path,)), data)


def load_config(cls: type[T], kind: str, preset: str | os.PathLike | None, overrides: dict | None = None) -> T:
    """Preset (by name or path) + overrides -> a validated ``cls``. ``preset=None`` starts from the defaults."""
    data = load_preset_data(kind, preset) if preset is not None else {}
    return from_dict(cls, merge(data, overrides or {}))
