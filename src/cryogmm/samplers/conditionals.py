"""Conditional distributions of the mixture parameters given assignment statistics.

Gibbs sampling draws from them (Eqns. 2.47-2.51, 2.59-2.63, B.26, B.34-B.36, B.42-B.45); EM
takes their modes (Eqns. 2.34, 2.38, 2.39, A.15, A.21, A.23). Both work from the sufficient
statistics of the assignments (`cryogmm.kernels.BinnedStatistics`), relative to the means the
assignments were made with, so the data never has to be revisited.

Notes on the thesis' equations: Eqn. 2.59 writes sum_j z_jk y_j v_j where z_jk already counts the
points (we use sum_j z_jk v_j); Eqn. 2.61 writes (M + K) d where the derivation (B.35) gives
(N + K) d; Eqn. B.42 drops a factor s in the mean, which is s sum_i z_ik x_i / (s N_k + r).
"""

from __future__ import annotations

import numpy as np

from cryogmm.kernels import BinnedStatistics
from cryogmm.mixture import GaussianMixture, MixturePrior


def _mean_posterior(stats: BinnedStatistics, means: np.ndarray, precision: float,
                    prior: MixturePrior) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (per component) of the Gaussian conditional of each mu_k."""
    n_k = stats.n_k
    data_sum = n_k[:, None] * means + stats.offset_sum  # sum_i z_ik x_i
    r = prior.mean_precision
    c = prior.center_in_angstroms[None, :]
    if prior.mean_prior == "conjugate":  # Eqn. 2.47 / B.26
        post_mean = (data_sum + r * c) / (n_k + r)[:, None]
        post_precision = precision * (n_k + r)
    else:  # independent prior, Eqn. B.42 (with the factor s restored)
        post_precision = precision * n_k + r
        post_mean = (precision * data_sum + r * c) / post_precision[:, None]
    return post_mean, post_precision


def _precision_posterior(stats: BinnedStatistics, old_means: np.ndarray, new_means: np.ndarray,
                         prior: MixturePrior) -> tuple[float, float]:
    """Shape and rate of the Gamma conditional of s (Eqns. B.35-B.36, B.44-B.45)."""
    d = old_means.shape[1]
    delta = new_means - old_means
    # sum_i z_ik |x_i - mu_new|^2 from the statistics taken about mu_old
    squares = float((stats.offset_square_sum - 2 * (delta * stats.offset_sum).sum(1)
                     + stats.n_k * (delta**2).sum(1)).sum())
    n = float(stats.n_k.sum())
    shape = prior.shape + 0.5 * d * n
    rate = prior.rate + 0.5 * max(squares, 0.0)
    if prior.mean_prior == "conjugate":
        k = new_means.shape[0]
        shape += 0.5 * d * k
        rate += 0.5 * prior.mean_precision * float(((new_means - prior.center_in_angstroms) ** 2).sum())
    return shape, rate


def gibbs_update(rng: np.random.Generator, mixture: GaussianMixture, stats: BinnedStatistics,
                 prior: MixturePrior) -> GaussianMixture:
    """Draw w | z, then mu | z, s, then s | z, mu (the parameter half of one Gibbs step)."""
    weights = rng.dirichlet(stats.n_k + prior.concentration)  # Eqn. 2.51 / 2.63
    old = mixture.means_in_angstroms
    post_mean, post_precision = _mean_posterior(stats, old, mixture.precision_per_square_angstrom, prior)
    means = post_mean + rng.standard_normal(old.shape) / np.sqrt(post_precision)[:, None]
    shape, rate = _precision_posterior(stats, old, means, prior)
    precision = rng.gamma(shape, 1.0 / rate)
    return GaussianMixture(means, _renormalised(weights), precision)


def em_update(mixture: GaussianMixture, stats: BinnedStatistics, prior: MixturePrior) -> GaussianMixture:
    """The M-step: modes of the same conditionals, in the same order (Eqns. 2.34, 2.38, 2.39).

    With the conjugate mean prior this is the joint maximiser of Appendix A; with the independent
    prior it is a conditional maximisation (ECM), which still never lowers the log-posterior.
    """
    n_k = stats.n_k
    k = n_k.shape[0]
    alpha0 = prior.concentration
    weights = np.clip(n_k + alpha0 - 1.0, 0.0, None)  # Eqn. 2.39 / A.21
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(k, 1.0 / k)
    old = mixture.means_in_angstroms
    means, _ = _mean_posterior(stats, old, mixture.precision_per_square_angstrom, prior)
    shape, rate = _precision_posterior(stats, old, means, prior)
    precision = (shape - 1.0) / rate  # mode of the Gamma, Eqn. 2.38 / A.15
    return GaussianMixture(means, _renormalised(weights), precision)


def _renormalised(weights: np.ndarray) -> np.ndarray:
    weights = np.clip(weights, 0.0, None)
    return weights / weights.sum()
