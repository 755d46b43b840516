"""Aligned class averages, defocus groups and effective CTFs, against exact projections."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, ctf_images
from cryogmm.geometry.so3 import euler_to_matrix
from cryogmm.preprocess.class_average import (aligned_ctf_parameters, align_images, class_averages,
                                              defocus_groups)
from cryogmm.simulate import ctf_particle_images, model_center, project_atoms

BOX = 48
PIXEL = 2.0  # sigma of the 15 Å atoms = 1.7 px: cubic interpolation errors ~1e-3
RESOLUTION = 15.0
CLASS_ANGLES = [(30.0, 60.0), (-110.0, 140.0)]  # (rot, tilt) of two classes


@pytest.fixture
def atoms():
    """An asymmetric L of atoms with a bump, centred on its weighted centroid (radius ~20 Å)."""
    coordinates = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [16.0, 0.0, 0.0], [24.0, 0.0, 0.0],
                            [0.0, 8.0, 0.0], [0.0, 16.0, 0.0], [0.0, 0.0, 10.0]])
    z = np.array([6.0, 7.0, 8.0, 16.0, 6.0, 8.0, 16.0])
    return coordinates - model_center(coordinates, z), z


def _pearson(a, b, mask=None):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if mask is not None:
        a, b = a[..., mask], b[..., mask]
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _disc(n, margin=2):
    y, x = np.mgrid[:n, :n] - n // 2
    return x * x + y * y < (n // 2 - margin) ** 2


def _particles(rng, atoms, n_per_class, *, max_shift=6.0):
    """Poses of particles of the two classes: class index, psi, shifts, rotations A_i."""
    classes = np.repeat(np.arange(len(CLASS_ANGLES)), n_per_class)
    psi = rng.uniform(-180.0, 180.0, classes.size)
    shifts = rng.uniform(-max_shift, max_shift, (classes.size, 2))
    rot, tilt = np.array(CLASS_ANGLES)[classes].T
    return classes, psi, shifts, euler_to_matrix(rot, tilt, psi)


def _class_projections(atoms, box=BOX):
    rot, tilt = np.array(CLASS_ANGLES).T
    return project_atoms(*atoms, euler_to_matrix(rot, tilt, 0.0), None, RESOLUTION, box, PIXEL, dtype=np.float64)


def test_aligned_particles_equal_their_class_projection(atoms):
    """Exact projections at (rot, tilt, psi) with shifts, aligned, match the projection at psi = 0."""
    rng = np.random.default_rng(1)
    classes, psi, shifts, rotations = _particles(rng, atoms, 6)
    images = project_atoms(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, dtype=np.float64)
    truth = _class_projections(atoms)[classes]
    aligned = align_images(images, psi, shifts, PIXEL)
    for i in range(len(images)):
        assert _pearson(aligned[i], truth[i]) > 0.99999, i  # measured >= 0.9999995
        assert np.abs(aligned[i] - truth[i]).max() < 5e-3 * truth[i].max()  # cubic interpolation: 2.4e-3
    # the opposite rotation sign, or the opposite shift sign, does not match
    wrong_rotation = align_images(images, -psi, shifts, PIXEL)
    wrong_shift = align_images(images, psi, -shifts, PIXEL)
    assert np.median([_pearson(wrong_rotation[i], truth[i]) for i in range(len(images))]) < 0.7  # 0.49
    assert np.median([_pearson(wrong_shift[i], truth[i]) for i in range(len(images))]) < 0.7  # 0.36


def test_an_integer_shift_is_undone_exactly():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, 16, 16))
    moved = np.roll(image, (2, -3), axis=(1, 2))  # particle centre moved by x = -3, y = +2 pixels
    aligned = align_images(moved, [0.0], [[-3 * PIXEL, 2 * PIXEL]], PIXEL)
    np.testing.assert_allclose(aligned, image, atol=1e-12)


def test_a_quarter_turn_is_a_transposition_of_the_pixels():
    """psi = 90: p(u) = c(Rz(90) u), so c(x, y) = p(y, -x) about the centre pixel."""
    rng = np.random.default_rng(3)
    c = rng.normal(size=(9, 9))
    # p(x, y) = c(-y, x): row index y, column x, centre 4
    p = np.empty_like(c)
    for row in range(9):
        for col in range(9):
            x, y = col - 4, row - 4
            p[row, col] = c[x + 4, -y + 4]
    np.testing.assert_allclose(align_images(p[None], [90.0], None, 1.0)[0], c, atol=1e-12)


def test_class_averages_of_noise_free_particles_are_the_class_projections(atoms):
    rng = np.random.default_rng(4)
    classes, psi, shifts, rotations = _particles(rng, atoms, 8)
    images = project_atoms(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL)
    result = class_averages(images, psi, shifts, classes + 1, PIXEL)
    truth = _class_projections(atoms)
    np.testing.assert_array_equal(result.class_ids, [1, 2])
    np.testing.assert_array_equal(result.counts, [8, 8])
    np.testing.assert_array_equal(result.group_weights, [[8.0], [8.0]])
    assert result.ctfs is None and result.group_ctfs is None and result.polarity == -1
    for c in range(2):
        assert _pearson(result.averages[c], truth[c]) > 0.9999  # measured 0.9999997
        np.testing.assert_array_equal(result.group_images[c, 0], result.averages[c])
    assert _pearson(result.averages[0], truth[1]) < 0.7  # the classes differ (0.58)


def test_rotating_an_image_rotates_its_astigmatic_ctf(atoms):
    """Aligned image of one CTF particle = the class projection under the CTF with angle + psi."""
    rng = np.random.default_rng(5)
    n_pad = 2 * BOX
    truth = np.zeros((n_pad, n_pad))
    start = n_pad // 2 - BOX // 2
    truth[start:start + BOX, start:start + BOX] = _class_projections(atoms)[0]  # fits in the box
    disc = _disc(BOX)
    for psi in (35.0, -120.0):
        params = CTFParameters(9000.0, 5000.0, 20.0)
        rotation = euler_to_matrix(*CLASS_ANGLES[0], psi)[None]
        shift = rng.uniform(-4, 4, (1, 2))
        image = ctf_particle_images(*atoms, rotation, shift, RESOLUTION, BOX, PIXEL, params, dtype=np.float64)
        aligned = align_images(image, [psi], shift, PIXEL)[0]
        errors = {}
        for name, angle in (("angle + psi", 20.0 + psi), ("angle - psi", 20.0 - psi), ("angle", 20.0)):
            ctf = ctf_images(CTFParameters(9000.0, 5000.0, angle), n_pad, PIXEL)[0]
            model = -np.fft.ifft2(ctf * np.fft.fft2(truth)).real[start:start + BOX, start:start + BOX]
            errors[name] = np.abs(aligned - model)[disc].max() / np.abs(aligned).max()
        assert errors["angle + psi"] < 3e-3, errors  # interpolation only: measured 1.0e-3, 1.3e-3
        assert errors["angle - psi"] > 0.1 and errors["angle"] > 0.1, errors  # measured 0.25 to 0.36
        rotated = aligned_ctf_parameters(params, [psi])
        assert rotated.defocus_angle_in_degrees[0] == pytest.approx((20.0 + psi) % 360.0)


def test_group_averages_are_the_group_ctfs_applied_to_the_class_projection(atoms):
    """Noise-free astigmatic CTF particles: z_g = -f_g * y, f_g the mean aligned CTF (Eqn. 4.3)."""
    rng = np.random.default_rng(6)
    classes, psi, shifts, rotations = _particles(rng, atoms, 12, max_shift=4.0)
    defocus = rng.uniform(6000.0, 12000.0, classes.size)
    params = CTFParameters(defocus + 400.0, defocus - 400.0, rng.uniform(0.0, 180.0, classes.size))
    images = ctf_particle_images(*atoms, rotations, shifts, RESOLUTION, BOX, PIXEL, params, dtype=np.float64)
    n_pad = 2 * BOX
    result = class_averages(images, psi, shifts, classes, PIXEL, ctf_parameters=params, n_defocus_groups=3,
                            ctf_box=n_pad)
    assert result.group_ctfs.shape == (2, 3, n_pad, n_pad) and result.group_images.shape == (2, 3, BOX, BOX)
    truth = np.zeros((2, n_pad, n_pad))
    start = n_pad // 2 - BOX // 2
    truth[:, start:start + BOX, start:start + BOX] = _class_projections(atoms)
    disc = _disc(BOX)
    for c in range(2):
        for g in range(3):
            if result.group_weights[c, g] == 0:
                continue
            model = result.polarity * np.fft.ifft2(result.group_ctfs[c, g] * np.fft.fft2(truth[c])).real
            model = model[start:start + BOX, start:start + BOX]
            z = result.group_images[c, g]
            error = np.abs(z - model)[disc].max() / np.abs(z).max()
            assert error < 3e-3, (c, g, error)  # interpolation only: measured 0.6e-3 to 1.3e-3
        # the class average and its weight-averaged CTF obey the same model
        model = result.polarity * np.fft.ifft2(result.ctfs[c] * np.fft.fft2(truth[c])).real
        model = model[start:start + BOX, start:start + BOX]
        assert np.abs(result.averages[c] - model)[disc].max() < 3e-3 * np.abs(result.averages[c]).max()
    # weights, ranges and the class average as the weighted mean of the groups
    np.testing.assert_array_equal(result.group_weights.sum(axis=1), [12, 12])
    weighted = np.einsum("cg,cgyx->cyx", result.group_weights, result.group_images) / 12
    np.testing.assert_allclose(result.averages, weighted, atol=1e-12)
    weighted = np.einsum("cg,cgyx->cyx", result.group_weights, result.group_ctfs) / 12
    np.testing.assert_allclose(result.ctfs, weighted, atol=1e-12)
    for c in range(2):
        mean = params.mean_defocus_in_angstroms[classes == c]
        np.testing.assert_allclose(result.group_defocus_ranges[c, [0, -1], [0, 1]], [mean.min(), mean.max()])


def test_with_default_ctf_box_the_ctfs_are_on_the_image_grid(atoms):
    """ctf_box = n: the group CTF is the mean of the members' aligned CTFs on the n x n grid."""
    rng = np.random.default_rng(7)
    images = rng.normal(size=(5, 16, 16))
    psi = rng.uniform(-180, 180, 5)
    params = CTFParameters(np.array([1e4, 1.1e4, 2e4, 2.1e4, 3e4]), 9000.0, 10.0)
    result = class_averages(images, psi, None, np.zeros(5, dtype=int), PIXEL, ctf_parameters=params,
                            n_defocus_groups=2)
    np.testing.assert_array_equal(result.group_weights, [[2.0, 3.0]])
    expected = ctf_images(aligned_ctf_parameters(params, psi)[2:], 16, PIXEL).mean(axis=0)
    np.testing.assert_allclose(result.group_ctfs[0, 1], expected, atol=1e-12)
    np.testing.assert_allclose(result.group_images[0, 0], align_images(images[:2], psi[:2], None, PIXEL).mean(0),
                               atol=1e-12)


def test_defocus_groups_split_the_range_into_equal_intervals():
    group, edges = defocus_groups([1000.0, 1100.0, 1900.0, 2000.0, 1499.0, 1501.0], 2)
    np.testing.assert_array_equal(group, [0, 0, 1, 1, 0, 1])
    np.testing.assert_allclose(edges, [1000.0, 1500.0, 2000.0])
    # G evenly spaced values (the simulation's groups) fall into G different intervals
    values = np.linspace(8000.0, 30000.0, 7)
    np.testing.assert_array_equal(defocus_groups(np.repeat(values, 3), 7)[0], np.repeat(np.arange(7), 3))
    group, edges = defocus_groups([5000.0, 5000.0], 3)  # one value: all in the first group
    np.testing.assert_array_equal(group, [0, 0])
    np.testing.assert_allclose(edges, 5000.0)


def test_empty_groups_have_weight_zero():
    images = np.ones((3, 8, 8))
    params = CTFParameters(np.array([1e4, 1e4, 3e4]), np.array([1e4, 1e4, 3e4]))
    result = class_averages(images, np.zeros(3), None, np.ones(3, dtype=int), PIXEL, ctf_parameters=params,
                            n_defocus_groups=4)
    np.testing.assert_array_equal(result.group_weights, [[2.0, 0.0, 0.0, 1.0]])
    assert not result.group_images[0, 1:3].any() and not result.group_ctfs[0, 1:3].any()


@pytest.mark.parametrize("change, message", [
    ({"classes": np.zeros(2)}, "class labels"),
    ({"classes": np.array([0.5, 1.0, 1.0])}, "integers"),
    ({"n_defocus_groups": 2}, "CTF parameters"),
    ({"n_defocus_groups": 0}, "defocus groups"),
    ({"psi": np.zeros(2)}, "in-plane angles"),
    ({"psi": np.array([0.0, np.nan, 0.0])}, "rlnAnglePsi"),
    ({"shifts": np.zeros((2, 2))}, "shifts"),
    ({"ctf": CTFParameters(np.full(2, 1e4), 1e4)}, "CTF parameter sets"),
    ({"ctf": CTFParameters(np.full(3, 1e4), 1e4), "ctf_box": 4}, "CTF box"),
    ({"polarity": 0}, "polarity"),
    ({"images": np.zeros((3, 8, 6))}, "square"),
])
def test_bad_input_is_refused(change, message):
    args = {"images": np.zeros((3, 8, 8)), "psi": np.zeros(3), "shifts": np.zeros((3, 2)),
            "classes": np.ones(3, dtype=int), "ctf": None, "n_defocus_groups": 1, "polarity": -1, "ctf_box": None}
    args.update(change)
    with pytest.raises(InputError, match=message):
        class_averages(args["images"], args["psi"], args["shifts"], args["classes"], PIXEL,
                       ctf_parameters=args["ctf"], n_defocus_groups=args["n_defocus_groups"],
                       polarity=args["polarity"], ctf_box=args["ctf_box"])
