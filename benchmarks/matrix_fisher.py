"""Time per draw of `cryogmm.samplers.matrix_fisher.sample_matrix_fisher` (thesis Eqn. 2.92 / C.73).

For 25 and 1000 matrices A = U diag(s) Vᵀ (U, V Haar-random, one fixed seed) at three
concentrations, zero (A = 0, uniform rotations), low (s uniform on [0, 3]) and high (s
log-uniform on [1e3, 1e7], the range of the rotation conditional in practice), one call draws
one rotation per A. One untimed call loads or compiles the numba kernel; then `--repeats` calls
are timed and the median time per call and per draw is reported, with the acceptance rate of the
rejection step (draws / proposals, from `sample_bingham` on the same matrices) and, as a
reference measured in the same process, the median time of `numpy.linalg.eigh` on the batch of
4x4 matrices K (one of the sampler's steps).

Prints one JSON object on stdout; progress goes to stderr.

Example:
    python benchmarks/matrix_fisher.py --repeats 50 > matrix_fisher.json
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 1000],
                        help="numbers of matrices (default 25 1000)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per case (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the matrices and the draws (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    return parser.parse_args(argv)


def _matrices(rng, n: int, concentration: str):
    import numpy as np

    from cryogmm.geometry.so3 import random_rotations

    if concentration == "zero":
        return np.zeros((n, 3, 3))
    if concentration == "low":
        s = rng.uniform(0.0, 3.0, (n, 3))
    else:
        s = 10.0 ** rng.uniform(3.0, 7.0, (n, 3))
    u, v = random_rotations(rng, n), random_rotations(rng, n)
    return u @ (s[:, :, None] * np.swapaxes(v, 1, 2))


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)
    import numpy as np

    from cryogmm.samplers.matrix_fisher import bingham_matrix, sample_bingham, sample_matrix_fisher

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    sample_matrix_fisher(rng, np.zeros((2, 3, 3)))
    warm_up = time.perf_counter() - start
    _common.info(f"warm-up (numba load or compile): {warm_up:.2f} s")

    cases = []
    for n in args.sizes:
        for concentration in ("zero", "low", "high"):
            a = _matrices(rng, n, concentration)
            k = bingham_matrix(a)
            _, attempts = sample_bingham(rng, k)
            calls, eigh = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                sample_matrix_fisher(rng, a)
                t1 = time.perf_counter()
                np.linalg.eigh(k)
                t2 = time.perf_counter()
                calls.append(t1 - t0)
                eigh.append(t2 - t1)
            case = {
                "matrices": n,
                "concentration": concentration,
                "median_seconds_per_call": _common.median(calls),
                "median_microseconds_per_draw": 1e6 * _common.median(calls) / n,
                "acceptance_rate": float(n / attempts.sum()),
                "reference_numpy_eigh_median_seconds": _common.median(eigh),
            }
            eigh_per_matrix = 1e6 * case["reference_numpy_eigh_median_seconds"] / n
            _common.info(f"n={n:5d} {concentration:>4}: {case['median_microseconds_per_draw']:7.2f} µs/draw, "
                         f"acceptance {case['acceptance_rate']:.3f}, eigh {eigh_per_matrix:.2f} µs/matrix")
            cases.append(case)

    _common.dump({
        "benchmark": "matrix_fisher",
        "seed": args.seed,
        "repeats": args.repeats,
        "threads": args.threads,
        "warm_up_seconds": warm_up,
        "cases": cases,
        "git_commit": _common.git_commit(),
        "machine": _common.machine_info(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
