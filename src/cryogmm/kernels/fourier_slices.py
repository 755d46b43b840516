"""Numba kernels for central slices of a 3D Fourier volume (projection-slice theorem).

The volume is the half-spectrum `np.fft.rfftn` layout of a padded map: shape `(m, m, m // 2 + 1)`,
`[kz, ky, kx]`, kz and ky in FFT order (index `i` is frequency `i` for `i < m / 2`, else `i - m`),
kx = 0 .. m // 2. A frequency with kx < 0 is read as the complex conjugate of its mirror -k
(the map is real). Frequencies are in Fourier voxels of the padded grid.

A 2D image frequency `(fx, fy)` (in Fourier pixels of the unpadded n-pixel image) seen in
orientation A (RELION matrix: a map point x lands at P_o A x in the image) is the 3D frequency
`q = pad * A^T (fx, fy, 0)`: its components are `q_c = pad * (A[0, c] fx + A[1, c] fy)`.
Values are read by trilinear interpolation and written ("back-projected") by the transposed
operation, trilinear splatting of a value and its weight. Plain-numpy references of the kernels
are in `cryogmm.kernels.reference` (tests only).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _mirror_if_negative(qx, qy, qz):
    if qx < 0.0:
        return -qx, -qy, -qz, True
    return qx, qy, qz, False


@numba.njit(nogil=True, cache=True)
def _sample(volume, qx, qy, qz):
    """Trilinear interpolation of the half-spectrum `volume` at frequency (qx, qy, qz)."""
    m = volume.shape[0]
    qx, qy, qz, conjugate = _mirror_if_negative(qx, qy, qz)
    x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
    dx, dy, dz = qx - x0, qy - y0, qz - z0
    ix, iy, iz = int(x0), int(y0), int(z0)
    total = 0j
    for cz in range(2):
        wz = dz if cz else 1.0 - dz
        jz = (iz + cz) % m
        for cy in range(2):
            wzy = wz * (dy if cy else 1.0 - dy)
            jy = (iy + cy) % m
            for cx in range(2):
                w = wzy * (dx if cx else 1.0 - dx)
                total += w * volume[jz, jy, ix + cx]
    if conjugate:
        return np.conj(total)
    return total


@numba.njit(parallel=True, nogil=True, cache=True)
def extract_slices(volume, rotations, fx, fy, pad, out):
    """out[j, s] = volume at pad * A_j^T (fx[s], fy[s], 0), trilinear.

    volume : (m, m, m // 2 + 1) complex; rotations : (J, 3, 3) float64; fx, fy : (S,) float64
    integer frequencies of the unpadded image; pad : float (m / n); out : (J, S) complex64.
    Every |pad * (fx, fy)| must be below m / 2 - 1.
    """
    for j in numba.prange(rotations.shape[0]):
        a = rotations[j]
        for s in range(fx.shape[0]):
            f0, f1 = pad * fx[s], pad * fy[s]
            out[j, s] = _sample(volume, a[0, 0] * f0 + a[1, 0] * f1, a[0, 1] * f0 + a[1, 1] * f1,
                                a[0, 2] * f0 + a[1, 2] * f1)


@numba.njit(nogil=True, cache=True)
def _splat(data, weights, qx, qy, qz, value, weight):
    m = data.shape[0]
    qx, qy, qz, conjugate = _mirror_if_negative(qx, qy, qz)
    if conjugate:
        value = np.conj(value)
    x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
    dx, dy, dz = qx - x0, qy - y0, qz - z0
    ix, iy, iz = int(x0), int(y0), int(z0)
    for cz in range(2):
        wz = dz if cz else 1.0 - dz
        jz = (iz + cz) % m
        for cy in range(2):
            wzy = wz * (dy if cy else 1.0 - dy)
            jy = (iy + cy) % m
            for cx in range(2):
                w = wzy * (dx if cx else 1.0 - dx)
                data[jz, jy, ix + cx] += w * value
                weights[jz, jy, ix + cx] += w * weight


@numba.njit(nogil=True, cache=True)
def insert_slices(data, weights, rotations, values, sample_weights, fx, fy, pad):
    """Back-project: splat values[j, s] (and sample_weights[j, s]) at pad * A_j^T (fx, fy, 0).

    data : (m, m, m // 2 + 1) complex128, weights : same shape float64, both accumulated in
    place. Only one pixel of each Hermitian pair (k, -k) is given; `symmetrise_x0_plane` adds the
    other's share to the kx = 0 plane once all slices are in.
    """
    for j in range(rotations.shape[0]):
        a = rotations[j]
        for s in range(fx.shape[0]):
            w = sample_weights[j, s]
            if w == 0.0:
                continue
            f0, f1 = pad * fx[s], pad * fy[s]
            _splat(data, weights, a[0, 0] * f0 + a[1, 0] * f1, a[0, 1] * f0 + a[1, 1] * f1,
                   a[0, 2] * f0 + a[1, 2] * f1, values[j, s], w)


def symmetrise_x0_plane(data: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add to the kx = 0 plane the conjugate of its mirror (what the partners -k contributed).

    A sample at kx in [0, 1) stands for itself and for its Hermitian partner at -k, which the
    half-spectrum stores only through the kx = 0 plane: plane[ky, kz] gains conj(plane[-ky, -kz]).
    Returns new arrays.
    """
    data, weights = data.copy(), weights.copy()
    plane, plane_w = data[:, :, 0], weights[:, :, 0]
    mirror = np.roll(plane[::-1, ::-1], 1, axis=(0, 1))
    mirror_w = np.roll(plane_w[::-1, ::-1], 1, axis=(0, 1))
    data[:, :, 0] = plane + np.conj(mirror)
    weights[:, :, 0] = plane_w + mirror_w
    return data, weights


@numba.njit(parallel=True, nogil=True, cache=True)
def symmetrise_volume(data, weights, operators, max_radius, out_data, out_weights):
    """out = sum over operators R of the accumulators read at R^T q (trilinear), for |q| < max_radius.

    A map with point-group symmetry has V(R x) = V(x) for each operator R, so its transform has
    F(R q) = F(q): summing the accumulators over the group averages the symmetric copies.
    `operators` (G, 3, 3) include the identity. Voxels beyond max_radius are left zero.
    """
    m = data.shape[0]
    half = (m + 1) // 2
    r2 = max_radius * max_radius
    for iz in numba.prange(m):
        qz = iz if iz < half else iz - m
        for iy in range(m):
            qy = iy if iy < half else iy - m
            for ix in range(data.shape[2]):
                if ix * ix + qy * qy + qz * qz >= r2:
                    continue
                total = 0j
                total_w = 0.0
                for g in range(operators.shape[0]):
                    r = operators[g]
                    px = r[0, 0] * ix + r[1, 0] * qy + r[2, 0] * qz
                    py = r[0, 1] * ix + r[1, 1] * qy + r[2, 1] * qz
                    pz = r[0, 2] * ix + r[1, 2] * qy + r[2, 2] * qz
                    total += _sample(data, px, py, pz)
                    total_w += _sample(weights, px, py, pz).real
                out_data[iz, iy, ix] = total
                out_weights[iz, iy, ix] = total_w


# ---------------------------------------------------------------------------------------------
# 2D: in-plane rotations of class images (2D classification)
#
# A class image's padded half spectrum has shape (m, m // 2 + 1), `[ky, kx]`, ky in FFT order.
# A particle frequency f = (fx, fy) seen at in-plane angle psi reads the class at
# q = pad * Rz(psi) f = pad * (cos fx - sin fy, sin fx + cos fy) (`cryogmm.preprocess.class_average`:
# the particle is the class rotated by psi, p(u) = c(Rz(psi) u)).

@numba.njit(nogil=True, cache=True)
def _sample_2d(plane, qx, qy):
    """Bilinear interpolation of the half-spectrum `plane` (m, m // 2 + 1) at (qx, qy)."""
    m = plane.shape[0]
    conjugate = qx < 0.0
    if conjugate:
        qx, qy = -qx, -qy
    x0, y0 = np.floor(qx), np.floor(qy)
    dx, dy = qx - x0, qy - y0
    ix, iy = int(x0), int(y0)
    total = 0j
    for cy in range(2):
        wy = dy if cy else 1.0 - dy
        jy = (iy + cy) % m
        for cx in range(2):
            total += wy * (dx if cx else 1.0 - dx) * plane[jy, ix + cx]
    if conjugate:
        return np.conj(total)
    return total


@numba.njit(parallel=True, nogil=True, cache=True)
def extract_rotated(planes, cos_psi, sin_psi, fx, fy, pad, out):
    """out[k, j, s] = planes[k] at pad * Rz(psi_j) (fx[s], fy[s]), bilinear.

    planes : (K, m, m // 2 + 1) complex; cos_psi, sin_psi : (J,); fx, fy : (S,) float64 integer
    frequencies of the unpadded image; pad : float (m / n); out : (K, J, S) complex64.
    Every |pad * (fx, fy)| must be below m / 2 - 1.
    """
    n_k, n_j = planes.shape[0], cos_psi.shape[0]
    for kj in numba.prange(n_k * n_j):
        k, j = kj // n_j, kj % n_j
        c, s_ = cos_psi[j], sin_psi[j]
        for s in range(fx.shape[0]):
            f0, f1 = pad * fx[s], pad * fy[s]
            out[k, j, s] = _sample_2d(planes[k], c * f0 - s_ * f1, s_ * f0 + c * f1)


@numba.njit(parallel=True, nogil=True, cache=True)
def insert_rotated(data, weights, cos_psi, sin_psi, values, sample_weights, fx, fy, pad):
    """Splat values[k, j, s] (and sample_weights[k, j, s]) into class k at pad * Rz(psi_j) (fx, fy).

    data : (K, m, m // 2 + 1) complex128, weights : same shape float64, accumulated in place
    (classes in parallel). One pixel of each Hermitian pair is given; `symmetrise_x0_line`
    adds the other's share to the kx = 0 line afterwards.
    """
    m = data.shape[1]
    for k in numba.prange(data.shape[0]):
        for j in range(cos_psi.shape[0]):
            c, s_ = cos_psi[j], sin_psi[j]
            for s in range(fx.shape[0]):
                w = sample_weights[k, j, s]
                v = values[k, j, s]
                if w == 0.0 and v == 0.0:
                    continue
                f0, f1 = pad * fx[s], pad * fy[s]
                qx, qy = c * f0 - s_ * f1, s_ * f0 + c * f1
                if qx < 0.0:
                    qx, qy, v = -qx, -qy, np.conj(v)
                x0, y0 = np.floor(qx), np.floor(qy)
                dx, dy = qx - x0, qy - y0
                ix, iy = int(x0), int(y0)
                for cy in range(2):
                    wy = dy if cy else 1.0 - dy
                    jy = (iy + cy) % m
                    for cx in range(2):
                        b = wy * (dx if cx else 1.0 - dx)
                        data[k, jy, ix + cx] += b * v
                        weights[k, jy, ix + cx] += b * w


def symmetrise_x0_line(data: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D `symmetrise_x0_plane`: the kx = 0 line of each plane (..., m, m // 2 + 1) gains the conjugate
    of its mirror ky -> -ky. Returns new arrays."""
    data, weights = data.copy(), weights.copy()
    line, line_w = data[..., :, 0], weights[..., :, 0]
    mirror = np.roll(line[..., ::-1], 1, axis=-1)
    mirror_w = np.roll(line_w[..., ::-1], 1, axis=-1)
    data[..., :, 0] = line + np.conj(mirror)
    weights[..., :, 0] = line_w + mirror_w
    return data, weights
