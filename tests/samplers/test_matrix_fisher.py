"""Statistical tests of the exact matrix Fisher sampler p(R) ∝ exp(tr(Aᵀ R)) (Eqn. 2.92 / C.73).

All seeds are fixed. Tolerances are stated in standard errors of the sample size used (4 SE per
checked quantity, or p > 0.001 for goodness-of-fit tests), never tuned to the outcome.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.transform import Rotation

from cryogmm.geometry.so3 import quaternion_to_matrix, random_rotations
from cryogmm.samplers.matrix_fisher import (acg_parameter, bingham_matrix, matrix_fisher_log_density_unnormalised,
                                            matrix_fisher_mode, sample_bingham, sample_matrix_fisher)


def _proper_rotations(rng, n):
    return random_rotations(rng, n)


def _rotation_angles(r):
    return np.arccos(np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# 1. The quadratic form and the pieces of the rejection sampler (numpy references)


def test_quadratic_form_equals_trace():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200, 3, 3)) * np.array([1.0, 1e3, 1e7])[rng.integers(0, 3, 200), None, None]
    q = rng.standard_normal((200, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = bingham_matrix(a)
    assert np.array_equal(k, np.swapaxes(k, -1, -2))
    quadratic = np.einsum("na,nab,nb->n", q, k, q)
    trace = matrix_fisher_log_density_unnormalised(quaternion_to_matrix(q), a)
    scale = np.abs(a).sum(axis=(1, 2))
    np.testing.assert_allclose(quadratic, trace, rtol=0, atol=1e-13 * scale.max())
    assert np.all(np.abs(quadratic - trace) <= 1e-13 * scale)


def test_bingham_matrix_of_a_diagonal_matrix():
    # tr(diag(s) R(q)) = w²(s1+s2+s3) + x²(s1-s2-s3) + y²(s2-s1-s3) + z²(s3-s1-s2)
    s1, s2, s3 = 3.0, 2.0, 0.5
    expected = np.diag([s1 + s2 + s3, s1 - s2 - s3, s2 - s1 - s3, s3 - s1 - s2])
    np.testing.assert_array_equal(bingham_matrix(np.diag([s1, s2, s3])), expected)


def _reference_acg_parameter(lam):
    """Bisection on [1, 4] of Σ 1/(b + 2λ) = 1 (plain numpy)."""
    lo, hi = 1.0, 4.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.sum(1.0 / (mid + 2.0 * lam)) > 1.0 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("lam", [[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 5, 5], [0, 1e-3, 1e3, 1e8],
                                 [0, 2e8, 2e8, 4e8], [0, 0, 0, 1e6]])
def test_acg_parameter_solves_its_equation_and_bounds_the_ratio(lam):
    lam = np.asarray(lam, dtype=np.float64)
    b = acg_parameter(lam)
    assert 1.0 <= b <= 4.0
    assert b == pytest.approx(_reference_acg_parameter(lam), rel=1e-12)
    assert np.sum(1.0 / (b + 2.0 * lam)) == pytest.approx(1.0, rel=1e-12)
    # the bound M = exp(-(4-b)/2) (4/b)^2 is the maximum over z >= 0 of exp(-z) (1 + 2z/b)^2
    bound = np.exp(-(4.0 - b) / 2.0) * (4.0 / b) ** 2
    z = np.concatenate([np.linspace(0.0, 50.0, 500_001), [(4.0 - b) / 2.0]])
    h = np.exp(-z) * (1.0 + 2.0 * z / b) ** 2
    assert h.max() <= bound * (1 + 1e-14)
    assert h.max() == pytest.approx(bound, rel=1e-14)
    # and f*(x)/g*(x) = exp(-xᵀBx) (xᵀΩx)² <= M on random unit vectors
    x = np.random.default_rng(2).standard_normal((100_000, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xbx = x**2 @ lam
    assert np.all(np.exp(-xbx) * (1.0 + 2.0 * xbx / b) ** 2 <= bound * (1 + 1e-12))


@pytest.mark.parametrize("lam, index, mu", [
    # exp(-5 x3²): on S³ under the uniform law x_i² ~ Beta(1/2, 3/2), so E[exp(μ x_i²)] = 1F1(1/2; 2; μ)
    ([0.0, 0.0, 0.0, 5.0], 3, -5.0),
    # exp(-3 (x1² + x2² + x3²)) = exp(-3) exp(3 x0²)
    ([0.0, 3.0, 3.0, 3.0], 0, 3.0),
])
def test_bingham_draws_against_closed_forms(lam, index, mu):
    """Acceptance rate Z_f / (M Z_g) and E[x_index²], both in closed form via 1F1.

    Z_f / |S³| = c 1F1(1/2; 2; μ) (c = 1 or exp(-3)), Z_g / |S³| = |Ω|^(-1/2) for the ACG, and
    E_f[x_index²] = d log 1F1(1/2; 2; μ) / dμ = (1/4) 1F1(3/2; 3; μ) / 1F1(1/2; 2; μ).
    """
    lam = np.asarray(lam)
    b = acg_parameter(lam)
    bound = np.exp(-(4.0 - b) / 2.0) * (4.0 / b) ** 2
    bingham_mean = special.hyp1f1(0.5, 2.0, mu) * (np.exp(-3.0) if mu > 0 else 1.0)
    expected_rate = bingham_mean * np.sqrt(np.prod(1.0 + 2.0 * lam / b)) / bound
    n = 20_000
    x, attempts = sample_bingham(np.random.default_rng(3), np.broadcast_to(np.diag(-lam), (n, 4, 4)))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-14)
    total = attempts.sum()
    assert abs(n / total - expected_rate) < 4 * np.sqrt(expected_rate * (1 - expected_rate) / total)
    second_moment = 0.25 * special.hyp1f1(1.5, 3.0, mu) / special.hyp1f1(0.5, 2.0, mu)
    x2 = x[:, index] ** 2
    assert abs(x2.mean() - second_moment) < 4 * x2.std(ddof=1) / np.sqrt(n)


# ---------------------------------------------------------------------------------------------
# 2. A = 0 gives Haar-uniform rotations


def test_zero_parameter_gives_uniform_rotations():
    n = 20_000
    r = sample_matrix_fisher(np.random.default_rng(4), np.zeros((n, 3, 3)))
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-14)
    assert np.allclose(np.linalg.det(r), 1.0)
    # under Haar measure E[R] = 0 and var(R_ij) = 1/3
    assert np.all(np.abs(r.mean(axis=0)) < 4 * np.sqrt(1.0 / 3.0 / n))
    # rotation angle density (1 - cos θ)/π on [0, π], CDF (θ - sin θ)/π
    theta = _rotation_angles(r)
    assert stats.kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue > 1e-3
    # axis uniform on the sphere: mean of the unit axis ~ 0 (var 1/3 per component)
    axes = Rotation.from_matrix(r).as_rotvec() / theta[:, None]
    assert np.all(np.abs(axes.mean(axis=0)) < 4 * np.sqrt(1.0 / 3.0 / n))


# ---------------------------------------------------------------------------------------------
# 3. Small A: against importance-weighted Haar rotations


def _weighted_mean_and_error(values, weights):
    """Self-normalised importance-sampling mean and its delta-method standard error."""
    w = weights / weights.sum()
    mean = np.tensordot(w, values, axes=1)
    error = np.sqrt(np.tensordot(w**2, (values - mean) ** 2, axes=1))
    return mean, error


def test_small_concentration_against_brute_force():
    rng = np.random.default_rng(5)
    u, v = _proper_rotations(rng, 2)
    u[:, 0] *= -1  # an improper U: det(A) < 0 as well
    a = u @ np.diag([2.0, 1.0, 0.5]) @ v.T
    n = 20_000
    r = sample_matrix_fisher(np.random.default_rng(6), np.broadcast_to(a, (n, 3, 3)))

    haar = random_rotations(np.random.default_rng(7), 1_000_000)
    log_w = matrix_fisher_log_density_unnormalised(haar, a)
    weights = np.exp(log_w - log_w.max())
    reference, reference_error = _weighted_mean_and_error(haar.reshape(-1, 9), weights)
    sample_mean = r.reshape(-1, 9).mean(axis=0)
    sample_error = r.reshape(-1, 9).std(axis=0, ddof=1) / np.sqrt(n)
    combined = np.sqrt(sample_error**2 + reference_error**2)
    assert np.all(np.abs(sample_mean - reference) < 4 * combined), (sample_mean - reference) / combined
    # the mean is far from 0 here, so the comparison is not trivially satisfied
    assert np.max(np.abs(reference)) > 50 * combined.max()

    # distribution of tr(AᵀR): two-sample KS with the effective size of the weighted sample
    t_sample = np.sort(matrix_fisher_log_density_unnormalised(r, a))
    order = np.argsort(log_w)
    t_reference = log_w[order]
    cdf_reference = np.cumsum(weights[order]) / weights.sum()
    cdf_at_sample = np.interp(t_sample, t_reference, cdf_reference)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    distance = max(np.max(ecdf_hi - cdf_at_sample), np.max(cdf_at_sample - ecdf_lo))
    effective = weights.sum() ** 2 / np.sum(weights**2)
    scaled = distance * np.sqrt(n * effective / (n + effective))
    assert stats.kstwobign.sf(scaled) > 1e-3


# ---------------------------------------------------------------------------------------------
# 4. Large A: Gaussian approximation about the mode


@pytest.mark.parametrize("signed_values", [
    (1e6, 1e5, 1e4),
    (1e6, 1e5, -1e4),   # det(A) < 0: the proper SVD carries the sign on the smallest value
    (1e5, 1e5, 0.0),    # rank-deficient
    (1e7, 1e3, 1e3),    # very anisotropic
    (1e8, 1e8, 1e8),    # the most concentrated case expected
])
def test_large_concentration_matches_gaussian_approximation(signed_values):
    rng = np.random.default_rng(8)
    u, v = _proper_rotations(rng, 2)  # proper rotations, so A = U S Vᵀ is the proper SVD
    s = np.asarray(signed_values)
    a = u @ np.diag(s) @ v.T
    mode = u @ v.T
    # SVD round-off in U Vᵀ is ~ eps ‖A‖ / (s_j + s_k) <= 2e-16 * 1e7 / 2e3 ~ 1e-12
    np.testing.assert_allclose(matrix_fisher_mode(a), mode, atol=1e-10)

    n = 4000
    r = sample_matrix_fisher(np.random.default_rng(9), np.broadcast_to(a, (n, 3, 3)))
    # ω: rotation vector of Vᵀ (R_modeᵀ R) V; exponent ≈ const - ½ Σ_i (s_j + s_k) ω_i²
    delta = np.swapaxes(v, 0, 1) @ mode.T @ r @ v
    omega = Rotation.from_matrix(delta).as_rotvec()
    stiffness = np.array([s[1] + s[2], s[0] + s[2], s[0] + s[1]])
    variance = 1.0 / stiffness
    # mean ω = 0 (4 SE), sample variances within 4 SE (relative SE of a variance is sqrt(2/n)),
    # correlations within 4/sqrt(n); higher-order terms are O(1/s) ~ 1e-3 relative or less
    assert np.all(np.abs(omega.mean(axis=0)) < 4 * np.sqrt(variance / n))
    relative = omega.var(axis=0, ddof=1) / variance - 1.0
    assert np.all(np.abs(relative) < 4 * np.sqrt(2.0 / n)), relative
    correlation = np.corrcoef(omega.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(correlation) < 4 / np.sqrt(n)), correlation
    # the mean rotation, projected to SO(3), is the mode to within the SE of the mean angle
    projected = matrix_fisher_mode(r.mean(axis=0))
    angle = _rotation_angles(mode.T @ projected)
    assert angle < 4 * np.sqrt(variance.sum() / n)


def test_rank_one_parameter_is_von_mises_fisher_about_its_axis():
    """A = s u1 v1ᵀ: tr(AᵀR) = s u1ᵀ(R v1), so m = R v1 is von Mises-Fisher(u1, s) on S²
    (1 - u1ᵀm ~ Exponential(rate s) truncated at 2) and the rotation about m is uniform."""
    rng = np.random.default_rng(10)
    u, v = _proper_rotations(rng, 2)
    s = 1e6
    a = s * np.outer(u[:, 0], v[:, 0])
    n = 4000
    r = sample_matrix_fisher(np.random.default_rng(11), np.broadcast_to(a, (n, 3, 3)))
    m = r @ v[:, 0]
    one_minus_cos = 0.5 * np.sum((m - u[:, 0]) ** 2, axis=1)  # 1 - u1ᵀm without cancellation
    assert stats.kstest(s * one_minus_cos, "expon").pvalue > 1e-3  # truncation at 2s is negligible
    # angle of R v2 about u1 (equal to the angle about m up to O(1/sqrt(s)) = 1e-3): uniform
    second = r @ v[:, 1]
    angle = np.arctan2(second @ u[:, 2], second @ u[:, 1])
    assert stats.kstest(angle, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3


# ---------------------------------------------------------------------------------------------
# 5. Batch handling, reproducibility, validation


def test_shapes_reproducibility_and_state():
    a = np.random.default_rng(12).standard_normal((2, 5, 3, 3)) * 10
    r = sample_matrix_fisher(np.random.default_rng(13), a)
    assert r.shape == (2, 5, 3, 3)
    assert sample_matrix_fisher(np.random.default_rng(13), a[0, 0]).shape == (3, 3)
    assert sample_matrix_fisher(np.random.default_rng(13), a[0]).shape == (5, 3, 3)
    assert np.array_equal(r, sample_matrix_fisher(np.random.default_rng(13), a))
    rng = np.random.default_rng(13)
    first, second = sample_matrix_fisher(rng, a), sample_matrix_fisher(rng, a)
    assert np.array_equal(first, r) and not np.array_equal(first, second)  # the generator's state advances
    np.testing.assert_allclose(np.linalg.det(r), 1.0, rtol=1e-13)
    assert matrix_fisher_mode(a).shape == (2, 5, 3, 3)
    assert matrix_fisher_log_density_unnormalised(r, a).shape == (2, 5)
    # each draw depends on its own A: draws for a concentrated A sit at its mode
    big = np.stack([np.zeros((3, 3)), 1e8 * np.eye(3)])
    drawn = sample_matrix_fisher(np.random.default_rng(14), big)
    assert _rotation_angles(drawn[1]) < 1e-3


def test_acceptance_rate_and_attempt_cap():
    rng = np.random.default_rng(15)
    u, v = _proper_rotations(rng, 2)
    for scale, low in [(0.0, 1.0), (1e6, 0.4)]:
        k = bingham_matrix(np.broadcast_to(u @ np.diag([3.0, 2.0, 1.0]) @ v.T * scale, (4000, 3, 3)))
        _, attempts = sample_bingham(rng, k)
        assert attempts.min() >= 1
        assert 4000 / attempts.sum() >= low  # 1 exactly at A = 0; 0.447 in the concentrated limit
    with pytest.raises(RuntimeError, match="no proposal accepted in 1 attempts"):
        sample_matrix_fisher(np.random.default_rng(16), np.broadcast_to(1e6 * np.eye(3), (100, 3, 3)),
                             max_attempts=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_parameters_are_rejected(bad):
    a = np.eye(3)
    a[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        sample_matrix_fisher(np.random.default_rng(0), a)
    with pytest.raises(ValueError, match="NaN or infinite"):
        matrix_fisher_mode(a)


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3, 3\)"):
        sample_matrix_fisher(np.random.default_rng(0), np.zeros((3, 4)))
