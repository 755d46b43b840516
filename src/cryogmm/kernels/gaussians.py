"""Numba kernels for isotropic Gaussian components on regular grids (thesis section 3.5.1).

Every kernel works on a 3D array `[z, y, x]`; 2D and 1D grids are passed as arrays with leading
axes of size one and means whose missing coordinates are zero. A component is evaluated only at
grid points within `cutoff_sigmas` standard deviations of its mean (a sphere), and the Gaussian is
separable, so the exponential is taken once per axis and grid point rather than once per voxel.

Plain-numpy references of the same sums live in `cryogmm.kernels.reference` (used by the tests).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_NUMBA_OPTIONS = dict(nogil=True, cache=True)


@numba.njit(**_NUMBA_OPTIONS)
def _axis_range(mu, radius, origin, spacing, n):
    """Inclusive index range of grid points within `radius` of `mu` on one axis (may be empty)."""
    lo = int(math.ceil((mu - radius - origin) / spacing))
    hi = int(math.floor((mu + radius - origin) / spacing))
    if lo < 0:
        lo = 0
    if hi > n - 1:
        hi = n - 1
    return lo, hi


@numba.njit(**_NUMBA_OPTIONS)
def _axis_factors(mu, precision, origin, spacing, lo, hi, out):
    """exp(-precision/2 (x_i - mu)^2) for i in [lo, hi], written to out[0 : hi - lo + 1]."""
    for i in range(lo, hi + 1):
        d = origin + i * spacing - mu
        out[i - lo] = math.exp(-0.5 * precision * d * d)


@numba.njit(**_NUMBA_OPTIONS)
def evaluate_kernel(means, amplitudes, precision, origin, spacing, cutoff_sigmas, out):
    """Add sum_k amplitudes[k] exp(-precision/2 |v - means[k]|^2) to `out` (in place).

    means : (K, 3) float64, (x, y, z) in Å; amplitudes : (K,); origin : (3,) (x, y, z) of index 0;
    out : (nz, ny, nx) float32 or float64.
    """
    nz, ny, nx = out.shape
    radius = cutoff_sigmas / math.sqrt(precision)
    r2 = radius * radius
    n_max = int(2 * radius / spacing) + 3
    ex = np.empty(n_max)
    ey = np.empty(n_max)
    ez = np.empty(n_max)
    for k in range(means.shape[0]):
        mx, my, mz = means[k, 0], means[k, 1], means[k, 2]
        xlo, xhi = _axis_range(mx, radius, origin[0], spacing, nx)
        ylo, yhi = _axis_range(my, radius, origin[1], spacing, ny)
        zlo, zhi = _axis_range(mz, radius, origin[2], spacing, nz)
        if xlo > xhi or ylo > yhi or zlo > zhi:
            continue
        _axis_factors(mx, precision, origin[0], spacing, xlo, xhi, ex)
        _axis_factors(my, precision, origin[1], spacing, ylo, yhi, ey)
        _axis_factors(mz, precision, origin[2], spacing, zlo, zhi, ez)
        for iz in range(zlo, zhi + 1):
            dz = origin[2] + iz * spacing - mz
            fz = amplitudes[k] * ez[iz - zlo]
            for iy in range(ylo, yhi + 1):
                dy = origin[1] + iy * spacing - my
                rest = r2 - dz * dz - dy * dy
                if rest < 0.0:
                    continue
                half = math.sqrt(rest)
                x0, x1 = _axis_range(mx, half, origin[0], spacing, nx)
                fzy = fz * ey[iy - ylo]
                for ix in range(x0, x1 + 1):
                    out[iz, iy, ix] += fzy * ex[ix - xlo]


@numba.njit(**_NUMBA_OPTIONS)
def binned_statistics_kernel(
    counts, means, amplitudes, precision, origin, spacing, cutoff_sigmas, rng, sample
):
    """Assignments of binned counts to components and their sufficient statistics.

    For every grid point j with count y_j > 0 the responsibilities are
    r_jk = a_k g_jk / sum_l a_l g_jl (Eqn. 2.55), g the truncated Gaussian. With `sample` the
    counts are split by one multinomial draw z_j ~ Mult(y_j, r_j) (Eqn. 2.58), using y_j sorted
    uniforms on [0, total_j) placed against the running sum over components; otherwise the
    expected split y_j r_jk is used (the EM E-step).

    Returns
    -------
    n_k : (K,) assigned counts; s_k : (K, 3) sum of n (v - mu_k); q_k : (K,) sum of n |v - mu_k|^2;
    log_likelihood : sum_j y_j log(sum_k a_k g_jk); n_unassigned : counts with no component
    within the cut-off (they take no part in the update).
    """
    nz, ny, nx = counts.shape
    n_components = means.shape[0]
    radius = cutoff_sigmas / math.sqrt(precision)
    r2 = radius * radius
    n_max = int(2 * radius / spacing) + 3
    ex = np.empty(n_max)
    ey = np.empty(n_max)
    ez = np.empty(n_max)
    total = np.zeros(counts.shape)
    n_k = np.zeros(n_components)
    s_k = np.zeros((n_components, 3))
    q_k = np.zeros(n_components)

    # Pass 1 (mode 0): mixture density at occupied grid points.
    # Pass 2 (mode 1): split the counts between components in the same component order.
    cumulative = np.zeros(counts.shape)
    next_uniform = np.zeros(counts.shape, dtype=np.int64)
    remaining = counts.astype(np.int64)
    uniforms = np.empty(0)
    log_likelihood = 0.0
    n_unassigned = 0
    for mode in range(2):
        if mode == 1:
            flat_counts = counts.ravel()
            flat_total = total.ravel()
            flat_next = next_uniform.ravel()
            n_total = 0
            for j in range(flat_counts.size):
                if flat_counts[j] > 0:
                    n_total += flat_counts[j]
            if sample:
                uniforms = np.empty(n_total)
            position = 0
            for j in range(flat_counts.size):
                y = flat_counts[j]
                if y <= 0:
                    continue
                t = flat_total[j]
                if t <= 0.0:
                    n_unassigned += y
                    continue
                log_likelihood += y * math.log(t)
                if sample:
                    # Order statistics of y uniforms: normalised partial sums of y + 1 exponentials.
                    acc = 0.0
                    for l in range(y):
                        acc += rng.standard_exponential()
                        uniforms[position + l] = acc
                    acc += rng.standard_exponential()
                    for l in range(y):
                        uniforms[position + l] *= t / acc
                    flat_next[j] = position
                    position += y
        for k in range(n_components):
            mx, my, mz = means[k, 0], means[k, 1], means[k, 2]
            xlo, xhi = _axis_range(mx, radius, origin[0], spacing, nx)
            ylo, yhi = _axis_range(my, radius, origin[1], spacing, ny)
            zlo, zhi = _axis_range(mz, radius, origin[2], spacing, nz)
            if xlo > xhi or ylo > yhi or zlo > zhi:
                continue
            _axis_factors(mx, precision, origin[0], spacing, xlo, xhi, ex)
            _axis_factors(my, precision, origin[1], spacing, ylo, yhi, ey)
            _axis_factors(mz, precision, origin[2], spacing, zlo, zhi, ez)
            nk = 0.0
            sx = 0.0
            sy = 0.0
            sz = 0.0
            qk = 0.0
            for iz in range(zlo, zhi + 1):
                dz = origin[2] + iz * spacing - mz
                fz = amplitudes[k] * ez[iz - zlo]
                for iy in range(ylo, yhi + 1):
                    dy = origin[1] + iy * spacing - my
                    rest = r2 - dz * dz - dy * dy
                    if rest < 0.0:
                        continue
                    half = math.sqrt(rest)
                    x0, x1 = _axis_range(mx, half, origin[0], spacing, nx)
                    fzy = fz * ey[iy - ylo]
                    for ix in range(x0, x1 + 1):
                        y = counts[iz, iy, ix]
                        if y <= 0:
                            continue
                        g = fzy * ex[ix - xlo]
                        if mode == 0:
                            total[iz, iy, ix] += g
                            continue
                        if sample:
                            c = cumulative[iz, iy, ix] + g
                            cumulative[iz, iy, ix] = c
                            p = next_uniform[iz, iy, ix]
                            left = remaining[iz, iy, ix]
                            n = 0
                            while left > 0 and uniforms[p] < c:
                                n += 1
                                p += 1
                                left -= 1
                            if n == 0:
                                continue
                            next_uniform[iz, iy, ix] = p
                            remaining[iz, iy, ix] = left
                            w = float(n)
                        else:
                            t = total[iz, iy, ix]
                            if t <= 0.0:
                                continue
                            w = y * g / t
                        dx = origin[0] + ix * spacing - mx
                        nk += w
                        sx += w * dx
                        sy += w * dy
                        sz += w * dz
                        qk += w * (dx * dx + dy * dy + dz * dz)
            if mode == 1:
                n_k[k] = nk
                s_k[k, 0] = sx
                s_k[k, 1] = sy
                s_k[k, 2] = sz
                q_k[k] = qk
    if sample:
        # Rounding can leave a count past the last component's running sum: count it as lost.
        flat_remaining = remaining.ravel()
        flat_total = total.ravel()
        for j in range(flat_remaining.size):
            if flat_remaining[j] > 0 and flat_total[j] > 0.0:
                n_unassigned += flat_remaining[j]
    return n_k, s_k, q_k, log_likelihood, n_unassigned
