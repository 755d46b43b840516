"""The Gaussian-noise kernel against the plain-numpy model of forward.gaussian."""

import numpy as np

from cryogmm.forward.gaussian import _components
from cryogmm.kernels.gaussian_noise import residual_and_centre_gradients_kernel, residual_sums_of_squares_kernel


def _pixel_grid(box: int, spacing: float):
    """The grid's origin (x, y) in Å (centre at box // 2) and its (box^2, 2) pixel positions, row-major."""
    origin = np.full(2, -(box // 2) * spacing)
    coords = origin[0] + np.arange(box) * spacing
    xx, yy = np.meshgrid(coords, coords)
    return origin, np.stack([xx.ravel(), yy.ravel()], axis=1)


def test_kernel_matches_numpy_with_a_wide_cutoff_and_cuts_at_k_sigma():
    rng = np.random.default_rng(2)
    box, spacing = 16, 2.0
    origin, pixels = _pixel_grid(box, spacing)
    centres = rng.uniform(-10, 10, size=(3, 5, 2))
    images = rng.normal(size=(3, box, box))
    scale, size = 1.7, 0.12
    diff, v = _components(pixels, centres, size)
    expected_residual = images.reshape(3, -1) - scale * v.sum(axis=2)
    weighted = expected_residual[:, :, None] * v
    expected_centres = size * np.einsum("npk,npkc->nkc", weighted, diff)
    expected_size = 0.5 * np.sum(weighted * np.einsum("npkc,npkc->npk", diff, diff), axis=(1, 2))
    out = np.empty_like(images), np.empty_like(centres), np.empty(3)
    residual_and_centre_gradients_kernel(images, centres, np.full(3, scale), size, origin, spacing, 40.0, *out)
    np.testing.assert_allclose(out[0].reshape(3, -1), expected_residual, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[1], expected_centres, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[2], expected_size, rtol=1e-10)
    # a 3-sigma cut-off drops exactly the pixels beyond 3 / sqrt(s) of each centre along x or y
    residual_and_centre_gradients_kernel(images, centres, np.full(3, scale), size, origin, spacing, 3.0, *out)
    kept = v * np.all(np.abs(diff) <= 3.0 / np.sqrt(size), axis=3)
    np.testing.assert_allclose(out[0].reshape(3, -1), images.reshape(3, -1) - scale * kept.sum(axis=2),
                               rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(out[0].reshape(3, -1) - expected_residual)) < scale * np.exp(-4.5) * 5


def test_sums_of_squares_kernel_matches_numpy_with_per_image_scales():
    rng = np.random.default_rng(5)
    box, spacing = 14, 3.0
    origin, pixels = _pixel_grid(box, spacing)
    centres = rng.uniform(-12, 12, size=(4, 6, 2))
    images = rng.normal(size=(4, box, box))
    scales, size = np.array([0.5, 1.0, 2.0, -1.0]), 0.05
    _, v = _components(pixels, centres, size)
    expected = np.sum((images.reshape(4, -1) - scales[:, None] * v.sum(axis=2)) ** 2, axis=1)
    out = residual_sums_of_squares_kernel(images, centres, scales, size, origin, spacing, 40.0, np.empty_like(images))
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # and the same residual as the gradient kernel at the usual cut-off
    residual = np.empty_like(images)
    residual_and_centre_gradients_kernel(images, centres, scales, size, origin, spacing, 4.0, residual,
                                         np.empty_like(centres), np.empty(4))
    out = residual_sums_of_squares_kernel(images, centres, scales, size, origin, spacing, 4.0, np.empty_like(images))
    np.testing.assert_allclose(out, np.sum(residual.reshape(4, -1) ** 2, axis=1), rtol=1e-12)
