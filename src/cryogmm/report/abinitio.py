"""Figures of an ab initio run: restart traces and input images next to the model's projections."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from cryogmm.report.image_grid import Cell, write_image_grid
from cryogmm.report.plots import _save, margins, y_label_inches


def plot_restarts(restart_traces: list[np.ndarray], best: int, refine_trace: np.ndarray, path: str | os.PathLike,
                  *, refine_burn_in: int | None = None, title: str = "") -> Figure:
    """Log-posterior per step of every initial-stage restart (the chosen one bold) and of the
    refinement (burn-in shaded)."""
    fig = Figure(figsize=(10, 3.8))
    label = max(y_label_inches(t[1:]) for t in [*restart_traces, refine_trace])
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw=margins(fig, 2, left=label, right=0.15, bottom=0.5,
                                                      top=0.65 if title else 0.3, wspace=label + 0.1))
    ax1.set_title(f"initial stage: {len(restart_traces)} independent restarts", fontsize=9)
    ax2.set_title(f"refinement of restart {best + 1}", fontsize=9)
    for i, trace in enumerate(restart_traces):
        trace = np.asarray(trace, dtype=float)
        steps = np.arange(trace.size)
        ax1.plot(steps[1:], trace[1:], lw=2.2 if i == best else 1.0, alpha=1.0 if i == best else 0.7,
                 label=f"restart {i + 1}: {trace[-1]:.6g}" + (" (chosen)" if i == best else ""))
    ax1.set_xlabel("Gibbs step (initial stage)")
    ax1.set_ylabel("log-posterior")
    ax1.legend(frameon=False, fontsize=8, loc="lower right")
    refine = np.asarray(refine_trace, dtype=float)
    ax2.plot(np.arange(1, refine.size), refine[1:], color="k", lw=1)
    if refine_burn_in:
        ax2.axvspan(0, refine_burn_in, color="0.9", zorder=0, label="before sampling")
        ax2.legend(frameon=False, fontsize=8, loc="lower right")
    ax2.set_xlabel("Gibbs step (refinement)")
    ax2.set_ylabel("log-posterior")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        # whole numbers: an axis offset (+1.2e6) makes the values hard to read off
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def plot_projections(images: np.ndarray, projections: np.ndarray, path: str | os.PathLike, *,
                     labels: list[str] | None = None, max_images: int = 24, title: str = "",
                     row_names: tuple[str, str] = ("input", "model"), pixel_size_in_angstroms: float | None = None,
                     angles_in_degrees: np.ndarray | None = None) -> list[str]:
    """Pairs of rows: each input image (top) above the projection of the result along its
    estimated pose (bottom), each on its own grey scale; `row_names` label the two.

    At most `max_images` pairs are shown (the title then says how many of how many); with
    `pixel_size_in_angstroms` the first image has a scale bar, and `angles_in_degrees` (P, 3)
    (rot, tilt, psi) are written under each projection. Returns the texts written on the figure.
    """
    n = min(len(images), max_images)
    cols = max(min(n, 6), 1)
    cells = []
    for start in range(0, n, cols):
        shown = range(start, min(start + cols, n))
        for row, (stack, name) in enumerate(((images, row_names[0]), (projections, row_names[1]))):
            for i in shown:
                angles = ""
                if row == 1 and angles_in_degrees is not None:
                    angles = "({:.0f}, {:.0f}, {:.0f})".format(*angles_in_degrees[i])
                cells.append(Cell(stack[i], f"{labels[i] if labels else i + 1} {name}", angles))
            cells += [None] * (cols - len(shown))
    notes = []
    if n < len(images):
        notes.append(f"the first {n} of {len(images)} images shown")
    if angles_in_degrees is not None:
        notes.append("under each projection its (rot, tilt, psi) in degrees")
    heading = "; ".join(x for x in [title, *notes] if x)
    return write_image_grid(path, cells, cols, heading=heading, pixel_size_in_angstroms=pixel_size_in_angstroms)
