"""Reconstruct a 3D map from images with known poses (thesis section 3.2).

The STAR file must give each particle's orientation (rlnAngleRot/Tilt/Psi) and may give its
shift (rlnOriginXAngst/YAngst). --method gibbs (default) discretises each image to --counts
counts and runs the Gibbs sampler of a K-component mixture with the poses held fixed, from a
draw from the prior; after --burn-in steps every --thin-th sample is averaged into the posterior
mean map. The images must be non-negative (class averages or noise-free projections).
--method fourier is direct Fourier inversion (section 3.2.3): fast, and allows negative values.

Outputs in DIR: map.mrc (posterior mean or Fourier map, in the density units of the images, on
the images' box with voxel = pixel size and MRC origin 0: the rotation centre is voxel box//2, as
in RELION and in simulate-images' reference.mrc), map_slices.png (its central slices), summary.json (settings, seed, timings, final
log-posterior, sigma; with --reference the cross-correlation, Eqn. 3.3, and FSC resolutions),
settings.json, run.log; with gibbs also pseudoatoms.pdb/.cif (the sample with the highest
log-posterior, with its symmetric copies, in map.mrc's coordinates so that they overlay it) and
trace.png (log-posterior and sigma per step).

Example:
    cryogmm reconstruct polii/particles.star --components 500 --reference polii/reference.mrc \\
        --seed 1 --output polii_reconstruction
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.runs import COMPONENT_BYTES, check_memory

log = logging.getLogger(__name__)



def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, help="RELION particle STAR file with poses")
    parser.add_argument("--method", choices=("gibbs", "fourier"), default="gibbs", help="default: gibbs")
    parser.add_argument("--components", "-K", type=int, default=500, help="mixture components (default 500)")
    parser.add_argument("--counts", type=float, default=10000, help="counts per image (default 10000)")
    parser.add_argument("--steps", type=int, default=400, help="Gibbs steps (default 400)")
    parser.add_argument("--burn-in", type=int, default=None,
                        help="steps before samples enter the posterior mean (default: half of --steps)")
    parser.add_argument("--thin", type=int, default=10, help="average every N-th sample after burn-in (default 10)")
    parser.add_argument("--symmetry", default="C1", help="point group: C1, Cn, Dn, T, O, I (default C1)")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (overrides the STAR file)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the image stacks (default: next to STAR)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="map (MRC, same box and voxel size) to compare the result with")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def check_args(args: argparse.Namespace) -> None:
    from cryogmm.geometry.symmetry import canonical_symmetry_name

    if args.components < 1:
        raise InputError(f"--components {args.components}: must be at least 1")
    check_memory(COMPONENT_BYTES * args.components, f"--components {args.components}", f"{args.components} components")
    if not math.isfinite(args.counts) or not 1 <= args.counts <= 2**31 - 1:
        raise InputError(f"--counts {args.counts:g}: must be a number between 1 and 2147483647 (e.g. 1e4)")
    if args.steps < 1:
        raise InputError(f"--steps {args.steps}: must be at least 1")
    if args.burn_in is not None and not 0 <= args.burn_in <= args.steps:
        raise InputError(f"--burn-in {args.burn_in}: must be between 0 and --steps ({args.steps})")
    if args.thin < 1:
        raise InputError(f"--thin {args.thin}: must be at least 1")
    if args.pixel_size is not None and (not math.isfinite(args.pixel_size) or args.pixel_size <= 0):
        raise InputError(f"--pixel-size {args.pixel_size}: must be a positive number of Å")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")
    try:
        args.symmetry = canonical_symmetry_name(args.symmetry)
    except InputError as err:
        raise InputError(f"--symmetry {args.symmetry}: {err}") from None


def _read_reference(path: Path, n: int, pixel: float):
    from cryogmm.io.mrc import read_map

    reference = read_map(path)
    if reference.data.shape != (n, n, n):
        raise InputError(f"--reference {path}: box {'x'.join(map(str, reference.data.shape[::-1]))} differs from "
                         f"the images' {n}x{n}x{n}; resample it onto the images' box and pixel size")
    if not math.isclose(reference.voxel_size_in_angstroms, pixel, rel_tol=1e-3):
        raise InputError(f"--reference {path}: voxel size {reference.voxel_size_in_angstroms:g} Å differs from the "
                         f"pixel size {pixel:g} Å; resample it onto the images' grid")
    return reference.data.astype(np.float64)


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.mrc import write_map
    from cryogmm.io.runs import RunFolder, write_json, write_settings
    from cryogmm.io.star import columns_to_poses, load_images, read_particles
    from cryogmm.report.maps import plot_central_slices
    from cryogmm.pipelines.compare import compare_with_reference
    from cryogmm.pipelines.reconstruct import check_non_negative, reconstruct_fourier, reconstruct_known_poses

    setup_logging(verbose=args.verbose)
    try:
        check_args(args)
        burn_in = args.steps // 2 if args.burn_in is None else args.burn_in
        run = RunFolder(args.output, args.force)
        table = read_particles(args.star)
        try:
            rotations, shifts = columns_to_poses(table.particles, args.pixel_size)
        except InputError as err:
            raise InputError(f"{args.star}: {err}") from None
        if not (np.all(np.isfinite(rotations)) and np.all(np.isfinite(shifts))):
            raise InputError(f"{args.star}: angles or origins are not finite numbers; fix the file")
        images, pixel = load_images(table, args.data_dir, pixel_size_in_angstroms=args.pixel_size)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise InputError(f"{args.star}: images of shape {images.shape[1:]} are not square; use square particles")
        if args.method == "gibbs":
            check_non_negative(images)
        n = images.shape[-1]
        reference = _read_reference(args.reference, n, pixel) if args.reference is not None else None
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %d images of %d px at %g Å/px; method %s, symmetry %s, seed %d", args.star,
                     images.shape[0], n, pixel, args.method, args.symmetry, seed)
            summary = {"method": args.method, "seed": seed, "star": str(args.star), "n_images": images.shape[0],
                       "box": n, "pixel_size_in_angstroms": pixel, "symmetry": args.symmetry}
            if args.method == "gibbs":
                result = reconstruct_known_poses(
                    images, pixel, rotations, shifts, n_components=args.components, n_counts=int(args.counts),
                    n_steps=args.steps, burn_in=burn_in, thin=args.thin, symmetry=args.symmetry, seed=seed,
                    progress=not args.quiet and sys.stderr.isatty())
                volume = result.posterior_mean
                _write_gibbs_outputs(folder, result, args, burn_in)
                summary.update(settings={"components": args.components, "counts_per_image": int(args.counts),
                                         "steps": args.steps, "burn_in": burn_in, "thin": args.thin},
                               timings_in_seconds=result.timings, log_posterior=result.log_posterior,
                               best_log_posterior=result.best_log_posterior,
                               sigma_in_angstroms=result.sigma_in_angstroms, n_samples_averaged=result.n_samples,
                               n_counts=result.n_counts)
            else:
                start = time.perf_counter()
                volume = reconstruct_fourier(images, pixel, rotations, shifts, symmetry=args.symmetry)
                summary.update(settings={}, timings_in_seconds={"total_seconds": time.perf_counter() - start})
            write_map(folder / "map.mrc", volume, pixel)  # origin 0: the rotation centre is voxel n // 2
            plot_central_slices(volume, pixel, folder / "map_slices.png",
                                title=f"map.mrc from {Path(args.star).name} ({args.method}, symmetry {args.symmetry}): "
                                      "central slices")
            if reference is not None:
                # known poses: the map is in the reference's frame, compared as it is
                figures = compare_with_reference(volume, reference, pixel, align=False).figures
                summary["reference"] = {"path": str(args.reference), **figures}
                log.info("cross-correlation with %s: %.4f", args.reference, figures["cross_correlation"])
                for t in ("0.5", "0.143"):
                    r = figures[f"fsc_{t}_in_angstroms"]
                    log.info("FSC %s resolution: %s", t, "beyond Nyquist" if r is None else f"{r:.2f} Å")
            write_json(folder / "summary.json", summary)
            settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
            settings.update(seed=seed, burn_in=burn_in, pixel_size_in_angstroms=pixel)
            write_settings(folder, "reconstruct", settings, seed)
            write_run_report(folder, args)
            log.info("%s reconstruction done in %.1f s; wrote %s", args.method,
                     summary["timings_in_seconds"]["total_seconds"], args.output)
    finally:
        close_logging()
    return 0


def _write_gibbs_outputs(folder: Path, result, args: argparse.Namespace, burn_in: int) -> None:
    from cryogmm.geometry.symmetry import symmetry_operators
    from cryogmm.io.pseudoatoms import write_pseudoatom_files
    from cryogmm.mixture import GaussianMixture
    from cryogmm.report.plots import plot_trace

    trace = result.log_posterior_trace
    for step in sorted(set(range(0, len(trace), max(1, args.steps // 10))) | {len(trace) - 1}):
        log.info("step %4d: log-posterior %.6g, sigma %.3f Å", step, trace[step], result.sigma_trace[step])
    log.info("final sigma %.2f Å, log-posterior %.6g; %d samples averaged (%.1f s sampling, %.1f s evaluating)",
             result.sigma_in_angstroms, result.log_posterior, result.n_samples,
             result.timings["sampling_seconds"], result.timings["posterior_mean_seconds"])
    # map.mrc has origin 0, so the rotation centre (mixture coordinate 0) sits at -origin of the grid
    full = result.full_mixture
    moved = GaussianMixture(full.means_in_angstroms - np.array(result.grid.origin_in_angstroms), full.weights,
                            full.precision_per_square_angstrom)
    write_pseudoatom_files(folder / "pseudoatoms", moved, copies=symmetry_operators(args.symmetry).shape[0],
                           symmetry=args.symmetry, cell_in_angstroms=result.grid.shape[0] * result.grid.spacing_in_angstroms)
    plot_trace({"log_posterior": trace, "sigma_in_angstroms": result.sigma_trace}, folder / "trace.png",
               burn_in=burn_in, title=f"{Path(args.star).name}: K = {args.components}, {args.symmetry}")
