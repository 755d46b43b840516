"""MAP expectation-maximisation on a voxel grid in Fourier space (the second seed, as RELION does it).

The seed (`em-algorithm-derivation.txt`) models particle i's Fourier coefficients as the CTF times
a central slice of the map's transform V in an unknown orientation phi, plus Gaussian noise; the
orientation (and the shift) is integrated out with the posterior g(phi | X_i) of the current
model, and the M-step (its Eqn. 14) is

    V_new = sum_i sum_phi g(phi | X_i) P^phi^T CTF_i X_i / sigma^2
            / (1 / tau^2 + sum_i sum_phi g(phi | X_i) P^phi^T CTF_i^2 / sigma^2).

Its per-pixel, per-image noise variances (Eqn. 15) and per-voxel prior variances tau^2 = V^2
(Eqn. 16) are degenerate in practice (each is estimated from one value), so, as RELION's MAP
approach does, the noise power sigma^2 is one value per resolution shell (the posterior-weighted
mean squared residual of Eqn. 15 pooled over the shell and over all particles), and the signal
power tau^2 is one value per shell from the spectral SNR of the current reconstruction:
tau^2 = T * SSNR / (mean data weight), with SSNR = FSC / (1 - FSC) of the two half maps and a
regularisation factor T (RELION's `--tau2_fudge`, default 1 here as in 3D auto-refine); the
weights live on a grid `pad` times finer per axis, so the mean weight is taken times pad^3.

The E-step is evaluated in two forms (`cryogmm.kernels.em_fourier` gives the expansion):
- on a grid shared by all particles (`grid_log_likelihoods`): the cross terms for all
  (particle, shift) rows and all orientations are one single-precision matrix product;
- on candidates of each particle's own (`cryogmm.kernels.em_fourier.score_candidates`): the
  oversampled children of the significant grid poses (RELION's adaptive oversampling), or a
  local neighbourhood of the previous pose.
Only the significant posterior mass is kept (`significant_weights`): the smallest set of poses
holding a fraction (0.999) of it, renormalised to sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from cryogmm.forward.fourier import FourierPixels, half_spectrum_radius, spectrum_to_map
from cryogmm.kernels.em_fourier import backproject_candidates, score_candidates
from cryogmm.kernels.fourier_slices import symmetrise_volume, symmetrise_x0_plane

DEFAULT_SIGNIFICANT_FRACTION = 0.999
EDGE_MASK_IN_PIXELS = 3.0  # soft edge at the box's border (see forward.fourier.spectrum_to_map)
MAX_SIGNIFICANT = 2000  # at most this many poses per particle carry its posterior


@dataclass(frozen=True, eq=False)
class ParticleBatch:
    """Fourier data of a batch of particles at a pixel set.

    coefficients : (B, S) complex64, the particles' transforms at `pixels`
    ctf : (B, S) float32, the CTF each was imaged with (times the contrast polarity)
    rows : (B,) int64, the particles' rows in the particle table
    """

    coefficients: np.ndarray
    ctf: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return self.rows.size


@dataclass(frozen=True, eq=False)
class Candidates:
    """Each particle's own candidate poses and their posterior weights.

    rotations : (B, R, 3, 3); n_rotations : (B,) the first n_rotations[b] are used
    shifts_in_pixels : (B, T, 2); n_shifts : (B,)
    log_likelihood : (B, R, T) float32 (-inf where unused)
    posterior : (B, R, T) float32, significant weights summing to one per particle
    """

    rotations: np.ndarray
    n_rotations: np.ndarray
    shifts_in_pixels: np.ndarray
    n_shifts: np.ndarray
    log_likelihood: np.ndarray
    posterior: np.ndarray

    def best(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The maximum-a-posteriori pose of each particle: rotations (B, 3, 3), shifts (B, 2), weight (B,)."""
        b = np.arange(self.posterior.shape[0])
        flat = self.posterior.reshape(len(b), -1).argmax(axis=1)
        r, t = np.unravel_index(flat, self.posterior.shape[1:])
        return self.rotations[b, r], self.shifts_in_pixels[b, t], self.posterior[b, r, t]

    def n_significant(self) -> np.ndarray:
        return (self.posterior > 0).reshape(self.posterior.shape[0], -1).sum(axis=1)


@dataclass(eq=False)
class Accumulators:
    """M-step sums of one half set: back-projected data and weights, and noise statistics.

    data : (m, m, m // 2 + 1) complex128; weights : same shape float64 (half spectra of the
    padded grid); noise_sum, noise_count : (n_shells,) float64 (posterior-weighted squared
    residuals per shell and the weights summed with them).
    """

    data: np.ndarray
    weights: np.ndarray
    noise_sum: np.ndarray
    noise_count: np.ndarray

    @classmethod
    def empty(cls, box: int, padding_factor: int, n_shells: int) -> "Accumulators":
        m = int(padding_factor) * int(box)
        return cls(np.zeros((m, m, m // 2 + 1), np.complex128), np.zeros((m, m, m // 2 + 1)),
                   np.zeros(n_shells), np.zeros(n_shells))

    def add(self, other: "Accumulators") -> None:
        self.data += other.data
        self.weights += other.weights
        self.noise_sum += other.noise_sum
        self.noise_count += other.noise_count


def _check_radius(spectrum: np.ndarray, padding_factor: float, pixels: FourierPixels) -> None:
    """The kernels read and write the 8 neighbours of pad * |k|: it must stay below m / 2 - 1."""
    limit = (spectrum.shape[0] / 2 - 1) / padding_factor
    if pixels.max_radius > limit + 1e-9 or spectrum.shape[0] != round(padding_factor * pixels.box):
        raise ValueError(f"pixels of radius {pixels.max_radius} on a {pixels.box}-pixel image do not fit a padded "
                         f"spectrum of {spectrum.shape[0]} voxels (radius at most {limit:.2f})")


def _inverse_noise(noise_power: np.ndarray, pixels: FourierPixels) -> np.ndarray:
    return (1.0 / noise_power[pixels.shell]).astype(np.float32)


def weighted_data(batch: ParticleBatch, inv_s: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Z[b, t] = X_b conj(e_t) C_b inv_s: (B, T, S) complex64 for phases e (B, T, S)."""
    return (batch.coefficients[:, None, :] * np.conj(phases)) * (batch.ctf * inv_s)[:, None, :]


def shifted_weighted_data(batch: ParticleBatch, noise_power: np.ndarray, pixels: FourierPixels,
                          shifts_in_pixels: np.ndarray) -> np.ndarray:
    """Z (B, T, S) complex64 (`weighted_data`) of each particle at each of its shifts (B, T, 2)."""
    b, t = shifts_in_pixels.shape[:2]
    shifts = np.asarray(shifts_in_pixels, dtype=np.float64).reshape(-1, 2)
    phase = (-2.0 * np.pi / pixels.box) * (shifts[:, :1] * pixels.fx + shifts[:, 1:] * pixels.fy)
    phases = np.exp(1j * phase).astype(np.complex64).reshape(b, t, -1)
    return weighted_data(batch, _inverse_noise(noise_power, pixels), phases)


def grid_terms(batch: ParticleBatch, noise_power: np.ndarray, pixels: FourierPixels, slices: np.ndarray,
               shifts_in_pixels: np.ndarray, *, z: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three terms of the log-likelihood on a grid: cross (B, T, J), quad (B, J), constant (B,).

    log p[b, t, j] = 2 cross[b, t, j] - quad[b, j] - constant[b] (`cryogmm.kernels.em_fourier`).
    The cross terms are one float32 matrix product of the (B T, 2 S) real and imaginary parts of
    Z with the (2 S, J) parts of the slices; the CTF^2 |slice|^2 terms one more of (B, S) x (S, J).
    z : `shifted_weighted_data` when the caller has it already.
    """
    inv_s = _inverse_noise(noise_power, pixels)
    b, t = shifts_in_pixels.shape[:2]
    if z is None:
        z = shifted_weighted_data(batch, noise_power, pixels, shifts_in_pixels)
    z = z.reshape(b * t, -1)
    z_real = np.concatenate([z.real, z.imag], axis=1).astype(np.float32)
    a_real = np.concatenate([slices.real, slices.imag], axis=1).astype(np.float32)
    cross = (z_real @ a_real.T).reshape(b, t, -1)
    power = (slices.real**2 + slices.imag**2).astype(np.float32)
    quad = (batch.ctf**2 * inv_s) @ power.T
    constant = ((np.abs(batch.coefficients) ** 2) * inv_s).sum(axis=1)
    return cross, quad, constant


def grid_log_likelihoods(batch: ParticleBatch, noise_power: np.ndarray, pixels: FourierPixels, slices: np.ndarray,
                         shifts_in_pixels: np.ndarray, *, z: np.ndarray | None = None) -> np.ndarray:
    """Log-likelihoods (B, T, J) float32 of every particle at every shift and grid orientation.

    slices : (J, S) complex64 central slices of the reference at `pixels` (or any J reference images).
    shifts_in_pixels : (B, T, 2) shifts of each particle (its own centre plus a shared grid).
    z : `shifted_weighted_data` when the caller has it already.
    """
    cross, quad, constant = grid_terms(batch, noise_power, pixels, slices, shifts_in_pixels, z=z)
    return (2.0 * cross - quad[:, None, :] - constant[:, None, None]).astype(np.float32)


def significant_weights(log_posterior: np.ndarray, fraction: float = DEFAULT_SIGNIFICANT_FRACTION,
                        max_count: int | None = None) -> np.ndarray:
    """Posterior weights (B, K) float32 from log posteriors (B, K), keeping only the significant ones.

    Per row, the weights exp(l - logsumexp(l)) in decreasing order are kept until they sum to at
    least `fraction` (at least one, at most `max_count`), the rest set to zero, and the kept ones
    renormalised to sum to one. -inf entries have weight zero. With `max_count`, only the
    `max_count` largest of each row are sorted (a partition finds them).
    """
    log_posterior = np.asarray(log_posterior, dtype=np.float64)
    b, k = log_posterior.shape
    p = np.exp(log_posterior - log_posterior.max(axis=1, keepdims=True))
    total = p.sum(axis=1, keepdims=True)
    count = k if max_count is None else max(1, min(int(max_count), k))
    if count < k:
        index = np.argpartition(-p, count - 1, axis=1)[:, :count]
    else:
        index = np.broadcast_to(np.arange(k), (b, k))
    values = np.take_along_axis(p, index, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    index = np.take_along_axis(index, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    mass = np.cumsum(values, axis=1) / total
    n_keep = np.minimum((mass < fraction - 1e-12).sum(axis=1) + 1, count)
    keep = np.arange(count)[None, :] < n_keep[:, None]
    values = np.where(keep, values, 0.0)
    weights = np.zeros((b, k), dtype=np.float32)
    np.put_along_axis(weights, index, (values / values.sum(axis=1, keepdims=True)).astype(np.float32), axis=1)
    return weights


def score(reference_spectrum: np.ndarray, padding_factor: float, batch: ParticleBatch, noise_power: np.ndarray,
          pixels: FourierPixels, rotations: np.ndarray, n_rotations: np.ndarray, shifts_in_pixels: np.ndarray,
          n_shifts: np.ndarray, *, fraction: float = DEFAULT_SIGNIFICANT_FRACTION,
          log_prior: np.ndarray | None = None) -> Candidates:
    """Log-likelihoods and significant posterior weights of each particle's own candidates.

    log_prior : optional (B, R, T) log prior of the candidates (uniform when None).
    """
    _check_radius(reference_spectrum, padding_factor, pixels)
    b, r = rotations.shape[:2]
    t = shifts_in_pixels.shape[1]
    out = np.empty((b, r, t), dtype=np.float32)
    score_candidates(reference_spectrum, float(padding_factor), pixels.fx, pixels.fy, batch.coefficients, batch.ctf,
                     _inverse_noise(noise_power, pixels), np.ascontiguousarray(rotations, dtype=np.float64),
                     n_rotations.astype(np.int64), np.ascontiguousarray(shifts_in_pixels, dtype=np.float64),
                     n_shifts.astype(np.int64), pixels.box, out)
    log_post = out if log_prior is None else out + log_prior
    posterior = significant_weights(log_post.reshape(b, -1), fraction, MAX_SIGNIFICANT).reshape(b, r, t)
    return Candidates(rotations, n_rotations, shifts_in_pixels, n_shifts, out, posterior)


def backproject(accumulators: Accumulators, reference_spectrum: np.ndarray, padding_factor: float,
                batch: ParticleBatch, noise_power: np.ndarray, pixels: FourierPixels, candidates: Candidates,
                *, n_workers: int | None = None) -> np.ndarray:
    """Add a batch's posterior-weighted data, weights and noise residuals to `accumulators`.

    Returns each particle's residual power relative to the shell noise, (B,): the
    posterior-weighted mean over pixels of |X - C e_t a|^2 / noise (about 1 for a particle whose
    noise the shell model describes; it sets the particle's noise scale).

    n_workers : accumulators filled in parallel (default: numba's thread count, at most the
        batch size); the sums are added in worker order, so the result depends on the worker
        count only through floating-point rounding.
    """
    _check_radius(reference_spectrum, padding_factor, pixels)
    if accumulators.data.shape != reference_spectrum.shape:
        raise ValueError(f"accumulators of shape {accumulators.data.shape} for a spectrum of {reference_spectrum.shape}")
    workers = max(1, min(numba.get_num_threads() if n_workers is None else n_workers, len(batch)))
    shape = accumulators.data.shape
    data = np.zeros((workers,) + shape, np.complex128)
    weights = np.zeros((workers,) + shape)
    noise_sum = np.zeros((workers, accumulators.noise_sum.size))
    noise_count = np.zeros_like(noise_sum)
    residual = np.zeros(len(batch))
    backproject_candidates(data, weights, noise_sum, noise_count, residual, reference_spectrum, float(padding_factor),
                           pixels.fx, pixels.fy, pixels.shell, batch.coefficients, batch.ctf,
                           _inverse_noise(noise_power, pixels),
                           np.ascontiguousarray(candidates.rotations, dtype=np.float64),
                           candidates.n_rotations.astype(np.int64),
                           np.ascontiguousarray(candidates.shifts_in_pixels, dtype=np.float64),
                           candidates.n_shifts.astype(np.int64), candidates.posterior, pixels.box)
    for w in range(workers):
        accumulators.data += data[w]
        accumulators.weights += weights[w]
        accumulators.noise_sum += noise_sum[w]
        accumulators.noise_count += noise_count[w]
    return residual / max(len(pixels), 1)


def padded_shells(box: int, padding_factor: int) -> np.ndarray:
    """Shell index (radius in Fourier pixels of the unpadded box, rounded) of each half-spectrum voxel."""
    return np.rint(half_spectrum_radius(int(padding_factor) * int(box)) / padding_factor).astype(np.int64)


def symmetrised(accumulators: Accumulators, operators: np.ndarray | None, max_radius_in_pixels: float,
                padding_factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The data and weights with Hermitian partners (and symmetric copies) added in."""
    data, weights = symmetrise_x0_plane(accumulators.data, accumulators.weights)
    if operators is not None and len(operators) > 1:
        out_data, out_weights = np.zeros_like(data), np.zeros_like(weights)
        radius = min(padding_factor * max_radius_in_pixels, data.shape[0] / 2 - 1)
        symmetrise_volume(data, weights, np.ascontiguousarray(operators, dtype=np.float64), float(radius),
                          out_data, out_weights)
        data, weights = out_data, out_weights
    return data, weights


def mean_weight_per_shell(weights: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    keep = shells < n_shells
    total = np.bincount(shells[keep], weights=weights[keep], minlength=n_shells)
    count = np.bincount(shells[keep], minlength=n_shells)
    return np.divide(total, count, out=np.zeros(n_shells), where=count > 0)


def tau2_from_fsc(fsc: np.ndarray, mean_weight: np.ndarray, padding_factor: int, tau2_fudge: float = 1.0) -> np.ndarray:
    """Signal power per shell from the half maps' FSC: T * SSNR / (pad^3 * mean weight), SSNR = FSC / (1 - FSC).

    Shells where the FSC is <= 0.001 or that received no weight get tau^2 = 0 (their voxels zero).
    """
    fsc = np.clip(np.asarray(fsc, dtype=np.float64), 0.0, 0.999)
    ssnr = np.where(fsc > 1e-3, fsc / (1.0 - fsc), 0.0)
    denominator = padding_factor**3 * np.asarray(mean_weight, dtype=np.float64)
    return tau2_fudge * np.divide(ssnr, denominator, out=np.zeros_like(ssnr), where=denominator > 0)


def reconstruct(data: np.ndarray, weights: np.ndarray, box: int, padding_factor: int, max_radius_in_pixels: float,
                *, tau2: np.ndarray | None = None, wiener_constant: float = 0.0,
                edge_mask_in_pixels: float = EDGE_MASK_IN_PIXELS) -> np.ndarray:
    """The map (n, n, n) float32 of Eqn. 14 from symmetrised accumulators.

    tau2 : (n_shells,) signal power per shell (the prior 1/tau^2 is added to the weights; shells
        with tau^2 = 0 are zeroed), or None for the plain normalised estimate data / (weights +
        wiener_constant). Frequencies at or beyond `max_radius_in_pixels` are zero.
    """
    shells = padded_shells(box, padding_factor)
    inside = half_spectrum_radius(data.shape[0]) / padding_factor < max_radius_in_pixels
    denominator = weights + wiener_constant
    if tau2 is not None:
        tau2 = np.asarray(tau2, dtype=np.float64)
        t = tau2[np.minimum(shells, tau2.size - 1)]
        inside &= t > 0
        denominator = denominator + np.divide(1.0, t, out=np.zeros_like(t), where=t > 0)
    inside &= denominator > 0
    spectrum = np.zeros_like(data)
    spectrum[inside] = data[inside] / denominator[inside]
    return spectrum_to_map(spectrum, box, correction="insertion", edge_mask_in_pixels=edge_mask_in_pixels)
