"""Numba kernels of the Gaussian-noise model (thesis chapter 5) with a k-sigma cut-off.

Each component is evaluated only on the pixels within `cutoff_sigmas / sqrt(s)` of its
projected centre; images run in parallel threads.
"""

from __future__ import annotations

import math

import numba


@numba.njit(nogil=True, cache=True)
def _pixel_range(centre, reach, spacing, n):
    """First and last pixel index within `reach` of `centre` (both relative to pixel 0)."""
    return (max(0, int(math.ceil((centre - reach) / spacing))),
            min(n - 1, int(math.floor((centre + reach) / spacing))))


@numba.njit(parallel=True, nogil=True, cache=True)
def residual_and_centre_gradients_kernel(images, centres, scale, size, origin, spacing, cutoff_sigmas,
                                         residual, d_centres, d_size):
    """images (N, ny, nx); centres (N, K, 2) in Å (x, y); origin (2,) (x, y) of pixel [0, 0].

    Writes residual = images - yhat (N, ny, nx), d_centres (N, K, 2) = sum_j e v s (x - c)
    and d_size (N,) = sum_j e v |x - c|^2 / 2, both without the factor -beta lam (resp. beta lam).
    """
    n_images, n_components = centres.shape[0], centres.shape[1]
    ny, nx = images.shape[1], images.shape[2]
    reach = cutoff_sigmas / math.sqrt(size)
    reach2 = reach * reach
    for i in numba.prange(n_images):
        for y in range(ny):
            for x in range(nx):
                residual[i, y, x] = images[i, y, x]
        for k in range(n_components):
            cx, cy = centres[i, k, 0], centres[i, k, 1]
            x0, x1 = _pixel_range(cx - origin[0], reach, spacing, nx)
            y0, y1 = _pixel_range(cy - origin[1], reach, spacing, ny)
            for y in range(y0, y1 + 1):
                dy = origin[1] + y * spacing - cy
                for x in range(x0, x1 + 1):
                    dx = origin[0] + x * spacing - cx
                    r2 = dx * dx + dy * dy
                    if r2 <= reach2:
                        residual[i, y, x] -= scale * math.exp(-0.5 * size * r2)
        d_size[i] = 0.0
        for k in range(n_components):
            cx, cy = centres[i, k, 0], centres[i, k, 1]
            x0, x1 = _pixel_range(cx - origin[0], reach, spacing, nx)
            y0, y1 = _pixel_range(cy - origin[1], reach, spacing, ny)
            gx = 0.0
            gy = 0.0
            for y in range(y0, y1 + 1):
                dy = origin[1] + y * spacing - cy
                for x in range(x0, x1 + 1):
                    dx = origin[0] + x * spacing - cx
                    r2 = dx * dx + dy * dy
                    if r2 > reach2:
                        continue
                    ev = residual[i, y, x] * math.exp(-0.5 * size * r2)
                    gx += ev * dx
                    gy += ev * dy
                    d_size[i] += 0.5 * ev * r2
            d_centres[i, k, 0] = size * gx
            d_centres[i, k, 1] = size * gy
