"""BlockMH: N independent targets sampled at once, one accept/reject per block."""

import numpy as np

from cryogmm.samplers.diagnostics import effective_sample_size
from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.image_mh import BlockMH

# five independent 2D Gaussians with different means and scales
MEANS = np.array([[0.0, 1.0], [-3.0, 2.0], [5.0, -1.0], [1.0, 1.0], [-2.0, -4.0]])
SDS = np.array([0.5, 1.0, 1.5, 0.8, 1.2])


def _energies(q):
    return 0.5 * np.sum(((q - MEANS) / SDS[:, None]) ** 2, axis=1)


def test_each_block_samples_its_own_gaussian():
    rng = np.random.default_rng(4)
    sampler = BlockMH(energies=_energies, adapt_steps=1000)
    state = sampler.init(rng, np.zeros_like(MEANS), step_size=0.5)
    samples = []
    result = run_chain(sampler, rng, state, 21000, burn_in=1000, on_sample=lambda i, s: samples.append(s.position))
    samples = np.array(samples)  # (S, 5, 2)
    sizes = result.traces["step_size"][1001:-1]
    assert np.all(sizes == sizes[0])
    assert abs(result.traces["acceptance"][1000:-1].mean() - 0.3) < 0.1
    ess = np.array([[effective_sample_size(samples[:, i, d]) for d in range(2)] for i in range(5)])
    assert np.all(ess > 200), ess
    z = np.abs(samples.mean(0) - MEANS) / (SDS[:, None] / np.sqrt(ess))
    assert np.all(z < 4), z
    # the variance of each block: standard error sqrt(2 / ess) relative
    ratio = samples.var(0) / SDS[:, None] ** 2
    assert np.all(np.abs(ratio - 1) < 4 * np.sqrt(2 / ess)), ratio
    # blocks are accepted independently: their acceptance indicators differ from step to step
    assert 0.0 < result.traces["accepted"][1000:-1].std()


def test_a_block_that_stays_put_keeps_its_energy():
    rng = np.random.default_rng(1)
    # an infinite energy wherever block 0 moves: it is never accepted, the others still move
    start = np.zeros_like(MEANS)

    def energies(q):
        e = _energies(q)
        e[0] = 0.0 if np.all(q[0] == 0) else np.inf
        return e

    sampler = BlockMH(energies=energies)
    state = sampler.init(rng, start, step_size=0.5)
    for _ in range(50):
        state, _ = sampler.step(rng, state)
    assert np.all(state.position[0] == 0) and state.energies[0] == 0.0
    assert np.all(state.position[1:] != 0)
