"""Simulate particle images of an atomic model with known poses, CTF and noise (thesis 3.1.1, 4.1).

Each image is the exact projection of the molmap density of the model (atoms as Gaussians with
sigma = resolution / (pi sqrt 2), weighted by atomic number) in a uniformly random orientation,
shifted uniformly within a disc of radius --max-shift, plus optional white Gaussian noise at
signal-to-noise ratio --snr (variance of each clean image, CTF included, over the variance of
its noise). The particle centre is the model's Z-weighted centroid. With --poses STAR the
orientations and shifts are taken from a RELION STAR file instead (its rows set --number).

CTF (--defocus-range MIN MAX, in µm): each image is convolved with -CTF (300 kV, Cs 2.7 mm,
amplitude contrast 0.1; cryogmm.forward.ctf), so particles are BRIGHT on a zero background as in
RELION-extracted particles (polarity -1, recorded in settings.json). The convolution is linear:
the projection is made in a box twice as large and cropped after filtering. The mean defocus is
uniform in the range, or with --defocus-groups G takes the values linspace(MIN, MAX, G) equally
often (particle i of a class gets value i mod G); --astigmatism A (Å) sets U - V = A with a
uniformly random angle. Per-particle rlnDefocusU/V (Å) and rlnDefocusAngle (degrees) are written.

Classes (--classes C with --particles-per-class N, or --defocus-groups G --particles-per-group M
giving N = G M): C random viewing directions (rot_c, tilt_c); each particle of class c has the
pose (rot_c, tilt_c, psi) with psi uniform in [-180, 180) and a random shift, and rlnClassNumber
c (1-based). Particles are stored class by class. Each class is projected once on a grid 3x
finer than the pixels and every particle image is interpolated from it (cubic spline; relative
error ~1e-5 at 15 Å resolution and 3 Å pixels), which costs C projections instead of C N.

Writes into the output folder:
  images.mrcs             the images (noisy when --snr is given)
  clean_images.mrcs       the noise-free images, CTF included (only with --snr)
  particles.star          true poses (and CTF, classes), RELION 3.1 convention
                          (optics: 300 kV, Cs 2.7 mm, Q0 0.1)
  class_projections.mrcs  (with --classes) the CTF-free projection of each class at pose
                          (rot_c, tilt_c, 0), unshifted: the truth of class averaging/deconvolution
  class_poses.star        (with --classes) those C poses, one row per class projection
  reference.mrc           molmap at --reference-resolution on a box^3 grid, model centre at voxel
                          box//2 and MRC origin 0 (the RELION frame of the images)
  reference_slices.png    central slices of reference.mrc
  settings.json           every setting and the seed;  run.log  the log

Examples:
    cryogmm simulate-images 1oel.pdb --number 25 --box 50 --pixel-size 4 --resolution 15 \\
        --reference-resolution 20 --snr 0.1 --max-shift 8 --seed 1 --output groel_images
    cryogmm simulate-images 1wcm.pdb.gz --box 64 --pixel-size 3 --resolution 15 --classes 25 \\
        --defocus-range 0.8 3.0 --defocus-groups 7 --particles-per-group 20 --snr 0.5 \\
        --seed 1 --output polII_particles
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
from cryogmm.forward.ctf import CTFParameters
from cryogmm.geometry.so3 import euler_to_matrix, matrix_to_euler, random_rotations
from cryogmm.grid import Grid
from cryogmm.io.runs import check_memory
from cryogmm.simulate import (add_noise, class_particle_images, ctf_particle_images, model_center, molmap, project_atoms,
                              random_defocus, random_shifts, sigma_for_resolution)

log = logging.getLogger(__name__)

VOLTAGE_IN_KV = 300.0
SPHERICAL_ABERRATION_IN_MM = 2.7
AMPLITUDE_CONTRAST = 0.1
POLARITY = -1  # images are the projections convolved with -CTF: bright particles (RELION)
CTF_PADDING_FACTOR = 2
IN_PLANE_OVERSAMPLING = 3  # class projections for --classes: 3x finer grid
DEFAULT_NUMBER = 25
ANGSTROMS_PER_MICROMETRE = 1e4


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="atomic model (PDB or mmCIF, optionally gzipped)")
    parser.add_argument("--number", "-n", type=int, default=None,
                        help=f"number of images (default {DEFAULT_NUMBER}; not with --classes)")
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
    ctf = parser.add_argument_group("CTF")
    ctf.add_argument("--defocus-range", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                     help="apply a CTF with mean defocus in [MIN, MAX] µm (underfocus, e.g. 0.8 3.0); "
                          "default: no CTF")
    ctf.add_argument("--defocus-groups", type=int, default=None, metavar="G",
                     help="use the G defocus values linspace(MIN, MAX, G) equally often instead of "
                          "uniform draws")
    ctf.add_argument("--astigmatism", type=float, default=0.0, metavar="A",
                     help="defocus U - V in Å, at a random angle (default 0)")
    classes = parser.add_argument_group("classes")
    classes.add_argument("--classes", type=int, default=None, metavar="C",
                         help="C random viewing directions; particles of a class differ only in "
                              "in-plane angle, shift, defocus and noise")
    classes.add_argument("--particles-per-class", type=int, default=None, metavar="N",
                         help="particles in each class (with --classes)")
    classes.add_argument("--particles-per-group", type=int, default=None, metavar="M",
                         help="particles in each class and defocus group (with --classes and "
                              "--defocus-groups): N = G M")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a fresh one, recorded in settings.json)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def _check_args(args: argparse.Namespace) -> None:
    _check_classes(args)
    _check_ctf(args)
    if args.number < 1:
        raise InputError(f"--number {args.number}: must be at least 1")
    check_sampling(args.resolution, args.pixel_size, args.box)
    if args.box is None:
        raise InputError("--box is required")
    # the projections in double precision, then the clean and the noisy float32 stacks
    check_memory(16.0 * args.number * args.box**2, f"--number {args.number}",
                 f"{args.number} images of {args.box} x {args.box} pixels")
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


def _check_classes(args: argparse.Namespace) -> None:
    """Check the class options and set args.number (the total number of particles)."""
    per_class, per_group = args.particles_per_class, args.particles_per_group
    if args.classes is None:
        if per_class is not None or per_group is not None:
            option = "--particles-per-class" if per_class is not None else "--particles-per-group"
            raise InputError(f"{option} needs --classes; give the number of classes or use --number")
        if args.number is None:
            args.number = DEFAULT_NUMBER
        return
    if args.classes < 1:
        raise InputError(f"--classes {args.classes}: must be at least 1")
    if args.number is not None:
        raise InputError("--number does not go with --classes; give --particles-per-class or "
                         "--particles-per-group instead")
    if args.poses is not None:
        raise InputError("--poses does not go with --classes; the classes draw their own poses")
    if (per_class is None) == (per_group is None):
        raise InputError("--classes needs exactly one of --particles-per-class N or --particles-per-group M")
    if per_group is not None:
        if args.defocus_groups is None:
            raise InputError("--particles-per-group needs --defocus-groups (and --defocus-range)")
        if per_group < 1:
            raise InputError(f"--particles-per-group {per_group}: must be at least 1")
        per_class = per_group * args.defocus_groups
    if per_class < 1:
        raise InputError(f"--particles-per-class {per_class}: must be at least 1")
    args.number = args.classes * per_class


def _check_ctf(args: argparse.Namespace) -> None:
    if args.defocus_range is None:
        for option, value, default in (("--defocus-groups", args.defocus_groups, None),
                                       ("--astigmatism", args.astigmatism, 0.0)):
            if value != default:
                raise InputError(f"{option} needs --defocus-range MIN MAX (in µm)")
        return
    low, high = args.defocus_range
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or low > high:
        raise InputError(f"--defocus-range {low:g} {high:g}: needs 0 < MIN <= MAX in µm "
                         "(underfocus, e.g. 0.8 3.0)")
    if args.defocus_groups is not None and args.defocus_groups < 1:
        raise InputError(f"--defocus-groups {args.defocus_groups}: must be at least 1")
    astigmatism = args.astigmatism
    if not math.isfinite(astigmatism) or astigmatism < 0 or astigmatism / 2 >= low * ANGSTROMS_PER_MICROMETRE:
        raise InputError(f"--astigmatism {astigmatism:g}: must be a non-negative number of Å below "
                         "twice the smallest defocus")


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.atoms import read_atoms
    from cryogmm.io.mrc import write_map, write_stack
    from cryogmm.io.runs import RunFolder, write_settings
    from cryogmm.io.star import format_image_name, poses_to_columns, write_particles
    from cryogmm.report.maps import plot_central_slices

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
            # independent streams, so poses do not change with the noise level (the first three
            # are those of runs without CTF and classes, which stay reproducible)
            pose_seed, shift_seed, noise_seed, defocus_seed, psi_seed = np.random.SeedSequence(seed).spawn(5)
            shifts = random_shifts(np.random.default_rng(shift_seed), args.number, args.max_shift)
            class_numbers = None
            if given_poses is not None:
                rotations, shifts = given_poses
                log.info("poses from %s", args.poses)
                columns = poses_to_columns(rotations, shifts)
            elif args.classes is not None:
                class_numbers, class_angles, columns = _class_poses(
                    np.random.default_rng(pose_seed), np.random.default_rng(psi_seed), args.classes, shifts)
            else:
                rotations = random_rotations(np.random.default_rng(pose_seed), args.number)
                columns = poses_to_columns(rotations, shifts)
            ctf = None
            if args.defocus_range is not None:
                ctf = _ctf_parameters(np.random.default_rng(defocus_seed), args)
                columns.update(rlnDefocusU=ctf.defocus_u_in_angstroms, rlnDefocusV=ctf.defocus_v_in_angstroms,
                               rlnDefocusAngle=ctf.defocus_angle_in_degrees)
            log.info("projecting %d images of %d px at %g Å/px, %g Å resolution", args.number,
                     args.box, args.pixel_size, args.resolution)
            if class_numbers is not None:
                # each class projected once on a finer grid; particles interpolated from it
                images = class_particle_images(
                    coordinates, model.atomic_numbers, euler_to_matrix(class_angles[:, 0], class_angles[:, 1], 0.0),
                    class_numbers - 1, columns["rlnAnglePsi"], shifts, args.resolution, args.box, args.pixel_size,
                    ctf_parameters=ctf, polarity=POLARITY, padding_factor=CTF_PADDING_FACTOR,
                    oversampling=IN_PLANE_OVERSAMPLING)
            elif ctf is None:
                images = project_atoms(coordinates, model.atomic_numbers, rotations, shifts,
                                       args.resolution, args.box, args.pixel_size)
            else:
                images = ctf_particle_images(coordinates, model.atomic_numbers, rotations, shifts,
                                             args.resolution, args.box, args.pixel_size, ctf,
                                             polarity=POLARITY, padding_factor=CTF_PADDING_FACTOR)
            if ctf is not None:
                log.info("applied -CTF (bright particles), mean defocus %.0f to %.0f Å",
                         ctf.mean_defocus_in_angstroms.min(), ctf.mean_defocus_in_angstroms.max())
            if args.snr is not None:
                write_stack(folder / "clean_images.mrcs", images, args.pixel_size)
                images = add_noise(np.random.default_rng(noise_seed), images, args.snr)
                log.info("added Gaussian noise at SNR %g", args.snr)
            write_stack(folder / "images.mrcs", images, args.pixel_size)

            optics = {
                "pixel_size_in_angstroms": args.pixel_size,
                "image_size": args.box,
                "voltage_in_kv": VOLTAGE_IN_KV,
                "spherical_aberration_in_mm": SPHERICAL_ABERRATION_IN_MM,
                "amplitude_contrast": AMPLITUDE_CONTRAST,
            }
            particles = pd.DataFrame({"rlnImageName": [format_image_name(i, "images.mrcs")
                                                       for i in range(args.number)]})
            for name, values in columns.items():
                particles[name] = values
            if class_numbers is not None:
                particles["rlnClassNumber"] = class_numbers
            write_particles(folder / "particles.star", particles, optics)
            if class_numbers is not None:
                _write_classes(folder, class_angles, coordinates, model.atomic_numbers, args, optics)

            grid = Grid.centered((args.box,) * 3, args.pixel_size)
            reference = molmap(coordinates, model.atomic_numbers, reference_resolution, grid)
            write_map(folder / "reference.mrc", reference, args.pixel_size)  # origin 0: RELION frame
            plot_central_slices(reference, args.pixel_size, folder / "reference_slices.png",
                                title=f"reference.mrc: {Path(args.model).name} at {reference_resolution:g} Å, "
                                      "central slices")

            settings = {name: value for name, value in vars(args).items() if not name.startswith("_")}
            settings.update(seed=seed, model=str(Path(args.model).resolve()), output=str(Path(args.output).resolve()),
                            reference_resolution=reference_resolution,
                            model_center_in_angstroms=center,
                            sigma_in_angstroms=sigma_for_resolution(args.resolution),
                            voltage_in_kv=VOLTAGE_IN_KV,
                            spherical_aberration_in_mm=SPHERICAL_ABERRATION_IN_MM,
                            amplitude_contrast=AMPLITUDE_CONTRAST)
            if ctf is not None:
                settings.update(polarity=POLARITY,
                                particle_contrast="bright: projection convolved with -CTF (RELION's inverted contrast)",
                                ctf_padding_factor=CTF_PADDING_FACTOR,
                                defocus_range_in_angstroms=[v * ANGSTROMS_PER_MICROMETRE for v in args.defocus_range])
            if args.classes is not None:
                settings.update(particles_per_class=args.number // args.classes,
                                in_plane_oversampling=IN_PLANE_OVERSAMPLING)
            write_settings(folder, "simulate-images", settings, seed)
            log.info("seed %d; wrote %s", seed, args.output)
    finally:
        close_logging()
    return 0


def _class_poses(pose_rng: np.random.Generator, psi_rng: np.random.Generator, n_classes: int,
                 shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Class numbers (1-based, class by class), class angles (C, 2) and the particles' pose columns."""
    n = shifts.shape[0]
    rot, tilt, _ = matrix_to_euler(random_rotations(pose_rng, n_classes))
    class_numbers = np.repeat(np.arange(1, n_classes + 1), n // n_classes)
    psi = psi_rng.uniform(-180.0, 180.0, n)
    columns = {"rlnAngleRot": rot[class_numbers - 1], "rlnAngleTilt": tilt[class_numbers - 1],
               "rlnAnglePsi": psi, "rlnOriginXAngst": 0.0 - shifts[:, 0], "rlnOriginYAngst": 0.0 - shifts[:, 1]}
    return class_numbers, np.stack([rot, tilt], axis=1), columns


def _ctf_parameters(rng: np.random.Generator, args: argparse.Namespace) -> CTFParameters:
    low, high = (v * ANGSTROMS_PER_MICROMETRE for v in args.defocus_range)
    u, v, angle = random_defocus(rng, args.number, (low, high), n_groups=args.defocus_groups,
                                 astigmatism_in_angstroms=args.astigmatism)
    return CTFParameters(u, v, angle, voltage_in_kv=VOLTAGE_IN_KV,
                         spherical_aberration_in_mm=SPHERICAL_ABERRATION_IN_MM,
                         amplitude_contrast=AMPLITUDE_CONTRAST)


def _write_classes(folder: Path, class_angles: np.ndarray, coordinates: np.ndarray,
                   atomic_numbers: np.ndarray, args: argparse.Namespace, optics: dict) -> None:
    """class_projections.mrcs (CTF-free, in-plane angle 0, unshifted) and class_poses.star."""
    from cryogmm.io.mrc import write_stack
    from cryogmm.io.star import format_image_name, write_particles

    n_classes = class_angles.shape[0]
    rotations = euler_to_matrix(class_angles[:, 0], class_angles[:, 1], 0.0)
    projections = project_atoms(coordinates, atomic_numbers, rotations, None, args.resolution,
                                args.box, args.pixel_size)
    write_stack(folder / "class_projections.mrcs", projections, args.pixel_size)
    table = pd.DataFrame({
        "rlnImageName": [format_image_name(i, "class_projections.mrcs") for i in range(n_classes)],
        "rlnAngleRot": class_angles[:, 0], "rlnAngleTilt": class_angles[:, 1],
        "rlnAnglePsi": np.zeros(n_classes), "rlnOriginXAngst": np.zeros(n_classes),
        "rlnOriginYAngst": np.zeros(n_classes), "rlnClassNumber": np.arange(1, n_classes + 1)})
    write_particles(folder / "class_poses.star", table, optics)
    log.info("wrote %d class projections and their poses", n_classes)


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
