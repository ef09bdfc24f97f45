"""Shared test setup: one torch thread per test process for reproducible timings and no oversubscription."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``: the small real data the tests need (the repository stands alone)."""
    return DATA
