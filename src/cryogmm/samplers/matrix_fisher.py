"""Exact sampling from the matrix Fisher distribution on SO(3), p(R) ∝ exp(tr(Aᵀ R)).

This is the conditional of a rotation in the Gibbs sampler (thesis Eqn. 2.92 / C.73), drawn for
every image at every step, for concentrations from A = 0 (uniform on SO(3)) to ‖A‖ ~ 1e8.

Method. Write R = R(q) for a unit quaternion q = (w, x, y, z) (q and -q give the same R,
`cryogmm.geometry.so3.quaternion_to_matrix`). Each entry of R(q) is a quadratic form in q, so
tr(Aᵀ R(q)) = qᵀ K q with a symmetric 4x4 K linear in A, and q follows the Bingham distribution
on S³ with density ∝ exp(qᵀ K q) (antipodally symmetric, so the map q -> R(q) carries it to the
matrix Fisher distribution). With K = W diag(k) Wᵀ (eigh, k ascending) and λ_i = k_max - k_i >= 0,
the Bingham density in the eigenbasis is ∝ exp(-xᵀ B x), B = diag(λ) (the constant exp(k_max)
cancels). It is sampled exactly by rejection from an angular central Gaussian (ACG) envelope
(Kent, Ganeiber & Mardia 2018, "A new unified approach for the simulation of a wide class of
directional distributions", J. Comput. Graph. Stat. 27, section 4):

    Ω = I + 2B/b,  y ~ N(0, Ω⁻¹),  x = y / |y|   (the ACG density ∝ (xᵀΩx)^(-q/2), q = 4),
    accept with probability exp(-xᵀBx) (xᵀΩx)² / M,   M = exp(-(4 - b)/2) (4/b)².

The bound: with z = xᵀBx >= 0, xᵀΩx = 1 + 2z/b and h(z) = exp(-z) (1 + 2z/b)² has
d log h / dz = -1 + (4/b) / (1 + 2z/b), zero at z* = (4 - b)/2 >= 0 for b <= 4, where
h(z*) = exp(-(4 - b)/2) (4/b)² = M. Any b in (0, 4] gives an exact sampler; b solving
Σ_i 1/(b + 2λ_i) = 1 (KGM 2018, Eqn. 3.3) maximises the acceptance rate. Since min λ = 0 the
left side is >= 1/b, so the root lies in [1, 4] (b = 4 when A = 0, which accepts every draw).
The acceptance rate is 1 at A = 0 and decreases to its high-concentration limit
(2/b)^(3/2) / (√π M) = 0.447 at b = 1 (Laplace approximation of the two normalising constants;
0.44-0.45 measured for all A tried), so the cost per draw is uniform in ‖A‖; everything is done in the
eigenbasis, where the Gaussian is diagonal and the scales 1/sqrt(1 + 2λ_i/b) are well defined
for any λ_i, so nothing overflows or loses precision at ‖A‖ ~ 1e8.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from cryogmm.geometry.so3 import quaternion_to_matrix

DEFAULT_MAX_ATTEMPTS = 10_000  # per draw; reaching it has probability < 0.56**10000 (rate >= ~0.44)


def _quaternion_forms() -> np.ndarray:
    """T with R(q)_ij = qᵀ T[i, j] q for unit q, built from `quaternion_to_matrix` itself.

    Returns
    -------
    (3, 3, 4, 4) array of symmetric 4x4 forms. Polarisation: R(e_a) = T_aa and
    R((e_a + e_b)/√2) = (T_aa + T_bb + 2 T_ab)/2. The coefficients are integers (0, ±1), so the
    rounding only removes the round-off of 1/√2.
    """
    eye = np.eye(4)
    diagonal = quaternion_to_matrix(eye)  # (4, 3, 3)
    forms = np.empty((3, 3, 4, 4))
    for a in range(4):
        for b in range(4):
            if a == b:
                forms[:, :, a, a] = diagonal[a]
            else:
                forms[:, :, a, b] = quaternion_to_matrix(eye[a] + eye[b]) - 0.5 * (diagonal[a] + diagonal[b])
    return np.rint(forms)


_FORMS = _quaternion_forms()


def _checked(parameters) -> np.ndarray:
    a = np.asarray(parameters, dtype=np.float64)
    if a.ndim < 2 or a.shape[-2:] != (3, 3):
        raise ValueError(f"matrix Fisher parameters must have shape (..., 3, 3), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("matrix Fisher parameters contain NaN or infinite entries "
                         f"({int(np.sum(~np.isfinite(a)))} of {a.size}); the rotation conditional is undefined")
    return a


def bingham_matrix(parameters: np.ndarray) -> np.ndarray:
    """The symmetric K with tr(Aᵀ R(q)) = qᵀ K q for unit quaternions q (w, x, y, z).

    Parameters
    ----------
    parameters : (..., 3, 3) array A.

    Returns
    -------
    (..., 4, 4) array K.
    """
    return np.einsum("...ij,ijab->...ab", _checked(parameters), _FORMS)


def matrix_fisher_log_density_unnormalised(rotations: np.ndarray, parameters: np.ndarray) -> np.ndarray:
    """tr(Aᵀ R) (broadcast); shapes (..., 3, 3) and (..., 3, 3) -> (...)."""
    return np.sum(_checked(parameters) * np.asarray(rotations, dtype=np.float64), axis=(-2, -1))


def matrix_fisher_mode(parameters: np.ndarray) -> np.ndarray:
    """The rotation maximising tr(Aᵀ R): U diag(1, 1, det(U Vᵀ)) Vᵀ for A = U S Vᵀ (SVD).

    Parameters
    ----------
    parameters : (..., 3, 3) array A.

    Returns
    -------
    (..., 3, 3) rotations. The mode is unique when s2 + s3 > 0 for the signed singular values
    of the proper SVD (s1 >= s2 >= |s3|, s3 carrying the sign of det A).
    """
    u, _, vt = np.linalg.svd(_checked(parameters))
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    u = u.copy()
    u[..., :, 2] *= sign[..., None]
    return u @ vt


@numba.njit(nogil=True, cache=True)
def acg_parameter(lam: np.ndarray) -> float:
    """b in [1, 4] with Σ_i 1/(b + 2 λ_i) = 1 (KGM 2018, Eqn. 3.3), for λ >= 0 with min λ = 0.

    f(b) = Σ 1/(b + 2λ_i) - 1 is convex and decreasing with f(1) >= 0 >= f(4), so Newton's method
    from b = 1 increases monotonically to the root (never overshoots); 4 is a safeguard cap.
    """
    b = 1.0
    for _ in range(200):
        f = -1.0
        slope = 0.0
        for i in range(lam.shape[0]):
            t = 1.0 / (b + 2.0 * lam[i])
            f += t
            slope -= t * t
        new = min(b - f / slope, 4.0)
        if not new > b * (1.0 + 1e-15):  # converged (or f <= 0 already, from round-off)
            return max(new, b)
        b = new
    return b


@numba.njit(nogil=True, cache=True)
def _bingham_kernel(rng, lam, max_attempts, out, attempts):
    """Rejection sampling from exp(-Σ λ_i x_i²) on S³ with the ACG envelope (module docstring).

    lam : (m, 4) float64 with min 0 per row; out : (m, 4) unit vectors; attempts : (m,) int64,
    the number of proposals used (0 where `max_attempts` was reached without acceptance).
    """
    scale = np.empty(4)
    y = np.empty(4)
    for m in range(lam.shape[0]):
        b = acg_parameter(lam[m])
        log_bound = -0.5 * (4.0 - b) + 2.0 * math.log(4.0 / b)  # log M
        for i in range(4):
            scale[i] = 1.0 / math.sqrt(1.0 + 2.0 * lam[m, i] / b)  # y_i ~ N(0, 1/Ω_ii)
        attempts[m] = 0
        for t in range(1, max_attempts + 1):
            r2 = 0.0
            z = 0.0
            for i in range(4):
                y[i] = rng.standard_normal() * scale[i]
                r2 += y[i] * y[i]
                z += lam[m, i] * y[i] * y[i]
            if r2 == 0.0:
                continue
            z /= r2  # z = xᵀ B x, x = y/|y|
            log_ratio = -z + 2.0 * math.log1p(2.0 * z / b) - log_bound  # log[f*(x) / (M g*(x))] <= 0
            if math.log(rng.random()) <= log_ratio:
                norm = math.sqrt(r2)
                for i in range(4):
                    out[m, i] = y[i] / norm
                attempts[m] = t
                break


def sample_bingham(rng: np.random.Generator, matrices: np.ndarray,
                   max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> tuple[np.ndarray, np.ndarray]:
    """Exact draws from the Bingham densities ∝ exp(qᵀ K q) on S³, one per K.

    Parameters
    ----------
    rng : numpy Generator (its state advances).
    matrices : (..., 4, 4) symmetric K.
    max_attempts : proposals allowed per draw before a RuntimeError.

    Returns
    -------
    quaternions : (..., 4) unit vectors (the sign is random: ±q are equally likely).
    attempts : (...) int64, proposals used per draw (the acceptance rate is size / attempts.sum()).
    """
    k = np.asarray(matrices, dtype=np.float64)
    batch = k.shape[:-2]
    eigenvalues, eigenvectors = np.linalg.eigh(k.reshape(-1, 4, 4))
    lam = np.ascontiguousarray(eigenvalues[:, -1:] - eigenvalues)  # λ_i = k_max - k_i >= 0, B = diag(λ)
    x = np.empty_like(lam)
    attempts = np.empty(lam.shape[0], dtype=np.int64)
    _bingham_kernel(rng, lam, int(max_attempts), x, attempts)
    if np.any(attempts == 0):
        raise RuntimeError(f"Bingham rejection sampler: {int(np.sum(attempts == 0))} draw(s) had no proposal "
                           f"accepted in {max_attempts} attempts (expected acceptance rate >= ~0.44)")
    q = np.einsum("mab,mb->ma", eigenvectors, x)
    return q.reshape(batch + (4,)), attempts.reshape(batch)


def sample_matrix_fisher(rng: np.random.Generator, parameters: np.ndarray,
                         max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> np.ndarray:
    """One exact, independent draw from p(R) ∝ exp(tr(Aᵀ R)) on SO(3) per A (Eqn. 2.92 / C.73).

    Parameters
    ----------
    rng : numpy Generator (its state advances).
    parameters : (..., 3, 3) array of A (finite; A = 0 gives Haar-uniform rotations).
    max_attempts : rejection proposals allowed per draw before a RuntimeError.

    Returns
    -------
    (..., 3, 3) rotation matrices.
    """
    q, _ = sample_bingham(rng, bingham_matrix(parameters), max_attempts)
    return quaternion_to_matrix(q)
