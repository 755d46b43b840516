"""The many-image numba kernels (thesis 2.4, 3.3) against plain-numpy references.

`projected_statistics_kernel` runs the binned assignment kernel on every image with that image's
own projected means, sharing one set of scratch buffers: with `sample=False` it must equal the
dense soft statistics (Eqn. 2.55) of each image; with `sample=True` every image's counts are split
by one multinomial draw per pixel (Eqn. 2.58), so the n's conserve the counts and average to the
soft n with the exact multinomial variance. `projected_densities_kernel` must equal
`evaluate_gaussians` under every rotation.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tolerance
from cryogmm.grid import Grid
from cryogmm.kernels import evaluate_gaussians
from cryogmm.kernels.gaussians import n_exponentials, occupied_rows
from cryogmm.kernels.projections import projected_densities_kernel, projected_statistics_kernel
from cryogmm.kernels.reference import evaluate_gaussians_reference, soft_statistics_reference

BOX = 20
SPACING = 2.0
SIGMA = 3.0  # Å: 5 sigma is 7.5 pixels
PRECISION = 1.0 / SIGMA**2
K = 5


def _grid() -> Grid:
    """A square image grid with an origin that is not a multiple of the spacing."""
    return Grid((BOX, BOX), SPACING, (-17.3, -21.1))


def _case(seed: int = 0, n_images: int = 3):
    """Per-image projected means (P, K, 3), amplitudes and integer counts.

    Every image has its own means: three inside the image, one just outside an edge (its cut-off
    ball still reaches in) and one far away (touches nothing). Image i has about (i + 1) times as
    many counts as image 0 (so the largest image is not the first: the shared uniforms buffer must
    be sized by the maximum), and three counts in a corner that is outside every cut-off at 3 sigma.
    """
    rng = np.random.default_rng(seed)
    grid = _grid()
    lo = np.array(grid.origin_in_angstroms)
    hi = lo + SPACING * (BOX - 1)
    means = np.zeros((n_images, K, 3))
    for i in range(n_images):
        inside = rng.uniform(lo + 6.0, hi - 6.0, (3, 2))
        edge = np.array([hi[0] + 0.7 * SIGMA, rng.uniform(lo[1] + 8.0, hi[1] - 8.0)])
        far = lo - 30.0 * SIGMA
        means[i, :, :2] = np.vstack([inside, edge[None], far[None]])
    amplitudes = rng.uniform(0.5, 2.0, K)
    counts = np.zeros((n_images, BOX, BOX), dtype=np.int32)
    for i in range(n_images):
        density = evaluate_gaussians_reference(grid, means[i, :, :2], amplitudes, PRECISION)
        counts[i] = rng.poisson((i + 1) * 4.0 * density / density.max())
    # the corner pixel (x = lo, y = hi) is > 3 sigma from every mean of every image
    corner = np.array([lo[0], hi[1]])
    assert np.all(np.linalg.norm(means[:, :, :2] - corner, axis=-1) > 3.0 * SIGMA)
    counts[:, -1, 0] += 3
    return grid, means, amplitudes, counts


def _run(counts, grid, means, amplitudes, cutoff, rng=None):
    """Call the kernel as the sampler does (scratch memory allocated for the whole stack)."""
    origin = np.array([grid.origin_in_angstroms[0], grid.origin_in_angstroms[1], 0.0])
    per_image = counts.reshape(counts.shape[0], -1).astype(np.int64)
    work = np.empty((counts.shape[0], 5, 1) + counts.shape[1:])
    uniform_offsets = np.concatenate([[0], np.cumsum(per_image.sum(1))])
    draws = np.array([n_exponentials(c) for c in counts])
    assert np.array_equal(draws, per_image.sum(1) + (per_image > 0).sum(1))
    exponential_offsets = np.concatenate([[0], np.cumsum(draws)])
    sample = rng is not None
    exponentials = rng.standard_exponential(exponential_offsets[-1]) if sample else np.empty(0)
    return projected_statistics_kernel(counts, occupied_rows(counts), means, amplitudes, PRECISION, origin,
                                       SPACING, cutoff, exponentials, exponential_offsets, sample, work,
                                       np.empty(uniform_offsets[-1]), uniform_offsets)


def _responsibilities(counts_i, grid, means_i, amplitudes, cutoff):
    """Dense per-pixel responsibilities r_jk over the cut-off Gaussians (Eqn. 2.55) of one image,
    the pixel offsets v_j - m_k (n_pixels, K, 2) and the counts y_j, for the occupied pixels that
    some component reaches."""
    points = grid.points()
    offsets = points[:, None, :] - means_i[None, :, :2]
    d2 = (offsets**2).sum(-1)
    g = np.exp(-0.5 * PRECISION * d2) * amplitudes[None]
    g[d2 > cutoff**2 / PRECISION] = 0.0
    total = g.sum(1)
    y = counts_i.reshape(-1).astype(np.float64)
    keep = (y > 0) & (total > 0)
    return g[keep] / total[keep, None], offsets[keep], y[keep]


@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_soft_statistics_equal_the_reference_image_by_image(cutoff):
    grid, means, amplitudes, counts = _case()
    n, s, q, log_likelihood, lost = _run(counts, grid, means, amplitudes, cutoff)
    assert n.shape == (3, K) and s.shape == (3, K, 2) and q.shape == (3, K)
    assert log_likelihood.shape == (3,) and lost.shape == (3,)
    tol = tolerance(np.float64)
    for i in range(counts.shape[0]):
        n_k, s_k, q_k, ll = soft_statistics_reference(counts[i], grid, means[i, :, :2], amplitudes, PRECISION,
                                                      cutoff)
        np.testing.assert_allclose(n[i], n_k, rtol=0, atol=tol * counts[i].sum())
        np.testing.assert_allclose(s[i], s_k, rtol=0, atol=tol * np.abs(s_k).max())
        np.testing.assert_allclose(q[i], q_k, rtol=0, atol=tol * q_k.max())
        assert log_likelihood[i] == pytest.approx(ll, rel=tol)
        # the counts no component reaches are reported, not assigned
        reached = evaluate_gaussians_reference(grid, means[i, :, :2], amplitudes, PRECISION, cutoff) > 0
        assert lost[i] == counts[i][~reached].sum()
        assert n[i].sum() + lost[i] == pytest.approx(counts[i].sum(), rel=tol)
        assert n[i, -1] == 0.0  # the far component
    if cutoff == 3.0:
        assert np.all(lost >= 3)  # the corner counts
    # the images really differ (a kernel that reused image 0's means everywhere would fail above)
    assert not np.allclose(n[0], n[1])


def test_soft_statistics_do_not_depend_on_the_other_images():
    # the shared scratch buffers must not carry anything from one image to the next
    grid, means, amplitudes, counts = _case(seed=1)
    together = _run(counts, grid, means, amplitudes, 5.0)
    for i in range(counts.shape[0]):
        alone = _run(counts[i:i + 1].copy(), grid, means[i:i + 1].copy(), amplitudes, 5.0)
        for a, b in zip(together, alone):
            np.testing.assert_array_equal(a[i], b[0])


def test_sampled_statistics_conserve_the_counts_of_each_image():
    grid, means, amplitudes, counts = _case(seed=2)
    soft = _run(counts, grid, means, amplitudes, 3.0)
    rng = np.random.default_rng(5)
    for _ in range(20):
        n, s, q, log_likelihood, lost = _run(counts, grid, means, amplitudes, 3.0, rng)
        np.testing.assert_array_equal(n, np.round(n))
        assert np.all(n >= 0) and np.all(q >= 0)
        np.testing.assert_array_equal(n.sum(1) + lost, counts.reshape(3, -1).sum(1))
        np.testing.assert_array_equal(lost, soft[4])
        # the log-likelihood sum_j y_j log h_j depends on the means only
        np.testing.assert_array_equal(log_likelihood, soft[3])
        assert np.all(n[:, -1] == 0)


def test_sampled_statistics_average_to_the_soft_statistics_with_multinomial_variance():
    # Per pixel z_j. ~ Mult(y_j, r_j.), independently over pixels, so any statistic
    # T_k = sum_j c_jk z_jk (c = 1 for n, the offset for s, the squared offset for q) has mean
    # sum_j c_jk y_j r_jk (the soft statistic) and variance sum_j c_jk^2 y_j r_jk (1 - r_jk).
    grid, means, amplitudes, counts = _case(seed=3)
    cutoff = 5.0
    n_draws = 2000
    rng = np.random.default_rng(2024)
    draws = [_run(counts, grid, means, amplitudes, cutoff, rng) for _ in range(n_draws)]
    n = np.array([d[0] for d in draws])
    s = np.array([d[1] for d in draws])
    q = np.array([d[2] for d in draws])
    for i in range(counts.shape[0]):
        r, offsets, y = _responsibilities(counts[i], grid, means[i], amplitudes, cutoff)
        binomial_var = y[:, None] * r * (1 - r)
        expected = {
            "n": (y @ r, binomial_var.sum(0), n[:, i]),
            "s": (np.einsum("j,jk,jkc->kc", y, r, offsets), np.einsum("jk,jkc->kc", binomial_var, offsets**2),
                  s[:, i]),
            "q": (np.einsum("j,jk,jk->k", y, r, (offsets**2).sum(-1)),
                  np.einsum("jk,jk->k", binomial_var, (offsets**2).sum(-1) ** 2), q[:, i]),
        }
        # the dense helper agrees with the package's reference
        n_k, s_k, q_k, _ = soft_statistics_reference(counts[i], grid, means[i, :, :2], amplitudes, PRECISION, cutoff)
        np.testing.assert_allclose(expected["n"][0], n_k, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(expected["s"][0], s_k, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(expected["q"][0], q_k, rtol=1e-12, atol=1e-9)
        for name, (mean, var, sampled) in expected.items():
            # 4.5 exact standard errors over 60 compared numbers (3 images x 5 components x 4):
            # a false alarm has probability < 60 * 7e-6 = 4e-4
            bound = 4.5 * np.sqrt(var / n_draws) + 1e-9 * max(np.abs(mean).max(), 1.0)
            assert np.all(np.abs(sampled.mean(0) - mean) <= bound), (i, name, sampled.mean(0), mean, bound)
        # the sampled n's vary with the multinomial variance: sample variance within 25% of the
        # exact one for the components with a real share (the relative standard error of a variance
        # from 2000 draws is about sqrt(2 / 2000) = 3%, so 25% is a loose, safe bound)
        mean, var, sampled = expected["n"]
        shared = var > 2.0
        assert shared.sum() >= 2
        np.testing.assert_allclose(sampled.var(0, ddof=1)[shared], var[shared], rtol=0.25)


def test_same_seed_same_sampled_statistics():
    grid, means, amplitudes, counts = _case(seed=4)
    first = _run(counts, grid, means, amplitudes, 5.0, np.random.default_rng(99))
    second = _run(counts, grid, means, amplitudes, 5.0, np.random.default_rng(99))
    other = _run(counts, grid, means, amplitudes, 5.0, np.random.default_rng(100))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("cutoff", [4.0, 5.0])
def test_projected_densities_equal_evaluate_gaussians_per_rotation(cutoff):
    grid, means, amplitudes, _ = _case(seed=5, n_images=4)
    origin = np.array([grid.origin_in_angstroms[0], grid.origin_in_angstroms[1], 0.0])
    out = np.full((4, BOX, BOX), 7.0)  # garbage: the kernel zeroes its output
    projected_densities_kernel(means, amplitudes, PRECISION, origin, SPACING, cutoff, out)
    tol = tolerance(np.float64)
    for m in range(4):
        expected = evaluate_gaussians(grid, means[m, :, :2], amplitudes, PRECISION, cutoff)
        np.testing.assert_allclose(out[m], expected, rtol=0, atol=tol * expected.max())
        dense = evaluate_gaussians_reference(grid, means[m, :, :2], amplitudes, PRECISION, cutoff)
        np.testing.assert_allclose(out[m], dense, rtol=0, atol=tol * dense.max())
    assert not np.allclose(out[0], out[1])
