"""molmap densities: normalisation, width, centring and the map grid."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.grid import Grid
from cryogmm.simulate import default_map_grid, model_center, molmap, molmap_padding_in_angstroms, sigma_for_resolution


def test_sigma_follows_eqn_3_1():
    assert sigma_for_resolution(10.0) == pytest.approx(10.0 / (np.pi * np.sqrt(2)))
    assert sigma_for_resolution(10.0) == pytest.approx(2.25, abs=0.01)  # Eqn. 3.2
    with pytest.raises(InputError):
        sigma_for_resolution(-1.0)


def test_single_atom_integrates_to_its_atomic_number():
    grid = Grid.centered((40, 40, 40), 1.0)
    atom = np.array([[0.3, -1.2, 2.1]])
    density = molmap(atom, [6], 10.0, grid, dtype=np.float64)
    # the 5-sigma sphere holds all but P(chi2_3 > 25) = 1.5e-5 of the mass
    assert density.sum() * grid.spacing_in_angstroms**3 == pytest.approx(6.0 * (1 - 1.54e-5), rel=1e-6)
    # the mean and variance of the density are the atom and sigma^2 on each axis
    points = grid.points()
    w = density.ravel() / density.sum()
    mean = w @ points
    np.testing.assert_allclose(mean, atom[0], atol=1e-5)  # up to the cut-off
    var = w @ (points - mean) ** 2
    np.testing.assert_allclose(var, sigma_for_resolution(10.0) ** 2, rtol=1e-3)


def test_molmap_is_a_sum_over_atoms_weighted_by_atomic_number():
    grid = Grid.centered((24, 24, 24), 1.5)
    atoms = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, -2.0]])
    both = molmap(atoms, [6, 8], 12.0, grid, dtype=np.float64)
    first = molmap(atoms[:1], [6], 12.0, grid, dtype=np.float64)
    second = molmap(atoms[1:], [1], 12.0, grid, dtype=np.float64)
    np.testing.assert_allclose(both, first + 8 * second, rtol=1e-12, atol=1e-15)


def test_molmap_dtype_and_bad_input():
    grid = Grid.centered((8, 8, 8), 2.0)
    assert molmap(np.zeros((1, 3)), [1], 10.0, grid).dtype == np.float32
    with pytest.raises(InputError):
        molmap(np.zeros((0, 3)), [], 10.0, grid)
    with pytest.raises(InputError):
        molmap(np.array([[np.nan, 0, 0]]), [1], 10.0, grid)
    with pytest.raises(InputError):
        molmap(np.zeros((1, 3)), [1], 0.0, grid)


def test_model_center_is_the_weighted_centroid():
    atoms = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    np.testing.assert_allclose(model_center(atoms, [1, 2]), [2.0, 0.0, 0.0])


def test_default_grid_puts_the_centre_at_box_half_and_holds_the_model():
    rng = np.random.default_rng(0)
    atoms = rng.uniform(-20, 30, size=(50, 3)) + [100.0, -40.0, 7.0]
    z = rng.integers(1, 9, size=50)
    padding = molmap_padding_in_angstroms(15.0)
    grid = default_map_grid(atoms, 2.0, padding_in_angstroms=padding, atomic_numbers=z)
    n = grid.shape[0]
    assert grid.shape == (n, n, n) and n % 2 == 0
    np.testing.assert_allclose(grid.center_in_angstroms(), model_center(atoms, z), atol=1e-9)
    lo = np.array(grid.origin_in_angstroms)
    hi = lo + (n - 1) * grid.spacing_in_angstroms
    assert np.all(atoms.min(0) - padding >= lo) and np.all(atoms.max(0) + padding <= hi)
    # the whole density is in the box
    density = molmap(atoms, z, 15.0, grid, dtype=np.float64)
    assert density.sum() * 8.0 == pytest.approx(z.sum(), rel=1e-3)


def test_default_grid_with_a_given_box():
    atoms = np.array([[10.0, 20.0, 30.0]])
    grid = default_map_grid(atoms, 1.5, box=32)
    assert grid.shape == (32, 32, 32)
    np.testing.assert_allclose(grid.origin_in_angstroms, np.array([10.0, 20.0, 30.0]) - 16 * 1.5)
    # the atom sits at index 16 on every axis: the maximum of its density
    density = molmap(atoms, [1], 10.0, grid)
    assert np.unravel_index(np.argmax(density), density.shape) == (16, 16, 16)
