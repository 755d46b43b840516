"""`cryogmm refine` against RELION 3.1's 3D auto-refine on the same simulated particles and cores.

The data (issue's set; options change it): Pol II (`models/1wcm_polII.pdb.gz`), 3000 particles of
64 px at 3 Å/px, density at 6 Å, CTF with defocus 1.0 - 2.5 µm, SNR 0.05, random poses, shifts up
to 6 Å (`cryogmm simulate-images ... --seed 1`); reference.mrc is the 6 Å truth. Both programs
start from it low-passed to 40 Å (RELION --ini_high 40, cryogmm --initial-lowpass 40), one after
the other:
- RELION: `mpirun -n 3 relion_refine_mpi --auto_refine --split_random_halves ... --j 1` (1 master
  and 2 workers: 2 busy cores), run in the particles' folder (RELION resolves image names against
  the current folder);
- cryogmm: `cryogmm refine ... --seed 1` with --threads numba threads (default 2).
For both: wall time; the gold-standard resolution (RELION's "Final resolution" line and
rlnCurrentResolution of run_model.star; cryogmm's summary.json, masked and corrected, and its
unmasked one) and the FSC = 0.143 of each program's unfiltered half maps computed here the same way
(`cryogmm.metrics.fsc`, no mask); FSC 0.5 and 0.143 of each final map (RELION run_class001.mrc,
cryogmm map_unsharpened.mrc and map.mrc) against the truth; the median angular error and shift
error of the poses (RELION run_data.star, cryogmm particles.star, matched by rlnImageName) against
the true poses; and the ratio of the wall times. Both refine in the truth's frame (the reference
fixes it), so maps and poses are compared without alignment.

RELION absent: the RELION part is skipped with a message (--cryogmm-only runs without it).

Examples:
    python benchmarks/refine_vs_relion.py --workdir /tmp/polii > refine_vs_relion.json   # full size
    python benchmarks/refine_vs_relion.py --workdir /tmp/polii --cryogmm-only             # reuse the set
    python benchmarks/refine_vs_relion.py --particles 100 --box 32 --pixel-size 6 --resolution 12 \\
        --workdir /tmp/tiny > tiny.json                                                  # a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)

RELION_PROGRAMS = ("mpirun", "relion_refine_mpi")


def add_particle_set_args(parser: argparse.ArgumentParser, *, snr: float, extra=(),
                          workdir_help: str = "folder for the data set and both runs; a data set already there (same "
                                              "settings) is reused (default: a temporary folder, removed)") -> None:
    """The simulated particle set's options that `simulate` reads (the benchmarks that simulate Pol II
    particles share them), the particle diameter, the seed, `extra` (flag, type, default, text)
    options and --workdir."""
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz",
                        help="atomic model (default: ../shared/data/models/1wcm_polII.pdb.gz)")
    for flag, kind, default, text in (
            ("--particles", int, 3000, "number of particles"), ("--box", int, 64, "box in px"),
            ("--pixel-size", float, 3.0, "Å per pixel"), ("--resolution", float, 6.0, "resolution of the density in Å"),
            ("--snr", float, snr, "signal-to-noise ratio"), ("--max-shift", float, 6.0, "largest shift in Å"),
            *extra,
            ("--particle-diameter", float, 170.0, "mask diameter in Å, both programs"),
            ("--seed", int, 1, "seed of the simulation and both runs")):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    parser.add_argument("--workdir", type=Path, default=None, help=workdir_help)


RELION_OPTIONS = (("--threads", int, 2, "numba/BLAS threads of cryogmm"),
                  ("--relion-ranks", int, 3, "MPI ranks of RELION (1 master, the others work)"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_particle_set_args(parser, snr=0.05, extra=(
        ("--initial-lowpass", float, 40.0, "low-pass of the reference in Å, both programs"), *RELION_OPTIONS))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--relion-only", action="store_true", help="run RELION only")
    which.add_argument("--cryogmm-only", action="store_true", help="run cryogmm only")
    return parser.parse_args(argv)


def _run(argv, cwd, log_path: Path, env=None) -> float:
    """Run a command with stdout and stderr to `log_path`; its wall time in seconds (exit on failure)."""
    _common.info(f"running ({cwd}): {' '.join(map(str, argv))}")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run([str(a) for a in argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        sys.exit(f"error: {argv[0]} failed with status {done.returncode} after {seconds:.0f} s; see {log_path}:\n{tail}")
    return seconds


def simulate(args, sim: Path) -> dict:
    """The data set in `sim` (made, or reused when its settings.json matches the options)."""
    wanted = {"number": args.particles, "box": args.box, "pixel_size": args.pixel_size, "resolution": args.resolution,
              "snr": args.snr, "max_shift": args.max_shift, "seed": args.seed, "defocus_range": [1.0, 2.5]}
    settings_path = sim / "settings.json"
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text())
        saved = saved.get("settings", saved)
        differ = sorted(k for k, v in wanted.items() if saved.get(k) != v)
        if differ:
            sys.exit(f"error: {sim} holds a data set with other {', '.join(differ)}; choose another --workdir")
        _common.info(f"reusing the data set in {sim}")
        return {"reused": True, "seconds": None}
    model = _common.require_file(args.model, "the atomic model")
    seconds = _run([sys.executable, "-m", "cryogmm", "simulate-images", model.resolve(), "--number", args.particles,
                    "--box", args.box, "--pixel-size", args.pixel_size, "--resolution", args.resolution, "--snr",
                    args.snr, "--max-shift", args.max_shift, "--defocus-range", "1.0", "2.5", "--seed", args.seed,
                    "--output", sim], sim.parent, sim.parent / "simulate.log")
    return {"reused": False, "seconds": seconds}


def run_relion(args, sim: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", args.relion_ranks, "relion_refine_mpi",
            "--o", out.resolve() / "run", "--auto_refine", "--split_random_halves", "--i", "particles.star",
            "--ref", "reference.mrc", "--ini_high", args.initial_lowpass, "--firstiter_cc",
            "--dont_combine_weights_via_disc", "--pool", "30", "--pad", "2", "--ctf", "--particle_diameter",
            args.particle_diameter, "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--healpix_order",
            "2", "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2", "--sym", "C1",
            "--low_resol_join_halves", "40", "--norm", "--scale", "--j", "1", "--random_seed", args.seed]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    seconds = _run(argv, sim, out / "relion.log", env=env)
    text = (out / "relion.log").read_text(errors="replace")
    final = re.findall(r"Final resolution \(without masking\) is:\s*([0-9.]+)", text)
    model_resolution = None
    model_star = out / "run_model.star"
    if model_star.is_file():
        found = re.search(r"_rlnCurrentResolution\s+([0-9.eE+-]+)", model_star.read_text())
        model_resolution = float(found.group(1)) if found else None
    return {"wall_seconds": seconds, "iterations": len(re.findall(r"Auto-refine: Iteration=", text)),
            "final_resolution_in_angstroms": float(final[-1]) if final else None,
            "model_star_current_resolution_in_angstroms": model_resolution,
            "half_maps": [out / "run_half1_class001_unfil.mrc", out / "run_half2_class001_unfil.mrc"],
            "maps": {"run_class001.mrc": out / "run_class001.mrc"}, "poses": out / "run_data.star",
            "command": " ".join(map(str, argv))}


def run_cryogmm(args, sim: Path, out: Path) -> dict:
    argv = [sys.executable, "-m", "cryogmm", "refine", sim / "particles.star", "--reference", sim / "reference.mrc",
            "--initial-lowpass", args.initial_lowpass, "--particle-diameter", args.particle_diameter, "--seed",
            args.seed, "--quiet", "--force", "--output", out]
    seconds = _run(argv, sim.parent, out.parent / "cryogmm.log")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_seconds": seconds, "iterations": summary["n_iterations"], "converged": summary["converged"],
            "resolution_in_angstroms": summary["resolution_in_angstroms"],
            "unmasked_resolution_in_angstroms": summary["unmasked_resolution_in_angstroms"],
            "timings_in_seconds": summary["timings_in_seconds"],
            "half_maps": [out / "half1.mrc", out / "half2.mrc"],
            "maps": {"map_unsharpened.mrc": out / "map_unsharpened.mrc", "map.mrc": out / "map.mrc"},
            "poses": out / "particles.star", "command": " ".join(map(str, argv))}


def score(run: dict, truth, true_table, pixel: float) -> dict:
    """FSCs (half maps; maps against the truth) and pose errors of a finished run."""
    import numpy as np

    from cryogmm.geometry.so3 import rotation_angle_in_degrees
    from cryogmm.io.mrc import read_map
    from cryogmm.io.star import columns_to_poses, read_particles
    from cryogmm.metrics.alignment import align_maps
    from cryogmm.metrics.fsc import fourier_shell_correlation, resolution_at

    halves = [read_map(p).data for p in run.pop("half_maps")]
    run["half_maps_fsc_0.143_unmasked_in_angstroms"] = resolution_at(
        fourier_shell_correlation(halves[0], halves[1], pixel), 0.143)
    run["against_truth"] = {}
    for name, path in run.pop("maps").items():
        curve = fourier_shell_correlation(read_map(path).data, truth, pixel)
        # a refinement's frame can drift by a fraction of a degree and an Å or so (nothing in the
        # likelihood fixes it); after aligning the map onto the truth that drift no longer counts
        aligned = align_maps(truth, read_map(path).data, pixel, allow_mirror=False)
        curve_aligned = fourier_shell_correlation(aligned.aligned, truth, pixel)
        run["against_truth"][name] = {"fsc_0.5_in_angstroms": resolution_at(curve, 0.5),
                                      "fsc_0.143_in_angstroms": resolution_at(curve, 0.143),
                                      "fsc": [round(float(c), 4) for c in curve.correlation],
                                      "after_alignment": {
                                          "fsc_0.5_in_angstroms": resolution_at(curve_aligned, 0.5),
                                          "fsc_0.143_in_angstroms": resolution_at(curve_aligned, 0.143),
                                          "drift_rotation_in_degrees": float(rotation_angle_in_degrees(
                                              aligned.rotation[None], np.eye(3)[None])[0]),
                                          "drift_shift_in_angstroms": aligned.shift_in_angstroms.tolist()}}
    found = read_particles(run.pop("poses")).particles.set_index("rlnImageName")
    truth_rows = true_table.particles.set_index("rlnImageName")
    found = found.loc[truth_rows.index]
    true_rotations, true_shifts = columns_to_poses(truth_rows)
    rotations, shifts = columns_to_poses(found)
    errors = rotation_angle_in_degrees(true_rotations, rotations)
    shift_errors = np.hypot(*(shifts - true_shifts).T)
    run["pose_errors"] = {"median_angle_in_degrees": float(np.median(errors)),
                          "angle_quartiles_in_degrees": [float(q) for q in np.percentile(errors, [25, 75])],
                          "within_5_degrees": int(np.count_nonzero(errors <= 5)),
                          "beyond_45_degrees": int(np.count_nonzero(errors > 45)),
                          "median_shift_in_angstroms": float(np.median(shift_errors)), "particles": int(errors.size)}
    return run


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)
    result = {"benchmark": "refine_vs_relion", "git_commit": _common.git_commit(), "machine": _common.machine_info(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    missing = [name for name in RELION_PROGRAMS if shutil.which(name) is None]
    do_relion = not args.cryogmm_only
    if do_relion and missing:
        message = f"RELION is not installed ({', '.join(missing)} not on PATH); RELION part skipped"
        _common.info(message)
        result["relion"] = {"skipped": message}
        do_relion = False
        if args.relion_only:
            _common.dump(result)
            return 0
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        from cryogmm.io.mrc import read_map
        from cryogmm.io.star import read_particles

        sim = workdir / "sim"
        result["simulation"] = simulate(args, sim)
        truth = read_map(sim / "reference.mrc").data
        true_table = read_particles(sim / "particles.star")
        if do_relion:
            result["relion"] = score(run_relion(args, sim, workdir / "relion"), truth, true_table, args.pixel_size)
        if not args.relion_only:
            result["cryogmm"] = score(run_cryogmm(args, sim, workdir / "cryogmm"), truth, true_table, args.pixel_size)
        if "wall_seconds" in result.get("relion", {}) and "cryogmm" in result:
            result["wall_time_ratio_cryogmm_over_relion"] = (result["cryogmm"]["wall_seconds"]
                                                             / result["relion"]["wall_seconds"])
        for name in ("relion", "cryogmm"):
            run = result.get(name, {})
            if "pose_errors" in run:
                _common.info(f"{name}: {run['wall_seconds']:.0f} s, {run['iterations']} iterations, half maps "
                             f"{run['half_maps_fsc_0.143_unmasked_in_angstroms']} Å, median angular error "
                             f"{run['pose_errors']['median_angle_in_degrees']:.2f} degrees")
    finally:
        if tmp is not None:
            tmp.cleanup()
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
