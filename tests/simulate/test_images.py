"""Projected particle images: exact projections against voxel sums, the Euler convention, noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryogmm.errors import InputError
from cryogmm.geometry.so3 import euler_to_matrix, random_rotations
from cryogmm.grid import Grid
from cryogmm.simulate import add_noise, model_center, molmap, project_atoms, random_shifts

RESOLUTION = 10.0  # sigma = 2.25 Å: sums over 1 Å voxels are exact integrals to ~exp(-100)
PIXEL = 1.0
BOX = 48


@pytest.fixture
def atoms():
    """An asymmetric model of a few atoms, centred on its weighted centroid."""
    coordinates = np.array([[8.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, -6.0], [-4.0, -3.0, 2.0],
                            [3.0, 3.0, 3.0]])
    z = np.array([6.0, 7.0, 8.0, 16.0, 6.0])
    return coordinates - model_center(coordinates, z), z


def _relion_matrix(rot, tilt, psi):
    """A from CONVENTIONS.md, built by scipy rather than by cryogmm."""
    return Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T


def test_projection_equals_the_voxel_sum_of_the_rotated_molmap(atoms):
    coordinates, z = atoms
    a = euler_to_matrix(30.0, 50.0, -70.0)
    shift = np.array([2.5, -1.5])
    image = project_atoms(coordinates, z, a[None], shift[None], RESOLUTION, BOX, PIXEL, dtype=np.float64)[0]
    moved = coordinates @ a.T + [shift[0], shift[1], 0.0]
    volume = molmap(moved, z, RESOLUTION, Grid.centered((BOX, BOX, BOX), PIXEL), dtype=np.float64)
    np.testing.assert_allclose(image, volume.sum(axis=0) * PIXEL, rtol=0, atol=1e-5 * image.max())
    assert image.sum() * PIXEL**2 == pytest.approx(z.sum(), rel=1e-4)


def test_image_i_is_the_map_rotated_by_a_i_then_summed_along_z(atoms):
    """End to end: the map point x goes to A x (CONVENTIONS.md), checked by resampling the map."""
    coordinates, z = atoms
    angles = (30.0, 50.0, -70.0)
    a = _relion_matrix(*angles)
    np.testing.assert_allclose(euler_to_matrix(*angles), a, atol=1e-12)
    grid = Grid.centered((BOX, BOX, BOX), PIXEL)
    volume = molmap(coordinates, z, RESOLUTION, grid, dtype=np.float64)
    # rotated(v) = volume(A^T v); in [z, y, x] index space the matrix is A^T with axes reversed
    reverse = np.eye(3)[::-1]
    center = np.full(3, BOX // 2)

    def rotate(matrix):
        m = reverse @ matrix.T @ reverse
        return ndimage.affine_transform(volume, m, offset=center - m @ center, order=3)

    expected = rotate(a).sum(axis=0) * PIXEL
    image = project_atoms(coordinates, z, a[None], None, RESOLUTION, BOX, PIXEL, dtype=np.float64)[0]
    error = np.abs(image - expected).max() / image.max()
    assert error < 1e-3  # cubic-spline resampling error
    # the transposed convention would not match
    wrong = rotate(a.T).sum(axis=0) * PIXEL
    assert np.abs(image - wrong).max() / image.max() > 0.1


def _peak(image):
    return np.unravel_index(np.argmax(image), image.shape)  # (row = y, column = x)


def test_known_rotations_put_atoms_where_conventions_say():
    c = BOX // 2
    d = 10.0
    tilt90 = euler_to_matrix(0.0, 90.0, 0.0)[None]
    rot90 = euler_to_matrix(90.0, 0.0, 0.0)[None]
    # tilt 90: A = Ry(90)^T takes +z to -x and +x to +z (projected onto the centre)
    image = project_atoms([[0.0, 0.0, d]], [1], tilt90, None, RESOLUTION, BOX, PIXEL)[0]
    assert _peak(image) == (c, c - d / PIXEL)
    image = project_atoms([[d, 0.0, 0.0]], [1], tilt90, None, RESOLUTION, BOX, PIXEL)[0]
    assert _peak(image) == (c, c)
    # rot 90: A = Rz(90)^T takes +x to -y (row c - d)
    image = project_atoms([[d, 0.0, 0.0]], [1], rot90, None, RESOLUTION, BOX, PIXEL)[0]
    assert _peak(image) == (c - d / PIXEL, c)
    # a shift t puts the particle centre at +t: column c + t_x, row c + t_y
    image = project_atoms([[0.0, 0.0, 0.0]], [1], np.eye(3)[None], [[3.0, -5.0]], RESOLUTION, BOX, PIXEL)[0]
    assert _peak(image) == (c - 5, c + 3)


def test_images_are_non_negative_and_centred_on_the_shift(atoms):
    coordinates, z = atoms
    rng = np.random.default_rng(1)
    rotations = random_rotations(rng, 4)
    shifts = random_shifts(rng, 4, 4.0)
    images = project_atoms(coordinates, z, rotations, shifts, RESOLUTION, BOX, PIXEL)
    assert images.shape == (4, BOX, BOX) and images.dtype == np.float32
    assert images.min() >= 0
    points = Grid.centered((BOX, BOX), PIXEL).points()
    for image, shift in zip(images, shifts):
        w = image.ravel().astype(np.float64) / image.sum()
        np.testing.assert_allclose(w @ points, shift, atol=1e-3)


def test_noise_has_the_requested_snr(atoms):
    coordinates, z = atoms
    rng = np.random.default_rng(2)
    clean = project_atoms(coordinates, z, random_rotations(rng, 20), None, RESOLUTION, 64, PIXEL)
    snr = 0.1
    noisy = add_noise(np.random.default_rng(3), clean, snr)
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    ratio = (noisy - clean).astype(np.float64).var(axis=(1, 2)) / clean.astype(np.float64).var(axis=(1, 2))
    # 4096 pixels per image: the variance estimate has a relative error of about 2%
    np.testing.assert_allclose(ratio, 1 / snr, rtol=0.1)
    assert ratio.mean() == pytest.approx(1 / snr, rel=0.03)
    np.testing.assert_array_equal(noisy, add_noise(np.random.default_rng(3), clean, snr))
    with pytest.raises(InputError):
        add_noise(rng, clean, 0.0)
    with pytest.raises(InputError):
        add_noise(rng, np.zeros((2, 8, 8)), 1.0)


def test_random_shifts_are_uniform_in_the_disc():
    shifts = random_shifts(np.random.default_rng(4), 20000, 6.0)
    radius = np.linalg.norm(shifts, axis=1)
    assert shifts.shape == (20000, 2) and radius.max() <= 6.0
    assert np.mean(radius < 3.0) == pytest.approx(0.25, abs=0.015)
    np.testing.assert_allclose(shifts.mean(0), 0.0, atol=0.1)
    np.testing.assert_array_equal(random_shifts(np.random.default_rng(4), 3, 0.0), 0.0)
    with pytest.raises(InputError):
        random_shifts(np.random.default_rng(4), 3, -1.0)
