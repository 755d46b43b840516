"""samplers.driver.run_chain: stopping rules fire where their statistics say, the fixed schedule
stays the maximum, checkpoints resume to the same chain, the best state and the posterior mean."""

import numpy as np
import pytest

from cryogmm.geometry.so3 import random_rotations
from cryogmm.samplers.driver import ChainCheckpoint, run_chain
from cryogmm.samplers.stopping import LogPosteriorPlateau, RotationsStable


class Relaxing:
    """x_{t+1} = target + a (x_t - target) + noise: an AR(1) chain whose log-posterior -x^2/2 ... rises
    geometrically from its start and then fluctuates about its stationary mean."""

    def __init__(self, a=0.8, noise=0.1):
        self.a, self.noise = a, noise

    def log_posterior(self, x):
        return float(-0.5 * np.sum(x**2))

    def step(self, rng, x):
        new = self.a * x + self.noise * rng.standard_normal(x.shape)
        return new, {"log_posterior": self.log_posterior(x)}


class MemoryStore:
    def __init__(self):
        self.saved = {}

    def save(self, name, arrays):
        self.saved[name] = {k: np.array(v) for k, v in arrays.items()}

    def load(self, name):
        return self.saved.get(name)


def _checkpoint(store, every=7):
    return ChainCheckpoint(store, "chain", every, lambda x: {"x": x}, lambda d: np.asarray(d["x"]))


def test_plateau_stops_after_the_transient_and_not_before():
    sampler = Relaxing()
    rng = np.random.default_rng(1)
    result = run_chain(sampler, rng, np.full(20, 10.0), 500, stopping=[LogPosteriorPlateau(window=10)])
    # the log-posterior's transient is -1000 x 0.64^t about a stationary mean of -0.28 with sd 0.09:
    # a window of 10 starting at step t averages 1000 x 0.64^t / 3.6 below the next window, which is
    # 3 at t = 10 and 0.35 at t = 15; the rule cannot fire before the window that starts at t = 10
    # has passed (step 30). Measured: step 35, change 0.16 with standard error 0.084
    assert result.stop.rule == "log_posterior_plateau"
    assert 30 <= result.stop.step <= 150, result.stop
    assert abs(result.stop.details["log_posterior_change"]) <= 2 * result.stop.details["standard_error"]
    assert len(result.traces["log_posterior"]) == result.stop.step + 1
    # a tolerance of 0 standard errors never fires: the schedule is the maximum
    never = run_chain(sampler, np.random.default_rng(1), np.full(20, 10.0), 80,
                      stopping=[LogPosteriorPlateau(window=10, tolerance_in_standard_errors=0.0)])
    assert never.stop.rule == "max_steps" and never.stop.step == 80


def test_min_steps_holds_the_rules_back():
    result = run_chain(Relaxing(), np.random.default_rng(1), np.zeros(20), 500, min_steps=120,
                       stopping=[LogPosteriorPlateau(window=10)])
    assert result.stop.step >= 120 and result.stop.rule == "log_posterior_plateau"


class RotationWalk:
    """Rotations that turn by `step_in_degrees` about a fixed axis per step for `moving` steps,
    then stand still."""

    def __init__(self, step_in_degrees, moving):
        from scipy.spatial.transform import Rotation

        self.turn = Rotation.from_rotvec([0, 0, np.radians(step_in_degrees)]).as_matrix()
        self.moving = moving

    def log_posterior(self, state):
        return 0.0

    def step(self, rng, state):
        step, rotations = state
        if step < self.moving:
            rotations = self.turn @ rotations
        return (step + 1, rotations), {"log_posterior": 0.0}


def test_rotations_stable_fires_once_the_window_means_agree():
    rotations = random_rotations(np.random.default_rng(0), 5)
    rule = RotationsStable(window=5, tolerance_in_degrees=0.5)
    result = run_chain(RotationWalk(1.0, 30), np.random.default_rng(0), (0, rotations), 200, stopping=[rule],
                       monitor=lambda s: s[1])
    # while turning by 1 degree a step the window means differ by 5 degrees; after step 30 the
    # last window stands still and the earlier one catches up: the means differ by
    # (sum of the earlier window's lag) / 5 <= 0.5 degrees first at step 39
    assert result.stop.rule == "rotations_stable" and 38 <= result.stop.step <= 40, result.stop
    with pytest.raises(ValueError, match="monitor"):
        run_chain(RotationWalk(1.0, 30), np.random.default_rng(0), (0, rotations), 10, stopping=[rule])


@pytest.mark.parametrize("bad", [dict(window=1), dict(window=5, tolerance_in_degrees=-1.0),
                                 dict(window=5, tolerance_in_degrees=float("nan"))])
def test_bad_rule_settings_are_refused(bad):
    with pytest.raises(ValueError):
        RotationsStable(**bad)


def test_checkpoint_resume_gives_the_uninterrupted_chain():
    sampler = Relaxing()
    options = dict(burn_in=10, thin=3, mean_of=lambda x: x, best_from=5, stopping=[LogPosteriorPlateau(window=10)])
    reference = run_chain(sampler, np.random.default_rng(4), np.full(6, 3.0), 200, **options)

    class Interrupt(Exception):
        pass

    class Interrupting(MemoryStore):
        def save(self, name, arrays):
            super().save(name, arrays)
            if not arrays["finished"]:
                raise Interrupt

    store = Interrupting()
    with pytest.raises(Interrupt):
        run_chain(sampler, np.random.default_rng(4), np.full(6, 3.0), 200, checkpoint=_checkpoint(store), **options)
    assert int(store.saved["chain"]["step"]) == 7
    plain = MemoryStore()
    plain.saved = store.saved
    resumed = run_chain(sampler, np.random.default_rng(99), None, 200, checkpoint=_checkpoint(plain), **options)
    assert resumed.resumed and resumed.stop == reference.stop
    np.testing.assert_array_equal(resumed.final_state, reference.final_state)
    np.testing.assert_array_equal(resumed.posterior_mean, reference.posterior_mean)
    np.testing.assert_array_equal(resumed.traces["log_posterior"], reference.traces["log_posterior"])
    np.testing.assert_array_equal(resumed.best_state, reference.best_state)
    # a finished chain in the store is returned as it was, without running a step
    again = run_chain(None, np.random.default_rng(5), None, 200, checkpoint=_checkpoint(plain), **options)
    np.testing.assert_array_equal(again.posterior_mean, reference.posterior_mean)
    assert again.stop == reference.stop


def test_best_state_and_posterior_mean():
    sampler = Relaxing(a=0.5, noise=1.0)
    states = []
    result = run_chain(sampler, np.random.default_rng(2), np.zeros(3), 40, burn_in=10, thin=5, best_from=0,
                       mean_of=lambda x: x, on_sample=lambda i, s: states.append(s))
    assert result.kept_steps == [15, 20, 25, 30, 35, 40] and result.n_averaged == 6
    np.testing.assert_allclose(result.posterior_mean, np.mean(states, axis=0))
    assert result.best_log_posterior == pytest.approx(result.traces["log_posterior"].max())
    assert sampler.log_posterior(result.best_state) == pytest.approx(result.best_log_posterior)
