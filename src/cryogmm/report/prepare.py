"""Figure of `cryogmm prepare`: each input image with its mask outline, and the prepared image."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from cryogmm.report.plots import _save


def plot_prepared(inputs: np.ndarray, prepared, path: str | os.PathLike, *, max_images: int = 16,
                  title: str = "") -> None:
    """Columns of three rows per image: the input (own grey scale), the mask (0 to 1) with the
    outline of its half-value contour on the input, and the prepared image (own grey scale).

    Parameters
    ----------
    inputs : (P, n, n) images as read (before cropping, background subtraction or inversion)
    prepared : `cryogmm.pipelines.prepare.PreparedImages`
    """
    n = min(len(inputs), max_images)
    cols = min(n, 8)
    blocks = int(np.ceil(n / cols))
    fig = Figure(figsize=(1.5 * cols, 4.5 * blocks + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(3 * blocks, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    in_box, out_box = inputs.shape[-1], prepared.images.shape[-1]
    # the mask contour drawn on the input, whose box may be larger than the prepared one
    scale = in_box / out_box
    for i in range(n):
        r, c = 3 * (i // cols), i % cols
        shift = prepared.shifts_in_angstroms[i] / prepared.pixel_size_in_angstroms * scale
        ax = axes[r, c]
        ax.imshow(inputs[i], cmap="gray", origin="lower")
        coords = (np.arange(out_box) - out_box // 2) * scale + in_box // 2
        ax.contour(coords + shift[0], coords + shift[1], prepared.masks[i], levels=[0.5], colors="tab:orange",
                   linewidths=0.8)
        ax.plot(in_box // 2 + shift[0], in_box // 2 + shift[1], "+", color="tab:red", ms=6)
        ax.set_xlim(-0.5, in_box - 0.5)
        ax.set_ylim(-0.5, in_box - 0.5)
        ax.set_title(f"{i + 1} input", fontsize=7)
        axes[r + 1, c].imshow(prepared.masks[i], cmap="viridis", origin="lower", vmin=0, vmax=1)
        axes[r + 1, c].set_title(f"mask {100 * prepared.masked_fractions[i]:.0f}%", fontsize=7)
        axes[r + 2, c].imshow(prepared.images[i], cmap="gray", origin="lower")
        length = float(np.hypot(*prepared.shifts_in_angstroms[i]))
        axes[r + 2, c].set_title(f"output (shift {length:.1f} Å)", fontsize=7)
    fig.suptitle(title or "inputs with mask outline (orange) and centre of mass (+), masks, prepared images",
                 fontsize=9)
    _save(fig, path)
