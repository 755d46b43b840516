"""Comparing a result map with a reference map: the one place the commands do it.

`compare_with_reference` aligns the map to the reference first when the two frames are not the
same (ab initio results are defined up to a rotation, a shift and the hand), then measures the
FSC and the cross-correlation (Eqn. 3.3). The figures have the same names in every summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryogmm.metrics.alignment import align_maps
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.metrics.fsc import FSCCurve, fourier_shell_correlation, resolution_at


@dataclass(frozen=True)
class ReferenceComparison:
    """figures: `fsc_0.5_in_angstroms`, `fsc_0.143_in_angstroms` (None: above the threshold up to
    Nyquist), `nyquist_resolution_in_angstroms`, `cross_correlation`, `aligned` (and, if aligned,
    `mirrored`); curve: the FSC; volume: the map as compared (aligned onto the reference)."""

    figures: dict
    curve: FSCCurve
    volume: np.ndarray


def compare_with_reference(volume: np.ndarray, reference: np.ndarray, voxel_size_in_angstroms: float, *,
                           align: bool) -> ReferenceComparison:
    """FSC and cross-correlation of `volume` against `reference` (same box and voxel size), after
    aligning it (rotation, shift, hand: `align_maps`) if `align`."""
    volume = np.asarray(volume, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    figures = {"aligned": bool(align)}
    if align:
        alignment = align_maps(reference, volume, voxel_size_in_angstroms)
        volume = alignment.aligned
        figures["mirrored"] = bool(alignment.mirrored)
    curve = fourier_shell_correlation(reference, volume, voxel_size_in_angstroms)
    figures.update({"fsc_0.5_in_angstroms": resolution_at(curve, 0.5),
                    "fsc_0.143_in_angstroms": resolution_at(curve, 0.143),
                    "nyquist_resolution_in_angstroms": curve.nyquist_resolution_in_angstroms,
                    "cross_correlation": cross_correlation(reference, volume)})
    return ReferenceComparison(figures, curve, volume)
