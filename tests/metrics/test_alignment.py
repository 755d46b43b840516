"""Rotation errors up to a global rotation and the hand (thesis 3.4.3), and map alignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryogmm.geometry.so3 import random_rotations, rotation_angle_in_degrees
from cryogmm.metrics.alignment import MIRROR, align_maps, rotation_errors

S = np.diag([1.0, 1.0, -1.0])


def _c4() -> np.ndarray:
    """The four rotations about z by multiples of 90 degrees."""
    c, s = np.rint(np.cos(np.arange(4) * np.pi / 2)), np.rint(np.sin(np.arange(4) * np.pi / 2))
    zero, one = np.zeros(4), np.ones(4)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


def _perturb(rng, rotations, degrees):
    """Each rotation composed with a random small rotation of about `degrees`."""
    axes = rng.standard_normal((len(rotations), 3))
    axes *= np.radians(degrees) / np.linalg.norm(axes, axis=1, keepdims=True)
    return rotations @ Rotation.from_rotvec(axes).as_matrix()


def test_recovers_the_global_rotation_without_reflection():
    rng = np.random.default_rng(0)
    truth = random_rotations(rng, 25)
    a = random_rotations(rng, 1)[0]
    result = rotation_errors(truth @ a.T, truth)  # R̂ᵢ = Rᵢ Aᵀ (Eqn. 3.13)
    assert not result.mirrored
    np.testing.assert_allclose(result.global_rotation, a, atol=1e-10)
    np.testing.assert_allclose(result.errors_in_degrees, 0.0, atol=1e-5)
    assert result.errors_in_degrees.shape == (25,)
    assert result.n_within(1.0) == 25


def test_recovers_the_global_rotation_of_the_other_hand():
    rng = np.random.default_rng(1)
    truth = random_rotations(rng, 25)
    a = random_rotations(rng, 1)[0]
    result = rotation_errors(S @ truth @ a.T @ S, truth)  # R̂ᵢ = S Rᵢ Aᵀ S (Eqn. 3.17)
    assert result.mirrored
    np.testing.assert_allclose(result.global_rotation, a, atol=1e-10)
    np.testing.assert_allclose(result.errors_in_degrees, 0.0, atol=1e-5)


@pytest.mark.parametrize("mirrored", [False, True])
def test_three_outliers_among_25_are_flagged_and_do_not_pull_the_global_rotation(mirrored):
    rng = np.random.default_rng(2)
    truth = random_rotations(rng, 25)
    a = random_rotations(rng, 1)[0]
    estimated = _perturb(rng, truth @ a.T, 1.0)  # every estimate about 1 degree off
    outliers = np.array([3, 11, 20])
    estimated[outliers] = random_rotations(rng, 3)
    if mirrored:
        estimated = S @ estimated @ S
    result = rotation_errors(estimated, truth)
    assert result.mirrored == mirrored
    assert rotation_angle_in_degrees(result.global_rotation, a) < 0.5
    np.testing.assert_array_equal(np.flatnonzero(result.errors_in_degrees > 5.0), outliers)
    assert result.n_within(5.0) == 22
    assert np.all(result.errors_in_degrees[result.errors_in_degrees <= 5.0] < 2.0)


@pytest.mark.parametrize("mirrored", [False, True])
def test_symmetry_equivalent_estimates_have_no_error(mirrored):
    rng = np.random.default_rng(3)
    truth = random_rotations(rng, 40)
    a = random_rotations(rng, 1)[0]
    ops = _c4()
    # each estimate matches its image only up to a C4 operator of the (symmetric) true map
    estimated = truth @ ops[rng.integers(0, 4, size=40)] @ a.T
    if mirrored:
        estimated = S @ estimated @ S
    result = rotation_errors(estimated, truth, symmetry_operators=ops)
    assert result.mirrored == mirrored
    np.testing.assert_allclose(result.errors_in_degrees, 0.0, atol=1e-5)
    # A is defined up to the symmetry: A S_g for some g
    assert min(rotation_angle_in_degrees(result.global_rotation, a @ op) for op in ops) < 1e-5
    # without the operators most estimates are 90 or 180 degrees off
    plain = rotation_errors(estimated, truth)
    assert plain.n_within(1.0) < 30


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="P, 3, 3"):
        rotation_errors(np.eye(3)[None].repeat(3, 0), np.eye(3)[None].repeat(2, 0))
    with pytest.raises(ValueError, match="G, 3, 3"):
        rotation_errors(np.eye(3)[None], np.eye(3)[None], symmetry_operators=np.eye(3))


def _blob_map(n, centres, sigma):
    """Sum of unit Gaussians at `centres` (x, y, z in voxels about the box centre n // 2)."""
    z, y, x = np.indices((n, n, n)) - n // 2
    total = np.zeros((n, n, n))
    for cx, cy, cz in centres:
        total += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return total


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_maps_recovers_a_known_transform(mirrored):
    n, voxel = 48, 2.0
    rng = np.random.default_rng(10 + mirrored)
    centres = rng.standard_normal((30, 3)) * np.array([7.0, 5.0, 3.5])  # no symmetry, elongated
    reference = _blob_map(n, centres, 2.0)
    rotation = random_rotations(rng, 1)[0]
    shift = np.array([2.5, -1.5, 3.0])  # voxels
    flip = MIRROR if mirrored else np.eye(3)
    moving = _blob_map(n, centres @ (flip @ rotation).T + shift, 2.0)  # reference point x at F R x + t
    result = align_maps(reference, moving, voxel, rng=np.random.default_rng(0))
    assert result.mirrored == mirrored
    assert rotation_angle_in_degrees(result.rotation, rotation) < 2.0
    np.testing.assert_allclose(result.shift_in_angstroms, shift * voxel, atol=0.5)
    assert result.cross_correlation > 0.99
    assert result.aligned.shape == reference.shape and result.aligned.dtype == np.float32


def test_align_maps_without_mirror_keeps_the_hand():
    n = 32
    rng = np.random.default_rng(12)
    centres = rng.standard_normal((20, 3)) * np.array([5.0, 3.5, 2.5])
    reference = _blob_map(n, centres, 1.5)
    rotation = random_rotations(rng, 1)[0]
    moving = _blob_map(n, centres @ rotation.T, 1.5)
    result = align_maps(reference, moving, 1.0, allow_mirror=False, n_rotations=1500)
    assert not result.mirrored
    assert rotation_angle_in_degrees(result.rotation, rotation) < 2.0
    assert result.cross_correlation > 0.99
