"""Infer a 3D initial model and the image orientations from class averages (thesis section 3.4).

IMAGES is an .mrcs stack (pixel size from the header unless --pixel-size is given), a STAR file
of class averages or particles, a RELION 2D-classification _model.star (its _classes.mrcs; empty
classes dropped), or an .npz of 2D point clouds (one (N, 2) array in pixels per image; they are
centred and binned into count images). Images must be non-negative: the Poisson model reads them
as counts. Class averages with negative values (CTF-corrected, or normalised to a zero
background) are refused unless --prepare or --clip-negatives is given. --prepare does what the
input needs and logs it: a STAR of particles with classes, in-plane poses and CTFs is
deconvolved class by class (multi-frame, 7 defocus groups; a STAR of class averages with CTFs
single-frame), and images with negative values or a background are masked, centred and clipped
(`cryogmm deconvolve`, `cryogmm prepare`); the images used are written to DIR/prepared.mrcs with
prepared.png (and deconvolved.png); orientations.star still names the input images, with the
centring in its origins (classes deconvolved from particles are named after prepared.mrcs).
--clip-negatives only subtracts each image's background level (median of its outer ring) and sets
what remains negative to zero.

Stages: several independent restarts of the initial stage (K = --components-initial on images
downsampled to --initial-box, --initial-counts counts each, --rotations global rotations), ranked
by log-posterior (all run --screen-cycles cycles, the best --keep-restarts go on to --cycles unless
the two best agree already); then refinement of the best one (K = --components on the images
Fourier-cropped to --refine-box, 32 px by default, --counts counts each, rotations and translations
sampled) and the posterior mean of the thinned samples after burn-in.

Outputs in DIR: map.mrc (on the input pixel size and box; rotation centre at voxel box//2, MRC
origin 0 as RELION writes it): with the poisson model the pseudo-atom posterior mean
(posterior_mean.mrc) or the direct Fourier inversion of the images with the final poses
(fourier_inversion.mrc), whichever the half-set FSCs show to be sharper (--final-map; summary.json's
final_map says which and why); with the gaussian model the posterior mean; pseudoatoms.pdb and .cif (best sample, all
symmetric copies, one chain each), orientations.star (estimated poses in RELION's convention with
the input image names; voltage, Cs and amplitude contrast copied from the input STAR file, or left
out), summary.json (settings, seed, per-restart log-posteriors, chosen restart, component size,
timings; with --reference: aligned FSC and cross-correlation; with --true-poses: rotation errors),
restarts.png (log-posterior traces), projections.png (inputs next to projections of the result,
with the estimated angles), map_slices.png (central slices of map.mrc),
restarts/restart_N.star (each restart's orientations at the end of the initial stage),
settings.json, run.log. An interrupted run keeps its checkpoints in DIR's sibling
.DIR.checkpoint/ and continues with --resume (same options and seed).

Example:
    cryogmm abinitio class_averages.mrcs --pixel-size 4 --restarts 4 --jobs 2 --seed 1 --output polII_abinitio
    cryogmm abinitio groel.mrcs --symmetry D7 --output groel_abinitio
    cryogmm abinitio run_it025_model.star --symmetry D2 --prepare --output betagal_abinitio
    cryogmm abinitio particles.star --prepare --output from_particles
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
import logging
import math
import os
import sys
import threading
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="class averages: .mrcs stack, STAR file, or .npz point clouds")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (default: from the file)")
    parser.add_argument("--symmetry", default="C1", help="point group imposed on the model: C1, Cn, Dn, T, O, I (default C1)")
    parser.add_argument("--restarts", type=int, default=4, help="independent initial-stage runs (default 4)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes for the restarts (default: the number of CPU cores, at most --restarts)")
    parser.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                        help="run the restarts on an existing Dask cluster (needs dask.distributed)")
    parser.add_argument("--noise-model", default="poisson", metavar="MODEL",
                        help="poisson (images read as counts, thesis ch. 3; default) or gaussian (images of any sign "
                             "with Gaussian noise, a scale and noise level per image, thesis ch. 5)")
    parser.add_argument("--ctf", action="store_true",
                        help="gaussian model: convolve each projection with its image's CTF from the STAR file's "
                             "columns (rlnDefocusU/V/Angle, voltage, Cs, amplitude contrast), so class averages "
                             "go in without deconvolution")
    parser.add_argument("--final-map", default="auto", metavar="WHICH",
                        help="poisson model: what map.mrc is: the pseudo-atom posterior mean, the direct Fourier "
                             "inversion of the images with the final poses, or auto (default): the inversion when "
                             "the half-set FSCs show it sharper than the posterior mean; both are written "
                             "(posterior_mean.mrc, fourier_inversion.mrc) and summary.json's final_map says which")
    parser.add_argument("--ctf-initial-stage", default="deconvolved", metavar="HOW",
                        help="with --ctf: deconvolved (the initial stage searches the poses on the images "
                             "deconvolved of their CTFs, the refinement fits the images as they are with the CTF "
                             "in the model; default) or model (the CTF in the model in both stages)")
    parser.add_argument("--temperatures", default="1", metavar="T0,T1,...",
                        help="gaussian model: replica exchange in the refinement over this temperature ladder, "
                             "starting at 1 and increasing, e.g. 1,2,4 (default 1: no tempering); swap rates "
                             "go to summary.json and run.log")
    parser.add_argument("--components-initial", type=int, default=None,
                        help="K in the initial stage, whole particle (default 100, gaussian 50; K / |G| in the "
                             "asymmetric unit)")
    parser.add_argument("--components", type=int, default=None,
                        help="K in the refinement, whole particle (default 300, gaussian 500; K / |G| in the "
                             "asymmetric unit)")
    parser.add_argument("--initial-box", type=int, default=None,
                        help="image size in the initial stage (default 32, gaussian 24)")
    parser.add_argument("--initial-counts", type=int, default=1000, help="counts per image in the initial stage (default 1000)")
    parser.add_argument("--counts", type=int, default=10000, help="counts per image in the refinement (default 10000)")
    parser.add_argument("--refine-box", type=int, default=None,
                        help="image size in the refinement, Fourier-cropped from the input (default 32, or the input "
                             "size if smaller; 0: the input size). The thesis's refinement, slower and a little "
                             "sharper: --components 1000 --refine-box 0 --refine-steps 300 "
                             "--burn-in 150 --thin 10")
    parser.add_argument("--rotations", type=int, default=1000, help="N_R, rotations of the global step (default 1000)")
    parser.add_argument("--cycles", type=int, default=None,
                        help="mixture/rotation alternations per restart (default 8, gaussian 20)")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="full Gibbs steps in the refinement (default 60, gaussian 120)")
    parser.add_argument("--burn-in", type=int, default=None,
                        help="refinement steps before averaging (default 20, gaussian 60)")
    parser.add_argument("--thin", type=int, default=None,
                        help="average every N-th sample after burn-in (default 4, gaussian 3)")
    parser.add_argument("--fixed-schedule", action="store_true",
                        help="run every step of the schedule: no adaptive stopping (see --stop-window)")
    parser.add_argument("--stop-window", type=int, default=None, metavar="STEPS",
                        help="the refinement's warm-up and burn-in end when the mean log-posterior of the last "
                             "STEPS steps is within --stop-tolerance standard errors of the STEPS before "
                             "(default 10, at most a quarter of the stage; at most half of --burn-in)")
    parser.add_argument("--stop-tolerance", type=float, default=2.0, metavar="SE",
                        help="standard errors for --stop-window's comparison (default 2; 0 never stops early)")
    parser.add_argument("--rotation-tolerance", type=float, default=1.0, metavar="DEGREES",
                        help="a restart ends when its cycle-mean rotations moved by at most this (median image) "
                             "over two cycles (default 1)")
    parser.add_argument("--screen-cycles", type=int, default=None, metavar="N",
                        help="every restart runs N cycles, then only the --keep-restarts with the highest "
                             "log-posterior go on (default 5; poisson model)")
    parser.add_argument("--keep-restarts", type=int, default=None, metavar="N",
                        help="restarts that go on after the screening (default 2; all: no screening)")
    parser.add_argument("--restart-agreement", type=float, default=10.0, metavar="DEGREES",
                        help="the initial stage ends after the screening when its two best restarts place 90%% of "
                             "the images within this of each other (default 10)")
    parser.add_argument("--max-shift", type=float, default=None,
                        help="largest in-plane translation searched in Å (default 10%% of the box; 0 fixes them)")
    parser.add_argument("--clip-negatives", action="store_true",
                        help="subtract each image's background and set negative values to zero")
    parser.add_argument("--prepare", action="store_true",
                        help="make the input fit for the Poisson model first, as needed: deconvolve particles "
                             "with classes and CTFs (or class averages with CTFs), then mask, centre and clip "
                             "images with negative values or a background (see `deconvolve` and `prepare`)")
    parser.add_argument("--reference", type=Path, default=None, help="a map to compare with (aligned FSC, CC)")
    parser.add_argument("--true-poses", type=Path, default=None, help="STAR with the true poses (rotation errors)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


# defaults of the options whose value depends on --noise-model (poisson, gaussian)
MODEL_DEFAULTS = {"components_initial": (100, 50), "components": (300, 500), "initial_box": (32, 24),
                  "cycles": (8, 20), "refine_steps": (60, 120), "burn_in": (20, 60), "thin": (4, 3),
                  "refine_box": (32, None), "screen_cycles": (5, None), "keep_restarts": (2, None)}
NOISE_MODELS = ("poisson", "gaussian")


def build_settings(args: argparse.Namespace):
    from cryogmm.pipelines.abinitio import AbinitioSettings

    if args.noise_model not in NOISE_MODELS:
        raise InputError(f"--noise-model {args.noise_model}: unknown; choose poisson or gaussian")
    gaussian = args.noise_model == "gaussian"
    if args.ctf and not gaussian:
        raise InputError("--ctf: the CTF enters the model only with --noise-model gaussian; the poisson model "
                         "takes deconvolved images (--prepare)")
    if gaussian or args.ctf_initial_stage != "deconvolved":  # the default needs no check (nor scipy.optimize)
        from cryogmm.pipelines.abinitio_gaussian import CTF_INITIAL_STAGES

        if args.ctf_initial_stage not in CTF_INITIAL_STAGES:
            raise InputError(f"--ctf-initial-stage {args.ctf_initial_stage}: unknown; choose "
                             f"{' or '.join(CTF_INITIAL_STAGES)}")
    if args.final_map not in ("auto", "posterior-mean", "fourier-inversion"):
        raise InputError(f"--final-map {args.final_map}: unknown; choose auto, posterior-mean or fourier-inversion")
    if gaussian and args.final_map != "auto":
        raise InputError("--final-map: the gaussian model's map.mrc is its posterior mean; leave out --final-map")
    if args.ctf and args.prepare:
        raise InputError("--ctf and --prepare: choose one (--prepare deconvolves the CTF away)")
    args.temperatures = parse_temperatures(args.temperatures, gaussian)
    screen_given = args.screen_cycles is not None
    for name, defaults in MODEL_DEFAULTS.items():
        if getattr(args, name) is None:  # resolved here, so that settings.json records the value used
            setattr(args, name, defaults[gaussian])
    checks = [("--restarts", args.restarts, 1), ("--components-initial", args.components_initial, 1),
              ("--components", args.components, 1), ("--initial-box", args.initial_box, 8),
              ("--initial-counts", args.initial_counts, 10), ("--counts", args.counts, 10),
              ("--rotations", args.rotations, 10), ("--cycles", args.cycles, 1), ("--refine-steps", args.refine_steps, 1),
              ("--burn-in", args.burn_in, 0), ("--thin", args.thin, 1)]
    for option, value, low in checks:
        if value < low:
            raise InputError(f"{option} {value}: must be at least {low}")
    if gaussian and args.refine_box is not None:
        raise InputError("--refine-box: the gaussian model refines on the images at their input size; leave it out")
    if gaussian and (args.screen_cycles is not None or args.keep_restarts is not None):
        raise InputError("--screen-cycles/--keep-restarts: the gaussian model runs every restart in full; leave them out")
    if not gaussian:
        if args.screen_cycles < 1 or (screen_given and args.screen_cycles >= args.cycles):
            raise InputError(f"--screen-cycles {args.screen_cycles}: must be at least 1 and below --cycles "
                             f"({args.cycles})")
        if args.keep_restarts < 1:
            raise InputError(f"--keep-restarts {args.keep_restarts}: must be at least 1")
    if args.refine_box is not None and (args.refine_box < 0 or 0 < args.refine_box < 8):
        raise InputError(f"--refine-box {args.refine_box}: must be at least 8 pixels (or 0: the input size)")
    if args.counts > 10**8 or args.initial_counts > 10**8:
        raise InputError("--counts/--initial-counts: at most 1e8 counts per image")
    check_abinitio_memory(args)
    if args.burn_in >= args.refine_steps:
        raise InputError(f"--burn-in {args.burn_in}: must be below --refine-steps ({args.refine_steps})")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs {args.jobs}: must be at least 1")
    if args.max_shift is not None and (not math.isfinite(args.max_shift) or args.max_shift < 0):
        raise InputError(f"--max-shift {args.max_shift}: must be a non-negative number of Å")
    for option, value in (("--stop-tolerance", args.stop_tolerance), ("--rotation-tolerance", args.rotation_tolerance),
                          ("--restart-agreement", args.restart_agreement)):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{option} {value}: must be a non-negative number")
    if args.stop_window is not None and not 2 <= args.stop_window <= args.burn_in // 2:
        raise InputError(f"--stop-window {args.stop_window}: must be at least 2 and at most half of --burn-in "
                         f"({args.burn_in}): the rule compares two windows")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")
    if args.resume and args.force:
        raise InputError("--resume and --force: choose one (--force starts over)")
    if gaussian:
        return _gaussian_settings(args)
    return AbinitioSettings(symmetry=args.symmetry, n_restarts=args.restarts,
                            n_components_initial=args.components_initial, initial_box=args.initial_box,
                            initial_counts=args.initial_counts, n_rotations=args.rotations, n_cycles=args.cycles,
                            n_components=args.components, refine_counts=args.counts,
                            refine_box=args.refine_box or None,
                            refine_steps=args.refine_steps,
                            refine_burn_in=args.burn_in, refine_thin=args.thin,
                            refine_translations=args.max_shift != 0, max_shift_in_angstroms=args.max_shift or None,
                            adaptive_stopping=not args.fixed_schedule, refine_stop_window=args.stop_window,
                            refine_stop_standard_errors=args.stop_tolerance,
                            initial_stop_tolerance_in_degrees=args.rotation_tolerance,
                            screen_cycles=args.screen_cycles, restarts_kept=args.keep_restarts,
                            restart_agreement_in_degrees=args.restart_agreement,
                            final_map=args.final_map.replace("-", "_"))


def parse_temperatures(text, gaussian: bool) -> tuple[float, ...]:
    """--temperatures "1,2,4" as a checked ladder (InputError naming the option otherwise)."""
    from cryogmm.samplers.tempering import check_ladder

    if isinstance(text, tuple):  # already parsed (a settings record being re-read)
        return text
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise InputError(f"--temperatures {text}: not a comma-separated list of numbers, e.g. 1,2,4") from None
    try:
        ladder = check_ladder(values)
    except ValueError as exc:
        raise InputError(f"--temperatures {text}: {exc}") from None
    if len(ladder) > 1 and not gaussian:
        raise InputError("--temperatures: replica exchange is implemented for --noise-model gaussian only")
    return ladder


def _gaussian_settings(args: argparse.Namespace):
    """--noise-model gaussian: the options that apply to it (the count options are the Poisson model's)."""
    from cryogmm.pipelines.abinitio_gaussian import GaussianAbinitioSettings

    if args.dask_scheduler:
        raise InputError("--dask-scheduler: the gaussian noise model runs its restarts in this process; leave it out")
    return GaussianAbinitioSettings(symmetry=args.symmetry, n_restarts=args.restarts,
                                    n_components_initial=args.components_initial, initial_box=args.initial_box,
                                    n_rotations=args.rotations, n_cycles=args.cycles, n_components=args.components,
                                    refine_steps=args.refine_steps, refine_burn_in=args.burn_in,
                                    refine_thin=args.thin, refine_translations=args.max_shift != 0,
                                    temperatures=args.temperatures, ctf_initial_stage=args.ctf_initial_stage,
                                    max_shift_in_angstroms=args.max_shift or None)


# a lower bound of the memory per mixture component (a run with K = 200000 on 24-pixel images
# held 2.8 kB per component)
BYTES_PER_COMPONENT = 1000


def check_abinitio_memory(args: argparse.Namespace, n_images: int | None = None) -> None:
    """Refuse sizes no machine holds before the run starts (the components; with `n_images`, the
    global rotation step's table of n_images x --rotations log-likelihoods)."""
    from cryogmm.io.runs import check_memory

    for option, k in (("--components", args.components), ("--components-initial", args.components_initial)):
        check_memory(BYTES_PER_COMPONENT * float(k), f"{option} {k}", f"{k} components")
    if n_images is not None:
        check_memory(8.0 * n_images * args.rotations, f"--rotations {args.rotations}",
                     f"{n_images} images x {args.rotations} rotations")


def _dask_map(address: str):
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise InputError("--dask-scheduler: dask.distributed is not installed; pip install 'dask[distributed]'") from exc
    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--dask-scheduler {address}: cannot connect ({exc}); check the address") from exc

    def map_restarts(function, indices):
        futures = client.map(function, indices, pure=False)
        return client.gather(futures)

    return map_restarts


def main(args: argparse.Namespace) -> int:
    from cryogmm.pipelines.workers import WorkerPool

    # the restarts' processes start first and get ready (half a second each) while this one
    # imports, checks and reads; bad input ends them again
    jobs = args.jobs or min(os.cpu_count() or 1, args.restarts)
    local_restarts = args.noise_model == "poisson" and not args.dask_scheduler and args.restarts > 1
    with WorkerPool(min(jobs, args.restarts)) if local_restarts and jobs > 1 else contextlib.nullcontext() as pool:
        return _main(args, jobs, pool)


def _main(args: argparse.Namespace, jobs: int, pool) -> int:
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.cli.report import write_run_report
    from cryogmm.geometry.symmetry import canonical_symmetry_name
    from cryogmm.io.checkpoints import CheckpointFolder, check_resume, checkpoint_dir_for
    from cryogmm.io.images import read_input_images
    from cryogmm.io.runs import RunFolder
    from cryogmm.pipelines.abinitio import refuse_negative_images, run_abinitio, settings_dict
    from cryogmm.preprocess.normalise import clip_negatives, negative_part

    setup_logging(verbose=args.verbose)
    try:
        canonical_symmetry_name(args.symmetry)
        settings = build_settings(args)
        if args.prepare and args.clip_negatives:
            raise InputError("--prepare and --clip-negatives: choose one (--prepare masks and centres as well)")
        checkpoints = CheckpointFolder(checkpoint_dir_for(args.output))
        check_resume(checkpoints, args.output, args.resume, args.force)  # before the (slow) preparation
        run = RunFolder(args.output, force=args.force or args.resume)
        prepared = prepare_input(args.images, args.pixel_size) if args.prepare else None
        data = prepared.data if prepared else read_input_images(args.images, args.pixel_size)
        images = data.images
        n_negative, share = negative_part(images)
        clipped_note = None
        if n_negative and (args.noise_model == "poisson" or args.clip_negatives):
            if not args.clip_negatives:
                refuse_negative_images(images, str(args.images), CLI_REMEDY)
            images = clip_negatives(images)
            clipped_note = {"negative_pixels": n_negative, "negative_share_of_mass": share}
        check_evaluation_inputs(args, images.shape, data.pixel_size_in_angstroms)
        check_abinitio_memory(args, images.shape[0])
        ctf = read_model_ctf(args, images.shape[0]) if args.ctf else None
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        record = {"images": str(args.images), "noise_model": args.noise_model, "ctf": args.ctf, "seed": seed, "pixel_size_in_angstroms": data.pixel_size_in_angstroms,
                  "n_images": int(images.shape[0]), "box": int(images.shape[-1]), "clip_negatives": args.clip_negatives,
                  "prepare": prepared.notes if prepared else None,
                  **settings_dict(settings)}
        checkpoints.start(record, resume=args.resume)
        map_restarts = _dask_map(args.dask_scheduler) if args.dask_scheduler else None
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %d images of %d px at %.4g Å/px; seed %d", args.images, images.shape[0], images.shape[-1],
                     data.pixel_size_in_angstroms, seed)
            if prepared:
                for note in prepared.notes:
                    log.info("prepare: %s", note)
                prepared.write(folder)
            if clipped_note:
                log.info("%d negative pixels (%.1f%% of the absolute mass): background subtracted and negatives set "
                         "to zero (--clip-negatives)", n_negative, 100 * share)
            progress = not args.quiet and sys.stderr.isatty()
            # the outputs' modules (matplotlib: 0.3 s) load while this process waits for the restarts
            threading.Thread(target=_import_output_modules, daemon=True).start()
            try:
                if args.noise_model == "gaussian":
                    from cryogmm.pipelines.abinitio_gaussian import run_gaussian_abinitio

                    result = run_gaussian_abinitio(images, data.pixel_size_in_angstroms, settings, seed,
                                                   checkpoint=checkpoints, progress=progress,
                                                   threads=args.jobs or 1,  # 2 threads: 4.4x slower (Pol II)
                                                   ctf=ctf)
                else:
                    result = run_abinitio(images, data.pixel_size_in_angstroms, settings, seed, jobs=jobs,
                                          map_restarts=map_restarts, checkpoint=checkpoints, progress=progress,
                                          pool=pool)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(f"the checkpoints in {checkpoints.path} are kept: run the same command "
                                        "with --resume to continue") from None
            summary = write_outputs(folder, args, data, images, result, seed, record, clipped_note,
                                    prepared.shifts_in_angstroms if prepared else None)
            log.info("best restart %d of %d; sigma %.2f Å; %d samples averaged; %.1f s in all",
                     result.best_restart + 1, settings.n_restarts, result.mixture.sigma_in_angstroms,
                     result.n_samples, result.timings["total_seconds"])
            ccs = summary["projection_cross_correlations"]
            log.info("inputs against the projections of the result: cross-correlation median %.4f, lowest %.4f "
                     "(image %d)", float(np.median(ccs)), min(ccs), int(np.argmin(ccs)) + 1)
            for key in ("fsc_0.5_in_angstroms", "fsc_0.143_in_angstroms", "cross_correlation"):
                if key in summary.get("reference", {}):
                    log.info("against %s: %s = %s", args.reference, key, summary["reference"][key])
            if "rotation_errors" in summary:
                errors = summary["rotation_errors"]
                log.info("rotation errors against %s: final %s; chosen restart %s", args.true_poses,
                         errors["refinement"], errors["best_restart"])
            write_run_report(folder, args)
            log.info("wrote %s", args.output)
        checkpoints.remove()
    finally:
        close_logging()
    return 0


def _import_output_modules() -> None:
    import importlib

    for name in ("cryogmm.io.results", "cryogmm.report.abinitio", "cryogmm.report.html", "cryogmm.report.maps",
                 "cryogmm.report.render", "cryogmm.metrics.alignment"):
        importlib.import_module(name)


CLI_REMEDY = ("pass --prepare to mask, centre and clip them (deconvolving particles with CTFs first), or "
              "--clip-negatives only to subtract each image's background and set negatives to zero")


def read_model_ctf(args, n_images: int):
    """--ctf: the CTF of every input image from the STAR file's columns; one clear refusal otherwise."""
    from cryogmm.io.star import ctf_parameters, read_particles

    if Path(args.images).suffix.lower() != ".star":
        raise InputError(f"--ctf {args.images}: a bare image stack has no CTF; give the STAR file that lists the "
                         "images with their rlnDefocusU/V/Angle columns")
    ctf = ctf_parameters(read_particles(args.images))
    if ctf is None:
        raise InputError(f"--ctf {args.images}: the STAR file has no CTF columns (rlnDefocusU, rlnDefocusV, "
                         "rlnDefocusAngle); add them or leave out --ctf")
    if len(ctf) != n_images:
        raise InputError(f"--ctf {args.images}: {len(ctf)} CTFs for {n_images} images")
    return ctf


def check_evaluation_inputs(args, shape: tuple, pixel: float) -> None:
    """Refuse a --reference or --true-poses that cannot be compared, before the run starts."""
    from cryogmm.io.mrc import read_map
    from cryogmm.io.star import columns_to_poses, read_particles

    if args.reference is not None:
        reference = read_map(args.reference)
        if reference.data.shape != (shape[-1],) * 3 or abs(reference.voxel_size_in_angstroms - pixel) > 1e-3 * pixel:
            raise InputError(f"--reference {args.reference}: box {reference.data.shape[0]} at "
                             f"{reference.voxel_size_in_angstroms:g} Å differs from the images' {shape[-1]} at "
                             f"{pixel:g} Å; resample it to the images' box and pixel size")
    if args.true_poses is not None:
        truth, _ = columns_to_poses(read_particles(args.true_poses).particles)
        if truth.shape[0] != shape[0]:
            raise InputError(f"--true-poses {args.true_poses}: {truth.shape[0]} poses for {shape[0]} images")


def write_outputs(folder: Path, args, data, images: np.ndarray, result, seed: int, record: dict,
                  clipped_note: dict | None, centring_shifts: np.ndarray | None = None) -> dict:
    """Everything the run folder holds besides run.log. `centring_shifts` (P, 2) Å: where the
    particle centres lie in the images `data.names` name relative to `images` (--prepare)."""
    import pandas as pd

    from cryogmm.geometry.so3 import matrix_to_euler
    from cryogmm.grid import Grid
    from cryogmm.io.images import optics_values
    from cryogmm.io.results import abinitio_traces, abinitio_volume, star_optics, write_abinitio_results
    from cryogmm.io.runs import write_json, write_settings
    from cryogmm.io.star import poses_to_columns, write_particles
    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.mixture import evaluate, project
    from cryogmm.report.abinitio import plot_projections, plot_restarts
    from cryogmm.report.maps import plot_central_slices

    def final(value):
        """A path into the temporary run `folder` as it will be once the run is complete."""
        if not isinstance(value, Path):
            return value
        try:
            return Path(args.output) / value.relative_to(folder)
        except ValueError:
            return value

    settings = result.settings
    pixel = data.pixel_size_in_angstroms
    n = images.shape[-1]
    volume = abinitio_volume(result, images, pixel)
    extra_optics = optics_values(data.path)
    write_abinitio_results(folder, result, images, pixel, data.names, optics=extra_optics,
                           centring_shifts_in_angstroms=centring_shifts)
    # each restart's rotations at the end of the initial stage (alternative solutions, diagnostics)
    (folder / "restarts").mkdir()
    for r in result.restarts:
        table = pd.DataFrame({"rlnImageName": data.names, **poses_to_columns(r.rotations, centring_shifts),
                              "rlnOpticsGroup": 1})
        write_particles(folder / "restarts" / f"restart_{r.index + 1}.star", table, star_optics(pixel, n, extra_optics))
    grid2 = Grid.centered((n, n), pixel)
    projections = np.stack([evaluate(project(result.full_mixture, r, t), grid2)
                            for r, t in zip(result.rotations, result.translations_in_angstroms)])
    compared = images
    if data.counts:  # a sparse count image correlates poorly with anything smooth: smooth it alike
        from scipy import ndimage

        sigma_in_pixels = result.mixture.sigma_in_angstroms / pixel
        compared = np.stack([ndimage.gaussian_filter(image, sigma_in_pixels) for image in images])
    plot_projections(images, projections, folder / "projections.png", pixel_size_in_angstroms=pixel,
                     angles_in_degrees=np.column_stack(matrix_to_euler(result.rotations)),
                     title=f"{Path(args.images).name}: inputs (top) and projections of the result (bottom)")
    plot_central_slices(volume, pixel, folder / "map_slices.png",
                        title=f"map.mrc from {Path(args.images).name}: central slices (symmetry {settings.symmetry})")
    plot_restarts([r.trace for r in result.restarts], result.best_restart, result.refine_trace,
                  folder / "restarts.png",
                  refine_burn_in=getattr(result, "sampling_start", None)
                  or settings.refine_mixture_steps + 1 + settings.refine_burn_in,
                  title=f"{Path(args.images).name}: {len(result.restarts)} restarts, symmetry {settings.symmetry}")
    summary = {
        "seed": seed, "noise_model": getattr(result, "noise_model", "poisson"),
        "images": str(final(args.images)), "n_images": int(images.shape[0]), "box": n,
        "pixel_size_in_angstroms": pixel, "symmetry": settings.symmetry,
        "restart_log_posteriors": [r.log_posterior for r in result.restarts],
        "restart_seconds": [r.seconds for r in result.restarts],
        "chosen_restart": result.best_restart + 1,
        "final_log_posterior": result.log_posterior,
        "sigma_in_angstroms": result.mixture.sigma_in_angstroms,
        "n_components": settings.n_components, "n_samples_averaged": result.n_samples,
        "timings_in_seconds": result.timings,
        # which rule ended each stage, at which step (cycle for restarts; max_steps: the schedule)
        "stopping": getattr(result, "stopping", {}),
        # which map map.mrc is (posterior mean or Fourier inversion) and the estimates behind it
        "final_map": (result.final_map.figures if getattr(result, "final_map", None) is not None
                      else {"map_mrc": "posterior_mean", "rule": "posterior_mean (gaussian noise model)"}),
        # how well the model explains each input: cross-correlation (Eqn. 3.3) of the image with
        # the projection of the best sample along the image's estimated pose
        "projection_cross_correlations": [cross_correlation(a, b) for a, b in zip(compared, projections)],
    }
    if getattr(result, "sampler_report", None):  # acceptance rates and step sizes (gaussian model)
        summary["samplers"] = result.sampler_report
    if data.counts:
        summary["projection_cross_correlations_note"] = (
            "point clouds: each binned input smoothed by a Gaussian of the components' sigma before comparing")
    if clipped_note:
        summary["negative_values"] = dict(clipped_note, action="background subtracted, negatives set to zero")
    if record.get("prepare"):
        summary["prepare"] = record["prepare"]
    if args.reference is not None:
        summary["reference"] = compare_with_reference(volume, pixel, args.reference, folder, final(args.reference))
    if args.true_poses is not None:
        summary["rotation_errors"] = compare_with_true_poses(result, args.true_poses)
    write_json(folder / "summary.json", summary)
    write_json(folder / "traces.json", abinitio_traces(result))
    write_settings(folder, "abinitio", {k: final(v) for k, v in vars(args).items() if not k.startswith("_")}
                   | {"resolved": record}, seed)
    return summary


@dataclass
class PreparedInput:
    """Input made fit for the Poisson model by `prepare_input`: the images (as InputImages, with
    the input's image names, or named after DIR/prepared.mrcs for classes deconvolved from
    particles, which have no input image), what was done (notes), the figures to write, and
    `shifts_in_angstroms` (P, 2): where the particle centre lies in each named image relative to
    the centred image used (None: no shift between them)."""

    data: object
    notes: list
    before: np.ndarray | None = None
    prepared: object = None
    deconvolved: object = None
    shifts_in_angstroms: np.ndarray | None = None

    def write(self, folder: Path) -> None:
        from cryogmm.io.mrc import write_stack
        from cryogmm.report.abinitio import plot_projections
        from cryogmm.report.prepare import plot_prepared

        if self.before is None:
            return
        write_stack(folder / "prepared.mrcs", self.data.images.astype(np.float32), self.data.pixel_size_in_angstroms)
        if self.deconvolved is not None:
            out = self.deconvolved
            plot_projections(out.averages, out.images, folder / "deconvolved.png",
                             labels=[f"class {c}" for c in out.class_ids], row_names=("average", "deconvolved"),
                             title="class averages (top) and deconvolved (bottom)")
        if self.prepared is not None:
            plot_prepared(self.before, self.prepared, folder / "prepared.png",
                          title="inputs with mask outline and centre of mass, masks, prepared images")


def _needs_preparation(images: np.ndarray) -> str | None:
    """Why the images are not counts as they are: negative values, or a background around the
    particle (the outer ring's median above 1% of the brightest pixel); None if they are fine."""
    from cryogmm.preprocess.normalise import background_levels, negative_part

    n_negative, share = negative_part(images)
    if n_negative:
        return f"{n_negative} negative pixels ({100 * share:.1f}% of the absolute mass)"
    level = background_levels(images) / images.reshape(images.shape[0], -1).max(1)
    if np.any(level > 0.01):
        return f"a background of up to {100 * level.max():.1f}% of the peak around the particles"
    return None


def prepare_input(path: Path, pixel_size_in_angstroms: float | None) -> PreparedInput:
    """What `--prepare` does: particles with classes and CTFs are deconvolved per class
    (multi-frame, 7 defocus groups), class averages with CTFs single-frame; then images with
    negative values or a background are masked, centred and clipped (`prepare_images`). Images
    that are already counts-like are used as they are."""
    from cryogmm.cli.deconvolve import run_deconvolution
    from cryogmm.io.images import MIN_IMAGES, InputImages, is_model_star, read_input_images
    from cryogmm.io.star import ctf_parameters, format_image_name, read_particles
    from cryogmm.pipelines.prepare import prepare_images

    notes, deconvolved = [], None
    if (path.suffix.lower() == ".star" and path.is_file() and not is_model_star(path)
            and ctf_parameters(read_particles(path)) is not None):
        deconvolved, pixel, mode = run_deconvolution(path, pixel_size_in_angstroms=pixel_size_in_angstroms)
        notes += [f"{path}: {mode} with CTFs: deconvolved"] + deconvolved.notes
        images = deconvolved.images
        if images.shape[0] < MIN_IMAGES:
            raise InputError(f"{path}: {images.shape[0]} classes after deconvolution; at least {MIN_IMAGES} are needed")
    else:
        data = read_input_images(path, pixel_size_in_angstroms)
        images, pixel = data.images, data.pixel_size_in_angstroms
        if data.counts:
            return PreparedInput(data, [f"{path}: point clouds binned to counts; nothing to prepare"])
    reason = _needs_preparation(images)
    if reason is None and deconvolved is None:
        return PreparedInput(data, [f"{path}: non-negative with a zero background; used as they are"])
    # deconvolved images keep a faint positive haze around the particle (thesis 4.1.2): mask it too
    notes.append(f"masking and centring: {reason or 'the deconvolved images have a faint background'}")
    prepared = prepare_images(images, pixel, source=str(path))
    notes += list(prepared.notes)
    if deconvolved is None:  # orientations.star names the input images; its origins add the centring
        names, shifts = data.names, prepared.shifts_in_angstroms
    else:  # classes from particles: the deconvolved, centred images in DIR/prepared.mrcs are the inputs
        names, shifts = [format_image_name(i, "prepared.mrcs") for i in range(prepared.images.shape[0])], None
    data = InputImages(np.asarray(prepared.images, dtype=np.float64), float(prepared.pixel_size_in_angstroms),
                       names, path)
    return PreparedInput(data, notes, images, prepared, deconvolved, shifts)


def compare_with_reference(volume: np.ndarray, pixel: float, reference_path: Path, folder: Path,
                           recorded_path: Path | None = None) -> dict:
    """The aligned comparison (`pipelines.compare.compare_with_reference`) with the reference file,
    fsc.png written; the reference is recorded as `recorded_path` (its final place) if given."""
    from cryogmm.io.mrc import read_map
    from cryogmm.pipelines.compare import compare_with_reference as compare
    from cryogmm.report.fsc import plot_fsc

    comparison = compare(volume, read_map(reference_path).data, pixel, align=True)  # box and pixel checked before
    plot_fsc({f"map.mrc vs {reference_path.name} (aligned)": comparison.curve}, folder / "fsc.png")
    return {"path": str(recorded_path or reference_path), **comparison.figures}


def compare_with_true_poses(result, star_path: Path) -> dict:
    """Rotation errors of the chosen restart, the refinement and every restart (Eqns. 3.12-3.18)."""
    from cryogmm.geometry.symmetry import symmetry_operators
    from cryogmm.io.star import columns_to_poses, read_particles
    from cryogmm.metrics.alignment import rotation_errors

    truth, _ = columns_to_poses(read_particles(star_path).particles)  # count checked before the run
    ops = symmetry_operators(result.settings.symmetry)

    def describe(rotations):
        errors = rotation_errors(rotations, truth, ops)
        e = errors.errors_in_degrees
        return {"within_5_degrees": int(errors.n_within(5.0)), "median_degrees": float(np.median(e)),
                "max_degrees": float(e.max()), "mirrored": bool(errors.mirrored)}

    restarts = [describe(r.rotations) for r in result.restarts]
    return {"refinement": describe(result.rotations), "best_restart": restarts[result.best_restart],
            "restarts": restarts}
