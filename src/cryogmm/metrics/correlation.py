"""Similarity of maps and images."""

from __future__ import annotations

import numpy as np


def cross_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised cross-correlation <x, y> / (|x| |y|) of two arrays (thesis Eqn. 3.3).

    Not mean-subtracted, as in the thesis: for non-negative maps it lies in [0, 1].
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays differ in size: {x.size} and {y.size}")
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / norm) if norm > 0 else 0.0
