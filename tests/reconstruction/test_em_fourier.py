"""Fourier-space MAP-EM (`cryogmm.reconstruction.em_fourier`) against plain-numpy references and exact projections.

E-step: the grid log-likelihoods (float32 matrix products) and the per-particle candidate scores
against the float64 Gaussian log-likelihood -sum_s |X - C e_t a|^2 / sigma^2[shell(s)], and each
other. Significant weights against a brute-force sort. M-step: back-projection of exact
projections of a random asymmetric Gaussian mixture with known poses reconstructs it (acceptance:
FSC 0.5 beyond 0.9 x Nyquist), symmetrisation gives the average of the mixture's symmetric copies,
and tau^2 from the FSC follows its formula.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tolerance
from cryogmm.forward.fourier import central_slices, image_coefficients, image_pixels, map_to_fourier
from cryogmm.geometry.so3 import random_rotations
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.grid import Grid
from cryogmm.kernels.fourier_slices import symmetrise_x0_plane
from cryogmm.kernels.reference import (candidate_log_likelihoods_reference, extract_slices_reference,
                                       hermitian_completion)
from cryogmm.metrics.fsc import fourier_shell_correlation, normalised_cross_correlation, resolution_at
from cryogmm.mixture import GaussianMixture, evaluate
from cryogmm.reconstruction import em_fourier as em
from forward.test_fourier import exact_projections, random_mixture
from kernels.test_em_fourier import add_noise, ctf_at, phases

PIXEL = 3.0


# ---------------------------------------------------------------------------------------------
# E-step

BOX, PAD = 16, 2  # as in tests/kernels/test_em_fourier.py (add_noise)


@pytest.fixture(scope="module")
def estep():
    """Three particles, five shared grid orientations and four shifts each; particle b shows
    orientation b at its shift 0, through its CTF, plus noise of about the signal's power."""
    rng = np.random.default_rng(0)
    volume = evaluate(random_mixture(rng, 12, 12.0, 3.0), Grid.centered((BOX, BOX, BOX), PIXEL))
    fourier = map_to_fourier(volume, padding_factor=PAD)
    pixels = image_pixels(BOX, BOX / 2 - 1 / PAD)
    b, j, t = 3, 5, 4
    rotations = random_rotations(rng, j)
    shifts = rng.uniform(-2.5, 2.5, (b, t, 2))
    ctf = ctf_at(pixels, [9000.0, 14000.0, 20000.0])
    slices = central_slices(fourier, rotations, pixels)
    clean = ctf * phases(shifts[:, 0], pixels) * slices[:b]
    coefficients, noise_power = add_noise(rng, clean, pixels)
    batch = em.ParticleBatch(coefficients, ctf, np.arange(b))
    full = hermitian_completion(fourier.spectrum)
    reference_slices = extract_slices_reference(full, rotations, pixels.fx, pixels.fy, PAD)
    reference = candidate_log_likelihoods_reference(batch.coefficients, ctf, noise_power[pixels.shell],
                                                    np.broadcast_to(reference_slices, (b,) + reference_slices.shape),
                                                    phases(shifts, pixels))  # (B, J, T)
    return dict(fourier=fourier, pixels=pixels, rotations=rotations, shifts=shifts, batch=batch, slices=slices,
                noise_power=noise_power, reference=reference, reference_slices=reference_slices)


def test_grid_terms_are_the_documented_expansion(estep):
    e, px = estep, estep["pixels"]
    cross, quad, constant = em.grid_terms(e["batch"], e["noise_power"], px, e["slices"], e["shifts"])
    inv_s = 1.0 / e["noise_power"][px.shell]
    x, c, a = e["batch"].coefficients.astype(np.complex128), e["batch"].ctf.astype(np.float64), e["reference_slices"]
    z = x[:, None, :] * np.conj(phases(e["shifts"], px)) * (c * inv_s)[:, None, :]  # (B, T, S)
    tol = tolerance(np.float32)
    expected_cross = np.einsum("bts,js->btj", np.conj(z), a).real
    np.testing.assert_allclose(cross, expected_cross, rtol=0, atol=tol * np.abs(expected_cross).max())
    expected_quad = (c**2 * inv_s) @ (np.abs(a) ** 2).T
    np.testing.assert_allclose(quad, expected_quad, rtol=tol)
    np.testing.assert_allclose(constant, (np.abs(x) ** 2 * inv_s).sum(1), rtol=tol)


def test_grid_log_likelihoods_match_the_reference(estep):
    e = estep
    ll = em.grid_log_likelihoods(e["batch"], e["noise_power"], e["pixels"], e["slices"], e["shifts"])
    assert ll.shape == (3, 4, 5) and ll.dtype == np.float32
    reference = np.swapaxes(e["reference"], 1, 2)  # (B, T, J)
    # float32 products of terms up to 2.5 x |log p|: measured max relative error 3.3e-7; values -80 to -332
    np.testing.assert_allclose(ll, reference, rtol=tolerance(np.float32))
    # particle b scores best at orientation b, shift 0
    best = ll.reshape(3, -1).argmax(1)
    np.testing.assert_array_equal(best, np.ravel_multi_index((np.zeros(3, int), np.arange(3)), (4, 5)))


def test_score_agrees_with_the_grid_and_the_reference(estep):
    e = estep
    b, t = e["shifts"].shape[:2]
    rotations = np.broadcast_to(e["rotations"], (b,) + e["rotations"].shape)
    candidates = em.score(e["fourier"].spectrum, PAD, e["batch"], e["noise_power"], e["pixels"], rotations,
                          np.full(b, 5), e["shifts"], np.full(b, t))
    ll = candidates.log_likelihood  # (B, J, T)
    # measured max relative errors 5.2e-8 (reference) and 2.9e-7 (grid)
    np.testing.assert_allclose(ll, e["reference"], rtol=tolerance(np.float32))
    grid = em.grid_log_likelihoods(e["batch"], e["noise_power"], e["pixels"], e["slices"], e["shifts"])
    np.testing.assert_allclose(ll, np.swapaxes(grid, 1, 2), rtol=tolerance(np.float32))
    np.testing.assert_allclose(candidates.posterior.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    best_rotations, best_shifts, best_weights = candidates.best()
    np.testing.assert_array_equal(best_rotations, e["rotations"][:3])
    np.testing.assert_array_equal(best_shifts, e["shifts"][:, 0])
    assert np.all(best_weights == candidates.posterior.reshape(3, -1).max(1))


def test_score_leaves_unused_slots_at_minus_infinity(estep):
    e = estep
    b, t = e["shifts"].shape[:2]
    rotations = np.broadcast_to(e["rotations"], (b,) + e["rotations"].shape)
    n_rotations, n_shifts = np.array([5, 3, 2]), np.array([4, 1, 2])
    log_prior = np.random.default_rng(1).normal(0.0, 3.0, (b, 5, t)).astype(np.float32)
    candidates = em.score(e["fourier"].spectrum, PAD, e["batch"], e["noise_power"], e["pixels"], rotations,
                          n_rotations, e["shifts"], n_shifts, log_prior=log_prior, fraction=0.99)
    ll = candidates.log_likelihood
    for i, (n_r, n_t) in enumerate(zip(n_rotations, n_shifts)):
        np.testing.assert_allclose(ll[i, :n_r, :n_t], e["reference"][i, :n_r, :n_t], rtol=tolerance(np.float32))
        assert np.all(ll[i, n_r:] == -np.inf) and np.all(ll[i, :, n_t:] == -np.inf)
        assert np.all(candidates.posterior[i, n_r:] == 0) and np.all(candidates.posterior[i, :, n_t:] == 0)
    expected = em.significant_weights((ll + log_prior).reshape(b, -1), 0.99).reshape(ll.shape)
    np.testing.assert_array_equal(candidates.posterior, expected)
    np.testing.assert_array_equal(candidates.n_significant(), (expected > 0).reshape(b, -1).sum(1))


# ---------------------------------------------------------------------------------------------
# significant weights


def _brute_force_weights(log_posterior, fraction, max_count=None):
    """Sort all entries of each row: the fewest largest whose normalised mass reaches `fraction`."""
    out = np.zeros(log_posterior.shape)
    for i, row in enumerate(np.asarray(log_posterior, dtype=np.float64)):
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p)
        n_keep = 1
        while p[order[:n_keep]].sum() < fraction:
            n_keep += 1
        if max_count is not None:
            n_keep = min(n_keep, max_count)
        keep = order[:n_keep]
        out[i, keep] = p[keep] / p[keep].sum()
    return out


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_significant_weights_keep_the_smallest_set_holding_the_fraction(fraction):
    rng = np.random.default_rng(2)
    log_posterior = rng.normal(0.0, 2.0, (6, 40))
    log_posterior[1] *= 10.0  # a peaked row
    log_posterior[2, :25] = -np.inf  # a row with only 15 poses
    weights = em.significant_weights(log_posterior, fraction)
    assert weights.dtype == np.float32
    expected = _brute_force_weights(log_posterior, fraction)
    np.testing.assert_array_equal(weights > 0, expected > 0)
    np.testing.assert_allclose(weights, expected, rtol=tolerance(np.float32), atol=1e-7)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    assert np.all(weights[2, :25] == 0)
    # the kept set is the smallest: without its smallest member the mass is below the fraction
    p = np.exp(log_posterior - log_posterior.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for row, w in zip(p, weights):
        kept = row[w > 0]
        assert kept.sum() >= fraction - 1e-9 and kept.sum() - kept.min() < fraction


def test_significant_weights_max_count_and_one_hot():
    rng = np.random.default_rng(3)
    log_posterior = rng.normal(0.0, 0.5, (4, 30))  # flat rows: 0.999 needs about 29 of 30
    weights = em.significant_weights(log_posterior, 0.999, max_count=5)
    assert np.all((weights > 0).sum(1) == 5)
    np.testing.assert_allclose(weights, _brute_force_weights(log_posterior, 0.999, 5), rtol=tolerance(np.float32))
    one_hot = np.full((2, 10), -1e3)
    one_hot[0, 3], one_hot[1, 7] = 0.0, 5.0
    weights = em.significant_weights(one_hot)
    expected = np.zeros((2, 10))
    expected[0, 3] = expected[1, 7] = 1.0
    np.testing.assert_array_equal(weights, expected)
    # a long tail: 1000 entries 15 to 16 below the maximum hold 1.9e-4 of the mass, so 0.9999
    # needs 365 of them (only entries within 14 + log(K) of the maximum are sorted: these are)
    tail = np.concatenate([[0.0], -15.0 - 1e-3 * np.arange(1000)])[None]
    weights = em.significant_weights(tail, 0.9999)
    expected = _brute_force_weights(tail, 0.9999)
    assert (weights > 0).sum() == (expected > 0).sum() == 366
    np.testing.assert_allclose(weights, expected, rtol=tolerance(np.float32), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# M-step: back-projection with known poses


def _one_pose_candidates(rotations, shifts):
    n = len(rotations)
    return em.Candidates(rotations[:, None], np.ones(n, np.int64), shifts[:, None], np.ones(n, np.int64),
                         np.zeros((n, 1, 1), np.float32), np.ones((n, 1, 1), np.float32))


ACCEPT_BOX, N_IMAGES = 32, 500


@pytest.fixture(scope="module")
def projections():
    """Exact projections (sum along the beam) of an asymmetric mixture, sigma 3 Å, at 3 Å pixels."""
    rng = np.random.default_rng(4)
    mixture = random_mixture(rng, 30, 22.0, 3.0)
    volume = evaluate(mixture, Grid.centered((ACCEPT_BOX,) * 3, PIXEL))
    rotations = random_rotations(rng, N_IMAGES)
    shifts = rng.uniform(-3, 3, (N_IMAGES, 2))
    return dict(mixture=mixture, volume=volume, rotations=rotations, shifts=shifts,
                images=exact_projections(mixture, rotations, shifts, box=ACCEPT_BOX))


def _backproject_known_poses(p, rotations, n_workers=None):
    fourier = map_to_fourier(p["volume"], padding_factor=PAD)
    pixels = image_pixels(ACCEPT_BOX, fourier.max_image_radius)
    n = len(p["images"])
    batch = em.ParticleBatch(image_coefficients(p["images"], pixels), np.ones((n, len(pixels)), np.float32),
                             np.arange(n))
    accumulators = em.Accumulators.empty(ACCEPT_BOX, PAD, ACCEPT_BOX // 2 + 1)
    em.backproject(accumulators, fourier.spectrum, PAD, batch, np.ones(ACCEPT_BOX // 2 + 1), pixels,
                   _one_pose_candidates(rotations, p["shifts"]), n_workers=n_workers)
    return accumulators, fourier.max_image_radius


def test_backprojection_of_exact_projections_reconstructs_the_map(projections):
    """Acceptance: FSC 0.5 with the true map at >= 0.9 x Nyquist (resolution <= 6.67 Å at 3 Å voxels)."""
    p = projections
    accumulators, radius = _backproject_known_poses(p, p["rotations"])
    data, weights = em.symmetrised(accumulators, None, radius, PAD)
    volume = em.reconstruct(data, weights, ACCEPT_BOX, PAD, radius, wiener_constant=1e-6 * weights.max())
    assert volume.shape == (ACCEPT_BOX,) * 3 and volume.dtype == np.float32
    curve = fourier_shell_correlation(volume, p["volume"], PIXEL)
    resolution = resolution_at(curve, 0.5)
    # never below 0.5 up to Nyquist (None; 6.06 Å without reconstruct's soft edge): FSC 0.9855 at
    # shell 15, 0.68 at shell 16 (beyond the E-step's radius of 15.5 pixels)
    assert resolution is None or resolution <= 2 * PIXEL / 0.9
    assert curve.correlation[1:16].min() > 0.95
    assert normalised_cross_correlation(volume, p["volume"]) > 0.999  # measured 0.99966
    # in the truth's units (voxel values; projections are sums along the beam): scale measured 1.0006
    assert (volume * p["volume"]).sum() / (p["volume"] ** 2).sum() == pytest.approx(1.0, abs=0.01)
    # the poses' transposes (the wrong convention) do not reconstruct it: measured 0.61
    accumulators, _ = _backproject_known_poses(p, np.swapaxes(p["rotations"], 1, 2))
    wrong = em.reconstruct(*em.symmetrised(accumulators, None, radius, PAD), ACCEPT_BOX, PAD, radius,
                           wiener_constant=1e-6 * weights.max())
    assert normalised_cross_correlation(wrong, p["volume"]) < 0.8


def test_backproject_does_not_depend_on_the_worker_count(projections):
    p = dict(projections)
    p["images"] = projections["images"][:7]
    p["shifts"] = projections["shifts"][:7]
    results = [_backproject_known_poses(p, projections["rotations"][:7], n_workers=k)[0] for k in (1, 3, 16)]
    for other in results[1:]:
        # measured max differences 3e-16 of the largest values (summation order)
        np.testing.assert_allclose(other.data, results[0].data, rtol=0, atol=1e-12 * np.abs(results[0].data).max())
        np.testing.assert_allclose(other.weights, results[0].weights, rtol=0, atol=1e-12 * results[0].weights.max())
        np.testing.assert_allclose(other.noise_sum, results[0].noise_sum, rtol=1e-12)
        np.testing.assert_array_equal(other.noise_count, results[0].noise_count)
    assert np.abs(results[0].data).max() > 0


def test_accumulators_add():
    a, b = em.Accumulators.empty(8, 2, 5), em.Accumulators.empty(8, 2, 5)
    assert a.data.shape == (16, 16, 9) and a.data.dtype == np.complex128 and a.noise_sum.shape == (5,)
    b.data += 1 + 2j
    b.weights += 3.0
    b.noise_sum += 4.0
    b.noise_count += 5.0
    a.add(b)
    a.add(b)
    assert np.all(a.data == 2 + 4j) and np.all(a.weights == 6) and np.all(a.noise_sum == 8)
    assert np.all(a.noise_count == 10)


# ---------------------------------------------------------------------------------------------
# M-step: symmetry


def _symmetric_copies(mixture: GaussianMixture, operators) -> GaussianMixture:
    """The average over the group of the mixture moved by each operator: means S_g mu_k, weights w_k / G."""
    means = np.concatenate([mixture.means_in_angstroms @ g.T for g in operators])
    return GaussianMixture(means, np.tile(mixture.weights, len(operators)) / len(operators),
                           mixture.precision_per_square_angstrom)


@pytest.fixture(scope="module")
def slice_accumulators():
    """Accumulators of 300 noise-free central slices of an asymmetric mixture's map (24 px), CTF 1."""
    box = 24
    rng = np.random.default_rng(5)
    mixture = random_mixture(rng, 15, 18.0, 4.0)
    fourier = map_to_fourier(evaluate(mixture, Grid.centered((box,) * 3, PIXEL)), padding_factor=PAD)
    pixels = image_pixels(box, fourier.max_image_radius)
    rotations = random_rotations(rng, 300)
    accumulators = em.Accumulators.empty(box, PAD, box // 2 + 1)
    n = len(rotations)
    batch = em.ParticleBatch(central_slices(fourier, rotations, pixels), np.ones((n, len(pixels)), np.float32),
                             np.arange(n))
    em.backproject(accumulators, fourier.spectrum, PAD, batch, np.ones(box // 2 + 1), pixels,
                   _one_pose_candidates(rotations, np.zeros((n, 2))))
    return dict(box=box, mixture=mixture, accumulators=accumulators, radius=fourier.max_image_radius)


@pytest.mark.parametrize("group", ["C2", "C4", "D2"])
def test_symmetrised_accumulators_give_the_average_of_the_symmetric_copies(slice_accumulators, group):
    s = slice_accumulators
    box, radius = s["box"], s["radius"]
    operators = symmetry_operators(group)
    volume = em.reconstruct(*em.symmetrised(s["accumulators"], operators, radius, PAD), box, PAD, radius,
                            wiener_constant=1e-6 * s["accumulators"].weights.max())
    grid = Grid.centered((box,) * 3, PIXEL)
    symmetric = evaluate(_symmetric_copies(s["mixture"], operators), grid)
    asymmetric = evaluate(s["mixture"], grid)
    # measured 0.9969 (C2), 0.9957 (C4), 0.9967 (D2) with the average, 0.79, 0.68, 0.69 with the
    # asymmetric map (the unsymmetrised reconstruction: 0.9992 with the asymmetric map). The copies
    # are read by trilinear interpolation of the accumulators, which damps them a little away from
    # the centre (by the interpolation kernel's transform, as in RELION)
    assert normalised_cross_correlation(volume, symmetric) > 0.99
    assert normalised_cross_correlation(volume, asymmetric) < 0.85
    # the map is symmetric: the turn by 180 (C2, D2) or 90 (C4) degrees about z maps it onto itself
    # (exact on the grid about the centre voxel); measured 1 - 2e-16, and 0.25 and 0.32 without symmetry
    turned = np.rot90(volume, k=2 if group != "C4" else 1, axes=(1, 2))
    turned = np.roll(turned, (1, 1) if group != "C4" else (1, 0), axis=(1, 2))  # the reversed axes
    assert normalised_cross_correlation(turned, volume) > 0.9999


@pytest.mark.parametrize("operators", [None, symmetry_operators("C1")])
def test_symmetrised_without_symmetry_adds_only_the_hermitian_partners(slice_accumulators, operators):
    s = slice_accumulators
    data, weights = em.symmetrised(s["accumulators"], operators, s["radius"], PAD)
    expected_data, expected_weights = symmetrise_x0_plane(s["accumulators"].data, s["accumulators"].weights)
    np.testing.assert_array_equal(data, expected_data)
    np.testing.assert_array_equal(weights, expected_weights)


# ---------------------------------------------------------------------------------------------
# M-step: shells, tau^2 and the regularised map


def test_padded_shells_match_the_image_shells():
    box, pad = 12, 2
    shells = em.padded_shells(box, pad)
    m = box * pad
    assert shells.shape == (m, m, m // 2 + 1)
    pixels = image_pixels(box, box / 2)
    # the voxel at pad * (fx, fy, 0) lies in the image pixel's shell
    np.testing.assert_array_equal(shells[0, (pad * pixels.fy).astype(int) % m, (pad * pixels.fx).astype(int)],
                                  pixels.shell)
    assert shells[0, 0, 0] == 0 and shells[pad * 3, m - pad * 4, 0] == 5 and shells[m - 1, 0, 0] == 0


def test_mean_weight_per_shell():
    rng = np.random.default_rng(6)
    shells = em.padded_shells(8, 2)
    weights = rng.uniform(size=shells.shape)
    mean = em.mean_weight_per_shell(weights, shells, 6)
    expected = [weights[shells == i].mean() for i in range(6)]
    np.testing.assert_allclose(mean, expected, rtol=1e-12)
    # a shell without voxels has mean 0
    assert em.mean_weight_per_shell(weights, np.where(shells == 2, 1, shells), 4)[2] == 0.0


def test_tau2_from_fsc_hand_values():
    fsc = np.array([1.0, 0.9, 0.5, 0.2, 0.001, 0.0005, -0.3, 0.5])
    mean_weight = np.array([2.0, 2.0, 4.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # SSNR = FSC / (1 - FSC) (FSC clipped to 0.999), divided by pad^3 = 8 times the mean weight
    expected = np.array([0.999 / 0.001 / 16, 9.0 / 16, 1.0 / 32, 0.25 / 8, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(em.tau2_from_fsc(fsc, mean_weight, 2), expected, rtol=1e-12)
    np.testing.assert_allclose(em.tau2_from_fsc(fsc, mean_weight, 2, tau2_fudge=3.0), 3 * expected, rtol=1e-12)
    # padding factor 1: no pad^3
    np.testing.assert_allclose(em.tau2_from_fsc(fsc[2:4], [1.0, 1.0], 1), [1.0, 0.25], rtol=1e-12)


def test_reconstruct_with_tau2_is_eqn_14():
    """The spectrum is data / (weights + 1 / tau^2[shell]) inside the radius, zero where tau^2 = 0.

    Compared through `reconstruct` itself on the expected spectrum with unit weights, so that only
    the Fourier-space step is under test (the real-space gridding correction is tested in
    tests/forward/test_fourier.py, and by the reconstruction of exact projections above).
    """
    box, pad = 12, 2
    m = box * pad
    rng = np.random.default_rng(7)
    shape = (m, m, m // 2 + 1)
    data = np.fft.rfftn(rng.standard_normal((m, m, m)))
    weights = rng.uniform(0.5, 2.0, shape)
    tau2 = np.array([0.0, 3.0, 0.5, 1.0, 2.0, 0.0, 4.0])  # shells 0 and 5 zeroed
    radius = 5.7
    f = np.fft.fftfreq(m) * m
    inside = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + np.arange(m // 2 + 1) ** 2) / pad < radius
    shells = np.rint(np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + np.arange(m // 2 + 1) ** 2) / pad)
    t = tau2[np.minimum(shells.astype(int), tau2.size - 1)]
    keep = inside & (t > 0)
    expected = np.where(keep, data / (weights + 1.0 / np.where(keep, t, 1.0)), 0.0)
    unit = keep.astype(np.float64)
    volume = em.reconstruct(data, weights, box, pad, radius, tau2=tau2)
    reference = em.reconstruct(expected, unit, box, pad, 1e9)
    np.testing.assert_allclose(volume, reference, rtol=0, atol=tolerance(np.float32) * np.abs(reference).max())
    # the prior matters: without it the map differs (measured by 1.4 x the largest value)
    plain = em.reconstruct(data, weights, box, pad, radius)
    assert np.abs(plain - volume).max() > 0.05 * np.abs(volume).max()
    # the plain estimate with a Wiener constant: data / (weights + c) inside the radius
    expected = np.where(inside, data / (weights + 0.3), 0.0)
    np.testing.assert_allclose(em.reconstruct(data, weights, box, pad, radius, wiener_constant=0.3),
                               em.reconstruct(expected, inside.astype(np.float64), box, pad, 1e9), rtol=0,
                               atol=tolerance(np.float32) * np.abs(reference).max())
