"""Figures of an ab initio run: restart traces and input images next to the model's projections."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from cryogmm.report.plots import _save, margins, scale_bar, whole_digits


def plot_restarts(restart_traces: list[np.ndarray], best: int, refine_trace: np.ndarray, path: str | os.PathLike,
                  *, refine_burn_in: int | None = None, title: str = "") -> Figure:
    """Log-posterior per step of every initial-stage restart (the chosen one bold) and of the
    refinement (burn-in shaded)."""
    fig = Figure(figsize=(10, 3.8))
    label = 0.45 + 0.09 * max(whole_digits(t[1:]) for t in [*restart_traces, refine_trace])  # y labels, inches
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
                     angles_in_degrees: np.ndarray | None = None) -> Figure:
    """Pairs of rows: each input image (top) above the projection of the result along its
    estimated pose (bottom), each on its own grey scale; `row_names` label the two.

    At most `max_images` pairs are shown (the title then says how many of how many); with
    `pixel_size_in_angstroms` the first image has a scale bar, and `angles_in_degrees` (P, 3)
    (rot, tilt, psi) are written under each projection. Returns the figure (already written).
    The images are drawn as one mosaic in one axes: a figure of 50 axes takes seconds to lay out.
    """
    n = min(len(images), max_images)
    cols = max(min(n, 6), 1)
    rows = 2 * int(np.ceil(n / cols))
    size = max(images.shape[-2:] + projections.shape[-2:])
    unit = size / 1.4  # mosaic pixels per inch: the largest image is 1.4 in wide in a cell of 1.6 x 1.75 in
    cell_w, cell_h, below = round(1.6 * unit), round(1.75 * unit), round(0.17 * unit)
    mosaic = np.ones((rows * cell_h, cols * cell_w, 3), dtype=np.float32)  # white between the images
    height_in = rows * cell_h / unit
    fig = Figure(figsize=(cols * cell_w / unit, height_in + 0.45))
    ax = fig.add_axes((0, 0, 1, height_in / (height_in + 0.45)))
    ax.set_axis_off()
    corners = []
    for i in range(n):
        for j, (image, name) in enumerate(((images[i], row_names[0]), (projections[i], row_names[1]))):
            h, w = image.shape
            x0 = (i % cols) * cell_w + (cell_w - w) // 2
            bottom = (rows - 1 - 2 * (i // cols) - j) * cell_h + below
            y0 = bottom + (size - h) // 2
            mosaic[y0:y0 + h, x0:x0 + w] = _grey(image)[..., None]
            corners.append((x0, y0))
            ax.text(x0 + w / 2, bottom + size + 0.03 * unit, f"{labels[i] if labels else i + 1} {name}", fontsize=7,
                    ha="center", va="bottom")
        if angles_in_degrees is not None:
            rot, tilt, psi = angles_in_degrees[i]
            ax.text(x0 + w / 2, bottom - 0.03 * unit, f"({rot:.0f}, {tilt:.0f}, {psi:.0f})", fontsize=6,
                    ha="center", va="top")
    ax.imshow(mosaic, origin="lower", extent=(0, mosaic.shape[1], 0, mosaic.shape[0]), aspect="auto")
    if pixel_size_in_angstroms is not None and n:
        scale_bar(ax, pixel_size_in_angstroms, images.shape[-1], at=(corners[0][0] + 0.5, corners[0][1] + 0.5))
    notes = []
    if n < len(images):
        notes.append(f"the first {n} of {len(images)} images shown")
    if angles_in_degrees is not None:
        notes.append("under each projection its (rot, tilt, psi) in degrees")
    heading = "; ".join(x for x in [title, *notes] if x)
    if heading:
        fig.suptitle(heading, fontsize=9, y=1 - 0.08 / (height_in + 0.45), va="top")
    _save(fig, path)
    return fig


def _grey(image: np.ndarray) -> np.ndarray:
    """`image` scaled to [0, 1] from its lowest to its highest value (as imshow's grey scale)."""
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)
