"""HEALPix orientation grids: counts, spacing, the RELION Euler convention, children, local
perturbations and nearest orientations, checked against healpy and brute force."""

from __future__ import annotations

import healpy
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryogmm.errors import InputError
from cryogmm.geometry import healpix
from cryogmm.geometry.healpix import (OrientationGrid, angular_step_in_degrees, children, global_grid,
                                      local_perturbations, nearest_orientation, order_for_step)
from cryogmm.geometry.so3 import euler_to_matrix, random_rotations, rotation_angle_in_degrees

TOL = 1e-12  # float64 trigonometry on matrices of norm one


def test_angular_step_and_order_for_step():
    assert [angular_step_in_degrees(o) for o in range(4)] == [60.0, 30.0, 15.0, 7.5]
    assert order_for_step(15.0) == 2
    assert order_for_step(14.9) == 3
    assert order_for_step(7.6) == 3
    assert order_for_step(100.0) == 0
    assert order_for_step(60.0 / 256) == 8


@pytest.mark.parametrize("order", [-1, 9, 2.0, True, "2"])
def test_bad_orders_raise(order):
    with pytest.raises(InputError, match="order"):
        angular_step_in_degrees(order)


@pytest.mark.parametrize("step", [0.0, -1.0, np.nan, 0.2, "fine"])
def test_bad_steps_raise(step):
    with pytest.raises(InputError, match="step"):
        order_for_step(step)


@pytest.mark.parametrize("order, expected", [(0, 72), (1, 576), (2, 4608), (3, 36864)])
def test_global_grid_counts(order, expected):
    grid = global_grid(order)
    n_psi = 360.0 / grid.angular_step_in_degrees
    assert len(grid) == expected == healpy.nside2npix(2**order) * n_psi
    assert grid.matrices.shape == (expected, 3, 3) and grid.euler_in_degrees.shape == (expected, 3)
    # every (direction, psi) pair exactly once
    pairs = grid.direction_index * int(n_psi) + grid.psi_index
    np.testing.assert_array_equal(np.sort(pairs), np.arange(expected))
    psi = grid.euler_in_degrees[:, 2]
    np.testing.assert_allclose(psi, grid.psi_index * grid.angular_step_in_degrees, atol=TOL)
    assert psi.min() == 0.0 and psi.max() < 360.0


def test_global_grid_refuses_huge_orders():
    with pytest.raises(InputError, match="children"):
        global_grid(healpix.MAX_GLOBAL_ORDER + 1)
    with pytest.raises(InputError, match="order"):
        global_grid(-1)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_neighbouring_directions_are_about_one_step_apart(order):
    grid = global_grid(order)
    first = np.unique(grid.direction_index, return_index=True)[1]
    directions = grid.matrices[first, 2, :]  # viewing directions, checked against healpy below
    cosine = directions @ directions.T
    np.fill_diagonal(cosine, -1.0)
    nearest_in_degrees = np.degrees(np.arccos(np.clip(cosine.max(axis=1), -1.0, 1.0)))
    assert abs(nearest_in_degrees.mean() / grid.angular_step_in_degrees - 1.0) < 0.3


@pytest.mark.parametrize("order", [0, 2])
def test_grid_follows_the_relion_euler_convention(order):
    grid = global_grid(order)
    np.testing.assert_allclose(euler_to_matrix(*grid.euler_in_degrees.T), grid.matrices, atol=TOL)
    # A maps the viewing direction (rot, tilt) onto the image z axis: A^T z, the third row of A,
    # is the pixel centre
    centres = np.stack(healpy.pix2vec(2**order, grid.direction_index, nest=True), axis=-1)
    np.testing.assert_allclose(grid.matrices[:, 2, :], centres, atol=TOL)
    np.testing.assert_allclose(grid.matrices @ centres[:, :, None], np.broadcast_to([[0.0], [0.0], [1.0]],
                                                                                   (len(grid), 3, 1)), atol=TOL)


def test_orientation_grid_checks_shapes():
    grid = global_grid(0)
    with pytest.raises(InputError, match="matrices"):
        OrientationGrid(order=0, euler_in_degrees=grid.euler_in_degrees, matrices=grid.matrices[:-1],
                        direction_index=grid.direction_index, psi_index=grid.psi_index)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_children_lie_around_their_parent_on_the_finer_grid(order):
    parents = global_grid(order)
    grid, parent = children(order, parents.direction_index, parents.psi_index)
    assert grid.order == order + 1 and len(grid) == 8 * len(parents)
    np.testing.assert_array_equal(parent, np.repeat(np.arange(len(parents)), 8))
    # the child directions are the sub-pixels of the parent's pixel
    centres = np.stack(healpy.pix2vec(2 ** (order + 1), grid.direction_index, nest=True), axis=-1)
    np.testing.assert_array_equal(healpy.vec2pix(2**order, *centres.T, nest=True), parents.direction_index[parent])
    assert np.all(np.bincount(grid.direction_index) == 2 * 6 * 2**order)  # each sub-pixel under one parent
    # each child is the orientation of the finer global grid with its indices
    finer = global_grid(order + 1)
    n_psi = 6 * 2 ** (order + 1)
    np.testing.assert_allclose(finer.matrices[grid.direction_index * n_psi + grid.psi_index], grid.matrices,
                               atol=TOL)
    distance = rotation_angle_in_degrees(grid.matrices, parents.matrices[parent])
    assert distance.max() <= parents.angular_step_in_degrees


def _polar_rotations(rng, n, *, within_in_degrees=20.0):
    """n uniform rotations whose tilt is within `within_in_degrees` of 0 or 180."""
    r = random_rotations(rng, 40 * n)
    return r[np.abs(r[:, 2, 2]) > np.cos(np.radians(within_in_degrees))][:n]


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("where", ["anywhere", "near a pole"])
def test_children_of_the_nearest_parent_refine_it(order, where):
    rng = np.random.default_rng(order)
    rotations = random_rotations(rng, 300) if where == "anywhere" else _polar_rotations(rng, 300)
    assert len(rotations) == 300
    parents = global_grid(order)
    nearest = nearest_orientation(parents, rotations)
    grid, _ = children(order, parents.direction_index[nearest], parents.psi_index[nearest])
    to_parent = rotation_angle_in_degrees(parents.matrices[nearest], rotations)
    to_child = rotation_angle_in_degrees(grid.matrices.reshape(-1, 8, 3, 3), rotations[:, None]).min(axis=1)
    # one order finer halves the spacing; children that keep the parent's psi near a pole (tilt
    # < 20 degrees) are no closer than the parent itself at order 3
    assert to_child.mean() < 0.65 * to_parent.mean()


def test_children_check_their_input():
    with pytest.raises(InputError, match="order"):
        children(healpix.MAX_ORDER, [0], [0])
    with pytest.raises(InputError, match="direction_index"):
        children(0, [12], [0])
    with pytest.raises(InputError, match="psi_index"):
        children(0, [0], [6])
    with pytest.raises(InputError, match="integers"):
        children(0, [0.5], [0])
    with pytest.raises(InputError, match="one of each"):
        children(0, [0, 1], [0])


def test_local_perturbations_sample_the_ball():
    step, radius = 1.0, 8.0
    deltas = local_perturbations(step, radius)
    np.testing.assert_allclose(deltas[0], np.eye(3), atol=TOL)
    angles = rotation_angle_in_degrees(deltas, np.eye(3))
    assert angles.max() <= radius + 1e-9
    assert angles.max() > radius - 1e-9  # the lattice points on the sphere are kept
    assert np.all(np.diff(angles) >= -1e-9)
    assert abs(len(deltas) / (4.0 / 3.0 * np.pi * (radius / step) ** 3) - 1.0) < 0.05
    np.testing.assert_allclose(np.swapaxes(deltas, 1, 2) @ deltas, np.broadcast_to(np.eye(3), deltas.shape),
                               atol=TOL)
    assert len(local_perturbations(5.0, 0.0)) == 1


def test_local_perturbations_cover_the_ball():
    step, radius = 2.5, 10.0
    deltas = local_perturbations(step, radius)
    rng = np.random.default_rng(4)
    axis = rng.standard_normal((2000, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.radians(radius / 2.0) * rng.uniform(size=(2000, 1)) ** (1.0 / 3.0)
    rotations = Rotation.from_rotvec(axis * angle).as_matrix()
    gap = rotation_angle_in_degrees(deltas[None], rotations[:, None]).min(axis=1)
    assert gap.max() <= step * np.sqrt(3.0) / 2.0 * 1.05
    assert gap.max() > step / 2.0  # not denser than the step says


@pytest.mark.parametrize("step, radius", [(0.0, 5.0), (1.0, -1.0), (1.0, 180.0), (0.01, 10.0)])
def test_local_perturbations_check_their_input(step, radius):
    with pytest.raises(InputError):
        local_perturbations(step, radius)


@pytest.mark.parametrize("block", [None, 7])
def test_nearest_orientation_agrees_with_brute_force(monkeypatch, block):
    if block is not None:  # uneven blocks of queries and of grid rows
        monkeypatch.setattr(healpix, "_BLOCK", block)
    grid = global_grid(2 if block is None else 1)
    rotations = random_rotations(np.random.default_rng(5), 20)
    expected = [int(np.argmin(rotation_angle_in_degrees(grid.matrices, r))) for r in rotations]
    np.testing.assert_array_equal(nearest_orientation(grid, rotations), expected)
    np.testing.assert_array_equal(nearest_orientation(grid, grid.matrices[:50]), np.arange(50))
    assert nearest_orientation(grid, rotations.reshape(4, 5, 3, 3)).shape == (4, 5)


def test_nearest_orientation_checks_its_input():
    grid = global_grid(0)
    with pytest.raises(InputError, match="shape"):
        nearest_orientation(grid, np.zeros((4, 3)))
    with pytest.raises(InputError, match="finite"):
        nearest_orientation(grid, np.full((1, 3, 3), np.nan))
