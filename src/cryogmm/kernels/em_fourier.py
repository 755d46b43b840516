"""Numba kernels of the Fourier-space MAP-EM E- and M-steps with per-particle candidate poses.

Notation (`cryogmm.reconstruction.em_fourier`): for particle b, X[b, s] are its Fourier
coefficients at the pixel set (fx[s], fy[s]), C[b, s] its CTF (polarity included), inv_s[s] the
inverse noise power of the pixel's shell. A candidate pose is a rotation A (the slice
a[s] = F(pad A^T (fx, fy, 0))) and a shift t in pixels (the image moved by t: phase
e_t[s] = exp(-2 pi i (fx tx + fy ty) / n)). The Gaussian log-likelihood of the candidate is

    log p = -sum_s |X - C e_t a|^2 inv_s
          = 2 sum_s Re(conj(Z_t[s]) a[s]) - sum_s C^2 inv_s |a[s]|^2 - sum_s |X|^2 inv_s,

with Z_t = X conj(e_t) C inv_s. Plain-numpy references are in `cryogmm.kernels.reference`.
"""

from __future__ import annotations

import numba
import numpy as np

from cryogmm.kernels.fourier_slices import _sample, _splat


@numba.njit(nogil=True, cache=True)
def _slice(spectrum, a, fx, fy, pad, out):
    for s in range(fx.shape[0]):
        f0, f1 = pad * fx[s], pad * fy[s]
        out[s] = _sample(spectrum, a[0, 0] * f0 + a[1, 0] * f1, a[0, 1] * f0 + a[1, 1] * f1,
                         a[0, 2] * f0 + a[1, 2] * f1)


@numba.njit(nogil=True, cache=True)
def _weighted_data(x, c, inv_s, t, fx, fy, box, z):
    """z[s] = X conj(e_t) C inv_s for one shift t = (tx, ty) in pixels."""
    scale = 2.0 * np.pi / box
    for s in range(fx.shape[0]):
        phase = scale * (t[0] * fx[s] + t[1] * fy[s])
        z[s] = x[s] * (np.cos(phase) + 1j * np.sin(phase)) * (c[s] * inv_s[s])


@numba.njit(parallel=True, nogil=True, cache=True)
def score_candidates(spectrum, pad, fx, fy, coefficients, ctf, inv_s, rotations, n_rotations, shifts, n_shifts,
                     box, out):
    """out[b, r, t] = log-likelihood of particle b at rotation r and shift t (its own candidates).

    spectrum : (m, m, m // 2 + 1) complex64 reference half spectrum; pad : m / n
    coefficients : (B, S) complex64; ctf : (B, S) float32; inv_s : (S,) float32
    rotations : (B, R, 3, 3) float64, the first n_rotations[b] used; shifts : (B, T, 2) float64
    pixels, the first n_shifts[b] used; out : (B, R, T) float32, unused entries set to -inf.
    """
    n_pixels = fx.shape[0]
    for b in numba.prange(coefficients.shape[0]):
        x = coefficients[b]
        c = ctf[b]
        n_t = n_shifts[b]
        z = np.empty((n_t, n_pixels), dtype=np.complex128)
        for t in range(n_t):
            _weighted_data(x, c, inv_s, shifts[b, t], fx, fy, box, z[t])
        q = np.empty(n_pixels)
        constant = 0.0
        for s in range(n_pixels):
            q[s] = c[s] * c[s] * inv_s[s]
            constant += (x[s].real * x[s].real + x[s].imag * x[s].imag) * inv_s[s]
        a = np.empty(n_pixels, dtype=np.complex128)
        out[b] = -np.inf
        for r in range(n_rotations[b]):
            _slice(spectrum, rotations[b, r], fx, fy, pad, a)
            quad = 0.0
            for s in range(n_pixels):
                quad += q[s] * (a[s].real * a[s].real + a[s].imag * a[s].imag)
            for t in range(n_t):
                cross = 0.0
                zt = z[t]
                for s in range(n_pixels):
                    cross += zt[s].real * a[s].real + zt[s].imag * a[s].imag
                out[b, r, t] = 2.0 * cross - quad - constant


@numba.njit(parallel=True, nogil=True, cache=True)
def backproject_candidates(data, weights, noise_sum, noise_count, particle_residual, spectrum, pad, fx, fy, shell,
                           coefficients, ctf, inv_s, rotations, n_rotations, shifts, n_shifts, posterior, box):
    """M-step sums for every particle's candidates with posterior weight > 0 (Eqns. 14-15).

    Adds, for each rotation r, sum_t w_rt Z_t (at weight sum_t w_rt C^2 inv_s) into `data` /
    `weights` by trilinear splatting, and the posterior-weighted squared residuals
    |X - C e_t a|^2 of the current reference `spectrum` into `noise_sum[shell]` (with the
    weights into `noise_count[shell]`).

    data : (W, m, m, m // 2 + 1) complex128, weights : same shape float64, noise_sum,
    noise_count : (W, n_shells): one accumulator per worker thread (particles b = w, w + W, ...
    go to accumulator w), to be summed by the caller.
    particle_residual : (B,) gains each particle's posterior-weighted sum_s |X - C e_t a|^2 inv_s
    (its residual power in units of the shell noise, times the number of pixels).
    posterior : (B, R, T) float32 weights (zero where a candidate is not significant).
    """
    n_pixels = fx.shape[0]
    n_workers = data.shape[0]
    n_particles = coefficients.shape[0]
    for worker in numba.prange(n_workers):
        value = np.empty(n_pixels, dtype=np.complex128)
        a = np.empty(n_pixels, dtype=np.complex128)
        for b in range(worker, n_particles, n_workers):
            x = coefficients[b]
            c = ctf[b]
            n_t = n_shifts[b]
            z = np.empty((n_t, n_pixels), dtype=np.complex128)
            phases = np.empty((n_t, n_pixels), dtype=np.complex128)
            scale = 2.0 * np.pi / box
            for t in range(n_t):
                for s in range(n_pixels):
                    phase = scale * (shifts[b, t, 0] * fx[s] + shifts[b, t, 1] * fy[s])
                    phases[t, s] = np.cos(phase) - 1j * np.sin(phase)  # e_t
                    z[t, s] = x[s] * np.conj(phases[t, s]) * (c[s] * inv_s[s])
            for r in range(n_rotations[b]):
                total = 0.0
                for t in range(n_t):
                    total += posterior[b, r, t]
                if total <= 0.0:
                    continue
                value[:] = 0.0
                _slice(spectrum, rotations[b, r], fx, fy, pad, a)
                for t in range(n_t):
                    w = posterior[b, r, t]
                    if w <= 0.0:
                        continue
                    for s in range(n_pixels):
                        value[s] += w * z[t, s]
                        d = x[s] - c[s] * a[s] * phases[t, s]
                        d2 = d.real * d.real + d.imag * d.imag
                        noise_sum[worker, shell[s]] += w * d2
                        noise_count[worker, shell[s]] += w
                        particle_residual[b] += w * d2 * inv_s[s]
                rot = rotations[b, r]
                for s in range(n_pixels):
                    f0, f1 = pad * fx[s], pad * fy[s]
                    _splat(data[worker], weights[worker], rot[0, 0] * f0 + rot[1, 0] * f1,
                           rot[0, 1] * f0 + rot[1, 1] * f1, rot[0, 2] * f0 + rot[1, 2] * f1, value[s],
                           total * c[s] * c[s] * inv_s[s])
