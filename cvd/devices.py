"""The one rule for a config's ``device`` value: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

:func:`check_device` checks the spelling (configs call it when they are loaded, without importing torch);
:func:`resolve_device` turns the value into the device a stage runs on (``auto``: the first CUDA device when torch
sees one, else the CPU) and refuses a CUDA device torch does not see, naming the config key.

A leaf module of `cvd` (the model library and cvd-scene's stages share the rule): imports nothing of the project;
torch only inside :func:`resolve_device`, so configs can check a value without loading torch.
"""

from __future__ import annotations

import re

DEVICE_RULE = "auto, cpu, cuda or cuda:N"
"""What a ``device`` value may be."""

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(device: object, key: str = "device") -> str:
    """``device`` when it is spelled ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else ``ValueError`` naming ``key``."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"{key} must be {DEVICE_RULE}, got {device!r}")
    return device


def resolve_device(device: str, key: str = "device") -> str:
    """The device to run on for a config value ``device`` (key ``key`` in errors): ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is ``cuda`` when torch sees a CUDA device, else ``cpu``. ``cuda`` or ``cuda:N`` without a CUDA device
    (or with N beyond the devices torch sees) is a ``ValueError`` that names ``key`` and what to set instead.
    """
    import torch

    check_device(device, key)
    if device == "cpu":
        return device
    available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ValueError(f"{key}={device} but torch sees no CUDA device; set {key}=cpu or {key}=auto")
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"{key}={device} but torch sees {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device
