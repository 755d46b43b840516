"""Replica exchange (parallel tempering) over a ladder of temperatures (thesis 6.2's tempering).

Replica j samples exp(-E(theta) / T_j) by a `sweep(rng, state, temperature) -> state` that leaves
that tempered target invariant; after every sweep, neighbouring replicas (pairs (0,1), (2,3), ...
on even steps, (1,2), (3,4), ... on odd ones) propose to exchange their states, accepted with
probability min(1, exp((1/T_a - 1/T_b)(E_a - E_b))), which keeps the product of the tempered
targets invariant. Replica 0 runs at T = 1 and is the chain of the posterior; hotter replicas
cross energy barriers and hand their states down. With one temperature the step is the plain
sweep at T = 1, draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


def check_ladder(temperatures) -> tuple[float, ...]:
    """The ladder as floats: T_0 = 1 < T_1 < ... (ValueError naming what is wrong otherwise)."""
    ladder = tuple(float(t) for t in temperatures)
    if not ladder:
        raise ValueError("the temperature ladder is empty")
    if any(not np.isfinite(t) or t <= 0 for t in ladder):
        raise ValueError(f"temperatures must be positive, got {list(ladder)}")
    if ladder[0] != 1.0:
        raise ValueError(f"the ladder must start at 1 (the posterior), got {ladder[0]:g}")
    if any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"temperatures must increase, got {list(ladder)}")
    return ladder


@dataclass(frozen=True)
class ReplicaState:
    replicas: tuple  # one state per temperature, replica 0 at T = 1
    energies: np.ndarray  # (R,) untempered energies of the replicas
    attempted: np.ndarray  # (R - 1,) swaps proposed between neighbours j, j + 1
    accepted: np.ndarray  # (R - 1,) of which accepted
    iteration: int = 0

    def swap_rates(self) -> np.ndarray:
        return self.accepted / np.maximum(self.attempted, 1)


@dataclass(frozen=True, kw_only=True)
class ReplicaExchange:
    sweep: Callable[[np.random.Generator, Any, float], Any]
    energy: Callable[[Any], float]
    temperatures: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "temperatures", check_ladder(self.temperatures))

    def init(self, rng: np.random.Generator, states) -> ReplicaState:
        del rng  # deterministic; kept for the one sampler contract
        states = tuple(states)
        if len(states) != len(self.temperatures):
            raise ValueError(f"{len(states)} states for {len(self.temperatures)} temperatures")
        n = len(states) - 1
        return ReplicaState(states, np.array([float(self.energy(s)) for s in states]), np.zeros(n), np.zeros(n))

    def log_posterior(self, state: ReplicaState) -> float:
        return -float(state.energies[0])

    def step(self, rng: np.random.Generator, state: ReplicaState) -> tuple[ReplicaState, dict]:
        info = {"log_posterior": self.log_posterior(state)}
        replicas = [self.sweep(rng, s, t) for s, t in zip(state.replicas, self.temperatures)]
        if len(replicas) == 1:
            return ReplicaState(tuple(replicas), state.energies, state.attempted, state.accepted,
                                state.iteration + 1), info
        energies = np.array([float(self.energy(s)) for s in replicas])
        attempted, accepted = state.attempted.copy(), state.accepted.copy()
        beta = 1.0 / np.asarray(self.temperatures)
        for j in range(state.iteration % 2, len(replicas) - 1, 2):
            log_ratio = (beta[j] - beta[j + 1]) * (energies[j] - energies[j + 1])
            attempted[j] += 1
            if np.log(rng.random()) < min(0.0, log_ratio):
                replicas[j], replicas[j + 1] = replicas[j + 1], replicas[j]
                energies[[j, j + 1]] = energies[[j + 1, j]]
                accepted[j] += 1
        new = ReplicaState(tuple(replicas), energies, attempted, accepted, state.iteration + 1)
        info.update({f"swap_rate_{j}_{j + 1}": float(r) for j, r in enumerate(new.swap_rates())})
        return new, info
