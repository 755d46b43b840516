"""FSC curves as a PNG figure (matplotlib's object API; no pyplot global state)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryogmm.io.mrc import atomic_output
from cryogmm.metrics.fsc import FSCCurve, resolution_at
from cryogmm.report.plots import PNG_OPTIONS, margins


def _format_resolution(resolution: float | None, curve: FSCCurve) -> str:
    if resolution is None:
        return f"< {curve.nyquist_resolution_in_angstroms:.2f} Å (Nyquist)"
    return f"{resolution:.2f} Å"


def plot_fsc(curves: dict[str, FSCCurve], path: str | os.PathLike, thresholds: tuple[float, ...] = (0.5, 0.143),
             title: str | None = None) -> None:
    """Plot FSC curves against spatial frequency and write a PNG atomically.

    Parameters
    ----------
    curves : dict
        Legend label -> FSCCurve.
    path : output PNG path (written under a temporary name, then renamed)
    thresholds : FSC levels drawn as horizontal lines; the resolution where each curve
        crosses them is marked and given in the legend.
    title : optional figure title
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots(gridspec_kw=margins(fig, left=0.75, right=0.2, bottom=0.55, top=0.85 if title else 0.6))
    colors = [f"C{i}" for i in range(10)]
    x_max = 0.0
    for i, (label, curve) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        parts = []
        for threshold in thresholds:
            resolution = resolution_at(curve, threshold)
            parts.append(f"{threshold:g}: {_format_resolution(resolution, curve)}")
            if resolution is not None and np.isfinite(resolution):
                ax.plot([1.0 / resolution], [threshold], "o", color=color, ms=4)
        ax.plot(curve.frequency_per_angstrom, curve.correlation, color=color, lw=1.5,
                label=f"{label} ({', '.join(parts)})")
        x_max = max(x_max, float(curve.frequency_per_angstrom[-1]))
    for threshold in thresholds:
        ax.axhline(threshold, color="0.5", ls="--", lw=0.8)
        ax.annotate(f"{threshold:g}", (x_max, threshold), xytext=(2, 2), textcoords="offset points",
                    ha="right", va="bottom", fontsize=8, color="0.4")
    ax.axhline(0.0, color="0.8", lw=0.6)
    ax.set_xlim(0.0, x_max if x_max > 0 else 1.0)
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    # top axis: the same ticks labelled as resolution in Å
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if 0 < t <= ax.get_xlim()[1]]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{1.0 / t:.3g}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    if title:
        fig.suptitle(title)
    FigureCanvasAgg(fig)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", pil_kwargs=PNG_OPTIONS)
