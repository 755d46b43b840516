"""E- and M-step kernels (`cryogmm.kernels.em_fourier`) against plain-numpy float64 references.

`score_candidates` must give the Gaussian log-likelihood -sum_s |X - C e_t a|^2 / sigma^2[shell(s)]
of every used (rotation, shift) slot, with a = the slice of the full (Hermitian-completed)
spectrum interpolated trilinearly and e_t = exp(-2 pi i (fx tx + fy ty) / n), and -inf in the
unused slots. `backproject_candidates` must add what a loop over the candidates with
`insert_slices` adds, and its residuals must be those of the model: zero for noise-free data made
from the reference, the DFT noise power n^2 sigma^2 for white noise against a zero reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tolerance
from cryogmm.forward.ctf import CTFParameters, ctf_of_frequencies
from cryogmm.forward.fourier import central_slices, image_coefficients, image_pixels, map_to_fourier, project_images
from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.kernels.em_fourier import backproject_candidates, score_candidates
from cryogmm.kernels.fourier_slices import insert_slices
from cryogmm.kernels.reference import (candidate_log_likelihoods_reference, extract_slices_reference,
                                       hermitian_completion)
from cryogmm.mixture import evaluate
from forward.test_fourier import random_mixture

BOX, PAD, PIXEL = 16, 2, 3.0
M = BOX * PAD
N_SHELLS = BOX // 2 + 1
RADIUS = BOX / 2 - 1 / PAD


def ctf_at(pixels, defocus_in_angstroms, polarity=-1.0) -> np.ndarray:
    """(B, S) float32 CTF of each image at the pixels (astigmatic, times the contrast polarity)."""
    d = np.asarray(defocus_in_angstroms, dtype=np.float64)
    parameters = CTFParameters(d, 0.9 * d, defocus_angle_in_degrees=30.0)
    scale = 1.0 / (pixels.box * PIXEL)
    return (polarity * ctf_of_frequencies(parameters, pixels.fx * scale, pixels.fy * scale)).astype(np.float32)


def phases(shifts_in_pixels, pixels) -> np.ndarray:
    """e_t = exp(-2 pi i (fx tx + fy ty) / n): (..., S) complex128 for shifts (..., 2)."""
    t = np.asarray(shifts_in_pixels, dtype=np.float64)
    return np.exp(-2j * np.pi / pixels.box * (t[..., :1] * pixels.fx + t[..., 1:] * pixels.fy))


def add_noise(rng, clean, pixels):
    """Coefficients (B, S) plus complex Gaussian noise of 0.5 to 2 times the signal's power per shell.

    Returns the noisy coefficients (complex64) and the noise power per shell (N_SHELLS,).
    """
    count = np.maximum(np.bincount(pixels.shell, minlength=N_SHELLS), 1)
    signal_power = np.bincount(pixels.shell, (np.abs(clean) ** 2).mean(0), N_SHELLS) / count
    noise_power = np.maximum(signal_power, 1e-3 * signal_power.max()) * rng.uniform(0.5, 2.0, N_SHELLS)
    sigma = np.sqrt(noise_power[pixels.shell] / 2)
    noise = sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
    return (clean + noise).astype(np.complex64), noise_power


@pytest.fixture(scope="module")
def problem():
    """Three particles with their own 4 rotations and 3 shifts, of which the first few are used.

    Particle b is the CTF times the slice at its rotation 0 and shift 0, plus complex Gaussian
    noise of the model's per-shell power (about as strong as the signal).
    """
    rng = np.random.default_rng(0)
    volume = evaluate(random_mixture(rng, 12, 12.0, 3.0), Grid.centered((BOX, BOX, BOX), PIXEL))
    fourier = map_to_fourier(volume, padding_factor=PAD)
    pixels = image_pixels(BOX, RADIUS)
    b, r, t = 3, 4, 3
    rotations = random_rotations(rng, b * r).reshape(b, r, 3, 3)
    shifts = rng.uniform(-2.5, 2.5, (b, t, 2))
    n_rotations, n_shifts = np.array([4, 2, 3]), np.array([3, 1, 2])
    ctf = ctf_at(pixels, [9000.0, 14000.0, 20000.0])
    clean = ctf * phases(shifts[:, 0], pixels) * central_slices(fourier, rotations[:, 0], pixels)
    coefficients, noise_power = add_noise(rng, clean, pixels)
    return dict(fourier=fourier, pixels=pixels, rotations=rotations, shifts=shifts, n_rotations=n_rotations,
                n_shifts=n_shifts, ctf=ctf, coefficients=coefficients,
                inv_s=(1.0 / noise_power[pixels.shell]).astype(np.float32), noise_power=noise_power)


def _score(p) -> np.ndarray:
    b, r, t = p["rotations"].shape[0], p["rotations"].shape[1], p["shifts"].shape[1]
    out = np.full((b, r, t), 7.0, dtype=np.float32)  # every slot overwritten: used or -inf
    score_candidates(p["fourier"].spectrum, float(PAD), p["pixels"].fx, p["pixels"].fy, p["coefficients"], p["ctf"],
                     p["inv_s"], p["rotations"], p["n_rotations"], p["shifts"], p["n_shifts"], BOX, out)
    return out


def _reference_slices(p) -> np.ndarray:
    """(B, R, S) slices of the Hermitian-completed full spectrum (complex128 from the complex64 values)."""
    full = hermitian_completion(p["fourier"].spectrum)
    px = p["pixels"]
    return np.stack([extract_slices_reference(full, rot, px.fx, px.fy, PAD) for rot in p["rotations"]])


def test_score_candidates_is_the_gaussian_log_likelihood(problem):
    p = problem
    out = _score(p)
    reference = candidate_log_likelihoods_reference(p["coefficients"], p["ctf"], p["noise_power"][p["pixels"].shell],
                                                    _reference_slices(p), phases(p["shifts"], p["pixels"]))
    for b, (n_r, n_t) in enumerate(zip(p["n_rotations"], p["n_shifts"])):
        used, ref = out[b, :n_r, :n_t], reference[b, :n_r, :n_t]
        # measured max relative error 4.1e-8 (the float32 output); values -75 to -248 (S = 88 pixels)
        np.testing.assert_allclose(used, ref, rtol=tolerance(np.float32))
        assert np.all(out[b, n_r:] == -np.inf) and np.all(out[b, :, n_t:] == -np.inf)
    # the true pose (rotation 0, shift 0) scores best: the test is not blind to the pose
    assert np.all(out[:, 0, 0] == out.reshape(3, -1).max(axis=1))
    # about -S at the true pose (noise of the model's power): measured -100, -94, -75
    assert np.all(np.abs(out[:, 0, 0] / len(p["pixels"]) + 1) < 0.25)


def test_score_candidates_with_the_conjugate_shift_is_worse(problem):
    """e_t with the opposite sign (a particle at -t) gives a different, lower log-likelihood."""
    p = dict(problem)
    p["shifts"] = -problem["shifts"]
    flipped = _score(p)
    assert np.all(flipped[:, 0, 0] < _score(problem)[:, 0, 0] - 50)  # measured 116 to 131 lower


def _backproject(p, posterior, reference_spectrum, n_workers=2):
    shape = (M, M, M // 2 + 1)
    data, weights = np.zeros((n_workers,) + shape, np.complex128), np.zeros((n_workers,) + shape)
    noise_sum, noise_count = np.zeros((n_workers, N_SHELLS)), np.zeros((n_workers, N_SHELLS))
    px = p["pixels"]
    residual = np.zeros(p["coefficients"].shape[0])
    backproject_candidates(data, weights, noise_sum, noise_count, residual, reference_spectrum, float(PAD), px.fx, px.fy,
                           px.shell, p["coefficients"], p["ctf"], p["inv_s"], p["rotations"], p["n_rotations"],
                           p["shifts"], p["n_shifts"], posterior.astype(np.float32), BOX)
    _backproject.residual = residual
    return data.sum(0), weights.sum(0), noise_sum.sum(0), noise_count.sum(0)


def _posterior(p, seed=1) -> np.ndarray:
    """Random weights on the used slots, some zero, one rotation (particle 1's second) with none."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(size=p["rotations"].shape[:2] + (p["shifts"].shape[1],)) * (rng.uniform(size=(3, 4, 3)) > 0.3)
    for b, (n_r, n_t) in enumerate(zip(p["n_rotations"], p["n_shifts"])):
        w[b, n_r:], w[b, :, n_t:] = 0.0, 0.0
    w[1, 1] = 0.0
    w[:, 0, 0] = 0.5
    return (w / w.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def test_backproject_candidates_matches_a_loop_over_insert_slices(problem):
    p, px = problem, problem["pixels"]
    posterior = _posterior(p)
    data, weights, noise_sum, noise_count = _backproject(p, posterior, p["fourier"].spectrum)
    ref_data, ref_weights = np.zeros_like(data), np.zeros_like(weights)
    ref_sum, ref_count = np.zeros(N_SHELLS), np.zeros(N_SHELLS)
    slices = _reference_slices(p)
    for b, (n_r, n_t) in enumerate(zip(p["n_rotations"], p["n_shifts"])):
        x, c = p["coefficients"][b].astype(np.complex128), p["ctf"][b].astype(np.float64)
        e = phases(p["shifts"][b, :n_t], px)  # (T, S)
        z = x * np.conj(e) * c * p["inv_s"]  # Z_t = X conj(e_t) C / sigma^2
        for r in range(n_r):
            w = posterior[b, r, :n_t].astype(np.float64)
            if w.sum() == 0:
                continue
            insert_slices(ref_data, ref_weights, p["rotations"][b, r][None], (w @ z)[None],
                          (w.sum() * c * c * p["inv_s"])[None], px.fx, px.fy, float(PAD))
            residual = np.abs(x - c * e * slices[b, r]) ** 2  # (T, S)
            ref_sum += np.bincount(px.shell, w @ residual, N_SHELLS)
            ref_count += np.bincount(px.shell, np.full(len(px), w.sum()), N_SHELLS)
    # measured max errors 1.8e-8 (data), 5e-17 (weights) of the largest values and 5e-16
    # (noise sums, relative); the data are complex64 and the reference works in float64
    tol = tolerance(np.float32)
    np.testing.assert_allclose(data, ref_data, rtol=0, atol=tol * np.abs(ref_data).max())
    np.testing.assert_allclose(weights, ref_weights, rtol=0, atol=tol * ref_weights.max())
    np.testing.assert_allclose(noise_sum, ref_sum, rtol=tol)
    np.testing.assert_allclose(noise_count, ref_count, rtol=tol)
    # every particle's weights sum to one, so each pixel counts once per particle
    np.testing.assert_allclose(noise_count, 3 * np.bincount(px.shell, minlength=N_SHELLS), rtol=1e-6)


def test_backproject_candidates_residuals_vanish_for_noise_free_data():
    """Images projected from the reference itself (CTF, shifts), the true pose with weight 1: residual ~ 0."""
    rng = np.random.default_rng(2)
    volume = evaluate(random_mixture(rng, 12, 12.0, 3.0), Grid.centered((BOX, BOX, BOX), PIXEL))
    fourier = map_to_fourier(volume, padding_factor=PAD)
    b = 4
    rotations, shifts = random_rotations(rng, b), rng.uniform(-3, 3, (b, 2))
    rfft_pixels = image_pixels(BOX, BOX, include_zero=True, both_halves_of_x0=True)
    rfft_ctf = np.zeros((b, BOX * (BOX // 2 + 1)), np.float32)
    rfft_ctf[:, rfft_pixels.index] = ctf_at(rfft_pixels, rng.uniform(8000, 20000, b))
    images = project_images(fourier, rotations, shifts, ctf=rfft_ctf.reshape(b, BOX, BOX // 2 + 1))
    pixels = image_pixels(BOX, RADIUS)
    p = dict(pixels=pixels, coefficients=image_coefficients(images, pixels), ctf=rfft_ctf[:, pixels.index],
             inv_s=np.ones(len(pixels), np.float32), rotations=rotations[:, None], n_rotations=np.ones(b, np.int64),
             shifts=shifts[:, None], n_shifts=np.ones(b, np.int64))
    _, _, noise_sum, noise_count = _backproject(p, np.ones((b, 1, 1)), fourier.spectrum)
    power = np.bincount(pixels.shell, (np.abs(p["coefficients"]) ** 2).sum(0), N_SHELLS)
    used = power > 0
    # measured at most 2.2e-13 of the data power in any shell (float32 images)
    assert np.all(noise_sum[used] < 1e-9 * power[used])
    # the same data with the shifts' sign flipped: residuals 1.46 to 2.38 times the power
    p["shifts"] = -shifts[:, None]
    _, _, wrong, _ = _backproject(p, np.ones((b, 1, 1)), fourier.spectrum)
    assert np.all(wrong[used] > 0.5 * power[used])
    # and 10 degrees off in rotation: 2.6e-3 (shell 1) to 0.36 of the power
    off = np.array([[1, 0, 0], [0, np.cos(0.17), -np.sin(0.17)], [0, np.sin(0.17), np.cos(0.17)]])
    p["rotations"], p["shifts"] = (off @ rotations)[:, None], shifts[:, None]
    _, _, wrong, _ = _backproject(p, np.ones((b, 1, 1)), fourier.spectrum)
    assert np.all(wrong[used] > 1e-3 * power[used])


def test_backproject_candidates_noise_power_of_white_noise():
    """Pure noise of variance sigma^2, zero reference: mean |X|^2 per shell = n^2 sigma^2 (unnormalised DFT)."""
    rng = np.random.default_rng(3)
    b, sigma = 200, 0.7
    images = sigma * rng.standard_normal((b, BOX, BOX))
    pixels = image_pixels(BOX, RADIUS)
    t = rng.uniform(-2, 2, (b, 2, 2))  # two shifts, weights 0.3 and 0.7: |X - 0|^2 does not depend on them
    p = dict(pixels=pixels, coefficients=image_coefficients(images, pixels), ctf=np.ones((b, len(pixels)), np.float32),
             inv_s=np.ones(len(pixels), np.float32), rotations=random_rotations(rng, b)[:, None],
             n_rotations=np.ones(b, np.int64), shifts=t, n_shifts=np.full(b, 2, np.int64))
    posterior = np.broadcast_to(np.array([0.3, 0.7]), (b, 1, 2))
    _, _, noise_sum, noise_count = _backproject(p, posterior, np.zeros((M, M, M // 2 + 1), np.complex64))
    per_shell = np.bincount(pixels.shell, minlength=N_SHELLS)
    np.testing.assert_allclose(noise_count, b * per_shell, rtol=1e-6)
    used = per_shell > 0
    ratio = noise_sum[used] / noise_count[used] / (BOX**2 * sigma**2)
    # each |X|^2 is exponential: relative standard error 1 / sqrt(b * pixels in the shell), from
    # 3.5% (shell 1, 4 pixels) to 1.6%; measured ratios 0.977 to 1.015, at most 0.98 standard errors
    standard_error = 1.0 / np.sqrt(b * per_shell[used])
    assert np.all(np.abs(ratio - 1.0) < 4.5 * standard_error)


def test_backproject_candidates_particle_residuals_measure_each_particles_noise():
    """Pure noise, half the particles with twice the standard deviation, shell model n^2 sigma^2:
    the residual power of each particle over the model is about 1 and 4 (the noise scale)."""
    rng = np.random.default_rng(4)
    b, sigma = 40, 0.5
    scale = np.where(np.arange(b) % 2 == 0, 1.0, 2.0)
    images = sigma * scale[:, None, None] * rng.standard_normal((b, BOX, BOX))
    pixels = image_pixels(BOX, RADIUS)
    p = dict(pixels=pixels, coefficients=image_coefficients(images, pixels), ctf=np.ones((b, len(pixels)), np.float32),
             inv_s=np.full(len(pixels), 1.0 / (BOX**2 * sigma**2), np.float32),
             rotations=random_rotations(rng, b)[:, None], n_rotations=np.ones(b, np.int64),
             shifts=np.zeros((b, 1, 2)), n_shifts=np.ones(b, np.int64))
    _backproject(p, np.ones((b, 1, 1)), np.zeros((M, M, M // 2 + 1), np.complex64))
    ratio = _backproject.residual / len(pixels)
    # a mean of S = len(pixels) exponentials: relative standard error 1 / sqrt(S)
    error = 1.0 / np.sqrt(len(pixels))
    assert np.all(np.abs(ratio / scale**2 - 1.0) < 5 * error)
    assert np.all(ratio[1::2] > 3 * ratio[0::2].max() / 1.2)
