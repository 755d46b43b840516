"""Speed and centring accuracy of `prepare_images` (automatic masks, centring, clipping).

Cases: the 16 real beta-galactosidase RELION class averages (100 px, 3.54 Å/px) as they are; the
same images repeated to 256, each moved by a known random shift (up to ±8 px on each axis, Fourier
phase ramp), with a constant background of 0.7 and Gaussian noise (sd 0.05, the particles peak at
3 to 7); and those 256 zero-padded to a 200 px box. Each case is timed `--repeats` times after one
warm-up; the median time and the error of the recovered shifts (against the shift of the
unmoved image plus the injected one) go to the JSON on stdout, with the mask fractions.

Example:
    python benchmarks/prepare.py > prepare.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)

PIXEL = 3.54  # the header of the shared stack says 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack", nargs="?", default=str(_common.SHARED_DATA / "class_averages" /
                                                        "betagal_class_averages.mrcs"),
                        help="class averages (default: the shared betagal stack)")
    for flag, default, text in (("--repeats", 3, "timed runs per case"), ("--seed", 0, "seed of the shifts and noise"),
                                ("--threads", 1, "numba/OpenMP/BLAS threads")):
        parser.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)

    import numpy as np

    from cryogmm.io.mrc import read_stack
    from cryogmm.pipelines.prepare import prepare_images
    from cryogmm.preprocess.center import fourier_shift

    path = _common.require_file(args.stack, "the class-average stack")
    images = read_stack(path, PIXEL).data.astype(np.float64)
    rng = np.random.default_rng(args.seed)
    reference = prepare_images(images, PIXEL).shifts_in_angstroms
    repeat = np.arange(256) % len(images)
    injected = rng.uniform(-8.0, 8.0, (256, 2))
    moved = fourier_shift(images[repeat], injected) + 0.7 + 0.05 * rng.standard_normal((256,) + images.shape[1:])
    pad = (200 - images.shape[-1]) // 2
    padded = np.pad(moved - 0.7, ((0, 0), (pad, pad), (pad, pad))) + 0.7
    cases = {"betagal_16x100": (images, None), "moved_noisy_256x100": (moved, injected),
             "moved_noisy_256x200": (padded, injected)}
    results = []
    for name, (stack, truth) in cases.items():
        _common.info(f"{name}: {stack.shape}")
        prepared = prepare_images(stack, PIXEL)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            prepared = prepare_images(stack, PIXEL)
            seconds.append(time.perf_counter() - t0)
        row = {"case": name, "n_images": int(stack.shape[0]), "box": int(stack.shape[-1]),
               "median_seconds": _common.median(seconds), "seconds": seconds,
               "mask_fraction_mean": float(prepared.masked_fractions.mean()),
               "mask_fraction_range": [float(prepared.masked_fractions.min()), float(prepared.masked_fractions.max())],
               "shift_length_median_in_angstroms": _common.median(np.hypot(*prepared.shifts_in_angstroms.T)),
               "notes": list(prepared.notes)}
        if truth is not None:
            error = prepared.shifts_in_angstroms - (truth * PIXEL + reference[repeat])
            row["shift_error_in_angstroms"] = {"median": _common.median(np.hypot(*error.T)),
                                               "max": float(np.hypot(*error.T).max())}
        results.append(row)
    _common.dump({"benchmark": "prepare", "stack": str(path), "pixel_size_in_angstroms": PIXEL,
                  "git_commit": _common.git_commit(), "machine": _common.machine_info(), "cases": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
