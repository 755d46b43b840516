"""Gibbs draws of the weight and noise precision against the energy of forward.gaussian."""

import numpy as np
import pytest
from scipy import stats

from cryogmm.forward.gaussian import energy_and_gradients, predicted_images
from cryogmm.samplers.gaussian_noise import (draw_noise_precision, draw_weight, noise_precision_conditional,
                                             weight_conditional)


def _problem():
    rng = np.random.default_rng(5)
    coords = (np.arange(10) - 5) * 2.0
    xx, yy = np.meshgrid(coords, coords)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    means = rng.normal(scale=3.0, size=(3, 3))
    rotations = np.stack([np.eye(3), np.diag([1.0, -1.0, -1.0])])
    translations = np.zeros((2, 2))
    truth = predicted_images(pixels, means, rotations, translations, scale=2.0, size=0.1)
    images = truth + rng.normal(scale=0.2, size=truth.shape)
    return images, pixels, means, rotations, translations


def _energy(problem, *, scale, noise_precision, a_beta, b_beta):
    images, pixels, means, rotations, translations = problem
    return energy_and_gradients(images, pixels, means, rotations, translations, scale=scale, size=0.1,
                                noise_precision=noise_precision, mean_precision=0.0,
                                a_beta=a_beta, b_beta=b_beta)[0]


def test_weight_conditional_is_the_energy_in_lam():
    problem = _problem()
    images, pixels, means, rotations, translations = problem
    unit = predicted_images(pixels, means, rotations, translations, scale=1.0, size=0.1)
    mean, precision = weight_conditional(images, unit, 25.0)
    lams = np.linspace(1.5, 2.5, 7)
    # -E(lam) and log N(lam | mean, 1/precision) differ by a constant
    gap = [stats.norm.logpdf(lam, mean, 1 / np.sqrt(precision))
           + _energy(problem, scale=lam, noise_precision=25.0, a_beta=1.0, b_beta=0.0) for lam in lams]
    assert np.ptp(gap) < 1e-8 * np.max(np.abs(gap))
    assert mean == pytest.approx(2.0, abs=4 / np.sqrt(precision))
    rng = np.random.default_rng(4)
    draws = np.array([draw_weight(rng, images, unit, 25.0) for _ in range(4000)])
    se = 1 / np.sqrt(precision)
    assert abs(draws.mean() - mean) < 4 * se / np.sqrt(draws.size)
    assert stats.kstest(draws, stats.norm(mean, se).cdf).pvalue > 1e-3


def test_noise_precision_conditional_is_the_energy_in_beta():
    problem = _problem()
    images, pixels, means, rotations, translations = problem
    predictions = predicted_images(pixels, means, rotations, translations, scale=2.0, size=0.1)
    shape, rate = noise_precision_conditional(images, predictions, a_beta=3.0, b_beta=0.2)
    betas = np.linspace(10.0, 40.0, 7)
    gap = [stats.gamma.logpdf(b, shape, scale=1 / rate)
           + _energy(problem, scale=2.0, noise_precision=b, a_beta=3.0, b_beta=0.2) for b in betas]
    assert np.ptp(gap) < 1e-8 * np.max(np.abs(gap))
    # the noise was drawn with sd 0.2: beta near 25
    assert shape / rate == pytest.approx(25.0, rel=0.25)
    rng = np.random.default_rng(9)
    draws = np.array([draw_noise_precision(rng, images, predictions, a_beta=3.0, b_beta=0.2)
                      for _ in range(4000)])
    assert stats.kstest(draws, stats.gamma(shape, scale=1 / rate).cdf).pvalue > 1e-3
