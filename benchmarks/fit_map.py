"""Wall time of a 500-component Gibbs fit of a simulated Pol II map on one core, and kernel throughput.

The map is made as `cryogmm simulate-map` makes it (molmap at 15 Å on a 2 Å grid centred on the
model); `cryogmm.reconstruction.fit_map.fit_map` fits it with its defaults (1e6 counts, 300 steps,
burn-in 200, thin 10). One untimed warm-up fit with a few steps compiles the numba kernels, then
`--repeats` fits with seeds `--seed`, `--seed + 1`, ... are timed. Each run reports its wall time,
the cross-correlation (Eqn. 3.3) of the posterior mean against the model simulated at 20 Å on
the same grid, the final sigma and the median time per Gibbs step over the last 100 steps.

Throughput: `cryogmm.kernels.evaluate_gaussians` on the last run's final mixture, in Gaussian
evaluations per second, where the evaluations are the (component, grid point) pairs the kernel
visits (counted exactly with the kernel's own sphere bounds; the estimate K * (4/3) pi (5 sigma /
voxel)^3 is printed beside it), next to the elements per second of `numpy.exp` on a float64 array
of 1e7 elements measured in the same process.

Prints one JSON object on stdout; progress goes to stderr.

Example:
    python benchmarks/fit_map.py --repeats 3 > fit_map.json
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)

TARGET_WALL_SECONDS = 20.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz",
                        help="atomic model (default: ../shared/data/models/1wcm_polII.pdb.gz)")
    parser.add_argument("--resolution", type=float, default=15.0, help="map resolution in Å (default 15)")
    parser.add_argument("--reference-resolution", type=float, default=20.0,
                        help="resolution of the reference map for the cross-correlation (default 20)")
    parser.add_argument("--pixel-size", type=float, default=2.0, help="voxel size in Å (default 2)")
    parser.add_argument("--components", type=int, default=500, help="K (default 500)")
    parser.add_argument("--steps", type=int, default=300, help="Gibbs steps (default 300)")
    parser.add_argument("--counts", type=float, default=1e6, help="counts (default 1e6)")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first timed fit (default 1)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps of the untimed warm-up fit (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    parser.add_argument("--exp-elements", type=int, default=10_000_000,
                        help="size of the float64 array for the numpy.exp reference (default 1e7)")
    parser.add_argument("--throughput-repeats", type=int, default=7,
                        help="timed calls for each throughput figure (default 7)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def timed_steps(seconds: list):
    """Record the wall time of every `MixtureFitSampler.step` call into `seconds`."""
    from cryogmm.samplers.mixture_fit import MixtureFitSampler

    original = MixtureFitSampler.step

    def step(self, rng, state):
        start = time.perf_counter()
        out = original(self, rng, state)
        seconds.append(time.perf_counter() - start)
        return out

    MixtureFitSampler.step = step
    try:
        yield seconds
    finally:
        MixtureFitSampler.step = original


def visited_pairs(grid, means, precision: float, cutoff_sigmas: float) -> int:
    """(component, grid point) pairs `evaluate_kernel` visits: points of the grid within
    `cutoff_sigmas` sigma of each mean, with the kernel's own per-axis and per-row bounds."""
    import numpy as np

    from cryogmm.kernels import as_3d

    (nz, ny, nx), origin, means3 = as_3d(grid, means)
    h = grid.spacing_in_angstroms
    radius = cutoff_sigmas / math.sqrt(precision)
    r2 = radius * radius

    def axis_range(mu, r, o, n):  # as cryogmm.kernels.gaussians._axis_range, on arrays
        lo = np.maximum(np.ceil((mu - r - o) / h), 0).astype(np.int64)
        hi = np.minimum(np.floor((mu + r - o) / h), n - 1).astype(np.int64)
        return lo, hi

    total = 0
    for mx, my, mz in means3:
        xlo, xhi = axis_range(mx, radius, origin[0], nx)
        ylo, yhi = axis_range(my, radius, origin[1], ny)
        zlo, zhi = axis_range(mz, radius, origin[2], nz)
        if xlo > xhi or ylo > yhi or zlo > zhi:
            continue
        dz = origin[2] + np.arange(zlo, zhi + 1) * h - mz
        dy = origin[1] + np.arange(ylo, yhi + 1) * h - my
        rest = r2 - dz[:, None] ** 2 - dy[None, :] ** 2
        half = np.sqrt(rest[rest >= 0.0])
        x0, x1 = axis_range(mx, half, origin[0], nx)
        total += int(np.maximum(x1 - x0 + 1, 0).sum())
    return total


def throughput(mixture, grid, cutoff_sigmas: float, n_exp: int, repeats: int) -> dict:
    import numpy as np

    from cryogmm.kernels import evaluate_gaussians

    means = mixture.means_in_angstroms
    amplitudes = mixture.amplitudes()
    s = mixture.precision_per_square_angstrom
    evaluate_gaussians(grid, means, amplitudes, s, cutoff_sigmas)  # compiled already; warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate_gaussians(grid, means, amplitudes, s, cutoff_sigmas)
        times.append(time.perf_counter() - start)
    alloc_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.zeros(grid.shape)
        alloc_times.append(time.perf_counter() - start)
    pairs = visited_pairs(grid, means, s, cutoff_sigmas)
    sigma = mixture.sigma_in_angstroms
    estimate = mixture.n_components * 4.0 / 3.0 * math.pi * (cutoff_sigmas * sigma / grid.spacing_in_angstroms) ** 3

    x = np.random.default_rng(0).uniform(-12.5, 0.0, n_exp)  # exponents of a Gaussian within 5 sigma
    y = np.empty_like(x)
    np.exp(x, out=y)
    exp_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.exp(x, out=y)
        exp_times.append(time.perf_counter() - start)

    t_eval = _common.median(times)
    t_exp = _common.median(exp_times)
    gauss_rate = pairs / t_eval
    exp_rate = n_exp / t_exp
    return {
        "mixture": {"n_components": mixture.n_components, "sigma_in_angstroms": sigma},
        "grid_shape": list(grid.shape),
        "cutoff_sigmas": cutoff_sigmas,
        "pairs_counting": "exact: grid points within the 5-sigma sphere of each mean, with the kernel's bounds",
        "pairs_visited": pairs,
        "pairs_estimate_K_times_sphere_points": estimate,
        "evaluate_gaussians_seconds_median": t_eval,
        "evaluate_gaussians_seconds_runs": times,
        "gaussian_evaluations_per_second": gauss_rate,
        "output_allocation_seconds_median": _common.median(alloc_times),
        "numpy_exp_elements": n_exp,
        "numpy_exp_seconds_median": t_exp,
        "numpy_exp_elements_per_second": exp_rate,
        "ratio_gaussian_evaluations_to_numpy_exp": gauss_rate / exp_rate,
        "note": "the kernel takes exp once per axis and grid line (separable Gaussian), so one "
                "evaluation is a multiply-add, not an exp; evaluate_gaussians also allocates the "
                "float64 output map (its np.zeros alone is timed as output_allocation_seconds_median)",
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)
    model_path = _common.require_file(args.model, "atomic model")

    import numpy as np

    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.mixture import evaluate
    from cryogmm.reconstruction.fit_map import fit_map

    machine = _common.machine_info()
    _common.info(f"machine: {machine['cpu_model']}, load {machine['load_average_1_5_15_min']}, "
                 f"numba threads {machine['numba_threads']}")
    _common.info(f"simulating {model_path.name} at {args.resolution} Å and {args.reference_resolution} Å "
                 f"on a {args.pixel_size} Å grid")
    t0 = time.perf_counter()
    model, grid, density, references = _common.simulated_maps(
        model_path, args.resolution, args.pixel_size, (args.reference_resolution,))
    reference = references[args.reference_resolution]
    simulate_seconds = time.perf_counter() - t0
    _common.info(f"{model.n_atoms} atoms, grid {grid.shape}, {simulate_seconds:.1f} s")

    t0 = time.perf_counter()
    fit_map(density, grid, args.components, rng=np.random.default_rng(args.seed + 10_000),
            n_counts=int(args.counts), n_steps=args.warmup_steps, burn_in=1, thin=1)
    warmup_seconds = time.perf_counter() - t0
    _common.info(f"warm-up ({args.warmup_steps} steps, includes numba compilation or cache load): "
                 f"{warmup_seconds:.1f} s")

    runs = []
    result = None
    for i in range(args.repeats):
        seed = args.seed + i
        step_seconds: list[float] = []
        with timed_steps(step_seconds):
            t0 = time.perf_counter()
            result = fit_map(density, grid, args.components, rng=np.random.default_rng(seed),
                             n_counts=int(args.counts), n_steps=args.steps)
            wall = time.perf_counter() - t0
        last = step_seconds[-100:]
        sigma_trace = result.traces["sigma_in_angstroms"]
        run = {
            "seed": seed,
            "wall_seconds": wall,
            "chain_seconds": result.seconds,
            "median_step_seconds_last_100": _common.median(last),
            "median_step_seconds_first_10": _common.median(step_seconds[:10]),
            "cross_correlation_vs_reference": cross_correlation(reference, result.posterior_mean_map),
            "cross_correlation_last_sample_vs_reference": cross_correlation(
                reference, evaluate(result.mixture, grid)),
            "cross_correlation_vs_input_map": cross_correlation(density, result.posterior_mean_map),
            "final_sigma_in_angstroms": result.mixture.sigma_in_angstroms,
            "mean_sigma_after_burn_in_in_angstroms": float(np.mean(sigma_trace[(2 * args.steps) // 3 + 1:])),
            "n_samples_averaged": result.n_samples_averaged,
            "max_unassigned_counts_per_step": int(np.max(result.traces["n_unassigned"])),
        }
        runs.append(run)
        _common.info(f"run {i + 1}/{args.repeats} seed {seed}: {wall:.1f} s wall, "
                     f"{run['median_step_seconds_last_100'] * 1e3:.1f} ms/step (last 100), "
                     f"CC vs {args.reference_resolution:g} Å {run['cross_correlation_vs_reference']:.4f}, "
                     f"sigma {run['final_sigma_in_angstroms']:.2f} Å")

    _common.info("throughput of evaluate_gaussians and numpy.exp")
    rates = throughput(result.mixture, grid, 5.0, args.exp_elements, args.throughput_repeats)
    wall_median = _common.median([r["wall_seconds"] for r in runs])
    out = {
        "benchmark": "fit_map",
        "git_commit": _common.git_commit(),
        "machine": machine,
        "load_average_at_end_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "model": str(model_path), "n_atoms": model.n_atoms, "resolution_in_angstroms": args.resolution,
            "reference_resolution_in_angstroms": args.reference_resolution,
            "pixel_size_in_angstroms": args.pixel_size, "grid_shape": list(grid.shape),
            "n_components": args.components, "algorithm": "gibbs", "n_steps": args.steps,
            "n_counts": int(args.counts), "burn_in": (2 * args.steps) // 3, "thin": 10,
            "repeats": args.repeats, "seeds": [r["seed"] for r in runs], "threads": args.threads,
            "warmup_steps": args.warmup_steps,
        },
        "simulate_seconds": simulate_seconds,
        "warmup_seconds": warmup_seconds,
        "fit": {
            "wall_seconds_median": wall_median,
            "wall_seconds_runs": [r["wall_seconds"] for r in runs],
            "median_step_seconds_last_100": _common.median([r["median_step_seconds_last_100"] for r in runs]),
            "cross_correlation_vs_reference_runs": [r["cross_correlation_vs_reference"] for r in runs],
            "final_sigma_in_angstroms_runs": [r["final_sigma_in_angstroms"] for r in runs],
            "step_seconds_note": "time inside MixtureFitSampler.step (assignment sweeps and parameter "
                                 "update); the median over steps 201-300 of each run, then over runs",
            "runs": runs,
        },
        "target": {
            "fit_wall_seconds": TARGET_WALL_SECONDS,
            "ratio_median_wall_to_target": wall_median / TARGET_WALL_SECONDS,
            "met": wall_median <= TARGET_WALL_SECONDS,
        },
        "throughput": rates,
    }
    _common.dump(out)
    _common.info(f"median wall {wall_median:.1f} s (target {TARGET_WALL_SECONDS:g} s); "
                 f"{rates['gaussian_evaluations_per_second']:.3g} Gaussian evaluations/s vs "
                 f"{rates['numpy_exp_elements_per_second']:.3g} np.exp/s "
                 f"(ratio {rates['ratio_gaussian_evaluations_to_numpy_exp']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
