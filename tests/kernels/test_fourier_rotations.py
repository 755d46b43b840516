"""In-plane rotation kernels of 2D classification (`extract_rotated`, `insert_rotated`) against
plain-numpy references on the full (m, m) spectrum, and `rotated_images` against real-space rotation.

Extraction must equal bilinear interpolation of the full spectrum (points with kx < 0 read through
the conjugate mirror); insertion followed by `symmetrise_x0_line` must equal the full splat of
every value at q and its conjugate at -q, restricted to the half plane; insertion is the transpose
of extraction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from conftest import tolerance
from cryogmm.forward.fourier import (image_coefficients, image_pixels, images_to_fourier, rotated_images,
                                     spectra_to_images)
from cryogmm.kernels.fourier_slices import extract_rotated, insert_rotated, symmetrise_x0_line
from cryogmm.kernels.reference import (bilinear_reference, hermitian_completion_2d, insert_rotated_reference,
                                       rotated_points)

BOX, PAD = 16, 2
M = BOX * PAD
TOL = tolerance(np.float32)
PSI_DEGREES = np.array([0.0, 90.0, 17.0, 163.0, 241.5, 333.0])


def _planes(seed: int, k: int = 3):
    planes = np.random.default_rng(seed).standard_normal((k, M, M))
    return np.fft.rfft2(planes).astype(np.complex64), np.fft.fft2(planes)


def test_extract_rotated_matches_bilinear_reference():
    half, full = _planes(1)
    pixels = image_pixels(BOX, BOX / 2 - 1 / PAD)
    psi = np.radians(PSI_DEGREES)
    out = np.empty((half.shape[0], psi.size, len(pixels)), dtype=np.complex64)
    extract_rotated(half, np.cos(psi), np.sin(psi), pixels.fx, pixels.fy, float(PAD), out)
    points = rotated_points(psi, pixels.fx, pixels.fy, PAD)
    for k in range(half.shape[0]):
        expected = bilinear_reference(full[k], points)
        assert np.max(np.abs(out[k] - expected)) <= TOL * np.max(np.abs(expected))
    # psi = 0 and 90 degrees land on grid points: the stored values exactly (up to float32)
    ky = np.rint(pixels.fy * PAD).astype(int) % M
    assert np.allclose(out[:, 0], half[:, ky, np.rint(pixels.fx * PAD).astype(int)], rtol=0, atol=1e-4)


def test_insert_rotated_then_symmetrise_is_the_full_splat():
    rng = np.random.default_rng(2)
    pixels = image_pixels(BOX, BOX / 2 - 1 / PAD, include_zero=True)
    psi = np.radians(PSI_DEGREES)
    k = 2
    values = (rng.standard_normal((k, psi.size, len(pixels)))
              + 1j * rng.standard_normal((k, psi.size, len(pixels)))).astype(np.complex64)
    values[:, :, 0] = values[:, :, 0].real  # the zero frequency of a real image is real
    sample_weights = rng.uniform(0.5, 2.0, (k, psi.size, len(pixels))).astype(np.float32)
    data = np.zeros((k, M, M // 2 + 1), np.complex128)
    weights = np.zeros((k, M, M // 2 + 1))
    insert_rotated(data, weights, np.cos(psi), np.sin(psi), values, sample_weights, pixels.fx, pixels.fy, float(PAD))
    data, weights = symmetrise_x0_line(data, weights)
    for c in range(k):
        ref_data, ref_weights = insert_rotated_reference(M, psi, values[c], sample_weights[c], pixels.fx, pixels.fy,
                                                         PAD)
        half = slice(0, M // 2 + 1)
        assert np.allclose(data[c], ref_data[:, half], rtol=0, atol=1e-4 * np.abs(ref_data).max())
        assert np.allclose(weights[c], ref_weights[:, half], rtol=0, atol=1e-5 * ref_weights.max())


def test_insert_is_the_transpose_of_extract():
    """<extract(P), V> = <P, insert(V)> for the real inner product of complex values (kx > 0 only)."""
    rng = np.random.default_rng(3)
    pixels = image_pixels(BOX, BOX / 2 - 1 / PAD)
    keep = pixels.fx > 0  # away from the kx = 0 line, which the half spectrum holds twice
    fx, fy = pixels.fx[keep], pixels.fy[keep]
    psi = np.radians(np.array([10.0, 45.0, 200.0]))
    half = (rng.standard_normal((1, M, M // 2 + 1)) + 1j * rng.standard_normal((1, M, M // 2 + 1)))
    half[:, :, 0] = 0.0
    half[:, :, -1] = 0.0
    values = (rng.standard_normal((1, psi.size, fx.size)) + 1j * rng.standard_normal((1, psi.size, fx.size)))
    out = np.empty((1, psi.size, fx.size), np.complex64)
    extract_rotated(half.astype(np.complex64), np.cos(psi), np.sin(psi), fx, fy, float(PAD), out)
    data = np.zeros((1, M, M // 2 + 1), np.complex128)
    weights = np.zeros((1, M, M // 2 + 1))
    insert_rotated(data, weights, np.cos(psi), np.sin(psi), values.astype(np.complex64),
                   np.ones(values.shape, np.float32), fx, fy, float(PAD))
    # rotated points with kx < 0 go through the mirror: their conjugation is the same on both sides
    lhs = np.sum(np.conj(out.astype(np.complex128)) * values).real
    rhs = np.sum(np.conj(half) * data).real
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + np.abs(values).sum())


def _blob_image(n: int) -> np.ndarray:
    """A smooth asymmetric image (two Gaussians and a bar) centred at n // 2."""
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    image = np.exp(-((x - 4) ** 2 + (y - 2) ** 2) / 8.0) + 0.6 * np.exp(-((x + 3) ** 2 + (y + 4) ** 2) / 5.0)
    image += 0.4 * np.exp(-(x**2) / 20.0 - (y - 1) ** 2 / 2.0)
    return image


def test_images_round_trip_through_the_padded_spectrum():
    images = np.stack([_blob_image(24), _blob_image(24)[::-1]])
    back = spectra_to_images(images_to_fourier(images), 24, correction="projection")
    assert np.max(np.abs(back - images)) <= 1e-5 * np.abs(images).max()


def test_rotated_images_match_real_space_rotation():
    """The particle p(u) = c(Rz(psi) u): its transform is the class's at Rz(psi) f (CC >= 0.99 below
    0.8 Nyquist against a cubic-spline rotation of the image)."""
    n = 32
    image = _blob_image(n)
    spectra = images_to_fourier(image[None])
    pixels = image_pixels(n, 0.8 * n / 2)
    psi = np.array([30.0, 90.0, 217.0])
    got = rotated_images(spectra, psi, pixels)[0]
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    for j, angle in enumerate(np.radians(psi)):
        # p(u) = c(R u): sample the class at R u (x, y) -> (cos x - sin y, sin x + cos y)
        xs = np.cos(angle) * x - np.sin(angle) * y
        ys = np.sin(angle) * x + np.cos(angle) * y
        rotated = ndimage.map_coordinates(image, [ys + n // 2, xs + n // 2], order=3, mode="constant")
        expected = image_coefficients(rotated[None], pixels)[0]
        cc = np.abs(np.vdot(expected, got[j])) / (np.linalg.norm(expected) * np.linalg.norm(got[j]))
        assert np.vdot(expected, got[j]).real > 0
        assert cc >= 0.99, (angle, cc)
