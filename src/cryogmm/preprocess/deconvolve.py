"""CTF deconvolution of class averages (thesis section 4.1.2, Eqns. 4.3 and 4.4).

Class c is given as G "defocus-group" averages z_g (n x n images), each the average of w_g
aligned particles whose mean CTF is f_g. The clean, non-negative projection y of the class is the
minimiser of

    L(y) = 1/2 sum_g w_g ||z_g - p f_g * y||^2 + 1/2 alpha ||grad y||^2,   y >= 0     (Eqn. 4.3)

with `*` the (circular) convolution with the PSF whose Fourier transform is f_g, p = +1 or -1 the
polarity and grad the periodic forward difference. G = 1 is single-frame deconvolution of an
ordinary class average (Eqn. 4.4).

Weights are divided by the class' total weight (sum_g w_g = 1 inside L), so the data term is the
weighted mean of the groups' squared residuals and L does not change when every count is
multiplied by the same factor. `alpha` is then dimensionless: the weight of the summed squared
differences between neighbouring pixels relative to that weighted squared residual (both in the
images' own units, which cancel). With alpha = 1, a unit difference between one pair of
neighbouring pixels costs as much as a unit misfit at one pixel of every group. The thesis used
alpha = 10 on the sum over about 100 particle images per class, i.e. alpha = 0.1 here;
generalised cross-validation (`choose_alpha`, the default) picks 0.1-0.6 on simulated classes of
100 particles.

Everything is diagonal in Fourier space. With Y = DFT(y), Z_g = DFT(z_g) and N = n^2 pixels,

    L = 1/(2N) sum_k [(H(k) + alpha P(k)) |Y(k)|^2 - 2 p Re(conj(Y(k)) B(k))] + 1/2 sum_g w_g ||z_g||^2
    H = sum_g w_g f_g^2,   B = sum_g w_g f_g Z_g,   P = |2 sin(pi k_x / n)|^2 + |2 sin(pi k_y / n)|^2

so H and B are computed once (batched over classes and groups) and each evaluation of L and its
gradient costs one rfft2 and one irfft2, whatever G. L-BFGS-B (scipy) minimises L under y >= 0
one class at a time (the classes are separable; separate runs are faster than one joint run and
stop when each class has converged), starting from the clipped unconstrained (Tikhonov) solution
p B / (H + alpha P).

The constraint cannot follow the noise below zero, so the background of the solution is a faint
positive haze (a few % of the peak in simulations) that the thesis removes with a mask afterwards.

Polarity: p = +1 means z = f * y (dark particles with the CTF of CONVENTIONS.md, as in raw
micrographs); p = -1 means z = -f * y (bright particles, as RELION and cryoSPARC extract them).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.optimize import Bounds, minimize

from cryogmm.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_ALPHA_GRID = np.logspace(-6.0, 3.0, 55)
DEFAULT_MAX_ITERATIONS = 500
DEFAULT_TOLERANCE = 1e-7
LBFGS_MEMORY = 7  # L-BFGS-B corrections kept: 5-20 take the same iterations here; fewer cost less
# polarity="auto": radius of the central disc, and inner radius of the outer region (which takes
# the corners too), as fractions of the box
POLARITY_DISC_RADIUS = 1.0 / 6.0
POLARITY_RING_RADIUS = 0.375


@dataclass(frozen=True)
class DeconvolutionResult:
    """Deconvolved class averages and how they were obtained.

    Attributes
    ----------
    images : (C, n, n) float64 array, >= 0
        The MAP projections y_c (Eqn. 4.3), in the units of the input images: the particle is
        bright on a zero background whatever the polarity of the input.
    alpha : (C,) float64 array
        Smoothness weight used for each class (dimensionless, see the module docstring).
    alpha_rule : str
        "given" when alpha was passed, otherwise the rule that chose it ("gcv": generalised
        cross-validation, see `choose_alpha`).
    polarity : int
        +1 (z = f * y, dark particles) or -1 (z = -f * y, bright particles).
    polarity_rule : str
        "given", or "auto: ..." with the statistic that decided it (for the log).
    losses : (C,) float64 array
        L(y_c) at the solution (Eqn. 4.3 with normalised weights), in squared image units.
    iterations : (C,) int array
        L-BFGS-B iterations of each class.
    converged : (C,) bool array
        Whether L-BFGS-B stopped on its tolerance rather than on the iteration limit.
    """

    images: np.ndarray
    alpha: np.ndarray
    alpha_rule: str
    polarity: int
    polarity_rule: str
    losses: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray

    def __post_init__(self):
        images = np.asarray(self.images, dtype=np.float64)
        c = images.shape[0]
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (C, n, n), got {images.shape}")
        if self.polarity not in (1, -1):
            raise ValueError(f"polarity must be +1 or -1, got {self.polarity}")
        for name, dtype in (("alpha", np.float64), ("losses", np.float64), ("iterations", np.int64),
                            ("converged", bool)):
            values = np.asarray(getattr(self, name), dtype=dtype).reshape(-1)
            if values.shape != (c,):
                raise ValueError(f"{name} must have one value per class ({c}), got {values.shape}")
            values.setflags(write=False)
            object.__setattr__(self, name, values)
        images.setflags(write=False)
        object.__setattr__(self, "images", images)


@dataclass(frozen=True)
class AlphaChoice:
    """Smoothness weights chosen from the data.

    Attributes
    ----------
    alpha : (C,) float64 array, one per class
    rule : str, e.g. "gcv"
    grid : (A,) float64 array, the alphas tried
    scores : (C, A) float64 array, the rule's criterion on the grid (smaller is better)
    """

    alpha: np.ndarray
    rule: str
    grid: np.ndarray
    scores: np.ndarray


# ---------------------------------------------------------------------------------------------
# Input handling


def _as_groups(group_images, group_ctfs, group_weights):
    """Validated float64 arrays: images and CTFs (C, G, n, n), weights (C, G) summing to 1 per class.

    Groups of weight zero are set to zero images and CTFs (their input values, NaN included, are
    ignored). Returns (images, ctfs, weights, total_weights (C,)).
    """
    images = np.asarray(group_images, dtype=np.float64)
    if images.ndim in (2, 3):
        images = images.reshape((1,) * (4 - images.ndim) + images.shape)
    if images.ndim != 4 or images.shape[-1] != images.shape[-2] or images.shape[-1] < 2:
        raise InputError(f"group images must be (C, G, n, n), (G, n, n) or (n, n) with square n x n images, "
                         f"got shape {np.shape(group_images)}")
    c, g, n, _ = images.shape
    try:
        ctfs = np.broadcast_to(np.asarray(group_ctfs, dtype=np.float64), images.shape)
    except ValueError:
        raise InputError(f"group CTFs of shape {np.shape(group_ctfs)} do not match the images "
                         f"{images.shape}; pass one fft2-ordered n x n CTF per group image") from None
    if group_weights is None:
        weights = np.ones((c, g))
    else:
        weights = np.asarray(group_weights, dtype=np.float64)
        if weights.shape == (g,):  # the same counts for every class
            weights = np.broadcast_to(weights, (c, g))
        if weights.shape != (c, g):
            raise InputError(f"group weights must be (C, G) = {(c, g)}, got {np.shape(group_weights)}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise InputError("group weights (particle counts) must be finite and >= 0")
    total = weights.sum(axis=1)
    if np.any(total <= 0):
        bad = np.flatnonzero(total <= 0)
        raise InputError(f"class {bad[0]} has total weight 0 (no particles); drop the class "
                         f"({bad.size} such classes)")
    used = weights > 0
    images = np.where(used[..., None, None], images, 0.0)
    ctfs = np.where(used[..., None, None], ctfs, 0.0)
    # make each CTF exactly even on the grid, f(k) = f(-k), so that its PSF is real and symmetric:
    # this changes only the Nyquist row and column of astigmatic CTFs on even boxes, where k and
    # -k fall on the same grid point and the CTF sampled at one of them is ambiguous
    mirrored = np.roll(ctfs[..., ::-1, ::-1], 1, axis=(-2, -1))
    ctfs = 0.5 * (ctfs + mirrored)
    if not np.all(np.isfinite(images)):
        raise InputError("group images contain NaN or infinite values; check the class averages")
    if not np.all(np.isfinite(ctfs)):
        raise InputError("group CTFs contain NaN or infinite values; check the CTF parameters")
    return images, ctfs, weights / total[:, None], total


def _check_alpha(alpha, n_classes: int) -> np.ndarray:
    values = np.asarray(alpha, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.full(n_classes, values[0])
    if values.shape != (n_classes,):
        raise InputError(f"alpha must be one value or one per class ({n_classes}), got {values.size}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"alpha must be positive and finite, got {values.min():g}; "
                         f"pass a value such as 0.01 or leave it out to choose it from the data")
    return values


# ---------------------------------------------------------------------------------------------
# Fourier-space pieces (all (C, n, n // 2 + 1) on the rfft2 grid)


def _penalty_spectrum(n: int) -> np.ndarray:
    """P(k) = |2 sin(pi k_y / n)|^2 + |2 sin(pi k_x / n)|^2 on the rfft2 grid, (n, n // 2 + 1).

    The eigenvalues of D_x^T D_x + D_y^T D_y for periodic forward differences D.
    """
    sy = (2.0 * np.sin(np.pi * np.arange(n) / n)) ** 2
    sx = sy[: n // 2 + 1]
    return sy[:, None] + sx[None, :]


def _hermitian_multiplicity(n: int) -> np.ndarray:
    """How often each rfft2 column stands for itself in the full spectrum: 1 or 2, (n // 2 + 1,)."""
    m = np.full(n // 2 + 1, 2.0)
    m[0] = 1.0
    if n % 2 == 0:
        m[-1] = 1.0
    return m


@dataclass(frozen=True)
class _FourierTerms:
    """Precomputed quantities of Eqn. 4.3 for C classes (weights normalised per class)."""

    h: np.ndarray          # (C, n, n//2+1) sum_g w_g f_g^2
    b: np.ndarray          # (C, n, n//2+1) sum_g w_g f_g Z_g (complex)
    spectral_energy: np.ndarray  # (C, n, n//2+1) sum_g w_g |Z_g|^2
    energy: np.ndarray     # (C,) sum_g w_g ||z_g||^2
    n_groups: np.ndarray   # (C,) groups with positive weight


def _fourier_terms(images: np.ndarray, ctfs: np.ndarray, weights: np.ndarray,
                   scale: np.ndarray | None = None) -> _FourierTerms:
    """H, B and the data energies of C classes from (C, G, n, n) images and CTFs, (C, G) weights.

    With `scale` (C,), the terms of images / scale. The FFTs run one class at a time to bound memory.
    """
    c, _, n, _ = images.shape
    half = ctfs[..., : n // 2 + 1]
    scale = np.ones(c) if scale is None else scale
    b = np.empty((c, n, n // 2 + 1), dtype=np.complex128)
    spectral_energy = np.empty((c, n, n // 2 + 1))
    for i in range(c):  # loop over classes; each step is a batched FFT over the groups
        z = scipy.fft.rfft2(images[i]) / scale[i]
        w = weights[i][:, None, None]
        b[i] = (w * half[i] * z).sum(axis=0)
        spectral_energy[i] = (w * (z.real**2 + z.imag**2)).sum(axis=0)
    return _FourierTerms(
        h=np.einsum("cg,cgyx,cgyx->cyx", weights, half, half),
        b=b,
        spectral_energy=spectral_energy,
        energy=np.einsum("cg,cgyx,cgyx->c", weights, images, images) / scale**2,
        n_groups=(weights > 0).sum(axis=1),
    )


def _tikhonov(terms: _FourierTerms, alpha: np.ndarray, polarity: int) -> np.ndarray:
    """Unconstrained minimiser of Eqn. 4.3, p B / (H + alpha P), in real space: (C, n, n)."""
    n = terms.h.shape[-2]
    a = terms.h + alpha[:, None, None] * _penalty_spectrum(n)
    # only the zero frequency can have a = 0 (no amplitude contrast); it is undetermined: set 0
    a = np.where(a > 0, a, np.inf)
    return scipy.fft.irfft2(polarity * terms.b / a, s=(n, n))


def _loss_and_gradient(y: np.ndarray, operator: np.ndarray, data: np.ndarray, energy: np.ndarray):
    """L and dL/dy for C classes at once (Eqn. 4.3 in Fourier form).

    Parameters
    ----------
    y : (C, n, n) images
    operator : (C, n, n//2+1) H + alpha P
    data : (C, n, n) p * IDFT(B), the correlation of the groups with their PSFs
    energy : (C,) sum_g w_g ||z_g||^2

    Returns
    -------
    losses : (C,), gradient : (C, n, n)
    """
    n = y.shape[-1]
    quadratic = scipy.fft.irfft2(operator * scipy.fft.rfft2(y), s=(n, n))  # (H + alpha P) y
    gradient = quadratic - data
    # L = 1/2 y.My - y.d + 1/2 E = 1/2 y.(grad - d) + 1/2 E
    losses = 0.5 * (np.einsum("cyx,cyx->c", y, gradient - data) + energy)
    return losses, gradient


def deconvolution_loss(y, group_images, group_ctfs, group_weights=None, *, alpha, polarity=1) -> np.ndarray:
    """L(y) of Eqn. 4.3 for each class: (C,), with weights normalised to sum to one per class.

    Shapes as in `deconvolve`; y is (C, n, n) or (n, n).
    """
    images, ctfs, weights, _ = _as_groups(group_images, group_ctfs, group_weights)
    y = np.asarray(y, dtype=np.float64).reshape(images.shape[0], *images.shape[2:])
    alpha = _check_alpha(alpha, images.shape[0])
    terms = _fourier_terms(images, ctfs, weights)
    n = images.shape[-1]
    operator = terms.h + alpha[:, None, None] * _penalty_spectrum(n)
    data = polarity * scipy.fft.irfft2(terms.b, s=(n, n))
    return _loss_and_gradient(y, operator, data, terms.energy)[0]


# ---------------------------------------------------------------------------------------------
# Choosing alpha and the polarity


def _gcv_scores(terms: _FourierTerms, alphas: np.ndarray) -> np.ndarray:
    """Generalised cross-validation of the unconstrained solution for every class and alpha: (C, A).

    The data are the G weighted group images sqrt(w_g) z_g (noise of equal variance when the
    particles' noise is). The hat matrix is diagonal in frequency with trace sum_k H / (H + alpha P),
    the residual sum of squares is (1/N) sum_k [E - |B|^2 (2 A - H) / A^2] with A = H + alpha P, and
    GCV(alpha) = m RSS / (m - trace)^2 with m = G N data values.
    """
    c, n, _ = terms.h.shape
    mult = _hermitian_multiplicity(n)
    penalty = _penalty_spectrum(n)
    b2 = terms.b.real**2 + terms.b.imag**2
    m = terms.n_groups * float(n * n)
    scores = np.empty((c, alphas.size))
    for i, alpha in enumerate(alphas):  # loop over the alpha grid only; each step is vectorised
        a = terms.h + alpha * penalty
        safe = np.where(a > 0, a, 1.0)
        influence = np.where(a > 0, terms.h / safe, 0.0)
        explained = np.where(a > 0, b2 * (2.0 * a - terms.h) / (safe * safe), 0.0)
        rss = np.einsum("cyx,x->c", terms.spectral_energy - explained, mult) / (n * n)
        trace = np.einsum("cyx,x->c", influence, mult)
        scores[:, i] = m * np.maximum(rss, 0.0) / np.maximum(m - trace, 1e-12) ** 2
    return scores


def _refine_minimum(grid: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per row, the best alpha: on a log-uniform grid, the minimum of a parabola in log(alpha)
    through the best grid point and its neighbours; otherwise the best grid point."""
    log_grid = np.log(grid)
    best = np.argmin(scores, axis=1)
    if grid.size < 3 or not np.allclose(np.diff(log_grid), log_grid[1] - log_grid[0]):
        return grid[best]
    inner = np.clip(best, 1, grid.size - 2)
    rows = np.arange(scores.shape[0])
    s0, s1, s2 = (np.log(scores[rows, inner + d]) for d in (-1, 0, 1))
    h = log_grid[1] - log_grid[0]
    curvature = s0 - 2 * s1 + s2
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature > 0, 0.5 * h * (s0 - s2) / curvature, 0.0)
    log_alpha = np.where(best == inner, log_grid[inner] + np.clip(offset, -h, h), log_grid[best])
    return np.exp(log_alpha)


def choose_alpha(group_images, group_ctfs, group_weights=None, *, rule: str = "gcv",
                 grid=None) -> AlphaChoice:
    """Choose alpha for each class from the data by generalised cross-validation (GCV).

    GCV (Golub, Heath and Wahba 1979) predicts the error of the unconstrained (Tikhonov) solution
    of Eqn. 4.3 on left-out data without knowing the noise level; in Fourier space it is closed
    form, so the whole log-spaced grid costs a few array operations per alpha. The best grid
    point is refined by a parabola in log(alpha).

    Parameters
    ----------
    group_images, group_ctfs, group_weights : as in `deconvolve`
    rule : "gcv" (the only rule so far)
    grid : alphas to try (default 55 values from 1e-6 to 1e3, log-spaced)

    Returns
    -------
    AlphaChoice with alpha (C,), the rule name, the grid and the GCV scores (C, A).
    """
    if rule != "gcv":
        raise InputError(f"unknown alpha rule {rule!r}; use 'gcv' or pass alpha explicitly")
    images, ctfs, weights, _ = _as_groups(group_images, group_ctfs, group_weights)
    grid = DEFAULT_ALPHA_GRID if grid is None else np.sort(_check_alpha(grid, np.size(grid)))
    return _choose_alpha(_fourier_terms(images, ctfs, weights), grid)


def _choose_alpha(terms: _FourierTerms, grid: np.ndarray) -> AlphaChoice:
    scores = _gcv_scores(terms, grid)
    alpha = _refine_minimum(grid, scores)
    return AlphaChoice(alpha=alpha, rule="gcv", grid=grid, scores=scores)


def _radii(n: int) -> np.ndarray:
    c = np.arange(n) - n // 2
    return np.hypot(c[:, None], c[None, :]) / n


def _polarity_statistic(terms: _FourierTerms, alpha: np.ndarray) -> np.ndarray:
    """Per class: (mean in the central disc - mean in the outer ring) / rms of the p = +1
    unconstrained solution. Positive when the particle is dark (p = +1)."""
    y = _tikhonov(terms, alpha, 1)
    r = _radii(y.shape[-1])
    disc = r < POLARITY_DISC_RADIUS
    ring = r >= POLARITY_RING_RADIUS
    contrast = y[:, disc].mean(axis=1) - y[:, ring].mean(axis=1)
    rms = np.sqrt(np.mean((y - y.mean(axis=(1, 2), keepdims=True)) ** 2, axis=(1, 2)))
    return contrast / np.where(rms > 0, rms, 1.0)


# ---------------------------------------------------------------------------------------------
# The constrained solution


def _solve(operator: np.ndarray, data: np.ndarray, energy: np.ndarray, start: np.ndarray, *,
           max_iterations: int, tolerance: float, fast: bool = True, support_box: int | None = None):
    """Minimise Eqn. 4.3 under y >= 0 for a batch of classes with one L-BFGS-B run; with
    `support_box` s, y is also zero outside the centred s x s window (only its pixels are
    variables).

    Returns (y (C, n, n), summed loss, iterations, converged).
    """
    shape = start.shape
    n = shape[-1]
    s = n if support_box is None else int(support_box)
    lo = (n - s) // 2
    window = (slice(None), slice(lo, lo + s), slice(lo, lo + s))
    full = np.zeros(shape)

    def fun(x):
        full[window] = x.reshape(shape[0], s, s)
        losses, gradient = _loss_and_gradient(full, operator, data, energy)
        return float(losses.sum()), np.ascontiguousarray(gradient[window]).ravel()

    x0 = np.maximum(start[window], 0.0).ravel()
    options = {"maxiter": max_iterations, "ftol": tolerance, "gtol": 0.0, "maxcor": LBFGS_MEMORY}
    with _single_threaded_blas():
        if fast and _setulb_signature_known():
            x, iterations, converged = _lbfgsb_nonnegative(fun, x0, **options)
        else:
            result = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=Bounds(0.0, np.inf),
                              options=options)
            x, iterations = result.x, int(result.nit)
            converged = bool(result.success)
    y = np.zeros(shape)
    y[window] = x.reshape(shape[0], s, s)
    losses, _ = _loss_and_gradient(y, operator, data, energy)
    return y, losses.sum(), iterations, converged


@functools.lru_cache(maxsize=1)
def _openblas_thread_setters() -> tuple:
    """`openblas_set_num_threads_local` of every OpenBLAS loaded in this process (Linux; else none)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return ()
    setters = []
    for path in sorted(paths):
        try:
            setter = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | ctypes.RTLD_LOCAL).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        setters.append(setter)
    return tuple(setters)


@contextmanager
def _single_threaded_blas():
    """Run BLAS calls of this thread on one thread, then restore the previous setting.

    L-BFGS-B calls BLAS on vectors of n^2 values; OpenBLAS threads them, and waking the threads
    costs more than the work: 10x slower on a busy 2-core machine. Best effort (OpenBLAS >= 0.3.27
    as bundled with numpy and scipy; no-op elsewhere).
    """
    restore = [(setter, setter(1)) for setter in _openblas_thread_setters()]
    try:
        yield
    finally:
        for setter, previous in reversed(restore):
            setter(previous)


# scipy >= 1.15 (the C translation of L-BFGS-B); older versions take other arguments
_SETULB_SIGNATURE = "setulb(m,x,l,u,nbd,f,g,factr,pgtol,wa,iwa,task,lsave,isave,dsave,maxls,ln_task)"


def _setulb_signature_known() -> bool:
    try:
        from scipy.optimize import _lbfgsb
    except ImportError:  # pragma: no cover
        return False
    return (getattr(_lbfgsb.setulb, "__doc__", None) or "").strip().startswith(_SETULB_SIGNATURE)


def _lbfgsb_nonnegative(fun, x0: np.ndarray, *, maxiter: int, ftol: float, gtol: float, maxcor: int,
                        maxls: int = 20):
    """scipy's L-BFGS-B under x >= 0, driven as `scipy.optimize.minimize` drives it.

    `minimize` converts the bounds to per-variable Python objects and back three times, which
    costs about 4 us per variable (3 s for 50 images of 128 x 128, more than the optimisation);
    here the bound arrays are built directly. Same iterates as `minimize(method="L-BFGS-B",
    bounds=Bounds(0, inf))` (tests compare the two). Returns (x, iterations, converged).
    """
    from scipy.optimize import _lbfgsb

    n, m = x0.size, int(maxcor)
    x = np.array(x0, dtype=np.float64)
    lower = np.zeros(n)
    upper = np.zeros(n)
    kind = np.ones(n, dtype=np.int32)  # 1: lower bound only
    f = np.array(0.0)
    g = np.zeros(n)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29)
    factr = ftol / np.finfo(float).eps
    iterations = 0
    while True:
        _lbfgsb.setulb(m, x, lower, upper, kind, f, g, factr, gtol, wa, iwa, task, lsave, isave,
                       dsave, maxls, ln_task)
        if task[0] == 3:  # FG: evaluate at x
            value, gradient = fun(x)
            f = np.array(value)
            g = np.ascontiguousarray(gradient, dtype=np.float64)
        elif task[0] == 1:  # NEW_X: an iteration is done
            iterations += 1
            if iterations >= maxiter:
                task[0], task[1] = 5, 504
        else:
            break
    return x, iterations, bool(task[0] == 4)


def _decide_polarity(terms: _FourierTerms, alpha: np.ndarray) -> tuple[int, str]:
    statistic = _polarity_statistic(terms, alpha)
    sign = 1 if np.sum(statistic) >= 0 else -1
    agree = int(np.sum(np.sign(statistic) == sign))
    rule = (f"auto: {'dark' if sign > 0 else 'bright'} particles (unconstrained solution, central disc "
            f"minus outer ring: {agree} of {statistic.size} classes agree, mean {np.mean(statistic):+.2f} rms)")
    return sign, rule


def deconvolve(group_images, group_ctfs, group_weights=None, *, alpha=None, polarity="auto",
               max_iterations: int = DEFAULT_MAX_ITERATIONS, tolerance: float = DEFAULT_TOLERANCE,
               alpha_grid=None, support_box: int | None = None) -> DeconvolutionResult:
    """Non-negative MAP deconvolution of class averages from their defocus-group averages.

    Minimises Eqn. 4.3 (Eqn. 4.4 when G = 1) under y >= 0 with L-BFGS-B, one class at a time,
    starting from the clipped unconstrained solution.

    Parameters
    ----------
    group_images : (C, G, n, n) array; (G, n, n) or (n, n) for one class
        z_{c,g}: the average of the aligned particles of class c in defocus group g. One class
        average per class is G = 1 (single-frame deconvolution, Eqn. 4.4): pass (C, 1, n, n).
    group_ctfs : array broadcastable to the images' shape
        f_{c,g}: the mean CTF of each group's particles on the `np.fft.fft2` grid (as
        `cryogmm.forward.ctf.ctf_images` makes it); real and even in k, as every CTF is.
    group_weights : (C, G) or (G,) array, optional
        w_{c,g} >= 0, e.g. particle counts (default: all equal). They are divided by each class'
        total, so only their ratios within a class matter. Groups of weight 0 are ignored (their
        images and CTFs may be NaN).
    alpha : float or (C,) array, optional
        Smoothness weight, > 0, dimensionless: the weight of ||grad y||^2 (the summed squared
        differences of neighbouring pixels) relative to the weighted mean squared data residual
        sum_g w_g ||z_g - p f_g * y||^2 / sum_g w_g; it does not depend on the particle counts
        nor on the images' intensity unit. Default: chosen per class by generalised
        cross-validation (`choose_alpha`).
    polarity : +1, -1 or "auto"
        +1: z = f * y (dark particles with the CONVENTIONS.md CTF); -1: z = -f * y (bright
        particles, RELION/cryoSPARC style). "auto" decides once for all classes: the sign of the
        unconstrained solution's mean in the central disc (radius n/6) minus its mean beyond
        radius 3n/8 (corners included), summed over classes in units of each class' rms.
    max_iterations : int
        L-BFGS-B iteration limit per class.
    tolerance : float
        L-BFGS-B `ftol`: stop when an iteration lowers L by less than this fraction. 1e-7 leaves
        the images within about 0.5 % (rms) of the exact minimiser in the benchmark.
    alpha_grid : array, optional
        Alphas tried by `choose_alpha` when alpha is None.
    support_box : int, optional
        Constrain y to zero outside the centred support_box x support_box window (<= n). With
        images zero-padded from that size and CTFs sampled on the padded grid, this is the linear
        convolution of a particle cut from a micrograph, with as many unknowns as the unpadded
        problem (alpha and polarity are still chosen on the whole padded grid).

    Returns
    -------
    DeconvolutionResult with images (C, n, n) >= 0 in the units of the inputs (bright particles
    on a zero background, whatever the polarity).
    """
    images, ctfs, weights, _ = _as_groups(group_images, group_ctfs, group_weights)
    c, _, n, _ = images.shape
    if support_box is not None and not 1 <= int(support_box) <= n:
        raise InputError(f"support_box must be between 1 and the box {n}, got {support_box}")
    if int(max_iterations) < 1:
        raise InputError(f"max_iterations must be at least 1, got {max_iterations}")
    if not np.isfinite(tolerance) or tolerance <= 0:
        raise InputError(f"tolerance must be positive, got {tolerance}")

    # work in units where each class' data have unit mean square (L-BFGS-B's tests are relative)
    scale = np.sqrt(np.einsum("cg,cgyx,cgyx->c", weights, images, images) / (n * n))
    scale = np.where(scale > 0, scale, 1.0)
    terms = _fourier_terms(images, ctfs, weights, scale)

    if alpha is None:
        grid = DEFAULT_ALPHA_GRID if alpha_grid is None else np.sort(_check_alpha(alpha_grid, np.size(alpha_grid)))
        choice = _choose_alpha(terms, grid)
        alpha_values, alpha_rule = choice.alpha, choice.rule
    else:
        alpha_values, alpha_rule = _check_alpha(alpha, c), "given"

    if polarity == "auto":
        sign, polarity_rule = _decide_polarity(terms, alpha_values)
    elif polarity in (1, -1):
        sign, polarity_rule = int(polarity), "given"
    else:
        raise InputError(f"polarity must be 1, -1 or 'auto', got {polarity!r}")

    penalty = _penalty_spectrum(n)
    start = _tikhonov(terms, alpha_values, sign)
    data = sign * scipy.fft.irfft2(terms.b, s=(n, n))
    out = np.empty((c, n, n))
    losses = np.empty(c)
    iterations = np.empty(c, dtype=np.int64)
    converged = np.empty(c, dtype=bool)
    # one L-BFGS-B run per class: faster than one run over all classes (the classes are separable
    # and a class' L-BFGS-B workspace stays in cache) and each class stops when it has converged
    for i in range(c):
        operator = terms.h[i:i + 1] + alpha_values[i] * penalty
        out[i], losses[i], iterations[i], converged[i] = _solve(
            operator, data[i:i + 1], terms.energy[i:i + 1], start[i:i + 1],
            max_iterations=int(max_iterations), tolerance=tolerance, support_box=support_box)
    # debug: the callers report the outcome (alpha, polarity) in their notes, once
    logger.debug("deconvolved %d classes (%d groups, %d px): median %d L-BFGS-B iterations, "
                "%d not converged; alpha %s (median %.3g); polarity %+d (%s)", c, images.shape[1], n,
                np.median(iterations), np.sum(~converged), alpha_rule, np.median(alpha_values), sign,
                polarity_rule)
    return DeconvolutionResult(
        images=out * scale[:, None, None],
        alpha=alpha_values,
        alpha_rule=alpha_rule,
        polarity=sign,
        polarity_rule=polarity_rule,
        losses=losses * scale**2,
        iterations=iterations,
        converged=converged,
    )
