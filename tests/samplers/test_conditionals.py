"""The Gibbs conditionals and EM modes of the mixture parameters (thesis 2.2.2-2.3, App. A, B).

Statistics are built by hand from a small labelled point cloud, so every expected value below is
computed from the points themselves (sum_i z_ik x_i, sum_i z_ik |x_i - mu_k|^2), independently of
the identities the implementation uses to work from statistics about the old means.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tolerance
from cryogmm.kernels import BinnedStatistics
from cryogmm.mixture import GaussianMixture, MixturePrior
from cryogmm.samplers.conditionals import _precision_posterior, em_update, gibbs_update

D = 2
OLD_MEANS = np.array([[1.0, 2.0], [-3.0, 0.5], [4.0, -4.0]])
OLD_PRECISION = 0.3
CENTER = np.array([0.5, -0.25])
N_DRAWS = 20000


def _labelled_points():
    """40 points around (2, 1), 3 around (-4, 0) and none for the third component."""
    rng = np.random.default_rng(123)
    groups = [rng.normal([2.0, 1.0], 1.5, (40, D)), rng.normal([-4.0, 0.0], 1.5, (3, D)), np.zeros((0, D))]
    return groups


def _hard_statistics(groups):
    n_k = np.array([float(len(g)) for g in groups])
    offset_sum = np.array([(g - m).sum(0) for g, m in zip(groups, OLD_MEANS)])
    offset_square_sum = np.array([((g - m) ** 2).sum() for g, m in zip(groups, OLD_MEANS)])
    return BinnedStatistics(n_k, offset_sum, offset_square_sum, 0.0, 0)


def _prior(mean_prior):
    # r is in 1/Å^2 for the independent prior and dimensionless for the conjugate one; both are
    # chosen so that the prior visibly pulls the components with few points
    r = 0.02 if mean_prior == "independent" else 0.8
    return MixturePrior(mean_precision=r, center_in_angstroms=CENTER, shape=3.0, rate=20.0,
                        concentration=2.0, mean_prior=mean_prior)


def _mixture():
    return GaussianMixture(OLD_MEANS, [0.5, 0.3, 0.2], OLD_PRECISION)


def _assert_moments(sample, mean, var, n_se=4.5):
    """Sample mean and variance (along axis 0) agree with `mean` and `var` within `n_se` standard
    errors; the standard error of the variance uses the sample's fourth central moment."""
    sample = np.asarray(sample, dtype=np.float64)
    n = sample.shape[0]
    mean = np.broadcast_to(mean, sample.shape[1:])
    var = np.broadcast_to(var, sample.shape[1:])
    assert np.all(np.abs(sample.mean(0) - mean) < n_se * np.sqrt(var / n)), (sample.mean(0), mean)
    centred = sample - sample.mean(0)
    m2 = (centred**2).mean(0)
    se_var = np.sqrt(((centred**4).mean(0) - m2**2) / n)
    assert np.all(np.abs(sample.var(0, ddof=1) - var) < n_se * se_var), (sample.var(0, ddof=1), var)


@pytest.fixture(scope="module", params=["independent", "conjugate"])
def gibbs_draws(request):
    mean_prior = request.param
    groups = _labelled_points()
    stats = _hard_statistics(groups)
    prior = _prior(mean_prior)
    mixture = _mixture()
    rng = np.random.default_rng(2024)
    draws = [gibbs_update(rng, mixture, stats, prior) for _ in range(N_DRAWS)]
    return mean_prior, groups, stats, prior, draws


def test_weights_follow_the_dirichlet_conditional(gibbs_draws):
    # Eqns. 2.51 / 2.63: w | z ~ Dirichlet(N_k + alpha_0)
    _, _, stats, prior, draws = gibbs_draws
    w = np.array([m.weights for m in draws])
    alpha = stats.n_k + prior.concentration
    total = alpha.sum()
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=tolerance(np.float64))
    _assert_moments(w, alpha / total, alpha * (total - alpha) / (total**2 * (total + 1)))


def test_means_follow_the_gaussian_conditional(gibbs_draws):
    mean_prior, groups, stats, prior, draws = gibbs_draws
    s, r, c = OLD_PRECISION, prior.mean_precision, CENTER
    n_k = stats.n_k[:, None]
    sum_x = np.array([g.sum(0) for g in groups])
    if mean_prior == "independent":  # Eqn. B.42 with the factor s: N((s sum x + r c)/(s N_k + r), 1/(s N_k + r))
        mean = (s * sum_x + r * c) / (s * n_k + r)
        var = 1 / (s * n_k + r)
    else:  # Eqns. 2.47 / B.26: N((sum x + r c)/(N_k + r), 1/(s (N_k + r)))
        mean = (sum_x + r * c) / (n_k + r)
        var = 1 / (s * (n_k + r))
    mu = np.array([m.means_in_angstroms for m in draws])
    _assert_moments(mu, mean, np.broadcast_to(var, mean.shape))
    # the coordinates and components are drawn independently
    assert abs(np.corrcoef(mu[:, 0, 0], mu[:, 0, 1])[0, 1]) < 4 / np.sqrt(N_DRAWS)
    assert abs(np.corrcoef(mu[:, 0, 0], mu[:, 1, 0])[0, 1]) < 4 / np.sqrt(N_DRAWS)


def _shape_and_rate(mean_prior, groups, prior, means):
    """Eqns. B.35-B.36 (conjugate, centred on c) and B.44-B.45 (independent), from the points."""
    n = sum(len(g) for g in groups)
    k = len(groups)
    squares = sum(((g - m) ** 2).sum() for g, m in zip(groups, means))
    shape = prior.shape + 0.5 * D * n
    rate = prior.rate + 0.5 * squares
    if mean_prior == "conjugate":
        shape += 0.5 * D * k
        rate += 0.5 * prior.mean_precision * ((means - CENTER) ** 2).sum()
    return shape, rate


def test_precision_follows_the_gamma_conditional_given_the_new_means(gibbs_draws):
    # s is drawn given the means drawn in the same update: E[s | mu] = a~/b~, Var[s | mu] = a~/b~^2,
    # so E[s - a~/b~(mu)] = 0 and E[(s - a~/b~(mu))^2 - a~/b~(mu)^2] = 0 over the draws.
    mean_prior, groups, _, prior, draws = gibbs_draws
    s = np.array([m.precision_per_square_angstrom for m in draws])
    shape_rate = np.array([_shape_and_rate(mean_prior, groups, prior, m.means_in_angstroms) for m in draws])
    conditional_mean = shape_rate[:, 0] / shape_rate[:, 1]
    conditional_var = shape_rate[:, 0] / shape_rate[:, 1] ** 2
    residual = s - conditional_mean
    assert abs(residual.mean()) < 4.5 * residual.std() / np.sqrt(N_DRAWS)
    excess = residual**2 - conditional_var
    assert abs(excess.mean()) < 4.5 * excess.std() / np.sqrt(N_DRAWS)
    # the conditional is far from the prior Gamma(a, b) (mean a/b = 0.15): the data count
    assert abs(conditional_mean.mean() - prior.shape / prior.rate) > 0.05
    assert s.std() > 0


@pytest.mark.parametrize("mean_prior", ["independent", "conjugate"])
def test_precision_posterior_helper_from_statistics_about_the_old_means(mean_prior):
    groups = _labelled_points()
    stats = _hard_statistics(groups)
    prior = _prior(mean_prior)
    new_means = OLD_MEANS + np.array([[0.7, -0.2], [1.5, 2.0], [-0.3, 0.1]])
    shape, rate = _precision_posterior(stats, OLD_MEANS, new_means, prior)
    expected_shape, expected_rate = _shape_and_rate(mean_prior, groups, prior, new_means)
    assert shape == pytest.approx(expected_shape, rel=tolerance(np.float64))
    assert rate == pytest.approx(expected_rate, rel=tolerance(np.float64))
    # drawing through numpy's (shape, scale) parametrisation with scale = 1 / rate
    rng = np.random.default_rng(0)
    draws = rng.gamma(shape, 1.0 / rate, 20000)
    _assert_moments(draws, shape / rate, shape / rate**2)


def _soft_case():
    """Points with random responsibilities r_ik (rows summing to one)."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 3.0, (60, D)) + np.array([1.0, -1.0])
    resp = rng.dirichlet([2.0, 1.0, 0.5], 60)
    n_k = resp.sum(0)
    offset_sum = np.array([(resp[:, k, None] * (x - OLD_MEANS[k])).sum(0) for k in range(3)])
    offset_square_sum = np.array([(resp[:, k] * ((x - OLD_MEANS[k]) ** 2).sum(1)).sum() for k in range(3)])
    return x, resp, BinnedStatistics(n_k, offset_sum, offset_square_sum, 0.0, 0)


def test_em_update_is_the_joint_mode_for_the_conjugate_prior():
    x, resp, stats = _soft_case()
    prior = _prior("conjugate")
    a, b, r, alpha0 = prior.shape, prior.rate, prior.mean_precision, prior.concentration
    n_k = resp.sum(0)
    n, k = n_k.sum(), 3
    means = (resp.T @ x + r * CENTER) / (n_k + r)[:, None]  # Eqn. A.23 (prior centred on c)
    weights = (n_k + alpha0 - 1) / (n + k * (alpha0 - 1))  # Eqn. A.21
    squares = sum((resp[:, j] * ((x - means[j]) ** 2).sum(1)).sum() for j in range(k))
    precision = ((n + k) * D + 2 * (a - 1)) / (squares + r * ((means - CENTER) ** 2).sum() + 2 * b)  # A.15
    result = em_update(_mixture(), stats, prior)
    tol = tolerance(np.float64)
    np.testing.assert_allclose(result.means_in_angstroms, means, rtol=tol)
    np.testing.assert_allclose(result.weights, weights, rtol=tol)
    assert result.precision_per_square_angstrom == pytest.approx(precision, rel=tol)


def test_em_update_for_the_independent_prior_is_conditional_maximisation():
    # ECM: the mean maximises given the old precision, then the precision given the new means
    x, resp, stats = _soft_case()
    prior = _prior("independent")
    a, b, r = prior.shape, prior.rate, prior.mean_precision
    n_k = resp.sum(0)
    s = OLD_PRECISION
    means = (s * resp.T @ x + r * CENTER) / (s * n_k + r)[:, None]
    squares = sum((resp[:, j] * ((x - means[j]) ** 2).sum(1)).sum() for j in range(3))
    precision = (n_k.sum() * D + 2 * (a - 1)) / (squares + 2 * b)
    result = em_update(_mixture(), stats, prior)
    tol = tolerance(np.float64)
    np.testing.assert_allclose(result.means_in_angstroms, means, rtol=tol)
    assert result.precision_per_square_angstrom == pytest.approx(precision, rel=tol)
    alpha0 = prior.concentration
    np.testing.assert_allclose(result.weights, (n_k + alpha0 - 1) / (n_k.sum() + 3 * (alpha0 - 1)), rtol=tol)


def test_em_weights_with_a_sparse_dirichlet_are_clipped_at_zero():
    # alpha_0 < 1: N_k + alpha_0 - 1 < 0 for an empty component, whose mode weight is 0
    _, _, stats = _soft_case()
    empty = BinnedStatistics(np.append(stats.n_k, 0.0), np.vstack([stats.offset_sum, [[0.0, 0.0]]]),
                             np.append(stats.offset_square_sum, 0.0), 0.0, 0)
    prior = MixturePrior(mean_precision=0.02, center_in_angstroms=CENTER, concentration=0.5)
    mixture = GaussianMixture(np.vstack([OLD_MEANS, [[9.0, 9.0]]]), [0.25] * 4, OLD_PRECISION)
    result = em_update(mixture, empty, prior)
    assert result.weights[-1] == 0.0
    expected = (stats.n_k - 0.5) / (stats.n_k - 0.5).sum()
    np.testing.assert_allclose(result.weights[:3], expected, rtol=tolerance(np.float64))


@pytest.mark.parametrize("mean_prior", ["independent", "conjugate"])
def test_em_update_is_the_mode_of_the_gibbs_conditionals(mean_prior):
    # The Gibbs draws of the means concentrate on the EM means as the data grows (thesis 2.2.3);
    # here, directly: the EM means are the Gaussian conditional's mean for the same statistics.
    groups = _labelled_points()
    stats = _hard_statistics(groups)
    prior = _prior(mean_prior)
    em = em_update(_mixture(), stats, prior)
    rng = np.random.default_rng(3)
    mu = np.array([gibbs_update(rng, _mixture(), stats, prior).means_in_angstroms for _ in range(4000)])
    se = mu.std(0) / np.sqrt(mu.shape[0])
    assert np.all(np.abs(mu.mean(0) - em.means_in_angstroms) < 4.5 * se)
