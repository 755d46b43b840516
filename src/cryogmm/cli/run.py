"""From particles to a refined map in one command: classify2d -> selection -> abinitio -> refine.

The stages are the commands of the same names, each run into its own folder of DIR with its own
outputs, logs and checkpoints:
1. DIR/1_classify2d: 2D classification of the particles into --classes K classes (MAP-EM with
   CTF, as RELION's Class2D), then class selection by --select rules (empty, small and blurry
   classes dropped); the kept classes' particles go to 1_classify2d/selected_data.star;
2. DIR/2_abinitio: `abinitio --prepare` on those particles: each kept class deconvolved from its
   particles (their CTFs and in-plane poses, over defocus groups; with --no-ctf the kept class
   averages as they are), masked and centred, then the Gaussian-mixture initial model and the
   classes' orientations by Gibbs sampling;
3. DIR/3_refine: `refine` of the selected particles from that initial model (low-passed to
   --initial-lowpass), gold-standard MAP-EM in Fourier space; DIR/3_refine/map.mrc is the result.
DIR/summary.json gathers every stage's figures (and, with --reference, the final map's FSC against
that map after alignment); DIR/run.log says what each stage did; DIR/settings.json records the
version, seed and every option. Each stage is resumable: after an interruption, the same command
with --resume skips the finished stages and continues the interrupted one from its checkpoints.

Example:
    cryogmm simulate-images 1wcm_polII.pdb.gz --number 3000 --box 64 --pixel-size 3 --resolution 6 \\
        --snr 0.1 --max-shift 6 --defocus-range 1.0 2.5 --seed 1 --output polii
    cryogmm run polii/particles.star --particle-diameter 170 --seed 1 --output polii_run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

from cryogmm.errors import InputError
from cryogmm.pipelines.select_classes import DEFAULT_RULES

log = logging.getLogger(__name__)

STAGES = ("1_classify2d", "2_abinitio", "3_refine")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, metavar="PARTICLES.star", help="RELION particle STAR file with CTF columns")
    parser.add_argument("--symmetry", default="C1", help="point group of the particle: C1, Cn, Dn, T, O, I (default C1)")
    parser.add_argument("--classes", type=int, default=None, metavar="K",
                        help="2D classes (default: one per 120 particles, between 2 and 50)")
    parser.add_argument("--iterations-2d", type=int, default=25, help="2D classification iterations (default 25)")
    parser.add_argument("--select", default="default", metavar="RULES",
                        help=f"class selection rules, as classify2d's --select (default: {DEFAULT_RULES})")
    parser.add_argument("--particle-diameter", type=float, default=None, metavar="Å",
                        help="diameter of the soft masks of classify2d and refine (default: 0.9 of the box)")
    parser.add_argument("--restarts", type=int, default=4, help="abinitio's initial-stage restarts (default 4)")
    parser.add_argument("--initial-lowpass", type=float, default=40.0, metavar="Å",
                        help="refine starts from the initial model low-passed to this (default 40 Å)")
    parser.add_argument("--max-iterations", type=int, default=20, help="refine's iteration limit (default 20)")
    parser.add_argument("--polarity", choices=("bright", "dark"), default="bright",
                        help="particles bright on a dark background (RELION's convention, default) or dark")
    parser.add_argument("--no-ctf", action="store_true",
                        help="the particles have no CTF: classify2d and refine ignore CTF columns, and abinitio "
                             "starts from the selected class averages (masked and centred) instead of deconvolving")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (overrides the STAR file)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the image stacks (default: next to STAR)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local processes for the E-step tasks and the abinitio restarts (default: each "
                             "command's own: E-steps in this process, restarts on every core)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a map to compare the results with (e.g. a known structure): FSC after alignment")
    parser.add_argument("--seed", type=int, default=None, help="random seed of every stage (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: finished stages are kept, the interrupted one resumes")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def default_classes(n_particles: int) -> int:
    return int(min(50, max(2, round(n_particles / 120))))


def _settings_record(args: argparse.Namespace, seed: int, n_classes: int) -> dict:
    record = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("force", "resume", "quiet", "verbose", "command")}
    record.update(seed=seed, classes=n_classes)
    return json.loads(json.dumps(record, default=str))


def check_options(args: argparse.Namespace) -> None:
    """The run's own options, before any stage starts (each stage checks the ones it takes)."""
    from cryogmm.geometry.symmetry import canonical_symmetry_name
    from cryogmm.pipelines.select_classes import parse_rules

    if args.resume and args.force:
        raise InputError("--resume and --force: choose one (--force starts over)")
    parse_rules(args.select)
    try:
        canonical_symmetry_name(args.symmetry)
    except (ValueError, InputError) as err:
        raise InputError(f"--symmetry {args.symmetry}: {err}") from None
    for option, value in (("--iterations-2d", args.iterations_2d), ("--restarts", args.restarts),
                          ("--max-iterations", args.max_iterations), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise InputError(f"{option} {value}: must be at least 1")
    if args.classes is not None and args.classes < 1:
        raise InputError(f"--classes {args.classes}: must be at least 1")
    for option, value in (("--particle-diameter", args.particle_diameter), ("--initial-lowpass", args.initial_lowpass),
                          ("--pixel-size", args.pixel_size)):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise InputError(f"{option} {value}: must be a positive number")
    if args.reference is not None and not args.reference.is_file():
        raise InputError(f"--reference {args.reference}: no such file")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")


def _open_folder(args: argparse.Namespace, record: dict) -> None:
    """DIR for a new run (refusing an existing one without --force) or the interrupted run's DIR."""
    from cryogmm.io.checkpoints import checkpoint_dir_for
    from cryogmm.io.runs import check_output_dir, write_settings

    out = args.output
    settings_path = out / "settings.json"
    if args.resume:
        if not settings_path.is_file():
            raise InputError(f"--resume: {out} holds no run of `cryogmm run` (no settings.json); run without --resume")
        saved = json.loads(settings_path.read_text()).get("settings", {})
        changed = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k)
                         and not (k == "seed" and args.seed is None))
        if changed:
            raise InputError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from the "
                             f"interrupted run's ({out}/settings.json); use the same options, or start over with --force")
        if (out / "summary.json").is_file():
            raise InputError(f"--resume: {out} is a finished run; nothing to resume (--force runs it again)")
        return
    check_output_dir(out, args.force)
    if out.exists():
        shutil.rmtree(out)
        for stage in STAGES:
            shutil.rmtree(checkpoint_dir_for(out / stage), ignore_errors=True)
    out.mkdir(parents=True)
    write_settings(out, "run", record, record["seed"])


def _stage_argv(args: argparse.Namespace, stage: str, seed: int, n_classes: int) -> list[str]:
    out = args.output
    common = ["--seed", str(seed)] + (["--quiet"] if args.quiet else []) + (["--verbose"] if args.verbose else [])
    jobs = [] if args.jobs is None else ["--jobs", str(args.jobs)]
    diameter = [] if args.particle_diameter is None else ["--particle-diameter", str(args.particle_diameter)]
    if stage == "1_classify2d":
        argv = ["classify2d", str(args.star), "--classes", str(n_classes), "--iterations", str(args.iterations_2d),
                "--select", args.select, "--polarity", args.polarity, *jobs, *diameter]
        argv += [] if args.pixel_size is None else ["--pixel-size", str(args.pixel_size)]
        argv += [] if args.data_dir is None else ["--data-dir", str(args.data_dir)]
    elif stage == "2_abinitio":  # particles with CTFs are deconvolved class by class; CTF-free classes used as they are
        selected = "selected_model.star" if args.no_ctf else "selected_data.star"
        argv = ["abinitio", str(out / "1_classify2d" / selected), "--prepare", "--symmetry", args.symmetry,
                "--restarts", str(args.restarts), *jobs]
        argv += [] if args.reference is None else ["--reference", str(args.reference)]
    else:
        argv = ["refine", str(out / "1_classify2d" / "selected_data.star"), "--reference",
                str(out / "2_abinitio" / "map.mrc"), "--rescale", "--symmetry", args.symmetry, "--initial-lowpass",
                str(args.initial_lowpass), "--max-iterations", str(args.max_iterations), "--polarity", args.polarity,
                *jobs, *diameter]
    if args.no_ctf and stage != "2_abinitio":
        argv.append("--no-ctf")
    return argv + common + ["--output", str(out / stage)]


def _run_stage(args: argparse.Namespace, stage: str, seed: int, n_classes: int) -> dict:
    """Run one stage (skipped when finished, resumed from its checkpoints when interrupted)."""
    from cryogmm.cli import build_parser, close_logging, setup_logging
    from cryogmm.io.checkpoints import checkpoint_dir_for

    folder = args.output / stage
    if (folder / "summary.json").is_file():
        log.info("%s: finished before; kept", stage)
        return {"status": "kept from before", "seconds": 0.0}
    argv = _stage_argv(args, stage, seed, n_classes)
    resumed = (checkpoint_dir_for(folder) / "settings.json").is_file()
    if resumed:
        argv.append("--resume")
    elif folder.exists():  # a stage that never finished and left no checkpoint: start it again
        argv.append("--force")
    log.info("%s: cryogmm %s", stage, " ".join(argv))
    stage_args = build_parser().parse_args(argv)
    stage_args._command_line = ["cryogmm", *argv]  # recorded in the stage's report.html
    start = time.perf_counter()
    try:
        stage_args._module.main(stage_args)
    except KeyboardInterrupt as interrupt:
        raise KeyboardInterrupt(f"in stage {stage} ({interrupt or 'no checkpoint yet'}); run the same `cryogmm run` "
                                "command with --resume to continue") from None
    except InputError as err:
        raise InputError(f"stage {stage}: {err}") from None
    finally:
        close_logging()
        setup_logging(args.output / "run.log", verbose=args.verbose)
    seconds = time.perf_counter() - start
    log.info("%s: done in %.1f s", stage, seconds)
    return {"status": "resumed" if resumed else "ran", "seconds": seconds}


def _stage_figures(out: Path) -> dict:
    """The figures a user looks at first, from each stage's summary.json."""
    read = {stage: json.loads((out / stage / "summary.json").read_text()) for stage in STAGES}
    c2d, abi, ref = read["1_classify2d"], read["2_abinitio"], read["3_refine"]
    selection = c2d.get("selection", {})
    resolutions = [r for r in c2d.get("class_resolution_in_angstroms", []) if r is not None]
    figures = {
        "1_classify2d": {"n_particles": c2d.get("n_particles"), "n_classes": c2d.get("n_classes"),
                         "best_class_resolution_in_angstroms": min(resolutions) if resolutions else None,
                         "n_iterations": c2d.get("n_iterations"), "selection_rules": selection.get("rules"),
                         "kept_classes": selection.get("kept_classes"),
                         "n_kept_particles": selection.get("n_kept_particles")},
        "2_abinitio": {k: abi.get(k) for k in ("chosen_restart", "restart_log_posteriors", "sigma_in_angstroms",
                                                "reference", "preparation") if k in abi},
        "3_refine": {k: ref.get(k) for k in ("resolution_in_angstroms", "unmasked_resolution_in_angstroms",
                                              "bfactor_in_angstroms2", "n_iterations", "converged", "n_particles")},
    }
    return figures


def compare_final_map(out: Path, reference_path: Path) -> dict:
    """FSC of the refined (unsharpened) map against `reference_path` after alignment (rotation,
    shift and hand: the initial model fixes an arbitrary frame)."""
    from cryogmm.io.mrc import read_map
    from cryogmm.pipelines.compare import compare_with_reference
    from cryogmm.preprocess.resample import resample_map

    refined = read_map(out / "3_refine" / "map_unsharpened.mrc")
    reference = read_map(reference_path)
    pixel = refined.voxel_size_in_angstroms
    volume = reference.data
    if volume.shape != refined.data.shape or not math.isclose(reference.voxel_size_in_angstroms, pixel, rel_tol=1e-3):
        volume = resample_map(volume, reference.voxel_size_in_angstroms, pixel, refined.data.shape[0])
    figures = compare_with_reference(refined.data, volume, pixel, align=True).figures
    return {"path": str(reference_path), "map": "3_refine/map_unsharpened.mrc", **figures}


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.cli.refine import _angstroms
    from cryogmm.cli.report import write_run_report
    from cryogmm.io.runs import write_json
    from cryogmm.io.star import read_particles

    setup_logging(verbose=args.verbose)
    try:
        check_options(args)
        if not args.star.is_file():
            raise InputError(f"{args.star}: no such file; give the particles' STAR file")
        n_particles = len(read_particles(args.star).particles)
        n_classes = args.classes if args.classes is not None else default_classes(n_particles)
        if n_classes > n_particles:
            raise InputError(f"--classes {n_classes}: more than the {n_particles} particles of {args.star}")
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy % 2**32)
        if args.resume and args.seed is None and (args.output / "settings.json").is_file():
            seed = int(json.loads((args.output / "settings.json").read_text())["seed"])
        record = _settings_record(args, seed, n_classes)
        _open_folder(args, record)
        setup_logging(args.output / "run.log", verbose=args.verbose)
        log.info("%s: %d particles; %d classes; symmetry %s; seed %d%s", args.star, n_particles, n_classes,
                 args.symmetry, seed, "; resumed" if args.resume else "")
        start = time.perf_counter()
        stages = {}
        for stage in STAGES:
            stages[stage] = _run_stage(args, stage, seed, n_classes)
            if stage == "1_classify2d":
                _require_selected(args.output)
        figures = _stage_figures(args.output)
        summary = {"star": str(args.star), "seed": seed, "n_particles": n_particles, "symmetry": args.symmetry,
                   "n_classes": n_classes, "n_selected_classes": len(figures["1_classify2d"]["kept_classes"] or []),
                   "n_selected_particles": figures["1_classify2d"]["n_kept_particles"],
                   "resolution_in_angstroms": figures["3_refine"]["resolution_in_angstroms"],
                   "stages": {stage: {**stages[stage], "folder": stage} for stage in STAGES},
                   "figures": figures, "map": "3_refine/map.mrc",
                   "timings_in_seconds": {**{s: stages[s]["seconds"] for s in STAGES},
                                          "total": time.perf_counter() - start}}
        if args.reference is not None:
            summary["reference"] = compare_final_map(args.output, args.reference)
            log.info("final map vs %s (aligned%s): FSC 0.5 at %s, 0.143 at %s", args.reference,
                     ", mirrored" if summary["reference"]["mirrored"] else "",
                     _angstroms(summary["reference"]["fsc_0.5_in_angstroms"]),
                     _angstroms(summary["reference"]["fsc_0.143_in_angstroms"]))
        write_json(args.output / "summary.json", summary)
        write_run_report(args.output, args)
        refine = summary["figures"]["3_refine"]
        log.info("done: %s (resolution %s, gold-standard FSC 0.143) in %.0f s", args.output / "3_refine" / "map.mrc",
                 _angstroms(refine["resolution_in_angstroms"]), summary["timings_in_seconds"]["total"])
    finally:
        close_logging()
    return 0


def _require_selected(out: Path) -> None:
    """Stop with one line when the selection left no class (the classification itself is kept)."""
    if not (out / "1_classify2d" / "selected_data.star").is_file():
        rules = json.loads((out / "1_classify2d" / "summary.json").read_text())["selection"]["rules"]
        raise InputError(f"--select {','.join(rules)}: no class of {out / '1_classify2d'} passes (see its classes.png "
                         "and summary.json); loosen the rules or pass --select none, and run again with --force")
