"""The numba Gaussian kernels against their plain-numpy references (thesis 2.3, 3.5.1).

`evaluate_gaussians` and `binned_statistics(rng=None)` must equal the dense references with the
same cut-off; the sampled assignments (Eqn. 2.58) must conserve the counts, average to the soft
statistics (Eqn. 2.55) and split each grid point's counts by one multinomial draw.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from conftest import tolerance
from cryogmm.grid import Grid
from cryogmm.kernels import binned_statistics, evaluate_gaussians
from cryogmm.kernels.reference import evaluate_gaussians_reference, soft_statistics_reference

SHAPES = {1: (64,), 2: (30, 26), 3: (14, 16, 18)}
SPACING = 1.5
SIGMA = 2.5  # Å: 5 sigma is about 8 voxels


def _case(d: int, seed: int = 0):
    """A grid with a non-zero origin and 7 components: inside, near the edges, outside, and one
    more than the cut-off radius outside (which touches nothing)."""
    rng = np.random.default_rng(seed + 10 * d)
    grid = Grid(SHAPES[d], SPACING, tuple(rng.uniform(-30.0, 30.0, d)))
    lo = np.array([a[0] for a in grid.axes()])
    hi = np.array([a[-1] for a in grid.axes()])
    inside = rng.uniform(lo, hi, (3, d))
    near_low = lo + rng.uniform(-0.5, 0.5, (1, d)) * SIGMA
    near_high = hi + rng.uniform(-0.5, 0.5, (1, d)) * SIGMA
    outside = hi + 1.5 * SIGMA  # outside on every axis, but within 5 sigma of the corner
    far = lo - 20.0 * SIGMA
    means = np.vstack([inside, near_low, near_high, outside[None], far[None]])
    amplitudes = rng.uniform(0.5, 2.0, means.shape[0])
    return grid, means, amplitudes, 1.0 / SIGMA**2


def _counts(grid, means, amplitudes, precision, rng, peak=6.0):
    """Poisson counts of a mixture plus a few counts in a corner far from every component."""
    density = evaluate_gaussians_reference(grid, means, amplitudes, precision)
    counts = rng.poisson(peak * density / density.max())
    return counts.astype(np.int32)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_evaluate_equals_reference_with_the_same_cutoff(d, dtype, cutoff):
    grid, means, amplitudes, precision = _case(d)
    result = evaluate_gaussians(grid, means, amplitudes, precision, cutoff, dtype=dtype)
    expected = evaluate_gaussians_reference(grid, means, amplitudes, precision, cutoff)
    assert result.shape == grid.shape and result.dtype == np.dtype(dtype)
    assert expected.max() > 0
    np.testing.assert_allclose(result, expected, rtol=0, atol=tolerance(dtype) * expected.max())


@pytest.mark.parametrize("d", [1, 2, 3])
def test_five_sigma_cutoff_is_close_to_the_full_sum(d):
    # a component truncated at 5 sigma loses at most exp(-25/2) ~ 4e-6 of its peak at any point
    grid, means, amplitudes, precision = _case(d, seed=1)
    full = evaluate_gaussians_reference(grid, means, amplitudes, precision)
    cut = evaluate_gaussians(grid, means, amplitudes, precision, 5.0)
    assert np.abs(cut - full).max() / full.max() < 1e-4
    assert np.abs(cut - full).max() > 0  # the cut-off did cut something


def test_a_single_component_is_exact():
    grid = Grid((5, 6, 7), 2.0, (-3.0, 1.0, 4.0))
    mean = np.array([[1.3, 6.2, 7.9]])
    precision = 0.11
    values = evaluate_gaussians(grid, mean, [2.5], precision, cutoff_sigmas=50.0)
    expected = 2.5 * np.exp(-0.5 * precision * ((grid.points() - mean) ** 2).sum(1))
    np.testing.assert_allclose(values.ravel(), expected, rtol=tolerance(np.float64))
    # array layout [z, y, x]: the x coordinate runs along the last axis
    assert values.argmax() == np.ravel_multi_index((2, 3, 2), grid.shape)  # x 2.15, y 2.6, z 1.95 voxels


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_soft_statistics_equal_reference(d, cutoff):
    grid, means, amplitudes, precision = _case(d)
    counts = _counts(grid, means, amplitudes, precision, np.random.default_rng(d))
    counts.reshape(-1)[0] += 3  # the first voxel: near the "near_low" component only
    result = binned_statistics(counts, grid, means, amplitudes, precision, None, cutoff)
    n_k, s_k, q_k, log_likelihood = soft_statistics_reference(counts, grid, means, amplitudes,
                                                              precision, cutoff)
    tol = tolerance(np.float64)
    assert result.offset_sum.shape == (means.shape[0], d)
    np.testing.assert_allclose(result.n_k, n_k, rtol=0, atol=tol * counts.sum())
    np.testing.assert_allclose(result.offset_sum, s_k, rtol=0, atol=tol * np.abs(s_k).max())
    np.testing.assert_allclose(result.offset_square_sum, q_k, rtol=0, atol=tol * q_k.max())
    assert result.log_likelihood == pytest.approx(log_likelihood, rel=tol, abs=tol)
    # counts with no component within the cut-off are reported, not assigned
    weighted = evaluate_gaussians_reference(grid, means, amplitudes, precision, cutoff)
    assert result.n_unassigned == counts[weighted == 0].sum()
    assert result.n_k.sum() + result.n_unassigned == pytest.approx(counts.sum(), rel=tol)
    assert result.n_k[-1] == 0.0  # the component far outside the grid


def test_counts_outside_every_cutoff_are_unassigned():
    grid = Grid((40,), 1.0, (0.0,))
    counts = np.zeros(40, dtype=np.int32)
    counts[[5, 6, 35]] = [4, 2, 7]  # index 35 is 30 Å (15 sigma) from the component
    for rng in (None, np.random.default_rng(0)):
        result = binned_statistics(counts, grid, np.array([[5.0]]), np.array([1.0]), 0.25, rng)
        assert result.n_unassigned == 7
        assert result.n_k[0] == pytest.approx(6.0)
        assert result.offset_sum[0, 0] == pytest.approx(2.0)  # 2 counts 1 Å above the mean
        assert result.offset_square_sum[0] == pytest.approx(2.0)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_sampled_statistics_conserve_counts(d):
    grid, means, amplitudes, precision = _case(d, seed=2)
    counts = _counts(grid, means, amplitudes, precision, np.random.default_rng(5 + d))
    counts.reshape(-1)[0] += 3
    soft = binned_statistics(counts, grid, means, amplitudes, precision, None)
    rng = np.random.default_rng(17)
    for _ in range(20):
        result = binned_statistics(counts, grid, means, amplitudes, precision, rng)
        np.testing.assert_array_equal(result.n_k, np.round(result.n_k))
        assert np.all(result.n_k >= 0)
        assert result.n_k.sum() + result.n_unassigned == counts.sum()
        assert result.n_unassigned == soft.n_unassigned
        assert result.log_likelihood == soft.log_likelihood  # it depends on the means only
        assert result.n_k[-1] == 0
        assert np.all(result.offset_square_sum >= 0)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_sampled_statistics_average_to_the_soft_statistics(d):
    # E[z_jk] = y_j r_jk (Eqn. 2.58), so each sampled statistic is an unbiased estimate of the
    # soft one; its standard error is estimated from the draws themselves.
    grid, means, amplitudes, precision = _case(d, seed=3)
    counts = _counts(grid, means, amplitudes, precision, np.random.default_rng(d), peak=3.0)
    n_draws = 1500
    rng = np.random.default_rng(2024)
    draws = [binned_statistics(counts, grid, means, amplitudes, precision, rng) for _ in range(n_draws)]
    soft = soft_statistics_reference(counts, grid, means, amplitudes, precision, 5.0)
    for name, expected in zip(("n_k", "offset_sum", "offset_square_sum"), soft[:3]):
        sampled = np.array([getattr(s, name) for s in draws])
        mean = sampled.mean(0)
        standard_error = sampled.std(0, ddof=1) / np.sqrt(n_draws)
        # 4.5 standard errors over ~40 compared numbers: a false alarm has probability < 3e-4
        excess = np.abs(mean - expected) - (4.5 * standard_error + 1e-9 * np.abs(expected).max())
        assert np.all(excess <= 0), (name, mean, expected, standard_error)
    # the draws do vary (the test above is not vacuous)
    assert np.array([s.n_k for s in draws]).std(0).max() > 1.0


def _single_point_case(y):
    grid = Grid((5, 5, 5), 1.0, (-2.0, -2.0, -2.0))
    counts = np.zeros(grid.shape, dtype=np.int32)
    counts[2, 2, 2] = y  # the point (0, 0, 0)
    means = np.array([[1.0, 0.5, -0.5], [-0.8, 0.3, 0.0], [0.2, -1.2, 0.9]])
    amplitudes = np.array([1.0, 0.6, 1.7])
    precision = 0.8
    g = amplitudes * np.exp(-0.5 * precision * (means**2).sum(1))
    return grid, counts, means, amplitudes, precision, g / g.sum()


def test_one_grid_point_is_split_by_a_multinomial_moments():
    y, n_draws = 40, 4000
    grid, counts, means, amplitudes, precision, r = _single_point_case(y)
    assert r.min() > 0.15  # three genuinely overlapping components
    rng = np.random.default_rng(7)
    draws = [binned_statistics(counts, grid, means, amplitudes, precision, rng) for _ in range(n_draws)]
    n = np.array([s.n_k for s in draws])
    assert np.all(n.sum(1) == y)
    # the per-component statistics of a point at v: n_k (v - mu_k) and n_k |v - mu_k|^2
    for s in draws[:50]:
        np.testing.assert_allclose(s.offset_sum, s.n_k[:, None] * (0.0 - means), atol=1e-12)
        np.testing.assert_allclose(s.offset_square_sum, s.n_k * (means**2).sum(1), atol=1e-12)
    # Mult(y, r): n_k ~ Binomial(y, r_k), mean y r_k, variance y r_k (1 - r_k),
    # fourth central moment y p q (1 + 3 (y - 2) p q) (for the standard error of the variance)
    mean = y * r
    var = y * r * (1 - r)
    mu4 = y * r * (1 - r) * (1 + 3 * (y - 2) * r * (1 - r))
    assert np.all(np.abs(n.mean(0) - mean) < 4 * np.sqrt(var / n_draws))
    se_var = np.sqrt((mu4 - var**2 * (n_draws - 3) / (n_draws - 1)) / n_draws)
    assert np.all(np.abs(n.var(0, ddof=1) - var) < 4 * se_var)
    # and the components compete: cov(n_0, n_1) = -y r_0 r_1
    cov = np.cov(n[:, 0], n[:, 1])[0, 1]
    se_cov = np.sqrt((var[0] * var[1] + (y * r[0] * r[1]) ** 2) / n_draws)  # normal approximation
    assert abs(cov + y * r[0] * r[1]) < 4 * se_cov


def test_one_grid_point_is_split_by_a_multinomial_distribution():
    # the whole distribution of (n_0, n_1, n_2) for y = 4: a chi-square test over its 15 outcomes
    y, n_draws = 4, 6000
    grid, counts, means, amplitudes, precision, r = _single_point_case(y)
    rng = np.random.default_rng(8)
    outcomes = [o for o in itertools.product(range(y + 1), repeat=3) if sum(o) == y]
    index = {o: i for i, o in enumerate(outcomes)}
    observed = np.zeros(len(outcomes))
    for _ in range(n_draws):
        n_k = binned_statistics(counts, grid, means, amplitudes, precision, rng).n_k
        observed[index[tuple(int(v) for v in n_k)]] += 1
    expected = n_draws * stats.multinomial(y, r).pmf(np.array(outcomes))
    assert expected.min() > 5  # the chi-square approximation holds
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert stats.chi2(len(outcomes) - 1).sf(chi2) > 1e-3


@pytest.mark.parametrize("d", [1, 2, 3])
def test_same_seed_same_assignments(d):
    grid, means, amplitudes, precision = _case(d, seed=4)
    counts = _counts(grid, means, amplitudes, precision, np.random.default_rng(0))
    first = binned_statistics(counts, grid, means, amplitudes, precision, np.random.default_rng(99))
    second = binned_statistics(counts, grid, means, amplitudes, precision, np.random.default_rng(99))
    other = binned_statistics(counts, grid, means, amplitudes, precision, np.random.default_rng(100))
    for name in ("n_k", "offset_sum", "offset_square_sum"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.n_unassigned == second.n_unassigned
    assert not np.array_equal(first.offset_sum, other.offset_sum)


def test_counts_of_the_wrong_shape_are_refused():
    grid = Grid((4, 5), 1.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        binned_statistics(np.ones((5, 4), dtype=np.int32), grid, np.zeros((1, 2)), np.ones(1), 1.0, None)
    with pytest.raises(ValueError, match="amplitudes"):
        evaluate_gaussians(grid, np.zeros((2, 2)), np.ones(3), 1.0)
