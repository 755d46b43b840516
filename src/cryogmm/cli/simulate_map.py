"""Simulate a density map from an atomic model (ChimeraX molmap; thesis section 3.1.1).

Every atom becomes a Gaussian weighted by its atomic number, with sigma = resolution / (pi sqrt 2).
The map is a cubic box centred on the model's Z-weighted centroid (voxel box//2), and its origin is
set so that the map overlays the atomic model in ChimeraX. Its central slices are drawn in
MAP_slices.png beside it.

Example:
    cryogmm simulate-map 1oel.pdb --resolution 15 --pixel-size 2 --output groel_15A.mrc
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from cryogmm.errors import InputError
from cryogmm.io.paths import require_file
from cryogmm.io.runs import check_memory, check_writable
from cryogmm.simulate.molmap import MIN_BOX, default_map_grid, molmap, molmap_padding_in_angstroms

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="atomic model (PDB or mmCIF, optionally gzipped)")
    parser.add_argument("--resolution", type=float, required=True, help="map resolution in Å")
    parser.add_argument("--pixel-size", type=float, required=True, help="voxel size in Å")
    parser.add_argument("--box", type=int, default=None,
                        help="box size in voxels (default: the smallest even box that holds the model)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output map (.mrc)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def check_sampling(resolution_in_angstroms: float, pixel_size_in_angstroms: float, box: int | None) -> None:
    """InputError for a non-positive resolution or pixel size or a box below 8; log coarse pixels."""
    if not math.isfinite(resolution_in_angstroms) or resolution_in_angstroms <= 0:
        raise InputError(f"--resolution {resolution_in_angstroms}: must be a positive number of Å")
    if not math.isfinite(pixel_size_in_angstroms) or pixel_size_in_angstroms <= 0:
        raise InputError(f"--pixel-size {pixel_size_in_angstroms}: must be a positive number of Å")
    if box is not None and box < MIN_BOX:
        raise InputError(f"--box {box}: must be at least {MIN_BOX} pixels")
    if box is not None:  # the map in double precision and a float32 copy to write
        check_memory(12.0 * box**3, f"--box {box}", f"maps of {box}^3 voxels")
    if pixel_size_in_angstroms > resolution_in_angstroms / 2:
        log.warning("pixel size %g Å is coarser than Nyquist for %g Å resolution; "
                    "use a pixel size of at most %g Å", pixel_size_in_angstroms,
                    resolution_in_angstroms, resolution_in_angstroms / 2)


def check_model_path(path: Path) -> None:
    require_file(path)


def slices_path(map_path: Path) -> Path:
    """MAP.mrc -> MAP_slices.png (the figure written beside the map)."""
    return map_path.with_name(f"{map_path.stem}_slices.png")


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.atoms import read_atoms
    from cryogmm.io.mrc import write_map
    from cryogmm.report.maps import plot_central_slices

    setup_logging(verbose=args.verbose)
    try:
        check_sampling(args.resolution, args.pixel_size, args.box)
        check_model_path(args.model)
        output = Path(args.output)
        if output.is_dir():
            raise InputError(f"--output {output}: is a folder; give a file name such as map.mrc")
        check_writable(output)
        figure = slices_path(output)
        for path in (output, figure):
            if path.exists() and not args.force:
                raise InputError(f"--output {output}: {path} exists; pass --force to replace it or choose another name")
        model = read_atoms(args.model)
        coordinates, atomic_numbers = model.coordinates_in_angstroms, model.atomic_numbers
        grid = default_map_grid(coordinates, args.pixel_size, args.box,
                                molmap_padding_in_angstroms(args.resolution), atomic_numbers=atomic_numbers)
        box = grid.shape[0]
        lo = grid.origin_in_angstroms
        hi = [o + (box - 1) * args.pixel_size for o in lo]
        outside = ((coordinates < lo) | (coordinates > hi)).any(axis=1).sum()
        if outside:
            log.warning("%d of %d atoms lie outside the %d-voxel box; pass a larger --box",
                        outside, len(coordinates), box)
        log.info("%s: %d atoms; %g Å resolution (sigma %.2f Å) on a %d^3 box of %g Å voxels",
                 args.model, len(coordinates), args.resolution, args.resolution / (math.pi * math.sqrt(2)),
                 box, args.pixel_size)
        density = molmap(coordinates, atomic_numbers, args.resolution, grid)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_map(output, density, args.pixel_size, grid.origin_in_angstroms)
        plot_central_slices(density, args.pixel_size, figure,
                            title=f"{output.name}: {args.model.name} at {args.resolution:g} Å, central slices")
        log.info("wrote %s and %s", output, figure)
    finally:
        close_logging()
    return 0
