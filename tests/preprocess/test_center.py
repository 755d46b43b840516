"""Centre of mass, Fourier shifts and centring against analytic Gaussian blobs."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.preprocess.center import center_images, centers_of_mass, fourier_shift
from cryogmm.preprocess.mask import auto_masks

PIXEL = 2.5


def gaussian(n, centre_xy, sigma=3.0):
    """A round Gaussian at `centre_xy` pixels from index n // 2 (analytic samples)."""
    y, x = np.indices((n, n)) - n // 2
    return np.exp(-((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2) / (2 * sigma**2))


SHIFTS = np.array([[3.3, -1.7], [-5.25, 4.6], [0.4, 0.05]])


@pytest.mark.parametrize("n", [64, 65])
def test_center_of_mass_of_shifted_blobs(n):
    images = np.stack([gaussian(n, s) for s in SHIFTS])
    np.testing.assert_allclose(centers_of_mass(images), SHIFTS, atol=1e-6)
    # negative values (CTF ripples) do not count
    rippled = images - 0.2 * np.stack([gaussian(n, s + 18.0, sigma=2.0) for s in SHIFTS])
    np.testing.assert_allclose(centers_of_mass(rippled), SHIFTS, atol=1e-5)  # the tails overlap a little


def test_center_of_mass_needs_positive_values():
    with pytest.raises(ValueError, match="image.s. 2 have no positive values"):
        centers_of_mass(np.stack([gaussian(32, (0, 0)), -gaussian(32, (0, 0))]))


def test_fourier_shift_matches_the_analytic_shift_and_np_roll():
    n = 64
    images = np.stack([gaussian(n, (0.0, 0.0))] * 3)
    shifted = fourier_shift(images, SHIFTS)
    expected = np.stack([gaussian(n, s) for s in SHIFTS])
    np.testing.assert_allclose(shifted, expected, atol=1e-9)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, n, n))
    np.testing.assert_allclose(fourier_shift(noise, [[3, -5], [-1, 2]]),
                               np.stack([np.roll(noise[0], (-5, 3), axis=(0, 1)),
                                         np.roll(noise[1], (2, -1), axis=(0, 1))]), atol=1e-12)


@pytest.mark.parametrize("n", [63, 64])
def test_fourier_shift_round_trip(n):
    rng = np.random.default_rng(1)
    # band-limited content: a sum of blobs (an odd box has no Nyquist frequency at all)
    centres = rng.uniform(-10, 10, (8, 2))
    images = np.stack([sum(gaussian(n, c, sigma=2.0) for c in centres)] * 2)
    there = fourier_shift(images, [[2.37, -4.81], [-0.5, 0.5]])
    back = fourier_shift(there, [[-2.37, 4.81], [0.5, -0.5]])
    np.testing.assert_allclose(back, images, atol=1e-12 if n % 2 else 1e-9)


def test_center_images_recovers_shifts_and_the_centred_image():
    n = 64
    rng = np.random.default_rng(2)
    images = np.stack([gaussian(n, s) for s in SHIFTS]) + 0.01 * rng.standard_normal((3, n, n))
    masks = auto_masks(images, PIXEL)
    centred, shifts = center_images(images, PIXEL, weights=masks)
    # t = particle centre relative to the box centre, in Å (cryogmm.io.star convention)
    np.testing.assert_allclose(shifts / PIXEL, SHIFTS, atol=0.05)
    np.testing.assert_allclose(centred, gaussian(n, (0.0, 0.0))[None].repeat(3, 0), atol=0.06)
    noise_free, exact = center_images(np.stack([gaussian(n, s) for s in SHIFTS]), PIXEL)
    np.testing.assert_allclose(exact / PIXEL, SHIFTS, atol=1e-6)
    np.testing.assert_allclose(noise_free, gaussian(n, (0.0, 0.0))[None].repeat(3, 0), atol=1e-8)
