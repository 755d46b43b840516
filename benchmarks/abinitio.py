"""Speed of the ab initio pieces on simulated Pol II class averages (thesis Table 3.1, Figs 3.18, 3.21).

Data: 25 exact projections of Pol II (1wcm) at 15 Å, 50 x 50 px at 4 Å/px, random poses (seed).
1. `gibbs_step`: one full Gibbs step (assignments, missing coordinates, mixture, rotations and
   translations) with K = 500, 10^4 counts per image, started from the true rotations and a
   mixture fitted for 100 untimed steps; median over `--steps` timed steps (thesis: 47.9 ms on one
   core with the fast exponential), with one numba thread and with two (the images of a step are
   processed in parallel threads), the two alternating step by step in the same process.
2. `restart`: one initial-stage restart with the defaults (K = 100, 32 x 32, 1000 counts,
   N_R = 1000); median over `--repeats` seeds (thesis: about 100 s). One thread.
3. `abinitio`: the whole pipeline with 4 restarts in 2 processes (`--jobs 2`) and the default
   refinement, wall time (thesis: 13-28 minutes). Skipped with --quick.

Prints one JSON object on stdout; progress goes to stderr.

Example:
    python benchmarks/abinitio.py --repeats 3 > abinitio.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz")
    parser.add_argument("--steps", type=int, default=50, help="timed Gibbs steps (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed restarts (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="skip the whole-pipeline timing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(2)
    import numba
    import numpy as np

    from cryogmm.geometry.so3 import random_rotations
    from cryogmm.io.atoms import read_atoms
    from cryogmm.pipelines.abinitio import AbinitioSettings, images_to_counts, run_abinitio, run_restart
    from cryogmm.samplers.projected import ProjectedGibbsSampler, default_projection_prior
    from cryogmm.simulate.images import project_atoms
    from cryogmm.simulate.molmap import model_center

    model = read_atoms(_common.require_file(args.model, "atomic model"))
    coordinates = model.coordinates_in_angstroms - model_center(model.coordinates_in_angstroms, model.atomic_numbers)
    rng = np.random.default_rng(args.seed)
    rotations = random_rotations(rng, 25)
    images = project_atoms(coordinates, model.atomic_numbers, rotations, None, 15.0, 50, 4.0, dtype=np.float64)
    result = {"machine": _common.machine_info(), "commit": _common.git_commit(), "seed": args.seed,
              "data": "Pol II, 25 projections, 50 px, 4 Å/px, 15 Å"}

    _common.info("Gibbs step: K = 500, 1e4 counts per image")
    data = images_to_counts(images, 4.0, 50, 10000)
    sampler = ProjectedGibbsSampler(data, 500, default_projection_prior(data), update_mixture=True,
                                    update_rotations=True, update_translations=True)
    warm = ProjectedGibbsSampler(data, 500, sampler.prior, update_rotations=False)
    state = warm.init(rng, rotations=rotations)
    for _ in range(100):
        state, _ = warm.step(rng, state)
    times = {1: [], 2: []}
    for _ in range(args.steps):
        for threads in (1, 2):
            numba.set_num_threads(threads)
            start = time.perf_counter()
            state, _ = sampler.step(rng, state)
            times[threads].append(time.perf_counter() - start)
    numba.set_num_threads(1)
    result["gibbs_step"] = {"median_ms": 1e3 * statistics.median(times[2]), "min_ms": 1e3 * min(times[2]),
                            "threads": 2,
                            "one_thread_median_ms": 1e3 * statistics.median(times[1]),
                            "speedup_two_threads": statistics.median(times[1]) / statistics.median(times[2]),
                            "steps": args.steps, "sigma_in_angstroms": state.mixture.sigma_in_angstroms,
                            "cutoff_sigmas": sampler.cutoff_sigmas, "thesis_ms": 47.9, "target_ms": 12.0}
    _common.info(f"  median {result['gibbs_step']['median_ms']:.2f} ms (2 threads), "
                 f"{result['gibbs_step']['one_thread_median_ms']:.2f} ms (1 thread)")

    settings = AbinitioSettings()
    initial = images_to_counts(images, 4.0, settings.initial_box, settings.initial_counts)
    run_restart(0, np.random.SeedSequence(0), initial, AbinitioSettings(n_cycles=1))  # compile
    seconds = []
    for r in range(args.repeats):
        restart = run_restart(r, np.random.SeedSequence(args.seed + r), initial, settings)
        seconds.append(restart.seconds)
        _common.info(f"  restart {r + 1}: {restart.seconds:.2f} s")
    result["restart"] = {"median_seconds": statistics.median(seconds), "seconds": seconds, "threads": 1,
                         "thesis_seconds": 100.0, "target_seconds": 10.0}

    if not args.quick:
        _common.info("whole pipeline: 4 restarts in 2 processes, default refinement")
        start = time.perf_counter()
        run = run_abinitio(images, 4.0, settings, args.seed, jobs=2)
        result["abinitio"] = {"wall_seconds": time.perf_counter() - start, "timings": run.timings, "jobs": 2,
                              "restarts": 4, "thesis_minutes": [13, 28], "target_seconds": 120.0}
        _common.info(f"  {result['abinitio']['wall_seconds']:.1f} s")
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
