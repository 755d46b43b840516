"""Figures written into run folders (matplotlib's object API; no pyplot global state)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def nice_length(limit: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is at most `limit` (> 0)."""
    power = 10.0 ** np.floor(np.log10(limit))
    return float(max(f * power for f in (1.0, 2.0, 5.0) if f * power <= limit))


def scale_bar(ax, pixel_size_in_angstroms: float, box: int, color: str = "white", *,
              at: tuple[float, float] = (0.0, 0.0)) -> float:
    """A bar of a round length in Å (about a quarter of the box) in the lower left corner of an
    image shown with `imshow(..., origin="lower")` in pixels, its first pixel's centre at `at`
    in the axes' data coordinates; returns its length in Å."""
    length = nice_length(0.3 * box * pixel_size_in_angstroms)
    pixels = length / pixel_size_in_angstroms
    x0, y0 = at[0] + 0.06 * box, at[1] + 0.07 * box
    ax.plot([x0, x0 + pixels], [y0, y0], color=color, lw=2.5, solid_capstyle="butt")
    ax.text(x0 + pixels / 2, y0 + 0.04 * box, f"{length:g} Å", color=color, ha="center", va="bottom", fontsize=6)
    return length


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
