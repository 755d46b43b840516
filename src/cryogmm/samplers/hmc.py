"""Hamiltonian Monte Carlo with leapfrog steps (thesis 5.2.1, Eqns. 5.21-5.24).

The sampler targets exp(-E(q)) for a flat parameter vector q given `energy_and_gradient(q) ->
(E, dE/dq)`, with unit masses. During the first `adapt_steps` steps the step size is moved
toward a target acceptance probability (log step size += rate * (acceptance - target)); after
that it is frozen, so the chain from then on is a valid Markov chain for exp(-E). Each
trajectory draws its step size uniformly within +-`jitter` of the current one (Neal 2011), so
that a fixed trajectory length cannot resonate with a period of the target (a near-periodic
trajectory leaves the squares almost unmixed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class HMCState:
    position: np.ndarray
    energy: float
    gradient: np.ndarray
    step_size: float
    iteration: int = 0


def adapted_step_size(step_size: float, acceptance: float, iteration: int, *, adapt_steps: int,
                      target: float, rate: float) -> float:
    """Step size after `iteration` (1-based): adapted while iteration <= adapt_steps, then frozen."""
    if iteration > adapt_steps:
        return step_size
    return float(step_size * np.exp(rate * (acceptance - target)))


def metropolis_decision(rng, state, log_ratio: float, sampler) -> tuple[bool, float, dict]:
    """Accept with probability min(1, exp(log_ratio)); the adapted step size and the step's info.

    `state` has `energy`, `step_size` and `iteration`; `sampler` has `adapt_steps`,
    `target_acceptance` and `adaptation_rate`. Returns (accepted, next step size, info).
    """
    acceptance = float(np.exp(min(0.0, log_ratio))) if np.isfinite(log_ratio) else 0.0
    accepted = bool(rng.random() < acceptance)
    step_size = adapted_step_size(state.step_size, acceptance, state.iteration + 1,
                                  adapt_steps=sampler.adapt_steps, target=sampler.target_acceptance,
                                  rate=sampler.adaptation_rate)
    info = {"log_posterior": -state.energy, "acceptance": acceptance, "accepted": float(accepted),
            "step_size": state.step_size}
    return accepted, step_size, info


@dataclass(frozen=True, kw_only=True)
class HMC:
    energy_and_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]]
    n_leapfrog: int = 10
    adapt_steps: int = 0
    target_acceptance: float = 0.8
    adaptation_rate: float = 0.05
    jitter: float = 0.2

    def __post_init__(self):
        if self.n_leapfrog < 1 or self.adapt_steps < 0 or not 0 < self.target_acceptance < 1 \
                or not 0 <= self.jitter < 1:
            raise ValueError("n_leapfrog >= 1, adapt_steps >= 0, 0 < target_acceptance < 1 and "
                             "0 <= jitter < 1 are required")

    def init(self, rng: np.random.Generator, position, *, step_size: float = 0.1) -> HMCState:
        del rng  # the initial state is deterministic; kept for the one sampler contract
        q = np.array(position, dtype=float)
        energy, gradient = self.energy_and_gradient(q)
        return HMCState(q, float(energy), np.asarray(gradient, dtype=float), float(step_size))

    def log_posterior(self, state: HMCState) -> float:
        return -state.energy

    def step(self, rng: np.random.Generator, state: HMCState) -> tuple[HMCState, dict]:
        eps = state.step_size * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        p = rng.standard_normal(state.position.shape)
        h0 = state.energy + 0.5 * np.sum(p**2)  # Eqn. 5.21
        q, gradient = state.position.copy(), state.gradient
        p = p - 0.5 * eps * gradient  # Eqns. 5.22-5.23, leapfrog
        for n in range(self.n_leapfrog):
            q = q + eps * p
            energy, gradient = self.energy_and_gradient(q)
            if n < self.n_leapfrog - 1:
                p = p - eps * gradient
        p = p - 0.5 * eps * gradient
        h1 = energy + 0.5 * np.sum(p**2)
        accepted, step_size, info = metropolis_decision(rng, state, h0 - h1, self)  # Eqn. 5.24
        iteration = state.iteration + 1
        if accepted:
            return HMCState(q, float(energy), np.asarray(gradient, dtype=float), step_size, iteration), info
        return replace(state, step_size=step_size, iteration=iteration), info
