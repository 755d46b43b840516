"""Contract tests for HMC and random-walk MH: a correlated Gaussian through the driver."""

import numpy as np
import pytest

from cryogmm.samplers.diagnostics import effective_sample_size
from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.hmc import HMC, adapted_step_size
from cryogmm.samplers.mh import RandomWalkMH

MEAN = np.array([1.0, -2.0, 0.5])
COVARIANCE = np.array([[1.0, 0.8, 0.2], [0.8, 1.5, -0.3], [0.2, -0.3, 0.5]])
PRECISION = np.linalg.inv(COVARIANCE)


def _energy(q):
    d = q - MEAN
    return 0.5 * d @ PRECISION @ d


def _energy_and_gradient(q):
    return _energy(q), PRECISION @ (q - MEAN)


SAMPLERS = {
    "hmc": (HMC(energy_and_gradient=_energy_and_gradient, n_leapfrog=8, adapt_steps=500), 0.05, 4000),
    "mh": (RandomWalkMH(energy=_energy, adapt_steps=1000), 2.0, 20000),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samples_a_correlated_gaussian(name):
    sampler, step_size, n_steps = SAMPLERS[name]
    rng = np.random.default_rng(11)
    burn_in = sampler.adapt_steps
    state = sampler.init(rng, np.zeros(3), step_size=step_size)
    samples = []
    result = run_chain(sampler, rng, state, n_steps, burn_in=burn_in,
                       on_sample=lambda i, s: samples.append(s.position))
    samples = np.array(samples)
    # the step size is frozen after adaptation and the acceptance is near the target
    sizes = result.traces["step_size"][burn_in + 1:-1]
    assert np.all(sizes == sizes[0])
    acceptance = result.traces["acceptance"][burn_in:-1].mean()
    assert abs(acceptance - sampler.target_acceptance) < 0.1, acceptance
    ess = np.array([effective_sample_size(samples[:, d]) for d in range(3)])
    assert np.all(ess > 200), ess
    sd = np.sqrt(np.diag(COVARIANCE))
    mean_error = np.abs(samples.mean(axis=0) - MEAN) / (sd / np.sqrt(ess))
    assert np.all(mean_error < 4), mean_error
    # covariance entries: the standard error of a product moment, sqrt((S_ii S_jj + S_ij^2) / ess)
    # with the ESS of the product series itself (HMC's anti-correlated draws have an ESS above n
    # for the means but not for the squares)
    estimate = np.cov(samples.T)
    centred = samples - MEAN
    ess_pair = np.array([[effective_sample_size(centred[:, i] * centred[:, j]) for j in range(3)]
                         for i in range(3)])
    assert np.all(ess_pair > 200), ess_pair
    se = np.sqrt((np.outer(np.diag(COVARIANCE), np.diag(COVARIANCE)) + COVARIANCE**2) / ess_pair)
    assert np.all(np.abs(estimate - COVARIANCE) < 4 * se), (estimate, COVARIANCE)


def test_step_size_moves_toward_the_target_then_freezes():
    assert adapted_step_size(0.1, 0.9, 1, adapt_steps=5, target=0.5, rate=0.1) > 0.1
    assert adapted_step_size(0.1, 0.1, 5, adapt_steps=5, target=0.5, rate=0.1) < 0.1
    assert adapted_step_size(0.1, 0.1, 6, adapt_steps=5, target=0.5, rate=0.1) == 0.1


def test_effective_sample_size_of_independent_draws():
    x = np.random.default_rng(3).standard_normal(4000)
    assert 3000 < effective_sample_size(x) < 5500
