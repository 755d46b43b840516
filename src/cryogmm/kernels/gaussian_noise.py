"""Numba kernels of the Gaussian-noise model (thesis chapter 5) with a k-sigma cut-off.

Each component is evaluated only on the pixels of the square within `cutoff_sigmas / sqrt(s)`
of its projected centre along x and y (the k-sigma box); images run in parallel threads. An
isotropic Gaussian factorises, exp(-s/2 (dx^2 + dy^2)) = exp(-s/2 dx^2) exp(-s/2 dy^2), so each
component costs one exponential per row and per column of its square and a product per pixel,
in loops without branches that the compiler vectorises.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _pixel_range(centre, reach, spacing, n):
    """First and last pixel index within `reach` of `centre` (both relative to pixel 0)."""
    return (max(0, int(math.ceil((centre - reach) / spacing))),
            min(n - 1, int(math.floor((centre + reach) / spacing))))


@numba.njit(nogil=True, cache=True)
def _factors(centre, origin, spacing, size, reach, n, out_d, out_e):
    """Pixel range (first, last) within `reach` of `centre` along one axis; out_d[j] = x_j - centre
    and out_e[j] = exp(-s/2 out_d[j]^2) for j in that range."""
    first, last = _pixel_range(centre - origin, reach, spacing, n)
    for j in range(first, last + 1):
        d = origin + j * spacing - centre
        out_d[j] = d
        out_e[j] = math.exp(-0.5 * size * d * d)
    return first, last


@numba.njit(nogil=True, cache=True, fastmath=True)
def _subtract_components(image, centres, scale, size, origin, spacing, reach, residual, dx, ex, dy, ey):
    """residual = image - scale sum_k exp(-s/2 |x - c_k|^2) (cut off) for one image (ny, nx)."""
    ny, nx = image.shape
    for y in range(ny):
        for x in range(nx):
            residual[y, x] = image[y, x]
    for k in range(centres.shape[0]):
        x0, x1 = _factors(centres[k, 0], origin[0], spacing, size, reach, nx, dx, ex)
        y0, y1 = _factors(centres[k, 1], origin[1], spacing, size, reach, ny, dy, ey)
        for y in range(y0, y1 + 1):
            row = scale * ey[y]
            for x in range(x0, x1 + 1):
                residual[y, x] -= row * ex[x]


@numba.njit(nogil=True, cache=True, fastmath=True)
def _gradient_sums(errors, centres, size, origin, spacing, reach, dx, ex, dy, ey, d_centres):
    """d_centres (K, 2) = sum_j e_j v_jk s (x_j - c_k) over one image's error image e (ny, nx);
    returns sum_jk e_j v_jk |x_j - c_k|^2 / 2."""
    ny, nx = errors.shape
    total_size = 0.0
    for k in range(centres.shape[0]):
        x0, x1 = _factors(centres[k, 0], origin[0], spacing, size, reach, nx, dx, ex)
        y0, y1 = _factors(centres[k, 1], origin[1], spacing, size, reach, ny, dy, ey)
        gx = 0.0
        gy = 0.0
        for y in range(y0, y1 + 1):
            row_x = 0.0
            row_e = 0.0
            row_xx = 0.0
            for x in range(x0, x1 + 1):
                ev = errors[y, x] * ex[x]
                row_x += ev * dx[x]
                row_e += ev
                row_xx += ev * dx[x] * dx[x]
            gx += ey[y] * row_x
            gy += ey[y] * row_e * dy[y]
            # |x - c|^2 = dx^2 + dy^2
            total_size += 0.5 * ey[y] * (row_xx + row_e * dy[y] * dy[y])
        d_centres[k, 0] = size * gx
        d_centres[k, 1] = size * gy
    return total_size


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def centre_gradients_kernel(errors, centres, size, origin, spacing, cutoff_sigmas, d_centres, d_size):
    """The sums of `residual_and_centre_gradients_kernel` for given error images (N, ny, nx) (the
    residual filtered back through a CTF, say) instead of images - yhat."""
    ny, nx = errors.shape[1], errors.shape[2]
    reach = cutoff_sigmas / math.sqrt(size)
    for i in numba.prange(centres.shape[0]):
        dx, ex, dy, ey = np.empty(nx), np.empty(nx), np.empty(ny), np.empty(ny)
        d_size[i] = _gradient_sums(errors[i], centres[i], size, origin, spacing, reach, dx, ex, dy, ey, d_centres[i])


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def residual_and_centre_gradients_kernel(images, centres, scales, size, origin, spacing, cutoff_sigmas,
                                         residual, d_centres, d_size):
    """images (N, ny, nx); centres (N, K, 2) in Å (x, y); scales (N,) the weight of each image's
    prediction; origin (2,) (x, y) of pixel [0, 0].

    Writes residual = images - yhat (N, ny, nx), d_centres (N, K, 2) = sum_j e v s (x - c)
    and d_size (N,) = sum_j e v |x - c|^2 / 2, both without the factor -beta lam (resp. beta lam).
    """
    n_images = centres.shape[0]
    ny, nx = images.shape[1], images.shape[2]
    reach = cutoff_sigmas / math.sqrt(size)
    for i in numba.prange(n_images):
        dx, ex, dy, ey = np.empty(nx), np.empty(nx), np.empty(ny), np.empty(ny)
        _subtract_components(images[i], centres[i], scales[i], size, origin, spacing, reach, residual[i],
                             dx, ex, dy, ey)
        d_size[i] = _gradient_sums(residual[i], centres[i], size, origin, spacing, reach, dx, ex, dy, ey,
                                   d_centres[i])


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def residual_sums_of_squares_kernel(images, centres, scales, size, origin, spacing, cutoff_sigmas, work):
    """(N,) sum_j (y_ij - yhat_ij)^2 per image, arguments as `residual_and_centre_gradients_kernel`;
    work (N, ny, nx) scratch. The energy of moves that change one image's pose only."""
    n_images = centres.shape[0]
    ny, nx = images.shape[1], images.shape[2]
    reach = cutoff_sigmas / math.sqrt(size)
    out = np.empty(n_images)
    for i in numba.prange(n_images):
        dx, ex, dy, ey = np.empty(nx), np.empty(nx), np.empty(ny), np.empty(ny)
        _subtract_components(images[i], centres[i], scales[i], size, origin, spacing, reach, work[i],
                             dx, ex, dy, ey)
        total = 0.0
        for y in range(ny):
            for x in range(nx):
                total += work[i, y, x] * work[i, y, x]
        out[i] = total
    return out
