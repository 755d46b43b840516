"""`cryogmm classify2d` against RELION 3.1's 2D classification on the same simulated particles and cores.

The data (issue's set; options change it): Pol II (`models/1wcm_polII.pdb.gz`), 3000 particles of
64 px at 3 Å/px, density at 6 Å, CTF with defocus 1.0 - 2.5 µm, SNR 0.1, random poses, shifts up to
6 Å (`cryogmm simulate-images ... --seed 1`). Both programs classify them into --classes K classes
for --iterations iterations, one after the other:
- RELION: `mpirun -n 3 relion_refine_mpi --K K --iter N --tau2_fudge 2 --psi_step 12 --oversampling 1
  (6-degree in-plane sampling, as its GUI's default) --offset_range 5 --offset_step 2 ... --j 1`
  (1 master and 2 workers), run in the particles' folder;
- cryogmm: `cryogmm classify2d ... --classes K --iterations N --psi-step 6 --seed 1`.
Scored the same way for both: every class average against projections of the 6 Å truth
(reference.mrc) in the directions of HEALPix order --projection-order (and psi 0), best
normalised cross-correlation over in-plane rotations (3 degrees) and shifts
(`cryogmm.metrics.correlation.best_match_correlations`); the share of the particles in classes with
CC >= 0.9 (the issue's target: >= 0.8), the CC of the classes holding 80% of the particles, and the
wall times.

RELION absent: its part is skipped with a message (--cryogmm-only runs without it).

Examples:
    python benchmarks/classify2d_vs_relion.py --workdir /tmp/c2d > classify2d_vs_relion.json       # full size
    python benchmarks/classify2d_vs_relion.py --particles 200 --box 32 --pixel-size 6 --resolution 12 \\
        --classes 5 --iterations 5 --workdir /tmp/c2d_tiny > tiny.json                           # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from refine_vs_relion import RELION_OPTIONS, RELION_PROGRAMS, _run, add_particle_set_args, simulate  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_particle_set_args(parser, snr=0.1, extra=(
        ("--classes", int, 25, "number of classes K"), ("--iterations", int, 25, "iterations, both programs"),
        ("--projection-order", int, 3, "HEALPix order of the true projections scored against"), *RELION_OPTIONS))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--relion-only", action="store_true", help="run RELION only")
    which.add_argument("--cryogmm-only", action="store_true", help="run cryogmm only")
    return parser.parse_args(argv)


def run_relion(args, sim: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", args.relion_ranks, "relion_refine_mpi",
            "--o", out.resolve() / "run", "--i", "particles.star", "--K", args.classes, "--iter", args.iterations,
            "--tau2_fudge", "2", "--dont_combine_weights_via_disc", "--pool", "30", "--pad", "2", "--ctf",
            "--particle_diameter", args.particle_diameter, "--flatten_solvent", "--zero_mask", "--oversampling", "1",
            "--psi_step", "12", "--offset_range", "5", "--offset_step", "2", "--norm", "--scale", "--j", "1",
            "--random_seed", args.seed]
    seconds = _run(argv, sim, out / "relion.log", env=dict(os.environ, OMP_NUM_THREADS="1"))
    model = out / f"run_it{args.iterations:03d}_model.star"
    return {"wall_seconds": seconds, "model": model, "command": " ".join(map(str, argv))}


def run_cryogmm(args, sim: Path, out: Path) -> dict:
    argv = [sys.executable, "-m", "cryogmm", "classify2d", sim / "particles.star", "--classes", args.classes,
            "--iterations", args.iterations, "--particle-diameter", args.particle_diameter, "--psi-step", "6",
            "--seed", args.seed, "--quiet", "--force", "--output", out]
    seconds = _run(argv, sim.parent, out.parent / "cryogmm_classify2d.log")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_seconds": seconds, "model": out / "run_model.star", "timings_in_seconds": summary["timings_in_seconds"],
            "command": " ".join(map(str, argv))}


def true_projections(truth, order: int):
    import numpy as np

    from cryogmm.forward.fourier import map_to_fourier, project_images
    from cryogmm.geometry import healpix

    grid = healpix.global_grid(order)
    directions = grid.matrices[grid.psi_index == 0]  # one in-plane angle per direction: the score rotates
    return project_images(map_to_fourier(np.asarray(truth, dtype=np.float64)), directions)


def score(run: dict, projections) -> dict:
    import numpy as np

    from cryogmm.io.classes import read_class_averages
    from cryogmm.metrics.correlation import best_match_correlations

    classes = read_class_averages(run.pop("model"))
    fractions = np.nan_to_num(classes.distribution)
    keep = fractions > 0
    cc = np.full(len(classes.images), np.nan)
    cc[keep], _ = best_match_correlations(classes.images[keep], projections, psi_step_in_degrees=3.0,
                                          max_shift_in_pixels=5)
    order = np.argsort(-np.nan_to_num(cc, nan=-1.0))
    cumulative = np.cumsum(fractions[order])
    top = order[: int(np.searchsorted(cumulative, 0.8 - 1e-9)) + 1]  # best classes holding 80% of the particles
    run.update({"class_distribution": fractions.round(4).tolist(), "class_cc": np.round(cc, 4).tolist(),
                "share_of_particles_in_classes_with_cc_0.9": float(fractions[np.nan_to_num(cc) >= 0.9].sum()),
                "lowest_cc_of_the_best_classes_holding_80_percent": float(np.nanmin(cc[top])),
                "non_empty_classes": int(keep.sum())})
    return run


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)
    result = {"benchmark": "classify2d_vs_relion", "git_commit": _common.git_commit(),
              "machine": _common.machine_info(),
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

        sim = workdir / "sim"
        result["simulation"] = simulate(args, sim)
        projections = true_projections(read_map(sim / "reference.mrc").data, args.projection_order)
        result["true_projections"] = int(len(projections))
        if do_relion:
            result["relion"] = score(run_relion(args, sim, workdir / "relion2d"), projections)
        if not args.relion_only:
            result["cryogmm"] = score(run_cryogmm(args, sim, workdir / "cryogmm2d"), projections)
        if "wall_seconds" in result.get("relion", {}) and "cryogmm" in result:
            result["wall_time_ratio_cryogmm_over_relion"] = (result["cryogmm"]["wall_seconds"]
                                                             / result["relion"]["wall_seconds"])
        for name in ("relion", "cryogmm"):
            run = result.get(name, {})
            if "class_cc" in run:
                _common.info(f"{name}: {run['wall_seconds']:.0f} s; {100 * run['share_of_particles_in_classes_with_cc_0.9']:.0f}% "
                             f"of the particles in classes with CC >= 0.9")
    finally:
        if tmp is not None:
            tmp.cleanup()
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
