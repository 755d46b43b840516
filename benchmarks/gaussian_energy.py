"""Energy+gradient evaluations per second of the Gaussian-noise model next to the Poisson Gibbs step.

Data: Pol II (1wcm) projected at 15 Å in `--images` random orientations, `--box` px at
`--pixel-size` Å, Gaussian noise at SNR 10 (thesis 5.3.1); a mixture of `--components` components
(sigma 4 Å, the refinement's size) drawn from the atoms. Timed, each the median of `--repeats`
runs: one energy+gradient evaluation of the Gaussian model (forward.gaussian, the k-sigma numba
kernel; what each HMC leapfrog step costs), one residual-only evaluation (a pose move), and one
Gibbs step of the Poisson model (samplers.projected.ProjectedGibbsSampler with mixture, rotations
and translations, on the same images' positive part discretised to `--counts` counts each). An
HMC trajectory of L leapfrog steps costs L + 1 evaluations: its cost in Poisson steps is reported.

Table on stderr, one JSON object on stdout.

Example:
    python benchmarks/gaussian_energy.py --threads 1 > gaussian_energy.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz")
    parser.add_argument("--images", type=int, default=25)
    parser.add_argument("--box", type=int, default=50)
    parser.add_argument("--pixel-size", type=float, default=4.0)
    parser.add_argument("--components", type=int, default=500)
    parser.add_argument("--counts", type=int, default=10000)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="numba/BLAS threads (default 1)")
    args = parser.parse_args(argv)
    _common.limit_threads(args.threads)
    import numpy as np

    from cryogmm.forward.gaussian import energy_and_gradients_on_grid
    from cryogmm.geometry.so3 import random_rotations
    from cryogmm.io.atoms import read_atoms
    from cryogmm.kernels.gaussian_noise import residual_sums_of_squares_kernel
    from cryogmm.mixture import GaussianMixture
    from cryogmm.pipelines.abinitio import images_to_counts
    from cryogmm.samplers.projected import ProjectedGibbsSampler, ProjectedState, default_projection_prior
    from cryogmm.simulate.images import add_noise, project_atoms

    atoms = read_atoms(_common.require_file(args.model, "atomic model"))
    z = atoms.atomic_numbers
    xyz = atoms.coordinates_in_angstroms - (atoms.coordinates_in_angstroms * z[:, None]).sum(0) / z.sum()
    rng = np.random.default_rng(1)
    rotations = random_rotations(rng, args.images)
    clean = project_atoms(xyz, z, rotations, None, 15.0, args.box, args.pixel_size, dtype=np.float64)
    images = add_noise(rng, clean, 10.0)
    means = xyz[rng.choice(len(xyz), args.components, replace=False)]
    size = 1.0 / 4.0**2
    origin = np.full(2, -(args.box // 2) * args.pixel_size)
    translations = np.zeros((args.images, 2))
    options = dict(scale=np.full(args.images, float(images.max())), size=size,
                   noise_precision=np.full(args.images, 1.0), mean_precision=1e-4)

    def timed(function, n):
        function()  # compile / warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(n):
                function()
            times.append((time.perf_counter() - start) / n)
        return float(np.median(times))

    gradient = timed(lambda: energy_and_gradients_on_grid(images, origin, args.pixel_size, means, rotations,
                                                          translations, **options), 10)
    centres = np.ascontiguousarray((means @ rotations.transpose(0, 2, 1))[..., :2])
    work = np.empty_like(images)
    residual = timed(lambda: residual_sums_of_squares_kernel(images, centres, options["scale"], size, origin,
                                                             args.pixel_size, 4.0, work), 10)
    data = images_to_counts(np.clip(images, 0.0, None), args.pixel_size, args.box, args.counts)
    sampler = ProjectedGibbsSampler(data, args.components, default_projection_prior(data),
                                    update_rotations=True, update_translations=True)
    mixture = GaussianMixture(means, np.full(args.components, 1.0 / args.components), size)
    state = ProjectedState(mixture, rotations, translations)
    step_rng = np.random.default_rng(2)
    poisson = timed(lambda: sampler.step(step_rng, state), 3)
    result = {
        "machine": _common.machine_info(), "threads": args.threads, "images": args.images, "box": args.box,
        "components": args.components, "repeats": args.repeats,
        "gaussian_energy_gradient_seconds": gradient,
        "gaussian_energy_gradient_per_second": 1.0 / gradient,
        "gaussian_residual_only_seconds": residual,
        "poisson_gibbs_step_seconds": poisson, "poisson_counts_per_image": args.counts,
        "hmc_trajectory_leapfrog_steps": args.leapfrog,
        "hmc_trajectory_in_poisson_steps": (args.leapfrog + 1) * gradient / poisson,
    }
    _common.info(f"energy+gradient {1e3 * gradient:.1f} ms ({1 / gradient:.1f}/s), residual only "
                 f"{1e3 * residual:.1f} ms, Poisson Gibbs step {1e3 * poisson:.1f} ms; an HMC trajectory of "
                 f"{args.leapfrog} leapfrog steps = {result['hmc_trajectory_in_poisson_steps']:.2f} Poisson steps")
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
