"""Figure of a 3D map: its three central slices, on one grey scale, with axes in Å."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from cryogmm.report.plots import _save, margins, nice_length

# (name, how to cut the [z, y, x] volume at the centre, horizontal and vertical axis)
_SLICES = (("xy", lambda v, c: v[c[0]], "x", "y"),
           ("xz", lambda v, c: v[:, c[1], :], "x", "z"),
           ("yz", lambda v, c: v[:, :, c[2]], "y", "z"))


def _angstrom_ticks(axis, n: int, voxel_size_in_angstroms: float) -> None:
    """Ticks at round lengths in Å from the box centre (pixel n // 2) on an axis in pixels."""
    step = nice_length(0.4 * (n // 2) * voxel_size_in_angstroms) if n > 1 else voxel_size_in_angstroms
    low, high = -(n // 2) * voxel_size_in_angstroms, (n - 1 - n // 2) * voxel_size_in_angstroms
    values = step * np.arange(np.ceil(low / step), np.floor(high / step) + 1)
    axis.set_ticks(n // 2 + values / voxel_size_in_angstroms, [f"{v:g}" for v in values])


def plot_central_slices(volume: np.ndarray, voxel_size_in_angstroms: float, path: str | os.PathLike, *,
                        title: str = "") -> Figure:
    """The slices through the box centre (voxel `n // 2` on each axis) normal to z, y and x.

    Parameters
    ----------
    volume : (nz, ny, nx) map `[z, y, x]`
    voxel_size_in_angstroms : float; the axes are in Å from the box centre
    path : the PNG to write
    title : the figure's title (the map's name, what it is)

    Returns the figure (already written to `path`).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"a 3D map is needed, got shape {volume.shape}")
    centre = tuple(n // 2 for n in volume.shape)
    low, high = float(volume.min()), float(volume.max())
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 3, gridspec_kw=margins(fig, 3, left=0.65, right=1.2, bottom=0.55, top=0.7, wspace=0.7))
    sizes = {"x": volume.shape[2], "y": volume.shape[1], "z": volume.shape[0]}
    for ax, (name, cut, horizontal, vertical) in zip(axes, _SLICES):
        image = cut(volume, centre)
        shown = ax.imshow(image, cmap="gray", origin="lower", vmin=low, vmax=high if high > low else low + 1)
        ax.set_title(f"{name} plane through the centre", fontsize=9)
        for axis, letter, setter in ((ax.xaxis, horizontal, ax.set_xlabel), (ax.yaxis, vertical, ax.set_ylabel)):
            _angstrom_ticks(axis, sizes[letter], voxel_size_in_angstroms)
            setter(f"{letter} (Å)")
        ax.tick_params(labelsize=7)
    bottom, top = axes[0].get_position().y0, axes[0].get_position().y1
    colorbar = fig.add_axes((1 - 1.0 / 10, bottom + 0.1 * (top - bottom), 0.012, 0.8 * (top - bottom)))
    fig.colorbar(shown, cax=colorbar, label="map value")
    fig.suptitle(title or "central slices", fontsize=10)
    _save(fig, path)
    return fig
