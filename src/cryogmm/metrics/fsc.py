"""Fourier shell (ring) correlation, resolution at a threshold, and the Pearson correlation.

Shells are one Fourier voxel wide: shell `i` holds the frequencies whose radius, in Fourier voxels,
rounds to `i`, for `i = 0 .. N // 2`; its centre is `i / (N * voxel size)` in 1/Å, so the last
shell of an even box is the Nyquist frequency `1 / (2 * voxel size)`. Frequencies in the corners of
the box, beyond the last shell, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class FSCCurve:
    """A Fourier shell correlation curve.

    Parameters
    ----------
    frequency_per_angstrom : (n_shells,) float64
        Shell centres in 1/Å, from 0 (the mean) to Nyquist.
    correlation : (n_shells,) float64
        Correlation in each shell, in [-1, 1]; 0 where either map has no power in the shell.
    n_voxels : (n_shells,) int64
        Fourier voxels in each shell, counting the whole sphere (both halves of the spectrum).
    """

    frequency_per_angstrom: np.ndarray
    correlation: np.ndarray
    n_voxels: np.ndarray

    @property
    def nyquist_resolution_in_angstroms(self) -> float:
        """Resolution of the last shell in Å (2 × voxel size for an even box)."""
        return float(1.0 / self.frequency_per_angstrom[-1])


def fourier_shell_correlation(map1: np.ndarray, map2: np.ndarray, voxel_size_in_angstroms: float) -> FSCCurve:
    """FSC of two cubic maps `(N, N, N)`, or FRC of two square images `(N, N)`.

    Parameters
    ----------
    map1, map2 : (N, N, N) or (N, N) arrays of the same shape, on the same grid
    voxel_size_in_angstroms : float
        Voxel (pixel) size in Å.

    Returns
    -------
    FSCCurve with `N // 2 + 1` shells.
    """
    map1 = np.asarray(map1, dtype=np.float64)
    map2 = np.asarray(map2, dtype=np.float64)
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {map1.shape} and {map2.shape}")
    if map1.ndim not in (2, 3) or len(set(map1.shape)) != 1:
        raise ValueError(f"need a cubic map or a square image, got shape {map1.shape}")
    n = map1.shape[0]
    f1, f2 = np.fft.rfftn(map1), np.fft.rfftn(map2)
    # radius of every rfft coefficient in Fourier voxels
    full = np.fft.fftfreq(n) * n
    half = np.fft.rfftfreq(n) * n
    axes = np.meshgrid(*([full] * (map1.ndim - 1) + [half]), indexing="ij", sparse=True)
    shell = np.rint(np.sqrt(sum(a**2 for a in axes))).astype(np.int64).ravel()
    # the rfft holds one of each pair (k, -k) except in the planes where -k is stored as well
    weight = np.full(half.size, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    weight = np.broadcast_to(weight, f1.shape).ravel()
    n_shells = n // 2 + 1
    keep = shell < n_shells
    shell, weight = shell[keep], weight[keep]
    f1, f2 = f1.ravel()[keep], f2.ravel()[keep]

    def total(values):
        return np.bincount(shell, weights=weight * values, minlength=n_shells)

    cross = total((f1 * np.conj(f2)).real)
    power = np.sqrt(total(np.abs(f1) ** 2) * total(np.abs(f2) ** 2))
    correlation = np.divide(cross, power, out=np.zeros(n_shells), where=power > 0)
    n_voxels = np.rint(total(np.ones(shell.size))).astype(np.int64)
    frequency = np.arange(n_shells) / (n * float(voxel_size_in_angstroms))
    return FSCCurve(frequency, np.clip(correlation, -1.0, 1.0), n_voxels)


def resolution_at(curve: FSCCurve, threshold: float) -> float | None:
    """Resolution in Å where the curve first falls below `threshold` (e.g. 0.5 or 0.143).

    The crossing frequency is interpolated linearly between the last shell at or above the
    threshold and the first shell below it (shell 0, the mean, is not a crossing). If the first
    shell after the mean is below the threshold and the mean is too, the resolution of that shell
    is returned (at worst the box size).

    Returns
    -------
    float or None
        The resolution in Å, or None when the curve never falls below the threshold up to the
        last shell: the resolution is then better than `curve.nyquist_resolution_in_angstroms`
        and cannot be measured on this grid.
    """
    c, f = curve.correlation, curve.frequency_per_angstrom
    below = np.flatnonzero(c[1:] < threshold) + 1
    if below.size == 0:
        return None
    i = int(below[0])
    if c[i - 1] < threshold:  # only possible for i == 1
        return float(1.0 / f[i])
    fraction = (c[i - 1] - threshold) / (c[i - 1] - c[i])
    frequency = f[i - 1] + fraction * (f[i] - f[i - 1])
    return float(1.0 / frequency) if frequency > 0 else float("inf")


def normalised_cross_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays (mean-subtracted), in [-1, 1]; 0 if either is constant.

    For the thesis' cross-correlation without mean subtraction (Eqn. 3.3) use
    `cryogmm.metrics.correlation.cross_correlation`.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays differ in size: {x.size} and {y.size}")
    x = x - x.mean()
    y = y - y.mean()
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / norm) if norm > 0 else 0.0
