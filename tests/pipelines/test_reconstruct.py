"""Reconstruction with known poses (thesis section 3.2) against exact projections of a mixture.

The truth is a random 3D Gaussian mixture; the images are its exact projections (Eqn. 2.76,
`mixture.project`) with random rotations and in-plane shifts, 30 images of 32 px at 4 Å.
Measured values (seeds 0-2) are quoted next to the assertions.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.geometry.so3 import random_rotations
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.grid import Grid
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.mixture import GaussianMixture, evaluate, project
from cryogmm.pipelines.reconstruct import reconstruct_fourier, reconstruct_known_poses
from cryogmm.samplers.projected import expand_symmetry

BOX, PIXEL, N_IMAGES = 32, 4.0, 30
FAST = dict(n_components=50, n_counts=5000, n_steps=60, burn_in=30, thin=5)


def _problem(seed, symmetry="C1", n_components=20):
    rng = np.random.default_rng(seed)
    unit = GaussianMixture(rng.uniform(-25, 25, (n_components, 3)), rng.dirichlet(np.full(n_components, 5.0)),
                           1 / 6.0**2)
    truth = expand_symmetry(unit, symmetry_operators(symmetry))
    rotations = random_rotations(rng, N_IMAGES)
    shifts = rng.uniform(-8, 8, (N_IMAGES, 2))
    grid = Grid.centered((BOX, BOX), PIXEL)
    images = np.stack([evaluate(project(truth, a, np.r_[t, 0.0]), grid) for a, t in zip(rotations, shifts)])
    mass = 3.0  # images integrate to 3, so the map should too
    return images * mass, rotations, shifts, evaluate(truth, Grid.centered((BOX,) * 3, PIXEL)) * mass


@pytest.fixture(scope="module")
def problem():
    return _problem(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_mean_matches_the_truth(seed):
    images, rotations, shifts, truth = _problem(seed)
    result = reconstruct_known_poses(images, PIXEL, rotations, shifts, seed=1, **FAST)
    assert result.posterior_mean.shape == (BOX,) * 3
    assert result.grid == Grid.centered((BOX,) * 3, PIXEL)
    assert cross_correlation(truth, result.posterior_mean) > 0.98  # measured 0.9954, 0.9924, 0.9965
    # same units as the truth: a density whose line integrals are the images
    assert result.posterior_mean.sum() == pytest.approx(truth.sum(), rel=1e-3)
    assert result.n_samples == 6
    assert result.log_posterior_trace.shape == result.sigma_trace.shape == (61,)
    assert result.mixture.n_components == 50 and result.full_mixture.n_components == 50
    assert result.best_log_posterior >= result.log_posterior_trace[1:].max() - 1e-6
    assert 4.0 < result.sigma_in_angstroms < 9.0  # truth 6 Å; measured 5.8-5.9
    assert set(result.timings) >= {"sampling_seconds", "posterior_mean_seconds", "total_seconds"}


def test_the_known_shifts_are_used(problem):
    images, rotations, shifts, truth = problem
    right = reconstruct_known_poses(images, PIXEL, rotations, shifts, seed=1, **FAST)
    wrong = reconstruct_known_poses(images, PIXEL, rotations, -shifts, seed=1, **FAST)
    # measured 0.9954 against 0.72 with the shifts' sign flipped
    assert cross_correlation(truth, right.posterior_mean) > cross_correlation(truth, wrong.posterior_mean) + 0.05


def test_same_seed_same_result(problem):
    images, rotations, shifts, _ = problem
    a = reconstruct_known_poses(images, PIXEL, rotations, shifts, seed=3, **FAST)
    b = reconstruct_known_poses(images, PIXEL, rotations, shifts, seed=3, **FAST)
    np.testing.assert_array_equal(a.posterior_mean, b.posterior_mean)
    np.testing.assert_array_equal(a.log_posterior_trace, b.log_posterior_trace)


def test_no_kept_sample_falls_back_to_the_final_state(problem):
    images, rotations, shifts, _ = problem
    result = reconstruct_known_poses(images, PIXEL, rotations, shifts, seed=1, n_components=10, n_counts=2000,
                                     n_steps=4, burn_in=4, thin=1)
    assert result.n_samples == 1 and np.all(np.isfinite(result.posterior_mean))


def test_symmetric_reconstruction():
    images, rotations, shifts, truth = _problem(4, "C2", n_components=10)
    result = reconstruct_known_poses(images, PIXEL, rotations, shifts, seed=1, symmetry="c2",
                                     **{**FAST, "n_components": 25})
    assert result.mixture.n_components == 25 and result.full_mixture.n_components == 50
    assert cross_correlation(truth, result.posterior_mean) > 0.98  # measured 0.9959
    # the map is symmetric about the z axis through voxel n // 2: (x, y) -> (-x, -y)
    inner = result.posterior_mean[:, 1:, 1:]
    np.testing.assert_allclose(inner, inner[:, ::-1, ::-1], atol=1e-8 * inner.max())


def test_fourier_inversion_matches_the_truth(problem):
    images, rotations, shifts, truth = problem
    volume = reconstruct_fourier(images, PIXEL, rotations, shifts)
    assert volume.shape == (BOX,) * 3 and np.all(np.isfinite(volume))
    assert cross_correlation(truth, volume) > 0.95  # measured 0.9953


def test_fourier_inversion_with_symmetry():
    images, rotations, shifts, truth = _problem(4, "C2", n_components=10)
    plain = reconstruct_fourier(images[:8], PIXEL, rotations[:8], shifts[:8])
    symmetric = reconstruct_fourier(images[:8], PIXEL, rotations[:8], shifts[:8], symmetry="C2")
    # each image counts twice: the symmetric map is closer to the truth (measured 0.944 against 0.906)
    assert cross_correlation(truth, symmetric) > cross_correlation(truth, plain)


def test_negative_images_are_refused(problem):
    images, rotations, shifts, _ = problem
    noisy = images - 0.01 * images.max()
    with pytest.raises(InputError, match="deconvolve/mask them first"):
        reconstruct_known_poses(noisy, PIXEL, rotations, shifts, seed=1, **FAST)
    # rounding-level negatives are not
    tiny = images.copy()
    tiny[0, 0, 0] = -1e-9 * images.max()
    reconstruct_known_poses(tiny, PIXEL, rotations, shifts, seed=1, n_components=5, n_counts=1000, n_steps=2,
                            burn_in=0, thin=1)
    # the Fourier method allows negative values
    assert np.all(np.isfinite(reconstruct_fourier(noisy, PIXEL, rotations, shifts)))


@pytest.mark.parametrize("change, message", [
    (dict(rotations=np.eye(3)[None]), "rotations"),
    (dict(shifts=np.zeros((3, 2))), "shifts"),
    (dict(pixel=0.0), "pixel size"),
    (dict(images=np.ones((2, 4, 5))), "square"),
    (dict(images_nan=True), "NaN"),
    (dict(symmetry="X3"), "symmetry"),
    (dict(n_components=0), "n_components"),
    (dict(burn_in=100), "burn_in"),
])
def test_bad_input_is_refused(problem, change, message):
    images, rotations, shifts, _ = problem
    images = change.get("images", images)
    if change.get("images_nan"):
        images = images.copy()
        images[0, 0, 0] = np.nan
    options = {**FAST, "n_components": change.get("n_components", 50), "burn_in": change.get("burn_in", 30)}
    args = (images, change.get("pixel", PIXEL), change.get("rotations", rotations), change.get("shifts", shifts))
    with pytest.raises(InputError, match=message):
        reconstruct_known_poses(*args, seed=1, symmetry=change.get("symmetry", "C1"), **options)
    if "n_components" not in change and "burn_in" not in change:
        with pytest.raises(InputError, match=message):
            reconstruct_fourier(*args, symmetry=change.get("symmetry", "C1"))
