"""Plain-numpy references of the numba kernels, for tests only (dense, slow, obviously right)."""

from __future__ import annotations

import numpy as np

from cryogmm.grid import Grid


def _truncated_gaussians(grid: Grid, means: np.ndarray, precision: float, cutoff_sigmas: float) -> np.ndarray:
    """(n_voxels, K) matrix exp(-s/2 |v - mu_k|^2), zero beyond cutoff_sigmas standard deviations."""
    points = grid.points()
    d2 = ((points[:, None, :] - np.asarray(means, dtype=np.float64)[None]) ** 2).sum(-1)
    g = np.exp(-0.5 * precision * d2)
    if np.isfinite(cutoff_sigmas):
        g[d2 > cutoff_sigmas**2 / precision] = 0.0
    return g


def evaluate_gaussians_reference(grid, means, amplitudes, precision, cutoff_sigmas=np.inf):
    g = _truncated_gaussians(grid, means, precision, cutoff_sigmas)
    return (g @ np.asarray(amplitudes, dtype=np.float64)).reshape(grid.shape)


def soft_statistics_reference(counts, grid, means, amplitudes, precision, cutoff_sigmas=np.inf):
    """EM sufficient statistics (n_k, sum n (v - mu), sum n |v - mu|^2, log-likelihood)."""
    means = np.asarray(means, dtype=np.float64)
    weighted = _truncated_gaussians(grid, means, precision, cutoff_sigmas) * np.asarray(amplitudes)[None]
    total = weighted.sum(1)
    y = counts.reshape(-1).astype(np.float64)
    occupied = (y > 0) & (total > 0)
    resp = weighted[occupied] / total[occupied, None] * y[occupied, None]
    offsets = grid.points()[occupied][:, None, :] - means[None]
    n_k = resp.sum(0)
    s_k = (resp[..., None] * offsets).sum(0)
    q_k = (resp * (offsets**2).sum(-1)).sum(0)
    return n_k, s_k, q_k, float(y[occupied] @ np.log(total[occupied]))
