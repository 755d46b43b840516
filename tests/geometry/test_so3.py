"""RELION ZYZ Euler angles and rotation matrices (CONVENTIONS.md), uniform random rotations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from conftest import tolerance
from cryogmm.geometry.so3 import (euler_to_matrix, matrix_to_euler, quaternion_to_matrix, random_rotations,
                                  rotation_angle_in_degrees)

TOL = 1e-12  # float64 trigonometry on matrices of norm one


def _random_angles(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)


def _same_angle(a, b):
    """Angles equal modulo 360 degrees."""
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


def test_euler_to_matrix_is_the_conventions_matrix():
    rot, tilt, psi = _random_angles(200)
    expected = Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], 1), degrees=True).as_matrix()
    expected = np.swapaxes(expected, -1, -2)
    np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), expected, atol=TOL)
    # one set of angles, and broadcasting a scalar against arrays
    a = euler_to_matrix(30.0, 40.0, 50.0)
    assert a.shape == (3, 3)
    np.testing.assert_allclose(a, Rotation.from_euler("ZYZ", [30, 40, 50], degrees=True).as_matrix().T, atol=TOL)
    assert euler_to_matrix(rot, 90.0, 0.0).shape == (200, 3, 3)


def test_a_rot_of_90_degrees_moves_x_to_minus_y():
    # A = Rz(rot)^T: the map's x axis lands on -y in the image (a passive rotation of the frame)
    np.testing.assert_allclose(euler_to_matrix(90, 0, 0) @ [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], atol=TOL)
    # A = Ry(tilt)^T maps z to (-sin tilt, 0, cos tilt)
    np.testing.assert_allclose(euler_to_matrix(0, 90, 0) @ [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], atol=TOL)


def test_round_trip_through_matrix_to_euler():
    rot, tilt, psi = _random_angles(500, seed=1)
    matrices = euler_to_matrix(rot, tilt, psi)
    rot2, tilt2, psi2 = matrix_to_euler(matrices)
    assert np.all((0 <= tilt2) & (tilt2 <= 180))
    assert _same_angle(rot, rot2).max() < 1e-8
    assert np.abs(tilt - tilt2).max() < 1e-8
    assert _same_angle(psi, psi2).max() < 1e-8
    np.testing.assert_allclose(euler_to_matrix(rot2, tilt2, psi2), matrices, atol=TOL)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_round_trip_at_the_gimbal_lock(tilt):
    rng = np.random.default_rng(2)
    rot, psi = rng.uniform(-180, 180, 50), rng.uniform(-180, 180, 50)
    matrices = euler_to_matrix(rot, tilt, psi)
    rot2, tilt2, psi2 = matrix_to_euler(matrices)
    np.testing.assert_allclose(tilt2, tilt, atol=1e-6)
    np.testing.assert_array_equal(psi2, 0.0)
    # only rot + psi (tilt 0) or rot - psi (tilt 180) is defined; psi is set to 0
    assert _same_angle(rot2, rot + psi if tilt == 0 else rot - psi).max() < 1e-8
    np.testing.assert_allclose(euler_to_matrix(rot2, tilt2, psi2), matrices, atol=TOL)


def test_matrix_to_euler_of_scipy_matrices():
    # any proper rotation (not only ones built here) goes back to a matrix it came from
    matrices = Rotation.random(300, random_state=4).as_matrix()
    np.testing.assert_allclose(euler_to_matrix(*matrix_to_euler(matrices)), matrices, atol=1e-10)


def test_random_rotations_are_proper_rotations():
    rng = np.random.default_rng(5)
    r = random_rotations(rng, 1000)
    assert r.shape == (1000, 3, 3)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=TOL)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=TOL)
    np.testing.assert_array_equal(random_rotations(np.random.default_rng(5), 1000), r)


def test_random_rotations_are_uniform():
    n = 20000
    r = random_rotations(np.random.default_rng(6), n)
    # under the Haar measure every matrix entry has mean 0 and variance 1/3
    assert np.abs(r.mean(0)).max() < 4.5 * np.sqrt(1 / (3 * n))
    # the rotation angle omega has the density (1 - cos omega) / pi on [0, pi],
    # i.e. the cumulative distribution (omega - sin omega) / pi
    omega = np.radians(rotation_angle_in_degrees(np.eye(3), r))
    assert stats.kstest(omega, lambda w: (w - np.sin(w)) / np.pi).pvalue > 1e-3
    # and the rotation axis is uniform on the sphere: its z component is uniform on [-1, 1]
    axis = Rotation.from_matrix(r).as_rotvec()
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    assert stats.kstest(axis[:, 2], stats.uniform(-1, 2).cdf).pvalue > 1e-3


def test_quaternions_and_geodesic_distance_match_scipy():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((100, 4)) * 3  # not normalised
    expected = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy takes (x, y, z, w)
    np.testing.assert_allclose(quaternion_to_matrix(q), expected, atol=TOL)
    a, b = Rotation.random(100, random_state=8), Rotation.random(100, random_state=9)
    angles = rotation_angle_in_degrees(a.as_matrix(), b.as_matrix())
    np.testing.assert_allclose(angles, np.degrees((a.inv() * b).magnitude()), atol=1e-6)
    assert rotation_angle_in_degrees(np.eye(3), euler_to_matrix(0, 0, 30)) == pytest.approx(30.0, rel=tolerance(np.float64))


@pytest.mark.parametrize("angles, expected", [
    ((-115.96, 0.001, 115.96), (0.0, 0.0, 0.0)),  # the identity up to rounding noise
    ((30.0, 179.999, 10.0), (20.0, 180.0, 0.0)),
    ((30.0, 0.0, 10.0), (40.0, 0.0, 0.0)),
    ((190.0, 20.0, -190.0), (-170.0, 20.0, 170.0)),
    ((-180.0, 10.0, 180.0), (180.0, 10.0, 180.0)),
    ((10.0, 0.02, 5.0), (10.0, 0.02, 5.0)),  # above the tolerance: kept
])
def test_canonical_euler_angles(angles, expected):
    from cryogmm.geometry.so3 import canonical_euler_in_degrees

    result = canonical_euler_in_degrees(euler_to_matrix(*angles))
    np.testing.assert_allclose(result, expected, atol=1e-6)
    matrix = euler_to_matrix(*angles)
    assert rotation_angle_in_degrees(euler_to_matrix(*result), matrix) < 0.002


def test_axis_and_angle():
    from cryogmm.geometry.so3 import axis_and_angle_in_degrees
    from cryogmm.geometry.symmetry import axis_angle_matrix

    axis, angle = axis_and_angle_in_degrees(axis_angle_matrix((1.0, 2.0, 2.0), 116.0))
    np.testing.assert_allclose(axis, np.array([1.0, 2.0, 2.0]) / 3.0, atol=1e-12)
    assert angle == pytest.approx(116.0, abs=1e-9)
    axis, angle = axis_and_angle_in_degrees(np.eye(3))
    assert angle == 0.0 and axis.tolist() == [0.0, 0.0, 1.0]
