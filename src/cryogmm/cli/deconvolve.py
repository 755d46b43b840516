"""Deconvolve class averages for the CTF (thesis section 4.1.2): non-negative, CTF-corrected images.

INPUT is a STAR file, either
- particles with classes: rlnClassNumber, the CTF columns (rlnDefocusU/V/Angle, voltage, Cs,
  amplitude contrast), rlnAnglePsi and origins (a RELION 2D classification `_data.star`, or
  `simulate-images --classes`). Each class's particles are aligned (psi, origin) and averaged per
  defocus group: --groups equal-width intervals of the class's defocus range (default 7), and the
  group averages are deconvolved together (multi-frame, Eqn. 4.3); --groups 1 deconvolves the
  class average with the particles' mean CTF (single-frame, Eqn. 4.4); or
- class averages with one CTF each (rows without rlnClassNumber, or one row per class): each is
  deconvolved alone (Eqn. 4.4).
The minimiser is L-BFGS-B under y >= 0 with a smoothness weight --alpha (dimensionless, relative
to the weighted mean squared residual; default: chosen per class by generalised cross-validation)
and the contrast --polarity (auto: decided from the data; bright: z = -CTF * y, as RELION extracts
particles; dark: z = CTF * y). The CTF is applied as a linear convolution (the solve runs in a box
twice the size) unless --no-pad.

Outputs: OUT.mrcs (the deconvolved class images, float32, bright on zero background; mask them
with `cryogmm prepare` before `abinitio`), OUT.star (one row per class: image name and
rlnClassNumber), OUT_deconvolve.json (settings, version, alpha per class and its rule, polarity,
particle and group counts, time) and OUT_deconvolve.png (class averages above deconvolved images);
with --averages also OUT_averages.mrcs, the plain aligned class averages (CTF-weighted).

Example:
    cryogmm deconvolve polII_particles/particles.star --groups 7 --output polII_deconvolved.mrcs
    cryogmm prepare polII_deconvolved.mrcs --output polII_prepared.mrcs
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

POLARITIES = {"auto": "auto", "bright": -1, "dark": 1}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="STAR file: particles with classes, or class averages, with CTFs")
    parser.add_argument("--output", "-o", type=Path, required=True, help="deconvolved stack (.mrcs)")
    parser.add_argument("--groups", type=int, default=7,
                        help="defocus groups per class for particle input (default 7; 1 = single-frame)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="smoothness weight (> 0; default: per class by generalised cross-validation)")
    parser.add_argument("--polarity", choices=tuple(POLARITIES), default="auto",
                        help="particle contrast: auto (default), bright (RELION), dark")
    parser.add_argument("--no-pad", action="store_true", help="circular convolution in the image box (faster)")
    parser.add_argument("--averages", action="store_true",
                        help="also write the plain aligned class averages (before deconvolution) to OUT_averages.mrcs")
    parser.add_argument("--pixel-size", type=float, default=None, help="pixel size in Å (default: from the files)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the image stacks (default: next to STAR)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")


def output_paths(output: Path, averages: bool = False) -> dict[str, Path]:
    stem = output.with_suffix("")
    paths = {"stack": output, "star": stem.with_suffix(".star"),
             "json": stem.with_name(f"{stem.name}_deconvolve.json"),
             "png": stem.with_name(f"{stem.name}_deconvolve.png")}
    if averages:
        paths["averages"] = stem.with_name(f"{stem.name}_averages.mrcs")
    return paths


def _check_args(args: argparse.Namespace) -> dict[str, Path]:
    if args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha > 0):
        raise InputError(f"--alpha {args.alpha}: must be a positive number (or leave it out to choose it from the data)")
    if args.groups < 1:
        raise InputError(f"--groups {args.groups}: must be at least 1")
    if args.pixel_size is not None and not (math.isfinite(args.pixel_size) and args.pixel_size > 0):
        raise InputError(f"--pixel-size {args.pixel_size}: must be a positive number of Å")
    if args.output.suffix.lower() not in (".mrcs", ".mrc"):
        raise InputError(f"--output {args.output}: the deconvolved images are an MRC stack; give a name ending in .mrcs")
    require_file(args.input)
    if args.input.suffix.lower() != ".star":
        raise InputError(f"{args.input}: deconvolution needs the CTF of each image; give a STAR file with CTF columns")
    if not args.output.parent.is_dir():
        raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist; create it first")
    check_writable(args.output)
    paths = output_paths(args.output, args.averages)
    for path in paths.values():
        if path.resolve() == args.input.resolve():
            raise InputError(f"--output {args.output}: would overwrite the input {args.input}; choose another name")
        if path.exists() and not args.force:
            raise InputError(f"--output {args.output}: {path} exists; pass --force to replace it or choose another name")
    return paths


def run_deconvolution(star: Path, *, groups: int = 7, alpha=None, polarity="auto", pad: bool = True,
                      pixel_size_in_angstroms=None, data_dir=None):
    """Read `star` and deconvolve it (particle or class-average mode); returns (DeconvolvedClasses,
    pixel size, mode)."""
    from cryogmm.io.star import ctf_parameters, in_plane_poses, load_images, read_particles
    from cryogmm.pipelines.deconvolve import deconvolve_class_averages, deconvolve_particles

    table = read_particles(star)
    ctf = ctf_parameters(table)
    if ctf is None:
        raise InputError(f"{star}: has no CTF columns (rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage, "
                         "rlnSphericalAberration, rlnAmplitudeContrast); deconvolution needs them")
    images, pixel = load_images(table, data_dir, pixel_size_in_angstroms=pixel_size_in_angstroms)
    if images.shape[-1] != images.shape[-2]:
        raise InputError(f"{star}: images are {images.shape[-1]} x {images.shape[-2]} pixels; they must be square")
    df = table.particles
    classes = df["rlnClassNumber"].to_numpy() if "rlnClassNumber" in df.columns else None
    if classes is not None and np.unique(classes).size < len(df):
        psi, shifts = in_plane_poses(df, pixel)
        return deconvolve_particles(images, psi, shifts, classes, ctf, pixel, n_groups=groups, alpha=alpha,
                                    polarity=polarity, pad=pad), pixel, "particles"
    return deconvolve_class_averages(images, ctf, pixel, alpha=alpha, polarity=polarity, pad=pad), pixel, "class averages"


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from cryogmm.cli.report import write_run_report
    from cryogmm import __version__
    from cryogmm.io.images import optics_values
    from cryogmm.io.mrc import atomic_output, write_stack
    from cryogmm.io.runs import write_json
    from cryogmm.io.star import format_image_name, write_particles
    from cryogmm.report.abinitio import plot_projections

    paths = _check_args(args)
    start = time.perf_counter()
    out, pixel, mode = run_deconvolution(args.input, groups=args.groups, alpha=args.alpha,
                                         polarity=POLARITIES[args.polarity], pad=not args.no_pad,
                                         pixel_size_in_angstroms=args.pixel_size, data_dir=args.data_dir)
    print(f"{args.input}: {mode}, {out.images.shape[-1]} px at {pixel:g} Å/px")
    for note in out.notes:
        print(note)
    result = out.result
    n = out.images.shape[-1]
    record = {"cryogmm_version": __version__, "command": "deconvolve", "input": str(args.input), "mode": mode,
              "output": str(args.output), "settings": {"groups": args.groups, "alpha": args.alpha,
                                                       "polarity": args.polarity, "pad": not args.no_pad},
              "pixel_size_in_angstroms": pixel, "box": n, "solve_box": out.box, "notes": out.notes,
              "alpha_rule": result.alpha_rule, "polarity": int(result.polarity),
              "polarity_rule": result.polarity_rule, "seconds": time.perf_counter() - start,
              "classes": [{"class_number": int(c), "particles": int(k), "alpha": float(a),
                           "group_weights": w.tolist(), "iterations": int(it), "converged": bool(ok)}
                          for c, k, a, w, it, ok in zip(out.class_ids, out.counts, result.alpha, out.group_weights,
                                                        result.iterations, result.converged)]}
    optics = {"rlnOpticsGroup": 1, "rlnImagePixelSize": pixel, "rlnImageSize": n, "rlnImageDimensionality": 2,
              **optics_values(args.input)}
    names = [format_image_name(i, args.output.name) for i in range(out.images.shape[0])]
    table = pd.DataFrame({"rlnImageName": names, "rlnClassNumber": out.class_ids.astype(int), "rlnOpticsGroup": 1})
    with atomic_output(paths["stack"]) as stack_tmp, atomic_output(paths["star"]) as star_tmp, \
            atomic_output(paths["json"]) as json_tmp, atomic_output(paths["png"]) as png_tmp:
        write_stack(stack_tmp, out.images.astype(np.float32), pixel)
        write_particles(star_tmp, table, optics)
        write_json(json_tmp, record)
        plot_projections(out.averages, out.images, png_tmp, labels=[f"class {c}" for c in out.class_ids],
                         title=f"{args.input.name}: class averages (top) and deconvolved (bottom)",
                         row_names=("average", "deconvolved"))
        if args.averages:
            with atomic_output(paths["averages"]) as averages_tmp:
                write_stack(averages_tmp, np.asarray(out.averages, dtype=np.float32), pixel)
    write_run_report(paths["stack"], args)
    for path in paths.values():
        print(f"wrote {path}")
    print(f"deconvolved {out.images.shape[0]} classes in {record['seconds']:.1f} s")
    return 0
