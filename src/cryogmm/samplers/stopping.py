"""Stopping rules for `samplers.driver.run_chain`: a chain ends when its statistics have converged.

Each rule looks at the chain's history (the per-step traces and the last monitored values) after
every step and returns None, or a dict describing why it fires. The driver stops at the first
rule that fires after `min_steps`, records the rule's name, the step and the details, and the
fixed schedule (`n_steps`) stays the maximum.

- `LogPosteriorPlateau`: the mean log-posterior of the last `window` states differs from that of
  the `window` before by less than `tolerance_in_standard_errors` standard errors (the spread of
  the log-posterior within each window, as if the draws were independent: autocorrelation makes
  the standard error too small, so the rule is conservative and fires late rather than early).
- `RotationsStable`: the chordal mean rotation of each image over the last `window` states
  differs from its mean over the `window` before by at most `tolerance_in_degrees` for the median
  image (a drift of the orientations smaller than their posterior spread averages out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryogmm.geometry.so3 import mean_rotation, rotation_angle_in_degrees


@dataclass(frozen=True)
class StopRecord:
    """Why and where a chain ended: `rule` ("max_steps" when no rule fired), the step, details."""

    rule: str
    step: int
    details: dict

    def as_dict(self) -> dict:
        return {"rule": self.rule, "step": int(self.step), **{k: float(v) for k, v in self.details.items()}}


def _check_window(window: int, tolerance: float, tolerance_name: str) -> None:
    if int(window) < 2:
        raise ValueError(f"window must be at least 2 steps, got {window}")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"{tolerance_name} must be a non-negative number, got {tolerance}")


@dataclass(frozen=True)
class LogPosteriorPlateau:
    window: int = 10
    tolerance_in_standard_errors: float = 2.0
    name: str = "log_posterior_plateau"
    monitor_window: int = 0  # needs no monitored values

    def __post_init__(self) -> None:
        _check_window(self.window, self.tolerance_in_standard_errors, "tolerance_in_standard_errors")

    def check(self, traces: dict, monitored: list) -> dict | None:
        values = traces.get("log_posterior", ())
        w = self.window
        if len(values) < 2 * w:
            return None
        recent, before = np.asarray(values[-w:]), np.asarray(values[-2 * w:-w])
        difference = float(recent.mean() - before.mean())
        standard_error = float(np.sqrt(recent.var(ddof=1) / w + before.var(ddof=1) / w))
        if abs(difference) <= self.tolerance_in_standard_errors * standard_error:
            return {"log_posterior_change": difference, "standard_error": standard_error}
        return None


@dataclass(frozen=True)
class RotationsStable:
    window: int = 10
    tolerance_in_degrees: float = 0.5
    name: str = "rotations_stable"

    def __post_init__(self) -> None:
        _check_window(self.window, self.tolerance_in_degrees, "tolerance_in_degrees")

    @property
    def monitor_window(self) -> int:
        return 2 * self.window

    def check(self, traces: dict, monitored: list) -> dict | None:
        w = self.window
        if len(monitored) < 2 * w:
            return None
        rotations = np.stack(monitored[-2 * w:])  # (2w, P, 3, 3)
        change = rotation_angle_in_degrees(mean_rotation(rotations[w:]), mean_rotation(rotations[:w]))
        median = float(np.median(change))
        if median <= self.tolerance_in_degrees:
            return {"median_change_in_degrees": median, "max_change_in_degrees": float(change.max())}
        return None
