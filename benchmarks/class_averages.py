"""Simulated Pol II particles with CTF and classes, and their aligned class averages.

1. Times the acceptance simulation (`cryogmm simulate-images` on Pol II: 25 classes, defocus
   0.8-3.0 µm in 7 groups of 20 particles per class, SNR 0.5, 3500 images of 64 px at 3 Å).
2. Checks the class averaging on the noise-free images of that run: each defocus-group average
   against the group CTF applied to the class projection (the model of multi-frame
   deconvolution), in a padded 128 px box because the simulated CTF is a linear convolution;
   Pearson correlation and largest error relative to the group image's largest value, inside
   the disc 2 px from the box edge.
3. A CTF-free, noise-free run (25 classes of 20 particles, shifts up to 6 Å): class averages
   against the class projections (Pearson correlation in the disc and over the whole box).
The JSON on stdout holds the times (wall, one run each unless --repeats) and the figures.

Example:
    python benchmarks/class_averages.py > class_averages.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)

ACCEPTANCE = ["--box", "64", "--pixel-size", "3", "--resolution", "15", "--reference-resolution", "20",
              "--classes", "25", "--defocus-range", "0.8", "3.0", "--defocus-groups", "7",
              "--particles-per-group", "20", "--snr", "0.5", "--seed", "1"]
CTF_FREE = ["--box", "64", "--pixel-size", "3", "--resolution", "15", "--classes", "25",
            "--particles-per-class", "20", "--max-shift", "6", "--seed", "2"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz",
                        help="Pol II atomic model (default: the shared data folder)")
    parser.add_argument("--repeats", type=int, default=1, help="timed simulations (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    return parser.parse_args(argv)


def _simulate(model: Path, output: Path, options: list[str]) -> float:
    from cryogmm.cli import main

    start = time.perf_counter()
    if main(["simulate-images", str(model), *options, "--output", str(output), "--force"]) != 0:
        sys.exit(f"error: cryogmm simulate-images failed for {output}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)
    model_path = _common.require_file(args.model, "the Pol II model")

    import numpy as np

    from cryogmm.geometry.so3 import euler_to_matrix
    from cryogmm.io.atoms import read_atoms
    from cryogmm.io.mrc import read_stack
    from cryogmm.io.star import columns_to_poses, ctf_parameters, read_particles
    from cryogmm.preprocess.class_average import class_averages
    from cryogmm.simulate import model_center, project_atoms

    def pearson(a, b):
        return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])

    box, pixel, padded = 64, 3.0, 128
    y, x = np.mgrid[:box, :box] - box // 2
    disc = x * x + y * y < (box // 2 - 2) ** 2
    result = {"machine": _common.machine_info(), "commit": _common.git_commit(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "polII_particles"
        times = [_simulate(model_path, folder, ACCEPTANCE) for _ in range(args.repeats)]
        _common.info(f"acceptance simulation: {times} s")
        result["acceptance_command"] = "cryogmm simulate-images MODEL " + " ".join(ACCEPTANCE)
        result["acceptance_wall_seconds"] = times
        result["acceptance_files"] = sorted(p.name for p in folder.iterdir())

        table = read_particles(folder / "particles.star")
        particles = table.particles
        clean = read_stack(folder / "clean_images.mrcs").data
        _, shifts = columns_to_poses(particles)
        start = time.perf_counter()
        averages = class_averages(clean, particles["rlnAnglePsi"], shifts, particles["rlnClassNumber"], pixel,
                                  ctf_parameters=ctf_parameters(table), n_defocus_groups=7, ctf_box=padded)
        result["class_averages_seconds"] = time.perf_counter() - start
        result["group_weights"] = sorted(set(averages.group_weights.ravel().tolist()))
        # the class projections in the padded box, from the atoms and class_poses.star
        atoms = read_atoms(model_path)
        coordinates = atoms.coordinates_in_angstroms - model_center(atoms.coordinates_in_angstroms,
                                                                    atoms.atomic_numbers)
        poses = read_particles(folder / "class_poses.star").particles
        truth = project_atoms(coordinates, atoms.atomic_numbers,
                              euler_to_matrix(poses["rlnAngleRot"], poses["rlnAngleTilt"], 0.0), None, 15.0,
                              padded, pixel, dtype=np.float64)
        lo = padded // 2 - box // 2
        correlations, errors = [], []
        for c in range(truth.shape[0]):
            transform = np.fft.fft2(np.fft.ifftshift(truth[c]))
            for g in range(averages.n_groups):
                model = averages.polarity * np.fft.fftshift(np.fft.ifft2(averages.group_ctfs[c, g] * transform).real)
                model = model[lo:lo + box, lo:lo + box]
                z = averages.group_images[c, g]
                correlations.append(pearson(z[disc], model[disc]))
                errors.append(float(np.abs(z - model)[disc].max() / np.abs(z).max()))
        result["group_model_pearson_min"] = min(correlations)
        result["group_model_pearson_median"] = float(np.median(correlations))
        result["group_model_max_relative_error"] = max(errors)

        folder = Path(tmp) / "polII_ctf_free"
        result["ctf_free_wall_seconds"] = _simulate(model_path, folder, CTF_FREE)
        particles = read_particles(folder / "particles.star").particles
        images = read_stack(folder / "images.mrcs").data
        truth = read_stack(folder / "class_projections.mrcs").data
        _, shifts = columns_to_poses(particles)
        averages = class_averages(images, particles["rlnAnglePsi"], shifts, particles["rlnClassNumber"], pixel)
        in_disc = [pearson(a[disc], t[disc]) for a, t in zip(averages.averages, truth)]
        whole = [pearson(a, t) for a, t in zip(averages.averages, truth)]
        result["ctf_free_class_average_pearson_disc_min"] = min(in_disc)
        result["ctf_free_class_average_pearson_disc_median"] = float(np.median(in_disc))
        result["ctf_free_class_average_pearson_box_min"] = min(whole)
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
