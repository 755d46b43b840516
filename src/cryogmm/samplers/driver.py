"""The one loop every sampler runs in: burn-in, thinning, traces and the progress bar.

A sampler provides `step(rng, state) -> (state, info)` and `log_posterior(state)`; `info` holds
scalars describing the incoming state (at least "log_posterior"). The driver records them per
step, hands every kept sample (after burn-in, every `thin` steps) to `on_sample`, and returns the
traces, which then describe states 0..n_steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm


@dataclass
class ChainResult:
    final_state: Any
    traces: dict[str, np.ndarray]
    kept_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0


def run_chain(sampler, rng: np.random.Generator, state, n_steps: int, *, burn_in: int = 0,
              thin: int = 1, on_sample: Callable[[int, Any], None] | None = None,
              progress: bool = False, description: str = "sampling",
              final_info: Callable[[Any], dict] | None = None) -> ChainResult:
    """Run `n_steps` steps from `state`.

    Parameters
    ----------
    burn_in : steps whose states are not kept; thin : keep every `thin`-th state after that.
    on_sample : called as `on_sample(step, state)` for each kept state (steps burn_in + thin, ...).
    progress : show a tqdm progress bar on stderr with the current log-posterior and sigma.
    final_info : computes the info of the last state (defaults to its log-posterior only).
    """
    if n_steps < 0 or burn_in < 0 or thin < 1:
        raise ValueError("n_steps and burn_in must be >= 0 and thin >= 1")
    records: dict[str, list[float]] = {}
    kept: list[int] = []
    start = time.perf_counter()
    bar = tqdm(total=n_steps, desc=description, disable=not progress, leave=False, unit="step")
    try:
        for i in range(1, n_steps + 1):
            state, info = sampler.step(rng, state)
            for key, value in info.items():
                records.setdefault(key, []).append(float(value))
            if i > burn_in and (i - burn_in) % thin == 0:
                kept.append(i)
                if on_sample is not None:
                    on_sample(i, state)
            bar.update(1)
            if progress:
                bar.set_postfix({k: f"{v:.4g}" for k, v in info.items() if k in ("log_posterior", "sigma_in_angstroms")},
                                refresh=False)
    finally:
        bar.close()
    last = final_info(state) if final_info is not None else {"log_posterior": sampler.log_posterior(state)}
    for key in records:
        records[key].append(float(last.get(key, np.nan)))
    if not records:
        records = {key: [float(value)] for key, value in last.items()}
    return ChainResult(state, {k: np.asarray(v) for k, v in records.items()}, kept,
                       time.perf_counter() - start)
