"""Gibbs sampling of a 3D mixture, rotations and translations from binned 2D images (thesis 2.4, App. C).

The simulated data are exact projections of a random asymmetric mixture (K = 20, sigma 8 Å) on
32 x 32 px images at 4 Å/px, discretised to about 5000 counts each (Eqn. 2.52). With known poses
(section 3.2) the sampler must reconstruct the map; with the true mixture (section 3.3) the
rotation block must sample the rotations' posterior, and the local and global rotation searches
must find it; translations must converge to the true in-plane shifts. The rotation tables must
equal brute-force sums, the missing depth coordinates their exact joint law, and the symmetric
pooling the hand-built back-projection.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from cryogmm.geometry.so3 import random_rotations, rotation_angle_in_degrees
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.grid import Grid
from cryogmm.kernels import BinnedStatistics
from cryogmm.mixture import GaussianMixture, MixturePrior, evaluate, log_prior, project
from cryogmm.samplers.conditionals import gibbs_update
from cryogmm.samplers.projected import (GLOBAL_BACKGROUND_WEIGHT, TABLE_CUTOFF_SIGMAS, ImageCounts,
                                        ProjectedGibbsSampler, ProjectedState, _missing_statistics,
                                        default_projection_prior, expand_symmetry, global_log_likelihoods,
                                        global_rotation_step, image_log_likelihoods, local_rotation_search,
                                        basin_search, _distinct_seeds,
                                        log_projected_densities, projected_means)
from cryogmm.simulate.discretise import discretise

BOX, PIXEL = 32, 4.0  # 128 Å images
K, SIGMA = 20, 8.0
N_IMAGES, N_COUNTS = 30, 5000
MAX_RADIUS = 28.0  # Å: means within this radius, so the images have empty borders (below)


def _random_mixture(rng, k=K, spread=12.0):
    """Means N(0, spread^2) pulled into a ball of radius MAX_RADIUS, Dirichlet(20) weights."""
    means = rng.normal(0.0, spread, (k, 3))
    radius = np.linalg.norm(means, axis=1, keepdims=True)
    means = np.where(radius > MAX_RADIUS, means * MAX_RADIUS / radius, means)
    return GaussianMixture(means, rng.dirichlet(np.full(k, 20.0)), 1.0 / SIGMA**2)


def _images(mixture, rotations, shifts=None, n_counts=N_COUNTS, box=BOX):
    """Exact projections (Eqn. 2.76) P_o(A x + t) on the centred grid, discretised per image."""
    grid = Grid.centered((box, box), PIXEL)
    shifts = np.zeros((rotations.shape[0], 2)) if shifts is None else shifts
    values = np.stack([evaluate(project(mixture, r, t), grid) for r, t in zip(rotations, shifts)])
    return ImageCounts(discretise(values, n_counts, per_image=True), PIXEL)


def _border(counts, width):
    """Counts within `width` pixels of any image edge."""
    inner = np.zeros(counts.shape[1:], dtype=bool)
    inner[width:-width, width:-width] = True
    return int(counts[:, ~inner].sum())


def _rotation_vectors(rotations, reference):
    """Rotation vectors omega (radians) with rotations = exp([omega]x) reference."""
    return Rotation.from_matrix(rotations @ np.swapaxes(reference, -1, -2)).as_rotvec()


def _perturbed(rotations, omega):
    return Rotation.from_rotvec(omega).as_matrix() @ rotations


def _unit_vectors(rng, n):
    axes = rng.standard_normal((n, 3))
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def simulated():
    """The asymmetric test particle, its true rotations and the discretised images. Every count
    lies at least 3 px inside the image: the components are within 28 Å of the centre and a pixel
    3.5 sigma from every mean gets an expected count < 0.03, which rounds to zero."""
    rng = np.random.default_rng(0)
    mixture = _random_mixture(rng)
    rotations = random_rotations(rng, N_IMAGES)
    data = _images(mixture, rotations)
    assert _border(data.counts, 3) == 0
    assert np.all(np.abs(data.counts.reshape(N_IMAGES, -1).sum(1) - N_COUNTS) < 50)
    return mixture, rotations, data


def _pearson(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- the data ---------------------------------------------------------------------------------

def test_image_counts_are_validated():
    good = np.ones((2, 4, 4), dtype=np.int64)
    data = ImageCounts(good, 2)
    assert data.counts.dtype == np.int32 and data.counts.flags.c_contiguous
    assert data.n_images == 2 and data.box == 4 and data.pixel_size_in_angstroms == 2.0
    assert data.grid == Grid.centered((4, 4), 2.0)
    with pytest.raises(ValueError, match="square"):
        ImageCounts(np.ones((2, 4, 5), dtype=np.int32), 2.0)
    with pytest.raises(ValueError, match="square"):
        ImageCounts(np.ones((4, 4), dtype=np.int32), 2.0)  # a single image, not a stack
    negative = good.copy()
    negative[1, 2, 3] = -1
    with pytest.raises(ValueError, match="non-negative integers"):
        ImageCounts(negative, 2.0)
    with pytest.raises(ValueError, match="non-negative integers"):
        ImageCounts(good.astype(np.float64), 2.0)
    empty = good.copy()
    empty[1] = 0
    with pytest.raises(ValueError, match="at least one count"):
        ImageCounts(empty, 2.0)


def test_weighted_points_and_default_prior():
    counts = np.zeros((2, 5, 5), dtype=np.int32)
    counts[0, 2, 2] = 3  # the image centre (0, 0)
    counts[1, 2, 4] = 1  # x = 2 px = 6 Å, y = 0
    counts[1, 0, 2] = 2  # x = 0, y = -6 Å
    data = ImageCounts(counts, 3.0)
    points, weights = data.weighted_points()
    np.testing.assert_array_equal(points, [[0.0, 0.0], [0.0, -6.0], [6.0, 0.0]])
    np.testing.assert_array_equal(weights, [3.0, 2.0, 1.0])
    # r = 2 / (mean square distance from the image centre) = 2 / (3 * 36 / 6)
    prior = default_projection_prior(data, shape=4.0)
    assert prior.mean_precision == pytest.approx(2.0 / 18.0)
    np.testing.assert_array_equal(prior.center_in_angstroms, np.zeros(3))
    assert prior.shape == 4.0


# -- the missing depth coordinates ----------------------------------------------------------

N_MISSING = np.array([0.0, 1.0, 2.0, 5.0, 30.0])
MISSING_PRECISION = 0.04  # 1/Å^2: sigma 5 Å


def _moment_bound(x, n_se=4.5):
    """n_se standard errors of the mean of x along axis 0 (from the sample itself)."""
    return n_se * x.std(0, ddof=1) / np.sqrt(x.shape[0])


@pytest.fixture(scope="module")
def missing_draws():
    n_draws = 40000
    rng = np.random.default_rng(11)
    n = np.broadcast_to(N_MISSING, (n_draws, N_MISSING.size)).copy()
    d, tau = _missing_statistics(rng, n, MISSING_PRECISION)
    # brute force: n explicit N(0, 1/s) depth offsets per (draw, component)
    x = rng.standard_normal((n_draws, N_MISSING.size, int(N_MISSING.max()))) / np.sqrt(MISSING_PRECISION)
    x *= np.arange(x.shape[2])[None, None, :] < N_MISSING[None, :, None]
    return d, tau, x.sum(2), (x**2).sum(2)


def test_missing_statistics_exact_constraints(missing_draws):
    d, tau, _, _ = missing_draws
    assert d.shape == tau.shape == (40000, N_MISSING.size)
    assert np.all(d[:, 0] == 0) and np.all(tau[:, 0] == 0)  # no missing coordinates, nothing drawn
    np.testing.assert_allclose(tau[:, 1], d[:, 1] ** 2, rtol=1e-12)  # one coordinate: tau = d^2
    # Cauchy-Schwarz: sum of squares >= (sum)^2 / n
    assert np.all(tau[:, 1:] >= d[:, 1:] ** 2 / N_MISSING[1:] * (1 - 1e-12))


def test_missing_statistics_moments(missing_draws):
    # d = sum of n N(0, 1/s): mean 0, variance n/s; tau = sum of squares: mean n/s, variance 2n/s^2.
    # Each sample moment is compared within 4.5 standard errors estimated from the draws
    # (40 comparisons in all: a false alarm has probability < 40 * 7e-6 = 3e-4).
    d, tau, _, _ = missing_draws
    s, n = MISSING_PRECISION, N_MISSING[1:]
    d, tau = d[:, 1:], tau[:, 1:]
    assert np.all(np.abs(d.mean(0)) <= _moment_bound(d))
    assert np.all(np.abs((d**2).mean(0) - n / s) <= _moment_bound(d**2))  # E[d^2] = Var d
    assert np.all(np.abs(tau.mean(0) - n / s) <= _moment_bound(tau))
    centred = (tau - n / s) ** 2
    assert np.all(np.abs(centred.mean(0) - 2 * n / s**2) <= _moment_bound(centred))
    # cov(d^2, tau) = sum_i Var(x_i^2) = 2 n / s^2 (only the i = j = l terms survive)
    product = (d**2 - n / s) * (tau - n / s)
    assert np.all(np.abs(product.mean(0) - 2 * n / s**2) <= _moment_bound(product))


def test_missing_statistics_have_the_law_of_explicit_draws(missing_draws):
    # the joint law of (d, tau) against drawing the n coordinates one by one: the two samples are
    # independent, so the standard error of a difference of means is the root sum of squares
    d, tau, d_brute, tau_brute = missing_draws
    s, n = MISSING_PRECISION, N_MISSING[1:]
    d, tau, d_brute, tau_brute = d[:, 1:], tau[:, 1:], d_brute[:, 1:], tau_brute[:, 1:]

    def same_mean(a, b):
        bound = np.hypot(_moment_bound(a), _moment_bound(b))
        assert np.all(np.abs(a.mean(0) - b.mean(0)) <= bound), (a.mean(0), b.mean(0), bound)

    same_mean(d**2, d_brute**2)
    same_mean(tau, tau_brute)
    same_mean((d**2 - n / s) * (tau - n / s), (d_brute**2 - n / s) * (tau_brute - n / s))
    # the correlation of d^2 and tau is 1 / sqrt(n) for both (2n/s^2 / sqrt(2n^2/s^2 * 2n/s^2))
    for j in range(n.size):
        for a, b in ((d[:, j], tau[:, j]), (d_brute[:, j], tau_brute[:, j])):
            # standard error of a sample correlation <= 1 / sqrt(N) for these moderately skewed variables
            # (the 4.5 / sqrt(N) bound = 0.022)
            assert np.corrcoef(a**2, b)[0, 1] == pytest.approx(1 / np.sqrt(n[j]), abs=4.5 / np.sqrt(a.size))
    # whole distributions (Kolmogorov-Smirnov; p > 1e-4 for each of 12 tests): s tau ~ chi2(n),
    # d sqrt(s / n) ~ N(0, 1) and, independently of d (Cochran), s (tau - d^2/n) ~ chi2(n - 1)
    for j in range(n.size):
        assert stats.kstest(s * tau[:, j], stats.chi2(n[j]).cdf).pvalue > 1e-4
        assert stats.kstest(d[:, j] * np.sqrt(s / n[j]), stats.norm.cdf).pvalue > 1e-4
        if n[j] > 1:
            residual = s * (tau[:, j] - d[:, j] ** 2 / n[j])
            assert stats.kstest(residual, stats.chi2(n[j] - 1).cdf).pvalue > 1e-4
            assert abs(np.corrcoef(residual, d[:, j] ** 2)[0, 1]) < 4.5 / np.sqrt(residual.size)


# -- symmetry: expansion and pooling ----------------------------------------------------------

@pytest.mark.parametrize("name", ["C4", "D2", "D3"])
def test_expanded_means_are_invariant_under_the_group(name):
    ops = symmetry_operators(name)
    g = ops.shape[0]
    asymmetric = _random_mixture(np.random.default_rng(1), k=3)
    full = expand_symmetry(asymmetric, ops)
    assert full.n_components == g * 3
    np.testing.assert_allclose(full.weights, np.tile(asymmetric.weights, g) / g, rtol=1e-15)
    assert full.precision_per_square_angstrom == asymmetric.precision_per_square_angstrom
    means = full.means_in_angstroms
    # g-major order: copy g, component k is S_g mu_k (copy 0 is the asymmetric unit itself)
    for i in range(g):
        np.testing.assert_allclose(means[3 * i:3 * i + 3], asymmetric.means_in_angstroms @ ops[i].T, atol=1e-12)
    # every operator permutes the G K means (and carries each copy's weight onto an equal weight)
    for op in ops:
        moved = means @ op.T
        distance = np.linalg.norm(moved[:, None] - means[None], axis=-1)
        match = distance.argmin(1)
        assert np.all(distance.min(1) < 1e-9)
        assert np.array_equal(np.sort(match), np.arange(g * 3))  # a bijection
        np.testing.assert_array_equal(full.weights[match], full.weights)
    # the means are distinct (the test is not vacuous: no component sits on a symmetry axis)
    distance = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(g * 3) * 1e9
    assert distance.min() > 1.0


def _hand_pooled_statistics(stats_n, stats_s, stats_q, d, tau, rotations, ops, k):
    """sum over images i and copies g of the offsets of the 3D points from R_i S_g mu_k, rotated
    back to the asymmetric unit by S_g^T R_i^T, written out as loops."""
    n_k, offset, square = np.zeros(k), np.zeros((k, 3)), np.zeros(k)
    for i in range(rotations.shape[0]):
        for g in range(ops.shape[0]):
            for c in range(k):
                j = g * k + c
                image_frame = np.array([stats_s[i, j, 0], stats_s[i, j, 1], d[i, j]])
                n_k[c] += stats_n[i, j]
                offset[c] += ops[g].T @ (rotations[i].T @ image_frame)
                square[c] += stats_q[i, j] + tau[i, j]
    return BinnedStatistics(n_k, offset, square, 0.0, 0)


@pytest.mark.parametrize("name", ["C1", "C4", "D2"])
def test_mixture_update_equals_gibbs_update_on_hand_pooled_statistics(name):
    # Replay one step's random stream: sampled assignments, then the missing coordinates, then the
    # parameter draws. The step's new mixture must equal gibbs_update on statistics back-projected
    # and pooled by hand (pooling the copies of component k onto mu_k).
    ops = symmetry_operators(name)
    rng = np.random.default_rng(2)
    asymmetric = _random_mixture(rng, k=4)
    rotations = random_rotations(rng, 6)
    data = _images(expand_symmetry(asymmetric, ops), rotations, n_counts=2000)
    prior = default_projection_prior(data)
    sampler = ProjectedGibbsSampler(data, 4, prior, ops, update_rotations=False)
    start = sampler.init(None, mixture=_random_mixture(rng, k=4), rotations=rotations)
    new, info = sampler.step(np.random.default_rng(3), start)

    replay = np.random.default_rng(3)
    statistics = sampler.statistics(start, replay)
    d, tau = _missing_statistics(replay, statistics.n, start.mixture.precision_per_square_angstrom)
    pooled = _hand_pooled_statistics(statistics.n, statistics.s, statistics.q, d, tau, rotations, ops, 4)
    expected = gibbs_update(replay, start.mixture, pooled, prior)

    # the pooled counts are the sums over copies, and all counts are accounted for
    assert pooled.n_k.sum() + statistics.n_unassigned.sum() == data.counts.sum()
    np.testing.assert_allclose(pooled.n_k, statistics.n.reshape(6, ops.shape[0], 4).sum((0, 1)))
    np.testing.assert_allclose(new.mixture.means_in_angstroms, expected.means_in_angstroms, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(new.mixture.weights, expected.weights, rtol=1e-10)
    assert new.mixture.precision_per_square_angstrom == pytest.approx(expected.precision_per_square_angstrom,
                                                                      rel=1e-10)
    assert info["n_unassigned"] == statistics.n_unassigned.sum()
    np.testing.assert_array_equal(new.rotations, rotations)  # the rotation block is off


def test_symmetric_reconstruction_with_known_poses():
    # data from a C4-symmetric particle (asymmetric unit of 4 components), reconstructed with the
    # C4 sampler from the true rotations: the expanded posterior-mean map must match the truth
    ops = symmetry_operators("C4")
    rng = np.random.default_rng(3)
    asymmetric = _random_mixture(rng, k=4)
    full = expand_symmetry(asymmetric, ops)
    rotations = random_rotations(rng, N_IMAGES)
    data = _images(full, rotations)
    sampler = ProjectedGibbsSampler(data, 4, default_projection_prior(data), ops, update_rotations=False)
    grid = Grid.centered((BOX,) * 3, PIXEL)
    state = sampler.init(np.random.default_rng(10), rotations=rotations)
    total = np.zeros(grid.shape)
    chain = np.random.default_rng(11)
    for step in range(100):
        state, _ = sampler.step(chain, state)
        if step >= 50:
            total += evaluate(expand_symmetry(state.mixture, ops), grid)
    # measured 0.996 (0.995-0.998 over five chains); a map with a misplaced copy is far below 0.99
    assert _pearson(total, evaluate(full, grid)) > 0.99


# -- the rotation tables --------------------------------------------------------------------

def _table_case(shift=0):
    """3 images of a 4-component particle on 24 px images (empty 3-px borders), 7 rotations."""
    rng = np.random.default_rng(4)
    mixture = GaussianMixture(rng.normal(0.0, 7.0, (4, 3)), rng.dirichlet(np.full(4, 5.0)), 1 / 25.0)
    rotations = random_rotations(rng, 3)
    shifts = rng.integers(-shift, shift + 1, (3, 2)) * PIXEL if shift else None
    data = _images(mixture, rotations, shifts, n_counts=3000, box=24)
    assert _border(data.counts, 3) == 0
    return mixture, data, random_rotations(rng, 7)


def test_log_projected_densities_equal_the_projected_mixture_plus_background():
    mixture, data, candidates = _table_case()
    grid = data.grid
    log_h = log_projected_densities(mixture, candidates, grid)
    area = (24 * PIXEL) ** 2
    eps = GLOBAL_BACKGROUND_WEIGHT
    for m, rotation in enumerate(candidates):
        density = evaluate(project(mixture, rotation), grid, TABLE_CUTOFF_SIGMAS)
        np.testing.assert_allclose(log_h[m], np.log((1 - eps) * density + eps / area), rtol=1e-12)
    assert np.isfinite(log_h).all()


@pytest.mark.parametrize("name", ["C1", "C2"])
def test_global_table_without_shifts_is_the_brute_force_sum(name):
    ops = symmetry_operators(name)
    mixture, data, candidates = _table_case()
    sampler = ProjectedGibbsSampler(data, 4, default_projection_prior(data), ops)
    table = global_log_likelihoods(sampler, mixture, candidates, chunk=3)  # chunk boundaries inside
    assert table.shape == (3, 7, 1)
    full = expand_symmetry(mixture, ops)
    for m, rotation in enumerate(candidates):
        log_h = log_projected_densities(full, rotation[None], data.grid)[0]
        for i in range(3):
            assert table[i, m, 0] == pytest.approx(float((data.counts[i] * log_h).sum()), rel=1e-12)
    # per-image candidates at zero translations give the same numbers
    per_image = image_log_likelihoods(sampler, mixture, np.broadcast_to(candidates, (3, 7, 3, 3)), np.zeros((3, 2)))
    np.testing.assert_allclose(per_image, table[:, :, 0], rtol=1e-12)


def test_image_log_likelihoods_with_translations_are_brute_force_sums():
    # log p(D_i | R_im, t_i) = sum_x y_i(x) log((1 - eps) h(x) + eps / area), h the density of the
    # particle rotated by R_im and translated by t_i (any real t, not only whole pixels)
    mixture, data, candidates = _table_case()
    sampler = ProjectedGibbsSampler(data, 4, default_projection_prior(data))
    translations = np.random.default_rng(5).uniform(-6.0, 6.0, (3, 2))
    per_image = np.stack([candidates[:4], candidates[2:6], candidates[3:]])  # (3, 4, 3, 3), different per image
    result = image_log_likelihoods(sampler, mixture, per_image, translations)
    assert result.shape == (3, 4)
    eps, area = GLOBAL_BACKGROUND_WEIGHT, (24 * PIXEL) ** 2
    for i in range(3):
        for m in range(4):
            density = evaluate(project(mixture, per_image[i, m], translations[i]), data.grid, TABLE_CUTOFF_SIGMAS)
            expected = float((data.counts[i] * np.log((1 - eps) * density + eps / area)).sum())
            assert result[i, m] == pytest.approx(expected, rel=1e-12)


def test_global_table_with_shifts_is_the_brute_force_sum_over_shifted_densities():
    # entry (dy, dx) of the table scores the hypothesis "particle centre at t = (dx, dy) pixels":
    # sum_x y(x) log h(x - t), with h the background-padded projected density of
    # `log_projected_densities` (the density of the particle translated by t). The counts stay 3 px
    # inside the image, so a circular shift by up to 2 px wraps nothing that is counted.
    w = 2
    mixture, data, candidates = _table_case(shift=1)
    sampler = ProjectedGibbsSampler(data, 4, default_projection_prior(data))
    table = global_log_likelihoods(sampler, mixture, candidates, max_shift_in_pixels=w, chunk=4)
    assert table.shape == (3, 7, (2 * w + 1) ** 2)
    plain = global_log_likelihoods(sampler, mixture, candidates)
    centre = w * (2 * w + 1) + w
    np.testing.assert_allclose(table[:, :, centre], plain[:, :, 0], rtol=1e-10)
    eps, area = GLOBAL_BACKGROUND_WEIGHT, (24 * PIXEL) ** 2
    for m, rotation in enumerate(candidates):
        log_h = log_projected_densities(mixture, rotation[None], data.grid)[0]
        for index in range((2 * w + 1) ** 2):
            dy, dx = np.array(divmod(index, 2 * w + 1)) - w
            # sum_x y(x) log h(x - t) = sum_u y(u + t) log h(u): the counts rolled back by t
            rolled = np.roll(data.counts, (-dy, -dx), axis=(1, 2))
            expected = (rolled * log_h).sum((1, 2))
            np.testing.assert_allclose(table[:, m, index], expected, rtol=1e-10, err_msg=f"shift {dx, dy}")
            if m == 0:  # and independently: the density of the particle translated by t
                moved = evaluate(project(mixture, rotation, np.array([dx, dy]) * PIXEL), data.grid,
                                 TABLE_CUTOFF_SIGMAS)
                direct = (data.counts * np.log((1 - eps) * moved + eps / area)).sum((1, 2))
                np.testing.assert_allclose(table[:, m, index], direct, rtol=1e-10, err_msg=f"shift {dx, dy}")


def test_global_step_recovers_whole_pixel_shifts():
    # images of the true mixture shifted by whole pixels; the candidates include the true rotations
    # (keep_current), which beat 20 random ones by 100-320 nats, and the true shift beats the next
    # best by 230-270 nats (measured), far beyond the Gumbel noise of the draw: the drawn translation
    # must be the true shift, sign included (with the sign reversed, every non-zero shift fails)
    rng = np.random.default_rng(5)
    mixture = _random_mixture(rng)
    rotations = random_rotations(rng, 8)
    shifts = rng.integers(-2, 3, (8, 2)) * PIXEL
    shifts[0] = [2 * PIXEL, -PIXEL]  # not symmetric under a sign flip
    data = _images(mixture, rotations, shifts)
    sampler = ProjectedGibbsSampler(data, K, default_projection_prior(data), update_mixture=False)
    state = sampler.init(None, mixture=mixture, rotations=rotations)
    moved, info = global_rotation_step(np.random.default_rng(6), sampler, state, 20, max_shift_in_pixels=2,
                                       keep_current=True)
    assert info["kept_current"] == 8
    np.testing.assert_allclose(moved.rotations, rotations)
    np.testing.assert_allclose(moved.translations_in_angstroms, shifts)


def test_global_step_without_shift_search_refuses_translations(simulated):
    mixture, rotations, data = simulated
    sampler = ProjectedGibbsSampler(data, K, default_projection_prior(data))
    state = sampler.init(None, mixture=mixture, rotations=rotations, translations_in_angstroms=np.ones((N_IMAGES, 2)))
    with pytest.raises(ValueError, match="zero translations"):
        global_rotation_step(np.random.default_rng(0), sampler, state, 10)


# -- the sampler contract ---------------------------------------------------------------------

@pytest.mark.parametrize("blocks", [(True, True, False), (True, True, True), (False, True, True), (True, False, False)])
def test_sampler_contract(simulated, blocks):
    mixture, rotations, data = simulated
    update_mixture, update_rotations, update_translations = blocks
    sampler = ProjectedGibbsSampler(data, 6, default_projection_prior(data), update_mixture=update_mixture,
                                    update_rotations=update_rotations, update_translations=update_translations)
    state = sampler.init(np.random.default_rng(0))
    assert isinstance(state, ProjectedState) and state.step == 0
    assert state.mixture.n_components == 6 and state.mixture.ndim == 3
    assert state.rotations.shape == (N_IMAGES, 3, 3)
    np.testing.assert_allclose(state.rotations @ np.swapaxes(state.rotations, 1, 2),
                               np.broadcast_to(np.eye(3), (N_IMAGES, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(state.rotations), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(state.translations_in_angstroms, np.zeros((N_IMAGES, 2)))
    # give the state non-zero translations, so that the translation terms are exercised
    state = ProjectedState(state.mixture, state.rotations, np.full((N_IMAGES, 2), 1.5))
    before = (state.rotations.copy(), state.translations_in_angstroms.copy(), state.mixture.means_in_angstroms.copy())

    new, info = sampler.step(np.random.default_rng(1), state)
    again, info_again = sampler.step(np.random.default_rng(1), state)
    for array, copy in zip((state.rotations, state.translations_in_angstroms, state.mixture.means_in_angstroms),
                           before):
        np.testing.assert_array_equal(array, copy)  # the incoming state is untouched
    assert new.step == 1 and isinstance(new, ProjectedState)
    assert np.isfinite(info["log_posterior"]) and info["sigma_in_angstroms"] == state.mixture.sigma_in_angstroms
    # reproducible with the same seed
    assert info == info_again
    np.testing.assert_array_equal(new.rotations, again.rotations)
    np.testing.assert_array_equal(new.translations_in_angstroms, again.translations_in_angstroms)
    np.testing.assert_array_equal(new.mixture.means_in_angstroms, again.mixture.means_in_angstroms)
    # the step reports the incoming state's log-posterior: the sampled-assignment pass computes
    # sum_j y_j log h_j from the means alone, the same sum in the same order as the soft pass
    assert info["log_posterior"] == pytest.approx(sampler.log_posterior(state), rel=1e-12)
    soft = sampler.statistics(state, None)
    assert sampler.log_posterior(state) == pytest.approx(soft.log_likelihood.sum() + log_prior(state.mixture,
                                                                                              sampler.prior))
    # the switched-off blocks stay put, the others move
    assert (new.mixture is state.mixture) == (not update_mixture)
    assert np.array_equal(new.rotations, state.rotations) == (not update_rotations)
    assert np.array_equal(new.translations_in_angstroms, state.translations_in_angstroms) == (not update_translations)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads (NUMBA_NUM_THREADS)")
def test_steps_and_candidates_do_not_depend_on_the_number_of_threads(simulated):
    # over_images splits the images between threads; each image has its own draws and scratch
    mixture, rotations, data = simulated
    sampler = ProjectedGibbsSampler(data, 6, default_projection_prior(data), update_translations=True)
    state = sampler.init(np.random.default_rng(0))
    candidates = np.repeat(rotations[:, None], 3, axis=1) @ random_rotations(np.random.default_rng(2), 3)[None]
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            new, info = sampler.step(np.random.default_rng(1), state)
            results.append((new.rotations, new.mixture.means_in_angstroms, info["log_posterior"],
                            image_log_likelihoods(sampler, mixture, candidates, np.zeros((N_IMAGES, 2)))))
    finally:
        numba.set_num_threads(before)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_sampler_rejects_bad_settings(simulated):
    _, _, data = simulated
    prior = default_projection_prior(data)
    with pytest.raises(ValueError, match="at least 1"):
        ProjectedGibbsSampler(data, 0, prior)
    with pytest.raises(ValueError, match="three-dimensional"):
        ProjectedGibbsSampler(data, 3, MixturePrior(mean_precision=0.01, center_in_angstroms=np.zeros(2)))


def test_projected_means_rotate_then_translate_then_drop_depth():
    rng = np.random.default_rng(7)
    means = rng.normal(size=(4, 3))
    rotations = random_rotations(rng, 2)
    translations = rng.normal(size=(2, 2))
    out = projected_means(means, rotations, translations)
    for i in range(2):
        expected = project(GaussianMixture(means, np.full(4, 0.25), 1.0), rotations[i], translations[i])
        np.testing.assert_allclose(out[i, :, :2], expected.means_in_angstroms, atol=1e-14)
    assert np.all(out[:, :, 2] == 0)


# -- known poses (section 3.2) --------------------------------------------------------------

def test_reconstruction_with_known_poses(simulated):
    mixture, rotations, data = simulated
    sampler = ProjectedGibbsSampler(data, K, default_projection_prior(data), update_rotations=False)
    grid = Grid.centered((BOX,) * 3, PIXEL)
    rng = np.random.default_rng(100)
    state = sampler.init(rng, rotations=rotations)  # the mixture is a draw from the prior
    trace, total, sigmas = [], np.zeros(grid.shape), []
    for step in range(150):
        state, info = sampler.step(rng, state)
        trace.append(info["log_posterior"])
        if step >= 100:
            total += evaluate(state.mixture, grid)
            sigmas.append(state.mixture.sigma_in_angstroms)
    truth = evaluate(mixture, grid)
    # measured: Pearson 0.9989 (0.9988-0.9990 over four chains); the brief asked for > 0.95
    assert _pearson(total / 50, truth) > 0.99
    assert np.mean(sigmas) == pytest.approx(SIGMA, rel=0.05)  # measured 7.8-8.0 Å
    # the trace rises from the prior draw to the level of the truth: the late mean is within 1% of
    # the initial deficit (measured 0.16-0.3%: 35-120 nats of 2e4-5e4)
    trace = np.array(trace)
    true_level = sampler.log_posterior(ProjectedState(mixture, rotations, np.zeros((N_IMAGES, 2))))
    assert trace[:10].mean() < trace[50:60].mean() < trace[100:].mean()
    assert true_level - trace[100:].mean() < 0.01 * (true_level - trace[0])


# -- the rotation posterior with a fixed mixture (section 3.3) --------------------------------

def _laplace(sampler, mixture, rotations, step=np.radians(0.5)):
    """Mode (one Newton step from `rotations`) and covariance (P, 3, 3) of each image's rotation
    posterior in rotation-vector coordinates (flat prior), from central differences of the
    sampler's own log-likelihood."""
    p = rotations.shape[0]

    def log_likelihood(omega, base):
        moved = _perturbed(base, np.broadcast_to(omega, (p, 3)).copy())
        return sampler.statistics(ProjectedState(mixture, moved, np.zeros((p, 2))), None).log_likelihood

    def derivatives(base):
        e = np.eye(3) * step
        hessian = np.empty((p, 3, 3))
        for a in range(3):
            for b in range(3):
                hessian[:, a, b] = (log_likelihood(e[a] + e[b], base) - log_likelihood(e[a] - e[b], base)
                                    - log_likelihood(e[b] - e[a], base)
                                    + log_likelihood(-e[a] - e[b], base)) / (4 * step**2)
        gradient = np.stack([(log_likelihood(e[a], base) - log_likelihood(-e[a], base)) / (2 * step)
                             for a in range(3)], 1)
        covariance = np.linalg.inv(-hessian)
        return covariance, np.einsum("pij,pj->pi", covariance, gradient)

    covariance, offset = derivatives(rotations)
    mode = _perturbed(rotations, offset)
    covariance, _ = derivatives(mode)
    return mode, covariance


@pytest.fixture(scope="module")
def rotation_posterior(simulated):
    mixture, rotations, data = simulated
    sampler = ProjectedGibbsSampler(data, K, default_projection_prior(data), update_mixture=False)
    mode, covariance = _laplace(sampler, mixture, rotations)
    return sampler, mode, covariance


def _mahalanobis2(rotations, mode, covariance):
    omega = _rotation_vectors(rotations, mode)
    return np.einsum("...pi,pij,...pj->...p", omega, np.linalg.inv(covariance), omega)


def test_rotation_block_samples_the_rotation_posterior(simulated, rotation_posterior):
    # With the mixture fixed the images are independent, and the rotation chain of each has the
    # rotation posterior as its stationary law. It is close to Gaussian in rotation-vector
    # coordinates about its mode (posterior sd 0.9-2.4 degrees per axis at 5000 counts), so the
    # squared Mahalanobis distance of the draws from the mode averages 3 (chi2 with 3 degrees of
    # freedom). The standard error of the mean is estimated from the spread of the 30 independent
    # per-image time averages (which accounts for the autocorrelation of the chains).
    mixture, rotations, _ = simulated
    sampler, mode, covariance = rotation_posterior
    sd = np.degrees(np.sqrt(np.einsum("pii->pi", covariance)))
    assert 0.5 < sd.min() and sd.max() < 3.0
    # rounding the projections to counts moves the mode by up to about one posterior sd
    assert np.degrees(np.linalg.norm(_rotation_vectors(mode, rotations), axis=1)).max() < 3.0
    rng = np.random.default_rng(8)
    state = sampler.init(None, mixture=mixture, rotations=rotations)
    distances = []
    for step in range(310):
        state, _ = sampler.step(rng, state)
        if step >= 10:
            distances.append(_mahalanobis2(state.rotations, mode, covariance))
    per_image = np.array(distances).mean(0)
    standard_error = per_image.std(ddof=1) / np.sqrt(N_IMAGES)
    # measured 3.12 +- 0.05 (other chain seeds: 2.93 +- 0.07, and 3.02 +- 0.04 over 1500 steps); a
    # sampler whose rotation precision was off by a factor 2 would give 1.5 or 6
    assert abs(per_image.mean() - 3.0) < 4.5 * standard_error
    assert standard_error < 0.15


def test_local_rotation_search_then_gibbs_finds_perturbed_rotations(simulated, rotation_posterior):
    mixture, rotations, _ = simulated
    sampler, mode, covariance = rotation_posterior
    rng = np.random.default_rng(9)
    axes = _unit_vectors(rng, N_IMAGES)
    start = _perturbed(rotations, axes * np.radians(rng.uniform(10.0, 20.0, (N_IMAGES, 1))))
    state = sampler.init(None, mixture=mixture, rotations=start)
    # the search is an exact posterior step (sir_rotation_step), not a greedy one: two steps per
    # spread after the first (with one step each, 1 image of 30 was still 11-15 degrees off for
    # seeds 9 and 10; with two, none beyond 6.3 degrees for seeds 9-11)
    for spread in (10.0, 5.0, 5.0, 2.0, 2.0):
        state, info = local_rotation_search(rng, sampler, state, 100, spread)
        assert info["moved"] > 0
    for _ in range(5):
        state, _ = sampler.step(rng, state)
    error = rotation_angle_in_degrees(state.rotations, rotations)
    # The posterior itself has sd 0.9-2.4 degrees per axis, so "all within 3 degrees" is not a
    # property of a correct sampler (a chain started at the truth strays up to 7 degrees). Instead:
    # every rotation lies in its posterior's central region (chi2(3) tail 1e-3 / 30 images), and the
    # typical error is that of a posterior draw (measured median 2.5, max 5.1 degrees, largest squared
    # Mahalanobis distance 9.7 against the bound 23.4; seeds 10, 11: median 2.4, 2.1, max 5.9, 6.2).
    assert np.all(_mahalanobis2(state.rotations, mode, covariance) < stats.chi2(3).isf(1e-3 / N_IMAGES))
    assert np.median(error) < 3.0
    assert error.max() < 10.0  # from 10-20 degrees away


def test_global_rotation_step_then_local_search_finds_random_rotations(simulated, rotation_posterior):
    mixture, rotations, _ = simulated
    sampler, _, _ = rotation_posterior
    rng = np.random.default_rng(12)
    state = sampler.init(rng, mixture=mixture)  # uniform random rotations
    state, info = global_rotation_step(rng, sampler, state, 2000)
    assert info["kept_current"] == 0
    # the nearest of 2000 uniform rotations has a median distance of 10.7 degrees
    # ((t - sin t) / pi = ln 2 / 2000); the table's choice is about as close (measured median 11.0)
    assert np.median(rotation_angle_in_degrees(state.rotations, rotations)) < 15.0
    for spread in (10.0, 5.0, 2.0):
        state, _ = local_rotation_search(rng, sampler, state, 100, spread)
    for _ in range(5):
        state, _ = sampler.step(rng, state)
    error = rotation_angle_in_degrees(state.rotations, rotations)
    # measured 100% within 5 degrees (median 2.0, max 4.8), 93-100% over three other seeds (a
    # posterior draw is beyond 5 degrees for a few % of images, and a near-symmetric view can land
    # in a flipped basin: one image of 30 did, at 171 degrees, with one of the other seeds)
    assert np.mean(error < 5.0) >= 0.8


def test_basin_search_moves_flipped_images_back_and_keeps_the_others(simulated, rotation_posterior):
    mixture, rotations, _ = simulated
    sampler, _, _ = rotation_posterior
    rng = np.random.default_rng(21)
    # a third of the images start in the flipped basin (a half turn about an in-plane axis, the view
    # from behind), the others 2 degrees from the truth
    axes = _unit_vectors(rng, N_IMAGES)
    start = _perturbed(rotations, axes * np.radians(2.0))
    flipped = np.arange(N_IMAGES) % 3 == 0
    half_turns = Rotation.from_rotvec(np.c_[np.cos(axes[:, 0]), np.sin(axes[:, 0]), 0 * axes[:, 0]] * np.pi).as_matrix()
    start[flipped] = half_turns[flipped] @ rotations[flipped]
    state = sampler.init(None, mixture=mixture, rotations=start)
    before = image_log_likelihoods(sampler, mixture, start[:, None], np.zeros((N_IMAGES, 2)))[:, 0]
    moved, info = basin_search(rng, sampler, state, n_rotations=1000)
    error = rotation_angle_in_degrees(moved.rotations, rotations)
    after = image_log_likelihoods(sampler, mixture, moved.rotations[:, None], np.zeros((N_IMAGES, 2)))[:, 0]
    assert info["moved"] >= flipped.sum()
    # all back in the true basin (the flip is 180 degrees away); the refinement of a basin is a
    # short random search (two spreads of 30 candidates), so a few degrees remain for the Gibbs
    # steps that follow (measured: median 1.7, max 8.1 degrees)
    assert np.all(error[flipped] < 15.0)
    assert np.median(error[flipped]) < 3.0
    assert np.all(error[~flipped] < 5.0)
    # the current basin is refined too, and a move is only to a better refined basin: the
    # likelihood never drops by more than the Gumbel noise of a near tie
    assert np.all(after > before - 5.0)
    assert info["gain"] > 0


def test_distinct_seeds_skip_the_current_rotation_and_symmetric_copies():
    rng = np.random.default_rng(3)
    ops = symmetry_operators("C4")
    base = random_rotations(rng, 1)[0]
    quarter = ops[1]
    far_one = random_rotations(rng, 1)[0]
    # candidates: the current rotation, its symmetric copy, a 5-degree neighbour, a far rotation
    near = Rotation.from_rotvec([0.0, 0.0, np.radians(5.0)]).as_matrix() @ base
    candidates = np.stack([base, base @ quarter, near, far_one, far_one @ quarter])
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    seeds = _distinct_seeds(scores, candidates, base[None], ops, 3, 20.0)
    # base, its copy and the neighbour are the current basin; far_one's copy is far_one's basin
    assert seeds.tolist() == [[3, -1, -1]]
    seeds_c1 = _distinct_seeds(scores, candidates, base[None], np.eye(3)[None], 3, 20.0)
    assert seeds_c1[0, 0] == 1 and 3 in seeds_c1[0]


# -- translations ---------------------------------------------------------------------------

@pytest.mark.parametrize("update_rotations", [False, True])
def test_translations_converge_to_the_true_shifts(update_rotations):
    rng = np.random.default_rng(13)
    mixture = _random_mixture(rng)
    rotations = random_rotations(rng, N_IMAGES)
    shifts = rng.uniform(-8.0, 8.0, (N_IMAGES, 2))  # up to 2 px, not whole pixels
    data = _images(mixture, rotations, shifts)
    assert _border(data.counts, 1) == 0
    sampler = ProjectedGibbsSampler(data, K, default_projection_prior(data), update_mixture=False,
                                    update_rotations=update_rotations, update_translations=True)
    state = sampler.init(None, mixture=mixture, rotations=rotations)
    errors = []
    for _ in range(40):
        state, _ = sampler.step(rng, state)
        errors.append(np.linalg.norm(state.translations_in_angstroms - shifts, axis=1))
    errors = np.array(errors)
    assert errors[0].max() > 2.0  # the first step starts from up to 11 Å off
    # With the rotations fixed the draws of t scatter about the truth with sd ~0.17 Å per coordinate
    # (measured mean error 0.21-0.22 Å, max over the last 20 steps of 30 images 0.52-0.69 Å, three
    # seeds; the conditional sd alone is sigma / sqrt(5000) = 0.11 Å). With the rotations sampled as
    # well, t trades off against out-of-plane tilts of a few degrees (measured mean 0.24-0.41 Å, max
    # 0.71-1.27 Å), so there the bound is the brief's one pixel.
    bound, mean_bound = (PIXEL, 1.0) if update_rotations else (1.0, 0.4)
    assert errors[20:].max() < bound
    assert errors[20:].mean() < mean_bound
