"""Rotation MH against a matrix Fisher target with exact draws as the reference."""

import numpy as np
from scipy.spatial.transform import Rotation

from cryogmm.samplers.diagnostics import effective_sample_size
from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.matrix_fisher import matrix_fisher_log_density_unnormalised, sample_matrix_fisher
from cryogmm.samplers.rotation_mh import rotation_mh


def test_rotation_mh_samples_a_matrix_fisher():
    rng = np.random.default_rng(17)
    mode = Rotation.from_euler("ZYZ", [40, 70, -20], degrees=True).as_matrix()
    parameters = mode @ np.diag([6.0, 3.0, 1.0])
    sampler = rotation_mh(lambda r: -matrix_fisher_log_density_unnormalised(r, parameters),
                         adapt_steps=1000)
    state = sampler.init(rng, np.eye(3), step_size=0.5)
    samples = []
    result = run_chain(sampler, rng, state, 21000, burn_in=1000, on_sample=lambda i, s: samples.append(s.position))
    samples = np.array(samples).reshape(-1, 9)
    exact = sample_matrix_fisher(rng, np.broadcast_to(parameters, (20000, 3, 3))).reshape(-1, 9)
    ess = np.array([effective_sample_size(samples[:, e]) for e in range(9)])
    assert np.all(ess > 300), ess
    se = np.sqrt(samples.var(axis=0) / ess + exact.var(axis=0) / exact.shape[0])
    z = np.abs(samples.mean(axis=0) - exact.mean(axis=0)) / se
    assert np.all(z < 4), z
    assert abs(result.traces["acceptance"][1000:-1].mean() - 0.3) < 0.1
