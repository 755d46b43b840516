"""Prepare class averages for the Poisson model: background, polarity, mask, centre, clip.

STACK is an .mrcs stack (pixel size from the header unless --pixel-size; a header pixel size of
0 or 1 Å is a placeholder and needs --pixel-size), a STAR file of class averages or particles, or
a RELION 2D-classification _model.star (its _classes.mrcs; empty classes dropped).
Steps: optional Fourier crop to --box; subtract each image's background (median of its outer
ring); invert the contrast if the particles are darker than the background (--invert auto);
mask each image (--mask auto: threshold of the low-passed image, the connected region with the
most signal, holes filled, dilated by --margin with a raised-cosine edge of --soft-edge;
--mask radius: a disc of --radius Å); shift it so its centre of mass lands on the box centre
(pixel N//2; sub-pixel, by Fourier phase ramps); multiply by the mask and set negative values to
zero; scale (--scale common: the median image sums to 1).

Outputs: OUT.mrcs (float32 stack at the new pixel size), OUT_prepare.json (every setting, the
cryogmm version, the notes, per-image shifts t = particle centre relative to the box centre in
Å as in RELION's rlnOriginX/YAngst = -t, mask fractions, background levels) and
OUT_prepare.png (inputs with mask outlines, masks, prepared images). Existing outputs are kept
unless --force.

Example:
    cryogmm prepare class_averages.mrcs --pixel-size 3.54 --output prepared.mrcs
    cryogmm prepare run_it025_classes.star --box 64 --mask radius --radius 90 --output prepared.mrcs
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.paths import require_file
from cryogmm.io.runs import check_writable

CHOICES = {"auto": "auto", "yes": True, "no": False}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stack", type=Path, help="class averages or particles: .mrcs stack or STAR file")
    parser.add_argument("--output", "-o", type=Path, required=True, help="prepared stack (.mrcs)")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (default: from the file)")
    parser.add_argument("--mask", choices=("auto", "radius", "none"), default="auto",
                        help="auto: from the image (default); radius: a disc of --radius Å; none: no mask")
    parser.add_argument("--radius", type=float, default=None,
                        help="particle radius in Å (needed by --mask radius; with auto, where to look)")
    parser.add_argument("--center", action=argparse.BooleanOptionalAction, default=True,
                        help="centre each image on its centre of mass (default: yes)")
    parser.add_argument("--box", type=int, default=None, help="Fourier-crop to this box first (pixels)")
    parser.add_argument("--invert", choices=tuple(CHOICES), default="auto",
                        help="invert the contrast: auto (if the particles are dark, default), yes, no")
    parser.add_argument("--scale", choices=("common", "per-image", "none"), default="common",
                        help="common: one factor, the median image sums to 1 (default); per-image: each sums "
                             "to 1; none")
    parser.add_argument("--lowpass", type=float, default=20.0,
                        help="automatic mask: low-pass resolution in Å before thresholding (default 20)")
    parser.add_argument("--margin", type=float, default=7.0,
                        help="automatic mask: dilation beyond the threshold in Å (default 7)")
    parser.add_argument("--soft-edge", type=float, default=10.0,
                        help="raised-cosine edge width of the mask in Å (default 10)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")


def output_paths(output: Path) -> dict[str, Path]:
    """The stack and its sibling record and figure: OUT.mrcs, OUT_prepare.json, OUT_prepare.png."""
    stem = output.with_suffix("") if output.suffix.lower() in (".mrcs", ".mrc") else output
    return {"stack": output, "json": stem.with_name(f"{stem.name}_prepare.json"),
            "png": stem.with_name(f"{stem.name}_prepare.png")}


def _check_args(args: argparse.Namespace) -> dict[str, Path]:
    for option, value in (("--pixel-size", args.pixel_size), ("--radius", args.radius), ("--lowpass", args.lowpass)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{option} {value}: must be a positive number of Å")
    for option, value in (("--margin", args.margin), ("--soft-edge", args.soft_edge)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{option} {value}: must be a number of Å, 0 or more")
    if args.mask == "radius" and args.radius is None:
        raise InputError("--mask radius needs --radius (the particle radius in Å)")
    if args.output.suffix.lower() not in (".mrcs", ".mrc"):
        raise InputError(f"--output {args.output}: the prepared images are an MRC stack; give a name ending in .mrcs")
    require_file(args.stack)
    paths = output_paths(args.output)
    for path in paths.values():
        if path.resolve() == args.stack.resolve():
            raise InputError(f"--output {args.output}: would overwrite the input {args.stack}; choose another name")
        if path.is_dir():
            raise InputError(f"--output {args.output}: {path} is a folder; choose another name")
        if path.exists() and not args.force:
            raise InputError(f"--output {args.output}: {path} exists; pass --force to replace it or choose another name")
    if not args.output.parent.is_dir():
        raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist; create it first")
    check_writable(args.output)
    return paths


def read_images(path: Path, pixel_size_in_angstroms: float | None) -> tuple[np.ndarray, float, list[str]]:
    """Images `(P, n, n)` float64, pixel size in Å and one RELION image name per image.

    Raises InputError for a placeholder header pixel size (0 or 1 Å) without `pixel_size_in_angstroms`.
    """
    from cryogmm.io.mrc import read_stack
    from cryogmm.io.star import PLACEHOLDER_HEADER_PIXEL_SIZES, format_image_name, load_images, read_particles

    from cryogmm.io.images import is_model_star

    if path.suffix.lower() == ".star" and is_model_star(path):
        from cryogmm.io.classes import drop_empty_classes, read_class_averages

        classes = drop_empty_classes(read_class_averages(path, pixel_size_in_angstroms=pixel_size_in_angstroms))
        images, pixel, names = classes.images, classes.pixel_size_in_angstroms, list(classes.names)
        from_header = False
    elif path.suffix.lower() == ".star":
        table = read_particles(path)
        images, pixel = load_images(table, pixel_size_in_angstroms=pixel_size_in_angstroms)
        names = table.particles["rlnImageName"].astype(str).tolist()
        from_header = table.pixel_size_in_angstroms is None
    else:
        stack = read_stack(path, pixel_size_in_angstroms)
        images, pixel = stack.data, stack.voxel_size_in_angstroms
        names = [format_image_name(i, path.name) for i in range(images.shape[0])]
        from_header = True
    if pixel_size_in_angstroms is None and from_header and pixel in PLACEHOLDER_HEADER_PIXEL_SIZES:
        raise InputError(f"{path}: the header pixel size {pixel:g} Å is a placeholder; pass --pixel-size")
    if images.shape[-1] != images.shape[-2]:
        raise InputError(f"{path}: images are {images.shape[-1]} x {images.shape[-2]} pixels; they must be "
                         "square (pad or crop them to a square box)")
    return np.asarray(images, dtype=np.float64), float(pixel), names


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli.report import write_run_report
    from cryogmm import __version__
    from cryogmm.io.mrc import atomic_output, write_stack
    from cryogmm.io.runs import write_json
    from cryogmm.pipelines.prepare import prepare_images
    from cryogmm.report.prepare import plot_prepared

    paths = _check_args(args)
    images, pixel, names = read_images(args.stack, args.pixel_size)
    print(f"{args.stack}: {images.shape[0]} images of {images.shape[-1]} px at {pixel:g} Å/px")
    start = time.perf_counter()
    prepared = prepare_images(images, pixel, mask=None if args.mask == "none" else args.mask,
                              radius_in_angstroms=args.radius, center=args.center, box=args.box,
                              invert=CHOICES[args.invert], scale=None if args.scale == "none" else args.scale,
                              lowpass_in_angstroms=args.lowpass, margin_in_angstroms=args.margin,
                              soft_edge_in_angstroms=args.soft_edge, source=str(args.stack))
    seconds = time.perf_counter() - start
    for note in prepared.notes:
        print(note)
    shifts = prepared.shifts_in_angstroms
    record = {
        "cryogmm_version": __version__, "command": "prepare", "input": str(args.stack),
        "output": str(args.output), "n_images": int(images.shape[0]), "input_box": int(images.shape[-1]),
        "input_pixel_size_in_angstroms": pixel, "box": int(prepared.images.shape[-1]),
        "pixel_size_in_angstroms": prepared.pixel_size_in_angstroms, "settings": prepared.settings,
        "inverted": prepared.inverted, "notes": list(prepared.notes), "seconds": seconds,
        "images": [{"index": i + 1, "name": names[i], "shift_x_in_angstroms": shifts[i, 0],
                    "shift_y_in_angstroms": shifts[i, 1], "rlnOriginXAngst": -shifts[i, 0],
                    "rlnOriginYAngst": -shifts[i, 1], "masked_fraction": prepared.masked_fractions[i],
                    "background_level": prepared.background_levels[i], "scale_factor": prepared.scale_factors[i]}
                   for i in range(images.shape[0])],
    }
    # all three files appear together or not at all
    with atomic_output(paths["stack"]) as stack_tmp, atomic_output(paths["json"]) as json_tmp, \
            atomic_output(paths["png"]) as png_tmp:
        write_stack(stack_tmp, prepared.images, prepared.pixel_size_in_angstroms)
        write_json(json_tmp, record)
        plot_prepared(images, prepared, png_tmp, title=f"{args.stack.name}: inputs with mask outline (orange) and "
                      "centre of mass (+), masks, prepared images")
    write_run_report(paths["stack"], args)
    for path in paths.values():
        print(f"wrote {path}")
    print(f"prepared {images.shape[0]} images in {seconds:.2f} s")
    return 0
