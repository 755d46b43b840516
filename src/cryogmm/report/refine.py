"""Figures of a refinement's post-processing (matplotlib's object API on the Agg canvas)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryogmm.io.mrc import atomic_output
from cryogmm.reconstruction.postprocess import RESOLUTION_THRESHOLD, GuinierFit, MaskedFSC
from cryogmm.report.fsc import _format_resolution


def _resolution_axis(ax, squared: bool = False) -> None:
    """A top axis with the bottom axis' ticks labelled in Å (`1 / x`, or `1 / sqrt(x)` for 1/Å^2)."""
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    ticks = np.array([t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1] and t > 0])
    top.set_xticks(ticks)
    top.set_xticklabels([f"{d:.3g}" for d in 1.0 / (np.sqrt(ticks) if squared else ticks)])
    top.set_xlabel("resolution (Å)")


def plot_postprocess(masked_fsc: MaskedFSC, guinier: GuinierFit | None, path: str | os.PathLike) -> None:
    """Two panels, written as a PNG atomically: the FSC curves of `masked_fsc` (unmasked, masked,
    phase-randomised, corrected) with the 0.143 and 0.5 levels and the resolution, and the Guinier
    plot (ln of the shell-averaged amplitude against 1/d^2) with the fitted line and its B (or a
    note that there is none, for `guinier` None)."""
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    ax_fsc, ax_guinier = fig.subplots(1, 2)
    curves = {"unmasked": masked_fsc.unmasked, "masked": masked_fsc.masked,
              "phase-randomised": masked_fsc.phase_randomised, "corrected": masked_fsc.corrected}
    for i, (label, curve) in enumerate(curves.items()):
        ax_fsc.plot(curve.frequency_per_angstrom, curve.correlation, color=f"C{i}",
                    lw=2.0 if label == "corrected" else 1.2, label=label)
    corrected = masked_fsc.corrected
    resolution = masked_fsc.resolution_in_angstroms
    if resolution is not None and np.isfinite(resolution):
        ax_fsc.plot([1.0 / resolution], [RESOLUTION_THRESHOLD], "o", color="C3", ms=5)
    if masked_fsc.randomisation_frequency_per_angstrom is not None:
        ax_fsc.axvline(masked_fsc.randomisation_frequency_per_angstrom, color="0.6", ls=":", lw=0.8,
                       label=f"phases randomised from {masked_fsc.randomisation_resolution_in_angstroms:.3g} Å")
    for threshold in (0.5, RESOLUTION_THRESHOLD):
        ax_fsc.axhline(threshold, color="0.5", ls="--", lw=0.8)
    ax_fsc.axhline(0.0, color="0.8", lw=0.6)
    ax_fsc.set_xlim(0.0, float(corrected.frequency_per_angstrom[-1]))
    ax_fsc.set_ylim(min(-0.05, ax_fsc.get_ylim()[0]), 1.05)
    ax_fsc.set_xlabel("spatial frequency (1/Å)")
    ax_fsc.set_ylabel("Fourier shell correlation")
    ax_fsc.set_title(f"resolution at FSC {RESOLUTION_THRESHOLD:g}: {_format_resolution(resolution, corrected)}",
                     fontsize=10)
    ax_fsc.legend(loc="lower left", fontsize=8, frameon=False)
    ax_fsc.grid(alpha=0.3)
    _resolution_axis(ax_fsc)

    if guinier is None:  # no fit: the resolution does not reach the Guinier region (10 Å)
        ax_guinier.text(0.5, 0.5, "no B-factor fit:\nthe resolution is worse than 10 Å", ha="center",
                        va="center", transform=ax_guinier.transAxes)
        ax_guinier.set_axis_off()
    else:
        k2, log_amplitude, used = guinier.squared_frequency_per_angstrom2, guinier.log_amplitude, guinier.used
        ax_guinier.plot(k2, log_amplitude, color="0.4", lw=1.0, label="map")
        ax_guinier.plot(k2[used], log_amplitude[used], "o", color="C0", ms=3,
                        label=f"fitted, {guinier.fit_from_angstroms:.3g} to {guinier.fit_to_angstroms:.3g} Å")
        line = np.array([0.0, float(k2.max())])
        ax_guinier.plot(line, guinier.intercept - 0.25 * guinier.bfactor_in_angstroms2 * line, color="C3", lw=1.2,
                        label=f"B = {guinier.bfactor_in_angstroms2:.1f} Å²")
        ax_guinier.set_xlim(0.0, float(k2.max()))
        ax_guinier.set_xlabel("1/d² (1/Å²)")
        ax_guinier.set_ylabel("ln(shell-averaged amplitude)")
        ax_guinier.set_title(f"Guinier plot: B = {guinier.bfactor_in_angstroms2:.1f} Å²", fontsize=10)
        ax_guinier.legend(loc="upper right", fontsize=8, frameon=False)
        ax_guinier.grid(alpha=0.3)
        _resolution_axis(ax_guinier, squared=True)
    FigureCanvasAgg(fig)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
