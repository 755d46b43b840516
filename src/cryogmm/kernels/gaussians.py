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
# The uniforms of a grid point are drawn on [0, total_j (1 - 1e-12)), so that rounding differences
# between the two sweeps that sum a_k g_jk (fused multiply-adds) cannot leave a count unassigned.
_UNIFORM_SCALE = 1.0 - 1e-12


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
    """exp(-precision/2 (x_i - mu)^2) for i in [lo, hi], written to out[0 : hi - lo + 1].

    By recurrence, with three exponentials per call instead of one per point: consecutive values
    differ by the factor exp(-p d h - p h^2 / 2) (d the distance of the point, h the spacing),
    and consecutive factors by exp(-p h^2). The factor cannot overflow while more than one point
    lies within a cut-off of a few sigma (it would need sigma < spacing / 140)."""
    if hi < lo:
        return
    d = origin + lo * spacing - mu
    value = math.exp(-0.5 * precision * d * d)
    ratio = math.exp(-precision * spacing * (d + 0.5 * spacing))
    step = math.exp(-precision * spacing * spacing)
    for i in range(hi - lo + 1):
        out[i] = value
        value *= ratio
        ratio *= step


@numba.njit(**_NUMBA_OPTIONS)
def evaluate_kernel(means, amplitudes, precision, origin, spacing, cutoff_sigmas, out):
    """Add sum_k amplitudes[k] exp(-precision/2 |v - means[k]|^2) to `out` (in place).

    means : (K, 3) float64, (x, y, z) in Å; amplitudes : (K,); origin : (3,) (x, y, z) of index 0;
    out : (nz, ny, nx) float32 or float64.
    """
    _sweep_total(out, means, amplitudes, precision, origin, spacing, cutoff_sigmas)


@numba.njit(**_NUMBA_OPTIONS)
def binned_statistics_kernel(
    counts, rows, means, amplitudes, precision, origin, spacing, cutoff_sigmas, exponentials, sample, work, uniforms
):
    """Assignments of binned counts to components and their sufficient statistics.

    For every grid point j with count y_j > 0 the responsibilities are
    r_jk = a_k g_jk / sum_l a_l g_jl (Eqn. 2.55), g the truncated Gaussian. With `sample` the
    counts are split by one multinomial draw z_j ~ Mult(y_j, r_j) (Eqn. 2.58): y_j sorted uniforms
    on [0, total_j) are placed against the running sum of a_k g_jk over components k = 0, 1, ...;
    otherwise the expected split y_j r_jk is used (the EM E-step).

    `rows` is `occupied_rows(counts)`. `work` is scratch memory of shape (5, nz, ny, nx) and `uniforms` scratch of at least
    sum(counts) elements (when sampling); reusing them between calls saves allocating ~5 grids.
    `exponentials` holds standard exponential draws, consumed in grid order, at least
    `n_exponentials(counts)` = sum(counts) + number of occupied points of them when sampling (the
    caller draws them with its generator, so the kernel holds no random state and many calls can
    run in parallel).

    Returns
    -------
    n_k : (K,) assigned counts; s_k : (K, 3) sum of n (v - mu_k); q_k : (K,) sum of n |v - mu_k|^2;
    log_likelihood : sum_j y_j log(sum_k a_k g_jk); n_unassigned : counts with no component
    within the cut-off (they take no part in the update).
    """
    n_components = means.shape[0]
    total = work[0]
    total[...] = 0.0
    _sweep_total(total, means, amplitudes, precision, origin, spacing, cutoff_sigmas)
    flat_counts = counts.ravel()
    flat_total = total.ravel()
    n_total = 0
    for j in range(flat_counts.size):
        if flat_counts[j] > 0:
            n_total += flat_counts[j]
    # per grid point: the next unused uniform (value, index) and the end of its uniforms;
    # for EM: y_j / total_j.
    next_value = work[1]
    next_value[...] = np.inf if sample else 0.0
    next_index = work[2]
    end_index = work[3]
    flat_value = next_value.ravel()
    flat_index = next_index.ravel()
    flat_end = end_index.ravel()
    if sample and uniforms.size < n_total:
        raise ValueError("the uniforms buffer is smaller than the number of counts")
    used = 0
    log_likelihood = 0.0
    n_unassigned = 0
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
            # order statistics of y uniforms: normalised partial sums of y + 1 exponentials
            if used + y + 1 > exponentials.size:
                raise ValueError("too few exponential draws for the counts")
            acc = 0.0
            for l in range(y):
                acc += exponentials[used + l]
                uniforms[position + l] = acc
            acc += exponentials[used + y]
            used += y + 1
            for l in range(y):
                uniforms[position + l] *= t * _UNIFORM_SCALE / acc
            flat_value[j] = uniforms[position]
            flat_index[j] = position
            flat_end[j] = position + y
            position += y
        else:
            flat_value[j] = y / t
    n_k = np.zeros(n_components)
    s_k = np.zeros((n_components, 3))
    q_k = np.zeros(n_components)
    cumulative = work[4]
    cumulative[...] = 0.0
    _sweep(sample, rows, cumulative, next_value, next_index, end_index, uniforms,
           means, amplitudes, precision, origin, spacing, cutoff_sigmas, n_k, s_k, q_k)
    if sample:
        # counts left past the last component's running sum (rounding; should not happen)
        for j in range(flat_counts.size):
            if flat_value[j] < np.inf and flat_total[j] > 0.0:
                n_unassigned += int(flat_end[j] - flat_index[j])
    return n_k, s_k, q_k, log_likelihood, n_unassigned


@numba.njit(**_NUMBA_OPTIONS)
def n_exponentials(counts):
    """Exponential draws `binned_statistics_kernel` needs to sample these counts: sum + occupied points."""
    total = 0
    flat = counts.ravel()
    for j in range(flat.size):
        if flat[j] > 0:
            total += flat[j] + 1
    return total


@numba.njit(**_NUMBA_OPTIONS)
def occupied_rows(counts):
    """(nz, ny, 2) first and last x index with a positive count in each row (first > last if none)."""
    nz, ny, nx = counts.shape
    rows = np.empty((nz, ny, 2), dtype=np.int64)
    for iz in range(nz):
        for iy in range(ny):
            first = nx
            last = -1
            for ix in range(nx):
                if counts[iz, iy, ix] > 0:
                    if first == nx:
                        first = ix
                    last = ix
            rows[iz, iy, 0] = first
            rows[iz, iy, 1] = last
    return rows


@numba.njit(fastmath=True, **_NUMBA_OPTIONS)
def _sweep_total(total, means, amplitudes, precision, origin, spacing, cutoff_sigmas):
    """total += a_k g_jk for every (component, grid point within the cut-off) pair: whole rows,
    each point tested by dx^2 <= rest (cheaper than a square root and two roundings per row, and
    a loop that vectorises)."""
    nz, ny, nx = total.shape
    radius = cutoff_sigmas / math.sqrt(precision)
    r2 = radius * radius
    n_max = int(2 * radius / spacing) + 3
    ex = np.empty(n_max)
    ey = np.empty(n_max)
    ez = np.empty(n_max)
    dx2 = np.empty(n_max)
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
        for j in range(xhi - xlo + 1):
            dx = origin[0] + (xlo + j) * spacing - mx
            dx2[j] = dx * dx
        for iz in range(zlo, zhi + 1):
            dz = origin[2] + iz * spacing - mz
            fz = amplitudes[k] * ez[iz - zlo]
            for iy in range(ylo, yhi + 1):
                dy = origin[1] + iy * spacing - my
                rest = r2 - dz * dz - dy * dy
                if rest < 0.0:
                    continue
                fzy = fz * ey[iy - ylo]
                for j in range(xhi - xlo + 1):
                    total[iz, iy, xlo + j] += fzy * ex[j] if dx2[j] <= rest else 0.0


@numba.njit(fastmath=True, **_NUMBA_OPTIONS)
def _sweep(sample, rows, cumulative, next_value, next_index, end_index, uniforms, means, amplitudes,
           precision, origin, spacing, cutoff_sigmas, n_k, s_k, q_k):
    """Assign the counts: visit every (component, grid point within the cut-off) pair once, in
    component order, and sum each component's statistics into n_k, s_k, q_k.

    sample: draw the assignments against the sorted uniforms (next_value, next_index, end_index);
    else soft assignments with next_value holding y_j / total_j. Only the span of each grid row
    between its first and last occupied point is visited (`rows[iz, iy] = (first, last)`,
    first > last for an empty row). The totals are `_sweep_total`'s (a separate function: the
    compiler then builds each loop only where it is used). Both repeat the per-component set-up
    (box, axis factors, dx^2) on purpose: moved into a helper function, it made both passes 30%
    slower (the loops no longer vectorised).
    """
    nz, ny, nx = next_value.shape
    radius = cutoff_sigmas / math.sqrt(precision)
    r2 = radius * radius
    n_max = int(2 * radius / spacing) + 3
    ex = np.empty(n_max)
    ey = np.empty(n_max)
    ez = np.empty(n_max)
    dx2 = np.empty(n_max)
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
        for ix in range(xlo, xhi + 1):
            dx = origin[0] + ix * spacing - mx
            dx2[ix - xlo] = dx * dx
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
                fzy = fz * ey[iy - ylo]
                x0 = max(xlo, rows[iz, iy, 0])
                x1 = min(xhi, rows[iz, iy, 1])
                dyz2 = dy * dy + dz * dz
                values = next_value[iz, iy]
                if not sample:
                    for ix in range(x0, x1 + 1):
                        if dx2[ix - xlo] > rest:
                            continue
                        w = fzy * ex[ix - xlo] * values[ix]
                        dx = origin[0] + ix * spacing - mx
                        nk += w
                        sx += w * dx
                        sy += w * dy
                        sz += w * dz
                        qk += w * (dx * dx + dyz2)
                    continue
                cum = cumulative[iz, iy]
                for ix in range(x0, x1 + 1):
                    if dx2[ix - xlo] > rest:
                        continue
                    c = cum[ix] + fzy * ex[ix - xlo]
                    cum[ix] = c
                    if values[ix] < c:  # this component takes one or more of the point's counts
                        p = int(next_index[iz, iy, ix])
                        end = int(end_index[iz, iy, ix])
                        n = 0
                        while p < end and uniforms[p] < c:
                            n += 1
                            p += 1
                        next_index[iz, iy, ix] = p
                        values[ix] = uniforms[p] if p < end else np.inf
                        w = float(n)
                        dx = origin[0] + ix * spacing - mx
                        nk += w
                        sx += w * dx
                        sy += w * dy
                        sz += w * dz
                        qk += w * (dx * dx + dyz2)
        n_k[k] = nk
        s_k[k, 0] = sx
        s_k[k, 1] = sy
        s_k[k, 2] = sz
        q_k[k] = qk
