"""The isotropic Gaussian mixture density (thesis Eqn. 2.7) and its prior (Eqns. 2.21-2.25).

    h(x) = sum_k w_k (s / 2 pi)^(d/2) exp(-s/2 |x - mu_k|^2)

The mixture is a frozen record; evaluating, projecting and scoring it are functions that take it.
Means are in Å, `(x, y, z)` order; the shared precision s = 1/sigma^2 is in 1/Å^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cryogmm.grid import Grid
from cryogmm.kernels import evaluate_gaussians

DEFAULT_CUTOFF_SIGMAS = 5.0


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic mixture with K components sharing one precision.

    Parameters
    ----------
    means_in_angstroms : (K, d) array
    weights : (K,) array, non-negative, summing to one
    precision_per_square_angstrom : float, s = 1/sigma^2
    """

    means_in_angstroms: np.ndarray
    weights: np.ndarray
    precision_per_square_angstrom: float

    def __post_init__(self) -> None:
        means = np.array(self.means_in_angstroms, dtype=np.float64)
        if means.ndim == 1:
            means = means[:, None]
        weights = np.array(self.weights, dtype=np.float64).reshape(-1)
        s = float(self.precision_per_square_angstrom)
        if means.ndim != 2 or not 1 <= means.shape[1] <= 3:
            raise ValueError(f"means must have shape (K, d) with d in 1..3, got {means.shape}")
        if weights.shape[0] != means.shape[0]:
            raise ValueError(f"{weights.shape[0]} weights for {means.shape[0]} components")
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(weights))):
            raise ValueError("mixture means and weights must be finite")
        if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, rtol=1e-6):
            raise ValueError("mixture weights must be non-negative and sum to one")
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"precision must be positive and finite, got {s}")
        means.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "means_in_angstroms", means)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "precision_per_square_angstrom", s)

    @property
    def n_components(self) -> int:
        return self.means_in_angstroms.shape[0]

    @property
    def ndim(self) -> int:
        return self.means_in_angstroms.shape[1]

    @property
    def sigma_in_angstroms(self) -> float:
        return 1.0 / np.sqrt(self.precision_per_square_angstrom)

    def amplitudes(self) -> np.ndarray:
        """w_k (s / 2 pi)^(d/2): the value of each component at its own mean."""
        s = self.precision_per_square_angstrom
        return self.weights * (s / (2 * np.pi)) ** (self.ndim / 2)


def evaluate(mixture: GaussianMixture, grid: Grid, cutoff_sigmas: float = DEFAULT_CUTOFF_SIGMAS,
             dtype=np.float64) -> np.ndarray:
    """Density h(v) (1/Å^d, integrates to one) at every voxel centre of `grid`."""
    if grid.ndim != mixture.ndim:
        raise ValueError(f"{mixture.ndim}D mixture on a {grid.ndim}D grid")
    return evaluate_gaussians(grid, mixture.means_in_angstroms, mixture.amplitudes(),
                              mixture.precision_per_square_angstrom, cutoff_sigmas, dtype)


def density_at(mixture: GaussianMixture, points: np.ndarray) -> np.ndarray:
    """Exact density at arbitrary `(N, d)` points (no cut-off; dense, for small problems)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, mixture.ndim)
    d2 = ((points[:, None, :] - mixture.means_in_angstroms[None]) ** 2).sum(-1)
    return np.exp(-0.5 * mixture.precision_per_square_angstrom * d2) @ mixture.amplitudes()


def project(mixture: GaussianMixture, rotation: np.ndarray,
            translation_in_angstroms: np.ndarray | None = None) -> GaussianMixture:
    """The 2D mixture seen in an image: means P_o (R mu_k + t), same weights and precision.

    This is exact for isotropic Gaussians (Eqn. 2.76): the marginal of N(mu, s^-1 I) over z is
    N(P_o mu, s^-1 I) in 2D. `rotation` is the (3, 3) matrix A of CONVENTIONS.md;
    `translation_in_angstroms` is the in-plane shift (2,) or (3,) applied after rotating.
    """
    if mixture.ndim != 3:
        raise ValueError("only 3D mixtures can be projected")
    moved = mixture.means_in_angstroms @ np.asarray(rotation, dtype=np.float64).T
    if translation_in_angstroms is not None:
        t = np.asarray(translation_in_angstroms, dtype=np.float64).reshape(-1)
        moved[:, : t.shape[0]] += t
    return GaussianMixture(moved[:, :2], mixture.weights, mixture.precision_per_square_angstrom)


@dataclass(frozen=True, kw_only=True)
class MixturePrior:
    """Hyperparameters of the prior (Eqns. 2.21-2.25).

    mean_precision : r. With `mean_prior="independent"` (Eqn. 2.25, the thesis' final algorithm)
        mu_k ~ N(center, r^-1 I) and r is in 1/Å^2; with `"conjugate"` (Eqn. 2.22)
        mu_k ~ N(center, (r s)^-1 I) and r is dimensionless.
    shape, rate : a, b of the Gamma prior on s (Eqn. 2.23); rate in Å^2 (a/b is the mean
        precision; the defaults a = 10, b = 1000 Å^2 give a typical sigma of 10 Å).
    concentration : alpha_0 of the symmetric Dirichlet prior on the weights (Eqn. 2.24).
    center_in_angstroms : where the mean prior is centred (the thesis uses the origin).
    """

    mean_precision: float
    center_in_angstroms: np.ndarray
    shape: float = 10.0
    rate: float = 1000.0
    concentration: float = 10.0
    mean_prior: str = "independent"

    def __post_init__(self) -> None:
        center = np.array(self.center_in_angstroms, dtype=np.float64).reshape(-1)
        center.setflags(write=False)
        object.__setattr__(self, "center_in_angstroms", center)
        for name in ("mean_precision", "shape", "rate", "concentration"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"prior hyperparameter {name} must be positive, got {value}")
        if self.mean_prior not in ("independent", "conjugate"):
            raise ValueError(f"mean_prior must be 'independent' or 'conjugate', got {self.mean_prior!r}")


def sample_from_prior(rng: np.random.Generator, prior: MixturePrior, n_components: int) -> GaussianMixture:
    """Draw (mu, s, w) from the prior: the thesis' initialisation (section 3.1.2)."""
    d = prior.center_in_angstroms.shape[0]
    s = rng.gamma(prior.shape, 1.0 / prior.rate)
    mean_var = 1.0 / prior.mean_precision
    if prior.mean_prior == "conjugate":
        mean_var /= s
    means = prior.center_in_angstroms + np.sqrt(mean_var) * rng.standard_normal((n_components, d))
    weights = rng.dirichlet(np.full(n_components, prior.concentration))
    return GaussianMixture(means, weights, s)


def log_prior(mixture: GaussianMixture, prior: MixturePrior) -> float:
    """log p(mu | s) + log p(s) + log p(w), normalised (Eqns. 2.22-2.25)."""
    K, d = mixture.means_in_angstroms.shape
    s = mixture.precision_per_square_angstrom
    a, b, alpha0 = prior.shape, prior.rate, prior.concentration
    tau = prior.mean_precision * (s if prior.mean_prior == "conjugate" else 1.0)
    sq = float(((mixture.means_in_angstroms - prior.center_in_angstroms) ** 2).sum())
    lp_means = 0.5 * K * d * np.log(tau / (2 * np.pi)) - 0.5 * tau * sq
    lp_precision = a * np.log(b) - math.lgamma(a) + (a - 1) * np.log(s) - b * s
    w = np.clip(mixture.weights, 1e-300, None)
    lp_weights = math.lgamma(K * alpha0) - K * math.lgamma(alpha0) + (alpha0 - 1) * float(np.log(w).sum())
    return float(lp_means + lp_precision + lp_weights)


def component_log_densities(mixture: GaussianMixture, points: np.ndarray) -> np.ndarray:
    """(N, K) array of log(w_k N(x_i | mu_k, s^-1 I)), exact (no cut-off; dense, small problems)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, mixture.ndim)
    s = mixture.precision_per_square_angstrom
    d2 = ((points[:, None, :] - mixture.means_in_angstroms[None]) ** 2).sum(-1)
    with np.errstate(divide="ignore"):
        log_weights = np.log(mixture.weights)
    return log_weights[None] + 0.5 * mixture.ndim * np.log(s / (2 * np.pi)) - 0.5 * s * d2


def log_likelihood_points(mixture: GaussianMixture, points: np.ndarray,
                          multiplicities: np.ndarray | None = None) -> float:
    """sum_i m_i log h(x_i) for a point cloud (Eqn. 2.32), exact, with log-sum-exp."""
    from scipy.special import logsumexp  # here: scipy.special is 0.1 s of every process's start-up

    per_point = logsumexp(component_log_densities(mixture, points), axis=1)
    m = np.ones(per_point.shape[0]) if multiplicities is None else np.asarray(multiplicities, dtype=np.float64)
    return float(per_point @ m)
