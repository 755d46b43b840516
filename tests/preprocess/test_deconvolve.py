"""CTF deconvolution of class averages (thesis Eqns. 4.3 and 4.4) against plain-numpy references
and simulated recoveries."""

import numpy as np
import pytest
from scipy.optimize import Bounds, minimize

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, apply_ctf, ctf_images
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.preprocess import deconvolve as dc

PIXEL_SIZE = 3.0
DEFOCI_IN_ANGSTROMS = np.linspace(8000.0, 30000.0, 7)  # 0.8-3.0 um, one defocus group each
COUNTS = np.array([10.0, 15.0, 20.0, 12.0, 18.0, 9.0, 16.0])


def group_ctfs(box, defoci=DEFOCI_IN_ANGSTROMS, astigmatism=0.0):
    params = CTFParameters(defoci + astigmatism, defoci - astigmatism, defocus_angle_in_degrees=30.0,
                           voltage_in_kv=300.0, spherical_aberration_in_mm=2.7, amplitude_contrast=0.1)
    return ctf_images(params, box, PIXEL_SIZE)


def blobs(rng, box, n_blobs=20, sigma_range=(1.0, 2.0)):
    """A non-negative image: Gaussian blobs (sigma 1-2 px, 3-6 Å) within 1/4 box of the centre."""
    yy, xx = np.mgrid[:box, :box] - box // 2
    image = np.zeros((box, box))
    for _ in range(n_blobs):
        cy, cx = rng.uniform(-box / 4, box / 4, 2)
        s = rng.uniform(*sigma_range)
        image += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return image


def observe(rng, truth, ctfs, counts, noise_per_particle, polarity=1):
    """Group averages of `counts` particles each: polarity f_g * y + white noise / sqrt(count)."""
    clean = polarity * apply_ctf(np.broadcast_to(truth, ctfs.shape), ctfs)
    noise = rng.normal(size=ctfs.shape) * (noise_per_particle / np.sqrt(counts))[:, None, None]
    return clean + noise


@pytest.fixture(scope="module")
def problem():
    """One 64 px class: truth, 7 defocus-group averages (dark), their CTFs and counts."""
    rng = np.random.default_rng(7)
    box = 64
    truth = blobs(rng, box)
    ctfs = group_ctfs(box)
    noise = 2.0 * truth.std()  # per particle; about 100 particles in the class
    return truth, observe(rng, truth, ctfs, COUNTS, noise), ctfs, COUNTS


def relative_error(x, truth):
    return np.linalg.norm(x - truth) / np.linalg.norm(truth)


# --- the loss and its gradient -------------------------------------------------------------------


def real_space_loss(y, images, ctfs, weights, alpha, polarity):
    """Eqn. 4.3 evaluated directly: explicit circular convolutions with the PSFs and periodic
    finite differences (plain numpy, no Fourier-space algebra)."""
    n = y.shape[-1]
    w = weights / weights.sum()
    loss = 0.0
    for z, f, wg in zip(images, ctfs, w):
        psf = np.fft.ifft2(f).real  # PSF centred on pixel (0, 0)
        blurred = np.zeros_like(y)
        for a in range(n):
            for b in range(n):
                blurred += psf[a, b] * np.roll(y, (a, b), axis=(0, 1))
        loss += 0.5 * wg * np.sum((z - polarity * blurred) ** 2)
    dy = np.roll(y, -1, axis=0) - y
    dx = np.roll(y, -1, axis=1) - y
    return loss + 0.5 * alpha * np.sum(dy**2 + dx**2)


@pytest.mark.parametrize("box, polarity", [(8, 1), (9, -1)])
def test_fourier_loss_equals_real_space_loss(box, polarity):
    rng = np.random.default_rng(box)
    ctfs = group_ctfs(box, DEFOCI_IN_ANGSTROMS[:3], astigmatism=2000.0)
    images = rng.normal(size=(3, box, box))
    weights = np.array([3.0, 1.0, 5.0])
    y = rng.uniform(0, 2, (box, box))
    expected = real_space_loss(y, images, ctfs, weights, 0.7, polarity)
    got = dc.deconvolution_loss(y, images, ctfs, weights, alpha=0.7, polarity=polarity)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=1e-10)


def test_gradient_equals_finite_differences():
    rng = np.random.default_rng(1)
    c, g, box = 2, 3, 8
    images = rng.normal(size=(c, g, box, box))
    ctfs = np.stack([group_ctfs(box, DEFOCI_IN_ANGSTROMS[i:i + 3]) for i in range(c)])
    weights = rng.uniform(1, 5, (c, g))
    w = weights / weights.sum(axis=1, keepdims=True)
    terms = dc._fourier_terms(images, ctfs, w)
    operator = terms.h + np.array([0.3, 2.0])[:, None, None] * dc._penalty_spectrum(box)
    data = -np.fft.irfft2(terms.b, s=(box, box))
    y = rng.uniform(0, 1, (c, box, box))
    _, gradient = dc._loss_and_gradient(y, operator, data, terms.energy)
    step = 1e-6
    numeric = np.empty_like(y)
    for index in np.ndindex(y.shape):
        e = np.zeros_like(y)
        e[index] = step
        plus = dc._loss_and_gradient(y + e, operator, data, terms.energy)[0].sum()
        minus = dc._loss_and_gradient(y - e, operator, data, terms.energy)[0].sum()
        numeric[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)


def test_tikhonov_solution_zeroes_the_gradient(problem):
    _, images, ctfs, counts = problem
    terms = dc._fourier_terms(images[None], ctfs[None], (counts / counts.sum())[None])
    alpha = np.array([0.5])
    y = dc._tikhonov(terms, alpha, -1)
    operator = terms.h + alpha[:, None, None] * dc._penalty_spectrum(64)
    data = -np.fft.irfft2(terms.b, s=(64, 64))
    _, gradient = dc._loss_and_gradient(y, operator, data, terms.energy)
    assert np.abs(gradient).max() < 1e-10 * np.abs(data).max()


def test_gcv_equals_explicit_hat_matrix():
    """GCV from the Fourier-diagonal formulas against the dense influence matrix of the
    unconstrained problem on the stacked data sqrt(w_g) z_g."""
    rng = np.random.default_rng(3)
    box, g = 7, 2
    ctfs = group_ctfs(box, DEFOCI_IN_ANGSTROMS[[1, 5]])
    images = rng.normal(size=(g, box, box))
    weights = np.array([2.0, 3.0]) / 5.0
    n = box * box
    basis = np.eye(n).reshape(n, box, box)
    conv = [apply_ctf(basis, np.broadcast_to(f, (n, box, box))).reshape(n, n).T for f in ctfs]
    k = np.vstack([np.sqrt(wg) * m for wg, m in zip(weights, conv)])  # (G N, N)
    diff = np.vstack([(np.roll(basis, -1, axis=a) - basis).reshape(n, n).T for a in (1, 2)])
    d = np.concatenate([np.sqrt(wg) * z.ravel() for wg, z in zip(weights, images)])
    terms = dc._fourier_terms(images[None], ctfs[None], weights[None])
    alphas = np.array([0.01, 0.3, 5.0])
    scores = dc._gcv_scores(terms, alphas)[0]
    for alpha, score in zip(alphas, scores):
        hat = k @ np.linalg.solve(k.T @ k + alpha * diff.T @ diff, k.T)
        rss = np.sum((d - hat @ d) ** 2)
        m = d.size
        assert score == pytest.approx(m * rss / (m - np.trace(hat)) ** 2, rel=1e-8)


# --- the solver ----------------------------------------------------------------------------------


def test_fast_driver_matches_scipy_minimize(problem):
    """The direct L-BFGS-B driver takes the same iterates as scipy.optimize.minimize."""
    _, images, ctfs, counts = problem
    terms = dc._fourier_terms(images[None], ctfs[None], (counts / counts.sum())[None])
    alpha = np.array([0.5])
    operator = terms.h + alpha[:, None, None] * dc._penalty_spectrum(64)
    data = np.fft.irfft2(terms.b, s=(64, 64))
    start = dc._tikhonov(terms, alpha, 1)
    fast = dc._solve(operator, data, terms.energy, start, max_iterations=30, tolerance=1e-9, fast=True)
    slow = dc._solve(operator, data, terms.energy, start, max_iterations=30, tolerance=1e-9, fast=False)
    assert fast[2] == slow[2]  # iterations
    np.testing.assert_allclose(fast[0], slow[0], rtol=0, atol=1e-12 * np.abs(slow[0]).max())
    assert fast[1:] == pytest.approx(slow[1:])


def test_constrained_minimum_satisfies_kkt(problem):
    """At the solution the gradient is ~0 where y > 0 and >= ~0 where y = 0."""
    _, images, ctfs, counts = problem
    result = dc.deconvolve(images, ctfs, counts, alpha=0.5, polarity=1, tolerance=1e-12,
                           max_iterations=3000)
    assert result.converged[0]
    terms = dc._fourier_terms(images[None], ctfs[None], (counts / counts.sum())[None])
    operator = terms.h + 0.5 * dc._penalty_spectrum(64)
    data = np.fft.irfft2(terms.b, s=(64, 64))
    _, gradient = dc._loss_and_gradient(result.images, operator, data, terms.energy)
    scale = np.abs(data).max()
    positive = result.images[0] > 1e-6 * result.images.max()
    assert np.abs(gradient[0][positive]).max() < 1e-3 * scale
    assert gradient[0][~positive].min() > -1e-3 * scale
    # and no feasible point nearby is lower: L-BFGS-B through scipy.optimize.minimize agrees
    def fun(x):
        loss, grad = dc._loss_and_gradient(x.reshape(1, 64, 64), operator, data, terms.energy)
        return loss.sum(), grad.ravel()
    reference = minimize(fun, np.zeros(64 * 64), jac=True, method="L-BFGS-B", bounds=Bounds(0, np.inf),
                         options={"maxiter": 5000, "ftol": 1e-14, "gtol": 0})
    assert result.losses[0] <= reference.fun * (1 + 1e-7)
    assert relative_error(result.images[0], reference.x.reshape(64, 64)) < 1e-3


def test_support_box_solves_the_linear_convolution_of_a_cut_out_particle():
    """A particle cut from a micrograph: the CTF acts in a large field and the box crops it.
    Deconvolving the zero-padded box with the CTF of the padded grid and y zero outside the box
    recovers it better than the circular model in the box, and the result is zero outside."""
    rng = np.random.default_rng(3)
    n, m = 48, 96
    yy, xx = np.mgrid[:n, :n] - n // 2
    inside = np.zeros((n, n))
    for _ in range(30):  # blobs out to 0.4 of the box: the CTF spreads them past its edge
        cy, cx = rng.uniform(-0.4 * n, 0.4 * n, 2)
        s = rng.uniform(1.5, 2.5)
        inside += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    truth = np.zeros((m, m))
    truth[24:72, 24:72] = inside
    ctfs_m = group_ctfs(m)
    field = apply_ctf(np.broadcast_to(truth, ctfs_m.shape), ctfs_m)  # linear: no wrap within m
    noise = 0.02 * field.std()
    cut = field[:, 24:72, 24:72] + rng.normal(size=(7, n, n)) * noise
    padded = np.zeros((7, m, m))
    padded[:, 24:72, 24:72] = cut
    linear = dc.deconvolve(padded, ctfs_m, COUNTS, alpha=0.05, polarity=1, support_box=n)
    circular = dc.deconvolve(cut, group_ctfs(n), COUNTS, alpha=0.05, polarity=1)
    assert np.all(linear.images[0][:24] == 0) and np.all(linear.images[0][:, 72:] == 0)
    error_linear = relative_error(linear.images[0][24:72, 24:72], inside)
    error_circular = relative_error(circular.images[0], inside)
    assert error_linear < 0.7 * error_circular  # measured 0.049 against 0.104
    with pytest.raises(InputError, match="support_box"):
        dc.deconvolve(padded, ctfs_m, COUNTS, alpha=0.05, support_box=m + 1)


# --- recovery ------------------------------------------------------------------------------------


def test_multi_frame_recovers_the_projection_and_beats_single_frame(problem):
    truth, images, ctfs, counts = problem
    multi = dc.deconvolve(images, ctfs, counts, polarity=1)
    # single frame: the class average of all particles with the count-weighted mean CTF (Eqn. 4.4)
    w = counts / counts.sum()
    average = np.tensordot(w, images, axes=1)
    mean_ctf = np.tensordot(w, ctfs, axes=1)
    single = dc.deconvolve(average, mean_ctf, polarity=1)
    cc_multi = cross_correlation(multi.images[0], truth)
    cc_single = cross_correlation(single.images[0], truth)
    # measured: 0.959 (multi-frame) and 0.918 (single-frame). Single-frame loses the frequencies
    # where the group CTFs cancel in their mean; on smoother images (blobs of 2-4 px) it can win,
    # as the gradient prior lets multi-frame keep more high-frequency noise there
    assert cc_multi > 0.94
    assert 0.88 < cc_single < cc_multi - 0.02
    assert multi.converged.all() and single.converged.all()
    assert multi.images.min() >= 0 and single.images.min() >= 0
    assert relative_error(multi.images[0], truth) < relative_error(single.images[0], truth)


def test_bright_particles_give_the_same_image_with_polarity_minus_one(problem):
    truth, images, ctfs, counts = problem
    dark = dc.deconvolve(images, ctfs, counts, polarity=1, alpha=0.5)
    bright = dc.deconvolve(-images, ctfs, counts, polarity=-1, alpha=0.5)
    np.testing.assert_allclose(bright.images, dark.images, atol=1e-8 * dark.images.max())


@pytest.mark.parametrize("sign", [1, -1])
def test_polarity_auto_detects_dark_and_bright(sign):
    rng = np.random.default_rng(11)
    box = 48
    ctfs = group_ctfs(box)
    truths = [blobs(rng, box) for _ in range(3)]
    images = np.stack([observe(rng, t, ctfs, COUNTS, 2.0 * t.std(), polarity=sign) for t in truths])
    result = dc.deconvolve(images, ctfs[None], np.tile(COUNTS, (3, 1)), polarity="auto")
    assert result.polarity == sign
    assert result.polarity_rule.startswith("auto")
    assert all(cross_correlation(y, t) > 0.9 for y, t in zip(result.images, truths))


def test_gcv_alpha_is_near_the_best_alpha(problem):
    truth, images, ctfs, counts = problem
    choice = dc.choose_alpha(images, ctfs, counts)
    assert choice.rule == "gcv" and choice.alpha.shape == (1,)
    assert choice.scores.shape == (1, choice.grid.size)
    grid = np.logspace(-3, 1, 9)
    errors = [relative_error(dc.deconvolve(images, ctfs, counts, alpha=a, polarity=1).images[0], truth)
              for a in grid]
    chosen = dc.deconvolve(images, ctfs, counts, polarity=1)
    assert chosen.alpha_rule == "gcv" and chosen.alpha[0] == pytest.approx(choice.alpha[0])
    assert grid[0] < chosen.alpha[0] < grid[-1]
    # measured: chosen alpha 0.11, error 0.294; best on the grid 0.278 at alpha 0.32
    assert relative_error(chosen.images[0], truth) < 1.25 * min(errors)


def test_scaling_the_counts_or_the_intensities(problem):
    """alpha means the same whatever the particle counts and the images' unit."""
    _, images, ctfs, counts = problem
    base = dc.deconvolve(images, ctfs, counts, polarity=1)
    more = dc.deconvolve(1000.0 * images, ctfs, 10.0 * counts, polarity=1)
    assert more.alpha[0] == pytest.approx(base.alpha[0])
    np.testing.assert_allclose(more.images, 1000.0 * base.images, rtol=0, atol=1e-6 * 1000 * base.images.max())
    assert more.losses[0] == pytest.approx(1e6 * base.losses[0], rel=1e-6)


def test_empty_groups_are_ignored(problem):
    _, images, ctfs, counts = problem
    with_empty = np.concatenate([images, np.full((1, 64, 64), np.nan)])
    ctfs_empty = np.concatenate([ctfs, np.full((1, 64, 64), np.nan)])
    a = dc.deconvolve(with_empty, ctfs_empty, np.r_[counts, 0.0], polarity=1, alpha=0.5)
    b = dc.deconvolve(images, ctfs, counts, polarity=1, alpha=0.5)
    np.testing.assert_array_equal(a.images, b.images)


def test_several_classes_with_shared_ctfs_and_per_class_alpha(problem):
    truth, images, ctfs, counts = problem
    stack = np.stack([images, 2.0 * images])
    result = dc.deconvolve(stack, ctfs, np.stack([counts, counts]), alpha=[0.5, 0.5], polarity=1)
    assert result.images.shape == (2, 64, 64)
    np.testing.assert_allclose(result.images[1], 2.0 * result.images[0], atol=1e-6 * result.images.max())
    assert result.iterations.shape == (2,) and result.converged.all()
    shared_counts = dc.deconvolve(stack, ctfs, counts, alpha=0.5, polarity=1)  # (G,) for all classes
    np.testing.assert_array_equal(shared_counts.images, result.images)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (lambda i, c, w: (i, c, w, {"alpha": 0.0}), "alpha must be positive"),
    (lambda i, c, w: (i, c, w, {"alpha": -1.0}), "alpha must be positive"),
    (lambda i, c, w: (i, c, w, {"alpha": np.nan}), "alpha must be positive"),
    (lambda i, c, w: (i, c, -w, {}), "must be finite and >= 0"),
    (lambda i, c, w: (i, c, 0 * w, {}), "total weight 0"),
    (lambda i, c, w: (i, c, w[:3], {}), "group weights must be"),
    (lambda i, c, w: (i[..., :10], c, w, {}), "square"),
    (lambda i, c, w: (i, c[:, :10], w, {}), "do not match"),
    (lambda i, c, w: (np.where(np.eye(16, dtype=bool), np.nan, i), c, w, {}), "NaN"),
    (lambda i, c, w: (i, np.where(np.eye(16, dtype=bool), np.inf, c), w, {}), "NaN"),
    (lambda i, c, w: (i, c, w, {"polarity": 0}), "polarity must be"),
    (lambda i, c, w: (i, c, w, {"max_iterations": 0}), "max_iterations"),
    (lambda i, c, w: (i, c, w, {"tolerance": 0.0}), "tolerance"),
    (lambda i, c, w: (i[0, 0], c[0, 0], w, {}), "must be (C, G, n, n)"),
])
def test_bad_input_raises_input_error(change, message):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 16))
    ctfs = group_ctfs(16, DEFOCI_IN_ANGSTROMS[:4])
    images, ctfs, weights, options = change(images, ctfs, np.ones(4), )
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dc.deconvolve(images, ctfs, weights, **options)


def test_choose_alpha_rejects_unknown_rules_and_bad_grids(problem):
    _, images, ctfs, counts = problem
    with pytest.raises(InputError, match="unknown alpha rule"):
        dc.choose_alpha(images, ctfs, counts, rule="lcurve")
    with pytest.raises(InputError, match="alpha must be positive"):
        dc.choose_alpha(images, ctfs, counts, grid=[0.1, -1.0])


def test_single_threaded_blas_restores_the_thread_count():
    setters = dc._openblas_thread_setters()
    if not setters:
        pytest.skip("no OpenBLAS with openblas_set_num_threads_local in this process")
    before = [setter(3) for setter in setters]
    try:
        with dc._single_threaded_blas():
            assert [setter(1) for setter in setters] == [1] * len(setters)
        assert [setter(3) for setter in setters] == [3] * len(setters)
    finally:
        for setter, value in zip(setters, before):
            setter(value)
