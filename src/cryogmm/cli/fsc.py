"""Compare two maps: Fourier shell correlation, resolution and cross-correlation.

Prints the resolution where the FSC falls below 0.5 and 0.143, the cross-correlation (thesis
Eqn. 3.3, not mean-subtracted) and the Pearson correlation. Both maps must have the same cubic
box and voxel size. With --align, MAP2 is first rotated, shifted and, unless --no-mirror, possibly
mirrored onto MAP1 (global search, then local refinement); the rotation R is printed as RELION
Euler angles (rot, tilt, psi) with so3.euler_to_matrix(rot, tilt, psi) = R: MAP2 is MAP1 rotated
by R about the box centre, then reflected in z if mirrored, then shifted. The angles are given in
one canonical form (rot and psi in (-180, 180], tilt in [0, 180], psi 0 where tilt is 0 or 180),
followed by the angle of the turn and its axis: a turn of 0.00 degrees means no rotation.

Example:
    cryogmm fsc reconstruction.mrc reference.mrc --align --plot fsc.png --json fsc.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cryogmm.errors import InputError
from cryogmm.io.runs import check_writable

THRESHOLDS = (0.5, 0.143)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map1", type=Path, help="first map (MRC); the reference when aligning")
    parser.add_argument("map2", type=Path, help="second map (MRC), on the same grid as MAP1")
    parser.add_argument("--align", action="store_true", help="align MAP2 onto MAP1 first")
    parser.add_argument("--no-mirror", action="store_true", help="with --align: do not try the other hand")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="voxel size in Å for both maps (overrides the headers)")
    parser.add_argument("--plot", type=Path, default=None, help="write the FSC curve to this PNG")
    parser.add_argument("--json", type=Path, default=None, help="write the results and the curve to this JSON file")
    parser.add_argument("--force", action="store_true", help="replace existing --plot/--json files")


def _check_output(path: Path | None, option: str, force: bool) -> None:
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not force:
        raise InputError(f"{option} {path}: file exists; pass --force to replace it or choose another name")
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: folder {path.parent} does not exist; create it or choose another path")
    check_writable(path, option)


def _check_same_grid(map1, map2, path1: Path, path2: Path) -> None:
    shape1, shape2 = map1.data.shape, map2.data.shape
    if shape1 != shape2:
        raise InputError(f"{path1} is {'x'.join(map(str, shape1[::-1]))} voxels but {path2} is "
                         f"{'x'.join(map(str, shape2[::-1]))}; resample one map onto the other's grid "
                         "(same box and voxel size), e.g. ChimeraX 'volume resample'")
    if len(set(shape1)) != 1:
        raise InputError(f"{path1}: box {'x'.join(map(str, shape1[::-1]))} is not cubic; "
                         "pad or resample both maps to a cubic box")
    v1, v2 = map1.voxel_size_in_angstroms, map2.voxel_size_in_angstroms
    if not math.isclose(v1, v2, rel_tol=1e-3):
        raise InputError(f"{path1} has {v1:g} Å voxels but {path2} has {v2:g} Å; resample one map onto the "
                         "other's grid, or pass --pixel-size if a header is wrong")


def _resolution_text(resolution: float | None, nyquist: float) -> str:
    if resolution is None:
        return f"not reached up to Nyquist ({nyquist:.2f} Å)"
    return f"{resolution:.2f} Å"


def _vector(values, decimals: int = 2) -> str:
    """Numbers rounded for print, "0.00" rather than "-0.00"."""
    return ", ".join(f"{round(float(v), decimals) + 0.0:.{decimals}f}" for v in values)


def main(args: argparse.Namespace) -> int:
    from cryogmm.geometry.so3 import axis_and_angle_in_degrees, canonical_euler_in_degrees
    from cryogmm.io.mrc import read_map
    from cryogmm.io.runs import write_json
    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.metrics.fsc import fourier_shell_correlation, normalised_cross_correlation, resolution_at

    if args.pixel_size is not None and (not math.isfinite(args.pixel_size) or args.pixel_size <= 0):
        raise InputError(f"--pixel-size {args.pixel_size}: must be a positive number of Å")
    _check_output(args.plot, "--plot", args.force)
    _check_output(args.json, "--json", args.force)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot {args.plot}: the plot is a PNG; give a name ending in .png")
    map1 = read_map(args.map1, args.pixel_size)
    map2 = read_map(args.map2, args.pixel_size)
    _check_same_grid(map1, map2, args.map1, args.map2)
    voxel = map1.voxel_size_in_angstroms
    box = map1.data.shape[0]
    print(f"{args.map1} vs {args.map2}: {box}^3 voxels of {voxel:g} Å")

    results: dict = {"map1": str(args.map1), "map2": str(args.map2), "box": box, "voxel_size_in_angstroms": voxel}
    data1, data2 = map1.data, map2.data
    if args.align:
        from cryogmm.metrics.alignment import align_maps

        alignment = align_maps(data1, data2, voxel, allow_mirror=not args.no_mirror)
        data2 = alignment.aligned
        angles = list(canonical_euler_in_degrees(alignment.rotation))
        axis, turn = axis_and_angle_in_degrees(alignment.rotation)
        shift = alignment.shift_in_angstroms
        print(f"alignment of MAP2 onto MAP1: rotation (rot, tilt, psi) = ({_vector(angles)}) degrees, a turn of "
              f"{round(turn, 2) + 0.0:.2f} degrees about (x, y, z) = ({_vector(axis, 3)}); shift (x, y, z) = "
              f"({_vector(shift)}) Å; mirrored: {'yes' if alignment.mirrored else 'no'}")
        results["alignment"] = {"rotation_matrix": alignment.rotation, "euler_rot_tilt_psi_in_degrees": angles,
                                "rotation_angle_in_degrees": turn, "rotation_axis": axis,
                                "shift_in_angstroms": shift, "mirrored": alignment.mirrored}

    curve = fourier_shell_correlation(data1, data2, voxel)
    nyquist = curve.nyquist_resolution_in_angstroms
    after = " after alignment" if args.align else ""
    resolutions = {}
    for threshold in THRESHOLDS:
        resolution = resolution_at(curve, threshold)
        resolutions[f"{threshold:g}"] = resolution
        print(f"resolution at FSC {threshold:g}: {_resolution_text(resolution, nyquist)}")
    cc = cross_correlation(data1, data2)
    pearson = normalised_cross_correlation(data1, data2)
    print(f"cross-correlation (Eqn. 3.3){after}: {cc:.4f}")
    print(f"Pearson correlation{after}: {pearson:.4f}")
    results.update(resolution_in_angstroms=resolutions, nyquist_resolution_in_angstroms=nyquist,
                   cross_correlation=cc, pearson_correlation=pearson,
                   fsc={"frequency_per_angstrom": curve.frequency_per_angstrom,
                        "correlation": curve.correlation, "n_voxels": curve.n_voxels})
    if args.plot is not None:
        from cryogmm.report.fsc import plot_fsc

        plot_fsc({f"{args.map1.name} vs {args.map2.name}{' (aligned)' if args.align else ''}": curve},
                 args.plot, THRESHOLDS, title=None)
        print(f"wrote {args.plot}")
    if args.json is not None:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0
