"""Direct Fourier inversion with known poses (thesis section 3.2.3) against exact projections.

The truth is independent of the code under test: a random asymmetric 3D Gaussian mixture, its
exact projections (`mixture.project`, Eqn. 2.76) evaluated on the image grid, and the mixture
evaluated on the map grid. Measured values (seed 0, 30 components, sigma 6 Å, 64 px at 3 Å,
300 images) are quoted next to each assertion.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.mixture import GaussianMixture, evaluate, project
from cryogmm.reconstruction.fourier_inversion import fourier_inversion

BOX, PIXEL, N_IMAGES = 64, 3.0, 300


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def projections(mixture, rotations, shifts=None, box=BOX):
    grid = Grid.centered((box, box), PIXEL)
    shifts = np.zeros((len(rotations), 2)) if shifts is None else shifts
    return np.stack([evaluate(project(mixture, a, np.r_[t, 0.0]), grid) for a, t in zip(rotations, shifts)])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    n_components = 30
    mixture = GaussianMixture(rng.uniform(-40, 40, (n_components, 3)), rng.dirichlet(np.ones(n_components)),
                              1 / 6.0**2)
    rotations = random_rotations(rng, N_IMAGES)
    shifts = rng.uniform(-10, 10, (N_IMAGES, 2))
    truth = evaluate(mixture, Grid.centered((BOX, BOX, BOX), PIXEL))
    return dict(mixture=mixture, rotations=rotations, shifts=shifts, truth=truth, rng=rng,
                images=projections(mixture, rotations),
                shifted=projections(mixture, rotations, shifts))


@pytest.fixture(scope="module")
def unshifted_reconstruction(problem):
    return fourier_inversion(problem["images"], problem["rotations"], None, PIXEL)


def test_reconstruction_matches_the_map(problem, unshifted_reconstruction):
    volume, truth = unshifted_reconstruction, problem["truth"]
    assert volume.shape == (BOX, BOX, BOX) and volume.dtype == np.float32
    assert pearson(volume, truth) > 0.97  # measured 0.9998
    # same units as the truth (1/Å^3): least-squares scale measured 1.006
    assert (volume * truth).sum() / (truth * truth).sum() == pytest.approx(1.0, abs=0.03)
    # mirrored about the centre voxel (x -> -x): measured 0.34
    mirrored = np.roll(volume[:, :, ::-1], 1, axis=2)
    assert pearson(mirrored, truth) < 0.6
    # the slice plane through A instead of A^T (the transpose mistake): measured 0.58
    transposed = fourier_inversion(problem["images"], np.swapaxes(problem["rotations"], 1, 2), None, PIXEL)
    assert pearson(transposed, truth) < 0.7


def test_shifts_are_undone(problem, unshifted_reconstruction):
    truth = problem["truth"]
    volume = fourier_inversion(problem["shifted"], problem["rotations"], problem["shifts"], PIXEL)
    # measured 0.9998, as unshifted
    assert pearson(volume, truth) == pytest.approx(pearson(unshifted_reconstruction, truth), abs=0.01)
    # the shifts with the wrong sign: measured 0.45
    wrong_sign = fourier_inversion(problem["shifted"], problem["rotations"], -problem["shifts"], PIXEL)
    assert pearson(wrong_sign, truth) < 0.7


def test_an_off_centre_blob_lands_on_its_voxel():
    """Axis order and origin: one Gaussian at (x, y, z) = (21, -12, 9) Å peaks at [z, y, x]."""
    blob = GaussianMixture(np.array([[21.0, -12.0, 9.0]]), np.array([1.0]), 1 / 5.0**2)
    rotations = random_rotations(np.random.default_rng(3), 60)
    volume = fourier_inversion(projections(blob, rotations, box=32), rotations, None, PIXEL)
    peak = np.unravel_index(np.argmax(volume), volume.shape)
    assert peak == (16 + 3, 16 - 4, 16 + 7)


@pytest.mark.parametrize("wiener_constant", [0.0, 1e-3])
def test_few_images_stay_finite_and_correlated(problem, wiener_constant):
    truth = problem["truth"]
    volume = fourier_inversion(problem["images"][:25], problem["rotations"][:25], None, PIXEL,
                               wiener_constant=wiener_constant)
    assert np.all(np.isfinite(volume))
    assert pearson(volume, truth) > 0.8  # measured 0.97 (with either constant)
    assert np.abs(volume).max() < 2 * truth.max()  # measured 0.88 x and 0.87 x (the peak is blurred)


def _ctf(size, defocus_in_angstroms):
    """CONVENTIONS.md CTF at 300 kV (lambda 0.0197 Å), Cs 2.7 mm, 10% amplitude contrast, FFT order."""
    k = np.fft.fftfreq(size, PIXEL)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    wavelength, cs, amplitude = 0.0197, 2.7e7, 0.1
    gamma = np.pi * wavelength * defocus_in_angstroms * k2 - np.pi / 2 * cs * wavelength**3 * k2**2
    return -(np.sqrt(1 - amplitude**2) * np.sin(gamma) + amplitude * np.cos(gamma))


def test_ctf_is_corrected(problem):
    """Images convolved with the CTF on a twice larger field of view, then cropped to the box."""
    rng = np.random.default_rng(4)
    rotations = problem["rotations"][:150]
    defoci = rng.uniform(5000, 20000, len(rotations))
    big = projections(problem["mixture"], rotations, box=2 * BOX)
    start = BOX - BOX // 2
    images = np.empty((len(rotations), BOX, BOX))
    for i, (image, defocus) in enumerate(zip(big, defoci)):
        spectrum = _ctf(2 * BOX, defocus) * np.fft.fft2(np.fft.ifftshift(image))
        convolved = np.fft.fftshift(np.fft.ifft2(spectrum).real)
        images[i] = convolved[start:start + BOX, start:start + BOX]
    ctf = np.stack([_ctf(BOX, d) for d in defoci])
    corrected = fourier_inversion(images, rotations, None, PIXEL, ctf=ctf)
    assert pearson(corrected, problem["truth"]) > 0.97  # measured 0.999
    assert pearson(fourier_inversion(images, rotations, None, PIXEL), problem["truth"]) < 0.5  # measured -0.87
    # a CTF of ones changes nothing
    clean = problem["images"][:20]
    np.testing.assert_array_equal(fourier_inversion(clean, rotations[:20], None, PIXEL, ctf=np.ones_like(clean)),
                                  fourier_inversion(clean, rotations[:20], None, PIXEL))


def test_input_validation():
    images, rotations = np.zeros((2, 8, 8)), np.tile(np.eye(3), (2, 1, 1))
    with pytest.raises(ValueError, match="square"):
        fourier_inversion(np.zeros((2, 8, 6)), rotations, None, 1.0)
    with pytest.raises(ValueError, match="rotations"):
        fourier_inversion(images, rotations[:1], None, 1.0)
    with pytest.raises(ValueError, match="shifts"):
        fourier_inversion(images, rotations, np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="ctf"):
        fourier_inversion(images, rotations, None, 1.0, ctf=np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="pixel size"):
        fourier_inversion(images, rotations, None, 0.0)
    with pytest.raises(ValueError, match="padding"):
        fourier_inversion(images, rotations, None, 1.0, padding_factor=0.5)
    with pytest.raises(ValueError, match="NaN"):
        fourier_inversion(np.full((2, 8, 8), np.nan), rotations, None, 1.0)
