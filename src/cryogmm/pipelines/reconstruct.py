"""Reconstruction with known poses (thesis section 3.2), and the Fourier baseline (3.2.3).

The Gibbs reconstruction discretises each image to `n_counts` counts (Eqn. 2.52) and runs the
sampler of section 2.4.2 with the rotations and in-plane shifts held at their known values
(`ProjectedGibbsSampler(update_rotations=False, update_translations=False)`), starting from a
mixture drawn from the prior (section 3.1.5 defaults). After `burn_in` steps every `thin`-th
sample (with its symmetric copies) is evaluated on the map grid and averaged: the posterior mean
(section 3.2.2). The images must be non-negative (class averages, noise-free projections): counts
cannot be negative.

Both methods return maps on `Grid.centered((n, n, n), pixel)`: the input box and pixel size, the
rotation centre at index n // 2, in the units of `fourier_inversion` (a density whose line
integrals are the images): the Gibbs posterior mean, a probability density, is multiplied by the
images' mean integral.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cryogmm.errors import InputError
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.grid import Grid
from cryogmm.mixture import GaussianMixture, MixturePrior, evaluate
from cryogmm.pipelines.abinitio import images_to_counts
from cryogmm.pipelines.final_map import invert_with_symmetry, scale_to_images  # noqa: F401 (scale_to_images: API)
from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.projected import ProjectedGibbsSampler, default_projection_prior, expand_symmetry

logger = logging.getLogger(__name__)

# negative pixels down to this fraction of the brightest one are rounding noise, set to zero
NEGATIVE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ReconstructionResult:
    """The outcome of `reconstruct_known_poses`.

    posterior_mean : (n, n, n) float64, mean of the kept samples' densities (with symmetric
        copies) times the images' mean integral, on `grid`.
    grid : `Grid.centered((n, n, n), pixel)`.
    mixture, full_mixture : the sample with the highest log-posterior (asymmetric unit, and with
        its symmetric copies).
    log_posterior_trace, sigma_trace : per state 0..n_steps.
    log_posterior, sigma_in_angstroms : of the final state.
    n_samples : samples averaged; prior : the MixturePrior used; timings : seconds per stage.
    """

    posterior_mean: np.ndarray
    grid: Grid
    mixture: GaussianMixture
    full_mixture: GaussianMixture
    log_posterior_trace: np.ndarray
    sigma_trace: np.ndarray
    log_posterior: float
    best_log_posterior: float
    sigma_in_angstroms: float
    n_samples: int
    n_counts: int
    prior: MixturePrior
    timings: dict = field(default_factory=dict)


def _check_poses(images, pixel_size_in_angstroms, rotations, shifts_in_angstroms):
    """Validated float64 arrays (images, rotations, shifts) and the pixel size."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] < 2 or images.shape[0] == 0:
        raise InputError(f"images must be a (P, n, n) stack of square images, got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise InputError("images contain NaN or infinite values; fix or replace them")
    p = images.shape[0]
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.shape != (p, 3, 3) or not np.all(np.isfinite(rotations)):
        raise InputError(f"rotations must be {p} finite 3x3 matrices for {p} images, got shape {rotations.shape}")
    shifts = np.zeros((p, 2)) if shifts_in_angstroms is None else np.asarray(shifts_in_angstroms, dtype=np.float64)
    if shifts.shape != (p, 2) or not np.all(np.isfinite(shifts)):
        raise InputError(f"shifts must be {p} finite (x, y) pairs in Å, got shape {shifts.shape}")
    pixel = float(pixel_size_in_angstroms)
    if not np.isfinite(pixel) or pixel <= 0:
        raise InputError(f"pixel size must be a positive number of Å, got {pixel_size_in_angstroms}")
    return images, rotations, shifts, pixel


def check_non_negative(images: np.ndarray, source: str | None = None,
                       alternative: str = "or use --method fourier") -> np.ndarray:
    """`images` with rounding-level negative values set to zero; InputError if any are really negative.

    Values below -NEGATIVE_TOLERANCE times the largest value are refused: the Gibbs reconstruction
    treats the images as counts. `source` (the file) and `alternative` (a remedy besides
    deconvolving and masking) go into the message.
    """
    images = np.asarray(images, dtype=np.float64)
    low, high = float(images.min()), float(images.max())
    if high <= 0 or low < -NEGATIVE_TOLERANCE * high:
        n_negative = int((images < 0).sum())
        raise InputError(f"{source + ': ' if source else ''}the images have negative values ({n_negative} pixels, "
                         f"min {low:.3g}, max {high:.3g}); the Gibbs reconstruction needs non-negative images "
                         f"(e.g. class averages): deconvolve/mask them first{', ' + alternative if alternative else ''}")
    return np.clip(images, 0.0, None)


def reconstruct_known_poses(images, pixel_size_in_angstroms: float, rotations, shifts_in_angstroms, *,
                            n_components: int = 500, n_counts: int = 10000, n_steps: int = 400,
                            burn_in: int = 200, thin: int = 10, symmetry: str = "C1", seed,
                            progress: bool = False) -> ReconstructionResult:
    """Gibbs reconstruction of a 3D mixture from images with known poses (thesis section 3.2).

    Parameters
    ----------
    images : (P, n, n) array
        Non-negative projections on `Grid.centered((n, n), pixel)`.
    pixel_size_in_angstroms : float
    rotations : (P, 3, 3) array
        RELION matrices A: a map point x lands at P_o A x + t_i in image i.
    shifts_in_angstroms : (P, 2) array or None
        Particle-centre positions t_i in Å from the image centre (None: zero).
    n_components : K of the asymmetric unit.
    n_counts : counts each image is discretised to (N0, Eqn. 2.52).
    n_steps, burn_in, thin : Gibbs steps; samples after step `burn_in`, every `thin`-th, are
        averaged (if none is, the final state is used).
    symmetry : point group (C1, Cn, Dn, T, O, I); the mixture is its asymmetric unit.
    seed : seed of the random generator (int or SeedSequence).
    progress : show a progress bar.

    Raises
    ------
    InputError
        Bad shapes, NaNs, negative images, an unknown symmetry or out-of-range settings.
    """
    start = time.perf_counter()
    images, rotations, shifts, pixel = _check_poses(images, pixel_size_in_angstroms, rotations, shifts_in_angstroms)
    images = check_non_negative(images)
    if n_components < 1:
        raise InputError(f"n_components {n_components}: must be at least 1")
    if n_steps < 1 or thin < 1 or not 0 <= burn_in <= n_steps:
        raise InputError(f"n_steps {n_steps}, burn_in {burn_in}, thin {thin}: need n_steps >= 1, "
                         "0 <= burn_in <= n_steps and thin >= 1")
    ops = symmetry_operators(symmetry)
    n = images.shape[-1]
    data = images_to_counts(images, pixel, n, n_counts)
    prior = default_projection_prior(data)
    sampler = ProjectedGibbsSampler(data, n_components, prior, ops, update_mixture=True,
                                    update_rotations=False, update_translations=False)
    rng = np.random.default_rng(seed)
    state = sampler.init(rng, rotations=rotations, translations_in_angstroms=shifts)
    grid = Grid.centered((n, n, n), pixel)
    evaluation_seconds = 0.0
    logger.info("Gibbs reconstruction: K = %d (symmetry %s, %d copies), %d images of %d px at %.3g Å, "
                "%d counts each, %d steps (burn-in %d, thin %d)", n_components, symmetry, ops.shape[0],
                data.n_images, n, pixel, n_counts, n_steps, burn_in, thin)

    def density(kept_state):
        nonlocal evaluation_seconds
        t = time.perf_counter()
        value = evaluate(expand_symmetry(kept_state.mixture, ops), grid)
        evaluation_seconds += time.perf_counter() - t
        return value

    setup_seconds = time.perf_counter() - start
    chain = run_chain(sampler, rng, state, n_steps, burn_in=burn_in, thin=thin, mean_of=density, best_from=0,
                      progress=progress, description="reconstruct",
                      final_info=lambda s: {"log_posterior": sampler.log_posterior(s),
                                            "sigma_in_angstroms": s.mixture.sigma_in_angstroms})
    final = chain.final_state
    final_lp = float(chain.traces["log_posterior"][-1])
    best_lp, best = chain.best_log_posterior, chain.best_state
    n_samples = chain.n_averaged
    posterior_mean = chain.posterior_mean
    if n_samples == 0:
        posterior_mean, n_samples = density(final), 1
    timings = {"setup_seconds": setup_seconds, "sampling_seconds": chain.seconds - evaluation_seconds,
               "posterior_mean_seconds": evaluation_seconds, "total_seconds": time.perf_counter() - start}
    return ReconstructionResult(
        posterior_mean=scale_to_images(posterior_mean, images, pixel), grid=grid, mixture=best.mixture,
        full_mixture=expand_symmetry(best.mixture, ops), log_posterior_trace=chain.traces["log_posterior"],
        sigma_trace=chain.traces["sigma_in_angstroms"], log_posterior=final_lp, best_log_posterior=float(best_lp),
        sigma_in_angstroms=final.mixture.sigma_in_angstroms, n_samples=n_samples,
        n_counts=int(data.counts.sum()), prior=prior, timings=timings)


def reconstruct_fourier(images, pixel_size_in_angstroms: float, rotations, shifts_in_angstroms, *,
                        symmetry: str = "C1") -> np.ndarray:
    """Direct Fourier inversion with known poses (section 3.2.3), same conventions as
    `reconstruct_known_poses`; negative pixels are allowed.

    With a symmetry other than C1 each image is inserted once per operator S_g, with rotation
    A_i S_g (the projection of a symmetric map under A_i S_g is the same image).

    Returns
    -------
    (n, n, n) float64 map on `Grid.centered((n, n, n), pixel)`.
    """
    images, rotations, shifts, pixel = _check_poses(images, pixel_size_in_angstroms, rotations, shifts_in_angstroms)
    return invert_with_symmetry(images, rotations, shifts, pixel, symmetry)
