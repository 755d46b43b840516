"""Estimate the orientations of class averages given a 3D pseudo-atom model (thesis section 3.3).

The model is a pseudo-atom PDB or mmCIF file as cryogmm writes it (`reconstruct` or `abinitio`
pseudoatoms.pdb: one atom per component with its weight and sigma, in the coordinates of the
map.mrc beside it, whose rotation centre is voxel box//2 of the images' box). Each image is
discretised to --counts counts; its rotation is drawn from a global table of --rotations uniform
rotations, rival basins are compared after local refinement, and local searches and --steps
local Gibbs steps follow; the estimate is the mean rotation of the samples after --burn-in.
With --translations, in-plane shifts within --max-shift are sampled too.

Outputs in DIR: orientations.star (RELION convention, with the input image names),
summary.json (settings, seed, timings, each image's sample spread and log-likelihood; with
--true-poses the rotation errors after global alignment, Eqns. 3.12-3.18), settings.json, run.log.

Example:
    cryogmm orientations polii/particles.star --model polii_reconstruction/pseudoatoms.pdb \\
        --true-poses polii/particles.star --seed 1 --output polii_orientations
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.paths import require_file

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="class averages: .mrcs stack or RELION STAR file")
    parser.add_argument("--model", type=Path, required=True, help="pseudo-atom model (PDB or mmCIF from cryogmm)")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (default: from the file)")
    parser.add_argument("--counts", type=float, default=10000, help="counts per image (default 10000)")
    parser.add_argument("--rotations", type=int, default=1000, help="rotations of the global table (default 1000)")
    parser.add_argument("--steps", type=int, default=40, help="local Gibbs steps (default 40)")
    parser.add_argument("--burn-in", type=int, default=20, help="steps before samples are averaged (default 20)")
    parser.add_argument("--translations", action="store_true", help="also sample in-plane translations")
    parser.add_argument("--max-shift", type=float, default=None,
                        help="with --translations: largest shift in Å searched globally (default 10%% of the box)")
    parser.add_argument("--true-poses", type=Path, default=None,
                        help="STAR file with the true poses: report rotation errors")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def _check_args(args: argparse.Namespace) -> None:
    if not math.isfinite(args.counts) or not 1 <= args.counts <= 2**31 - 1:
        raise InputError(f"--counts {args.counts:g}: must be a number between 1 and 2147483647 (e.g. 1e4)")
    if args.rotations < 1:
        raise InputError(f"--rotations {args.rotations}: must be at least 1")
    if args.steps < 1 or not 0 <= args.burn_in < args.steps:
        raise InputError(f"--steps {args.steps} --burn-in {args.burn_in}: need steps >= 1 and 0 <= burn-in < steps")
    if args.max_shift is not None and (not math.isfinite(args.max_shift) or args.max_shift < 0):
        raise InputError(f"--max-shift {args.max_shift}: must be a non-negative number of Å")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")
    require_file(args.model, "--model")


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.images import optics_values, read_input_images
    from cryogmm.io.pseudoatoms import read_pseudoatoms
    from cryogmm.io.runs import RunFolder, check_memory, write_json, write_settings
    from cryogmm.io.star import columns_to_poses, poses_to_columns, read_particles, write_particles
    from cryogmm.metrics.alignment import rotation_errors
    from cryogmm.mixture import GaussianMixture
    from cryogmm.pipelines.orientations import estimate_orientations
    from cryogmm.pipelines.reconstruct import check_non_negative

    setup_logging(verbose=args.verbose)
    try:
        _check_args(args)
        data = read_input_images(args.images, args.pixel_size)
        images = check_non_negative(data.images, str(args.images), "or pass them to `cryogmm prepare`")
        check_memory(8.0 * 5 * args.rotations * images.shape[0], f"--rotations {args.rotations}",
                     f"{images.shape[0]} images x {args.rotations} rotations")
        n, pixel = images.shape[-1], data.pixel_size_in_angstroms
        model = read_pseudoatoms(args.model)
        if model.ndim != 3:
            raise InputError(f"--model {args.model}: not a 3D pseudo-atom model")
        # pseudo-atoms sit in map coordinates (origin at the box corner): the rotation centre is box//2
        mixture = GaussianMixture(model.means_in_angstroms - (n // 2) * pixel, model.weights,
                                  model.precision_per_square_angstrom)
        truth = None
        if args.true_poses is not None:
            truth, _ = columns_to_poses(read_particles(args.true_poses).particles)
            if truth.shape[0] != images.shape[0]:
                raise InputError(f"--true-poses {args.true_poses}: {truth.shape[0]} poses for {images.shape[0]} images")
        max_shift = 0.1 * n * pixel if args.max_shift is None else args.max_shift
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        with RunFolder(args.output, args.force) as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %d images of %d px at %.4g Å/px; model %s (%d components, sigma %.2f Å); seed %d",
                     args.images, images.shape[0], n, pixel, args.model, mixture.n_components,
                     mixture.sigma_in_angstroms, seed)
            result = estimate_orientations(
                images, pixel, mixture, n_counts=int(args.counts), n_rotations=args.rotations, n_steps=args.steps,
                burn_in=args.burn_in, translations=args.translations,
                max_shift_in_angstroms=max_shift if args.translations else 0.0, seed=seed,
                progress=not args.quiet and sys.stderr.isatty())
            optics = {"rlnOpticsGroup": 1, "rlnImagePixelSize": pixel, "rlnImageSize": n,
                      "rlnImageDimensionality": 2, **optics_values(data.path)}
            table = pd.DataFrame({"rlnImageName": data.names,
                                  **poses_to_columns(result.rotations, result.translations_in_angstroms),
                                  "rlnOpticsGroup": 1})
            write_particles(folder / "orientations.star", table, optics)
            summary = {"images": str(args.images), "model": str(args.model), "seed": seed,
                       "pixel_size_in_angstroms": pixel, "n_images": int(images.shape[0]), "box": n,
                       "n_components": mixture.n_components, "sigma_in_angstroms": mixture.sigma_in_angstroms,
                       "n_samples": result.n_samples, "timings_in_seconds": result.timings,
                       "spread_in_degrees": result.spread_in_degrees.tolist(),
                       "log_likelihoods": result.log_likelihoods.tolist()}
            if truth is not None:
                errors = rotation_errors(result.rotations, truth)
                e = errors.errors_in_degrees
                summary["rotation_errors"] = {
                    "errors_in_degrees": e.tolist(), "median_degrees": float(np.median(e)),
                    "max_degrees": float(e.max()), "within_2_degrees": int(errors.n_within(2.0)),
                    "within_5_degrees": int(errors.n_within(5.0)), "mirrored": bool(errors.mirrored)}
                log.info("rotation errors against %s: median %.2f, max %.2f degrees; %d of %d within 2 degrees",
                         args.true_poses, np.median(e), e.max(), errors.n_within(2.0), e.size)
            write_json(folder / "summary.json", summary)
            settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
            settings.update(seed=seed, pixel_size_in_angstroms=pixel, max_shift=max_shift)
            write_settings(folder, "orientations", settings, seed)
            write_run_report(folder, args)
            log.info("orientations done in %.1f s; wrote %s", result.timings["total_seconds"], args.output)
    finally:
        close_logging()
    return 0
