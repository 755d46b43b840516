"""Point-group symmetry operators in RELION's orientation (src/cryogmm/geometry/symmetry.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryogmm.errors import InputError
from cryogmm.geometry.symmetry import axis_angle_matrix, canonical_symmetry_name, symmetry_operators

TOL = 1e-9  # products of a few float64 rotations
PHI = (1.0 + np.sqrt(5.0)) / 2.0
X, Y, Z = np.eye(3)
ORDERS = {"C1": 1, "C2": 2, "C7": 7, "C12": 12, "D2": 4, "D7": 14, "T": 12, "O": 24,
          "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _contains(group, matrix, tol=TOL):
    return np.abs(group - matrix).max(axis=(1, 2)).min() < tol


def _has_axis(group, axis, fold, tol=TOL):
    return _contains(group, axis_angle_matrix(axis, 360.0 / fold), tol)


def _same_set(a, b):
    return len(a) == len(b) and all(_contains(b, m) for m in a)


def test_axis_angle_matrix_is_a_right_handed_rotation():
    rng = np.random.default_rng(0)
    for axis, angle in zip(rng.standard_normal((20, 3)), rng.uniform(-360, 360, 20)):
        unit = axis / np.linalg.norm(axis)
        expected = Rotation.from_rotvec(np.radians(angle) * unit).as_matrix()
        np.testing.assert_allclose(axis_angle_matrix(3.0 * axis, angle), expected, atol=1e-14)
    np.testing.assert_allclose(axis_angle_matrix(Z, 90.0) @ X, Y, atol=1e-15)


@pytest.mark.parametrize("name, order", ORDERS.items())
def test_order_identity_first_proper_orthonormal_distinct(name, order):
    group = symmetry_operators(name)
    assert group.shape == (order, 3, 3) and group.dtype == np.float64
    np.testing.assert_array_equal(group[0], np.eye(3))
    np.testing.assert_allclose(group @ np.swapaxes(group, 1, 2), np.broadcast_to(np.eye(3), group.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(group), 1.0, atol=1e-12)
    distances = np.abs(group[:, None] - group[None]).max(axis=(2, 3)) + np.eye(order)
    assert distances.min() > 1e-3


@pytest.mark.parametrize("name", ORDERS)
def test_closed_under_products_and_inverses(name):
    group = symmetry_operators(name)
    for a in group:
        assert _contains(group, a.T)
        for b in group:
            assert _contains(group, a @ b)


def test_order_is_deterministic():
    np.testing.assert_array_equal(symmetry_operators("I3"), symmetry_operators("i3"))


@pytest.mark.parametrize("n", [1, 2, 5, 7, 12])
def test_cyclic_axis_is_z(n):
    group = symmetry_operators(f"C{n}")
    np.testing.assert_allclose(group @ Z, np.broadcast_to(Z, (n, 3)), atol=1e-15)
    assert _has_axis(group, Z, n)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_dihedral_n_fold_on_z_and_2_fold_on_x(n):
    group = symmetry_operators(f"D{n}")
    assert _has_axis(group, Z, n) and _has_axis(group, X, 2)
    assert _same_set(group[np.abs(group[:, 2, 2] - 1.0) < TOL], symmetry_operators(f"C{n}"))


def test_tetrahedral_3_fold_on_z_and_2_folds_in_the_yz_plane_not_xz():
    group = symmetry_operators("T")
    assert _has_axis(group, Z, 3)
    assert _has_axis(group, (0.0, np.sqrt(2.0 / 3.0), np.sqrt(1.0 / 3.0)), 2)
    half_turns = group[np.abs(np.trace(group, axis1=1, axis2=2) + 1.0) < TOL]
    assert len(half_turns) == 3
    axes = np.array([np.linalg.eigh(m)[1][:, -1] for m in half_turns])  # eigenvalue +1
    assert np.abs(axes[:, 1]).min() > 0.4  # no 2-fold axis lies in the xz-plane (y = 0)


def test_octahedral_4_folds_on_x_y_z():
    group = symmetry_operators("O")
    assert all(_has_axis(group, axis, 4) for axis in (X, Y, Z))
    assert _has_axis(group, (1.0, 1.0, 1.0), 3)


@pytest.mark.parametrize("name", ["I1", "I2"])
def test_icosahedral_222_settings_have_2_folds_on_x_y_z(name):
    assert all(_has_axis(symmetry_operators(name), axis, 2) for axis in (X, Y, Z))


def test_i2_is_the_default_with_front_5_folds_in_xz_and_3_folds_in_yz():
    group = symmetry_operators("I")
    np.testing.assert_array_equal(group, symmetry_operators("I2"))
    assert _has_axis(group, (1.0, 0.0, PHI), 5) and _has_axis(group, (-1.0, 0.0, PHI), 5)
    assert _has_axis(group, (0.0, 1.0 / PHI, PHI), 3)
    assert not _has_axis(group, (0.0, 1.0, PHI), 5)


def test_i1_has_front_5_folds_in_yz_and_is_i2_turned_90_degrees_about_z():
    group = symmetry_operators("I1")
    assert _has_axis(group, (0.0, 1.0, PHI), 5) and not _has_axis(group, (1.0, 0.0, PHI), 5)
    turn = axis_angle_matrix(Z, 90.0)
    assert _same_set(group, turn @ symmetry_operators("I2") @ turn.T)
    assert not _same_set(group, symmetry_operators("I2"))


def test_i3_and_i4_5_fold_on_z_2_fold_on_y_and_mirror_images():
    i3, i4 = symmetry_operators("I3"), symmetry_operators("I4")
    for group in (i3, i4):
        assert _has_axis(group, Z, 5) and _has_axis(group, Y, 2)
    assert _has_axis(i3, (-2.0, 0.0, 1.0), 5) and not _has_axis(i3, (2.0, 0.0, 1.0), 5)
    assert _has_axis(i4, (2.0, 0.0, 1.0), 5) and not _has_axis(i4, (-2.0, 0.0, 1.0), 5)
    assert _has_axis(i3, (-1.0, 0.0, PHI), 2) and _has_axis(i4, (1.0, 0.0, PHI), 2)
    tilt = axis_angle_matrix(Y, np.degrees(np.arctan(1.0 / PHI)))  # takes (-1, 0, phi) of I2 to z
    assert _same_set(i4, tilt @ symmetry_operators("I2") @ tilt.T)
    turn = axis_angle_matrix(Z, 36.0)
    assert _same_set(i3, turn @ i4 @ turn.T) and not _same_set(i3, i4)


# Generator axes as printed (to 6-16 digits) in RELION's SymList::fill_symmetry_class.
RELION_AXES = [
    ("T", (0.0, 0.816496, 0.577350), 2, 1e-6),
    ("I2", (0.525731114, 0.0, 0.850650807), 5, 1e-7),
    ("I2", (0.0, 0.356822076, 0.934172364), 3, 1e-7),
    ("I1", (0.85065080702670, 0.0, -0.5257311142635), 5, 1e-7),
    ("I1", (0.9341723640, 0.3568220765, 0.0), 3, 1e-7),
    ("I3", (-0.5257311143, 0.0, 0.8506508070), 2, 1e-7),
    ("I3", (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428), 3, 1e-7),
    ("I4", (0.5257311143, 0.0, 0.8506508070), 2, 1e-7),
    ("I4", (0.8944271932547096, 0.0, 0.4472135909903704), 5, 1e-7),
    ("I4", (0.4911234778630044, 0.3568220764705179, 0.7946544753759428), 3, 1e-7),
]


@pytest.mark.parametrize("name, axis, fold, tol", RELION_AXES)
def test_relion_generator_axes_are_in_the_group(name, axis, fold, tol):
    assert _has_axis(symmetry_operators(name), axis, fold, tol)


@pytest.mark.parametrize("name", ["C5", "D3", "T", "O", "I1", "I2", "I3", "I4"])
def test_symmetrised_point_set_is_invariant_under_every_operator(name):
    group = symmetry_operators(name)
    points = np.random.default_rng(1).uniform(-50.0, 50.0, (4, 3))  # Å
    orbit = np.einsum("gij,pj->gpi", group, points).reshape(-1, 3)
    for operator in group:
        moved = orbit @ operator.T
        nearest = np.linalg.norm(moved[:, None] - orbit[None], axis=-1).min(axis=1)
        assert nearest.max() < 1e-9
    assert len(orbit) == len(group) * len(points)


@pytest.mark.parametrize("name, canonical", [("c1", "C1"), ("c4", "C4"), ("C04", "C4"), ("d7", "D7"),
                                             (" D12 ", "D12"), ("t", "T"), ("o", "O"), ("i", "I2"),
                                             ("I", "I2"), ("i1", "I1"), ("I3", "I3"), ("i4", "I4")])
def test_names_are_case_insensitive_and_canonical(name, canonical):
    assert canonical_symmetry_name(name) == canonical
    np.testing.assert_array_equal(symmetry_operators(name), symmetry_operators(canonical))


BAD_NAMES = ["X3", "C0", "D1", "D0", "Cx", "", "H", "I5", "IH", "C-2", "D2h", "C 4", "OO"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_raise_input_error_naming_the_value(name):
    for function in (symmetry_operators, canonical_symmetry_name):
        with pytest.raises(InputError, match=re.escape(f"symmetry {name!r}: ") + ".*C1, Cn, Dn") as info:
            function(name)
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_non_string_name_raises_input_error():
    with pytest.raises(InputError, match="unknown symmetry 4"):
        symmetry_operators(4)
