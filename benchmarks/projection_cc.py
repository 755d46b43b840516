"""Cross-correlations of input images with the projections of finished `cryogmm abinitio` runs.

Each RUN's pseudoatoms.pdb is projected along the poses of its orientations.star (origins
included) onto the grid of IMAGES, and each input is correlated with its projection (Eqn. 3.3), so
that runs with different preprocessing (the Poisson model's --prepare, the Gaussian model on the
inputs as they are) are scored against the same images. JSON on stdout.

Example:
    python benchmarks/projection_cc.py betagal_class_averages.mrcs --pixel-size 3.54 run_gaussian run_poisson
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--pixel-size", type=float, default=None)
    args = parser.parse_args(argv)
    import numpy as np

    from cryogmm.grid import Grid
    from cryogmm.io.mrc import read_stack
    from cryogmm.io.pseudoatoms import read_pseudoatoms
    from cryogmm.io.star import columns_to_poses, read_particles
    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.mixture import GaussianMixture, evaluate, project

    stack = read_stack(_common.require_file(args.images, "image stack"), args.pixel_size)
    images, pixel = np.asarray(stack.data, dtype=np.float64), stack.voxel_size_in_angstroms
    n = images.shape[-1]
    grid = Grid.centered((n, n), pixel)
    result = {"images": str(args.images), "runs": {}}
    for run in args.runs:
        atoms = read_pseudoatoms(run / "pseudoatoms.pdb")  # in the map's frame: origin at the corner
        mixture = GaussianMixture(atoms.means_in_angstroms - (n // 2) * pixel, atoms.weights,
                                  atoms.precision_per_square_angstrom)
        rotations, shifts = columns_to_poses(read_particles(run / "orientations.star").particles)
        ccs = [cross_correlation(image, evaluate(project(mixture, r, t), grid))
               for image, r, t in zip(images, rotations, shifts)]
        result["runs"][str(run)] = {"median": float(np.median(ccs)), "lowest": float(min(ccs)),
                                    "highest": float(max(ccs)), "all": [float(c) for c in ccs]}
        _common.info(f"{run}: median {np.median(ccs):.4f}, lowest {min(ccs):.4f}, highest {max(ccs):.4f}")
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
