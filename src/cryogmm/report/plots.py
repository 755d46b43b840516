"""Figures written into run folders (matplotlib's object API; no pyplot global state)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def plot_trace(traces: dict, path: str | os.PathLike, *, burn_in: int | None = None,
               title: str = "") -> None:
    """Log-posterior and component size per step (states 0..n), burn-in shaded."""
    log_posterior = np.asarray(traces["log_posterior"], dtype=float)
    sigma = np.asarray(traces.get("sigma_in_angstroms", []), dtype=float)
    steps = np.arange(log_posterior.size)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    start = 1 if log_posterior.size > 1 else 0  # the prior draw is far below everything else
    ax1.plot(steps[start:], log_posterior[start:], color="tab:blue", lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("log-posterior")
    if sigma.size:
        ax2.plot(np.arange(sigma.size), sigma, color="tab:red", lw=1)
    ax2.set_xlabel("step")
    ax2.set_ylabel("component sigma (Å)")
    for ax in (ax1, ax2):
        if burn_in:
            ax.axvspan(0, burn_in, color="0.9", zorder=0, label="burn-in")
        ax.grid(alpha=0.3)
    if burn_in:
        ax1.legend(loc="lower right", frameon=False)
    if title:
        fig.suptitle(title)
    _save(fig, path)
