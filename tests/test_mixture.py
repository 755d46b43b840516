"""The mixture record, its density, projection (Eqn. 2.76) and prior (Eqns. 2.21-2.25)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from conftest import tolerance
from cryogmm.grid import Grid
from cryogmm.mixture import (GaussianMixture, MixturePrior, density_at, evaluate, log_likelihood_points,
                             log_prior, project, sample_from_prior)


def _mixture(d, k=4, seed=0, spread=5.0, sigma=2.0):
    rng = np.random.default_rng(seed)
    return GaussianMixture(spread * rng.uniform(-1, 1, (k, d)), rng.dirichlet(np.full(k, 3.0)), 1 / sigma**2)


def test_projection_is_the_z_integral_of_the_rotated_density():
    # sigma = 2 voxels: the voxel sum along z of a Gaussian equals its integral to ~exp(-2 pi^2 4),
    # so the only difference is the 5-sigma truncation, below exp(-12.5) ~ 4e-6 of the peak.
    mixture = _mixture(3, k=5, seed=1, spread=6.0, sigma=2.0)
    rotation = Rotation.random(random_state=3).as_matrix()
    shift = np.array([2.5, -1.5])
    grid3 = Grid.centered((40, 40, 40), 1.0)
    moved = GaussianMixture(mixture.means_in_angstroms @ rotation.T + np.append(shift, 0.0),
                            mixture.weights, mixture.precision_per_square_angstrom)
    assert np.abs(moved.means_in_angstroms).max() < 20 - 5 * 2.0  # every component inside the box
    voxel_projection = evaluate(moved, grid3).sum(axis=0) * grid3.spacing_in_angstroms
    grid2 = Grid.centered((40, 40), 1.0)
    projected = project(mixture, rotation, shift)
    assert projected.ndim == 2
    np.testing.assert_array_equal(projected.weights, mixture.weights)
    assert projected.precision_per_square_angstrom == mixture.precision_per_square_angstrom
    analytic = evaluate(projected, grid2)
    assert np.abs(analytic - voxel_projection).max() / analytic.max() < 1e-4
    # a 3-vector shift: its z part does not show in the image
    np.testing.assert_allclose(project(mixture, rotation, np.append(shift, 7.0)).means_in_angstroms,
                               projected.means_in_angstroms, rtol=tolerance(np.float64))


def test_projection_follows_the_conventions_matrix():
    # A x lands at P_o A x: a mean on the x axis rotated by A = Rz(90)^T goes to -y
    mixture = GaussianMixture([[3.0, 0.0, 1.0]], [1.0], 0.5)
    a = Rotation.from_euler("ZYZ", [90, 0, 0], degrees=True).as_matrix().T
    np.testing.assert_allclose(project(mixture, a).means_in_angstroms, [[0.0, -3.0]], atol=1e-12)
    with pytest.raises(ValueError, match="3D"):
        project(GaussianMixture([[1.0, 2.0]], [1.0], 1.0), np.eye(3))


@pytest.mark.parametrize("d, shape", [(1, (200,)), (2, (60, 64)), (3, (40, 40, 40))])
def test_density_integrates_to_one(d, shape):
    # sigma = 2 voxels and every mean 9 sigma inside the box; with an 8-sigma cut-off the missing
    # mass is below chi2_3.sf(64) ~ 1e-13 and the Riemann sum error is negligible.
    grid = Grid.centered(shape, 0.5)
    mixture = _mixture(d, k=3, seed=d, spread=1.0, sigma=1.0)
    half = 0.5 * (min(shape) // 2 - 1)
    assert np.abs(mixture.means_in_angstroms).max() + 8 * mixture.sigma_in_angstroms < half
    total = evaluate(mixture, grid, cutoff_sigmas=8.0).sum() * grid.spacing_in_angstroms**d
    assert total == pytest.approx(1.0, abs=1e-9)
    # the default 5-sigma cut-off loses the chi-square tail of each component (to within 10%:
    # the voxel sum over the sphere's discontinuous edge is not exact)
    lost = stats.chi2(d).sf(25.0)
    total5 = evaluate(mixture, grid).sum() * grid.spacing_in_angstroms**d
    assert total5 == pytest.approx(1.0 - lost, abs=0.1 * lost)


def test_evaluate_matches_density_at_and_checks_dimension():
    mixture = _mixture(2, seed=5)
    grid = Grid((21, 23), 0.7, (-8.0, -7.0))
    for dtype in (np.float32, np.float64):
        values = evaluate(mixture, grid, cutoff_sigmas=40.0, dtype=dtype)
        assert values.dtype == dtype
        np.testing.assert_allclose(values.ravel(), density_at(mixture, grid.points()),
                                   rtol=tolerance(dtype), atol=tolerance(dtype) * values.max())
    with pytest.raises(ValueError, match="2D mixture on a 3D grid"):
        evaluate(mixture, Grid((3, 3, 3), 1.0, (0, 0, 0)))


def test_density_at_is_the_mixture_pdf():
    mixture = _mixture(3, seed=6)
    points = np.random.default_rng(0).normal(size=(50, 3)) * 4
    cov = np.eye(3) / mixture.precision_per_square_angstrom
    expected = sum(w * stats.multivariate_normal(mu, cov).pdf(points)
                   for w, mu in zip(mixture.weights, mixture.means_in_angstroms))
    np.testing.assert_allclose(density_at(mixture, points), expected, rtol=tolerance(np.float64))


@pytest.mark.parametrize("mean_prior", ["independent", "conjugate"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_log_prior_equals_scipy(mean_prior, d):
    rng = np.random.default_rng(d)
    k = 4
    prior = MixturePrior(mean_precision=0.02 if mean_prior == "independent" else 0.7,
                         center_in_angstroms=rng.normal(size=d), shape=3.0, rate=40.0,
                         concentration=2.5, mean_prior=mean_prior)
    mixture = GaussianMixture(rng.normal(scale=5, size=(k, d)), rng.dirichlet(np.ones(k)), 0.09)
    s = mixture.precision_per_square_angstrom
    # independent: mu_k ~ N(c, r^-1 I) (Eqn. 2.25); conjugate: mu_k ~ N(c, (r s)^-1 I) (Eqn. 2.22)
    mean_precision = prior.mean_precision * (s if mean_prior == "conjugate" else 1.0)
    expected = stats.multivariate_normal(prior.center_in_angstroms, np.eye(d) / mean_precision).logpdf(
        mixture.means_in_angstroms).sum()
    expected += stats.gamma(prior.shape, scale=1 / prior.rate).logpdf(s)  # Eqn. 2.23, rate b
    expected += stats.dirichlet(np.full(k, prior.concentration)).logpdf(mixture.weights)  # Eqn. 2.24
    assert log_prior(mixture, prior) == pytest.approx(expected, rel=tolerance(np.float64))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_log_likelihood_points_is_a_direct_sum(d):
    rng = np.random.default_rng(10 + d)
    mixture = _mixture(d, k=3, seed=d)
    points = rng.normal(scale=6.0, size=(40, d))
    points[0] = 200.0  # far from everything: needs the log-sum-exp
    multiplicities = rng.integers(0, 5, 40)
    cov = np.eye(d) / mixture.precision_per_square_angstrom
    log_terms = np.stack([np.log(w) + stats.multivariate_normal(mu, cov).logpdf(points).reshape(-1)
                          for w, mu in zip(mixture.weights, mixture.means_in_angstroms)], axis=1)
    per_point = np.logaddexp.reduce(log_terms, axis=1)
    assert np.isfinite(per_point[0])
    assert log_likelihood_points(mixture, points) == pytest.approx(per_point.sum(), rel=1e-12)
    assert log_likelihood_points(mixture, points, multiplicities) == pytest.approx(
        per_point @ multiplicities, rel=1e-12)
    # away from the far point the plain sum agrees
    direct = np.log(density_at(mixture, points[1:])).sum()
    assert log_likelihood_points(mixture, points[1:]) == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("mean_prior", ["independent", "conjugate"])
def test_sample_from_prior_moments(mean_prior):
    rng = np.random.default_rng(42)
    k, d, n = 3, 2, 4000
    a, b, alpha0, r = 6.0, 300.0, 2.0, 0.05
    center = np.array([10.0, -4.0])
    prior = MixturePrior(mean_precision=r, center_in_angstroms=center, shape=a, rate=b,
                         concentration=alpha0, mean_prior=mean_prior)
    draws = [sample_from_prior(rng, prior, k) for _ in range(n)]
    s = np.array([m.precision_per_square_angstrom for m in draws])
    mu = np.array([m.means_in_angstroms for m in draws])
    w = np.array([m.weights for m in draws])
    assert mu.shape == (n, k, d) and w.shape == (n, k)

    def check(sample, mean, var):
        # mean within 4 standard errors; variance within 4 standard errors of the sample variance
        sample = sample.reshape(n, -1)
        assert np.all(np.abs(sample.mean(0) - mean) < 4 * np.sqrt(var / n))
        centred = sample - sample.mean(0)
        se_var = np.sqrt(((centred**2 - centred.var(0)) ** 2).mean(0) / n)
        assert np.all(np.abs(sample.var(0, ddof=1) - var) < 4 * se_var)

    check(s, a / b, a / b**2)  # Gamma(a, rate b)
    # mu | s ~ N(c, 1/r) or N(c, 1/(r s)); E[1/s] = b / (a - 1)
    mean_var = 1 / r if mean_prior == "independent" else b / (r * (a - 1))
    check(mu - center, 0.0, mean_var)
    # symmetric Dirichlet: mean 1/K, variance (K - 1) / (K^2 (K alpha0 + 1))
    check(w, 1 / k, (k - 1) / (k**2 * (k * alpha0 + 1)))
    if mean_prior == "conjugate":  # the means' spread follows each draw's precision
        spread = ((mu - center) ** 2).mean(axis=(1, 2))
        assert np.corrcoef(spread, 1 / s)[0, 1] > 0.2


@pytest.mark.parametrize("kwargs, match", [
    (dict(means_in_angstroms=[[0.0, 0.0], [1.0, 1.0]], weights=[0.5, 0.6], precision_per_square_angstrom=1.0), "sum to one"),
    (dict(means_in_angstroms=[[0.0, 0.0], [1.0, 1.0]], weights=[1.2, -0.2], precision_per_square_angstrom=1.0), "non-negative"),
    (dict(means_in_angstroms=[[0.0, 0.0], [1.0, 1.0]], weights=[1.0], precision_per_square_angstrom=1.0), "1 weights for 2"),
    (dict(means_in_angstroms=np.zeros((2, 4)), weights=[0.5, 0.5], precision_per_square_angstrom=1.0), "shape"),
    (dict(means_in_angstroms=np.zeros((2, 2, 2)), weights=[0.5, 0.5], precision_per_square_angstrom=1.0), "shape"),
    (dict(means_in_angstroms=[[0.0, np.nan]], weights=[1.0], precision_per_square_angstrom=1.0), "finite"),
    (dict(means_in_angstroms=[[0.0, 0.0]], weights=[1.0], precision_per_square_angstrom=0.0), "precision"),
    (dict(means_in_angstroms=[[0.0, 0.0]], weights=[1.0], precision_per_square_angstrom=-2.0), "precision"),
    (dict(means_in_angstroms=[[0.0, 0.0]], weights=[1.0], precision_per_square_angstrom=np.inf), "precision"),
])
def test_mixture_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_mixture_record_is_frozen_and_normalises_shapes():
    mixture = GaussianMixture([1.0, 2.0, 3.0], [0.2, 0.3, 0.5], 4)
    assert mixture.means_in_angstroms.shape == (3, 1) and mixture.ndim == 1 and mixture.n_components == 3
    assert mixture.sigma_in_angstroms == pytest.approx(0.5)
    np.testing.assert_allclose(mixture.amplitudes(), mixture.weights * np.sqrt(4 / (2 * np.pi)))
    with pytest.raises(ValueError):
        mixture.means_in_angstroms[0, 0] = 5.0
    with pytest.raises(AttributeError):
        mixture.precision_per_square_angstrom = 2.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean_precision=0.0), "mean_precision"),
    (dict(mean_precision=1.0, shape=-1.0), "shape"),
    (dict(mean_precision=1.0, rate=np.nan), "rate"),
    (dict(mean_precision=1.0, concentration=0.0), "concentration"),
    (dict(mean_precision=1.0, mean_prior="flat"), "mean_prior"),
])
def test_prior_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixturePrior(center_in_angstroms=[0.0, 0.0], **kwargs)
