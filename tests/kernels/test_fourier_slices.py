"""Central-slice kernels (`cryogmm.kernels.fourier_slices`) against plain-numpy references.

The references (`cryogmm.kernels.reference`) work on the full (m, m, m) spectrum: trilinear
interpolation of `np.fft.fftn` of a real volume with periodic corners, and splatting of each image
pixel at q together with its Hermitian partner (the conjugate at -q). The half-spectrum kernels
must agree with them: extraction at points with kx < 0 goes through the conjugate mirror, and
insertion followed by `symmetrise_x0_plane` must be the half of the full splat.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tolerance
from cryogmm.forward.fourier import image_pixels
from cryogmm.geometry.so3 import random_rotations
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.kernels.fourier_slices import extract_slices, insert_slices, symmetrise_volume, symmetrise_x0_plane
from cryogmm.kernels.reference import (extract_slices_reference, hermitian_completion, insert_slices_reference,
                                       slice_points, trilinear_reference)

BOX, PAD = 16, 2
M = BOX * PAD
TOL = tolerance(np.float32)


def _pixels(max_radius: float = BOX / 2 - 1 / PAD):
    return image_pixels(BOX, max_radius)


def _rotations(seed: int, n: int) -> np.ndarray:
    """The identity (every q on the grid: exact voxel values) and n random rotations."""
    return np.concatenate([np.eye(3)[None], random_rotations(np.random.default_rng(seed), n)])


def _real_volume_spectra(seed: int, m: int = M):
    """Half (complex64, as the kernels take it) and full (complex128) spectra of a random real volume."""
    volume = np.random.default_rng(seed).standard_normal((m, m, m))
    return np.fft.rfftn(volume).astype(np.complex64), np.fft.fftn(volume)


def _extract(half, rotations, pixels, pad=PAD) -> np.ndarray:
    out = np.empty((len(rotations), len(pixels)), dtype=np.complex64)
    extract_slices(half, rotations, pixels.fx, pixels.fy, float(pad), out)
    return out


def _insert(rotations, values, sample_weights, pixels):
    data = np.zeros((M, M, M // 2 + 1), dtype=np.complex128)
    weights = np.zeros((M, M, M // 2 + 1))
    insert_slices(data, weights, rotations, values, sample_weights, pixels.fx, pixels.fy, float(PAD))
    return data, weights


def _real_inner(a, b) -> float:
    """<a, b> = Re sum conj(a) b: the inner product of the complex values as pairs of reals."""
    return float(np.sum(np.conj(a) * b).real)


@pytest.mark.parametrize("box, pad", [(BOX, PAD), (15, 3)])  # m = 32 and (odd) 45
def test_extract_slices_is_trilinear_interpolation_of_the_full_spectrum(box, pad):
    m = box * pad
    half, full = _real_volume_spectra(0, m)
    rotations, pixels = _rotations(1, 6), image_pixels(box, (m / 2 - 1) / pad)
    q = slice_points(rotations, pixels.fx, pixels.fy, pad)
    # the conjugate-mirror path is exercised: 57% of the points have kx < 0 (both cases)
    assert (q[..., 0] < 0).mean() > 0.3
    out = _extract(half, rotations, pixels, pad)
    reference = extract_slices_reference(full, rotations, pixels.fx, pixels.fy, pad)
    # measured max error 3.7e-8 (m = 32) and 4.0e-8 (m = 45) of the largest value (complex64 storage)
    np.testing.assert_allclose(out, reference, rtol=0, atol=TOL * np.abs(reference).max())
    # the identity's points are voxels of the padded grid: exact values of the spectrum
    iy = (pad * pixels.fy).astype(int) % m
    np.testing.assert_array_equal(out[0], half[0, iy, (pad * pixels.fx).astype(int)])


def test_extract_at_negative_kx_reads_the_conjugate_mirror():
    """Points given with fx < 0 directly (the mirror images of listed pixels) read the conjugates."""
    half, full = _real_volume_spectra(2)
    rotations, pixels = _rotations(3, 3), _pixels()
    out = np.empty((len(rotations), len(pixels)), dtype=np.complex64)
    extract_slices(half, rotations, -pixels.fx, -pixels.fy, float(PAD), out)
    reference = extract_slices_reference(full, rotations, -pixels.fx, -pixels.fy, PAD)
    np.testing.assert_allclose(out, reference, rtol=0, atol=TOL * np.abs(reference).max())
    np.testing.assert_allclose(out, np.conj(_extract(half, rotations, pixels)), rtol=0,
                               atol=TOL * np.abs(reference).max())


def test_insert_slices_is_the_adjoint_of_extract_slices():
    """<extract(V), u> = <V, insert(u)> in Re sum conj(a) b over the stored half array, any complex V.

    The kernels are transposes of each other on the half array as stored (before the kx = 0
    plane is symmetrised); V need not be Hermitian on that plane.
    """
    rng = np.random.default_rng(4)
    rotations, pixels = _rotations(5, 8), _pixels()
    shape = (M, M, M // 2 + 1)
    volume = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    u = rng.standard_normal((len(rotations), len(pixels))) + 1j * rng.standard_normal((len(rotations), len(pixels)))
    data, _ = _insert(rotations, u, np.ones(u.shape), pixels)
    lhs = _real_inner(_extract(volume, rotations, pixels), u)
    rhs = _real_inner(volume, data)
    scale = np.abs(_extract(volume, rotations, pixels)).ravel() @ np.abs(u).ravel()
    # measured |lhs - rhs| = 7e-10 of the sum of |terms| (lhs itself is 0.05 of it)
    assert abs(lhs - rhs) < TOL * scale
    # the imaginary part of the pairing is not preserved (extraction is only real-linear): the
    # check above would fail for a complex inner product; measured 0.022 of the scale apart
    complex_lhs = np.sum(np.conj(_extract(volume, rotations, pixels)) * u).imag
    complex_rhs = np.sum(np.conj(volume) * data).imag
    assert abs(complex_lhs - complex_rhs) > 100 * TOL * scale


def test_insert_splats_weights_as_it_splats_real_values():
    rng = np.random.default_rng(6)
    rotations, pixels = _rotations(7, 4), _pixels()
    w = rng.uniform(0.0, 2.0, (len(rotations), len(pixels)))
    w[:, ::5] = 0.0  # skipped samples
    data, weights = _insert(rotations, w, w, pixels)
    np.testing.assert_allclose(data.real, weights, rtol=0, atol=1e-12 * weights.max())
    assert np.all(data.imag == 0.0)
    # the total weight is conserved by trilinear splatting
    assert weights.sum() == pytest.approx(w.sum(), rel=1e-12)


def test_symmetrised_insertion_is_the_half_of_splatting_both_pixels_of_each_pair():
    """insert + symmetrise_x0_plane = the full splat of every pixel at q and its conjugate at -q."""
    rng = np.random.default_rng(8)
    rotations, pixels = _rotations(9, 5), _pixels()
    shape = (len(rotations), len(pixels))
    values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    sample_weights = rng.uniform(0.5, 1.5, shape)
    data, weights = symmetrise_x0_plane(*_insert(rotations, values, sample_weights, pixels))
    full_data, full_weights = insert_slices_reference(M, rotations, values, sample_weights, pixels.fx, pixels.fy,
                                                      PAD)
    # the symmetrised half spectrum is the Hermitian half of the full splat, all m columns
    np.testing.assert_allclose(hermitian_completion(data), full_data, rtol=0, atol=1e-12 * np.abs(full_data).max())
    np.testing.assert_allclose(hermitian_completion(weights).real, full_weights, rtol=0,
                               atol=1e-12 * full_weights.max())
    # without the symmetrisation the partners' share on the kx = 0 plane is missing
    raw, _ = _insert(rotations, values, sample_weights, pixels)
    missing = np.abs(raw[:, :, 0] - full_data[:, :, 0]).max() / np.abs(full_data[:, :, 0]).max()
    assert missing > 0.1  # measured 0.96


def test_full_spectrum_adjoint_after_symmetrisation():
    """For a real volume: sum over both pixels of each pair of <slice, u> = <V, D> over the full spectrum."""
    half, full = _real_volume_spectra(10)
    rng = np.random.default_rng(11)
    rotations, pixels = _rotations(12, 4), _pixels()
    shape = (len(rotations), len(pixels))
    u = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    data, _ = symmetrise_x0_plane(*_insert(rotations, u, np.ones(shape), pixels))
    lhs = 2.0 * _real_inner(_extract(half, rotations, pixels), u)  # the pixel and its mirror
    rhs = _real_inner(full, hermitian_completion(data))
    scale = np.abs(full).ravel() @ np.abs(hermitian_completion(data)).ravel()
    assert abs(lhs - rhs) < TOL * scale  # measured 1.3e-9 of the scale (lhs is 7e-3 of it)


def test_symmetrise_x0_plane_adds_the_conjugate_mirror():
    rng = np.random.default_rng(13)
    data = rng.standard_normal((M, M, M // 2 + 1)) + 1j * rng.standard_normal((M, M, M // 2 + 1))
    weights = rng.uniform(size=data.shape)
    out, out_w = symmetrise_x0_plane(data, weights)
    minus = (-np.arange(M)) % M
    expected = data[:, :, 0] + np.conj(data[minus][:, minus, 0])
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out_w[:, :, 0], weights[:, :, 0] + weights[minus][:, minus, 0])
    np.testing.assert_array_equal(out[:, :, 1:], data[:, :, 1:])
    np.testing.assert_array_equal(out_w[:, :, 1:], weights[:, :, 1:])
    # new arrays: the inputs are unchanged
    assert not np.shares_memory(out, data) and not np.shares_memory(out_w, weights)
    # the result is Hermitian on the plane
    np.testing.assert_allclose(out[:, :, 0], np.conj(out[minus][:, minus, 0]), rtol=0, atol=1e-14)


def _hermitian_accumulators(seed: int):
    """Data (complex128) and weights of a random real volume's half spectrum (Hermitian kx = 0 plane)."""
    rng = np.random.default_rng(seed)
    data = np.fft.rfftn(rng.standard_normal((M, M, M)))
    weights = np.abs(np.fft.rfftn(rng.uniform(size=(M, M, M))))
    return data, np.ascontiguousarray(weights)


def _symmetrise(data, weights, operators, radius):
    out_data, out_weights = np.zeros_like(data), np.zeros_like(weights)
    symmetrise_volume(data, weights, np.ascontiguousarray(operators, dtype=np.float64), float(radius), out_data,
                      out_weights)
    return out_data, out_weights


def _half_radius():
    f = np.fft.fftfreq(M) * M
    return np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + np.arange(M // 2 + 1)[None, None, :] ** 2)


def test_symmetrise_volume_with_the_identity_only_keeps_the_data():
    data, weights = _hermitian_accumulators(14)
    radius = M / 2 - 1
    out_data, out_weights = _symmetrise(data, weights, np.eye(3)[None], radius)
    inside = _half_radius() < radius
    np.testing.assert_array_equal(out_data[inside], data[inside])
    np.testing.assert_array_equal(out_weights[inside], weights[inside])
    assert np.all(out_data[~inside] == 0) and np.all(out_weights[~inside] == 0)


@pytest.mark.parametrize("group", ["C2", "C4", "D2", "D3"])
def test_symmetrise_volume_sums_the_rotated_accumulators(group):
    """out(q) = sum_g V(R_g^T q), trilinear on the Hermitian-completed full spectrum (reference)."""
    data, weights = _hermitian_accumulators(15)
    operators = symmetry_operators(group)
    radius = M / 2 - 1
    out_data, out_weights = _symmetrise(data, weights, operators, radius)
    f = np.fft.fftfreq(M) * M
    qz, qy, qx = np.meshgrid(f, f, np.arange(M // 2 + 1), indexing="ij")
    q = np.stack([qx, qy, qz], axis=-1)
    inside = _half_radius() < radius
    points = np.einsum("gji,nj->gni", operators, q[inside])  # R_g^T q
    full_data, full_weights = hermitian_completion(data), hermitian_completion(weights)
    expected = trilinear_reference(full_data, points).sum(axis=0)
    expected_w = trilinear_reference(full_weights, points).real.sum(axis=0)
    # measured max error 1e-16 of the largest value (0 for C2, C4, D2)
    np.testing.assert_allclose(out_data[inside], expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(out_weights[inside], expected_w, rtol=0, atol=1e-12 * expected_w.max())
    # the copies were really moved: the sum differs from G times the data (measured 1.0-1.7 of the largest value)
    assert np.abs(out_data[inside] - len(operators) * data[inside]).max() > 0.1 * np.abs(expected).max()
