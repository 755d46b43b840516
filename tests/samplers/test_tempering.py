"""Replica exchange: one temperature is the plain chain; a ladder crosses a barrier plain MH cannot."""

import numpy as np
import pytest

from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.mh import RandomWalkMH
from cryogmm.samplers.tempering import ReplicaExchange, check_ladder


def _double_well(q):
    """Two equal modes at -4 and +4 (sd 0.5): a barrier of 32 energy units between them."""
    x = np.atleast_1d(q)[0]
    return float(-np.logaddexp(-0.5 * ((x - 4) / 0.5) ** 2, -0.5 * ((x + 4) / 0.5) ** 2))


def _sweep_factory():
    """One MH step on exp(-E / T) with a fixed width: a sweep that leaves the tempered target invariant."""
    samplers = {}

    def sweep(rng, state, temperature):
        sampler = samplers.setdefault(temperature, RandomWalkMH(energy=lambda q: _double_well(q) / temperature))
        return sampler.step(rng, state)[0]

    return sweep


def test_one_temperature_reproduces_the_untempered_chain():
    plain = RandomWalkMH(energy=_double_well)
    rng = np.random.default_rng(5)
    state = plain.init(rng, [3.0], step_size=0.7)
    positions = []
    run_chain(plain, rng, state, 500, on_sample=lambda i, s: positions.append(s.position[0]))
    rng = np.random.default_rng(5)
    tempered = ReplicaExchange(sweep=_sweep_factory(), energy=lambda s: _double_well(s.position),
                               temperatures=(1.0,))
    start = tempered.init(rng, [plain.init(rng, [3.0], step_size=0.7)])
    replica_positions = []
    run_chain(tempered, rng, start, 500, on_sample=lambda i, s: replica_positions.append(s.replicas[0].position[0]))
    np.testing.assert_array_equal(replica_positions, positions)


def test_a_ladder_visits_both_modes_where_plain_mh_stays_in_one():
    ladder = (1.0, 3.0, 9.0, 27.0)
    mh = RandomWalkMH(energy=_double_well)
    rng = np.random.default_rng(2)
    sampler = ReplicaExchange(sweep=_sweep_factory(), energy=lambda s: _double_well(s.position), temperatures=ladder)
    state = sampler.init(rng, [mh.init(rng, [4.0], step_size=1.0) for _ in ladder])
    cold = []
    result = run_chain(sampler, rng, state, 6000, burn_in=500,
                       on_sample=lambda i, s: cold.append(s.replicas[0].position[0]))
    share = np.mean(np.asarray(cold) > 0)
    assert 0.3 < share < 0.7, share  # the two modes have equal mass
    # the cold replica's samples stay near a mode (it is the T = 1 target, not a flattened one)
    assert np.mean(np.abs(np.abs(cold) - 4.0) < 1.5) > 0.95
    rates = result.final_state.swap_rates()
    assert np.all((rates > 0.05) & (rates < 1.0)), rates
    assert "swap_rate_0_1" in result.traces
    plain = []
    state = mh.init(rng, [4.0], step_size=1.0)
    run_chain(mh, rng, state, 6000, on_sample=lambda i, s: plain.append(s.position[0]))
    assert np.all(np.asarray(plain) > 0)  # plain MH never crosses the barrier


@pytest.mark.parametrize("ladder, fragment", [((1.0, 0.0), "positive"), ((1.0, -2.0), "positive"),
                                              ((1.0, 3.0, 2.0), "increase"), ((1.0, 1.0), "increase"),
                                              ((2.0, 4.0), "start at 1"), ((), "empty")])
def test_bad_ladders_are_refused(ladder, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_ladder(ladder)
