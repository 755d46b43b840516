"""Plain-numpy references of the numba kernels, for tests only (dense, slow, obviously right)."""

from __future__ import annotations

import numpy as np

from cryogmm.grid import Grid


def _truncated_gaussians(grid: Grid, means: np.ndarray, precision: float, cutoff_sigmas: float) -> np.ndarray:
    """(n_voxels, K) matrix exp(-s/2 |v - mu_k|^2), zero beyond cutoff_sigmas standard deviations."""
    points = grid.points()
    d2 = ((points[:, None, :] - np.asarray(means, dtype=np.float64)[None]) ** 2).sum(-1)
    g = np.exp(-0.5 * precision * d2)
    if np.isfinite(cutoff_sigmas):
        g[d2 > cutoff_sigmas**2 / precision] = 0.0
    return g


def evaluate_gaussians_reference(grid, means, amplitudes, precision, cutoff_sigmas=np.inf):
    g = _truncated_gaussians(grid, means, precision, cutoff_sigmas)
    return (g @ np.asarray(amplitudes, dtype=np.float64)).reshape(grid.shape)


def soft_statistics_reference(counts, grid, means, amplitudes, precision, cutoff_sigmas=np.inf):
    """EM sufficient statistics (n_k, sum n (v - mu), sum n |v - mu|^2, log-likelihood)."""
    means = np.asarray(means, dtype=np.float64)
    weighted = _truncated_gaussians(grid, means, precision, cutoff_sigmas) * np.asarray(amplitudes)[None]
    total = weighted.sum(1)
    y = counts.reshape(-1).astype(np.float64)
    occupied = (y > 0) & (total > 0)
    resp = weighted[occupied] / total[occupied, None] * y[occupied, None]
    offsets = grid.points()[occupied][:, None, :] - means[None]
    n_k = resp.sum(0)
    s_k = (resp[..., None] * offsets).sum(0)
    q_k = (resp * (offsets**2).sum(-1)).sum(0)
    return n_k, s_k, q_k, float(y[occupied] @ np.log(total[occupied]))


# ---------------------------------------------------------------------------------------------
# Fourier slices (cryogmm.kernels.fourier_slices, cryogmm.kernels.em_fourier) on full spectra


def hermitian_completion(half_spectrum: np.ndarray) -> np.ndarray:
    """The full (m, m, m) spectrum [kz, ky, kx] (FFT order) of an rfftn half spectrum (m, m, m // 2 + 1).

    Columns kx > m / 2 are the conjugates of the stored mirrors: F[kz, ky, kx] = conj(F[-kz, -ky, m - kx]).
    """
    m = half_spectrum.shape[0]
    full = np.zeros((m, m, m), dtype=np.complex128)
    full[:, :, : m // 2 + 1] = half_spectrum
    minus = (-np.arange(m)) % m
    for kx in range(m // 2 + 1, m):
        full[:, :, kx] = np.conj(half_spectrum[minus][:, minus, m - kx])
    return full


def trilinear_reference(full_spectrum: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a periodic (m, m, m) array [kz, ky, kx] at (..., 3) points (x, y, z)."""
    m = full_spectrum.shape[0]
    points = np.asarray(points, dtype=np.float64)
    base = np.floor(points)
    fraction = points - base
    base = base.astype(np.int64)
    out = np.zeros(points.shape[:-1], dtype=np.complex128)
    for cz in (0, 1):
        for cy in (0, 1):
            for cx in (0, 1):
                corner = np.array([cx, cy, cz])
                w = np.prod(np.where(corner == 1, fraction, 1.0 - fraction), axis=-1)
                i = (base + corner) % m
                out += w * full_spectrum[i[..., 2], i[..., 1], i[..., 0]]
    return out


def slice_points(rotations: np.ndarray, fx: np.ndarray, fy: np.ndarray, pad: float) -> np.ndarray:
    """(J, S, 3) frequencies q = pad * A_j^T (fx, fy, 0) in (x, y, z) order."""
    f = pad * np.stack([fx, fy, np.zeros_like(fx)], axis=-1).astype(np.float64)
    return np.einsum("jci,sc->jsi", np.asarray(rotations, dtype=np.float64), f)


def extract_slices_reference(full_spectrum, rotations, fx, fy, pad):
    """(J, S) complex128: the full spectrum interpolated at pad * A_j^T (fx[s], fy[s], 0)."""
    return trilinear_reference(full_spectrum, slice_points(rotations, fx, fy, pad))


def insert_slices_reference(m, rotations, values, sample_weights, fx, fy, pad):
    """Full (m, m, m) data and weights: each value splatted at q and its conjugate at -q (trilinear).

    The transpose of `extract_slices_reference` applied to the whole image, both pixels of each
    Hermitian pair (k, -k) of the image being given by the one listed.
    """
    return _splat_pairs_reference(m, slice_points(rotations, fx, fy, pad).reshape(-1, 3), values, sample_weights)


def _splat_pairs_reference(m, q, values, sample_weights):
    """Full (m,) * d data and weights [..., y, x]: values splatted (multilinear) at points q (N, d)
    in (x, y, ...) order and their conjugates at -q."""
    d = q.shape[1]
    data = np.zeros((m,) * d, dtype=np.complex128)
    weights = np.zeros((m,) * d)
    values = np.asarray(values, dtype=np.complex128).reshape(-1)
    sample_weights = np.asarray(sample_weights, dtype=np.float64).reshape(-1)
    for points, v in ((q, values), (-q, np.conj(values))):
        base = np.floor(points)
        fraction = points - base
        base = base.astype(np.int64)
        for corner in np.ndindex(*(2,) * d):
            c = np.array(corner)
            w = np.prod(np.where(c == 1, fraction, 1.0 - fraction), axis=-1)
            i = tuple(((base + c) % m)[:, ::-1].T)
            np.add.at(data, i, w * v)
            np.add.at(weights, i, w * sample_weights)
    return data, weights


def candidate_log_likelihoods_reference(coefficients, ctf, noise_per_pixel, slices, phases):
    """(B, R, T) float64: -sum_s |X_b - C_b e_bt a_br|^2 / noise, slices (B, R, S), phases (B, T, S)."""
    x = np.asarray(coefficients, dtype=np.complex128)[:, None, None, :]
    model = (np.asarray(ctf, dtype=np.float64)[:, None, None, :]
             * np.asarray(phases, dtype=np.complex128)[:, None, :, :]
             * np.asarray(slices, dtype=np.complex128)[:, :, None, :])
    return -(np.abs(x - model) ** 2 / np.asarray(noise_per_pixel, dtype=np.float64)).sum(axis=-1)


# ---------------------------------------------------------------------------------------------
# 2D in-plane rotations (cryogmm.kernels.fourier_slices.extract_rotated / insert_rotated)

def hermitian_completion_2d(half_plane: np.ndarray) -> np.ndarray:
    """The full (m, m) spectrum [ky, kx] (FFT order) of an rfft2 half spectrum (m, m // 2 + 1)."""
    m = half_plane.shape[0]
    full = np.zeros((m, m), dtype=np.complex128)
    full[:, : m // 2 + 1] = half_plane
    minus = (-np.arange(m)) % m
    for kx in range(m // 2 + 1, m):
        full[:, kx] = np.conj(half_plane[minus, m - kx])
    return full


def rotated_points(psi_in_radians: np.ndarray, fx: np.ndarray, fy: np.ndarray, pad: float) -> np.ndarray:
    """(J, S, 2) frequencies q = pad * Rz(psi_j) (fx, fy) in (x, y) order."""
    c, s = np.cos(psi_in_radians)[:, None], np.sin(psi_in_radians)[:, None]
    return pad * np.stack([c * fx - s * fy, s * fx + c * fy], axis=-1)


def bilinear_reference(full_plane: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a periodic (m, m) array [ky, kx] at (..., 2) points (x, y)."""
    m = full_plane.shape[0]
    base = np.floor(points)
    fraction = points - base
    base = base.astype(np.int64)
    out = np.zeros(points.shape[:-1], dtype=np.complex128)
    for corner in np.ndindex(2, 2):
        c = np.array(corner)
        w = np.prod(np.where(c == 1, fraction, 1.0 - fraction), axis=-1)
        i = (base + c) % m
        out += w * full_plane[i[..., 1], i[..., 0]]
    return out


def insert_rotated_reference(m, psi_in_radians, values, sample_weights, fx, fy, pad):
    """Full (m, m) data and weights of one class: each value splatted at q and its conjugate at -q."""
    return _splat_pairs_reference(m, rotated_points(psi_in_radians, fx, fy, pad).reshape(-1, 2), values,
                                  sample_weights)
