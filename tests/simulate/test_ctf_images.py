"""Particle images with a CTF and with class in-plane poses, against exact projections."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, apply_ctf, ctf_images
from cryogmm.geometry.so3 import euler_to_matrix
from cryogmm.simulate import (class_particle_images, ctf_particle_images, model_center, project_atoms,
                              random_defocus)

BOX = 32
PIXEL = 2.0
RESOLUTION = 15.0


@pytest.fixture
def atoms():
    coordinates = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [16.0, 0.0, 0.0], [0.0, 8.0, 0.0],
                            [0.0, 0.0, 10.0]])
    z = np.array([6.0, 7.0, 16.0, 8.0, 16.0])
    return coordinates - model_center(coordinates, z), z


def test_threads_do_not_change_the_projections(atoms):
    rotations = euler_to_matrix(np.arange(5) * 40.0, 50.0, 10.0)
    one = project_atoms(*atoms, rotations, None, RESOLUTION, BOX, PIXEL, n_threads=1)
    np.testing.assert_array_equal(project_atoms(*atoms, rotations, None, RESOLUTION, BOX, PIXEL, n_threads=3), one)


def test_without_padding_the_ctf_is_a_circular_convolution_with_minus_the_psf(atoms):
    rotations = euler_to_matrix([10.0, 70.0], 40.0, [0.0, 30.0])
    shifts = np.array([[2.0, -1.0], [0.0, 3.0]])
    params = CTFParameters(np.array([9000.0, 15000.0]), np.array([8000.0, 15000.0]), 35.0)
    clean = project_atoms(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, dtype=np.float64)
    ctf = ctf_images(params, BOX, PIXEL)
    for polarity in (-1, 1):
        images = ctf_particle_images(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, params, polarity=polarity,
                                     padding_factor=1, dtype=np.float64)
        # equal up to the Nyquist column, where apply_ctf takes the CTF at -k_x, this code at +k_x
        np.testing.assert_allclose(images, polarity * apply_ctf(clean, ctf), rtol=0, atol=1e-4 * np.abs(images).max())
    # padding makes the convolution linear: a 2x and a 4x padded box agree, the circular one does not
    padded = ctf_particle_images(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, params, dtype=np.float64)
    linear = ctf_particle_images(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, params, padding_factor=4,
                                 dtype=np.float64)
    scale = np.abs(linear).max()
    assert np.abs(padded - linear).max() < 1e-5 * scale  # measured 2.6e-7
    assert np.abs(-apply_ctf(clean, ctf) - linear).max() > 0.05 * scale  # wrap-around: 0.22
    # bright particles: positive correlation with the CTF-free projection
    assert all(np.sum(p * c) > 0 for p, c in zip(padded, clean))


def test_class_particles_equal_exact_projections(atoms):
    """Images interpolated from the class projections match exact projections of the same poses."""
    rng = np.random.default_rng(1)
    class_rotations = euler_to_matrix([20.0, -100.0], [50.0, 120.0], 0.0)
    class_index = np.array([0, 0, 1, 1, 1])
    psi = rng.uniform(-180, 180, 5)
    shifts = rng.uniform(-5, 5, (5, 2))
    rot, tilt = np.array([[20.0, 50.0], [-100.0, 120.0]])[class_index].T
    rotations = euler_to_matrix(rot, tilt, psi)
    exact = project_atoms(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, dtype=np.float64)
    images = class_particle_images(*atoms, class_rotations, class_index, psi, shifts, RESOLUTION, BOX, PIXEL,
                                   dtype=np.float64)
    assert np.abs(images - exact).max() < 1e-4 * exact.max()  # oversampling 3: measured 1.4e-5
    coarse = class_particle_images(*atoms, class_rotations, class_index, psi, shifts, RESOLUTION, BOX, PIXEL,
                                   oversampling=1, dtype=np.float64)
    assert np.abs(coarse - exact).max() > 3 * np.abs(images - exact).max()
    params = CTFParameters(rng.uniform(6000, 20000, 5), rng.uniform(6000, 20000, 5), rng.uniform(0, 180, 5))
    exact = ctf_particle_images(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, params, dtype=np.float64)
    images = class_particle_images(*atoms, class_rotations, class_index, psi, shifts, RESOLUTION, BOX, PIXEL,
                                   ctf_parameters=params, dtype=np.float64)
    assert np.abs(images - exact).max() < 1e-4 * np.abs(exact).max()


def test_random_defocus_groups_and_astigmatism():
    rng = np.random.default_rng(2)
    u, v, angle = random_defocus(rng, 14, (8000.0, 30000.0), n_groups=7, astigmatism_in_angstroms=200.0)
    np.testing.assert_allclose((u + v) / 2, np.tile(np.linspace(8000.0, 30000.0, 7), 2))
    np.testing.assert_allclose(u - v, 200.0)
    assert np.all((angle >= 0) & (angle < 180)) and np.unique(angle).size == 14
    u, v, angle = random_defocus(rng, 1000, (8000.0, 30000.0))
    np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(angle, 0.0)
    assert 8000 <= u.min() and u.max() <= 30000 and abs(u.mean() - 19000) < 3 * 22000 / np.sqrt(12 * 1000)
    for bad in ((0.0, 1.0), (2.0, 1.0), (np.nan, 1.0)):
        with pytest.raises(InputError, match="defocus range"):
            random_defocus(rng, 3, bad)
    with pytest.raises(InputError, match="astigmatism"):
        random_defocus(rng, 3, (1000.0, 2000.0), astigmatism_in_angstroms=2000.0)
