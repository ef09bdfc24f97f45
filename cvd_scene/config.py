"""Strict, typed configs: YAML presets and ``KEY=VALUE`` overrides into ``@dataclass(kw_only=True)`` trees.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key, the expected type and
the valid keys. Presets live in ``configs/<kind>/<name>.yaml`` at the top of the repository (or any path).
Pure Python + PyYAML; must not import torch or any stage implementation.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what was expected."""


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


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (ints to floats, lists to tuples)."""

    def fail() -> ConfigError:
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail()
    if origin in (Union, types.UnionType):
        errors = []
        for a in typing.get_args(tp):
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise fail()
    if tp is type(None):
        if value is None:
            return None
        raise fail()
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail()
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
            items = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            a = args[0] if args else Any
            items = [_convert(v, a, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise fail()
        args = typing.get_args(tp)
        if args:
            return {_convert(k, args[0], key): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, strictly: unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" Did you mean {'.'.join(filter(None, [prefix, close[0]]))!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(fields)}.{hint}")
        kwargs[k] = _convert(v, hints[k], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> Any:
    """A dataclass tree as plain JSON/YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


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
