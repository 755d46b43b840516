"""Shared test helpers: the `shared_data` marker, dtype-aware tolerances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the shared data folder {SHARED_DATA} (absent in a fresh clone)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


def tolerance(dtype) -> float:
    """Relative tolerance for comparisons in `dtype` (one helper for all tests)."""
    return {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]
