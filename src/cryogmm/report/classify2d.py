"""The class gallery of a 2D classification: class averages sorted by size, with their shares."""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.figure import Figure

from cryogmm.report.plots import _save, scale_bar


def plot_class_gallery(classes: np.ndarray, distribution: np.ndarray, resolution_in_angstroms: np.ndarray,
                       pixel_size_in_angstroms: float, path: str | os.PathLike, *, columns: int = 10,
                       title: str = "", kept: np.ndarray | None = None) -> list[int]:
    """Class images (K, n, n) largest class first, each titled with its number, share and resolution;
    with `kept` ((K,) bool, a class selection) the dropped classes are titled in red and crossed out.

    Returns the class numbers (1-based) in the order shown.
    """
    order = np.argsort(-np.asarray(distribution), kind="stable")
    k = len(order)
    cols = min(columns, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(1.25 * cols, 1.45 * rows + (0.4 if title else 0.0)), layout="constrained")
    for i, c in enumerate(order):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = classes[c]
        ax.imshow(image, cmap="gray", origin="lower", vmin=np.percentile(image, 1), vmax=np.percentile(image, 99.5))
        res = resolution_in_angstroms[c]
        dropped = kept is not None and not kept[c]
        ax.set_title(f"{c + 1}: {100 * distribution[c]:.1f}%\n" + (f"{res:.1f} Å" if np.isfinite(res) else "—")
                     + (" (dropped)" if dropped else ""), fontsize=6, color="tab:red" if dropped else "black")
        if dropped:
            n = image.shape[-1] - 1
            ax.plot([0, n], [0, n], color="tab:red", lw=0.8)
            ax.plot([0, n], [n, 0], color="tab:red", lw=0.8)
            ax.set_xlim(-0.5, n + 0.5)
            ax.set_ylim(-0.5, n + 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            scale_bar(ax, pixel_size_in_angstroms, image.shape[-1])
    if title:
        fig.suptitle(title, fontsize=8)
    _save(fig, path)
    return [int(c) + 1 for c in order]
