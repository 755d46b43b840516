"""Gibbs sampling of a 3D mixture, image rotations and translations from 2D binned images.

Thesis section 2.4.2 and appendix C. One step draws, in turn,

1. the assignments z of every count to a projected component (Eqn. 2.85), in the numba kernel;
2. the missing (depth) coordinates x^m through their per-(image, component) sufficient
   statistics (Eqns. C.31-C.34; we draw their sum and sum of squares jointly, see
   `_missing_statistics`);
3. weights, means (C.56) and precision (C.63-C.64) from the back-projected statistics
   pooled over images (and over symmetry copies);
4. each rotation from its matrix Fisher conditional exp(tr(A_i^T R_i)) (C.73-C.75);
5. each in-plane translation from its Gaussian conditional (C.90, flat prior).

Blocks 3, 4 and 5 can be switched off: fixed rotations give reconstruction with known poses
(section 3.2), a fixed mixture gives orientation estimation (section 3.3). `global_rotation_step`
draws every rotation (and optionally an in-plane shift) from the discrete approximation of its
marginal posterior over a set of uniform rotations (Eqns. 3.8-3.11), computed for all rotations at
once as a matrix product of the image counts with the log projected densities.

Symmetry (section 4.2.2): the state holds the asymmetric unit; the likelihood uses all symmetric
copies S_g mu_k with weights w_k / G, and the statistics of copy g are rotated back by S_g^T and
pooled onto mu_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.kernels import BinnedStatistics
from cryogmm.kernels.gaussians import occupied_rows
from cryogmm.kernels.projections import (candidate_log_likelihoods_kernel, over_images, projected_densities_kernel,
                                         projected_statistics_kernel)
from cryogmm.mixture import GaussianMixture, MixturePrior, log_prior, sample_from_prior
from cryogmm.samplers.conditionals import gibbs_update
from cryogmm.samplers.matrix_fisher import sample_matrix_fisher

# weight of the uniform background added to the projected mixture in the global rotation table,
# so that a count outside the cut-off support costs a finite amount instead of -inf
GLOBAL_BACKGROUND_WEIGHT = 1e-3
# cut-off of the projected densities in the rotation tables: beyond 4 sigma a Gaussian is below
# 3.4e-4 of its peak, under the background floor wherever another component is near
TABLE_CUTOFF_SIGMAS = 4.0
# cut-off of the projected components in the Gibbs sampler: a 2D Gaussian holds exp(-r^2 / 2) of
# its mass beyond r sigma, 3.4e-4 at 4 sigma; the thesis' conservative 5 sigma (section 3.5.1)
# visits (5/4)^2 = 1.56 times as many pixels for a change below the counting noise
PROJECTED_CUTOFF_SIGMAS = 4.0


@dataclass(frozen=True)
class ImageCounts:
    """Binned images: `counts` (P, n, n) non-negative integers on `Grid.centered((n, n), pixel)`."""

    counts: np.ndarray
    pixel_size_in_angstroms: float

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
            raise ValueError(f"counts must be a (P, n, n) stack of square images, got shape {counts.shape}")
        if not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
            raise ValueError("counts must be non-negative integers (discretise the images first)")
        if np.any(counts.reshape(counts.shape[0], -1).sum(1) == 0):
            raise ValueError("every image needs at least one count")
        object.__setattr__(self, "counts", np.ascontiguousarray(counts, dtype=np.int32))
        object.__setattr__(self, "pixel_size_in_angstroms", float(self.pixel_size_in_angstroms))

    @property
    def n_images(self) -> int:
        return self.counts.shape[0]

    @property
    def box(self) -> int:
        return self.counts.shape[1]

    @property
    def grid(self) -> Grid:
        return Grid.centered((self.box, self.box), self.pixel_size_in_angstroms)

    def weighted_points(self) -> tuple[np.ndarray, np.ndarray]:
        """All occupied pixel centres (x, y) in Å of all images, with their counts."""
        flat = self.counts.reshape(self.n_images, -1)
        points = self.grid.points()
        occupied = flat > 0
        return np.concatenate([points[o] for o in occupied]), flat[occupied].astype(np.float64)


def default_projection_prior(data: ImageCounts, **overrides) -> MixturePrior:
    """The thesis' defaults (section 3.1.5) for images: mean prior centred on the rotation centre
    (the origin), with r = 2 / (mean square 2D distance of the counts from the image centre), the
    precision of an isotropic 3D Gaussian whose projections have that spread."""
    points, weights = data.weighted_points()
    spread = float(weights @ (points**2).sum(1)) / weights.sum()
    settings = dict(mean_precision=2.0 / max(spread, 1e-12), center_in_angstroms=np.zeros(3))
    settings.update(overrides)
    return MixturePrior(**settings)


@dataclass(frozen=True)
class ProjectedState:
    """mixture : the asymmetric unit (K components, 3D); rotations (P, 3, 3) RELION matrices A;
    translations_in_angstroms (P, 2) in-plane particle-centre positions t."""

    mixture: GaussianMixture
    rotations: np.ndarray
    translations_in_angstroms: np.ndarray
    step: int = 0


def expand_symmetry(mixture: GaussianMixture, operators: np.ndarray,
                    center_in_angstroms: np.ndarray | None = None) -> GaussianMixture:
    """The full mixture: means c + S_g (mu_k - c) (ordered g-major; c the point the axes pass
    through, default the origin), weights w_k / G, same precision."""
    center = np.zeros(3) if center_in_angstroms is None else np.asarray(center_in_angstroms, dtype=np.float64)
    means = ((mixture.means_in_angstroms - center) @ operators.transpose(0, 2, 1)).reshape(-1, 3) + center
    weights = np.tile(mixture.weights, operators.shape[0]) / operators.shape[0]
    return GaussianMixture(means, weights, mixture.precision_per_square_angstrom)


def projected_means(means: np.ndarray, rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """(P, K, 3) means P_o(R_i mu_k + t_i) padded with a zero third coordinate."""
    out = means @ rotations.transpose(0, 2, 1)  # R_i mu_k
    out[:, :, :2] += translations[:, None, :]
    out[:, :, 2] = 0.0
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class ProjectedStatistics:
    """Per (image, full component) statistics: n (P, K), s (P, K, 2), q (P, K) about the projected
    means, the log-likelihood per image (P,) and the counts lost to the cut-off (P,)."""

    n: np.ndarray
    s: np.ndarray
    q: np.ndarray
    log_likelihood: np.ndarray
    n_unassigned: np.ndarray


def _missing_statistics(rng: np.random.Generator, n: np.ndarray, precision: float) -> tuple[np.ndarray, np.ndarray]:
    """Sum d_ik = sum(x^m - m_ik) and sum of squares tau_ik = sum (x^m - m_ik)^2 of the n_ik missing
    coordinates, each N(m_ik, 1/s) (Eqns. C.31-C.34).

    The thesis draws them independently (C.33, C.34); they are not: with the sample mean split off,
    d ~ N(0, n/s) and tau = d^2/n + chi2(n - 1)/s, independent terms (Cochran's theorem). That is
    the exact joint draw and costs the same.
    """
    sd = np.sqrt(n / precision)
    d = sd * rng.standard_normal(n.shape)
    occupied = n > 0
    tau = np.zeros_like(n)
    tau[occupied] = d[occupied] ** 2 / n[occupied]
    extra = n > 1
    tau[extra] += rng.chisquare(n[extra] - 1.0) / precision
    return d, tau


@dataclass(frozen=True)
class ProjectedGibbsSampler:
    """The Gibbs sampler of section 2.4.2 on `data`, under the package's sampler contract.

    n_components : K of the asymmetric unit; prior : MixturePrior in 3D (independent mean prior);
    symmetry_operators : (G, 3, 3), identity first (C1: one identity);
    update_mixture / update_rotations / update_translations : which blocks are sampled.
    """

    data: ImageCounts
    n_components: int
    prior: MixturePrior
    symmetry_operators: np.ndarray = field(default_factory=lambda: np.eye(3)[None])
    update_mixture: bool = True
    update_rotations: bool = True
    update_translations: bool = False
    cutoff_sigmas: float = PROJECTED_CUTOFF_SIGMAS

    def __post_init__(self) -> None:
        ops = np.asarray(self.symmetry_operators, dtype=np.float64).reshape(-1, 3, 3)
        object.__setattr__(self, "symmetry_operators", ops)
        if self.n_components < 1:
            raise ValueError(f"the number of components must be at least 1, got {self.n_components}")
        if self.prior.center_in_angstroms.shape != (3,):
            raise ValueError("the prior must be three-dimensional")
        counts = self.data.counts
        object.__setattr__(self, "_rows", occupied_rows(counts))
        per_image = counts.reshape(counts.shape[0], -1).astype(np.int64)
        object.__setattr__(self, "_work", np.empty((counts.shape[0], 5, 1) + counts.shape[1:]))
        uniform_offsets = np.concatenate([[0], np.cumsum(per_image.sum(1))])
        exponential_offsets = np.concatenate([[0], np.cumsum(per_image.sum(1) + (per_image > 0).sum(1))])
        object.__setattr__(self, "_uniforms", np.empty(int(uniform_offsets[-1])))
        object.__setattr__(self, "_uniform_offsets", uniform_offsets)
        object.__setattr__(self, "_exponential_offsets", exponential_offsets)
        # single precision: numpy draws them ~1.6x faster, and the kernel sums them in double
        object.__setattr__(self, "_exponentials", np.empty(int(exponential_offsets[-1]), dtype=np.float32))
        grid = self.data.grid
        object.__setattr__(self, "_origin", np.array([grid.origin_in_angstroms[0], grid.origin_in_angstroms[1], 0.0]))

    # -- contract ---------------------------------------------------------------------------
    def init(self, rng: np.random.Generator, mixture: GaussianMixture | None = None,
             rotations: np.ndarray | None = None, translations_in_angstroms: np.ndarray | None = None
             ) -> ProjectedState:
        """Start from the given parts; missing ones are drawn from the prior (uniform rotations,
        zero translations), as the thesis initialises (section 3.4.1)."""
        p = self.data.n_images
        if mixture is None:
            mixture = sample_from_prior(rng, self.prior, self.n_components)
        if rotations is None:
            rotations = random_rotations(rng, p)
        if translations_in_angstroms is None:
            translations_in_angstroms = np.zeros((p, 2))
        rotations = np.asarray(rotations, dtype=np.float64).reshape(p, 3, 3)
        translations = np.asarray(translations_in_angstroms, dtype=np.float64).reshape(p, 2)
        return ProjectedState(mixture, rotations, translations)

    def statistics(self, state: ProjectedState, rng: np.random.Generator | None) -> ProjectedStatistics:
        """Sampled (rng given) or expected (rng None) assignment statistics of all images."""
        return self._statistics(expand_symmetry(state.mixture, self.symmetry_operators), state, rng)

    def _statistics(self, full: GaussianMixture, state: ProjectedState, rng) -> ProjectedStatistics:
        means = projected_means(full.means_in_angstroms, state.rotations, state.translations_in_angstroms)
        s = full.precision_per_square_angstrom
        amplitudes = full.weights * s / (2 * np.pi)  # 2D normalisation of the projected Gaussians
        sample = rng is not None
        exponentials = self._exponentials
        if sample:
            rng.standard_exponential(out=exponentials, dtype=np.float32)
        p, k = means.shape[:2]
        n, sums, q = np.empty((p, k)), np.empty((p, k, 2)), np.empty((p, k))
        ll, lost = np.empty(p), np.empty(p, dtype=np.int64)

        def run(a, b):
            n[a:b], sums[a:b], q[a:b], ll[a:b], lost[a:b] = projected_statistics_kernel(
                self.data.counts[a:b], self._rows[a:b], means[a:b], amplitudes, float(s), self._origin,
                self.data.pixel_size_in_angstroms, float(self.cutoff_sigmas), exponentials,
                self._exponential_offsets[a:b + 1], sample, self._work[a:b], self._uniforms,
                self._uniform_offsets[a:b + 1])

        over_images(run, p)
        return ProjectedStatistics(n, sums, q, ll, lost)

    def log_posterior(self, state: ProjectedState) -> float:
        """log p(D | theta) + log p(theta); the rotation prior is uniform and the translation prior
        flat, so they add constants that are left out."""
        stats = self.statistics(state, None)
        return float(stats.log_likelihood.sum()) + log_prior(state.mixture, self.prior)

    def step(self, rng: np.random.Generator, state: ProjectedState) -> tuple[ProjectedState, dict]:
        """One Gibbs step. `info["log_posterior"]` is that of the incoming state."""
        mixture = state.mixture
        ops = self.symmetry_operators
        g, k = ops.shape[0], mixture.n_components
        full_old = expand_symmetry(mixture, ops)
        stats = self._statistics(full_old, state, rng)
        s_old = mixture.precision_per_square_angstrom
        d, tau = _missing_statistics(rng, stats.n, s_old)
        # offsets of the 3D points from R_i mu_gk + t_i, in the image frame
        offsets = np.concatenate([stats.s, d[:, :, None]], axis=2)  # (P, GK, 3)
        info = {"log_posterior": float(stats.log_likelihood.sum()) + log_prior(mixture, self.prior),
                "sigma_in_angstroms": mixture.sigma_in_angstroms,
                "n_unassigned": int(stats.n_unassigned.sum())}
        if self.update_mixture:
            back = (offsets @ state.rotations).sum(0)  # sum_i R_i^T o_ik
            back = (back.reshape(g, k, 3) @ ops).sum(0)  # pool copies: S_g^T
            pooled = BinnedStatistics(stats.n.sum(0).reshape(g, k).sum(0), back,
                                      (stats.q + tau).sum(0).reshape(g, k).sum(0), 0.0, 0)
            mixture = gibbs_update(rng, mixture, pooled, self.prior)
        rotations, translations = state.rotations, state.translations_in_angstroms
        if self.update_rotations or self.update_translations:
            full_new = expand_symmetry(mixture, ops)
            s_new = mixture.precision_per_square_angstrom
            old_image_means = full_old.means_in_angstroms @ rotations.transpose(0, 2, 1)
            # nu_ik - N_ik t_i: the points' sums in the image frame, less the translation
            centred = offsets + stats.n[:, :, None] * old_image_means
            if self.update_rotations:
                a = s_new * (centred.transpose(0, 2, 1) @ full_new.means_in_angstroms)  # Eqn. C.75
                rotations = sample_matrix_fisher(rng, a)
            if self.update_translations:
                n_i = stats.n.sum(1)
                new_image_means = full_new.means_in_angstroms @ rotations.transpose(0, 2, 1)
                residual = (centred[:, :, :2] - stats.n[:, :, None] * new_image_means[:, :, :2]).sum(1)
                # Eqn. C.90 (in-plane: depth translations are not identifiable)
                mean_t = translations + residual / np.maximum(n_i, 1.0)[:, None]
                translations = mean_t + rng.standard_normal(mean_t.shape) / np.sqrt(np.maximum(n_i, 1.0) * s_new)[:, None]
        return ProjectedState(mixture, rotations, translations, state.step + 1), info


def log_projected_densities(mixture: GaussianMixture, rotations: np.ndarray, grid: Grid,
                            cutoff_sigmas: float = TABLE_CUTOFF_SIGMAS,
                            translations_in_angstroms: np.ndarray | None = None) -> np.ndarray:
    """(M, n, n) log of the projected density (1 - eps) h_m + eps / area under each rotation (and
    in-plane translation, default zero), with eps = GLOBAL_BACKGROUND_WEIGHT: the mixture plus a
    faint uniform background, so that counts beyond the cut-off give a finite log-likelihood."""
    if translations_in_angstroms is None:
        translations_in_angstroms = np.zeros((rotations.shape[0], 2))
    means = projected_means(mixture.means_in_angstroms, rotations, translations_in_angstroms)
    s = mixture.precision_per_square_angstrom
    out = np.empty((rotations.shape[0],) + grid.shape)
    projected_densities_kernel(means, mixture.weights * s / (2 * np.pi), float(s),
                               np.array([grid.origin_in_angstroms[0], grid.origin_in_angstroms[1], 0.0]),
                               grid.spacing_in_angstroms, float(cutoff_sigmas), out)
    area = np.prod(grid.shape) * grid.spacing_in_angstroms**2
    eps = GLOBAL_BACKGROUND_WEIGHT
    return np.log((1.0 - eps) * out + eps / area)


def global_log_likelihoods(sampler: ProjectedGibbsSampler, mixture: GaussianMixture, rotations: np.ndarray,
                           max_shift_in_pixels: int = 0, chunk: int = 64) -> np.ndarray:
    """Table of log p(D_i | R_m, t) for every image i, candidate rotation m and in-plane shift t.

    Returns (P, M, W) with W = (2 w + 1)^2 integer-pixel shifts (w = max_shift_in_pixels, row-major
    over (dy, dx) in [-w, w]); W = 1 (no shift) when w = 0. Without shifts the table is the matrix
    product counts (P x pixels) @ log densities (pixels x M); with shifts each entry is a cross-
    correlation of the counts with the log density, computed by FFT for all shifts at once.
    """
    full = expand_symmetry(mixture, sampler.symmetry_operators)
    grid = sampler.data.grid
    counts = sampler.data.counts.astype(np.float64)
    p, n = counts.shape[0], counts.shape[1]
    w = int(max_shift_in_pixels)
    offsets = -np.arange(-w, w + 1) % n  # corr[tau] = sum_x y(x) log h(x + tau): shift t is at tau = -t
    table = np.empty((p, rotations.shape[0], (2 * w + 1) ** 2))
    if w > 0:
        # scipy's FFTs run on the numba threads' cores (numpy's on one): the inverse transforms of
        # every (image, rotation) pair are most of the table's time. Imported here: the restarts'
        # worker processes, which search no shifts, need not load scipy.fft
        import scipy.fft

        fft_workers = numba.get_num_threads()
        counts_f = np.conj(scipy.fft.rfft2(counts, workers=fft_workers))
    for start in range(0, rotations.shape[0], chunk):
        stop = min(start + chunk, rotations.shape[0])
        log_h = log_projected_densities(full, rotations[start:stop], grid, TABLE_CUTOFF_SIGMAS)
        if w == 0:
            table[:, start:stop, 0] = counts.reshape(p, -1) @ log_h.reshape(stop - start, -1).T
            continue
        # score(tau) = sum_x y(x) log h(x - tau) = sum_u y(u + tau) log h(u)
        log_f = scipy.fft.rfft2(log_h, workers=fft_workers)
        corr = scipy.fft.irfft2(counts_f[:, None] * log_f[None], s=(n, n), workers=fft_workers)  # (P, C, n, n)
        table[:, start:stop] = corr[:, :, offsets[:, None], offsets[None, :]].reshape(p, stop - start, -1)
    return table


def global_rotation_step(rng: np.random.Generator, sampler: ProjectedGibbsSampler, state: ProjectedState,
                         n_rotations: int = 1000, max_shift_in_pixels: int = 0,
                         keep_current: bool = False) -> tuple[ProjectedState, dict]:
    """Draw every image's rotation (and, with `max_shift_in_pixels`, its translation) from the
    discrete approximation of its marginal posterior (Eqns. 3.8-3.11) over `n_rotations` fresh
    uniform rotations; with `keep_current` the images' current rotations are candidates too (so a
    rotation that is already good is not lost to the coarse table, at the price of exploration)."""
    if max_shift_in_pixels == 0 and np.any(state.translations_in_angstroms != 0):
        raise ValueError("the global rotation table without a shift search assumes zero translations")
    candidates = random_rotations(rng, n_rotations)
    if keep_current:
        candidates = np.concatenate([candidates, state.rotations])
    table = global_log_likelihoods(sampler, state.mixture, candidates, max_shift_in_pixels)
    p, m, n_shifts = table.shape
    flat = table.reshape(p, -1)
    # sample (m, shift) per image from softmax(table) with the Gumbel-max trick
    choice = np.argmax(flat + rng.gumbel(size=flat.shape), axis=1)
    rot_index, shift_index = np.divmod(choice, n_shifts)
    rotations = candidates[rot_index]
    translations = state.translations_in_angstroms
    if max_shift_in_pixels > 0:
        w = int(max_shift_in_pixels)
        dy, dx = np.divmod(shift_index, 2 * w + 1)
        translations = np.stack([dx - w, dy - w], axis=1) * sampler.data.pixel_size_in_angstroms
    best = flat.max(1)
    info = {"kept_current": int((rot_index >= n_rotations).sum()),
            "log_likelihood": float(flat[np.arange(p), choice].sum()), "best_log_likelihood": float(best.sum())}
    return ProjectedState(state.mixture, rotations, translations, state.step), info


def image_log_likelihoods(sampler: ProjectedGibbsSampler, mixture: GaussianMixture, rotations: np.ndarray,
                          translations_in_angstroms: np.ndarray) -> np.ndarray:
    """(P, M) log p(D_i | R_im, t_im) for per-image candidate rotations `rotations` (P, M, 3, 3) and
    translations (P, 2) (one per image) or (P, M, 2) (one per candidate), with the
    background-padded projected density of the global table (`log_projected_densities`),
    evaluated on each image's occupied pixels only."""
    full = expand_symmetry(mixture, sampler.symmetry_operators)
    m = rotations.shape[1]
    translations = np.asarray(translations_in_angstroms, dtype=np.float64)
    if translations.ndim == 2:
        translations = np.repeat(translations[:, None], m, axis=1)
    s = full.precision_per_square_angstrom
    grid = sampler.data.grid
    area = np.prod(grid.shape) * grid.spacing_in_angstroms**2
    eps = GLOBAL_BACKGROUND_WEIGHT
    rotations = np.ascontiguousarray(rotations, dtype=np.float64)
    translations = np.ascontiguousarray(translations)
    out = np.empty(rotations.shape[:2])

    def run(a, b):
        out[a:b] = candidate_log_likelihoods_kernel(
            sampler.data.counts[a:b], sampler._rows[a:b], full.means_in_angstroms, rotations[a:b], translations[a:b],
            full.weights * s / (2 * np.pi), float(s), sampler._origin, sampler.data.pixel_size_in_angstroms,
            TABLE_CUTOFF_SIGMAS, 1.0 - eps, eps / area)

    over_images(run, rotations.shape[0])
    return out


def _distinct_seeds(scores: np.ndarray, rotations: np.ndarray, current: np.ndarray, operators: np.ndarray,
                    n_seeds: int, min_angle_in_degrees: float) -> np.ndarray:
    """Indices (P, n_seeds) of the best-scoring rotations of each image that are at least
    `min_angle_in_degrees` from the current rotation and from each other (up to the symmetry
    operators: R and R S_g give the same image); -1 where fewer exist."""
    min_cos = np.cos(np.radians(min_angle_in_degrees))
    copies = (rotations[:, None] @ operators[None]).reshape(len(rotations), -1, 9)  # R_m S_g, flattened

    def far(matrix, candidates):
        # cos(angle) = (tr(A^T B) - 1) / 2, maximised over the symmetry copies of the candidates
        cos = (copies[candidates] @ matrix.reshape(9) - 1.0) / 2.0
        return cos.max(axis=1) < min_cos

    p = scores.shape[0]
    seeds = np.full((p, n_seeds), -1, dtype=np.int64)
    order = np.argsort(-scores, axis=1)[:, : max(8 * n_seeds, 32)]
    for i in range(p):  # per image, a few dozen candidates: cheap
        pool = order[i][far(current[i], order[i])]
        for j in range(n_seeds):
            if pool.size == 0:
                break
            seeds[i, j] = pool[0]
            pool = pool[1:][far(rotations[pool[0]], pool[1:])]
    return seeds


def basin_search(rng: np.random.Generator, sampler: ProjectedGibbsSampler, state: ProjectedState, *,
                 n_rotations: int = 1000, max_shift_in_pixels: int = 0, n_seeds: int = 4,
                 n_candidates: int = 20, spreads_in_degrees: tuple = (10.0, 6.0, 3.5, 2.0),
                 min_angle_in_degrees: float = 20.0) -> tuple[ProjectedState, dict]:
    """Move images whose rotation sits in the wrong basin of their posterior.

    A coarse table of `n_rotations` uniform rotations (with the in-plane shift search) scores
    every image; its `n_seeds` best rotations far from the current one (and from each other) are
    refined by local random search (`n_candidates` matrix-Fisher candidates per seed and spread,
    keeping the best; with the shift search, the in-plane translation is perturbed with the
    rotation, by 0.5 pixel, then 0.25), as is the current rotation, and each image then draws one of the refined
    basins in proportion to its likelihood (Gumbel-max). A grid rotation alone cannot be compared
    with a refined one: the coarse table misses each peak by several degrees, which at 10^4
    counts per image costs hundreds of log-likelihood units, so a better but unrefined basin
    would lose to the current one.
    """
    p = sampler.data.n_images
    pixel = sampler.data.pixel_size_in_angstroms
    grid_rotations = random_rotations(rng, n_rotations)
    table = global_log_likelihoods(sampler, state.mixture, grid_rotations, max_shift_in_pixels)
    best_shift = table.argmax(axis=2)
    scores = table.max(axis=2)
    seeds = _distinct_seeds(scores, grid_rotations, state.rotations, sampler.symmetry_operators, n_seeds,
                            min_angle_in_degrees)
    w = int(max_shift_in_pixels)
    rotations = np.repeat(state.rotations[:, None], n_seeds + 1, axis=1)
    translations = np.repeat(state.translations_in_angstroms[:, None], n_seeds + 1, axis=1)
    valid = seeds >= 0
    index = np.where(valid, seeds, 0)
    rotations[:, 1:][valid] = grid_rotations[index[valid]]
    if w > 0:
        dy, dx = np.divmod(np.take_along_axis(best_shift, index, axis=1), 2 * w + 1)
        seed_shifts = np.stack([dx - w, dy - w], axis=-1) * pixel
        translations[:, 1:][valid] = seed_shifts[valid]
    current = image_log_likelihoods(sampler, state.mixture, rotations, translations)
    for round_index, spread in enumerate(spreads_in_degrees):
        kappa = 0.5 / np.radians(spread) ** 2
        centres = np.repeat(rotations[:, :, None], n_candidates, axis=2)
        candidates = sample_matrix_fisher(rng, kappa * centres)  # (P, S, C, 3, 3)
        shifts = np.repeat(translations[:, :, None], n_candidates, axis=2)
        if w > 0:  # the table's shifts are whole pixels: refine them with the rotation
            shifts = shifts + rng.normal(0.0, 0.5 * pixel / (round_index + 1), shifts.shape)
        ll = image_log_likelihoods(sampler, state.mixture, candidates.reshape(p, -1, 3, 3),
                                   shifts.reshape(p, -1, 2)).reshape(p, n_seeds + 1, n_candidates)
        best = ll.argmax(axis=2)
        best_ll = np.take_along_axis(ll, best[:, :, None], axis=2)[:, :, 0]
        better = best_ll > current
        chosen = np.take_along_axis(candidates, best[:, :, None, None, None], axis=2)[:, :, 0]
        rotations[better] = chosen[better]
        translations[better] = np.take_along_axis(shifts, best[:, :, None, None], axis=2)[:, :, 0][better]
        current = np.where(better, best_ll, current)
    current[:, 1:][~valid] = -np.inf
    choice = np.argmax(current + rng.gumbel(size=current.shape), axis=1)
    rows = np.arange(p)
    info = {"moved": int((choice > 0).sum()),
            "gain": float((current[rows, choice] - current[:, 0]).sum())}
    return ProjectedState(state.mixture, rotations[rows, choice], translations[rows, choice], state.step), info


def sir_rotation_step(rng: np.random.Generator, rotations: np.ndarray, log_target: Callable[[np.ndarray], np.ndarray],
                      n_candidates: int, spread_in_degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """One Markov step that leaves the target p_i(R) ∝ exp(log_target(R)_i) (Haar measure) of every
    row i invariant: iterated sampling-importance-resampling about a random centre.

    A centre C_i is drawn from the matrix Fisher kernel q(C | R_i) ∝ exp(kappa tr(R_iᵀ C)), then
    `n_candidates - 1` candidates from q(. | C_i); with the current R_i they form the candidate set,
    and one is drawn in proportion to p_i. This is exact: the kernel is symmetric, q(C | R) =
    q(R | C), so on the extended target p(R) q(C | R) the conditional of R given C is
    p(R) q(R | C), for which i-SIR with proposal q(. | C) has weights p(R) q(R | C) / q(R | C) = p(R).
    (Candidates drawn about R_i itself, weighted by p / q(. | R_i), are not exact; the test shows
    the bias at wide spreads.)

    rotations : (P, 3, 3); log_target : (P, M, 3, 3) candidates -> (P, M) log densities (up to a
    per-row constant); kappa = 1 / (2 spread^2) (rotation-vector variance spread^2 per axis).
    Returns the new rotations and a (P,) bool array: which rows moved.
    """
    p = rotations.shape[0]
    kappa = 0.5 / np.radians(spread_in_degrees) ** 2
    centres = sample_matrix_fisher(rng, kappa * rotations)
    drawn = sample_matrix_fisher(rng, kappa * np.repeat(centres[:, None], n_candidates - 1, axis=1))
    candidates = np.concatenate([rotations[:, None], drawn], axis=1)
    weights = log_target(candidates)
    choice = np.argmax(weights + rng.gumbel(size=weights.shape), axis=1)
    return candidates[np.arange(p), choice], choice > 0


def local_rotation_search(rng: np.random.Generator, sampler: ProjectedGibbsSampler, state: ProjectedState,
                          n_candidates: int = 100, spread_in_degrees: float = 10.0) -> tuple[ProjectedState, dict]:
    """Draw each rotation by one exact step (`sir_rotation_step`) toward its marginal posterior
    (Eqn. 3.8, the table's likelihood `image_log_likelihoods` with its faint background, and a
    uniform prior), with the mixture and translations held. It moves a rotation many degrees in
    one step, where the local Gibbs step (whose missing coordinates tie it to the current
    rotation) creeps; the current rotation is one of the candidates."""
    def log_target(candidates):
        return image_log_likelihoods(sampler, state.mixture, candidates, state.translations_in_angstroms)

    rotations, moved = sir_rotation_step(rng, state.rotations, log_target, n_candidates, spread_in_degrees)
    return ProjectedState(state.mixture, rotations, state.translations_in_angstroms, state.step), {"moved": int(moved.sum())}
