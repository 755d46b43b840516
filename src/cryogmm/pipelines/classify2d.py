"""2D classification: MAP-EM of K class images against particle images in Fourier space.

The model is the second seed's (`em-algorithm-derivation.txt`) in 2D, as RELION's and cryoSPARC's
2D classification: particle i's Fourier coefficients are its CTF times class k's image rotated in
plane by psi and shifted by t, plus Gaussian noise of power sigma^2 per resolution shell; the class,
angle and shift are integrated out with their posterior under the current model. The classes are
CTF-free (the CTF is applied in the likelihood), so their averages are Wiener-filtered,
CTF-corrected images. One iteration (`iterate`):
1. E-step, limited to the current resolution: every particle against every class at every in-plane
   angle of `psi_step_in_degrees` and every shift on a 1-pixel grid around its current centre, as
   single-precision matrix products (`cryogmm.reconstruction.em_fourier.grid_log_likelihoods`, with
   rotated class images in place of central slices), with the class fractions and a Gaussian prior
   on the shifts as priors; only the significant posterior mass is kept (`significant_weights`).
2. M-step in the same pass: the posterior-weighted sums of CTF x data / noise and CTF^2 / noise per
   class and angle are matrix products too; rotated back and splatted into each class's padded
   half spectrum once per iteration (`cryogmm.kernels.fourier_slices.insert_rotated`). Then
   class_k = data / (weights + 1 / (pad^2 tau2_k)) (Eqn. 14), masked by the particle disc; the noise
   power per shell from the weighted residuals; the class fractions; the shift prior's width.
3. Signal power: tau2_k per shell = T x the power spectrum of the current class image (RELION's
   choice for classification: no half sets), T = `tau2_fudge` (2, as RELION's 2D default). A class's
   resolution is where its data-to-prior ratio (pad^2 tau2 x mean weight per shell, its SSNR)
   falls below 1; the next E-step reaches `resolution_margin_in_pixels` beyond the best class's.
The classes start as averages of random subsets of the particles at random angles (the seed fixes
which). The first E-step reaches `initial_resolution_in_angstroms`. In the first half of the run a
class that has (nearly) lost its particles is restarted from half of the largest class
(`reseed_empty_classes`), so that a class holding two views can split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from cryogmm.errors import InputError
from cryogmm.forward.fourier import (DEFAULT_PADDING_FACTOR, FourierPixels, image_coefficients, image_pixels,
                                     images_to_fourier, rotated_images, shift_phases, spectra_to_images)
from cryogmm.kernels.fourier_slices import insert_rotated, symmetrise_x0_line
from cryogmm.reconstruction import em_fourier as em
from cryogmm.pipelines.refine import (ParticleData, disc_mask, initial_noise_power, load_batch, run_tasks,
                                      shift_log_prior, translation_grid, update_sigma_offset)

log = logging.getLogger(__name__)

MIN_CLASS_FRACTION = 1e-5  # a class's prior never reaches zero (it could not come back)
RESEED_FRACTION = 0.2  # a class with less than this share of 1 / K is restarted (first half of the run)
MIN_RESEED_MEMBERS = 5  # ... from a class of at least twice this many particles


@dataclass(frozen=True)
class Classify2DSettings:
    """Options of `classify2d` (keyword-only; validated here).

    n_classes : K
    max_iterations : iterations (RELION's default 25)
    tau2_fudge : regularisation factor T (> 0; larger trusts the data more; RELION's 2D default 2)
    particle_diameter_in_angstroms : soft disc on particles and classes (None: 0.9 of the box)
    psi_step_in_degrees : in-plane angular step
    offset_range_in_pixels, offset_step_in_pixels : shifts searched around each particle's centre
    initial_resolution_in_angstroms : resolution of the first E-step
    resolution_margin_in_pixels : E-steps reach this far beyond the best class's resolution
    significant_fraction : posterior mass kept per particle
    polarity : -1 for bright particles (RELION's convention), +1 dark
    batch_size : particles per E-step task; padding_factor : oversampling of the class spectra
    """

    n_classes: int
    max_iterations: int = 25
    tau2_fudge: float = 2.0
    particle_diameter_in_angstroms: float | None = None
    psi_step_in_degrees: float = 6.0
    offset_range_in_pixels: float = 3.0
    offset_step_in_pixels: float = 1.0
    initial_resolution_in_angstroms: float = 30.0
    resolution_margin_in_pixels: float = 4.0
    significant_fraction: float = em.DEFAULT_SIGNIFICANT_FRACTION
    polarity: int = -1
    batch_size: int = 200
    padding_factor: int = DEFAULT_PADDING_FACTOR

    def __post_init__(self):
        checks = [
            (1 <= self.n_classes <= 1000, "the number of classes must be between 1 and 1000"),
            (1 <= self.max_iterations <= 200, "iterations must be between 1 and 200"),
            (np.isfinite(self.tau2_fudge) and self.tau2_fudge > 0, "tau2 fudge must be positive"),
            (self.particle_diameter_in_angstroms is None or self.particle_diameter_in_angstroms > 0,
             "particle diameter must be a positive number of Å"),
            (0.5 <= self.psi_step_in_degrees <= 90, "the in-plane angular step must be between 0.5 and 90 degrees"),
            (0 <= self.offset_range_in_pixels <= 50, "offset range must be between 0 and 50 pixels"),
            (0.1 <= self.offset_step_in_pixels <= 10, "offset step must be between 0.1 and 10 pixels"),
            (self.initial_resolution_in_angstroms > 0, "initial resolution must be a positive number of Å"),
            (0 < self.significant_fraction <= 1, "significant fraction must be in (0, 1]"),
            (self.polarity in (-1, 1), "polarity must be -1 (bright particles) or +1 (dark)"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.padding_factor in (1, 2, 3), "padding factor must be 1, 2 or 3"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def psi_grid_in_degrees(self) -> np.ndarray:
        n = max(1, int(round(360.0 / self.psi_step_in_degrees)))
        return np.arange(n) * (360.0 / n)


@dataclass
class Classify2DState:
    """Everything an iteration needs; saved as a checkpoint after each iteration."""

    iteration: int
    classes: np.ndarray  # (K, n, n) class images (CTF-free, on the particles' intensity scale)
    class_fractions: np.ndarray  # (K,) prior probability of each class
    tau2: np.ndarray  # (K, n_shells) signal power per shell
    noise_power: np.ndarray  # (n_shells,)
    sigma_offset_in_pixels: float
    class_index: np.ndarray  # (P,) MAP class, 0-based
    psi_in_degrees: np.ndarray  # (P,) MAP in-plane angle
    shifts_in_pixels: np.ndarray  # (P, 2) MAP particle centres t
    max_posterior: np.ndarray  # (P,)
    n_significant: np.ndarray  # (P,)
    accuracy_psi_in_degrees: np.ndarray  # (P,) posterior rms of psi about the MAP (its class)
    accuracy_shift_in_pixels: np.ndarray  # (P,) posterior rms of the shift about the MAP
    class_resolution_in_angstroms: np.ndarray  # (K,) (inf: no shell reached SSNR 1)
    radius_in_pixels: float  # E-step limit of the next iteration
    seed: int = 0  # seeds the initial subsets and each iteration's reseeding draws
    history: list = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Classify2DResult:
    state: Classify2DState
    timings_in_seconds: dict


# ---------------------------------------------------------------------------------------------
# the E-step and M-step sums of one batch (a picklable task)

@dataclass(frozen=True, eq=False)
class BatchTask2D:
    particles: ParticleData
    rows: np.ndarray
    spectra: np.ndarray  # (K, m, m // 2 + 1) padded class spectra
    radius_in_pixels: float
    noise_power: np.ndarray
    log_class_prior: np.ndarray  # (K,)
    shifts_in_pixels: np.ndarray  # (B, 2) current centres
    sigma_offset_in_pixels: float
    settings: Classify2DSettings
    mask: np.ndarray


@dataclass(frozen=True, eq=False)
class BatchResult2D:
    rows: np.ndarray
    data: np.ndarray  # (K, J, S) complex128: sum of w C X conj(e_t) / noise per class and angle
    weights: np.ndarray  # (K, J, S) float64: sum of w C^2 / noise
    noise_sum: np.ndarray  # (n_shells,) posterior-weighted squared residuals
    noise_count: np.ndarray  # (n_shells,)
    class_weight: np.ndarray  # (K,) summed posterior of each class
    class_index: np.ndarray
    psi_in_degrees: np.ndarray
    shifts_in_pixels: np.ndarray
    max_posterior: np.ndarray
    n_significant: np.ndarray
    accuracy_psi_in_degrees: np.ndarray
    accuracy_shift_in_pixels: np.ndarray
    log_likelihood: np.ndarray  # (B,) at the MAP pose


def _angle_difference(a_in_degrees: np.ndarray, b_in_degrees: np.ndarray) -> np.ndarray:
    return (np.asarray(a_in_degrees) - np.asarray(b_in_degrees) + 180.0) % 360.0 - 180.0


def run_batch_2d(task: BatchTask2D) -> BatchResult2D:
    """Posterior over (shift, class, angle) of a batch and its M-step sums."""
    settings = task.settings
    pixels = image_pixels(task.particles.box, task.radius_in_pixels, include_zero=True)
    batch = load_batch(task.particles, task.rows, pixels, task.mask, settings.polarity)
    psi = settings.psi_grid_in_degrees()
    k, j = task.spectra.shape[0], psi.size
    references = rotated_images(task.spectra, psi, pixels).reshape(k * j, -1)
    offsets = translation_grid(settings.offset_range_in_pixels, settings.offset_step_in_pixels)
    shifts = task.shifts_in_pixels[:, None, :] + offsets[None]
    z = em.shifted_weighted_data(batch, task.noise_power, pixels, shifts)  # (B, T, S)
    ll = em.grid_log_likelihoods(batch, task.noise_power, pixels, references, shifts, z=z)  # (B, T, K J)
    b, t = shifts.shape[:2]
    log_prior = (shift_log_prior(shifts, task.sigma_offset_in_pixels)[:, :, None]
                 + np.repeat(task.log_class_prior.astype(np.float32), j)[None, None, :])
    w = em.significant_weights((ll + log_prior).reshape(b, -1), settings.significant_fraction,
                               em.MAX_SIGNIFICANT).reshape(b, t, k * j)
    # M-step sums: D[kj] = sum_bt w Z[b, t], W[kj] = sum_b (sum_t w) C_b^2 / noise
    inv_s = (1.0 / task.noise_power[pixels.shell]).astype(np.float32)
    w_bt = w.reshape(b * t, k * j)
    z2 = z.reshape(b * t, -1)
    d_real = w_bt.T @ np.concatenate([z2.real, z2.imag], axis=1)
    s = len(pixels)
    data = (d_real[:, :s] + 1j * d_real[:, s:]).astype(np.complex128)
    w_b = w.sum(axis=1)  # (B, K J)
    weights = (w_b.T @ (batch.ctf**2 * inv_s)).astype(np.float64)
    # noise: sum over particles and poses of w |X - C e a|^2 = |X|^2 - 2 Re(conj(a) D') + |a|^2 W' per pixel,
    # D' and W' being D and W without the 1 / noise
    a = references.astype(np.complex128)
    residual = ((np.abs(batch.coefficients.astype(np.complex128)) ** 2).sum(axis=0)
                + (-2.0 * (np.conj(a) * data).real + np.abs(a) ** 2 * weights).sum(axis=0) / inv_s)
    n_shells = task.noise_power.size
    noise_sum = np.bincount(pixels.shell, weights=residual, minlength=n_shells)[:n_shells]
    noise_count = np.bincount(pixels.shell, minlength=n_shells)[:n_shells] * float(b)
    # the MAP pose, its weight, and the posterior spread about it
    flat = w.reshape(b, -1).argmax(axis=1)
    best_t, best_kj = np.unravel_index(flat, (t, k * j))
    best_k, best_j = best_kj // j, best_kj % j
    rows = np.arange(b)
    w_class = w_b.reshape(b, k, j)[rows, best_k]  # (B, J) posterior of the angles within the MAP class
    dpsi = _angle_difference(psi[None, :], psi[best_j][:, None])
    norm = np.maximum(w_class.sum(axis=1), 1e-30)
    accuracy_psi = np.sqrt((w_class * dpsi**2).sum(axis=1) / norm)
    w_shift = w[rows, :, best_kj]  # (B, T)
    dshift = ((shifts - shifts[rows, best_t][:, None, :]) ** 2).sum(axis=-1)
    accuracy_shift = np.sqrt((w_shift * dshift).sum(axis=1) / np.maximum(w_shift.sum(axis=1), 1e-30))
    return BatchResult2D(
        rows=np.asarray(task.rows), data=data.reshape(k, j, s), weights=weights.reshape(k, j, s),
        noise_sum=noise_sum, noise_count=noise_count, class_weight=w_b.reshape(b, k, j).sum(axis=(0, 2)),
        class_index=best_k.astype(np.int64), psi_in_degrees=psi[best_j], shifts_in_pixels=shifts[rows, best_t],
        max_posterior=w.reshape(b, -1)[rows, flat].astype(np.float64),
        n_significant=(w > 0).reshape(b, -1).sum(axis=1), accuracy_psi_in_degrees=accuracy_psi,
        accuracy_shift_in_pixels=accuracy_shift, log_likelihood=ll.reshape(b, -1)[rows, flat].astype(np.float64))


# ---------------------------------------------------------------------------------------------
# the M-step

def _padded_radius_2d(m: int) -> np.ndarray:
    """|k| in Fourier voxels of every coefficient of an rfft2 of an (m, m) array: (m, m // 2 + 1)."""
    f = np.fft.fftfreq(m) * m
    return np.hypot(f[:, None], np.arange(m // 2 + 1)[None, :])


def insert_classes(data: np.ndarray, weights: np.ndarray, psi_in_degrees: np.ndarray, pixels: FourierPixels,
                   padding_factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-(class, angle) sums (K, J, S) rotated back into each class's padded half spectrum."""
    k = data.shape[0]
    m = int(padding_factor) * pixels.box
    out_data = np.zeros((k, m, m // 2 + 1), np.complex128)
    out_weights = np.zeros((k, m, m // 2 + 1))
    psi = np.radians(np.asarray(psi_in_degrees, dtype=np.float64))
    insert_rotated(out_data, out_weights, np.cos(psi), np.sin(psi), np.ascontiguousarray(data),
                   np.ascontiguousarray(weights), pixels.fx, pixels.fy, float(padding_factor))
    return symmetrise_x0_line(out_data, out_weights)


def reconstruct_classes(data: np.ndarray, weights: np.ndarray, tau2: np.ndarray, box: int, padding_factor: int,
                        radius_in_pixels: float) -> tuple[np.ndarray, np.ndarray]:
    """Class images (K, n, n) of Eqn. 14 and each class's data-to-prior ratio per shell (K, n_shells).

    tau2 : (K, n_shells) prior signal power per shell (on the unpadded image's coefficients); the
    voxels of the padded grid hold 1 / pad^2 of a sample's weight each, so the prior term is
    1 / (pad^2 tau2). Frequencies at or beyond `radius_in_pixels`, or with tau2 = 0, are zero.
    """
    m = data.shape[-2]
    pad = m / box
    r = _padded_radius_2d(m) / pad
    shells = np.rint(r).astype(np.int64)
    n_shells = tau2.shape[1]
    t = tau2[:, np.minimum(shells, n_shells - 1)]  # (K, m, m // 2 + 1)
    inside = (r < radius_in_pixels)[None] & (t > 0)
    prior = np.divide(1.0, pad**2 * t, out=np.zeros_like(t), where=t > 0)
    spectra = np.where(inside, data / np.maximum(weights + prior, 1e-300), 0.0)
    images = spectra_to_images(spectra, box, correction="insertion")
    ratio = np.where(inside, weights * pad**2 * t, 0.0)
    keep = shells < n_shells
    ssnr = np.zeros((data.shape[0], n_shells))
    count = np.bincount(shells[keep], minlength=n_shells)
    for c in range(data.shape[0]):  # K bincounts over the grid (not a loop over pixels)
        total = np.bincount(shells[keep], weights=ratio[c][keep], minlength=n_shells)
        ssnr[c] = np.divide(total, count, out=np.zeros(n_shells), where=count > 0)
    return images, ssnr


def power_per_shell(images: np.ndarray, n_shells: int) -> np.ndarray:
    """Mean |coefficient|^2 per shell (K, n_shells) of images (K, n, n) (rfft2 units of the image)."""
    n = images.shape[-1]
    pixels = image_pixels(n, n / 2 + 0.5, include_zero=True)
    x = image_coefficients(images, pixels)
    power = np.abs(x.astype(np.complex128)) ** 2
    count = np.bincount(pixels.shell, minlength=n_shells)[:n_shells]
    out = np.stack([np.bincount(pixels.shell, weights=p, minlength=n_shells)[:n_shells] for p in power])
    return np.divide(out, count, out=np.zeros_like(out), where=count > 0)


def resolution_shell(ssnr: np.ndarray) -> float:
    """The last shell before the data-to-prior ratio first falls below 1 (0 when shell 1 already does)."""
    below = np.flatnonzero(ssnr[1:] < 1.0) + 1
    return float(below[0] - 1) if below.size else float(ssnr.size - 1)


def _max_radius(box: int, padding_factor: int) -> float:
    return min(box / 2 - 0.5, (padding_factor * box / 2 - 1) / padding_factor)


def _diameter_px(settings: Classify2DSettings, particles: ParticleData) -> float:
    if settings.particle_diameter_in_angstroms is None:
        return 0.9 * particles.box
    return settings.particle_diameter_in_angstroms / particles.pixel_size_in_angstroms


def _finish_classes(data, weights, tau2_prior, settings, particles, radius, mask):
    """Classes from the sums; their new tau2 (shells the E-step reached) and resolutions."""
    n = particles.box
    images, ssnr = reconstruct_classes(data, weights, tau2_prior, n, settings.padding_factor, radius)
    images = (images * mask).astype(np.float32)
    n_shells = tau2_prior.shape[1]
    tau2 = tau2_prior.copy()
    reached = np.arange(n_shells) < radius
    tau2[:, reached] = settings.tau2_fudge * power_per_shell(images, n_shells)[:, reached]
    shells = np.array([resolution_shell(row) for row in ssnr])
    pixel = particles.pixel_size_in_angstroms
    resolution = np.where(shells > 0, n * pixel / np.maximum(shells, 1e-9), np.inf)
    return images, tau2, ssnr, shells, resolution


def average_at_poses(particles: ParticleData, settings: Classify2DSettings, class_index: np.ndarray,
                     psi_index: np.ndarray, noise_power: np.ndarray, *, rows: np.ndarray | None = None,
                     shifts_in_pixels: np.ndarray | None = None, n_classes: int | None = None) -> np.ndarray:
    """Class images (K, n, n): the CTF-corrected averages of particles at given classes and angles
    (angles as indices into `settings.psi_grid_in_degrees()`), masked.

    The M-step with one pose per particle and a vanishing prior (a tiny Wiener constant).
    rows : the particles (default all), with class_index, psi_index and shifts_in_pixels (their
    centres t, default the box centre) one per row; n_classes : K (default settings.n_classes).
    """
    n = particles.box
    k = settings.n_classes if n_classes is None else int(n_classes)
    rows_all = np.arange(particles.n_particles) if rows is None else np.asarray(rows, dtype=np.int64)
    p = rows_all.size
    mask = disc_mask(n, _diameter_px(settings, particles) / 2)
    psi = settings.psi_grid_in_degrees()
    radius = _max_radius(n, settings.padding_factor)
    pixels = image_pixels(n, radius, include_zero=True)
    inv_s = (1.0 / noise_power[pixels.shell]).astype(np.float64)
    data = np.zeros((k * psi.size, len(pixels)), np.complex128)
    weights = np.zeros((k * psi.size, len(pixels)))
    for start in range(0, p, settings.batch_size):
        part = slice(start, min(p, start + settings.batch_size))
        batch = load_batch(particles, rows_all[part], pixels, mask, settings.polarity)
        cell = class_index[part] * psi.size + psi_index[part]
        x = batch.coefficients
        if shifts_in_pixels is not None:  # X = e_t C a: conj(e_t) X is the centred particle
            x = x * np.conj(shift_phases(shifts_in_pixels[part], pixels))
        np.add.at(data, cell, x * batch.ctf * inv_s)
        np.add.at(weights, cell, batch.ctf.astype(np.float64) ** 2 * inv_s)
    d, w = insert_classes(data.reshape(k, psi.size, -1), weights.reshape(k, psi.size, -1), psi, pixels,
                          settings.padding_factor)
    flat = np.full((k, n // 2 + 1), 1e6 / max(w.max(), 1e-30))
    images, _ = reconstruct_classes(d, w, flat, n, settings.padding_factor, radius)
    return (images * mask).astype(np.float32)


def initial_state(particles: ParticleData, settings: Classify2DSettings, seed: int) -> Classify2DState:
    """Random subsets at random angles averaged into K classes; noise from the particles' power."""
    rng = np.random.default_rng(seed)
    n, p, k = particles.box, particles.n_particles, settings.n_classes
    if k > p:
        raise InputError(f"{k} classes for {p} particles: choose at most {p} classes")
    mask = disc_mask(n, _diameter_px(settings, particles) / 2)
    noise = initial_noise_power(particles, np.arange(min(p, 2000)), mask)
    class_index = rng.permutation(np.arange(p) % k)
    psi = settings.psi_grid_in_degrees()
    psi_index = rng.integers(psi.size, size=p)
    images = average_at_poses(particles, settings, class_index, psi_index, noise)
    tau2 = settings.tau2_fudge * power_per_shell(images, n // 2 + 1)
    radius = min(n * particles.pixel_size_in_angstroms / settings.initial_resolution_in_angstroms,
                 _max_radius(n, settings.padding_factor))
    return Classify2DState(
        iteration=0, classes=images, class_fractions=np.bincount(class_index, minlength=k) / p, tau2=tau2,
        noise_power=noise, sigma_offset_in_pixels=max(settings.offset_range_in_pixels, 1.0),
        class_index=class_index.astype(np.int64), psi_in_degrees=psi[psi_index], shifts_in_pixels=np.zeros((p, 2)),
        max_posterior=np.zeros(p), n_significant=np.zeros(p, np.int64), accuracy_psi_in_degrees=np.full(p, np.nan),
        accuracy_shift_in_pixels=np.full(p, np.nan), class_resolution_in_angstroms=np.full(k, np.inf),
        radius_in_pixels=float(radius), seed=int(seed), history=[])


def reseed_empty_classes(particles: ParticleData, settings: Classify2DSettings, state: Classify2DState,
                         rng: np.random.Generator) -> tuple[Classify2DState, list]:
    """Restart each class holding less than RESEED_FRACTION / K of the particles from half the largest.

    EM's classes compete: one that loses its particles early never wins them back (its image, and
    with it its tau2, fades), while another holds two views at once. A nearly empty class is
    restarted as the average of a random half of the largest class's particles at their poses, and
    those particles move to it: two slightly different copies of the large class that the next
    E-steps pull apart when it held more than one view (and merge again when it did not).
    Returns the new state and the (restarted, split) class numbers (0-based).
    """
    k = settings.n_classes
    classes, fractions, tau2 = state.classes.copy(), state.class_fractions.copy(), state.tau2.copy()
    class_index = state.class_index.copy()
    counts = np.bincount(class_index, minlength=k)
    psi = settings.psi_grid_in_degrees()
    done = []
    for empty in np.flatnonzero(fractions < RESEED_FRACTION / k):
        big = int(np.argmax(counts))
        if counts[big] < 2 * MIN_RESEED_MEMBERS or big == empty:
            break
        members = np.flatnonzero(class_index == big)
        moved = np.sort(rng.permutation(members)[: members.size // 2])
        psi_index = np.rint(state.psi_in_degrees[moved] / (360.0 / psi.size)).astype(np.int64) % psi.size
        classes[empty] = average_at_poses(particles, settings, np.zeros(moved.size, np.int64), psi_index,
                                          state.noise_power, rows=moved, shifts_in_pixels=state.shifts_in_pixels[moved],
                                          n_classes=1)[0]
        class_index[moved] = empty
        counts[big] -= moved.size
        counts[empty] += moved.size
        fractions[empty] = fractions[big] = (fractions[big] + fractions[empty]) / 2
        tau2[empty] = tau2[big]
        done.append((int(empty), big))
    new = replace(state, classes=classes, class_fractions=fractions, tau2=tau2, class_index=class_index)
    return new, done


def iterate(particles: ParticleData, state: Classify2DState, settings: Classify2DSettings, *, executor=None,
            progress: bool = False) -> Classify2DState:
    """One EM iteration (see the module docstring)."""
    start = time.perf_counter()
    n, p, k = particles.box, particles.n_particles, settings.n_classes
    pixel = particles.pixel_size_in_angstroms
    radius = state.radius_in_pixels
    mask = disc_mask(n, _diameter_px(settings, particles) / 2)
    spectra = images_to_fourier(state.classes, padding_factor=settings.padding_factor)
    log_prior = np.log(np.maximum(state.class_fractions, MIN_CLASS_FRACTION))
    size = settings.batch_size
    tasks = [BatchTask2D(particles, np.arange(i, min(p, i + size)), spectra, radius, state.noise_power, log_prior,
                         state.shifts_in_pixels[i:i + size], state.sigma_offset_in_pixels, settings, mask)
             for i in range(0, p, size)]
    psi = settings.psi_grid_in_degrees()
    pixels = image_pixels(n, radius, include_zero=True)
    n_shells = state.noise_power.size
    data = np.zeros((k, psi.size, len(pixels)), np.complex128)
    weights = np.zeros((k, psi.size, len(pixels)))
    noise_sum, noise_count, class_weight = np.zeros(n_shells), np.zeros(n_shells), np.zeros(k)
    out = {name: getattr(state, name).copy() for name in ("class_index", "psi_in_degrees", "shifts_in_pixels",
                                                          "max_posterior", "n_significant", "accuracy_psi_in_degrees",
                                                          "accuracy_shift_in_pixels")}
    log_likelihood = np.zeros(p)
    for result in run_tasks(tasks, executor, progress, f"iteration {state.iteration + 1}", function=run_batch_2d):
        data += result.data
        weights += result.weights
        noise_sum += result.noise_sum
        noise_count += result.noise_count
        class_weight += result.class_weight
        for name in out:
            out[name][result.rows] = getattr(result, name)
        log_likelihood[result.rows] = result.log_likelihood
    d, w = insert_classes(data, weights, psi, pixels, settings.padding_factor)
    images, tau2, ssnr, shells, resolution = _finish_classes(d, w, state.tau2, settings, particles, radius, mask)
    noise = state.noise_power.copy()
    reached = noise_count > 0
    noise[reached] = np.maximum(noise_sum[reached] / noise_count[reached], 1e-30)
    fractions = np.maximum(class_weight / max(class_weight.sum(), 1e-30), MIN_CLASS_FRACTION)
    fractions /= fractions.sum()
    best_shell = float(shells.max()) if shells.size else 0.0
    initial = min(n * pixel / settings.initial_resolution_in_angstroms, _max_radius(n, settings.padding_factor))
    new_radius = float(min(max(best_shell + settings.resolution_margin_in_pixels, initial),
                           _max_radius(n, settings.padding_factor)))
    changed = (out["class_index"] != state.class_index) if state.iteration > 0 else None
    psi_change = np.abs(_angle_difference(out["psi_in_degrees"], state.psi_in_degrees)) if state.iteration > 0 else None
    record = {
        "iteration": state.iteration + 1,
        "e_step_radius_in_pixels": radius,
        "e_step_resolution_in_angstroms": n * pixel / radius,
        "best_class_resolution_in_angstroms": n * pixel / best_shell if best_shell > 0 else None,
        "fraction_changing_class": None if changed is None else float(np.mean(changed)),
        "median_psi_change_in_degrees": None if psi_change is None else float(np.median(psi_change)),
        "mean_max_posterior": float(np.mean(out["max_posterior"])),
        "mean_significant_poses": float(np.mean(out["n_significant"])),
        "non_empty_classes": int(np.count_nonzero(np.bincount(out["class_index"], minlength=k))),
        "sigma_offset_in_angstroms": update_sigma_offset(out["shifts_in_pixels"]) * pixel,
        "sum_log_likelihood": float(log_likelihood.sum()),
        "seconds": time.perf_counter() - start,
    }
    new_state = Classify2DState(
        iteration=state.iteration + 1, classes=images, class_fractions=fractions, tau2=tau2, noise_power=noise,
        sigma_offset_in_pixels=update_sigma_offset(out["shifts_in_pixels"]), **out,
        class_resolution_in_angstroms=resolution, radius_in_pixels=new_radius, seed=state.seed, history=[])
    record["restarted_classes"] = []
    if new_state.iteration <= settings.max_iterations // 2:
        new_state, restarted = reseed_empty_classes(particles, settings, new_state,
                                                    np.random.default_rng([state.seed, new_state.iteration]))
        record["restarted_classes"] = [{"class": e + 1, "from_class": b + 1} for e, b in restarted]
    new_state.history = state.history + [record]
    return new_state


def classify2d(particles: ParticleData, settings: Classify2DSettings, *, seed: int, executor=None,
               progress: bool = False, state: Classify2DState | None = None,
               checkpoint: Callable[[Classify2DState], None] | None = None,
               on_iteration: Callable[[dict], None] | None = None) -> Classify2DResult:
    """2D classification of `particles` into `settings.n_classes` classes (see the module docstring).

    seed : seeds the random initial subsets and angles and the restarts' halves; executor : None (in
    process), a `concurrent.futures` executor or a `dask.distributed.Client` (the same result);
    state : a checkpointed state to resume from; checkpoint, on_iteration : called after each iteration.
    """
    start = time.perf_counter()
    timings = {}
    if state is None:
        state = initial_state(particles, settings, seed)
        timings["setup"] = time.perf_counter() - start
    while state.iteration < settings.max_iterations:
        state = iterate(particles, state, settings, executor=executor, progress=progress)
        if on_iteration is not None:
            on_iteration(state.history[-1])
        if checkpoint is not None:
            checkpoint(state)
    timings["iterations"] = float(sum(r["seconds"] for r in state.history))
    timings["total"] = time.perf_counter() - start
    return Classify2DResult(state, timings)


def settings_dict(settings: Classify2DSettings) -> dict:
    return asdict(settings)


_STATE_ARRAYS = ("classes", "class_fractions", "tau2", "noise_power", "class_index", "psi_in_degrees",
                 "shifts_in_pixels", "max_posterior", "n_significant", "accuracy_psi_in_degrees",
                 "accuracy_shift_in_pixels", "class_resolution_in_angstroms")


def state_to_arrays(state: Classify2DState) -> dict:
    """The state as a dict of arrays (for an `.npz` checkpoint); `state_from_arrays` inverts it."""
    import json

    arrays = {name: getattr(state, name) for name in _STATE_ARRAYS}
    scalars = {"iteration": state.iteration, "radius_in_pixels": state.radius_in_pixels,
               "sigma_offset_in_pixels": state.sigma_offset_in_pixels, "seed": state.seed, "history": state.history}
    arrays["scalars_json"] = np.array(json.dumps(scalars))
    return arrays


def state_from_arrays(arrays: dict) -> Classify2DState:
    import json

    scalars = json.loads(str(arrays["scalars_json"]))
    return Classify2DState(**{name: np.asarray(arrays[name]) for name in _STATE_ARRAYS}, **scalars)
