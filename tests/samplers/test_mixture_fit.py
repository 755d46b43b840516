"""EM and Gibbs sampling of an isotropic mixture on point clouds and binned data (thesis 2.2-2.3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cryogmm.grid import Grid
from cryogmm.mixture import GaussianMixture, evaluate
from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.mixture_fit import GridCounts, MixtureFitSampler, PointCloud, default_prior
from cryogmm.simulate.discretise import discretise

# thesis Fig. 2.8: three well-separated isotropic components of sigma 1 in 2D
TRUE_MEANS = np.array([[0.0, 4.0], [-4.0, -3.0], [4.5, -2.0]])
TRUE_WEIGHTS = np.array([0.3, 0.3, 0.4])
N_POINTS = 3000


def _relative_steps(trace):
    trace = np.asarray(trace)
    return np.diff(trace) / np.abs(trace[1:])


@pytest.fixture(scope="module")
def figure_2_8():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, N_POINTS, p=TRUE_WEIGHTS)
    points = TRUE_MEANS[labels] + rng.standard_normal((N_POINTS, 2))
    data = PointCloud(points)
    # a weak Gamma prior on s (the default b = 1000 Å^2 expects sigma ~ 10 Å, not 1)
    prior = default_prior(data, shape=2.0, rate=2.0)
    # as in Fig. 2.8, start with all components near the origin
    start = GaussianMixture(0.5 * np.random.default_rng(1).standard_normal((3, 2)), np.full(3, 1 / 3), 0.1)
    em = MixtureFitSampler(data, 3, prior, "em")
    em_chain = run_chain(em, np.random.default_rng(2), em.init(None, start), 300)
    gibbs = MixtureFitSampler(data, 3, prior, "gibbs")
    samples = []
    gibbs_chain = run_chain(gibbs, np.random.default_rng(3), gibbs.init(None, start), 400, burn_in=200,
                            on_sample=lambda step, state: samples.append(state.mixture))
    return labels, em_chain, gibbs_chain, samples


def test_em_and_gibbs_agree_and_recover_the_truth(figure_2_8):
    labels, em_chain, gibbs_chain, samples = figure_2_8
    em = em_chain.final_state.mixture
    assert len(samples) == 200  # the last half of the chain
    assert np.abs(_relative_steps(em_chain.traces["log_posterior"])[-20:]).max() < 1e-12  # converged
    gibbs_means = np.mean([m.means_in_angstroms for m in samples], axis=0)
    gibbs_weights = np.mean([m.weights for m in samples], axis=0)
    gibbs_sigma = np.mean([m.sigma_in_angstroms for m in samples])
    # match components by the Hungarian algorithm on the distances between means
    cost = np.linalg.norm(em.means_in_angstroms[:, None] - gibbs_means[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    assert np.all(np.linalg.norm(em.means_in_angstroms[rows] - gibbs_means[cols], axis=1) < 0.1)  # 0.1 sigma
    np.testing.assert_allclose(em.weights[rows], gibbs_weights[cols], atol=0.01)
    assert gibbs_sigma == pytest.approx(em.sigma_in_angstroms, rel=0.02)
    # both recover the generating means within 4 standard errors sigma / sqrt(N_k) per coordinate
    true_rows, fitted = linear_sum_assignment(
        np.linalg.norm(TRUE_MEANS[:, None] - em.means_in_angstroms[None], axis=-1))
    standard_error = 1.0 / np.sqrt(np.bincount(labels, minlength=3))[:, None]
    for means in (em.means_in_angstroms, gibbs_means[cols[np.argsort(rows)]]):
        assert np.all(np.abs(means[fitted] - TRUE_MEANS[true_rows]) < 4 * standard_error[true_rows])
    # the common sigma is 1 within a few standard errors, sqrt(1 / (2 N)) relative for d = 2
    assert em.sigma_in_angstroms == pytest.approx(1.0, abs=4 * np.sqrt(1 / (2 * N_POINTS)))
    np.testing.assert_allclose(em.weights[fitted], TRUE_WEIGHTS[true_rows], atol=4 * np.sqrt(0.25 / N_POINTS))


def test_gibbs_log_posterior_oscillates_below_the_em_optimum(figure_2_8):
    # thesis Fig. 2.9: after burn-in the Gibbs samples stay close to, and below, the EM optimum
    _, em_chain, gibbs_chain, _ = figure_2_8
    optimum = em_chain.traces["log_posterior"][-1]
    after_burn_in = gibbs_chain.traces["log_posterior"][200:]
    assert after_burn_in.max() <= optimum
    # about half the number of parameters (9 / 2 nats) below on average; 30 is far in the tail
    assert np.all(optimum - after_burn_in < 30)
    assert np.ptp(after_burn_in) > 0


@pytest.mark.parametrize("mean_prior", ["independent", "conjugate"])
def test_em_log_posterior_never_decreases_on_a_point_cloud(figure_2_8, mean_prior):
    rng = np.random.default_rng(5)
    labels = rng.choice(3, 500, p=TRUE_WEIGHTS)
    data = PointCloud(TRUE_MEANS[labels] + rng.standard_normal((500, 2)))
    overrides = dict(shape=2.0, rate=2.0, mean_prior=mean_prior)
    if mean_prior == "conjugate":
        overrides["mean_precision"] = 0.5
    sampler = MixtureFitSampler(data, 4, default_prior(data, **overrides), "em")
    chain = run_chain(sampler, rng, sampler.init(rng), 200)
    trace = chain.traces["log_posterior"]
    assert trace.size == 201
    assert trace[-1] - trace[0] > 100  # it did climb from the prior draw
    assert _relative_steps(trace).min() >= -1e-12


def _binned_2d(n_counts=2e4):
    truth = GaussianMixture([[-8.0, 5.0], [6.0, 3.0], [0.0, -7.0], [2.0, 2.0]], [0.3, 0.3, 0.25, 0.15],
                            1 / 3.0**2)
    grid = Grid.centered((48, 48), 1.0)
    return truth, GridCounts(discretise(evaluate(truth, grid), n_counts), grid)


@pytest.mark.parametrize("mean_prior", ["independent", "conjugate"])
def test_em_log_posterior_never_decreases_on_binned_data(mean_prior):
    _, data = _binned_2d()
    overrides = {} if mean_prior == "independent" else {"mean_precision": 0.5}
    sampler = MixtureFitSampler(data, 4, default_prior(data, mean_prior=mean_prior, **overrides), "em")
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        trace = run_chain(sampler, rng, sampler.init(rng), 300).traces["log_posterior"]
        assert _relative_steps(trace).min() >= -1e-9
        assert trace[-1] > trace[1]


def test_binned_and_point_cloud_readings_agree():
    # the binned data are the point cloud of grid points with the counts as multiplicities
    # (Eqn. 2.53); with a cut-off of 30 sigma nothing is truncated and the EM paths coincide
    _, data = _binned_2d(5e3)
    points, counts = data.weighted_points()
    cloud = PointCloud(points, counts.astype(np.int64))
    prior = default_prior(data)
    assert default_prior(cloud).mean_precision == pytest.approx(prior.mean_precision, rel=1e-12)
    np.testing.assert_allclose(default_prior(cloud).center_in_angstroms, prior.center_in_angstroms, rtol=1e-12)
    start = GaussianMixture([[-5.0, 0.0], [5.0, 0.0], [0.0, -5.0], [0.0, 5.0]], np.full(4, 0.25), 0.05)
    traces = []
    finals = []
    for d in (data, cloud):
        sampler = MixtureFitSampler(d, 4, prior, "em", cutoff_sigmas=30.0)
        chain = run_chain(sampler, np.random.default_rng(0), sampler.init(None, start), 30)
        traces.append(chain.traces["log_posterior"])
        finals.append(chain.final_state.mixture)
    np.testing.assert_allclose(traces[0], traces[1], rtol=1e-9)
    np.testing.assert_allclose(finals[0].means_in_angstroms, finals[1].means_in_angstroms, atol=1e-7)


def test_one_dimensional_binned_data():
    truth = GaussianMixture([[-20.0], [15.0]], [0.4, 0.6], 1 / 4.0**2)
    grid = Grid.centered((160,), 0.5)
    data = GridCounts(discretise(evaluate(truth, grid), 1e4), grid)
    assert data.ndim == 1
    prior = default_prior(data, shape=2.0, rate=20.0)
    start = GaussianMixture([[-1.0], [1.0]], [0.5, 0.5], 0.01)
    em = MixtureFitSampler(data, 2, prior, "em")
    fit = run_chain(em, np.random.default_rng(0), em.init(None, start), 300).final_state.mixture
    order = np.argsort(fit.means_in_angstroms[:, 0])
    # the counts follow the density closely, so the fit is far better than sigma / sqrt(N_k) ~ 0.06 Å
    np.testing.assert_allclose(fit.means_in_angstroms[order, 0], [-20.0, 15.0], atol=0.06)
    np.testing.assert_allclose(fit.weights[order], [0.4, 0.6], atol=0.01)
    assert fit.sigma_in_angstroms == pytest.approx(4.0, rel=0.02)
    gibbs = MixtureFitSampler(data, 2, prior, "gibbs")
    samples = []
    run_chain(gibbs, np.random.default_rng(1), gibbs.init(None, start), 200, burn_in=100,
              on_sample=lambda step, state: samples.append(np.sort(state.mixture.means_in_angstroms[:, 0])))
    np.testing.assert_allclose(np.mean(samples, axis=0), [-20.0, 15.0], atol=0.2)


@pytest.mark.parametrize("kind", ["grid", "points"])
def test_same_seed_same_chain(kind):
    truth, data = _binned_2d(3e3)
    if kind == "points":
        points, counts = data.weighted_points()
        data = PointCloud(points, counts.astype(np.int64))
    sampler = MixtureFitSampler(data, 4, default_prior(data), "gibbs")
    chains = []
    for seed in (11, 11, 12):
        rng = np.random.default_rng(seed)
        chains.append(run_chain(sampler, rng, sampler.init(rng), 15))
    a, b, c = chains
    np.testing.assert_array_equal(a.traces["log_posterior"], b.traces["log_posterior"])
    np.testing.assert_array_equal(a.final_state.mixture.means_in_angstroms, b.final_state.mixture.means_in_angstroms)
    assert a.final_state.mixture.precision_per_square_angstrom == b.final_state.mixture.precision_per_square_angstrom
    assert not np.array_equal(a.traces["log_posterior"], c.traces["log_posterior"])


def test_default_prior_uses_the_spread_about_the_centre_of_mass():
    rng = np.random.default_rng(3)
    points = rng.normal([3.0, -2.0, 7.0], [2.0, 4.0, 1.0], (200, 3))
    multiplicities = rng.integers(0, 6, 200)
    prior = default_prior(PointCloud(points, multiplicities))
    center = multiplicities @ points / multiplicities.sum()
    mean_square = multiplicities @ ((points - center) ** 2).sum(1) / multiplicities.sum()
    np.testing.assert_allclose(prior.center_in_angstroms, center, rtol=1e-12)
    assert prior.mean_precision == pytest.approx(3 / mean_square, rel=1e-12)
    assert (prior.shape, prior.rate, prior.concentration, prior.mean_prior) == (10.0, 1000.0, 10.0, "independent")
    # binned data: the counts weight the grid points
    grid = Grid((4, 5), 2.0, (1.0, -3.0))
    counts = np.zeros(grid.shape, dtype=np.int32)
    counts[1, 2] = 3  # (x, y) = (5, -1)
    counts[3, 0] = 1  # (1, 3)
    binned = default_prior(GridCounts(counts, grid), concentration=2.0)
    np.testing.assert_allclose(binned.center_in_angstroms, [4.0, 0.0])
    assert binned.mean_precision == pytest.approx(2 / ((3 * 2.0 + 1 * 18.0) / 4))
    assert binned.concentration == 2.0


def test_bad_settings_are_refused():
    _, data = _binned_2d(1e3)
    prior = default_prior(data)
    with pytest.raises(ValueError, match="at least 1"):
        MixtureFitSampler(data, 0, prior)
    with pytest.raises(ValueError, match="algorithm"):
        MixtureFitSampler(data, 3, prior, "variational")
    with pytest.raises(ValueError, match="dimension"):
        MixtureFitSampler(PointCloud(np.zeros((5, 3))), 2, prior)
    with pytest.raises(ValueError, match="non-negative integers"):
        GridCounts(np.full(data.grid.shape, 0.5), data.grid)
    with pytest.raises(ValueError, match="non-negative integers"):
        GridCounts(-np.ones(data.grid.shape, dtype=int), data.grid)
    with pytest.raises(ValueError, match="shape"):
        GridCounts(np.ones((3, 3), dtype=int), data.grid)
    with pytest.raises(ValueError, match="finite"):
        PointCloud([[0.0, np.nan]])
    with pytest.raises(ValueError, match="multiplicities"):
        PointCloud(np.zeros((3, 2)), np.array([1, 2]))


def test_driver_burn_in_thinning_and_traces():
    _, data = _binned_2d(2e3)
    sampler = MixtureFitSampler(data, 3, default_prior(data), "gibbs")
    rng = np.random.default_rng(0)
    state = sampler.init(rng)
    kept = []
    chain = run_chain(sampler, rng, state, 20, burn_in=5, thin=4, on_sample=lambda step, s: kept.append(s.step))
    assert chain.kept_steps == [9, 13, 17] and kept == [9, 13, 17]
    assert chain.final_state.step == 20
    for key in ("log_posterior", "sigma_in_angstroms", "n_unassigned"):
        assert chain.traces[key].shape == (21,)
    # the trace describes states 0..n: its first entry is the initial state's log-posterior
    assert chain.traces["log_posterior"][0] == pytest.approx(sampler.log_posterior(state), rel=1e-12)
    assert chain.traces["log_posterior"][-1] == pytest.approx(sampler.log_posterior(chain.final_state), rel=1e-12)
    assert chain.traces["sigma_in_angstroms"][0] == state.mixture.sigma_in_angstroms
    with pytest.raises(ValueError):
        run_chain(sampler, rng, state, 5, thin=0)
