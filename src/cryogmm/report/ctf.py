"""Do the particles' power spectra show the Thon rings of their CTF? Profiles, agreement, figures.

The power spectrum of a particle image is, on average, `|CTF(k)|^2` times the particle's own
spectrum plus a smooth background (noise, envelope). Its rings therefore sit where the CTF of
the STAR file puts them if, and only if, defocus, voltage, spherical aberration and pixel size
are right.

Profiles are taken in CTF phase rather than in frequency: every Fourier pixel of every particle
is labelled with its phase `chi = gamma + atan(A / sqrt(1 - A^2))` (CONVENTIONS.md), so that
`CTF = -sin(chi)` and the zeros lie at `chi = n pi` whatever the defocus and astigmatism of the
particle. Power is averaged in phase bins, divided by its local mean over one ring period
(`chi +- pi/2`, which removes the smooth background and envelope) and compared with the model
`sin^2(chi)` processed the same way. Particles of any defocus can then be averaged, and the
agreement is the Pearson correlation of the two profiles over a frequency band (from the first
zero up to Nyquist, or to where a ring becomes narrower than 3 Fourier pixels, beyond which the
box cannot resolve it). Amplitudes (B-factor, scale) do not move rings and are left out of the model.
A wrong defocus or pixel size moves the observed rings off `chi = n pi` and the correlation drops.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryogmm.forward.ctf import (
    CTFParameters,
    ctf_zero_frequencies,
    electron_wavelength_in_angstroms,
    frequency_grid,
)
from cryogmm.io.mrc import atomic_output

BINS_PER_PERIOD = 16  # phase bins per Thon ring (pi)
MIN_RING_WIDTH_IN_PIXELS = 3.0  # rings narrower than this (in Fourier pixels) are not resolved
TAPER_FRACTION = 0.1  # the outer 10% of the box on each side is tapered to zero (no edge cross)
CHUNK = 64  # images per FFT batch


def _taper(n: int) -> np.ndarray:
    """A separable cosine edge taper (Tukey window) of an n x n box, `[y, x]`."""
    width = max(1, int(round(TAPER_FRACTION * n)))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
    window = np.ones(n)
    window[:width] = ramp
    window[n - width:] = ramp[::-1]
    return np.outer(window, window)


def power_spectra(images: np.ndarray) -> np.ndarray:
    """`|FFT|^2` of mean-subtracted, edge-tapered images, centred (zero frequency at n // 2).

    Parameters
    ----------
    images : (P, n, n) array

    Returns
    -------
    (P, n, n) float64, `np.fft.fftshift` layout
    """
    images = np.asarray(images, dtype=np.float64)
    n = images.shape[-1]
    tapered = (images - images.mean(axis=(-2, -1), keepdims=True)) * _taper(n)
    return np.fft.fftshift(np.abs(np.fft.fft2(tapered)) ** 2, axes=(-2, -1))


def ctf_phases(parameters: CTFParameters, box: int, pixel_size_in_angstroms: float) -> np.ndarray:
    """The total CTF phase `chi` (radians) of every image at every Fourier pixel: (P, box, box).

    `chi = gamma + atan(A / sqrt(1 - A^2))`, so `CTF = -sin(chi)` (without envelope and scale) and
    the CTF zeros lie at `chi = n pi`. Centred layout (`np.fft.fftshift`), `[y, x]`.
    """
    kx, ky = frequency_grid(box, pixel_size_in_angstroms, centred=True)
    k2 = kx * kx + ky * ky
    theta = np.arctan2(ky, kx)
    p = parameters
    e = (slice(None), None, None)
    wavelength = electron_wavelength_in_angstroms(p.voltage_in_kv)[e]
    defocus = (0.5 * (p.defocus_u_in_angstroms + p.defocus_v_in_angstroms)[e]
               + 0.5 * (p.defocus_u_in_angstroms - p.defocus_v_in_angstroms)[e]
               * np.cos(2.0 * (theta - np.deg2rad(p.defocus_angle_in_degrees)[e])))
    a = p.amplitude_contrast[e]
    return (np.pi * wavelength * defocus * k2
            - 0.5 * np.pi * (p.spherical_aberration_in_mm * 1e7)[e] * wavelength**3 * k2 * k2
            + np.deg2rad(p.phase_shift_in_degrees)[e] + np.arctan2(a, np.sqrt(1.0 - a * a)))


def _phase_limits(parameters: CTFParameters, box: int, pixel_size_in_angstroms: float,
                  high_frequency: float | None) -> np.ndarray:
    """Highest usable phase of each image: at Nyquist (or `high_frequency`), or where rings narrow
    to MIN_RING_WIDTH_IN_PIXELS Fourier pixels, whichever comes first (largest defocus direction)."""
    p = parameters
    k_max = 0.5 / pixel_size_in_angstroms if high_frequency is None else min(high_frequency, 0.5 / pixel_size_in_angstroms)
    k = np.linspace(0.0, k_max, 4001)[None, :]
    wavelength = electron_wavelength_in_angstroms(p.voltage_in_kv)[:, None]
    cs = (p.spherical_aberration_in_mm * 1e7)[:, None]
    largest = np.maximum(p.defocus_u_in_angstroms, p.defocus_v_in_angstroms)[:, None]
    a = p.amplitude_contrast[:, None]
    offset = np.deg2rad(p.phase_shift_in_degrees)[:, None] + np.arctan2(a, np.sqrt(1.0 - a * a))
    smallest = np.minimum(p.defocus_u_in_angstroms, p.defocus_v_in_angstroms)[:, None]
    chi_min_direction = np.pi * wavelength * smallest * k**2 - 0.5 * np.pi * cs * wavelength**3 * k**4 + offset
    # a ring (phase change pi) spans pi / |dchi/dk| in 1/Å, i.e. that times box * pixel size Fourier pixels
    slope = np.abs(2 * np.pi * wavelength * largest * k - 2 * np.pi * cs * wavelength**3 * k**3)
    resolved = np.pi / np.maximum(slope, 1e-300) * box * pixel_size_in_angstroms >= MIN_RING_WIDTH_IN_PIXELS
    last = np.where(resolved.all(axis=1), k.shape[1] - 1, np.argmin(resolved, axis=1) - 1)
    last = np.maximum(last, 0)
    # phases beyond this are not reached in every direction (the smallest defocus lags)
    return chi_min_direction[np.arange(len(p)), last]


@dataclass(frozen=True)
class ThonProfiles:
    """Power spectra and CTF^2 in CTF-phase bins, each divided by its local mean over one ring.

    Attributes
    ----------
    phase : (B,) bin centres of the phase chi in radians (CTF zeros at n pi)
    observed : (P, B) relative power `power / local mean - 1` of each image (NaN where unused)
    model : (P, B) the same for the model `sin^2(chi)` on the same pixels
    frequency_per_angstrom : (P, B) mean |k| (1/Å) of the pixels in each bin of each image
    counts : (P, B) number of Fourier pixels per bin
    band : (P, B) bool, the bins used for the agreement (first zero to the phase limit)
    """

    phase: np.ndarray
    observed: np.ndarray
    model: np.ndarray
    frequency_per_angstrom: np.ndarray
    counts: np.ndarray
    band: np.ndarray

    def __post_init__(self):
        shape = self.observed.shape
        for name in ("model", "frequency_per_angstrom", "counts", "band"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"ThonProfiles.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.phase.shape != shape[1:]:
            raise ValueError(f"ThonProfiles.phase has shape {self.phase.shape}, expected {shape[1:]}")

    def mean(self) -> "ThonProfiles":
        """The pixel-count-weighted mean over images (one profile, P = 1); its band: bins in the band of
        at least half of the images."""
        # in-band images only; bins outside every image's band (shown, not scored) take all images
        weights = np.where(self.band | ~self.band.any(axis=0), self.counts, 0.0)
        total = weights.sum(axis=0)
        common = self.band.sum(axis=0) * 2 >= self.band.shape[0]  # in the band of half the images

        def average(values):
            with np.errstate(invalid="ignore", divide="ignore"):
                return (np.nansum(np.where(weights > 0, values, 0.0) * weights, axis=0) / total)[None]

        return ThonProfiles(self.phase, average(self.observed), average(self.model),
                            average(self.frequency_per_angstrom), total[None], common[None])


def _relative_to_local_mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-bin mean divided by the mean over one ring period centred on the bin, minus 1: (P, B)."""
    kernel = np.ones(BINS_PER_PERIOD + 1)
    kernel[[0, -1]] = 0.5  # exactly one period, centred
    local_sums = np.apply_along_axis(np.convolve, 1, sums, kernel, mode="same")
    local_counts = np.apply_along_axis(np.convolve, 1, counts, kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts) / (local_sums / local_counts) - 1.0


def thon_profiles(images: np.ndarray, parameters: CTFParameters, pixel_size_in_angstroms: float, *,
                  low_frequency: float | None = None, high_frequency: float | None = None) -> ThonProfiles:
    """Relative power and model CTF^2 of each image in CTF-phase bins (see the module docstring).

    Parameters
    ----------
    images : (P, n, n) particle images
    parameters : CTFParameters of the P images
    pixel_size_in_angstroms : float
    low_frequency, high_frequency : float, optional
        Band for the agreement in 1/Å. Default: from the first CTF zero (chi = pi) up to Nyquist or
        to where rings get narrower than 3 Fourier pixels (MIN_RING_WIDTH_IN_PIXELS).

    Returns
    -------
    ThonProfiles with P rows.
    """
    images = np.asarray(images)
    n_images, n = images.shape[0], images.shape[-1]
    if len(parameters) != n_images:
        raise ValueError(f"{len(parameters)} CTF parameter sets for {n_images} images")
    chi_limit = _phase_limits(parameters, n, pixel_size_in_angstroms, high_frequency)
    bin_width = np.pi / BINS_PER_PERIOD
    n_bins = int(np.ceil(chi_limit.max() / bin_width)) + BINS_PER_PERIOD + 1
    kx, ky = frequency_grid(n, pixel_size_in_angstroms, centred=True)
    k = np.hypot(kx, ky)
    shape = (n_images, n_bins)
    sums, model_sums, k_sums, counts = (np.zeros(shape) for _ in range(4))
    for start in range(0, n_images, CHUNK):
        rows = slice(start, min(start + CHUNK, n_images))
        chi = ctf_phases(parameters[rows], n, pixel_size_in_angstroms)
        power = power_spectra(images[rows])
        m = chi.shape[0]
        inside = np.broadcast_to(k <= 0.5 / pixel_size_in_angstroms, chi.shape)
        # one bincount for the whole batch: bin index offset by image
        index = np.floor(chi / bin_width).astype(np.int64)
        use = inside & (index >= 0) & (index < n_bins)  # phases beyond the last bin are left out
        index = (index + (np.arange(m) * n_bins)[:, None, None])[use]
        for target, values in ((sums, power), (model_sums, np.sin(chi) ** 2),
                               (k_sums, np.broadcast_to(k, chi.shape)), (counts, np.ones_like(chi))):
            target[rows] = np.bincount(index, weights=values[use], minlength=m * n_bins).reshape(m, n_bins)
    phase = (np.arange(n_bins) + 0.5) * bin_width
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = k_sums / counts
    # a full ring period around each bin lies below the limit
    band = (phase[None, :] <= chi_limit[:, None] - np.pi / 2) & (counts > 0)
    band &= (phase[None, :] >= np.pi) if low_frequency is None else (frequency >= low_frequency)
    return ThonProfiles(phase, _relative_to_local_mean(sums, counts), _relative_to_local_mean(model_sums, counts),
                        frequency, counts, band)


def agreement(profiles: ThonProfiles) -> np.ndarray:
    """Pearson correlation of observed and model profiles over each row's band: (P,) (NaN if < 3 bins)."""
    result = np.full(profiles.observed.shape[0], np.nan)
    for i, (obs, mod, use) in enumerate(zip(profiles.observed, profiles.model, profiles.band)):
        use = use & np.isfinite(obs) & np.isfinite(mod)
        if use.sum() >= 3:
            a, b = obs[use] - obs[use].mean(), mod[use] - mod[use].mean()
            denominator = np.sqrt((a * a).sum() * (b * b).sum())
            result[i] = (a * b).sum() / denominator if denominator > 0 else np.nan
    return result


def _band_in_angstroms(profile: ThonProfiles) -> list[float] | None:
    """(low, high) resolution in Å of the band of a one-row profile, or None if it is empty."""
    frequencies = profile.frequency_per_angstrom[0][profile.band[0]]
    if frequencies.size == 0:
        return None
    return [float(1.0 / frequencies.min()), float(1.0 / frequencies.max())]


def ctf_summary(parameters: CTFParameters, pixel_size_in_angstroms: float, profiles: ThonProfiles) -> dict:
    """Numbers for the report: CTF ranges and the Thon-ring agreement (JSON-ready).

    Parameters
    ----------
    parameters : CTFParameters of the P analysed images
    pixel_size_in_angstroms : float
    profiles : ThonProfiles of the same P images

    Returns
    -------
    dict with `n_particles`, `pixel_size_in_angstroms`, `defocus_in_angstroms` (min, median, max of
    (U + V) / 2), `astigmatism_in_angstroms` (max |U - V|), `voltage_in_kv`,
    `spherical_aberration_in_mm`, `amplitude_contrast` (distinct values), and `thon_rings`: the
    correlation of the mean profile (`agreement`), the per-particle correlations (median, values),
    the band in Å and the number of rings in it. Correlations are None where no ring is resolved.
    """
    p = parameters
    mean = profiles.mean()
    per_particle = agreement(profiles)
    overall = float(agreement(mean)[0])
    band = _band_in_angstroms(mean)
    defocus = p.mean_defocus_in_angstroms

    def distinct(values):
        return sorted({round(float(v), 6) for v in values})

    def finite(value):
        return None if not np.isfinite(value) else float(value)

    return {
        "n_particles": len(p),
        "pixel_size_in_angstroms": float(pixel_size_in_angstroms),
        "defocus_in_angstroms": {"min": float(defocus.min()), "median": float(np.median(defocus)),
                                 "max": float(defocus.max())},
        "astigmatism_in_angstroms": float(np.abs(p.defocus_u_in_angstroms - p.defocus_v_in_angstroms).max()),
        "voltage_in_kv": distinct(p.voltage_in_kv),
        "spherical_aberration_in_mm": distinct(p.spherical_aberration_in_mm),
        "amplitude_contrast": distinct(p.amplitude_contrast),
        "phase_shift_in_degrees": distinct(p.phase_shift_in_degrees),
        "thon_rings": {
            "agreement": finite(overall),
            "agreement_per_particle_median": finite(np.nanmedian(per_particle)) if np.isfinite(per_particle).any() else None,
            "agreement_per_particle": [finite(v) for v in per_particle],
            "band_in_angstroms": band,
            "rings_in_band": float(mean.band[0].sum() / BINS_PER_PERIOD),
            "what": "Pearson correlation of the particles' power spectra and CTF^2 in CTF-phase bins, each divided "
                    "by its mean over one ring (1: rings where the CTF puts them; about 0: no agreement)",
        },
    }


def _flattened_log_power(power: np.ndarray, half_angle_in_degrees: float = 20.0) -> np.ndarray:
    """Log power of a centred (n, n) spectrum, averaged along rings, minus its rotational average.

    The average over copies rotated by up to +- `half_angle_in_degrees` about the zero frequency
    (index n // 2) smooths along the rings and not across them, so that narrow rings stay visible.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    n = power.shape[-1]
    y, x = np.indices((n, n)) - n // 2
    log_power = np.log(np.maximum(power, 1e-30))
    steps = 2 * int(np.ceil(np.deg2rad(half_angle_in_degrees) * n / 2)) + 1  # about 1 pixel apart at the edge
    smoothed = np.zeros((n, n))
    for angle in np.deg2rad(np.linspace(-half_angle_in_degrees, half_angle_in_degrees, steps)):
        c, s = np.cos(angle), np.sin(angle)
        coordinates = np.array([s * x + c * y, c * x - s * y]) + n // 2
        smoothed += map_coordinates(log_power, coordinates, order=1, mode="nearest")
    smoothed = gaussian_filter(smoothed / steps, 1.0)  # and a little across them
    radius = np.hypot(x, y).astype(np.int64)
    ring_mean = np.bincount(radius.ravel(), smoothed.ravel()) / np.maximum(np.bincount(radius.ravel()), 1)
    return smoothed - ring_mean[radius]


def _split_panel(ax, power: np.ndarray, chi: np.ndarray, chi_limit: float, title: str) -> None:
    """Left half: observed flattened log power spectrum; right half: model CTF^2 = sin^2(chi).

    Both centred; frequencies beyond Nyquist or beyond the resolvable phase `chi_limit` are blank.
    """
    n = power.shape[-1]
    observed = _flattened_log_power(power)
    y, x = np.indices((n, n)) - n // 2
    shown_area = (np.hypot(x, y) <= n // 2) & (chi <= chi_limit)
    half = slice(0, n // 2)
    values = observed[:, half][(shown_area & (chi >= np.pi))[:, half]]  # contrast set beyond the first zero
    low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    shown = np.empty((n, n))
    shown[:, half] = (np.clip(observed[:, half], low, high) - low) / max(high - low, 1e-12)
    shown[:, n // 2:] = np.sin(chi[:, n // 2:]) ** 2
    ax.imshow(np.ma.masked_array(shown, ~shown_area), cmap="gray", origin="lower", interpolation="nearest")
    ax.set_facecolor("0.85")
    ax.axvline(n // 2 - 0.5, color="tab:orange", lw=0.8)
    reach = int(np.ceil(np.hypot(x, y)[shown_area].max())) + 2 if shown_area.any() else n // 2
    reach = min(reach, n // 2)
    ax.set_xlim(n // 2 - reach - 0.5, n // 2 + reach - 0.5)  # zoom on the resolved rings
    ax.set_ylim(n // 2 - reach - 0.5, n // 2 + reach - 0.5)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _profile_panel(ax, profile: ThonProfiles, zeros: np.ndarray, title: str) -> None:
    """Observed relative power and the model (scaled to the observed spread in the band) vs frequency."""
    band = profile.band[0]
    last = np.flatnonzero(band).max() if band.any() else np.flatnonzero(profile.counts[0] > 0).max()
    use = ((profile.counts[0] > 0) & (np.arange(band.size) <= last + BINS_PER_PERIOD // 2)
           & np.isfinite(profile.frequency_per_angstrom[0]))
    frequency = profile.frequency_per_angstrom[0][use]
    observed, model = profile.observed[0], profile.model[0]
    in_band = band & np.isfinite(observed) & np.isfinite(model)
    scale = observed[in_band].std() / model[in_band].std() if in_band.sum() > 2 and model[in_band].std() > 0 else 1.0
    ax.plot(frequency, scale * model[use], color="tab:red", lw=1.0, label="CTF² (model, scaled)")
    ax.plot(frequency, observed[use], color="k", lw=0.8, label="power spectrum")
    k_band = profile.frequency_per_angstrom[0][band & use]
    if k_band.size:
        ax.axvspan(k_band.min(), k_band.max(), color="0.92", zorder=0, label="band")
    for z in zeros[zeros <= (frequency.max() if frequency.size else 0)]:
        ax.axvline(z, color="tab:blue", lw=0.5, ls="--")
    ax.set_xlim(0, frequency.max() if frequency.size else 1)
    ax.set_xlabel("spatial frequency (1/Å)", fontsize=8)
    ax.set_ylabel("power / local mean - 1", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8)


def _zeros(parameters: CTFParameters, index: int, max_frequency: float) -> np.ndarray:
    p = parameters
    return ctf_zero_frequencies(float(p.mean_defocus_in_angstroms[index]), float(p.voltage_in_kv[index]),
                                float(p.spherical_aberration_in_mm[index]), float(p.amplitude_contrast[index]),
                                max_frequency, float(p.phase_shift_in_degrees[index]))


def _frequencies_of_phases(phase: np.ndarray, parameters: CTFParameters, k_max: float) -> np.ndarray:
    """|k| (1/Å) at which one unastigmatic CTF (mean defocus of `parameters`, one image) reaches `phase`."""
    p = parameters
    k = np.linspace(0.0, k_max, 8001)
    wavelength = float(electron_wavelength_in_angstroms(p.voltage_in_kv[0]))
    a = float(p.amplitude_contrast[0])
    chi = (np.pi * wavelength * float(p.mean_defocus_in_angstroms[0]) * k**2
           - 0.5 * np.pi * float(p.spherical_aberration_in_mm[0]) * 1e7 * wavelength**3 * k**4
           + np.deg2rad(float(p.phase_shift_in_degrees[0])) + np.arctan2(a, np.sqrt(1.0 - a * a)))
    chi = np.maximum.accumulate(chi)  # beyond the (rare) turning point of gamma: hold the last frequency
    return np.interp(phase, chi, k, left=np.nan, right=np.nan)


def _correlation_text(value: float) -> str:
    return "no ring resolved" if not np.isfinite(value) else f"agreement {value:.2f}"


def plot_ctf_overview(images: np.ndarray, parameters: CTFParameters, pixel_size_in_angstroms: float,
                      profiles: ThonProfiles, shown: list[int], path: str | os.PathLike, *,
                      title: str = "") -> None:
    """One row per shown particle and a last row for all particles; written as a PNG atomically.

    Columns: the image; its power spectrum (left half, log, minus its rotational average) next to
    the model CTF^2 (right half); the phase-binned profile against frequency with the model and
    the CTF zeros (`ctf_zero_frequencies`, dashed). The last row averages the power spectra of the
    particles within 3% of the median defocus (2D) and the profiles of all particles (1D).

    Parameters
    ----------
    images : (P, n, n) the analysed images
    parameters : their CTFParameters
    pixel_size_in_angstroms : float
    profiles : thon_profiles(images, parameters, pixel_size_in_angstroms)
    shown : indices of the particles given a row
    path : output PNG
    """
    n = images.shape[-1]
    nyquist = 0.5 / pixel_size_in_angstroms
    correlations = agreement(profiles)
    rows = len(shown) + 1
    fig = Figure(figsize=(10.5, 3.1 * rows), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False, width_ratios=[1, 1, 1.6])
    chi_limits = _phase_limits(parameters, n, pixel_size_in_angstroms, None)
    for row, index in enumerate(shown):
        image = images[index]
        low, high = np.percentile(image, [1, 99])
        axes[row, 0].imshow(np.clip(image, low, high), cmap="gray", origin="lower")
        axes[row, 0].set_title(f"particle {index + 1}: defocus {parameters.defocus_u_in_angstroms[index]:.0f} / "
                               f"{parameters.defocus_v_in_angstroms[index]:.0f} Å", fontsize=8)
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        _split_panel(axes[row, 1], power_spectra(image[None])[0],
                     ctf_phases(parameters[[index]], n, pixel_size_in_angstroms)[0], chi_limits[index],
                     "power spectrum | CTF²")
        one = ThonProfiles(profiles.phase, *(getattr(profiles, name)[index:index + 1] for name in
                                             ("observed", "model", "frequency_per_angstrom", "counts", "band")))
        _profile_panel(axes[row, 2], one, _zeros(parameters, index, nyquist),
                       f"particle {index + 1}: {_correlation_text(correlations[index])}")
    defocus = parameters.mean_defocus_in_angstroms
    median = int(np.argmin(np.abs(defocus - np.median(defocus))))
    group = np.flatnonzero(np.abs(defocus - defocus[median]) <= 0.03 * defocus[median])[:500]
    ax = axes[-1, 0]
    ax.plot(np.arange(1, len(defocus) + 1), parameters.defocus_u_in_angstroms, ".", ms=3, label="U")
    ax.plot(np.arange(1, len(defocus) + 1), parameters.defocus_v_in_angstroms, ".", ms=3, label="V")
    ax.set_xlabel("particle", fontsize=8)
    ax.set_ylabel("defocus (Å)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{len(defocus)} particles", fontsize=8)
    power = np.zeros((n, n))
    for start in range(0, group.size, CHUNK):
        power += power_spectra(images[group[start:start + CHUNK]]).sum(axis=0)
    _split_panel(axes[-1, 1], power, ctf_phases(parameters[[median]], n, pixel_size_in_angstroms)[0],
                 chi_limits[median],
                 f"mean of {group.size} within 3% of {defocus[median]:.0f} Å | CTF²")
    mean = profiles.mean()
    # the x axis of the phase-aligned mean: the frequency of each phase for the median particle
    mean = dataclasses.replace(mean, frequency_per_angstrom=_frequencies_of_phases(
        mean.phase, parameters[[median]], np.sqrt(2) * nyquist)[None])
    _profile_panel(axes[-1, 2], mean, _zeros(parameters, median, nyquist),
                   f"all particles (phase-aligned): {_correlation_text(agreement(mean)[0])}")
    axes[-1, 2].legend(fontsize=7, frameon=False, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    FigureCanvasAgg(fig)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
