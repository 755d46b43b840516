"""Speed and accuracy of CTF deconvolution of class averages (thesis section 4.1.2, Eqn. 4.3).

50 classes of the built-in asymmetric phantom (about 100 Å across) are projected at random
rotations (molmap density at 6 Å resolution, 128 x 128 box, 1.5 Å pixels). Each class has 100
particles with a mean defocus drawn uniformly from 0.8-3.0 um (300 kV, Cs 2.7 mm, amplitude
contrast 0.1, 500 Å astigmatism at a random angle), split into 7 defocus groups of equal width
as in the thesis. A group average is what averaging its aligned particles gives under the linear
model, z_g = polarity * (mean member CTF) * y + noise / sqrt(members), with white particle noise
at SNR 0.05 (`cryogmm.simulate.images.add_noise`'s definition: the variance of the clean projection
over the box, divided by the noise variance) and polarity -1 (bright particles, as RELION extracts
them). Empty groups get weight 0.

`cryogmm.preprocess.deconvolve.deconvolve` runs with its defaults (alpha by GCV, polarity
"auto") `--repeats` times after one untimed warm-up call; the JSON gives the median wall time,
the time per class, the L-BFGS-B iterations, the chosen alpha and polarity, and the median
cross-correlation with the clean projection (thesis Eqn. 3.3, not mean-subtracted, and Pearson).
For comparison it also runs single-frame deconvolution (Eqn. 4.4) of each class average (all
particles, with the count-weighted mean CTF), timed once.

Example:
    python benchmarks/deconvolve.py > deconvolve.json
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
    parser.add_argument("--classes", type=int, default=50, help="class averages (default 50)")
    parser.add_argument("--box", type=int, default=128, help="box size in pixels (default 128)")
    parser.add_argument("--pixel-size", type=float, default=1.5, help="pixel size in Å (default 1.5)")
    parser.add_argument("--groups", type=int, default=7, help="defocus groups per class (default 7)")
    parser.add_argument("--particles", type=int, default=100, help="particles per class (default 100)")
    parser.add_argument("--snr", type=float, default=0.05, help="SNR of one particle (default 0.05)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    return parser.parse_args(argv)


def simulate(args, rng):
    """(truth (C, n, n), group images (C, G, n, n), group CTFs, weights (C, G), averages, mean CTFs)."""
    import numpy as np

    from cryogmm.forward.ctf import CTFParameters, apply_ctf, ctf_images
    from cryogmm.geometry.so3 import random_rotations
    from cryogmm.simulate.images import project_atoms
    from cryogmm.simulate.phantom import asymmetric_phantom

    c, g, n, p = args.classes, args.groups, args.box, args.particles
    coordinates, atomic_numbers = asymmetric_phantom()
    truth = project_atoms(coordinates, atomic_numbers, random_rotations(rng, c), None, 6.0, n,
                          args.pixel_size, dtype=np.float64)
    edges = np.linspace(8000.0, 30000.0, g + 1)
    images = np.zeros((c, g, n, n))
    ctfs = np.zeros((c, g, n, n))
    weights = np.zeros((c, g))
    for i in range(c):
        defocus = rng.uniform(edges[0], edges[-1], p)
        group = np.clip(np.searchsorted(edges, defocus, side="right") - 1, 0, g - 1)
        member_ctfs = ctf_images(CTFParameters(defocus + 250.0, defocus - 250.0, rng.uniform(0, 180, p)),
                                 n, args.pixel_size)
        noise_sigma = np.sqrt(truth[i].var() / args.snr)
        for j in range(g):
            members = group == j
            weights[i, j] = members.sum()
            if weights[i, j] == 0:
                continue
            ctfs[i, j] = member_ctfs[members].mean(axis=0)
            images[i, j] = (-apply_ctf(truth[i], ctfs[i, j])
                            + rng.normal(0.0, noise_sigma / np.sqrt(weights[i, j]), (n, n)))
    fraction = weights / weights.sum(axis=1, keepdims=True)
    averages = np.einsum("cg,cgyx->cyx", fraction, images)[:, None]
    mean_ctfs = np.einsum("cg,cgyx->cyx", fraction, ctfs)[:, None]
    return truth, images, ctfs, weights, averages, mean_ctfs


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)

    import numpy as np

    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.preprocess.deconvolve import deconvolve

    def scores(images, truth):
        cc = [cross_correlation(y, t) for y, t in zip(images, truth)]
        pearson = [float(np.corrcoef(y.ravel(), t.ravel())[0, 1]) for y, t in zip(images, truth)]
        return {"cross_correlation_median": _common.median(cc), "cross_correlation_min": float(np.min(cc)),
                "pearson_median": _common.median(pearson)}

    rng = np.random.default_rng(args.seed)
    _common.info(f"simulating {args.classes} classes of {args.box} px with {args.groups} groups")
    truth, images, ctfs, weights, averages, mean_ctfs = simulate(args, rng)

    deconvolve(images[:2], ctfs[:2], weights[:2])  # warm-up (imports, FFT plans)
    times = []
    for repeat in range(args.repeats):
        t0 = time.perf_counter()
        result = deconvolve(images, ctfs, weights)
        times.append(time.perf_counter() - t0)
        _common.info(f"run {repeat + 1}: {times[-1]:.2f} s")
    multi = {
        "wall_time_in_seconds_median": _common.median(times),
        "wall_times_in_seconds": [round(t, 3) for t in times],
        "time_per_class_in_seconds": _common.median(times) / args.classes,
        "iterations_median": _common.median(result.iterations),
        "iterations_max": int(result.iterations.max()),
        "converged": int(result.converged.sum()),
        "alpha_rule": result.alpha_rule,
        "alpha_median": _common.median(result.alpha),
        "alpha_range": [float(result.alpha.min()), float(result.alpha.max())],
        "polarity": result.polarity,
        "polarity_rule": result.polarity_rule,
        "min_pixel_value": float(result.images.min()),
        **scores(result.images, truth),
    }
    # the deconvolve command's default solves in a box twice the size with the image zero outside
    # the original box (linear convolution): time it with the same group images zero-padded and
    # CTFs of the same defoci on the 2n grid
    from cryogmm.forward.ctf import CTFParameters, ctf_images

    m = 2 * args.box
    padded = np.zeros(images.shape[:2] + (m, m))
    lo = (m - args.box) // 2
    padded[..., lo:lo + args.box, lo:lo + args.box] = images
    centres = np.linspace(8000.0, 30000.0, args.groups + 1)
    group_defocus = 0.5 * (centres[1:] + centres[:-1])
    padded_ctfs = ctf_images(CTFParameters(group_defocus, group_defocus), m, args.pixel_size)[None]
    padded_times = []
    for _ in range(max(1, args.repeats // 2)):
        t0 = time.perf_counter()
        deconvolve(padded, padded_ctfs, weights, support_box=args.box)
        padded_times.append(time.perf_counter() - t0)
    multi["padded_box"] = m
    multi["padded_wall_time_in_seconds_median"] = _common.median(padded_times)
    t0 = time.perf_counter()
    single_result = deconvolve(averages, mean_ctfs, None)
    single = {
        "wall_time_in_seconds": time.perf_counter() - t0,
        "iterations_median": _common.median(single_result.iterations),
        "alpha_median": _common.median(single_result.alpha),
        "polarity": single_result.polarity,
        **scores(single_result.images, truth),
    }
    _common.dump({
        "benchmark": "deconvolve",
        "settings": {key: value for key, value in vars(args).items()},
        "particles_per_group_mean": float(weights[weights > 0].mean()),
        "multi_frame": multi,
        "single_frame": single,
        "machine": _common.machine_info(),
        "git_commit": _common.git_commit(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
