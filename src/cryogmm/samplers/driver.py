"""The one loop every sampler runs in: burn-in, thinning, posterior-mean accumulation, the best
state, stopping rules, checkpoints with the generator state, traces and the progress bar.

A sampler provides `step(rng, state) -> (state, info)` and `log_posterior(state)`; `info` holds
scalars describing the incoming state (at least "log_posterior"). The driver records them per
step, hands every kept sample (after burn-in, every `thin` steps) to `on_sample` and adds
`mean_of(state)` of it to the posterior mean, and returns the traces, which then describe states
0..n (n the steps run). Stopping rules (`samplers.stopping`) end the chain before `n_steps` once
they fire (not before `min_steps`); `ChainResult.stop` says which rule ended it, at which step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from cryogmm.samplers.stopping import StopRecord


@dataclass(frozen=True)
class ChainCheckpoint:
    """Where and how often a chain saves itself: `store` has `save(name, dict)` and
    `load(name) -> dict | None` (io.checkpoints.CheckpointFolder); `to_arrays(state) -> dict` and
    `from_arrays(dict) -> state` convert the sampler's state. A finished chain is saved too, so a
    resumed run does not run it again."""

    store: Any
    name: str
    every: int
    to_arrays: Callable[[Any], dict]
    from_arrays: Callable[[dict], Any]


@dataclass
class ChainResult:
    final_state: Any
    traces: dict[str, np.ndarray]
    kept_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stop: StopRecord | None = None
    best_state: Any = None
    best_log_posterior: float = -np.inf
    posterior_mean: np.ndarray | None = None  # mean of mean_of(kept states); None without mean_of or kept states
    n_averaged: int = 0
    resumed: bool = False

    @property
    def n_steps(self) -> int:
        return self.stop.step if self.stop is not None else 0


def _rng_state(rng: np.random.Generator) -> np.ndarray:
    return np.array(json.dumps(rng.bit_generator.state))


def _set_rng_state(rng: np.random.Generator, value) -> None:
    rng.bit_generator.state = json.loads(str(value))


def run_chain(sampler, rng: np.random.Generator, state, n_steps: int, *, burn_in: int = 0,
              thin: int = 1, on_sample: Callable[[int, Any], None] | None = None,
              progress: bool = False, description: str = "sampling",
              final_info: Callable[[Any], dict] | None = None, stopping: Sequence = (),
              min_steps: int = 0, monitor: Callable[[Any], np.ndarray] | None = None,
              mean_of: Callable[[Any], np.ndarray] | None = None, best_from: int | None = None,
              checkpoint: ChainCheckpoint | None = None) -> ChainResult:
    """Run at most `n_steps` steps from `state`.

    Parameters
    ----------
    burn_in : steps whose states are not kept; thin : keep every `thin`-th state after that.
    on_sample : called as `on_sample(step, state)` for each kept state (steps burn_in + thin, ...).
    mean_of : the posterior mean of `mean_of(state)` over the kept states is returned (and saved in
        checkpoints, unlike what `on_sample` accumulates).
    progress : show a tqdm progress bar on stderr with the current log-posterior and sigma.
    final_info : computes the info of the last state (defaults to its log-posterior only).
    stopping : rules with `check(traces, monitored) -> dict | None`, `name` and `monitor_window`
        (how many past `monitor(state)` values they read); the chain ends at the first that fires
        after `min_steps` steps.
    best_from : track the state with the highest log-posterior among states best_from.. (and the
        final one); None: no tracking.
    checkpoint : save every `checkpoint.every` steps (and once finished); if the store holds this
        chain already, continue from it (`state` is then ignored) or return it if it finished.
    """
    if n_steps < 0 or burn_in < 0 or thin < 1 or min_steps < 0:
        raise ValueError("n_steps, burn_in and min_steps must be >= 0 and thin >= 1")
    if any(rule.monitor_window for rule in stopping) and monitor is None:
        raise ValueError("a stopping rule reads monitored values: pass monitor")
    keep_monitored = max([rule.monitor_window for rule in stopping], default=0)
    records: dict[str, list[float]] = {}
    kept: list[int] = []
    monitored: list = []
    mean_sum, n_averaged = None, 0
    best_state, best_lp = None, -np.inf
    step, before, resumed = 0, 0.0, False
    saved = checkpoint.store.load(checkpoint.name) if checkpoint is not None else None
    if saved is not None:
        resumed = True
        _set_rng_state(rng, saved["rng"])
        state = checkpoint.from_arrays({k[6:]: v for k, v in saved.items() if k.startswith("state_")})
        step = int(saved["step"])
        records = {k[6:]: list(np.asarray(v)) for k, v in saved.items() if k.startswith("trace_")}
        kept = [int(i) for i in np.asarray(saved["kept"])]
        monitored = list(np.asarray(saved["monitored"])) if "monitored" in saved else []
        if "mean_sum" in saved:
            mean_sum, n_averaged = np.asarray(saved["mean_sum"], dtype=np.float64), int(saved["n_averaged"])
        if "best_log_posterior" in saved:
            best_lp = float(saved["best_log_posterior"])
            best_state = checkpoint.from_arrays({k[5:]: v for k, v in saved.items() if k.startswith("best_")})
        before = float(saved["elapsed_seconds"])
        if bool(saved["finished"]):
            stop = StopRecord(**json.loads(str(saved["stop"])))
            return ChainResult(state, {k: np.asarray(v) for k, v in records.items()}, kept, before, stop,
                               best_state, best_lp, None if mean_sum is None else mean_sum / max(n_averaged, 1),
                               n_averaged, True)
    start = time.perf_counter()

    def save(finished: bool, stop: StopRecord | None = None) -> None:
        arrays = {"rng": _rng_state(rng), "step": np.array(step), "kept": np.asarray(kept, dtype=np.int64),
                  "elapsed_seconds": np.array(before + time.perf_counter() - start), "finished": np.array(finished),
                  "stop": np.array(json.dumps(stop.__dict__ if stop else None)),
                  **{f"state_{k}": v for k, v in checkpoint.to_arrays(state).items()},
                  **{f"trace_{k}": np.asarray(v) for k, v in records.items()}}
        if monitored:
            arrays["monitored"] = np.stack(monitored)
        if mean_sum is not None:
            arrays["mean_sum"], arrays["n_averaged"] = mean_sum, np.array(n_averaged)
        if best_state is not None:
            arrays["best_log_posterior"] = np.array(best_lp)
            arrays.update({f"best_{k}": v for k, v in checkpoint.to_arrays(best_state).items()})
        checkpoint.store.save(checkpoint.name, arrays)

    stop = None
    bar = tqdm(total=n_steps, initial=step, desc=description, disable=not progress, leave=False, unit="step")
    try:
        while step < n_steps:
            previous = state
            state, info = sampler.step(rng, state)
            step += 1
            for key, value in info.items():
                records.setdefault(key, []).append(float(value))
            if best_from is not None and step - 1 >= best_from and info["log_posterior"] > best_lp:
                best_lp, best_state = float(info["log_posterior"]), previous  # info describes the incoming state
            if keep_monitored:
                monitored.append(np.array(monitor(state)))
                del monitored[:-keep_monitored]
            if step > burn_in and (step - burn_in) % thin == 0:
                kept.append(step)
                if on_sample is not None:
                    on_sample(step, state)
                if mean_of is not None:
                    value = np.asarray(mean_of(state), dtype=np.float64)
                    mean_sum = value.copy() if mean_sum is None else mean_sum + value
                    n_averaged += 1
            bar.update(1)
            if progress:
                bar.set_postfix({k: f"{v:.4g}" for k, v in info.items() if k in ("log_posterior", "sigma_in_angstroms")},
                                refresh=False)
            if step >= min_steps:
                for rule in stopping:
                    details = rule.check(records, monitored)
                    if details is not None:
                        stop = StopRecord(rule.name, step, details)
                        break
            if stop is not None:
                break
            if checkpoint is not None and step % checkpoint.every == 0 and step < n_steps:
                save(False)
    finally:
        bar.close()
    if stop is None:
        stop = StopRecord("max_steps", step, {})
    last = final_info(state) if final_info is not None else {"log_posterior": sampler.log_posterior(state)}
    if best_from is not None and step >= best_from and last["log_posterior"] > best_lp:
        best_lp, best_state = float(last["log_posterior"]), state
    for key in records:
        records[key].append(float(last.get(key, np.nan)))
    if not records:
        records = {key: [float(value)] for key, value in last.items()}
    if checkpoint is not None:
        save(True, stop)
    return ChainResult(state, {k: np.asarray(v) for k, v in records.items()}, kept,
                       before + time.perf_counter() - start, stop, best_state, best_lp,
                       None if mean_sum is None else mean_sum / n_averaged, n_averaged, resumed)
