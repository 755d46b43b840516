"""2D classification of particle images: MAP-EM in Fourier space (as RELION's Class2D).

Each particle's class, in-plane angle (every --psi-step degrees) and shift (a 1-pixel grid within
--offset-range of its centre) are integrated out with its CTF and a Gaussian noise model whose power
is estimated per resolution shell; the K class images are CTF-free (Wiener-filtered averages), and
their signal power per shell, times --tau2-fudge, is the prior (cryogmm.pipelines.classify2d). The
classes start from random subsets of the particles at random angles (--seed); E-steps are limited
to the best class's resolution plus a margin; in the first half of the run a class that loses its
particles restarts from half of the largest class.

PARTICLES.star needs the CTF columns (rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast) and a pixel size, unless --no-ctf (particles without a CTF); particles are
bright (RELION's convention) unless --polarity dark.

Outputs in DIR (RELION's layout: `cryogmm abinitio DIR/run_model.star`, `cryogmm deconvolve
DIR/run_data.star` and RELION read them): run_classes.mrcs (the K class averages), run_model.star
(class distribution, accuracy of rotations and translations, estimated resolution per class),
run_data.star (the input particles with rlnClassNumber, rlnAnglePsi, rlnOriginX/YAngst of each
one's most probable pose, rlnMaxValueProbDistribution, rlnNrOfSignificantSamples; their 3D angles
dropped, image names relative to DIR), classes.png (the gallery, largest class first),
summary.json (per-iteration resolution, class changes, times), settings.json, run.log.
Checkpoints after every iteration in .DIR.checkpoint/; --resume continues.

Example:
    cryogmm simulate-images 1wcm_polII.pdb.gz --number 3000 --box 64 --pixel-size 3 --resolution 6 \\
        --snr 0.1 --max-shift 6 --defocus-range 1.0 2.5 --seed 1 --output polii
    cryogmm classify2d polii/particles.star --classes 25 --particle-diameter 170 --seed 1 --output polii_2d
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
from cryogmm.pipelines.select_classes import DEFAULT_RULES

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, metavar="PARTICLES.star", help="RELION particle STAR file with CTF columns")
    parser.add_argument("--classes", type=int, required=True, metavar="K", help="number of classes")
    parser.add_argument("--iterations", type=int, default=25, help="EM iterations (default 25)")
    parser.add_argument("--tau2-fudge", type=float, default=2.0, help="regularisation factor T (default 2)")
    parser.add_argument("--particle-diameter", type=float, default=None, metavar="Å",
                        help="diameter of the soft disc on particles and classes (default: 0.9 of the box)")
    parser.add_argument("--psi-step", type=float, default=6.0, metavar="DEGREES",
                        help="in-plane angular step (default 6)")
    parser.add_argument("--offset-range", type=float, default=None, metavar="Å",
                        help="shifts searched around each particle's centre (default 3 pixels)")
    parser.add_argument("--initial-resolution", type=float, default=30.0, metavar="Å",
                        help="resolution of the first E-step (default 30 Å)")
    parser.add_argument("--polarity", choices=("bright", "dark"), default="bright",
                        help="particles bright on a dark background (RELION's convention, default) or dark")
    from cryogmm.cli.refine import add_ctf_args

    add_ctf_args(parser)
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (overrides the STAR file)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the image stacks (default: next to STAR)")
    parser.add_argument("--batch-size", type=int, default=200, help="particles per E-step task (default 200)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="E-step tasks run in this many local processes (default 1: in this process)")
    parser.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                        help="run the E-step tasks on an existing Dask cluster (needs dask.distributed)")
    parser.add_argument("--select", default="default", metavar="RULES",
                        help="class selection rules, comma-separated QUANTITY OP VALUE with quantities size, fraction, "
                             "resolution (Å) and rank; a value may be a multiple of the mean class size (0.2xmean) "
                             "or of the best class resolution (2xbest); 'none' keeps every class (default: "
                             f"{DEFAULT_RULES}); the kept classes and their particles go to selected_*.star")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def build_settings(args: argparse.Namespace, pixel: float, box: int, n_particles: int):
    from cryogmm.pipelines.classify2d import Classify2DSettings

    for option, value in (("--tau2-fudge", args.tau2_fudge), ("--particle-diameter", args.particle_diameter),
                          ("--psi-step", args.psi_step), ("--offset-range", args.offset_range),
                          ("--initial-resolution", args.initial_resolution)):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise InputError(f"{option} {value}: must be a positive number")
    if args.classes < 1 or args.classes > n_particles:
        raise InputError(f"--classes {args.classes}: must be between 1 and the number of particles ({n_particles})")
    if args.classes > 1000:
        raise InputError(f"--classes {args.classes}: at most 1000")
    if not 1 <= args.iterations <= 200:
        raise InputError(f"--iterations {args.iterations}: must be between 1 and 200")
    if not 0.5 <= args.psi_step <= 90:
        raise InputError(f"--psi-step {args.psi_step}: must be between 0.5 and 90 degrees")
    if args.particle_diameter is not None and args.particle_diameter > box * pixel:
        raise InputError(f"--particle-diameter {args.particle_diameter:g} Å: larger than the box ({box} px of "
                         f"{pixel:g} Å = {box * pixel:g} Å); give the particle's diameter")
    if args.batch_size < 1 or args.jobs < 1:
        raise InputError("--batch-size and --jobs must be at least 1")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")
    if args.resume and args.force:
        raise InputError("--resume and --force: choose one (--force starts over)")
    offset = 3.0 if args.offset_range is None else args.offset_range / pixel
    if offset > 50:
        raise InputError(f"--offset-range {args.offset_range}: at most 50 pixels ({50 * pixel:g} Å)")
    return Classify2DSettings(n_classes=args.classes, max_iterations=args.iterations, tau2_fudge=args.tau2_fudge,
                              particle_diameter_in_angstroms=args.particle_diameter,
                              psi_step_in_degrees=args.psi_step, offset_range_in_pixels=offset,
                              initial_resolution_in_angstroms=args.initial_resolution,
                              polarity=-1 if args.polarity == "bright" else 1, batch_size=args.batch_size)


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.cli.refine import _executor, close_executor, read_ctf_particles
    from cryogmm.io.checkpoints import CheckpointFolder, check_resume, checkpoint_dir_for
    from cryogmm.io.runs import RunFolder
    from cryogmm.pipelines import classify2d as c2d
    from cryogmm.pipelines.refine import ParticleData
    from cryogmm.pipelines.select_classes import parse_rules

    setup_logging(verbose=args.verbose)
    executor = None
    try:
        checkpoints = CheckpointFolder(checkpoint_dir_for(args.output))
        check_resume(checkpoints, args.output, args.resume, args.force)
        rules = parse_rules(args.select)
        table, ctf, reader, pixel = read_ctf_particles(args, "classify2d")
        n_particles, box = len(reader), reader.box
        settings = build_settings(args, pixel, box, n_particles)
        reader.check_finite(args.star)
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        record = {"star": str(args.star), "seed": seed, "n_particles": n_particles, "box": box,
                  "pixel_size_in_angstroms": pixel, **c2d.settings_dict(settings),
                  "select": [str(r) for r in rules]}
        executor = _executor(args)
        checkpoints.start(record, resume=args.resume)
        run = RunFolder(args.output, force=args.force or args.resume)
        state = None
        if args.resume:
            saved = checkpoints.load("state")
            state = c2d.state_from_arrays(saved) if saved is not None else None
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %d particles of %d px at %.4g Å/px; %d classes; seed %d%s", args.star, n_particles, box,
                     pixel, settings.n_classes, seed,
                     f"; resumed after iteration {state.iteration}" if state is not None else "")
            data = ParticleData(reader, ctf, box, pixel, n_particles)

            def on_iteration(r):
                log.info("iteration %d (E-step to %.1f Å): best class %s; %s of the particles changed class, median "
                         "in-plane change %s°; %d classes hold particles; %.1f significant poses per particle%s; %.1f s",
                         r["iteration"], r["e_step_resolution_in_angstroms"],
                         "-" if r["best_class_resolution_in_angstroms"] is None
                         else f"{r['best_class_resolution_in_angstroms']:.1f} Å",
                         "-" if r["fraction_changing_class"] is None else f"{100 * r['fraction_changing_class']:.1f}%",
                         "-" if r["median_psi_change_in_degrees"] is None else f"{r['median_psi_change_in_degrees']:.3g}",
                         r["non_empty_classes"], r["mean_significant_poses"],
                         "".join(f"; class {c['class']} restarted from class {c['from_class']}"
                                 for c in r["restarted_classes"]), r["seconds"])

            def save(state):
                checkpoints.save("state", c2d.state_to_arrays(state))

            progress = not args.quiet and sys.stderr.isatty()
            try:
                result = c2d.classify2d(data, settings, seed=seed, executor=executor, progress=progress, state=state,
                                        checkpoint=save, on_iteration=on_iteration)
            except KeyboardInterrupt:
                done = checkpoints.load("state")
                where = f"after iteration {int(c2d.state_from_arrays(done).iteration)}" if done else "before iteration 1"
                raise KeyboardInterrupt(f"the checkpoints in {checkpoints.path} ({where}) are kept: run the same "
                                        "command with --resume to continue") from None
            write_outputs(folder, args, table, result, settings, pixel, seed, record, rules)
            write_run_report(folder, args)
            log.info("wrote %s", args.output)
        checkpoints.remove()
    finally:
        close_executor(executor)
        close_logging()
    return 0


def write_outputs(folder: Path, args, table, result, settings, pixel: float, seed: int, record: dict,
                  rules=()) -> dict:
    from cryogmm.io.classes import write_classification, write_selected_classes
    from cryogmm.pipelines.select_classes import select_classes
    from cryogmm.io.runs import write_json, write_settings
    from cryogmm.report.classify2d import plot_class_gallery

    start = time.perf_counter()
    state = result.state
    k = settings.n_classes
    members = np.bincount(state.class_index, minlength=k)
    accuracy_rot = np.array([np.nanmean(state.accuracy_psi_in_degrees[state.class_index == c]) if members[c]
                             else np.nan for c in range(k)])
    accuracy_shift = np.array([np.nanmean(state.accuracy_shift_in_pixels[state.class_index == c]) * pixel
                               if members[c] else np.nan for c in range(k)])
    best = np.min(state.class_resolution_in_angstroms) if k else np.inf
    psi = (state.psi_in_degrees + 180.0) % 360.0 - 180.0
    common = dict(resolution_in_angstroms=state.class_resolution_in_angstroms,
                  accuracy_rotations_in_degrees=accuracy_rot, accuracy_translations_in_angstroms=accuracy_shift,
                  current_resolution_in_angstroms=best, pixel_size_in_angstroms=pixel, tau2_fudge=settings.tau2_fudge,
                  data_dir=args.data_dir)
    particle_columns = {"rlnClassNumber": state.class_index + 1, "rlnAnglePsi": psi,
                        "rlnOriginXAngst": -state.shifts_in_pixels[:, 0] * pixel,
                        "rlnOriginYAngst": -state.shifts_in_pixels[:, 1] * pixel,
                        "rlnMaxValueProbDistribution": state.max_posterior,
                        "rlnNrOfSignificantSamples": state.n_significant}
    write_classification(folder, table, classes=state.classes, distribution=state.class_fractions,
                         particle_columns=particle_columns, **common)
    selection = select_classes(members, state.class_resolution_in_angstroms, rules)
    if selection.empty:
        log.warning("warning: no class passes --select %s: selected_*.star not written; the classification is "
                    "complete (see classes.png and summary.json): run again with looser --select rules or --select none",
                    ",".join(map(str, rules)))
    else:
        write_selected_classes(folder, table, selection.kept, state.class_index, classes=state.classes,
                               distribution=state.class_fractions, particle_columns=particle_columns, **common)
    order = plot_class_gallery(state.classes, state.class_fractions, state.class_resolution_in_angstroms, pixel,
                               folder / "classes.png", kept=selection.kept,
                               title=f"{args.star.name}: {k} classes ({int(selection.kept.sum())} selected: "
                                     f"{', '.join(map(str, rules)) or 'all'})")
    timings = dict(result.timings_in_seconds, outputs=time.perf_counter() - start)
    summary = {"star": str(args.star), "seed": seed, "n_particles": int(state.class_index.size),
               "box": int(state.classes.shape[-1]), "pixel_size_in_angstroms": pixel, "n_classes": k,
               "class_sizes": members.tolist(), "class_distribution": state.class_fractions.tolist(),
               "class_resolution_in_angstroms": [None if not np.isfinite(r) else float(r)
                                                 for r in state.class_resolution_in_angstroms],
               "classes_by_size": order,
               "selection": selection.as_dict(members, state.class_resolution_in_angstroms),
               "n_iterations": state.iteration, "iterations": state.history,
               "timings_in_seconds": timings}
    write_json(folder / "summary.json", summary)
    write_settings(folder, "classify2d", {**{k_: v for k_, v in vars(args).items() if not k_.startswith("_")},
                                          **record}, seed)
    log.info("selection (%s): %d of %d classes kept with %d of %d particles (selected_data.star, "
             "selected_model.star)%s", ", ".join(map(str, rules)) or "none", int(selection.kept.sum()), k,
             summary["selection"]["n_kept_particles"], int(members.sum()),
             "".join(f"; class {c + 1} dropped ({', '.join(selection.reasons[c])})"
                     for c in np.flatnonzero(~selection.kept)))
    log.info("%d classes hold particles (largest %d particles); best class %s; %d iterations; %.1f s",
             int(np.count_nonzero(members)), int(members.max()),
             "-" if not np.isfinite(best) else f"{best:.1f} Å", state.iteration, timings["total"])
    return summary
