"""Run the whole ab initio pipeline on a built-in asymmetric phantom (no download, no data files).

The demo projects the phantom's density (15 Å) in 25 random directions (40 x 40 px at 4 Å/px),
then infers a 3D model and the 25 orientations from the images alone, as `cryogmm abinitio`
does (2 restarts, K = 500 in the refinement), and compares the result with the density the
images were projected from (phantom_15A.mrc; aligned FSC, cross-correlation) and with the true
poses (rotation errors). The FSC between two maps that are both blurred to 15 Å says how well
the truth was recovered, not the resolution of the result: the images hold no detail finer than
15 Å. It writes everything an abinitio run writes, plus the inputs (images.mrcs,
true_poses.star, phantom_15A.mrc), into --output (default ./cryogmm-demo) and prints where the
results are. It takes about a minute.

Example:
    cryogmm demo --output demo_run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

log = logging.getLogger(__name__)

DEMO_RESOLUTION_IN_ANGSTROMS = 15.0
DEMO_PIXEL_SIZE_IN_ANGSTROMS = 4.0
DEMO_BOX = 40
DEMO_IMAGES = 25
TRUTH_NAME = "phantom_15A.mrc"


def _resolution(value: float | None) -> str:
    nyquist = 2 * DEMO_PIXEL_SIZE_IN_ANGSTROMS
    return f"none (above 0.5 up to Nyquist, {nyquist:g} Å)" if value is None else f"{value:.1f} Å"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", type=Path, default=Path("cryogmm-demo"), help="output folder (default ./cryogmm-demo)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.cli.abinitio import write_outputs
    from cryogmm.errors import InputError
    from cryogmm.geometry.so3 import random_rotations
    from cryogmm.grid import Grid
    from cryogmm.io.images import InputImages
    from cryogmm.io.mrc import write_map, write_stack
    from cryogmm.io.results import star_optics
    from cryogmm.io.runs import RunFolder, write_json
    from cryogmm.io.star import format_image_name, poses_to_columns, write_particles
    from cryogmm.pipelines.abinitio import AbinitioSettings, run_abinitio, settings_dict
    from cryogmm.simulate.images import project_atoms
    from cryogmm.simulate.molmap import molmap
    from cryogmm.simulate.phantom import asymmetric_phantom

    setup_logging()
    try:
        if args.seed < 0:
            raise InputError(f"--seed {args.seed}: must be a non-negative integer")
        run = RunFolder(args.output, args.force)
        with run as folder:
            setup_logging(folder / "run.log")
            rng = np.random.default_rng(args.seed)
            coordinates, atomic_numbers = asymmetric_phantom()
            rotations = random_rotations(rng, DEMO_IMAGES)
            images = project_atoms(coordinates, atomic_numbers, rotations, None, DEMO_RESOLUTION_IN_ANGSTROMS,
                                   DEMO_BOX, DEMO_PIXEL_SIZE_IN_ANGSTROMS, dtype=np.float64)
            # the density whose projections the images are (same atoms, same 15 Å Gaussians)
            truth = molmap(coordinates, atomic_numbers, DEMO_RESOLUTION_IN_ANGSTROMS,
                           Grid.centered((DEMO_BOX,) * 3, DEMO_PIXEL_SIZE_IN_ANGSTROMS))
            write_stack(folder / "images.mrcs", images, DEMO_PIXEL_SIZE_IN_ANGSTROMS)
            write_map(folder / TRUTH_NAME, truth, DEMO_PIXEL_SIZE_IN_ANGSTROMS)
            names = [format_image_name(i, "images.mrcs") for i in range(DEMO_IMAGES)]
            write_particles(folder / "true_poses.star",
                            pd.DataFrame({"rlnImageName": names, **poses_to_columns(rotations), "rlnOpticsGroup": 1}),
                            star_optics(DEMO_PIXEL_SIZE_IN_ANGSTROMS, DEMO_BOX))
            log.info("phantom: %d atoms projected in %d random directions (%d px at %g Å/px, %g Å resolution)",
                     coordinates.shape[0], DEMO_IMAGES, DEMO_BOX, DEMO_PIXEL_SIZE_IN_ANGSTROMS,
                     DEMO_RESOLUTION_IN_ANGSTROMS)
            settings = AbinitioSettings(n_restarts=2, refine_box=None)  # the refinement on the 40 px images
            result = run_abinitio(images, DEMO_PIXEL_SIZE_IN_ANGSTROMS, settings, args.seed,
                                  jobs=min(2, os.cpu_count() or 1), progress=not args.quiet and sys.stderr.isatty())
            data = InputImages(images, DEMO_PIXEL_SIZE_IN_ANGSTROMS, names, folder / "images.mrcs")
            # the inputs are read from the temporary folder and recorded under their final paths
            outputs = SimpleNamespace(images=folder / "images.mrcs", reference=folder / TRUTH_NAME,
                                      true_poses=folder / "true_poses.star", seed=args.seed, output=args.output,
                                      demo=True)
            summary = write_outputs(folder, outputs, data, images, result, args.seed,
                                    {"seed": args.seed, **settings_dict(settings)}, None)
            reference = summary["reference"]
            reference["compared"] = (f"map.mrc (inferred from the {DEMO_IMAGES} images alone) against {TRUTH_NAME}, "
                                     f"the density the images were projected from ({DEMO_RESOLUTION_IN_ANGSTROMS:g} Å)")
            reference["note"] = ("both maps are blurred to 15 Å: the FSC says how well the truth was recovered, "
                                 "not the resolution of the result (the images hold no finer detail)")
            write_json(folder / "summary.json", summary)
            write_run_report(folder, args)
            errors = summary["rotation_errors"]["refinement"]
            log.info("ab initio in %.1f s. %s: FSC 0.5 at %s, cross-correlation %.4f; %s. %d of %d orientations "
                     "within 5 degrees of the true poses (median error %.2f degrees)",
                     result.timings["total_seconds"], reference["compared"],
                     _resolution(reference["fsc_0.5_in_angstroms"]), reference["cross_correlation"],
                     reference["note"], errors["within_5_degrees"], DEMO_IMAGES, errors["median_degrees"])
        print(f"demo results in {Path(args.output).resolve()}: map.mrc (= {result.final_map.source}.mrc), "
              f"pseudoatoms.pdb/.cif, orientations.star, "
              f"summary.json, restarts.png, projections.png, map_slices.png, fsc.png, run.log (open map.mrc and "
              f"{TRUTH_NAME} together in ChimeraX)")
    finally:
        close_logging()
    return 0
