"""Central-slice projection (`cryogmm.forward.fourier`) against exact projections of Gaussian mixtures.

The truth is independent of the code under test: a random asymmetric 3D Gaussian mixture evaluated
on the map grid (the map) and its exact projections (`mixture.project`, Eqn. 2.76) evaluated on the
image grid, divided by the voxel size (a projection is the sum of voxel values along the beam).
The image-side helpers are checked against explicit DFT sums and `np.roll`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import tolerance
from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, ctf_of_frequencies
from cryogmm.forward.fourier import (FourierVolume, central_slices, fourier_to_map, image_coefficients, image_pixels,
                                     map_to_fourier, project_images, shift_phases, spectrum_to_map)
from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.metrics.fsc import normalised_cross_correlation
from cryogmm.mixture import GaussianMixture, evaluate, project

BOX, PIXEL, SIGMA = 32, 3.0, 4.0  # Å; the mixture's means lie within 22 Å of the centre (box half-width 48 Å)
N_IMAGES = 8
TOL = tolerance(np.float32)



def random_mixture(rng: np.random.Generator, n_components: int = 20, radius_in_angstroms: float = 22.0,
                   sigma_in_angstroms: float = SIGMA) -> GaussianMixture:
    """An asymmetric mixture with means uniform in a ball."""
    direction = rng.standard_normal((n_components, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = direction * radius_in_angstroms * rng.uniform(0, 1, (n_components, 1)) ** (1 / 3)
    return GaussianMixture(means, rng.dirichlet(np.ones(n_components)), 1 / sigma_in_angstroms**2)


def exact_projections(mixture, rotations, shifts_in_pixels, box=BOX):
    """Exact projections in voxel units (sum along the beam), particle centres at +t pixels."""
    grid = Grid.centered((box, box), PIXEL)
    return np.stack([evaluate(project(mixture, a, PIXEL * np.asarray(t)), grid)
                     for a, t in zip(rotations, shifts_in_pixels)]) / PIXEL


def low_pass(images, fraction_of_nyquist=0.8):
    n = images.shape[-1]
    f = np.fft.fftfreq(n) * n
    keep = np.hypot(f[:, None], f[None, :]) < fraction_of_nyquist * n / 2
    spectra = np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))) * keep
    return np.fft.fftshift(np.fft.ifft2(spectra).real, axes=(-2, -1))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    mixture = random_mixture(rng)
    volume = evaluate(mixture, Grid.centered((BOX, BOX, BOX), PIXEL))
    rotations = random_rotations(rng, N_IMAGES)
    shifts = rng.uniform(-3, 3, (N_IMAGES, 2))
    return dict(mixture=mixture, volume=volume, fourier=map_to_fourier(volume), rotations=rotations, shifts=shifts,
                exact=exact_projections(mixture, rotations, shifts))


@pytest.mark.parametrize("box, padding_factor", [(24, 2), (25, 2), (15, 3), (16, 1)])
def test_map_to_fourier_round_trip(box, padding_factor):
    volume = np.random.default_rng(box).standard_normal((box, box, box)).astype(np.float32)
    fourier = map_to_fourier(volume, padding_factor=padding_factor)
    m = padding_factor * box
    assert fourier.spectrum.shape == (m, m, m // 2 + 1) and fourier.spectrum.dtype == np.complex64
    assert fourier.box == box and fourier.size == m and fourier.padding_factor == padding_factor
    assert fourier.max_image_radius == pytest.approx((m / 2 - 1) / padding_factor)
    back = fourier_to_map(fourier)
    assert back.shape == volume.shape and back.dtype == np.float32
    # measured max error 1.1e-7 to 2.0e-7 of the largest value (complex64 spectrum)
    np.testing.assert_allclose(back, volume, rtol=0, atol=TOL * np.abs(volume).max())


def test_spectrum_to_map_emits_no_numpy_deprecation_warning():
    """np.fft.irfftn with `s` and no `axes` is deprecated in NumPy 2 (a later NumPy changes what `s` means)."""
    volume = np.random.default_rng(3).standard_normal((8, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fourier_to_map(map_to_fourier(volume))


def test_gridding_correction_is_the_trilinear_kernel():
    """The spectrum is that of the map divided by the trilinear kernel's transform, sinc^2(x / m) per axis.

    x is the distance in voxels from the centre n // 2; the map sits in the middle of the m-box.
    """
    box, pad = 12, 2
    m = box * pad
    volume = np.random.default_rng(1).standard_normal((box, box, box))
    kernel = np.sinc((np.arange(box) - box // 2) / m) ** 2
    kernel3 = kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :]

    def spectrum_of(v):  # the centre n // 2 of the map at voxel 0 of the padded grid
        return np.fft.rfftn(np.fft.ifftshift(np.pad(v, (m - box) // 2)))

    corrected = map_to_fourier(volume, padding_factor=pad).spectrum
    expected = spectrum_of(volume / kernel3)
    np.testing.assert_allclose(corrected, expected, rtol=0, atol=TOL * np.abs(expected).max())
    # "insertion" divides by the kernel (the gridding correction of a back-projected spectrum),
    # "projection" (the default) multiplies by it
    plain = spectrum_of(volume)
    np.testing.assert_allclose(spectrum_to_map(plain, box, correction="insertion"), volume / kernel3, rtol=0,
                               atol=TOL * np.abs(volume / kernel3).max())
    np.testing.assert_allclose(spectrum_to_map(plain, box), volume * kernel3, rtol=0, atol=TOL * np.abs(volume).max())


def test_central_slices_match_exact_projections(problem):
    """Acceptance: cross-correlation >= 0.99 with the exact projections, both low-passed below 0.8 Nyquist."""
    images = project_images(problem["fourier"], problem["rotations"], problem["shifts"])
    assert images.shape == (N_IMAGES, BOX, BOX) and images.dtype == np.float32
    ours, exact = low_pass(images), low_pass(problem["exact"])
    cc = [cross_correlation(a, b) for a, b in zip(ours, exact)]
    assert min(cc) >= 0.99  # measured min 0.99987 (thesis Eqn. 3.3, not mean-subtracted)
    pearson = [normalised_cross_correlation(a, b) for a, b in zip(ours, exact)]
    assert min(pearson) > 0.999  # measured min 0.99993
    # the same units: least-squares scale measured 1.0024
    assert (ours * exact).sum() / (exact * exact).sum() == pytest.approx(1.0, abs=0.01)
    # the projection of A^T instead of A, and shifts of the wrong sign, are far off (on average: a
    # turn by nearly 180 degrees is nearly its own transpose; 0.97 for the one by 175 degrees)
    transposed = low_pass(project_images(problem["fourier"], np.swapaxes(problem["rotations"], 1, 2),
                                         problem["shifts"]))
    assert np.mean([normalised_cross_correlation(a, b) for a, b in zip(transposed, exact)]) < 0.8  # measured 0.66
    wrong_sign = low_pass(project_images(problem["fourier"], problem["rotations"], -problem["shifts"]))
    assert np.mean([normalised_cross_correlation(a, b) for a, b in zip(wrong_sign, exact)]) < 0.8  # measured 0.44


def test_unshifted_projections_match(problem):
    images = low_pass(project_images(problem["fourier"], problem["rotations"]))
    exact = low_pass(exact_projections(problem["mixture"], problem["rotations"], np.zeros((N_IMAGES, 2))))
    assert min(normalised_cross_correlation(a, b) for a, b in zip(images, exact)) > 0.999  # measured min 0.99993


@pytest.mark.parametrize("box", [32, 25])
def test_a_shifted_blob_lands_at_plus_t(box):
    """One Gaussian at (6, -9, 3) Å = (2, -3, 1) pixels, turned 90 degrees about z, moved by t = (4, -2).

    A x = (3, 2, 1): the centre lands at (3 + 4, 2 - 2) pixels from the box centre n // 2, i.e. at
    index [y, x] = [n // 2, n // 2 + 7].
    """
    blob = GaussianMixture(np.array([[6.0, -9.0, 3.0]]), np.array([1.0]), 1 / 4.0**2)
    a = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t = np.array([[4.0, -2.0]])
    volume = evaluate(blob, Grid.centered((box, box, box), PIXEL))
    image = project_images(map_to_fourier(volume), a[None], t)[0]
    expected = (box // 2, box // 2 + 7)
    assert np.unravel_index(np.argmax(image), image.shape) == expected
    exact = exact_projections(blob, a[None], t, box=box)[0]
    assert np.unravel_index(np.argmax(exact), exact.shape) == expected
    # a fractional shift moves the centroid by the same fraction
    half = project_images(map_to_fourier(volume), a[None], t + 0.5)[0]
    y, x = np.indices(half.shape)
    centroid = np.array([(x * half).sum(), (y * half).sum()]) / half.sum() - box // 2
    np.testing.assert_allclose(centroid, [7.5, 0.5], atol=0.05)  # measured off by 0.009 px (32) and 0.013 px (25)


def test_project_images_with_a_ctf(problem):
    n = BOX
    parameters = CTFParameters(np.array([8000.0, 15000.0]), np.array([7000.0, 16000.0]),
                               defocus_angle_in_degrees=np.array([20.0, -40.0]))
    fy = np.fft.fftfreq(n) / PIXEL
    fx = np.arange(n // 2 + 1) / (n * PIXEL)
    ctf = ctf_of_frequencies(parameters, fx[None, :] + 0 * fy[:, None], fy[:, None] + 0 * fx[None, :])
    rotations, shifts = problem["rotations"][:2], problem["shifts"][:2]
    plain = project_images(problem["fourier"], rotations, shifts)
    with_ctf = project_images(problem["fourier"], rotations, shifts, ctf=ctf)
    spectra = np.fft.rfft2(np.fft.ifftshift(with_ctf, axes=(-2, -1)))
    expected = ctf * np.fft.rfft2(np.fft.ifftshift(plain, axes=(-2, -1)))
    # measured max error 5.5e-8 of the largest coefficient; the CTF changes the images by 1.5 x their maximum
    np.testing.assert_allclose(spectra, expected, rtol=0, atol=TOL * np.abs(expected).max())
    assert np.abs(with_ctf - plain).max() > 0.1 * np.abs(plain).max()


@pytest.mark.parametrize("box", [12, 11])
def test_image_pixels_are_one_of_each_pair_in_the_radius(box):
    radius = box / 2 - 0.5
    pixels = image_pixels(box, radius)
    fy_all = np.rint(np.fft.fftfreq(box) * box)
    expected = {(fx, fy) for fy in fy_all for fx in range(box // 2 + 1)
                if 0 < np.hypot(fx, fy) < radius and (fx > 0 or fy > 0)}
    listed = list(zip(pixels.fx.tolist(), pixels.fy.tolist()))
    assert len(listed) == len(set(listed)) == len(pixels) and set(listed) == expected
    r = np.hypot(pixels.fx, pixels.fy)
    assert np.all(np.diff(r) >= 0) and pixels.max_radius == radius and pixels.box == box
    np.testing.assert_array_equal(pixels.shell, np.rint(r).astype(int))
    # index: flat position in an (n, n // 2 + 1) rfft2 array, row fy mod n, column fx
    np.testing.assert_array_equal(pixels.index, (pixels.fy.astype(int) % box) * (box // 2 + 1) + pixels.fx)
    both = image_pixels(box, radius, include_zero=True, both_halves_of_x0=True)
    listed = set(zip(both.fx.tolist(), both.fy.tolist()))
    assert listed == expected | {(0.0, 0.0)} | {(0.0, -fy) for fx, fy in expected if fx == 0}


@pytest.mark.parametrize("box", [12, 11])
def test_image_coefficients_are_the_dft_about_the_centre_pixel(box):
    rng = np.random.default_rng(box)
    images = rng.standard_normal((3, box, box))
    pixels = image_pixels(box, box / 2)
    x = np.arange(box) - box // 2
    phase = np.exp(-2j * np.pi / box * (pixels.fx[:, None, None] * x[None, None, :]
                                        + pixels.fy[:, None, None] * x[None, :, None]))  # (S, y, x)
    expected = np.einsum("byx,syx->bs", images, phase)
    coefficients = image_coefficients(images, pixels)
    assert coefficients.dtype == np.complex64
    np.testing.assert_allclose(coefficients, expected, rtol=0, atol=TOL * np.abs(expected).max())


def test_shift_phases_move_the_image_by_plus_t():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 16, 16))
    pixels = image_pixels(16, 8)
    t = np.array([[3.0, -5.0], [-1.0, 2.0]])
    phases = shift_phases(t, pixels)
    assert phases.shape == (2, len(pixels)) and phases.dtype == np.complex64
    for (tx, ty), e in zip(t.astype(int), phases):
        moved = np.roll(image, (ty, tx), axis=(1, 2))  # content at x goes to x + tx
        np.testing.assert_allclose(image_coefficients(moved, pixels)[0], e * image_coefficients(image, pixels)[0],
                                   rtol=0, atol=TOL * np.abs(image_coefficients(image, pixels)).max())


def test_input_validation(problem):
    with pytest.raises(InputError, match="cubic"):
        map_to_fourier(np.zeros((8, 8, 6)))
    with pytest.raises(InputError, match="cubic"):
        map_to_fourier(np.zeros((3, 3, 3)))
    with pytest.raises(InputError, match="NaN"):
        map_to_fourier(np.full((8, 8, 8), np.nan))
    with pytest.raises(InputError, match="padding"):
        map_to_fourier(np.zeros((8, 8, 8)), padding_factor=1.5)
    with pytest.raises(InputError, match="padding"):
        map_to_fourier(np.zeros((8, 8, 8)), padding_factor=0)
    with pytest.raises(ValueError, match="correction"):
        spectrum_to_map(problem["fourier"].spectrum, BOX, correction="none")
    fourier: FourierVolume = problem["fourier"]
    with pytest.raises(ValueError, match="padding factor"):
        central_slices(fourier, np.eye(3), image_pixels(BOX, BOX / 2))
    with pytest.raises(ValueError, match="16-pixel image"):
        central_slices(fourier, np.eye(3), image_pixels(16, 5))
