"""Random-walk Metropolis-Hastings for N independent blocks at once, one decision per block.

Given the other parameters, the posterior of the image poses factorises over the images
(thesis Eqn. 5.43 for the translations; the same holds for the rotations): each image's pose is
an independent target exp(-E_i). One step proposes a move for every block, evaluates all N
energies in one call (`energies(positions) -> (N,)`) and accepts or rejects each block on its
own, so the step is the product of N valid MH kernels. The width is shared by the blocks and
adapted toward a target mean acceptance during the first `adapt_steps` steps, then frozen, as
in samplers.mh.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from cryogmm.samplers.hmc import adapted_step_size
from cryogmm.samplers.mh import gaussian_proposal


@dataclass(frozen=True)
class BlockMHState:
    position: np.ndarray  # (N, ...) one block per leading index
    energies: np.ndarray  # (N,)
    step_size: float
    iteration: int = 0


@dataclass(frozen=True, kw_only=True)
class BlockMH:
    energies: Callable[[np.ndarray], np.ndarray]
    propose: Callable[[np.random.Generator, np.ndarray, float], np.ndarray] = gaussian_proposal
    adapt_steps: int = 0
    target_acceptance: float = 0.3
    adaptation_rate: float = 0.05

    def __post_init__(self):
        if self.adapt_steps < 0 or not 0 < self.target_acceptance < 1:
            raise ValueError("adapt_steps >= 0 and 0 < target_acceptance < 1 are required")

    def init(self, rng: np.random.Generator, position, *, step_size: float = 0.1) -> BlockMHState:
        del rng  # deterministic; kept for the one sampler contract
        q = np.array(position, dtype=float)
        return BlockMHState(q, np.asarray(self.energies(q), dtype=float), float(step_size))

    def log_posterior(self, state: BlockMHState) -> float:
        return -float(state.energies.sum())

    def step(self, rng: np.random.Generator, state: BlockMHState) -> tuple[BlockMHState, dict]:
        proposal = self.propose(rng, state.position, state.step_size)
        energies = np.asarray(self.energies(proposal), dtype=float)
        log_ratio = state.energies - energies
        acceptance = np.exp(np.minimum(0.0, np.where(np.isfinite(log_ratio), log_ratio, -np.inf)))
        accepted = rng.random(acceptance.shape) < acceptance
        mean_acceptance = float(acceptance.mean())
        step_size = adapted_step_size(state.step_size, mean_acceptance, state.iteration + 1,
                                      adapt_steps=self.adapt_steps, target=self.target_acceptance,
                                      rate=self.adaptation_rate)
        info = {"log_posterior": self.log_posterior(state), "acceptance": mean_acceptance,
                "accepted": float(accepted.mean()), "step_size": state.step_size}
        shape = (-1,) + (1,) * (state.position.ndim - 1)
        position = np.where(accepted.reshape(shape), proposal, state.position)
        return BlockMHState(position, np.where(accepted, energies, state.energies), step_size,
                            state.iteration + 1), info


def with_energies(state: BlockMHState, energies: Callable[[np.ndarray], np.ndarray]) -> BlockMHState:
    """The state re-evaluated under another target (after the other Gibbs blocks moved)."""
    return replace(state, energies=np.asarray(energies(state.position), dtype=float))
