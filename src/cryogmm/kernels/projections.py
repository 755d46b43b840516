"""Numba kernels for many 2D images at once: projected mixtures (thesis 2.4, 3.3, 3.5).

Each image i has its own set of projected means (the 3D means rotated by R_i and shifted by t_i);
the kernels loop over images inside compiled code (in parallel threads for the statistics),
reusing the single-grid kernels of `cryogmm.kernels.gaussians` on a `(1, ny, nx)` view of each
image, so a Gibbs step over 25-100 images costs one call from Python.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from cryogmm.kernels.gaussians import _sweep, binned_statistics_kernel

_NUMBA_OPTIONS = dict(nogil=True, cache=True)


@numba.njit(parallel=True, **_NUMBA_OPTIONS)
def projected_statistics_kernel(counts, rows, means, amplitudes, precision, origin, spacing, cutoff_sigmas,
                                exponentials, exponential_offsets, sample, work, uniforms, uniform_offsets):
    """Assignment statistics of every image's counts to that image's projected components.

    counts : (P, ny, nx) int32; rows : (P, ny, 2) from `occupied_rows(counts)`;
    means : (P, K, 3) float64, projected means (x, y, 0) in Å of each image;
    amplitudes : (K,); origin : (3,) (x, y, 0) of pixel [0, 0]; work : (P, 5, 1, ny, nx) scratch;
    exponentials : standard exponential draws, image i using
    exponentials[exponential_offsets[i]:exponential_offsets[i + 1]] (at least `n_exponentials`
    of its counts; unused when not sampling); uniforms : scratch, image i using
    uniforms[uniform_offsets[i]:uniform_offsets[i + 1]] (at least its number of counts).

    Images are processed in parallel (numba threads); every image has its own scratch and its
    own slice of the random draws, so the result does not depend on the number of threads.

    Returns n (P, K), s (P, K, 2) sums of n (v - m_ik), q (P, K) sums of n |v - m_ik|^2,
    log_likelihood (P,) and n_unassigned (P,) (see `binned_statistics_kernel`).
    """
    n_images, n_components = means.shape[0], means.shape[1]
    n = np.zeros((n_images, n_components))
    s = np.zeros((n_images, n_components, 2))
    q = np.zeros((n_images, n_components))
    log_likelihood = np.zeros(n_images)
    lost = np.zeros(n_images, dtype=np.int64)
    for i in numba.prange(n_images):
        if sample:
            draws = exponentials[exponential_offsets[i]:exponential_offsets[i + 1]]
        else:
            draws = exponentials[:0]
        n_k, s_k, q_k, ll, n_lost = binned_statistics_kernel(
            counts[i:i + 1], rows[i:i + 1], means[i], amplitudes, precision, origin, spacing,
            cutoff_sigmas, draws, sample, work[i], uniforms[uniform_offsets[i]:uniform_offsets[i + 1]])
        n[i] = n_k
        s[i, :, 0] = s_k[:, 0]
        s[i, :, 1] = s_k[:, 1]
        q[i] = q_k
        log_likelihood[i] = ll
        lost[i] = n_lost
    return n, s, q, log_likelihood, lost


@numba.njit(**_NUMBA_OPTIONS)
def projected_densities_kernel(means, amplitudes, precision, origin, spacing, cutoff_sigmas, out):
    """out[m] = sum_k amplitudes[k] exp(-precision/2 |v - means[m, k]|^2) on each image grid.

    means : (M, K, 3) projected means (x, y, 0); out : (M, ny, nx), zeroed here.
    """
    out[...] = 0.0
    rows = np.empty((1, out.shape[1], 2), dtype=np.int64)  # every row in full, shared by all images
    rows[:, :, 0] = 0
    rows[:, :, 1] = out.shape[2] - 1
    for m in range(means.shape[0]):
        image = out[m:m + 1]
        _sweep(0, rows, image, image, image, image, image, np.empty(0), means[m], amplitudes, precision, origin,
               spacing, cutoff_sigmas, np.empty(0), np.empty((0, 3)), np.empty(0))


@numba.njit(parallel=True, **_NUMBA_OPTIONS)
def candidate_log_likelihoods_kernel(counts, rows, means, amplitudes, precision, origin, spacing, cutoff_sigmas,
                                     scale, floor, work):
    """out[i, m] = sum_j y_ij log(scale h_im(v_j) + floor): each image's log-likelihood under each
    of its own candidate projections, summed over its occupied pixels only.

    counts : (P, ny, nx) int32; rows : (P, ny, 2) from `occupied_rows(counts)`;
    means : (P, M, K, 3) projected means (x, y, 0) of image i's candidate m;
    h_im(v) = sum_k amplitudes[k] exp(-precision/2 |v - means[i, m, k]|^2) (cut off);
    work : (P, 1, ny, nx) scratch. Images run in parallel threads.
    """
    n_images, n_candidates = means.shape[0], means.shape[1]
    ny = counts.shape[1]
    out = np.empty((n_images, n_candidates))
    for i in numba.prange(n_images):
        image = work[i]
        span = rows[i:i + 1]
        for m in range(n_candidates):
            for iy in range(ny):
                for ix in range(span[0, iy, 0], span[0, iy, 1] + 1):
                    image[0, iy, ix] = 0.0
            _sweep(0, span, image, image, image, image, image, np.empty(0), means[i, m], amplitudes, precision,
                   origin, spacing, cutoff_sigmas, np.empty(0), np.empty((0, 3)), np.empty(0))
            total = 0.0
            for iy in range(ny):
                for ix in range(span[0, iy, 0], span[0, iy, 1] + 1):
                    y = counts[i, iy, ix]
                    if y > 0:
                        total += y * math.log(scale * image[0, iy, ix] + floor)
            out[i, m] = total
    return out
