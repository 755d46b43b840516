"""Random-walk Metropolis-Hastings with an adapted proposal width (thesis 5.2.3).

Targets exp(-E(q)) given `energy(q) -> E`. Isotropic Gaussian proposals of width `step_size`
on a flat vector q by default, or any symmetric `propose(rng, q, step_size)` (samplers.rotation_mh
turns rotations); the width is adapted toward a target acceptance during the first
`adapt_steps` steps and frozen afterwards, as HMC's step size is (samplers.hmc).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from cryogmm.samplers.hmc import metropolis_decision


@dataclass(frozen=True)
class MHState:
    position: np.ndarray
    energy: float
    step_size: float
    iteration: int = 0


def gaussian_proposal(rng: np.random.Generator, position: np.ndarray, step_size: float) -> np.ndarray:
    """position + N(0, step_size^2) in every coordinate (the random walk's default move)."""
    return position + step_size * rng.standard_normal(position.shape)


@dataclass(frozen=True, kw_only=True)
class RandomWalkMH:
    energy: Callable[[np.ndarray], float]
    adapt_steps: int = 0
    target_acceptance: float = 0.3
    adaptation_rate: float = 0.05
    propose: Callable[[np.random.Generator, np.ndarray, float], np.ndarray] = gaussian_proposal

    def __post_init__(self):
        if self.adapt_steps < 0 or not 0 < self.target_acceptance < 1:
            raise ValueError("adapt_steps >= 0 and 0 < target_acceptance < 1 are required")

    def init(self, rng: np.random.Generator, position, *, step_size: float = 0.1) -> MHState:
        del rng  # deterministic; kept for the one sampler contract
        q = np.array(position, dtype=float)
        return MHState(q, float(self.energy(q)), float(step_size))

    def log_posterior(self, state: MHState) -> float:
        return -state.energy

    def step(self, rng: np.random.Generator, state: MHState) -> tuple[MHState, dict]:
        proposal = self.propose(rng, state.position, state.step_size)
        energy = float(self.energy(proposal))
        accepted, step_size, info = metropolis_decision(rng, state, state.energy - energy, self)
        iteration = state.iteration + 1
        if accepted:
            return MHState(proposal, energy, step_size, iteration), info
        return replace(state, step_size=step_size, iteration=iteration), info
