"""Figures written into run folders (matplotlib's object API; no pyplot global state)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


# zlib level 1: a third of the time of the default (6) for PNGs 5-15% larger
PNG_OPTIONS = {"compress_level": 1}


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, pil_kwargs=PNG_OPTIONS)


def margins(fig: Figure, ncols: int = 1, nrows: int = 1, *, left: float = 0.9, right: float = 0.2,
            bottom: float = 0.55, top: float = 0.55, wspace: float = 0.9, hspace: float = 0.6) -> dict:
    """`gridspec_kw` for a grid of `nrows` x `ncols` axes with these margins and gaps in inches: a
    fixed layout (constrained layout measures every label, a tenth of a second or more a figure)."""
    width, height = fig.get_size_inches()
    axes_width = (width - left - right - (ncols - 1) * wspace) / ncols
    axes_height = (height - bottom - top - (nrows - 1) * hspace) / nrows
    return {"left": left / width, "right": 1 - right / width, "bottom": bottom / height, "top": 1 - top / height,
            "wspace": wspace / axes_width, "hspace": hspace / axes_height}


def whole_digits(values) -> int:
    """Characters of the longest of `values` written as a whole number ("-2385000": 8), for the
    room its tick labels need (1 without finite values)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return max((len(f"{v:.0f}") for v in (values.min(), values.max())), default=1) if values.size else 1


def y_label_inches(values, base: float = 0.45, per_character: float = 0.09) -> float:
    """Left margin in inches for y tick labels of `values` (`whole_digits` characters) and the axis
    label; `base` and `per_character` suit the 9-point labels of these figures."""
    return base + per_character * whole_digits(values)


def nice_length(limit: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is at most `limit` (> 0)."""
    power = 10.0 ** np.floor(np.log10(limit))
    return float(max(f * power for f in (1.0, 2.0, 5.0) if f * power <= limit))


def scale_bar(ax, pixel_size_in_angstroms: float, box: int, color: str = "white") -> float:
    """A bar of a round length in Å (about a quarter of the box) in the lower left corner of an
    image shown with `imshow(..., origin="lower")` in pixels; returns its length in Å."""
    length = nice_length(0.3 * box * pixel_size_in_angstroms)
    pixels = length / pixel_size_in_angstroms
    x0, y0 = 0.06 * box, 0.07 * box
    ax.plot([x0, x0 + pixels], [y0, y0], color=color, lw=2.5, solid_capstyle="butt")
    ax.text(x0 + pixels / 2, y0 + 0.04 * box, f"{length:g} Å", color=color, ha="center", va="bottom", fontsize=6)
    return length


def plot_trace(traces: dict, path: str | os.PathLike, *, burn_in: int | None = None,
               title: str = "") -> None:
    """Log-posterior and component size per step (states 0..n), burn-in shaded."""
    log_posterior = np.asarray(traces["log_posterior"], dtype=float)
    sigma = np.asarray(traces.get("sigma_in_angstroms", []), dtype=float)
    steps = np.arange(log_posterior.size)
    fig = Figure(figsize=(9, 3.6))
    start = 1 if log_posterior.size > 1 else 0  # the prior draw is far below everything else
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw=margins(fig, 2, left=y_label_inches(log_posterior[start:]),
                                                      right=0.15, bottom=0.5, top=0.45 if title else 0.2, wspace=0.9))
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
