"""Array-level kernels (numba) and their plain-numpy references.

The wrappers here accept 1D, 2D or 3D grids and `(K, d)` means, and hand the numba kernels
3D arrays, so every dimension runs through the same compiled code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryogmm.grid import Grid
from cryogmm.kernels.gaussians import binned_statistics_kernel, evaluate_kernel, n_exponentials, occupied_rows

__all__ = ["BinnedStatistics", "BinnedWorkspace", "binned_statistics", "evaluate_gaussians", "as_3d"]


def as_3d(grid: Grid, means: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Shape, origin `(x, y, z)` and `(K, 3)` means of a grid of any dimension padded to 3D."""
    d = grid.ndim
    means = np.asarray(means, dtype=np.float64).reshape(-1, d)
    shape3 = (1,) * (3 - d) + grid.shape
    origin3 = np.zeros(3)
    origin3[:d] = grid.origin_in_angstroms
    means3 = np.zeros((means.shape[0], 3))
    means3[:, :d] = means
    return shape3, origin3, means3


def evaluate_gaussians(
    grid: Grid,
    means: np.ndarray,
    amplitudes: np.ndarray,
    precision: float,
    cutoff_sigmas: float = 5.0,
    dtype=np.float64,
) -> np.ndarray:
    """sum_k amplitudes[k] exp(-precision/2 |v - means[k]|^2) at every grid point v.

    Parameters
    ----------
    grid : Grid
    means : (K, d) array in Å, `(x, y, z)` order, d = grid.ndim.
    amplitudes : (K,) array.
    precision : float
        Inverse variance in 1/Å^2.
    cutoff_sigmas : float
        Components are evaluated only within this many standard deviations (thesis 3.5.1).

    Returns
    -------
    Array of `grid.shape` and `dtype`.
    """
    shape3, origin3, means3 = as_3d(grid, means)
    amplitudes = np.ascontiguousarray(amplitudes, dtype=np.float64).reshape(-1)
    if amplitudes.shape[0] != means3.shape[0]:
        raise ValueError(f"{amplitudes.shape[0]} amplitudes for {means3.shape[0]} means")
    out = np.zeros(shape3, dtype=dtype)
    evaluate_kernel(means3, amplitudes, float(precision), origin3, grid.spacing_in_angstroms,
                    float(cutoff_sigmas), out)
    return out.reshape(grid.shape)


@dataclass(frozen=True)
class BinnedStatistics:
    """Sufficient statistics of the assignments of binned counts to K components.

    n_k : (K,) counts assigned to each component (real-valued for EM);
    offset_sum : (K, d) sum of n (v - mu_k); offset_square_sum : (K,) sum of n |v - mu_k|^2,
    both relative to the means the assignments were made with;
    log_likelihood : sum_j y_j log h(v_j) for those means; n_unassigned : counts lost to the cut-off.
    """

    n_k: np.ndarray
    offset_sum: np.ndarray
    offset_square_sum: np.ndarray
    log_likelihood: float
    n_unassigned: int


class BinnedWorkspace:
    """Scratch memory for `binned_statistics` on one data set: five grids, one uniform per count,
    and the occupied span of each grid row (which depends only on the counts). Holding one per
    sampler avoids allocating them, and scanning the counts, at every step."""

    def __init__(self, counts: np.ndarray):
        shape3 = (1,) * (3 - counts.ndim) + counts.shape
        self.shape = counts.shape
        self.counts = np.ascontiguousarray(counts.reshape(shape3), dtype=np.int32)
        self.rows = occupied_rows(self.counts)
        self.work = np.empty((5,) + shape3)
        self.uniforms = np.empty(int(counts.sum(dtype=np.int64)))
        self.n_exponentials = int(n_exponentials(self.counts))


def binned_statistics(
    counts: np.ndarray,
    grid: Grid,
    means: np.ndarray,
    amplitudes: np.ndarray,
    precision: float,
    rng: np.random.Generator | None,
    cutoff_sigmas: float = 5.0,
    workspace: BinnedWorkspace | None = None,
) -> BinnedStatistics:
    """Assign the counts of `grid` to components: sampled (Gibbs, Eqn. 2.58) if `rng` is given,
    soft (EM, Eqn. 2.55) if `rng` is None. See `binned_statistics_kernel`. Pass a
    `BinnedWorkspace(counts)` made from these same counts to reuse it across calls."""
    if counts.shape != grid.shape:
        raise ValueError(f"counts of shape {counts.shape} on a grid of shape {grid.shape}")
    shape3, origin3, means3 = as_3d(grid, means)
    counts3 = np.ascontiguousarray(counts.reshape(shape3), dtype=np.int32)
    # a workspace belongs to the counts it was made from (the caller pairs them; only the shape
    # is checked here, comparing the counts would cost a pass over the grid at every step)
    if workspace is None or workspace.counts.shape != counts3.shape:
        workspace = BinnedWorkspace(counts3)
    sample = rng is not None
    exponentials = rng.standard_exponential(workspace.n_exponentials) if sample else np.empty(0)
    # Visit components in a spatial order (cells of one cut-off radius) so that consecutive
    # components touch overlapping parts of the grid (cache reuse); any order is exact.
    cell = cutoff_sigmas / np.sqrt(precision)
    c = np.floor(means3 / cell).astype(np.int64)
    order = np.lexsort((c[:, 0], c[:, 1], c[:, 2]))
    n_k, s_k, q_k, loglik, lost = binned_statistics_kernel(
        counts3, workspace.rows, means3[order], np.ascontiguousarray(np.asarray(amplitudes, dtype=np.float64)[order]),
        float(precision), origin3, grid.spacing_in_angstroms, float(cutoff_sigmas), exponentials, sample,
        workspace.work, workspace.uniforms)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return BinnedStatistics(n_k[inverse], s_k[inverse, : grid.ndim], q_k[inverse], float(loglik), int(lost))
