"""Timing of direct Fourier inversion with known poses (thesis section 3.2.3).

A random 3D Gaussian mixture (30 components, sigma 6 Å, means within ±40 Å) is projected
exactly (`mixture.project`) at random rotations with random in-plane shifts (up to 10 Å), and
reconstructed with `cryogmm.reconstruction.fourier_inversion` (padding factor 2). Two cases:
25 images of 50 x 50 (the thesis' 25 class averages) and 1000 images of 64 x 64, 3 Å pixels.
Each is timed `--repeats` times after one warm-up call (which loads or compiles the numba
kernel; its time is reported too); the median goes to the JSON on stdout, with the Pearson
correlation of the map with the mixture evaluated on the same grid.

Example:
    python benchmarks/fourier_inversion.py > fourier_inversion.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)

CASES = ((25, 50), (1000, 64))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixel-size", type=float, default=3.0, help="pixel size in Å (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)

    import numpy as np

    from cryogmm.geometry.so3 import random_rotations
    from cryogmm.grid import Grid
    from cryogmm.mixture import GaussianMixture, evaluate, project
    from cryogmm.reconstruction.fourier_inversion import fourier_inversion
    from cryogmm.simulate.images import random_shifts

    rng = np.random.default_rng(args.seed)
    pixel = args.pixel_size
    mixture = GaussianMixture(rng.uniform(-40, 40, (30, 3)), rng.dirichlet(np.ones(30)), 1 / 6.0**2)
    cases = []
    for n_images, box in CASES:
        rotations = random_rotations(rng, n_images)
        shifts = random_shifts(rng, n_images, 10.0)
        grid = Grid.centered((box, box), pixel)
        images = np.stack([evaluate(project(mixture, a, np.r_[t, 0.0]), grid).astype(np.float32)
                           for a, t in zip(rotations, shifts)])
        truth = evaluate(mixture, Grid.centered((box, box, box), pixel))
        t0 = time.perf_counter()
        fourier_inversion(images, rotations, shifts, pixel)
        first = time.perf_counter() - t0
        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            volume = fourier_inversion(images, rotations, shifts, pixel)
            seconds.append(time.perf_counter() - t0)
        correlation = float(np.corrcoef(volume.ravel(), truth.ravel())[0, 1])
        cases.append({"n_images": n_images, "box": box, "padded_box": 2 * box,
                      "median_seconds": _common.median(seconds), "seconds": seconds,
                      "first_call_seconds": first, "pearson_correlation_vs_mixture_map": correlation})
        _common.info(f"{n_images} images of {box}x{box}: median {cases[-1]['median_seconds']:.3f} s "
                     f"(first call {first:.3f} s), correlation {correlation:.4f}")

    _common.dump({
        "benchmark": "fourier_inversion",
        "git_commit": _common.git_commit(),
        "machine": _common.machine_info(),
        "settings": {"pixel_size_in_angstroms": pixel, "n_components": 30, "sigma_in_angstroms": 6.0,
                     "max_shift_in_angstroms": 10.0, "padding_factor": 2, "repeats": args.repeats,
                     "seed": args.seed, "threads": args.threads},
        "cases": cases,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
