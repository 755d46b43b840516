"""Post-processing of a gold-standard refinement: solvent mask, masked FSC, B-factor, sharpening.

A gold-standard refinement ends with two half maps reconstructed from disjoint halves of the
particles. Post-processing (the steps of RELION's `relion_postprocess`) turns them into the map
that is interpreted and the resolution that is reported:

1. Solvent mask (`auto_mask`). The half maps hold noise everywhere in the box, the particle only
   in part of it. A mask that keeps the particle and removes the solvent raises the FSC. It is
   built from the average of the halves low-passed (to ignore noise and side chains), binarised,
   reduced to its largest connected region, dilated by a margin and given a soft raised-cosine
   edge: a sharp edge would itself add correlation at high frequency.
2. Masked FSC with a correction for the mask (`masked_fsc`). Multiplying both halves by the same
   mask convolves their transforms with the same kernel: some of the correlation measured after
   masking is the mask's, not the structure's. To measure it, the phases of both half maps are
   replaced by independent random phases beyond a frequency where the halves still agree well
   (where the unmasked FSC first falls below 0.8): beyond it their true correlation is then zero,
   and whatever the masked FSC of these phase-randomised halves shows there is the mask's doing.
   The corrected curve is `(FSC_masked - FSC_random) / (1 - FSC_random)` beyond that frequency
   and the masked FSC below it (Chen et al. 2013, Ultramicroscopy 135:24). The resolution is
   where it falls below 0.143.
3. Overall B-factor (`guinier_bfactor`). The map's amplitudes fall with frequency faster than the
   structure's, from motion, radiation damage and errors in the poses, roughly as
   `exp(-B k^2 / 4)`. In a Guinier plot (log of the shell-averaged amplitude against `k^2`) the
   fall is a straight line at intermediate to high frequencies (Rosenthal & Henderson 2003,
   J. Mol. Biol. 333:721); its slope is `-B / 4`.
4. Sharpening (`sharpen`). The full map is multiplied in Fourier space by `exp(+B k^2 / 4)` to
   restore the fall-off, by the figure of merit `sqrt(2 FSC / (1 + FSC))` of each shell (the
   expected correlation of the full map with the truth, which down-weights noisy shells) and by
   a low-pass at the resolution, with a raised-cosine edge, so that amplified noise beyond the
   resolution is removed.

Maps are `(N, N, N)` arrays `[z, y, x]` with the centre at index `N // 2`, voxel sizes in Å and
frequencies in 1/Å. Fourier shells are those of `cryogmm.metrics.fsc`: shell `i` holds the
frequencies whose radius in Fourier voxels rounds to `i` and sits at `i / (N * voxel size)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryogmm.errors import InputError
from cryogmm.metrics.fsc import FSCCurve, fourier_shell_correlation, resolution_at
from cryogmm.preprocess.mask import soft_edge
from cryogmm.preprocess.normalise import OUTER_RING_FRACTION

# where the unmasked FSC first falls below this, the phases are randomised (RELION's choice)
RANDOMISE_BELOW_FSC = 0.8
RESOLUTION_THRESHOLD = 0.143
# automatic mask threshold: solvent median + max(this many solvent standard deviations, ...
AUTO_THRESHOLD_IN_SIGMAS = 4.0
# ... this fraction of the low-passed map's peak above the solvent median)
AUTO_THRESHOLD_FRACTION_OF_PEAK = 0.1
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True, eq=False)
class MaskedFSC:
    """FSC curves of two half maps with and without a mask, and the mask-corrected curve.

    Parameters
    ----------
    unmasked : FSCCurve of the half maps as they are
    masked : FSCCurve of the half maps multiplied by the mask
    phase_randomised : FSCCurve of the masked half maps after their phases were randomised
        (independently) from the randomisation frequency on; equal to `masked` when nothing was
        randomised
    corrected : FSCCurve, `(masked - phase_randomised) / (1 - phase_randomised)` from the
        randomisation frequency on, `masked` below it
    resolution_in_angstroms : float or None
        Where `corrected` first falls below 0.143; None when it never does (the resolution is
        better than Nyquist, `corrected.nyquist_resolution_in_angstroms`)
    randomisation_frequency_per_angstrom : float or None
        Centre of the first shell whose phases were randomised, in 1/Å; None when the unmasked FSC
        never fell below 0.8 (or the requested frequency is beyond Nyquist) and nothing was
        randomised
    """

    unmasked: FSCCurve
    masked: FSCCurve
    phase_randomised: FSCCurve
    corrected: FSCCurve
    resolution_in_angstroms: float | None
    randomisation_frequency_per_angstrom: float | None

    @property
    def randomisation_resolution_in_angstroms(self) -> float | None:
        """1 / randomisation frequency, in Å (None when nothing was randomised)."""
        f = self.randomisation_frequency_per_angstrom
        return None if f is None else float(1.0 / f)


@dataclass(frozen=True, eq=False)
class GuinierFit:
    """A straight line fitted to the Guinier plot, `ln A(k) = intercept - B k^2 / 4`.

    Parameters
    ----------
    bfactor_in_angstroms2 : float
        B in Å^2; positive for a map whose amplitudes fall off (a blur `exp(-B k^2 / 4)`).
    intercept : float
        ln of the amplitude (in the map's units times voxels^3, `np.fft.rfftn` scaling) that the
        line reaches at k = 0.
    squared_frequency_per_angstrom2 : (n,) float64
        Mean `k^2 = 1 / d^2` of each shell with non-zero amplitude (the mean, shell 0, left out),
        in 1/Å^2.
    log_amplitude : (n,) float64
        ln of the shell-averaged Fourier amplitude at those shells.
    used : (n,) bool
        The shells inside the fitted range.
    fit_from_angstroms, fit_to_angstroms : float
        The fitted range, from low to high resolution, in Å.
    """

    bfactor_in_angstroms2: float
    intercept: float
    squared_frequency_per_angstrom2: np.ndarray
    log_amplitude: np.ndarray
    used: np.ndarray
    fit_from_angstroms: float
    fit_to_angstroms: float


def _check_voxel_size(voxel_size_in_angstroms: float) -> float:
    voxel = float(voxel_size_in_angstroms)
    if not np.isfinite(voxel) or voxel <= 0:
        raise InputError(f"voxel size {voxel_size_in_angstroms} Å: must be a positive number of Å")
    return voxel


def _check_map(volume, name: str = "map") -> np.ndarray:
    """The map as float64 `(N, N, N)`; InputError if it is not a finite cubic 3D array."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or volume.shape[0] < 2:
        raise InputError(f"{name}: need a cubic map (N, N, N), got shape {volume.shape}; pad or crop it to a cube")
    if not np.issubdtype(volume.dtype, np.number) or np.iscomplexobj(volume):
        raise InputError(f"{name}: need real numbers, got dtype {volume.dtype}")
    volume = volume.astype(np.float64)
    if not np.isfinite(volume).all():
        raise InputError(f"{name}: holds NaN or infinite values; fix the map before post-processing")
    return volume


def _check_halves(half1, half2) -> tuple[np.ndarray, np.ndarray]:
    half1, half2 = _check_map(half1, "half map 1"), _check_map(half2, "half map 2")
    if half1.shape != half2.shape:
        raise InputError(f"half maps differ in shape: {half1.shape} and {half2.shape}; "
                         "they must come from the same refinement")
    return half1, half2


def _fourier_radii(n: int) -> np.ndarray:
    """Radius in Fourier voxels of every `np.fft.rfftn` coefficient of an `(n, n, n)` map."""
    axis, last = np.fft.fftfreq(n) * n, np.fft.rfftfreq(n) * n
    return np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + last[None, None, :] ** 2)


def _multiplicity(n: int) -> np.ndarray:
    """How many coefficients of the full spectrum each rfftn column stands for, `(n // 2 + 1,)`:
    2 (k and -k), except the planes kx = 0 and, for even n, kx = n / 2 that hold both."""
    count = np.full(n // 2 + 1, 2.0)
    count[0] = 1.0
    count[-1] = 1.0 if n % 2 == 0 else 2.0
    return count


def _shell_means(values: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    """Mean of `values` (an rfftn-shaped array) over each shell of the full spectrum, `(n_shells,)`;
    0 for an empty shell. Coefficients beyond the last shell are left out."""
    weight = np.broadcast_to(_multiplicity(shells.shape[0]), shells.shape)
    keep = shells < n_shells
    total = np.bincount(shells[keep], weights=(weight * values)[keep], minlength=n_shells)
    count = np.bincount(shells[keep], weights=weight[keep], minlength=n_shells)
    return np.divide(total, count, out=np.zeros(n_shells), where=count > 0)


def _lowpass(volume: np.ndarray, voxel: float, resolution_in_angstroms: float) -> np.ndarray:
    """Gaussian low-pass in Fourier space, 1/2 at `1 / resolution_in_angstroms`."""
    n = volume.shape[0]
    k = _fourier_radii(n) / (n * voxel)
    gain = np.exp(-np.log(2.0) * (k * resolution_in_angstroms) ** 2)
    return np.fft.irfftn(np.fft.rfftn(volume) * gain, s=volume.shape, axes=(0, 1, 2))


def _automatic_threshold(smooth: np.ndarray) -> float:
    """Solvent median + max(4 solvent sigmas, 0.1 of the peak above the median); the solvent is
    the voxels at least `OUTER_RING_FRACTION * N` from the centre (corners included)."""
    n = smooth.shape[0]
    z, y, x = np.ogrid[:n, :n, :n]
    solvent = smooth[(z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2) ** 2 >= (OUTER_RING_FRACTION * n) ** 2]
    median = float(np.median(solvent))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(solvent - median)))
    peak = float(smooth.max())
    return median + max(AUTO_THRESHOLD_IN_SIGMAS * sigma, AUTO_THRESHOLD_FRACTION_OF_PEAK * (peak - median))


def auto_mask(volume: np.ndarray, voxel_size_in_angstroms: float, *, lowpass_in_angstroms: float = 15.0,
              threshold: float | None = None, extend_in_angstroms: float | None = None,
              soft_edge_in_angstroms: float | None = None) -> np.ndarray:
    """Soft solvent mask of a map (usually the average of the two half maps).

    The map is low-passed with a Gaussian in Fourier space (1/2 at `1 / lowpass_in_angstroms`),
    binarised at `threshold`, reduced to its largest connected region (6-connected, by voxel
    count), dilated by `extend_in_angstroms` (every voxel within that distance of the region) and
    given a raised-cosine edge of `soft_edge_in_angstroms` outside it.

    Parameters
    ----------
    volume : (N, N, N) `[z, y, x]`, density bright (positive) on a solvent near 0
    voxel_size_in_angstroms : float
    lowpass_in_angstroms : resolution of the low-pass before binarising, in Å
    threshold : level of the low-passed map, in the map's units. Default: automatic, the solvent
        median plus the larger of 4 solvent standard deviations (MAD of the voxels at least
        0.45 N from the centre, which in a box sized for the particle is solvent) and 0.1 of the
        low-passed peak above that median. The first term keeps noise out of the mask (after the
        low-pass the solvent is smooth and rarely reaches 4 sigma; islands that do are dropped
        with every region but the largest); the second sets the level for a clean map whose
        solvent has no noise, near the particle's envelope rather than deep in its tail. A map
        with weak peripheral density (a micelle, a flexible domain) may need a lower threshold.
    extend_in_angstroms : dilation of the binary region in Å; default 3 voxels
    soft_edge_in_angstroms : width of the raised-cosine edge in Å; default 6 voxels

    Returns
    -------
    mask : (N, N, N) float32 in [0, 1]; 1 within `extend_in_angstroms` of the binary region,
        0 from `extend_in_angstroms + soft_edge_in_angstroms` on

    Raises
    ------
    InputError
        A bad map or option; nothing above the threshold; a mask that covers the whole box.
    """
    voxel = _check_voxel_size(voxel_size_in_angstroms)
    volume = _check_map(volume)
    extend = 3.0 * voxel if extend_in_angstroms is None else float(extend_in_angstroms)
    width = 6.0 * voxel if soft_edge_in_angstroms is None else float(soft_edge_in_angstroms)
    for name, value in (("extend", extend), ("soft edge", width)):
        if not np.isfinite(value) or value < 0:
            raise InputError(f"mask {name} {value} Å: must be a non-negative number of Å")
    if not np.isfinite(lowpass_in_angstroms) or lowpass_in_angstroms < 0:
        raise InputError(f"mask low-pass {lowpass_in_angstroms} Å: must be a non-negative number of Å")
    smooth = _lowpass(volume, voxel, lowpass_in_angstroms) if lowpass_in_angstroms > 0 else volume
    level = _automatic_threshold(smooth) if threshold is None else float(threshold)
    labels, count = ndimage.label(smooth > level, structure=_CONNECTIVITY)
    if count == 0:
        raise InputError(f"mask: nothing in the low-passed map is above the threshold {level:.4g} "
                         f"(its maximum is {smooth.max():.4g}); pass a lower threshold")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    region = labels == 1 + int(np.argmax(sizes))
    distance = ndimage.distance_transform_edt(~region, sampling=voxel)  # Å outside the region, 0 in it
    mask = soft_edge(distance - extend, width)
    if mask.min() > 0:
        raise InputError(f"mask: at threshold {level:.4g} the mask covers the whole box; "
                         "pass a higher threshold or a smaller extension and soft edge")
    return mask.astype(np.float32)


def _randomise_phases(volume: np.ndarray, first_shell: int, rng: np.random.Generator) -> np.ndarray:
    """The map with random phases in every Fourier shell from `first_shell` on, amplitudes kept.

    The phases are those of the transform of real white noise: uniform, and with the Hermitian
    symmetry of a real map (opposite at k and -k, 0 or pi where k and -k coincide), so that the
    rfftn coefficients stay a consistent real spectrum and `irfftn` keeps every amplitude.
    """
    n = volume.shape[0]
    spectrum = np.fft.rfftn(volume)
    noise = np.fft.rfftn(rng.standard_normal(volume.shape))
    phase = np.divide(noise, np.abs(noise), out=np.ones_like(noise), where=np.abs(noise) > 0)
    beyond = np.rint(_fourier_radii(n)) >= first_shell
    spectrum[beyond] *= phase[beyond]
    return np.fft.irfftn(spectrum, s=volume.shape, axes=(0, 1, 2))


def masked_fsc(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, voxel_size_in_angstroms: float, *,
               rng: np.random.Generator, randomise_beyond_in_angstroms: float | None = None) -> MaskedFSC:
    """FSC of two half maps without and with a mask, corrected for the mask by phase randomisation.

    Parameters
    ----------
    half1, half2 : (N, N, N) `[z, y, x]` half maps of a gold-standard refinement
    mask : (N, N, N) values in [0, 1], e.g. from `auto_mask`
    voxel_size_in_angstroms : float
    rng : numpy Generator for the random phases (two independent draws, one per half map)
    randomise_beyond_in_angstroms : optional; randomise the phases of the shells at this
        resolution (in Å) and finer. Default: from the first shell where the unmasked FSC falls
        below 0.8.

    Returns
    -------
    MaskedFSC, every curve with `N // 2 + 1` shells.
    """
    voxel = _check_voxel_size(voxel_size_in_angstroms)
    half1, half2 = _check_halves(half1, half2)
    mask = np.asarray(mask)
    if mask.shape != half1.shape:
        raise InputError(f"mask has shape {mask.shape}, the half maps {half1.shape}; "
                         "make the mask on the half maps' grid")
    mask = mask.astype(np.float64)
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1 + 1e-6:
        raise InputError("mask: values must be finite and in [0, 1]; rescale it or make it with auto_mask")
    n = half1.shape[0]
    n_shells = n // 2 + 1
    unmasked = fourier_shell_correlation(half1, half2, voxel)
    masked = fourier_shell_correlation(half1 * mask, half2 * mask, voxel)
    if randomise_beyond_in_angstroms is None:
        below = np.flatnonzero(unmasked.correlation[1:] < RANDOMISE_BELOW_FSC) + 1
        first = int(below[0]) if below.size else n_shells
    else:
        d = float(randomise_beyond_in_angstroms)
        if not np.isfinite(d) or d <= 0:
            raise InputError(f"randomise beyond {randomise_beyond_in_angstroms} Å: must be a positive number of Å")
        # the first shell whose centre is at 1/d or beyond (never the mean, shell 0)
        first = max(1, int(np.ceil(n * voxel / d - 1e-9)))
    if first >= n_shells:
        return MaskedFSC(unmasked, masked, masked, masked, resolution_at(masked, RESOLUTION_THRESHOLD), None)
    random1 = _randomise_phases(half1, first, rng)
    random2 = _randomise_phases(half2, first, rng)
    randomised = fourier_shell_correlation(random1 * mask, random2 * mask, voxel)
    m, r = masked.correlation, randomised.correlation
    # a shell where the randomised maps still agree fully carries no information on the mask's share
    corrected = np.divide(m - r, 1.0 - r, out=m.copy(), where=1.0 - r > 1e-12)
    corrected[:first] = m[:first]
    corrected_curve = FSCCurve(masked.frequency_per_angstrom, np.clip(corrected, -1.0, 1.0), masked.n_voxels)
    return MaskedFSC(unmasked, masked, randomised, corrected_curve,
                     resolution_at(corrected_curve, RESOLUTION_THRESHOLD),
                     float(masked.frequency_per_angstrom[first]))


def guinier_bfactor(volume: np.ndarray, voxel_size_in_angstroms: float, *, fit_from_angstroms: float = 10.0,
                    fit_to_angstroms: float) -> GuinierFit:
    """Overall B-factor of a map from a straight-line fit to its Guinier plot.

    The Fourier amplitudes are averaged over each shell (the whole sphere, `|rfftn|`), and
    `ln A` is fitted by least squares as `intercept + slope * k^2` over the shells whose centre lies
    between `1 / fit_from_angstroms` and `1 / fit_to_angstroms` (both included); `k^2` is each
    shell's mean squared frequency. B = -4 slope, so a map blurred by `exp(-B k^2 / 4)` gains B.
    RELION fits the masked full map (the average of the half maps times the mask).

    Parameters
    ----------
    volume : (N, N, N) `[z, y, x]`
    voxel_size_in_angstroms : float
    fit_from_angstroms : low-resolution end of the fit in Å (RELION's default 10 Å)
    fit_to_angstroms : high-resolution end of the fit in Å, usually the FSC resolution; at least
        the Nyquist resolution (2 voxels)

    Returns
    -------
    GuinierFit
    """
    voxel = _check_voxel_size(voxel_size_in_angstroms)
    volume = _check_map(volume)
    low, high = float(fit_from_angstroms), float(fit_to_angstroms)
    nyquist = 2.0 * voxel
    if not (np.isfinite(low) and np.isfinite(high)) or not low > high >= nyquist * (1 - 1e-9):
        raise InputError(f"Guinier fit from {fit_from_angstroms} Å to {fit_to_angstroms} Å: need "
                         f"fit_from > fit_to >= {nyquist:g} Å (Nyquist)")
    n = volume.shape[0]
    n_shells = n // 2 + 1
    radii = _fourier_radii(n)
    shells = np.rint(radii).astype(np.int64)
    amplitude = _shell_means(np.abs(np.fft.rfftn(volume)), shells, n_shells)
    k2 = _shell_means(radii**2, shells, n_shells) / (n * voxel) ** 2
    centre = np.arange(n_shells) / (n * voxel)
    in_range = (centre >= 1.0 / low * (1 - 1e-9)) & (centre <= 1.0 / high * (1 + 1e-9))
    in_range[0] = False
    if (amplitude[in_range] <= 0).any():
        raise InputError(f"Guinier fit: the map has no amplitude in some shells between {low:g} and {high:g} Å; "
                         "fit a range where it has")
    if np.count_nonzero(in_range) < 3:
        raise InputError(f"Guinier fit from {low:g} to {high:g} Å spans {np.count_nonzero(in_range)} shell(s) "
                         "of this box; widen the range (at least 3 shells)")
    valid = amplitude > 0
    valid[0] = False
    log_amplitude = np.log(amplitude, out=np.zeros(n_shells), where=valid)
    design = np.stack([k2[in_range], np.ones(np.count_nonzero(in_range))], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, log_amplitude[in_range], rcond=None)
    return GuinierFit(float(-4.0 * slope), float(intercept), k2[valid], log_amplitude[valid], in_range[valid],
                      low, high)


def full_map_fsc_weight(fsc_curve: FSCCurve) -> np.ndarray:
    """Per-shell weight `sqrt(2 FSC / (1 + FSC))` for the full map of two half maps, 0 where FSC <= 0.

    It is the expected correlation of the full map (the average of the halves) with the truth,
    given the FSC of the halves (Rosenthal & Henderson 2003); `(n_shells,)` float64 in [0, 1].
    """
    fsc = np.clip(np.asarray(fsc_curve.correlation, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2.0 * fsc / (1.0 + fsc))


def sharpen(volume: np.ndarray, voxel_size_in_angstroms: float, *, bfactor_in_angstroms2: float,
            resolution_in_angstroms: float, fsc: FSCCurve | None = None,
            lowpass_width_in_shells: float = 3.0) -> np.ndarray:
    """Sharpen a map: undo a blur B, weight the shells by the FSC and low-pass at the resolution.

    The transform is multiplied by `exp(+B k^2 / 4)` (k in 1/Å; a negative B blurs), by
    `full_map_fsc_weight(fsc)` in each shell when `fsc` (the unmasked or corrected FSC of the half
    maps) is given, and by a raised cosine that is 1/2 at `1 / resolution_in_angstroms` and falls
    from 1 to 0 over `lowpass_width_in_shells` shells centred there.

    Parameters
    ----------
    volume : (N, N, N) `[z, y, x]`, the full map (average of the half maps)
    voxel_size_in_angstroms : float
    bfactor_in_angstroms2 : B to remove in Å^2, e.g. `guinier_bfactor(...).bfactor_in_angstroms2`
    resolution_in_angstroms : the low-pass, in Å (at least 2 voxels, Nyquist)
    fsc : optional FSCCurve of the half maps on this grid (`N // 2 + 1` shells)
    lowpass_width_in_shells : width of the low-pass edge in Fourier shells

    Returns
    -------
    (N, N, N) float32
    """
    voxel = _check_voxel_size(voxel_size_in_angstroms)
    volume = _check_map(volume)
    bfactor = float(bfactor_in_angstroms2)
    resolution = float(resolution_in_angstroms)
    if not np.isfinite(bfactor):
        raise InputError(f"B-factor {bfactor_in_angstroms2} Å^2: must be a finite number")
    if not np.isfinite(resolution) or resolution < 2.0 * voxel * (1 - 1e-9):
        raise InputError(f"resolution {resolution_in_angstroms} Å: must be at least {2.0 * voxel:g} Å (Nyquist)")
    if not np.isfinite(lowpass_width_in_shells) or lowpass_width_in_shells < 0:
        raise InputError(f"low-pass width {lowpass_width_in_shells} shells: must be non-negative")
    n = volume.shape[0]
    n_shells = n // 2 + 1
    radii = _fourier_radii(n)
    edge_start = n * voxel / resolution - 0.5 * lowpass_width_in_shells
    gain = soft_edge(radii - edge_start, lowpass_width_in_shells)
    if fsc is not None:
        frequency = np.asarray(fsc.frequency_per_angstrom)
        if frequency.shape != (n_shells,) or not np.isclose(frequency[-1], (n_shells - 1) / (n * voxel)):
            raise InputError(f"FSC curve has {frequency.size} shells up to {frequency[-1]:.4g} 1/Å, the map needs "
                             f"{n_shells} up to {(n_shells - 1) / (n * voxel):.4g} 1/Å; compute it on this grid")
        weight = np.append(full_map_fsc_weight(fsc), 0.0)  # coefficients beyond the last shell: 0
        gain = gain * weight[np.minimum(np.rint(radii).astype(np.int64), n_shells)]
    k2 = (radii / (n * voxel)) ** 2
    # only where the gain is non-zero: exp(+B k^2 / 4) could overflow in the corners of the box
    gain *= np.exp(0.25 * bfactor * k2, out=np.zeros_like(k2), where=gain > 0)
    return np.fft.irfftn(np.fft.rfftn(volume) * gain, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)
