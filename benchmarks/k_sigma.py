"""The relation K sigma^3 = c between the number of components and their width (thesis Eqn. 3.5, Fig. 3.4).

Pol II is simulated (molmap, as `cryogmm simulate-map`) at `--resolution` Å on a 5 Å grid and
discretised to 1e5 counts (the figure's settings); mixtures with K = 50, 100, 200, 500, 1000
are fitted by Gibbs sampling (300 steps, one fixed seed). For each K the table gives the final
sigma, the mean sigma over the steps after burn-in, K sigma^3 (from that mean) and the
cross-correlation (Eqn. 3.3) of the posterior mean with the input map, and the local exponent
d log sigma / d log K from the previous K (-1/3 where K sigma^3 is constant). K sigma^3 should be
roughly constant while K is not too large; for large K, sigma levels off towards the molmap
sigma of the input (resolution / (pi sqrt 2)), the dashed lines of Fig. 3.4.

Table on stderr, one JSON object on stdout.

Example:
    python benchmarks/k_sigma.py --resolution 10 15 > k_sigma.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz",
                        help="atomic model (default: ../shared/data/models/1wcm_polII.pdb.gz)")
    parser.add_argument("--resolution", type=float, nargs="+", default=[10.0],
                        help="map resolution(s) in Å (default 10; e.g. --resolution 10 15)")
    parser.add_argument("--pixel-size", type=float, default=5.0, help="voxel size in Å (default 5)")
    parser.add_argument("--components", type=int, nargs="+", default=[50, 100, 200, 500, 1000],
                        help="values of K (default 50 100 200 500 1000)")
    parser.add_argument("--counts", type=float, default=1e5, help="counts (default 1e5)")
    parser.add_argument("--steps", type=int, default=300, help="Gibbs steps (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every fit (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)
    model_path = _common.require_file(args.model, "atomic model")

    import numpy as np

    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.reconstruction.fit_map import fit_map
    from cryogmm.simulate.molmap import sigma_for_resolution

    machine = _common.machine_info()
    burn_in = (2 * args.steps) // 3
    series = []
    for resolution in args.resolution:
        model, grid, density, _ = _common.simulated_maps(model_path, resolution, args.pixel_size)
        n_occupied = None
        rows = []
        _common.info(f"{model_path.name} at {resolution:g} Å on a {args.pixel_size:g} Å grid {grid.shape}")
        for k in args.components:
            t0 = time.perf_counter()
            result = fit_map(density, grid, k, rng=np.random.default_rng(args.seed),
                             n_counts=int(args.counts), n_steps=args.steps)
            seconds = time.perf_counter() - t0
            n_occupied = int((result.data.counts > 0).sum())
            sigma_trace = result.traces["sigma_in_angstroms"]
            sigma_mean = float(np.mean(sigma_trace[burn_in + 1:]))
            sigma_final = result.mixture.sigma_in_angstroms
            rows.append({
                "n_components": k,
                "final_sigma_in_angstroms": sigma_final,
                "mean_sigma_after_burn_in_in_angstroms": sigma_mean,
                "k_sigma_cubed_in_cubic_angstroms": k * sigma_mean**3,
                "k_sigma_cubed_final_in_cubic_angstroms": k * sigma_final**3,
                "cross_correlation_vs_input_map": cross_correlation(density, result.posterior_mean_map),
                "seconds": seconds,
            })
            _common.info(f"  K {k:5d}: sigma {sigma_mean:.2f} Å, K sigma^3 {k * sigma_mean**3:9.0f} Å^3, "
                         f"CC {rows[-1]['cross_correlation_vs_input_map']:.4f}, {seconds:.1f} s")
        c0 = rows[0]["k_sigma_cubed_in_cubic_angstroms"]
        previous = None
        for row in rows:
            row["k_sigma_cubed_relative_to_first"] = row["k_sigma_cubed_in_cubic_angstroms"] / c0
            # d log sigma / d log K from the previous K: -1/3 where K sigma^3 is constant
            row["local_exponent_from_previous_k"] = None if previous is None else float(
                np.log(row["mean_sigma_after_burn_in_in_angstroms"] / previous["mean_sigma_after_burn_in_in_angstroms"])
                / np.log(row["n_components"] / previous["n_components"]))
            previous = row
        series.append({
            "resolution_in_angstroms": resolution,
            "molmap_sigma_in_angstroms": sigma_for_resolution(resolution),
            "grid_shape": list(grid.shape),
            "n_counts": int(result.data.n_counts),
            "occupied_voxels": n_occupied,
            "counts_per_occupied_voxel": result.data.n_counts / n_occupied,
            "rows": rows,
        })

    print("\nK sigma^3 (thesis Eqn. 3.5, Fig. 3.4); sigma = mean over the steps after burn-in",
          file=sys.stderr)
    for s in series:
        print(f"\nPol II {s['resolution_in_angstroms']:g} Å on a {args.pixel_size:g} Å grid, "
              f"{s['n_counts']} counts; molmap sigma {s['molmap_sigma_in_angstroms']:.2f} Å", file=sys.stderr)
        print(f"{'K':>6} {'sigma/Å':>8} {'K*sigma^3/Å^3':>14} {'rel. to K0':>10} {'dlog s/dlog K':>13} "
              f"{'CC':>7}", file=sys.stderr)
        for r in s["rows"]:
            exponent = r["local_exponent_from_previous_k"]
            exponent = "" if exponent is None else f"{exponent:.3f}"
            print(f"{r['n_components']:>6} {r['mean_sigma_after_burn_in_in_angstroms']:>8.2f} "
                  f"{r['k_sigma_cubed_in_cubic_angstroms']:>14.0f} {r['k_sigma_cubed_relative_to_first']:>10.2f} "
                  f"{exponent:>13} {r['cross_correlation_vs_input_map']:>7.4f}", file=sys.stderr)

    _common.dump({
        "benchmark": "k_sigma",
        "git_commit": _common.git_commit(),
        "machine": machine,
        "settings": {"model": str(model_path), "pixel_size_in_angstroms": args.pixel_size,
                     "n_counts": int(args.counts), "algorithm": "gibbs", "n_steps": args.steps,
                     "burn_in": burn_in, "thin": 10, "seed": args.seed, "threads": args.threads},
        "series": series,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
