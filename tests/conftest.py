"""Shared test helpers: the `shared_data` and `relion` markers, dtype-aware tolerances."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


RELION_PROGRAMS = ("relion_reconstruct", "relion_project")


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason=f"needs the shared data folder {SHARED_DATA} (absent in a fresh clone)")
    missing = [name for name in RELION_PROGRAMS if shutil.which(name) is None]
    skip_relion = pytest.mark.skip(reason=f"needs RELION 3.1 ({', '.join(missing)} not on PATH; "
                                   "apt-get install -y relion)")
    for item in items:
        if "shared_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)
        if "relion" in item.keywords and missing:
            item.add_marker(skip_relion)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


def tolerance(dtype) -> float:
    """Relative tolerance for comparisons in `dtype` (one helper for all tests)."""
    return {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]
