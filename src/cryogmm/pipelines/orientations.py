"""Orientation estimation with a known mixture (thesis section 3.3).

Each image's rotation (and optionally its in-plane translation) is inferred with the 3D mixture
held fixed: the images are discretised to `n_counts` counts, every rotation is drawn from the
global table over `n_rotations` uniform rotations (Eqns. 3.8-3.11, with the in-plane shift search
when translations are free), local searches by sampling-importance-resampling sharpen each
rotation, rival basins are compared after local refinement (`basin_search`), and local Gibbs steps
(Eqns. C.73-C.75, C.89-C.90) sample around it. The estimate is the posterior mean rotation of
the kept Gibbs samples (the chordal mean: the sum of the sampled matrices projected onto SO(3)),
and the per-image spread of those samples is reported with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cryogmm.errors import InputError
from cryogmm.geometry.so3 import mean_rotation, rotation_angle_in_degrees
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.mixture import GaussianMixture
from cryogmm.pipelines.abinitio import images_to_counts
from cryogmm.pipelines.reconstruct import check_non_negative
from cryogmm.samplers.driver import run_chain
from cryogmm.samplers.projected import (ProjectedGibbsSampler, basin_search, default_projection_prior,
                                        global_rotation_step, image_log_likelihoods, local_rotation_search)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrientationResult:
    """rotations (P, 3, 3): posterior mean rotations (RELION matrices A); translations_in_angstroms
    (P, 2): posterior mean particle-centre positions t_i; spread_in_degrees (P,): root-mean-square
    angle of the kept samples from their mean; log_likelihoods (P,): log p(D_i | R_i, t_i) at the
    estimate; n_samples; timings."""

    rotations: np.ndarray
    translations_in_angstroms: np.ndarray
    spread_in_degrees: np.ndarray
    log_likelihoods: np.ndarray
    n_samples: int
    timings: dict = field(default_factory=dict)


def estimate_orientations(images, pixel_size_in_angstroms: float, mixture: GaussianMixture, *,
                          symmetry: str = "C1", n_counts: int = 10000, n_rotations: int = 1000,
                          n_steps: int = 40, burn_in: int = 20, translations: bool = False,
                          max_shift_in_angstroms: float = 0.0, local_candidates: int = 50,
                          local_spreads_in_degrees: tuple = (12.0, 6.0, 3.0), seed,
                          progress: bool = False) -> OrientationResult:
    """Infer every image's orientation given the mixture (asymmetric unit if `symmetry` is set).

    Parameters
    ----------
    images : (P, n, n) non-negative images on `Grid.centered((n, n), pixel)`.
    mixture : 3D mixture, means in Å about the rotation centre (the box centre n // 2).
    n_counts : counts per image (N0); n_rotations : rotations of the global table.
    n_steps, burn_in : local Gibbs steps after the searches; samples after `burn_in` are averaged.
    translations, max_shift_in_angstroms : sample in-plane translations (searched within the
        shift on whole pixels in the global table, then continuous in the Gibbs steps).
    seed : seed of the random generator (int or SeedSequence).
    """
    start = time.perf_counter()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"images must be a (P, n, n) stack of square images, got shape {images.shape}")
    images = check_non_negative(images)
    if mixture.ndim != 3:
        raise InputError("the mixture must be three-dimensional")
    if n_steps < 1 or not 0 <= burn_in < n_steps:
        raise InputError(f"n_steps {n_steps}, burn_in {burn_in}: need n_steps >= 1 and 0 <= burn_in < n_steps")
    if n_rotations < 1 or n_counts < 1:
        raise InputError(f"n_rotations {n_rotations} and n_counts {n_counts} must be at least 1")
    ops = symmetry_operators(symmetry)
    n = images.shape[-1]
    data = images_to_counts(images, pixel_size_in_angstroms, n, n_counts)
    shift_pixels = int(round(max_shift_in_angstroms / data.pixel_size_in_angstroms)) if translations else 0
    sampler = ProjectedGibbsSampler(data, mixture.n_components, default_projection_prior(data), ops,
                                    update_mixture=False, update_rotations=True,
                                    update_translations=translations)
    rng = np.random.default_rng(seed)
    state = sampler.init(rng, mixture=mixture)
    logger.info("orientations: K = %d (symmetry %s), %d images of %d px, %d counts each, N_R = %d, "
                "translations %s", mixture.n_components, symmetry, data.n_images, n, n_counts, n_rotations,
                f"within {shift_pixels * data.pixel_size_in_angstroms:.3g} Å" if shift_pixels else "fixed at 0")
    t0 = time.perf_counter()
    state, _ = global_rotation_step(rng, sampler, state, n_rotations, shift_pixels)
    # refine the coarse rotations before comparing basins: a rotation 20 degrees from its peak can
    # lose to a refined wrong basin (a flipped view)
    for spread in local_spreads_in_degrees:
        state, _ = local_rotation_search(rng, sampler, state, local_candidates, spread)
    moved = 0
    for _ in range(2):  # two fresh tables: a basin the first table samples poorly gets a second chance
        state, search = basin_search(rng, sampler, state, n_rotations=n_rotations, max_shift_in_pixels=shift_pixels)
        moved += search["moved"]
    for spread in local_spreads_in_degrees[1:]:
        state, _ = local_rotation_search(rng, sampler, state, local_candidates, spread)
    search_seconds = time.perf_counter() - t0
    kept_rotations, kept_translations = [], []

    def keep(step, kept_state):
        kept_rotations.append(kept_state.rotations)
        kept_translations.append(kept_state.translations_in_angstroms)

    run_chain(sampler, rng, state, n_steps, burn_in=burn_in, on_sample=keep, progress=progress,
              description="orientations", final_info=lambda s: {})
    samples = np.stack(kept_rotations)
    rotations = mean_rotation(samples)
    spread = np.sqrt(np.mean(rotation_angle_in_degrees(samples, rotations[None]) ** 2, axis=0))
    shifts = np.mean(kept_translations, axis=0)
    log_likelihoods = image_log_likelihoods(sampler, mixture, rotations[:, None], shifts)[:, 0]
    timings = {"search_seconds": search_seconds,
               "gibbs_seconds": time.perf_counter() - t0 - search_seconds,
               "total_seconds": time.perf_counter() - start}
    logger.info("orientations: %d images moved by the basin search; median spread of the samples %.2f degrees",
                moved, float(np.median(spread)))
    return OrientationResult(rotations, shifts, spread, log_likelihoods, len(kept_rotations), timings)
