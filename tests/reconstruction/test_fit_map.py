"""Pseudo-atom fitting of a 3D density map (thesis section 3.1) on small synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cryogmm.errors import InputError
from cryogmm.grid import Grid
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.mixture import GaussianMixture, evaluate
from cryogmm.reconstruction.fit_map import fit_map, non_negative_part, summarize

BLOB_MEANS = np.array([[-10.0, 4.0, 2.0], [8.0, -6.0, 0.0], [2.0, 10.0, -8.0], [0.0, -2.0, 10.0], [-6.0, -10.0, -6.0]])
BLOB_WEIGHTS = np.array([0.25, 0.2, 0.2, 0.2, 0.15])
BLOB_SIGMA = 4.0  # Å, two voxels


def _blobs(origin_shift=(0.0, 0.0, 0.0)):
    """Five Gaussian blobs on a 32^3 grid of 2 Å (the grid centre shifted by `origin_shift`)."""
    shift = np.asarray(origin_shift)
    centred = Grid.centered((32, 32, 32), 2.0)
    grid = Grid(centred.shape, 2.0, tuple(np.asarray(centred.origin_in_angstroms) + shift))
    truth = GaussianMixture(BLOB_MEANS + shift, BLOB_WEIGHTS, 1 / BLOB_SIGMA**2)
    return grid, truth, evaluate(truth, grid).astype(np.float32)


@pytest.mark.parametrize("algorithm, n_components", [("gibbs", 8), ("em", 5)])
def test_fit_reproduces_the_map(algorithm, n_components):
    grid, _, values = _blobs()
    result = fit_map(values, grid, n_components, rng=np.random.default_rng(0), algorithm=algorithm,
                     n_counts=2e5, n_steps=60, thin=5)
    summary = summarize(result, values)
    assert summary["cross_correlation"] > 0.99
    assert cross_correlation(values, result.fitted_map()) == pytest.approx(summary["cross_correlation"], abs=1e-6)
    assert summary["cross_correlation_last_sample"] > 0.99
    assert summary["sigma_in_angstroms"] == pytest.approx(BLOB_SIGMA, rel=0.1)
    assert summary["negative_voxels_set_to_zero"] == 0 and summary["negative_fraction_of_mass"] == 0.0
    assert summary["n_components"] == n_components
    assert abs(summary["n_counts"] - 2e5) < 0.5 * values.size  # rounding, Eqn. 2.52
    # burn-in 2/3 of 60 steps, then every 5th state: steps 45, 50, 55, 60
    assert result.n_samples_averaged == 4 == summary["n_samples_averaged"]
    assert result.traces["log_posterior"].shape == (61,)
    assert summary["log_posterior"] == result.traces["log_posterior"][-1]
    # the fitted map is the posterior mean scaled to the input's total, as float32 on the input grid
    fitted = result.fitted_map()
    assert fitted.shape == values.shape and fitted.dtype == np.float32
    assert fitted.sum(dtype=np.float64) == pytest.approx(values.sum(dtype=np.float64), rel=1e-5)


def test_fit_finds_the_blobs_in_angstroms_on_a_shifted_grid():
    # a grid whose origin is far from zero: the fitted means are in the map's coordinates
    shift = (120.0, -64.0, 35.0)
    grid, truth, values = _blobs(shift)
    result = fit_map(values, grid, 5, rng=np.random.default_rng(1), algorithm="em", n_counts=2e5, n_steps=80)
    fitted = result.mixture.means_in_angstroms
    rows, cols = linear_sum_assignment(np.linalg.norm(truth.means_in_angstroms[:, None] - fitted[None], axis=-1))
    # with 2e5 counts the standard error sigma / sqrt(N_k) is ~0.02 Å; rounding the counts adds a bit
    np.testing.assert_allclose(fitted[cols], truth.means_in_angstroms[rows], atol=0.1)
    np.testing.assert_allclose(result.mixture.weights[cols], BLOB_WEIGHTS[rows], atol=0.01)
    np.testing.assert_allclose(result.prior.center_in_angstroms, BLOB_WEIGHTS @ truth.means_in_angstroms, atol=0.1)


def test_same_seed_same_fit():
    grid, _, values = _blobs()
    runs = [fit_map(values, grid, 6, rng=np.random.default_rng(seed), n_counts=5e4, n_steps=12, thin=2)
            for seed in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0].mixture.means_in_angstroms, runs[1].mixture.means_in_angstroms)
    np.testing.assert_array_equal(runs[0].posterior_mean_map, runs[1].posterior_mean_map)
    np.testing.assert_array_equal(runs[0].traces["log_posterior"], runs[1].traces["log_posterior"])
    assert not np.array_equal(runs[0].mixture.means_in_angstroms, runs[2].mixture.means_in_angstroms)


def test_negative_values_are_set_to_zero_and_counted():
    # negative "solvent" values where the blobs are negligible, as solvent flattening leaves them
    grid, _, values = _blobs()
    rng = np.random.default_rng(2)
    solvent = values < 1e-4 * values.max()
    noisy = values.copy()
    noisy[solvent] = -rng.uniform(0.0, 0.05 * values.max(), solvent.sum())
    negative = noisy < 0
    assert negative.sum() > 1000
    part = non_negative_part(noisy)
    np.testing.assert_array_equal(part.values, np.where(negative, 0.0, noisy))
    assert part.n_negative_voxels == negative.sum()
    expected_fraction = np.abs(noisy[negative].astype(np.float64)).sum() / np.abs(noisy.astype(np.float64)).sum()
    assert 0.1 < expected_fraction < 0.9
    assert part.negative_fraction_of_mass == pytest.approx(expected_fraction, rel=1e-12)
    result = fit_map(noisy, grid, 5, rng=np.random.default_rng(0), algorithm="em", n_counts=1e5, n_steps=30)
    assert result.clipped.n_negative_voxels == negative.sum()
    summary = summarize(result, noisy)
    assert summary["negative_voxels_set_to_zero"] == negative.sum()
    assert summary["negative_fraction_of_mass"] == pytest.approx(expected_fraction, rel=1e-12)
    # the fit describes the non-negative part, here the blobs
    assert cross_correlation(values, result.posterior_mean_map) > 0.99
    assert summary["cross_correlation_non_negative_part"] > 0.99
    assert result.fitted_map().sum(dtype=np.float64) == pytest.approx(part.values.sum(), rel=1e-5)
    assert non_negative_part(np.zeros(4)).negative_fraction_of_mass == 0.0


def test_threshold_zeroes_weak_values():
    grid, _, values = _blobs()
    threshold = 0.05 * float(values.max())
    part = non_negative_part(values, threshold)
    weak = values < threshold
    np.testing.assert_array_equal(part.values, np.where(weak, 0.0, values))
    assert part.n_negative_voxels == weak.sum()
    assert part.negative_fraction_of_mass == pytest.approx(values[weak].sum(dtype=np.float64) / values.sum(dtype=np.float64))
    result = fit_map(values, grid, 5, rng=np.random.default_rng(0), algorithm="em", n_counts=5e4, n_steps=5,
                     threshold=threshold)
    assert result.data.counts[weak].sum() == 0
    for bad in (-1.0, np.nan):
        with pytest.raises(InputError, match="--threshold"):
            fit_map(values, grid, 5, rng=np.random.default_rng(0), n_steps=2, threshold=bad)


@pytest.mark.parametrize("make", [np.zeros, lambda shape: -np.ones(shape)])
def test_a_map_without_positive_values_is_refused(make):
    grid, _, _ = _blobs()
    with pytest.raises(InputError, match="no (positive )?values"):
        fit_map(make(grid.shape), grid, 3, rng=np.random.default_rng(0), n_steps=2)


def test_more_components_than_counts_is_refused():
    grid, _, values = _blobs()
    # 500 requested counts round to fewer than 500 (most voxels round to zero, Eqn. 2.52)
    with pytest.raises(InputError, match=r"--components 500 is more than the [1-9]\d* counts.*--counts"):
        fit_map(values, grid, 500, rng=np.random.default_rng(0), n_counts=500, n_steps=2)
    # with (nearly) nothing left after rounding
    with pytest.raises(InputError, match="--components"):
        fit_map(values, grid, 1, rng=np.random.default_rng(0), n_counts=1, n_steps=2)
