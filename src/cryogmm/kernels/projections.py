"""Numba kernels for many 2D images at once: projected mixtures (thesis 2.4, 3.3, 3.5).

Each image i has its own set of projected means (the 3D means rotated by R_i and shifted by t_i);
the kernels loop over images inside compiled code (the statistics reusing the single-grid kernel
of `cryogmm.kernels.gaussians` on a `(1, ny, nx)` view of each image), so a Gibbs step over 25-100
images costs one call from Python. `over_images` splits the images between threads: the kernels
release the GIL. (numba's parallel=True would do the same inside the kernels, but compiling its
parallel versions took 3.5 s more of a first run, for the same speed.)
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from cryogmm.kernels.gaussians import _axis_factors, _axis_range, binned_statistics_kernel

_NUMBA_OPTIONS = dict(nogil=True, cache=True)


@numba.njit(**_NUMBA_OPTIONS)
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

    Every image has its own scratch and its own slice of the random draws, so the result does
    not depend on how `over_images` splits the images between threads.

    Returns n (P, K), s (P, K, 2) sums of n (v - m_ik), q (P, K) sums of n |v - m_ik|^2,
    log_likelihood (P,) and n_unassigned (P,) (see `binned_statistics_kernel`).
    """
    n_images, n_components = means.shape[0], means.shape[1]
    n = np.zeros((n_images, n_components))
    s = np.zeros((n_images, n_components, 2))
    q = np.zeros((n_images, n_components))
    log_likelihood = np.zeros(n_images)
    lost = np.zeros(n_images, dtype=np.int64)
    for i in range(n_images):
        if sample:
            draws = exponentials[exponential_offsets[i]:exponential_offsets[i + 1]]
        else:
            draws = exponentials[:0]
        n_k, s_k, q_k, ll, n_lost = binned_statistics_kernel(
            counts[i:i + 1], rows[i:i + 1], means[i], amplitudes, precision, origin, spacing,
            cutoff_sigmas, draws, sample, work[i], uniforms[uniform_offsets[i]:uniform_offsets[i + 1]])
        # element by element: an array assignment would compile numba's shape-mismatch error
        # message (its string formatting), seconds of a first run's compilation
        for k in range(n_components):
            n[i, k] = n_k[k]
            s[i, k, 0] = s_k[k, 0]
            s[i, k, 1] = s_k[k, 1]
            q[i, k] = q_k[k]
        log_likelihood[i] = ll
        lost[i] = n_lost
    return n, s, q, log_likelihood, lost


@numba.njit(fastmath=True, **_NUMBA_OPTIONS)
def _render(means, amplitudes, precision, origin, spacing, cutoff_sigmas, out, ex, ey, dx2):
    """Add sum_k amplitudes[k] exp(-precision/2 |v - means[k]|^2) to the image out (ny, nx), each
    component at the pixels within `cutoff_sigmas` standard deviations of its mean (a disc).

    means : (K, 3) (x, y, ignored); ex, ey, dx2 : scratch of at least 2 radius / spacing + 3.
    The same sum as `evaluate_kernel` (`_sweep_total`) on a (1, ny, nx) grid, and the same way (a
    row's points within the disc found by a test per point, dx^2 <= rest, which the compiler
    vectorises), a fifth faster without the third axis: the candidates' hot loop.
    """
    ny, nx = out.shape
    radius = cutoff_sigmas / math.sqrt(precision)
    r2 = radius * radius
    for k in range(means.shape[0]):
        mx, my = means[k, 0], means[k, 1]
        xlo, xhi = _axis_range(mx, radius, origin[0], spacing, nx)
        ylo, yhi = _axis_range(my, radius, origin[1], spacing, ny)
        if xlo > xhi or ylo > yhi:
            continue
        _axis_factors(mx, precision, origin[0], spacing, xlo, xhi, ex)
        _axis_factors(my, precision, origin[1], spacing, ylo, yhi, ey)
        width = xhi - xlo + 1
        for j in range(width):
            dx = origin[0] + (xlo + j) * spacing - mx
            dx2[j] = dx * dx
        a = amplitudes[k]
        for iy in range(ylo, yhi + 1):
            dy = origin[1] + iy * spacing - my
            rest = r2 - dy * dy
            f = a * ey[iy - ylo]
            for j in range(width):
                out[iy, xlo + j] += f * ex[j] if dx2[j] <= rest else 0.0


@numba.njit(**_NUMBA_OPTIONS)
def _scratch(precision, spacing, cutoff_sigmas):
    n_max = int(2 * cutoff_sigmas / math.sqrt(precision) / spacing) + 3
    return np.empty(n_max), np.empty(n_max), np.empty(n_max)


@numba.njit(**_NUMBA_OPTIONS)
def projected_densities_kernel(means, amplitudes, precision, origin, spacing, cutoff_sigmas, out):
    """out[m] = sum_k amplitudes[k] exp(-precision/2 |v - means[m, k]|^2) on each image grid.

    means : (M, K, 3) projected means (x, y, 0); out : (M, ny, nx), zeroed here.
    """
    out[...] = 0.0
    ex, ey, dx2 = _scratch(precision, spacing, cutoff_sigmas)
    for m in range(means.shape[0]):
        _render(means[m], amplitudes, precision, origin, spacing, cutoff_sigmas, out[m], ex, ey, dx2)


@numba.njit(**_NUMBA_OPTIONS)
def candidate_log_likelihoods_kernel(counts, rows, means, rotations, translations, amplitudes, precision, origin,
                                     spacing, cutoff_sigmas, scale, floor):
    """out[i, m] = sum_j y_ij log(scale h_im(v_j) + floor): each image's log-likelihood under each
    of its own candidate projections, summed over its occupied pixels only.

    counts : (P, ny, nx) int32; rows : (P, ny, 2) from `occupied_rows(counts)`; means : (K, 3) 3D
    means; rotations : (P, M, 3, 3) image i's candidates R_im; translations : (P, M, 2);
    h_im(v) = sum_k amplitudes[k] exp(-precision/2 |v - P(R_im mu_k) - t_im|^2) (cut off), with
    P the projection on the first two coordinates.
    """
    n_images, n_candidates = rotations.shape[0], rotations.shape[1]
    n_components = means.shape[0]
    ny, nx = counts.shape[1], counts.shape[2]
    out = np.empty((n_images, n_candidates))
    for i in range(n_images):
        image = np.empty((ny, nx))  # contiguous, so that _render's rows vectorise
        projected = np.zeros((n_components, 3))
        ex, ey, dx2 = _scratch(precision, spacing, cutoff_sigmas)
        for m in range(n_candidates):
            r = rotations[i, m]
            for k in range(n_components):
                x, y, z = means[k, 0], means[k, 1], means[k, 2]
                projected[k, 0] = r[0, 0] * x + r[0, 1] * y + r[0, 2] * z + translations[i, m, 0]
                projected[k, 1] = r[1, 0] * x + r[1, 1] * y + r[1, 2] * z + translations[i, m, 1]
            image[...] = 0.0
            _render(projected, amplitudes, precision, origin, spacing, cutoff_sigmas, image, ex, ey, dx2)
            total = 0.0
            for iy in range(ny):
                for ix in range(rows[i, iy, 0], rows[i, iy, 1] + 1):
                    y = counts[i, iy, ix]
                    if y > 0:
                        total += y * math.log(scale * image[iy, ix] + floor)
            out[i, m] = total
    return out


_POOLS: dict[int, ThreadPoolExecutor] = {}  # by number of threads, created when first needed


def over_images(run, n_images: int) -> None:
    """Call `run(start, stop)` for contiguous ranges of the images, one range per numba thread
    (`numba.get_num_threads()`, e.g. 1 in the restarts' worker processes), in threads."""
    n = min(numba.get_num_threads(), n_images)
    if n <= 1:
        run(0, n_images)
        return
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cryogmm-images")
    pool = _POOLS[n]
    bounds = np.linspace(0, n_images, n + 1).astype(np.int64)
    for future in [pool.submit(run, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
        future.result()
