"""Simulate particle images of an atomic model with known poses (thesis section 3.1.1).

Each image is the exact projection of the molmap density of the model (atoms as Gaussians with
sigma = resolution / (pi sqrt 2), weighted by atomic number) in a uniformly random orientation,
shifted uniformly within a disc of radius --max-shift, plus optional white Gaussian noise at
signal-to-noise ratio --snr (variance of each clean image over variance of its noise). No CTF is
applied. The particle centre is the model's Z-weighted centroid. With --poses STAR the
orientations and shifts are taken from a RELION STAR file instead (its rows set --number).

Writes into the output folder:
  images.mrcs        the images (noisy when --snr is given)
  clean_images.mrcs  the noise-free images (only with --snr)
  particles.star     true poses, RELION 3.1 convention (optics: 300 kV, Cs 2.7 mm, Q0 0.1)
  reference.mrc      molmap at --reference-resolution on a box^3 grid, model centre at voxel
                     box//2 and MRC origin 0 (the RELION frame of the images)
  settings.json      every setting and the seed;  run.log  the log

Example:
    cryogmm simulate-images 1oel.pdb --number 25 --box 50 --pixel-size 4 --resolution 15 \\
        --reference-resolution 20 --snr 0.1 --max-shift 8 --seed 1 --output groel_images
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cryogmm.cli.simulate_map import check_model_path, check_sampling
from cryogmm.errors import InputError
from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.simulate import (add_noise, model_center, molmap, project_atoms, random_shifts,
                              sigma_for_resolution)

log = logging.getLogger(__name__)

VOLTAGE_IN_KV = 300.0
SPHERICAL_ABERRATION_IN_MM = 2.7
AMPLITUDE_CONTRAST = 0.1


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="atomic model (PDB or mmCIF, optionally gzipped)")
    parser.add_argument("--number", "-n", type=int, default=25, help="number of images (default 25)")
    parser.add_argument("--box", type=int, required=True, help="image size in pixels")
    parser.add_argument("--pixel-size", type=float, required=True, help="pixel size in Å")
    parser.add_argument("--resolution", type=float, required=True, help="resolution of the images in Å")
    parser.add_argument("--reference-resolution", type=float, default=None,
                        help="resolution of reference.mrc in Å (default: --resolution)")
    parser.add_argument("--snr", type=float, default=None,
                        help="signal-to-noise ratio (variance ratio); default: no noise")
    parser.add_argument("--max-shift", type=float, default=0.0,
                        help="largest in-plane shift of the particle centre in Å (default 0)")
    parser.add_argument("--poses", type=Path, default=None,
                        help="STAR file with rlnAngleRot/Tilt/Psi (and optional rlnOriginX/YAngst) to use "
                             "instead of random poses; its number of rows sets --number")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a fresh one, recorded in settings.json)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def _check_args(args: argparse.Namespace) -> None:
    if args.number < 1:
        raise InputError(f"--number {args.number}: must be at least 1")
    check_sampling(args.resolution, args.pixel_size, args.box)
    if args.box is None:
        raise InputError("--box is required")
    if args.reference_resolution is not None:
        if not math.isfinite(args.reference_resolution) or args.reference_resolution <= 0:
            raise InputError(f"--reference-resolution {args.reference_resolution}: must be a positive number of Å")
    if args.snr is not None and (not math.isfinite(args.snr) or args.snr <= 0):
        raise InputError(f"--snr {args.snr}: must be a positive number (leave it out for no noise)")
    if not math.isfinite(args.max_shift) or args.max_shift < 0:
        raise InputError(f"--max-shift {args.max_shift}: must be a non-negative number of Å")
    if args.seed is not None and args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be a non-negative integer")
    check_model_path(args.model)


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.atoms import read_atoms
    from cryogmm.io.mrc import write_map, write_stack
    from cryogmm.io.runs import RunFolder, write_settings
    from cryogmm.io.star import format_image_name, poses_to_columns, write_particles

    setup_logging(verbose=args.verbose)
    try:
        _check_args(args)
        run = RunFolder(args.output, args.force)  # refuses an existing folder without --force
        model = read_atoms(args.model)
        given_poses = _read_poses(args) if args.poses is not None else None
        reference_resolution = args.reference_resolution or args.resolution
        seed = int(args.seed if args.seed is not None else np.random.SeedSequence().entropy)
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            center = model_center(model.coordinates_in_angstroms, model.atomic_numbers)
            coordinates = model.coordinates_in_angstroms - center
            log.info("%s: %d atoms, centre (Z-weighted centroid) %s Å", args.model, model.n_atoms,
                     np.array2string(center, precision=2))
            _warn_if_outside(coordinates, args, max(args.resolution, reference_resolution))
            # independent streams, so poses do not change with the noise level
            pose_seed, shift_seed, noise_seed = np.random.SeedSequence(seed).spawn(3)
            if given_poses is not None:
                rotations, shifts = given_poses
                log.info("poses from %s", args.poses)
            else:
                rotations = random_rotations(np.random.default_rng(pose_seed), args.number)
                shifts = random_shifts(np.random.default_rng(shift_seed), args.number, args.max_shift)
            log.info("projecting %d images of %d px at %g Å/px, %g Å resolution", args.number,
                     args.box, args.pixel_size, args.resolution)
            images = project_atoms(coordinates, model.atomic_numbers, rotations, shifts,
                                   args.resolution, args.box, args.pixel_size)
            if args.snr is not None:
                write_stack(folder / "clean_images.mrcs", images, args.pixel_size)
                images = add_noise(np.random.default_rng(noise_seed), images, args.snr)
                log.info("added Gaussian noise at SNR %g", args.snr)
            write_stack(folder / "images.mrcs", images, args.pixel_size)

            particles = pd.DataFrame({"rlnImageName": [format_image_name(i, "images.mrcs")
                                                       for i in range(args.number)]})
            for name, values in poses_to_columns(rotations, shifts).items():
                particles[name] = values
            write_particles(folder / "particles.star", particles, {
                "pixel_size_in_angstroms": args.pixel_size,
                "image_size": args.box,
                "voltage_in_kv": VOLTAGE_IN_KV,
                "spherical_aberration_in_mm": SPHERICAL_ABERRATION_IN_MM,
                "amplitude_contrast": AMPLITUDE_CONTRAST,
            })

            grid = Grid.centered((args.box,) * 3, args.pixel_size)
            reference = molmap(coordinates, model.atomic_numbers, reference_resolution, grid)
            write_map(folder / "reference.mrc", reference, args.pixel_size)  # origin 0: RELION frame

            settings = {name: value for name, value in vars(args).items() if not name.startswith("_")}
            settings.update(seed=seed, model=str(Path(args.model).resolve()), output=str(Path(args.output).resolve()),
                            reference_resolution=reference_resolution,
                            model_center_in_angstroms=center,
                            sigma_in_angstroms=sigma_for_resolution(args.resolution),
                            voltage_in_kv=VOLTAGE_IN_KV,
                            spherical_aberration_in_mm=SPHERICAL_ABERRATION_IN_MM,
                            amplitude_contrast=AMPLITUDE_CONTRAST)
            write_settings(folder, "simulate-images", settings, seed)
            log.info("seed %d; wrote %s", seed, args.output)
    finally:
        close_logging()
    return 0


def _read_poses(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Rotations and shifts from --poses; sets args.number to the number of rows."""
    from cryogmm.io.star import columns_to_poses, read_particles

    table = read_particles(args.poses)
    missing = [c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") if c not in table.particles.columns]
    if missing:
        raise InputError(f"--poses {args.poses}: no {', '.join(missing)} column; give a STAR file with poses")
    rotations, shifts = columns_to_poses(table.particles, table.pixel_size_in_angstroms)
    if not (np.all(np.isfinite(rotations)) and np.all(np.isfinite(shifts))):
        raise InputError(f"--poses {args.poses}: angles or origins are not finite numbers")
    args.number = rotations.shape[0]
    return rotations, shifts


def _warn_if_outside(coordinates: np.ndarray, args: argparse.Namespace, resolution: float) -> None:
    """Log a warning when a rotated, shifted particle can reach past the image edge."""
    radius = float(np.linalg.norm(coordinates, axis=1).max())
    reach = radius + args.max_shift + 3 * sigma_for_resolution(resolution)
    half_box = (args.box // 2 - 1) * args.pixel_size
    if reach > half_box:
        log.warning("the particle (radius %.1f Å, plus shift and 3 sigma: %.1f Å) can reach past the "
                    "box edge at %.1f Å; use a larger --box or a smaller --max-shift",
                    radius, reach, half_box)
