"""Refine a map against particle images: gold-standard MAP-EM in Fourier space (3D auto-refine).

The method is the MAP expectation-maximisation of the second seed (a RELION-style derivation:
Scheres, J. Mol. Biol. 2012 and J. Struct. Biol. 2012): each particle's orientation (HEALPix
directions x in-plane angles) and shift are integrated out with its CTF and a Gaussian noise model,
as in RELION's 3D auto-refine. Unlike the seed's per-pixel noise and per-voxel prior (Eqns. 15-16,
degenerate in practice), the noise power is estimated per resolution shell and the signal power
tau^2 per shell from the spectral SNR of the half maps (FSC / (1 - FSC), times --tau2-fudge).

The particles are split into two random halves (or by rlnRandomSubset), each refined from the same
reference low-passed to --initial-lowpass; their FSC sets the resolution the next E-step uses
and when the angular sampling gets finer: a global search (15 degrees, the significant poses
oversampled to 7.5), then local searches of 3.75, 1.875, 0.94 ... degrees around each particle's
pose, until resolution and poses stop changing or --max-iterations. The final map joins both
halves; a soft mask from it gives the masked, phase-randomisation-corrected FSC and the 0.143
resolution; a Guinier fit gives the B-factor that sharpens it.

PARTICLES.star needs the CTF columns (rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast) and a pixel size, unless --no-ctf (particles without a CTF); particles are
bright (RELION's convention) unless --polarity dark. The reference must have the particles' box and pixel size; --rescale resamples it.
`cryogmm abinitio`'s map.mrc feeds it directly.

Outputs in DIR: map.mrc (final, masked-FSC-weighted, sharpened and low-passed at the resolution),
map_unsharpened.mrc, half1.mrc, half2.mrc, mask.mrc, fsc.png and fsc.json (unmasked, masked,
phase-randomised and corrected FSC curves, Guinier fit), map_slices.png, particles.star (RELION 3.1:
rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst of each particle's maximum-a-posteriori pose,
rlnRandomSubset, rlnMaxValueProbDistribution, rlnNrOfSignificantSamples, the input's other
columns kept), summary.json (per-iteration resolution, sampling, pose changes, times),
settings.json, run.log. Checkpoints after every iteration in .DIR.checkpoint/; --resume continues.

Example:
    cryogmm simulate-images 1wcm_polII.pdb.gz --number 3000 --box 64 --pixel-size 3 --resolution 6 \\
        --snr 0.05 --max-shift 6 --defocus-range 1.0 2.5 --seed 1 --output polii
    cryogmm refine polii/particles.star --reference polii/reference.mrc --initial-lowpass 40 \\
        --seed 1 --output polii_refine
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, metavar="PARTICLES.star", help="RELION particle STAR file with CTF columns")
    parser.add_argument("--reference", type=Path, required=True, help="initial map (MRC), e.g. abinitio's map.mrc")
    parser.add_argument("--symmetry", default="C1", help="point group: C1, Cn, Dn, T, O, I (default C1)")
    parser.add_argument("--initial-lowpass", type=float, default=40.0, metavar="Å",
                        help="low-pass the reference to this resolution first (default 40 Å)")
    parser.add_argument("--particle-diameter", type=float, default=None, metavar="Å",
                        help="diameter of the soft masks on images and maps (default: 0.9 of the box)")
    parser.add_argument("--tau2-fudge", type=float, default=1.0, help="regularisation factor T (default 1)")
    parser.add_argument("--max-iterations", type=int, default=20, help="at most this many iterations (default 20)")
    parser.add_argument("--offset-range", type=float, default=None, metavar="Å",
                        help="shifts searched in the global stage (default 3 pixels)")
    parser.add_argument("--polarity", choices=("bright", "dark"), default="bright",
                        help="particles bright on a dark background (RELION's convention, default) or dark")
    add_ctf_args(parser)
    parser.add_argument("--rescale", action="store_true",
                        help="resample a reference of another box or voxel size onto the particles' grid")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (overrides the STAR file)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the image stacks (default: next to STAR)")
    parser.add_argument("--batch-size", type=int, default=200, help="particles per E-step task (default 200)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="E-step tasks run in this many local processes (default 1: in this process, "
                             "multithreaded)")
    parser.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                        help="run the E-step tasks on an existing Dask cluster (needs dask.distributed)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def build_settings(args: argparse.Namespace, pixel: float):
    from cryogmm.geometry.symmetry import canonical_symmetry_name
    from cryogmm.pipelines.refine import RefineSettings

    for option, value in (("--initial-lowpass", args.initial_lowpass), ("--particle-diameter", args.particle_diameter),
                          ("--tau2-fudge", args.tau2_fudge), ("--offset-range", args.offset_range)):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise InputError(f"{option} {value}: must be a positive number")
    if not 1 <= args.max_iterations <= 200:
        raise InputError(f"--max-iterations {args.max_iterations}: must be between 1 and 200")
    if args.batch_size < 1 or args.jobs < 1:
        raise InputError("--batch-size and --jobs must be at least 1")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")
    if args.resume and args.force:
        raise InputError("--resume and --force: choose one (--force starts over)")
    try:
        symmetry = canonical_symmetry_name(args.symmetry)
    except InputError as err:
        raise InputError(f"--symmetry {args.symmetry}: {err}") from None
    offset_range = 3.0 if args.offset_range is None else args.offset_range / pixel
    if offset_range > 50:
        raise InputError(f"--offset-range {args.offset_range}: at most 50 pixels ({50 * pixel:g} Å)")
    try:
        return RefineSettings(symmetry=symmetry, initial_lowpass_in_angstroms=args.initial_lowpass,
                              particle_diameter_in_angstroms=args.particle_diameter, tau2_fudge=args.tau2_fudge,
                              max_iterations=args.max_iterations, offset_range_in_pixels=offset_range,
                              polarity=-1 if args.polarity == "bright" else 1, batch_size=args.batch_size)
    except InputError as err:
        raise InputError(f"refine options: {err}") from None


def read_reference(args: argparse.Namespace, box: int, pixel: float) -> tuple[np.ndarray, str | None]:
    """The reference on the particles' grid, and a note of the resampling (None when not resampled)."""
    from cryogmm.io.mrc import read_map
    from cryogmm.preprocess.resample import resample_map

    reference = read_map(args.reference)
    data = np.asarray(reference.data, dtype=np.float64)
    voxel = reference.voxel_size_in_angstroms
    same_box = data.shape == (box, box, box)
    same_voxel = math.isclose(voxel, pixel, rel_tol=1e-3)
    if same_box and same_voxel:
        return data, None
    if not args.rescale:
        raise InputError(f"--reference {args.reference}: {'x'.join(map(str, data.shape[::-1]))} voxels of {voxel:g} Å, "
                         f"the particles need {box}^3 of {pixel:g} Å; pass --rescale to resample it")
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"--reference {args.reference}: shape {data.shape} is not a cube; pass a cubic map")
    note = (f"reference resampled from {data.shape[0]}^3 voxels of {voxel:.4g} Å to {box}^3 of {pixel:.4g} Å "
            "(--rescale)")
    return resample_map(data, voxel, pixel, box).astype(np.float64), note


def _executor(args: argparse.Namespace):
    if args.dask_scheduler:
        try:
            from dask.distributed import Client
        except ImportError as exc:
            raise InputError("--dask-scheduler: dask.distributed is not installed; "
                             "pip install 'cryogmm[dask]'") from exc
        try:
            return Client(args.dask_scheduler, timeout=20)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            raise InputError(f"--dask-scheduler {args.dask_scheduler}: cannot connect ({reason}); "
                             "check the address (tcp://HOST:PORT) and that the scheduler runs") from exc
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from cryogmm.pipelines.workers import init_worker

        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        return ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(threads,))
    return None


def half_sets_from_table(particles) -> np.ndarray | None:
    """rlnRandomSubset (1 or 2) when the table has it for every particle, else None."""
    if "rlnRandomSubset" not in particles.columns:
        return None
    values = particles["rlnRandomSubset"].to_numpy()
    if not np.all(np.isin(values, (1, 2))):
        return None
    return values.astype(np.int64)


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.checkpoints import CheckpointFolder, check_resume, checkpoint_dir_for
    from cryogmm.io.runs import RunFolder
    from cryogmm.pipelines import refine as rf

    setup_logging(verbose=args.verbose)
    executor = None
    try:
        checkpoints = CheckpointFolder(checkpoint_dir_for(args.output))
        check_resume(checkpoints, args.output, args.resume, args.force)
        table, ctf, reader, pixel = read_ctf_particles(args, "refine")
        settings = build_settings(args, pixel)
        reader.check_finite(args.star)
        n_particles, box = len(reader), reader.box
        half = half_sets_from_table(table.particles)
        for h in (1, 2):
            count = n_particles // 2 if half is None else int(np.count_nonzero(half == h))
            if count < 2:
                raise InputError(f"{args.star}: {n_particles} particles give {count} in half set {h}; "
                                 "refine needs at least 2 per half set")
        reference, resampled = read_reference(args, box, pixel)
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        record = {"star": str(args.star), "reference": str(args.reference), "seed": seed, "n_particles": n_particles,
                  "box": box, "pixel_size_in_angstroms": pixel, **rf.settings_dict(settings)}
        executor = _executor(args)  # an unreachable scheduler is refused before anything is written
        checkpoints.start(record, resume=args.resume)
        run = RunFolder(args.output, force=args.force or args.resume)
        state = None
        if args.resume:
            saved = checkpoints.load("state")
            state = rf.state_from_arrays(saved) if saved is not None else None
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %d particles of %d px at %.4g Å/px; reference %s; symmetry %s; seed %d%s", args.star,
                     n_particles, box, pixel, args.reference, settings.symmetry, seed,
                     f"; resumed after iteration {state.iteration}" if state is not None else "")
            if resampled:
                log.info(resampled)
            data = rf.ParticleData(reader, ctf, box, pixel, n_particles)

            def on_iteration(record):
                log.info("iteration %d (%s, %.3g°, shifts %.3g Å, E-step to %.1f Å): resolution %s; pose changes: "
                         "median %s°, %s Å; %.1f significant poses per particle; %.1f s", record["iteration"],
                         record["stage"], record["angular_step_in_degrees"], record["shift_step_in_angstroms"],
                         record["e_step_resolution_in_angstroms"], _angstroms(record["resolution_in_angstroms"]),
                         _number(record["median_angle_change_in_degrees"]),
                         _number(record["median_shift_change_in_angstroms"]), record["mean_significant_poses"],
                         record["seconds"])

            def save(state):
                checkpoints.save("state", rf.state_to_arrays(state))

            progress = not args.quiet and sys.stderr.isatty()
            if state is None:
                state = rf.initial_state(data, reference, settings, np.random.default_rng(seed), half=half)
            try:
                result = rf.refine(data, reference, settings, seed=seed, executor=executor, progress=progress,
                                   state=state, checkpoint=save, on_iteration=on_iteration)
            except KeyboardInterrupt:
                if executor is not None and not hasattr(executor, "gather"):
                    from cryogmm.pipelines.workers import end_workers

                    end_workers(executor)  # a process pool: end the workers now, not after their batches
                done = checkpoints.load("state")
                where = f"after iteration {int(rf.state_from_arrays(done).iteration)}" if done else "before iteration 1"
                raise KeyboardInterrupt(f"the checkpoints in {checkpoints.path} ({where}) are kept: run the same "
                                        "command with --resume to continue") from None
            write_outputs(folder, args, table, result, settings, pixel, seed, record)
            write_run_report(folder, args)
            log.info("wrote %s", args.output)
        checkpoints.remove()
    finally:
        close_executor(executor)
        close_logging()
    return 0


def add_ctf_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-ctf", action="store_true",
                        help="the particles have no CTF (simulated without one, or already corrected): ignore any "
                             "CTF columns (as RELION's 'Do CTF-correction? No')")


def read_ctf_particles(args: argparse.Namespace, command: str):
    """The particle table, its CTFs (None with --no-ctf), a lazy stack reader and the pixel size."""
    from cryogmm.io.particles import stack_reader
    from cryogmm.io.star import ctf_parameters, read_particles

    table = read_particles(args.star)
    ctf = None if getattr(args, "no_ctf", False) else ctf_parameters(table)
    if ctf is None and not getattr(args, "no_ctf", False):
        raise InputError(f"{args.star}: no CTF columns (rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage, "
                         f"rlnSphericalAberration, rlnAmplitudeContrast); {command} needs each particle's CTF: "
                         "add them (e.g. from CTFFIND via RELION), or pass --no-ctf if the particles have none")
    reader, pixel = stack_reader(table, args.data_dir, pixel_size_in_angstroms=args.pixel_size)
    return table, ctf, reader, pixel


def close_executor(executor) -> None:
    """Close a Dask client, or end a process pool without waiting for its queued tasks."""
    if executor is None:
        return
    if hasattr(executor, "gather"):
        executor.close()
    else:
        executor.shutdown(wait=False, cancel_futures=True)


def _angstroms(value) -> str:
    return "beyond Nyquist" if value is None else f"{value:.2f} Å"


def _number(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def write_outputs(folder: Path, args, table, result, settings, pixel: float, seed: int, record: dict) -> dict:
    from cryogmm.io.mrc import write_map
    from cryogmm.io.runs import write_json, write_settings
    from cryogmm.io.star import write_refined_particles
    from cryogmm.reconstruction.postprocess import auto_mask, guinier_bfactor, masked_fsc, sharpen
    from cryogmm.report.maps import plot_central_slices
    from cryogmm.report.refine import plot_postprocess

    start = time.perf_counter()
    state = result.state
    halves = result.half_maps
    mask = auto_mask(result.map, pixel)
    fscs = masked_fsc(halves[0], halves[1], mask, pixel, rng=np.random.default_rng(seed))
    resolution = fscs.resolution_in_angstroms or 2 * pixel
    guinier = guinier_bfactor(result.map * mask, pixel, fit_from_angstroms=max(10.0, 1.5 * resolution),
                              fit_to_angstroms=resolution) if resolution < 9.5 else None
    bfactor = guinier.bfactor_in_angstroms2 if guinier is not None else 0.0
    sharpened = sharpen(result.map, pixel, bfactor_in_angstroms2=max(bfactor, 0.0),
                        resolution_in_angstroms=resolution, fsc=fscs.corrected)
    write_map(folder / "half1.mrc", halves[0], pixel)
    write_map(folder / "half2.mrc", halves[1], pixel)
    write_map(folder / "map_unsharpened.mrc", result.map, pixel)
    write_map(folder / "map.mrc", sharpened, pixel)
    write_map(folder / "mask.mrc", mask, pixel)
    plot_postprocess(fscs, guinier, folder / "fsc.png")
    plot_central_slices(sharpened, pixel, folder / "map_slices.png",
                        title=f"{args.star.name}: refined map, {resolution:.2f} Å")
    curves = {name: {"frequency_per_angstrom": getattr(fscs, name).frequency_per_angstrom,
                     "correlation": getattr(fscs, name).correlation}
              for name in ("unmasked", "masked", "phase_randomised", "corrected")}
    write_json(folder / "fsc.json", {"resolution_0.143_in_angstroms": fscs.resolution_in_angstroms,
                                     "randomised_beyond_in_angstroms": fscs.randomisation_resolution_in_angstroms,
                                     "curves": curves,
                                     "guinier_bfactor_in_angstroms2": None if guinier is None else bfactor})
    write_refined_particles(folder / "particles.star", table, state.rotations, state.shifts_in_pixels * pixel,
                            extra={"rlnRandomSubset": state.half, "rlnMaxValueProbDistribution": state.max_posterior,
                                   "rlnNrOfSignificantSamples": state.n_significant})
    timings = dict(result.timings_in_seconds, outputs=time.perf_counter() - start)
    summary = {"star": str(args.star), "reference": str(args.reference), "seed": seed,
               "n_particles": int(state.half.size), "box": int(result.map.shape[0]), "pixel_size_in_angstroms": pixel,
               "symmetry": settings.symmetry, "resolution_in_angstroms": fscs.resolution_in_angstroms,
               "unmasked_resolution_in_angstroms": result.resolution_in_angstroms,
               "bfactor_in_angstroms2": None if guinier is None else bfactor,
               "n_iterations": state.iteration, "converged": state.converged, "iterations": state.history,
               "timings_in_seconds": timings, "map": "map.mrc: the joined halves, FSC-weighted, sharpened with the "
               "Guinier B-factor (when the resolution is better than 9.5 Å) and low-passed at the resolution"}
    write_json(folder / "summary.json", summary)
    write_settings(folder, "refine", {**{k: v for k, v in vars(args).items() if not k.startswith("_")}, **record}, seed)
    log.info("resolution %s (masked, corrected FSC = 0.143; unmasked %s); B-factor %s; %d iterations%s; %.1f s",
             _angstroms(fscs.resolution_in_angstroms), _angstroms(result.resolution_in_angstroms),
             "-" if guinier is None else f"{bfactor:.0f} Å²", state.iteration,
             " (converged)" if state.converged else " (the iteration limit)", timings["total"])
    return summary
