"""Check the CTF values of a particle STAR file against the Thon rings of the particle images.

For the particles of STAR (a RELION particle file, a cryoSPARC-converted one, or a cryoSPARC
.cs file), the power spectrum of each image is compared with its CTF^2: in CTF-phase bins, each
divided by its mean over one ring, so that particles of any defocus and astigmatism line up
(cryogmm.report.ctf). The agreement is the correlation of the two over a band from the first CTF
zero up to Nyquist (or to where rings get narrower than 3 Fourier pixels): near 1 when rings sit
where the CTF puts them, near 0 when defocus, voltage, aberration or pixel size are wrong. It is
printed for the mean over all particles, with the number of particles, pixel size and defocus range.

Outputs in DIR: ctf.png (for a few particles and for all of them: the image, its power spectrum
next to the model CTF^2, and the profile with the CTF zeros), ctf.json (the numbers, per-particle
agreements and settings), settings.json (version and settings), run.log, report.html (one page of
it all; `cryogmm report DIR` rebuilds it).

Example:
    cryogmm ctf Extract/job012/particles.star --output ctf_check
    cryogmm ctf J12_particles.cs --data-dir /data/P3 --max-images 500 --output ctf_check
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError

log = logging.getLogger(__name__)

NO_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, help="particle STAR file with CTF columns (or a cryoSPARC .cs file)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder DIR")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding the image stacks (default: next to STAR, then the current folder)")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="pixel size in Å (default: from STAR, else the stack headers)")
    parser.add_argument("--max-images", type=int, default=2000,
                        help="analyse at most this many particles, evenly spread over the file (default 2000)")
    parser.add_argument("--show", type=int, default=3,
                        help="particles given a row of their own in ctf.png: lowest, median, highest defocus, ... "
                             "(default 3)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--verbose", "-v", action="store_true", help="more messages")


def _check_args(args: argparse.Namespace) -> None:
    if args.max_images < 1:
        raise InputError(f"--max-images {args.max_images}: must be at least 1")
    if not 0 <= args.show <= 10:
        raise InputError(f"--show {args.show}: must be between 0 and 10")
    if args.pixel_size is not None and (not math.isfinite(args.pixel_size) or args.pixel_size <= 0):
        raise InputError(f"--pixel-size {args.pixel_size}: must be a positive number of Å")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise InputError(f"--data-dir {args.data_dir}: not a folder; give the folder that holds the stacks")


def _shown(defocus: np.ndarray, count: int) -> list[int]:
    """Particles spread over the defocus range: lowest, median, highest, then quantiles between."""
    order = np.argsort(defocus, kind="stable")
    picks = np.unique(np.round(np.linspace(0, defocus.size - 1, count)).astype(int)) if count else []
    return [int(order[i]) for i in picks]


def main(args: argparse.Namespace) -> int:
    from cryogmm.cli.report import write_run_report
    from cryogmm.cli import close_logging, setup_logging
    from cryogmm.io.runs import RunFolder, write_json, write_settings
    from cryogmm.io.star import ctf_parameters, load_images, read_particles, select_rows
    from cryogmm.report.ctf import ctf_summary, plot_ctf_overview, thon_profiles

    setup_logging(verbose=args.verbose)
    try:
        _check_args(args)
        run = RunFolder(args.output, args.force)
        table = read_particles(args.star)
        n_total = len(table.particles)
        parameters = ctf_parameters(table)
        if parameters is None:
            raise InputError(f"{args.star}: has no CTF columns ({', '.join(NO_CTF_COLUMNS)}); pass the particle "
                             "STAR file of an extraction or refinement job, whose rows carry the CTF values")
        rows = np.unique(np.round(np.linspace(0, n_total - 1, min(args.max_images, n_total))).astype(int))
        table, parameters = select_rows(table, rows), parameters[rows]
        images, pixel_size = load_images(table, args.data_dir, pixel_size_in_angstroms=args.pixel_size)
        if images.shape[-1] != images.shape[-2]:
            raise InputError(f"{args.star}: images are {images.shape[-1]}x{images.shape[-2]} pixels; "
                             "the power spectra need square images")
        with run as folder:
            setup_logging(folder / "run.log", verbose=args.verbose)
            log.info("%s: %d particles, %d analysed, %d x %d pixels of %.4g Å", args.star, n_total, len(rows),
                     images.shape[-1], images.shape[-2], pixel_size)
            profiles = thon_profiles(images, parameters, pixel_size)
            summary = ctf_summary(parameters, pixel_size, profiles)
            summary.update(star=str(args.star), n_particles_in_file=n_total,
                           analysed_rows=(rows + 1).tolist(), box=int(images.shape[-1]),
                           settings={k: v for k, v in vars(args).items() if not k.startswith("_")})
            plot_ctf_overview(images, parameters, pixel_size, profiles,
                              _shown(parameters.mean_defocus_in_angstroms, args.show), folder / "ctf.png",
                              title=f"{args.star.name}: {len(rows)} particles, {pixel_size:.4g} Å/pixel")
            write_json(folder / "ctf.json", summary)
            write_settings(folder, "ctf", summary["settings"], None)  # version and settings (no randomness)
            _report(summary)
            write_run_report(folder, args)
            log.info("wrote %s (ctf.png, ctf.json, settings.json, run.log, report.html)", args.output)
    finally:
        close_logging()
    return 0


def _report(summary: dict) -> None:
    defocus = summary["defocus_in_angstroms"]
    rings = summary["thon_rings"]
    log.info("defocus (U + V) / 2: %.0f to %.0f Å (median %.0f), astigmatism up to %.0f Å; voltage %s kV, "
             "Cs %s mm, amplitude contrast %s", defocus["min"], defocus["max"], defocus["median"],
             summary["astigmatism_in_angstroms"], _values(summary["voltage_in_kv"]),
             _values(summary["spherical_aberration_in_mm"]), _values(summary["amplitude_contrast"]))
    if rings["agreement"] is None:
        log.warning("no Thon ring can be compared: the first CTF zero lies beyond Nyquist, or rings are narrower "
                    "than 3 Fourier pixels from the first zero on (box too small for this defocus); check the "
                    "pixel size (--pixel-size) if that is unexpected")
        return
    low, high = rings["band_in_angstroms"]
    log.info("Thon-ring agreement (power spectrum vs CTF^2, all particles): %.3f over %.1f to %.1f Å "
             "(%.1f rings); per particle: median %.3f", rings["agreement"], low, high, rings["rings_in_band"],
             rings["agreement_per_particle_median"])
    if rings["agreement"] < 0.3:
        log.warning("the rings of the power spectra do not follow the CTF (agreement below 0.3): check the defocus "
                    "values, voltage, spherical aberration and pixel size")


def _values(values: list) -> str:
    return ", ".join(f"{v:g}" for v in values)
