"""Fit Gaussian pseudo-atoms to a 3D density map (thesis section 3.1).

The map is discretised to --counts counts (Eqn. 2.52) and fitted with K isotropic Gaussians
sharing one width, by Gibbs sampling (default) or EM. Negative voxel values cannot be counts:
they are set to zero before fitting (the log and summary.json say how much that removed), and
the cross-correlation is reported against the map as given and against its non-negative part.

--threshold raises that level to zero weak positive values too (e.g. solvent noise below the
author's contour level).

--symmetry (C1, Cn, Dn, T, O, I; RELION's axes, as in `cryogmm abinitio`) imposes a point group
about the box centre (voxel n//2): K / |G| components are fitted in the asymmetric unit and copied.
The map's symmetry axes must lie along RELION's (Cn, Dn: n-fold along z), as in maps from RELION
and the EMDB's symmetrised maps.

Outputs in DIR: pseudoatoms.pdb and pseudoatoms.cif (last sample; one chain per symmetric copy,
the box as unit cell; open them over the map in ChimeraX), fitted_map.mrc (posterior mean of the
mixture on the input grid, scaled so that its total equals that of the part of the map that was
fitted, i.e. the map with the values below --threshold (default: the negative values) set to
zero; summary.json gives both totals), fitted_map_slices.png, summary.json, trace.png
(log-posterior and sigma per step), settings.json, run.log.

Examples:
    cryogmm fit-map polII_15A.mrc --components 500 --seed 1 --output polII_fit
    cryogmm fit-map emd_1997.map --components 1000 --symmetry D7 --threshold 0.5 --output groel_fit
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.runs import COMPONENT_BYTES, check_memory

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", type=Path, help="density map (MRC)")
    parser.add_argument("--components", "-K", type=int, required=True, help="number of Gaussian components")
    parser.add_argument("--algorithm", choices=("gibbs", "em"), default="gibbs", help="default: gibbs")
    parser.add_argument("--symmetry", default="C1",
                        help="point group imposed about the box centre: C1, Cn, Dn, T, O, I (default C1); "
                             "--components then counts the whole particle")
    parser.add_argument("--counts", type=float, default=None,
                        help="total counts the map is discretised to (default: 1e6 or 2000 per component, whichever is more)")
    parser.add_argument("--steps", type=int, default=300, help="Gibbs/EM steps (default 300)")
    parser.add_argument("--burn-in", type=int, default=None, help="steps before samples enter the posterior mean (default: 2/3 of --steps)")
    parser.add_argument("--thin", type=int, default=10, help="keep every N-th sample after burn-in (default 10)")
    parser.add_argument("--pixel-size", type=float, default=None, help="voxel size in Å (overrides the header; needed if it is 0)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="set map values below this level to zero before fitting (map units; default 0, "
                             "i.e. only negative values; e.g. the author's contour level for a noisy map)")
    parser.add_argument("--cutoff-sigmas", type=float, default=5.0, help="evaluate components within this many sigma (default 5)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def check_args(args: argparse.Namespace) -> None:
    from cryogmm.geometry.symmetry import canonical_symmetry_name

    try:
        args.symmetry = canonical_symmetry_name(args.symmetry)
    except InputError as err:
        raise InputError(f"--symmetry {args.symmetry}: {err}") from None
    if args.components < 1:
        raise InputError(f"--components {args.components}: must be at least 1")
    if args.counts is not None and (not math.isfinite(args.counts) or not 1 <= args.counts <= 2**31 - 1):
        raise InputError(f"--counts {args.counts:g}: must be a number between 1 and 2147483647 (e.g. 1e6)")
    if args.counts is not None:  # each count's (x, y, z) in double precision, at least
        check_memory(24.0 * args.counts, f"--counts {args.counts:g}", f"{args.counts:g} counts")
    check_memory(COMPONENT_BYTES * args.components, f"--components {args.components}", f"{args.components} components")
    if args.steps < 1:
        raise InputError(f"--steps {args.steps}: must be at least 1")
    if args.burn_in is not None and not 0 <= args.burn_in <= args.steps:
        raise InputError(f"--burn-in {args.burn_in}: must be between 0 and --steps ({args.steps})")
    if args.thin < 1:
        raise InputError(f"--thin {args.thin}: must be at least 1")
    if args.pixel_size is not None and (not math.isfinite(args.pixel_size) or args.pixel_size <= 0):
        raise InputError(f"--pixel-size {args.pixel_size}: must be a positive number of Å")
    if not math.isfinite(args.cutoff_sigmas) or args.cutoff_sigmas < 2:
        raise InputError(f"--cutoff-sigmas {args.cutoff_sigmas}: must be at least 2 (default 5)")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")


def describe_prior(prior) -> str:
    """The prior of the fit in words, with its numbers (thesis section 3.1.5)."""
    center = ", ".join(f"{c:.1f}" for c in prior.center_in_angstroms)
    if prior.mean_prior == "independent":
        spread = f"a standard deviation of {1 / np.sqrt(prior.mean_precision):.1f} Å"
    else:
        spread = f"a standard deviation of 1/sqrt(r s) with r = {prior.mean_precision:.3g}"
    return (f"component positions around the map's centre of mass ({center}) Å with {spread} (the spread of the "
            f"whole map taken as one Gaussian; precision r = {prior.mean_precision:.3g} /Å²); component width: "
            f"precision Gamma(a = {prior.shape:g}, b = {prior.rate:g} Å²), a typical sigma of "
            f"{np.sqrt(prior.rate / prior.shape):.1f} Å before the data have their say; weights: Dirichlet("
            f"{prior.concentration:g}), which favours weights of similar size")


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.mrc import read_map, write_map
    from cryogmm.io.pseudoatoms import write_pseudoatom_files
    from cryogmm.io.runs import RunFolder, write_json, write_settings
    from cryogmm.reconstruction.fit_map import default_counts, fit_map, prepare_counts, summarize
    from cryogmm.report.maps import plot_central_slices
    from cryogmm.report.plots import plot_trace

    setup_logging(verbose=args.verbose)
    try:
        check_args(args)
        run = RunFolder(args.output, args.force)
        volume = read_map(args.map, args.pixel_size)
        grid = volume.grid
        n_counts = int(args.counts) if args.counts is not None else default_counts(args.components)
        prepare_counts(volume.data, grid, args.components, n_counts, args.threshold)  # validate first
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %s voxels of %.3f Å, origin %s Å", args.map, "x".join(map(str, grid.shape[::-1])),
                     grid.spacing_in_angstroms, np.round(grid.origin_in_angstroms, 2).tolist())
            result = fit_map(volume.data, grid, args.components, rng=np.random.default_rng(seed),
                             algorithm=args.algorithm, n_counts=n_counts, n_steps=args.steps,
                             burn_in=args.burn_in, thin=args.thin, cutoff_sigmas=args.cutoff_sigmas,
                             threshold=args.threshold, symmetry=args.symmetry,
                             progress=not args.quiet and sys.stderr.isatty())
            log.info("discretised to %d counts (asked for %d); seed %d", result.data.n_counts, n_counts, seed)
            log.info("prior: %s", describe_prior(result.prior))
            if result.copies > 1:
                log.info("symmetry %s about the box centre %s Å: %d components in the asymmetric unit, %d copies, "
                         "%d in all", result.symmetry, np.round(grid.center_in_angstroms(), 2).tolist(),
                         result.mixture.n_components // result.copies, result.copies, result.mixture.n_components)
            trace_lp, trace_sigma = result.traces["log_posterior"], result.traces["sigma_in_angstroms"]
            for step in sorted(set(range(0, len(trace_lp), max(1, args.steps // 10))) | {len(trace_lp) - 1}):
                log.info("step %4d: log-posterior %.6g, sigma %.3f Å", step, trace_lp[step], trace_sigma[step])
            if result.clipped.n_negative_voxels:
                log.info("values below %g: %d voxels (%.1f%% of the map's absolute mass) set to zero before "
                         "discretising; the fit describes what is left", args.threshold,
                         result.clipped.n_negative_voxels, 100 * result.clipped.negative_fraction_of_mass)
            summary = summarize(result, volume.data)
            summary.update(seed=seed, algorithm=args.algorithm, map=str(args.map), threshold=args.threshold,
                           voxel_size_in_angstroms=grid.spacing_in_angstroms)
            # the box as the unit cell: the pseudo-atoms are in the map's coordinates, whose cell
            # starts at the map's origin
            write_pseudoatom_files(folder / "pseudoatoms", result.mixture, copies=result.copies,
                                   symmetry=result.symmetry,
                                   cell_in_angstroms=np.array(grid.shape[::-1]) * grid.spacing_in_angstroms)
            write_map(folder / "fitted_map.mrc", result.fitted_map(), grid.spacing_in_angstroms,
                      grid.origin_in_angstroms)
            plot_central_slices(result.fitted_map(), grid.spacing_in_angstroms, folder / "fitted_map_slices.png",
                                title=f"fitted_map.mrc: K = {args.components} fitted to {Path(args.map).name}, "
                                      "central slices")
            plot_trace(result.traces, folder / "trace.png", burn_in=args.burn_in if args.burn_in is not None
                       else (2 * args.steps) // 3, title=f"{Path(args.map).name}: K = {args.components}, {args.algorithm}")
            write_json(folder / "summary.json", summary)
            settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
            settings.update(seed=seed, n_counts_requested=n_counts, prior={"mean_precision_per_square_angstrom": result.prior.mean_precision,
                                              "mean_center_in_angstroms": result.prior.center_in_angstroms,
                                              "precision_shape_a": result.prior.shape,
                                              "precision_rate_b_in_square_angstroms": result.prior.rate,
                                              "weight_concentration_alpha0": result.prior.concentration,
                                              "mean_prior": result.prior.mean_prior})
            write_settings(folder, "fit-map", settings, seed)
            write_run_report(folder, args)
            log.info("K = %d: sigma %.2f Å, cross-correlation %.4f with the input map (%.4f with its non-negative "
                     "part), %.1f s", result.mixture.n_components, summary["sigma_in_angstroms"],
                     summary["cross_correlation"], summary["cross_correlation_non_negative_part"], result.seconds)
            log.info("fitted_map.mrc is scaled to the total of the part that was fitted (%.6g; the input map's "
                     "total is %.6g)", summary["fitted_map_total"], summary["input_total"])
            log.info("wrote %s", args.output)
    finally:
        close_logging()
    return 0
