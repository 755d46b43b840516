"""Fitting an isotropic mixture to a point cloud or to binned data (thesis 2.2-2.3).

One sampler for both algorithms of chapter 2: `algorithm="gibbs"` draws the assignments and the
parameters from their conditionals (section 2.2.3, appendix B), `algorithm="em"` uses soft
assignments and the conditionals' modes (section 2.2.2, appendix A). Data are either

- `GridCounts`: non-negative integer counts on a regular 1D/2D/3D grid (binned data, 2.3); the
  assignment step runs in the numba kernel with the k-sigma cut-off of section 3.5.1;
- `PointCloud`: points with integer multiplicities (2.2), dense numpy (small problems).

The sampler follows the package's contract: `init(rng) -> state`, `step(rng, state) -> (state,
info)`, immutable states; `cryogmm.samplers.driver.run_chain` owns the loop.

Symmetry (as in `cryogmm.samplers.projected`, thesis 4.2.2): the state holds the asymmetric unit;
the data are assigned to all copies c + S_g (mu_k - c), and the statistics of copy g are rotated
back by S_g^T and pooled onto mu_k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from cryogmm.grid import Grid
from cryogmm.kernels import BinnedStatistics, BinnedWorkspace, binned_statistics
from cryogmm.mixture import (DEFAULT_CUTOFF_SIGMAS, GaussianMixture, MixturePrior, component_log_densities, log_prior,
                             sample_from_prior)
from cryogmm.samplers.conditionals import em_update, gibbs_update
from cryogmm.samplers.projected import expand_symmetry


@dataclass(frozen=True)
class GridCounts:
    """Binned data: `counts` (int, array order of `grid.shape`) on `grid`."""

    counts: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.shape != self.grid.shape:
            raise ValueError(f"counts of shape {counts.shape} on a grid of shape {self.grid.shape}")
        if not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
            raise ValueError("counts must be non-negative integers (discretise the data first)")
        object.__setattr__(self, "counts", np.ascontiguousarray(counts, dtype=np.int32))

    @property
    def ndim(self) -> int:
        return self.grid.ndim

    @property
    def n_counts(self) -> int:
        return int(self.counts.sum(dtype=np.int64))

    def weighted_points(self) -> tuple[np.ndarray, np.ndarray]:
        occupied = self.counts.reshape(-1) > 0
        return self.grid.points()[occupied], self.counts.reshape(-1)[occupied].astype(np.float64)


@dataclass(frozen=True)
class PointCloud:
    """Points `(N, d)` in Å with integer multiplicities (default one each)."""

    points: np.ndarray
    multiplicities: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim == 1:
            points = points[:, None]
        if points.ndim != 2 or not 1 <= points.shape[1] <= 3 or not np.all(np.isfinite(points)):
            raise ValueError("points must be a finite (N, d) array with d in 1..3")
        m = np.ones(points.shape[0], dtype=np.int64) if self.multiplicities is None else np.asarray(self.multiplicities)
        if m.shape != (points.shape[0],) or not np.issubdtype(m.dtype, np.integer) or m.min() < 0:
            raise ValueError("multiplicities must be one non-negative integer per point")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "multiplicities", m.astype(np.int64))

    @property
    def ndim(self) -> int:
        return self.points.shape[1]

    @property
    def n_counts(self) -> int:
        return int(self.multiplicities.sum())

    def weighted_points(self) -> tuple[np.ndarray, np.ndarray]:
        return self.points, self.multiplicities.astype(np.float64)


def point_cloud_statistics(data: PointCloud, mixture: GaussianMixture,
                           rng: np.random.Generator | None) -> BinnedStatistics:
    """Assignment statistics for a point cloud (Eqns. 2.35, 2.46), exact (no cut-off)."""
    x, m = data.points, data.multiplicities
    offsets = x[:, None, :] - mixture.means_in_angstroms[None]  # (N, K, d)
    d2 = (offsets**2).sum(-1)
    log_terms = component_log_densities(mixture, x)
    log_total = logsumexp(log_terms, axis=1, keepdims=True)
    log_likelihood = float(log_total[:, 0] @ m)
    resp = np.exp(log_terms - log_total)
    if rng is None:
        z = resp * m[:, None]
    else:
        z = rng.multinomial(m, resp).astype(np.float64)
    return BinnedStatistics(z.sum(0), np.einsum("nk,nkd->kd", z, offsets), (z * d2).sum(0),
                            log_likelihood, 0)


def default_prior(data: GridCounts | PointCloud, **overrides) -> MixturePrior:
    """The thesis' defaults (section 3.1.5): r is the precision of one isotropic Gaussian fitted
    to the data; a = 10, b = 1000 Å^2, alpha_0 = 10. The mean prior is centred on the data's centre
    of mass (the thesis centres it on the origin, which is where it puts its data)."""
    points, weights = data.weighted_points()
    center = weights @ points / weights.sum()
    spread = float(weights @ ((points - center) ** 2).sum(1)) / weights.sum()
    settings = dict(mean_precision=data.ndim / max(spread, 1e-12), center_in_angstroms=center)
    settings.update(overrides)
    return MixturePrior(**settings)


@dataclass(frozen=True)
class MixtureState:
    mixture: GaussianMixture
    step: int = 0


def pool_symmetric_copies(stats: BinnedStatistics, operators: np.ndarray) -> BinnedStatistics:
    """Statistics of the G * K copies (g-major) as statistics of the K components of the
    asymmetric unit: counts and squares summed, offsets rotated back by S_g^T and summed."""
    g = operators.shape[0]
    k = stats.n_k.shape[0] // g
    offsets = (stats.offset_sum.reshape(g, k, -1) @ operators).sum(0)  # rows o^T S_g = (S_g^T o)^T
    return BinnedStatistics(stats.n_k.reshape(g, k).sum(0), offsets, stats.offset_square_sum.reshape(g, k).sum(0),
                            stats.log_likelihood, stats.n_unassigned)


@dataclass(frozen=True)
class MixtureFitSampler:
    """Gibbs sampler (or EM) for an isotropic mixture of `n_components` fitted to `data`.

    symmetry_operators : optional (G, 3, 3), identity first: the state is then the asymmetric unit
    of `n_components` and the model its G copies about `symmetry_center_in_angstroms` (x, y, z).
    """

    data: GridCounts | PointCloud
    n_components: int
    prior: MixturePrior
    algorithm: str = "gibbs"
    cutoff_sigmas: float = DEFAULT_CUTOFF_SIGMAS
    symmetry_operators: np.ndarray | None = None
    symmetry_center_in_angstroms: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ("gibbs", "em"):
            raise ValueError(f"algorithm must be 'gibbs' or 'em', got {self.algorithm!r}")
        if self.n_components < 1:
            raise ValueError(f"the number of components must be at least 1, got {self.n_components}")
        if self.prior.center_in_angstroms.shape[0] != self.data.ndim:
            raise ValueError("the prior's centre and the data differ in dimension")
        if self.symmetry_operators is not None:
            ops = np.asarray(self.symmetry_operators, dtype=np.float64).reshape(-1, 3, 3)
            if self.data.ndim != 3:
                raise ValueError("symmetry needs three-dimensional data")
            object.__setattr__(self, "symmetry_operators", ops)
        # scratch memory for the assignment kernel (not state: nothing survives between steps)
        workspace = BinnedWorkspace(self.data.counts) if isinstance(self.data, GridCounts) else None
        object.__setattr__(self, "_workspace", workspace)

    def full_mixture(self, mixture: GaussianMixture) -> GaussianMixture:
        """The model the data are fitted with: `mixture` itself, or its symmetric copies."""
        if self.symmetry_operators is None:
            return mixture
        return expand_symmetry(mixture, self.symmetry_operators, self.symmetry_center_in_angstroms)

    def init(self, rng: np.random.Generator, mixture: GaussianMixture | None = None) -> MixtureState:
        """Start from `mixture`, or from a draw from the prior (the thesis' initialisation)."""
        return MixtureState(mixture if mixture is not None else sample_from_prior(rng, self.prior, self.n_components))

    def statistics(self, mixture: GaussianMixture, rng: np.random.Generator | None) -> BinnedStatistics:
        """Assignment statistics of the components of `mixture` (pooled over symmetric copies)."""
        full = self.full_mixture(mixture)
        if isinstance(self.data, GridCounts):
            stats = binned_statistics(self.data.counts, self.data.grid, full.means_in_angstroms,
                                      full.amplitudes(), full.precision_per_square_angstrom,
                                      rng, self.cutoff_sigmas, self._workspace)
        else:
            stats = point_cloud_statistics(self.data, full, rng)
        return stats if full is mixture else pool_symmetric_copies(stats, self.symmetry_operators)

    def log_posterior(self, state: MixtureState) -> float:
        """log p(D | theta) + log p(theta) for the point-cloud reading of the data (Eqn. 2.30)."""
        stats = self.statistics(state.mixture, None)
        return stats.log_likelihood + log_prior(state.mixture, self.prior)

    def step(self, rng: np.random.Generator, state: MixtureState) -> tuple[MixtureState, dict]:
        """One Gibbs (or EM) step. `info["log_posterior"]` is that of the *incoming* state."""
        mixture = state.mixture
        if self.algorithm == "gibbs":
            stats = self.statistics(mixture, rng)
            new = gibbs_update(rng, mixture, stats, self.prior)
        else:
            stats = self.statistics(mixture, None)
            new = em_update(mixture, stats, self.prior)
        info = {"log_posterior": stats.log_likelihood + log_prior(mixture, self.prior),
                "sigma_in_angstroms": mixture.sigma_in_angstroms,
                "n_unassigned": stats.n_unassigned}
        return MixtureState(new, state.step + 1), info
