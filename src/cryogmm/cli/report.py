"""Build (or rebuild) report.html for a run: one self-contained page from what the run left.

RUN is the output folder of abinitio, reconstruct, orientations, fit-map, refine, classify2d,
ctf, demo (or any cryogmm run folder), or the stack OUT.mrcs written by deconvolve or prepare.
The page (RUN/report.html, or OUT_report.html beside a stack) shows the command line, version,
seed, settings and timings, the warnings the run raised at the top, the inputs next to
projections of the result, restarts, traces, FSC curves, viewing directions, central slices and
a shaded isosurface of the map from three directions with the pseudo-atoms over it, the files and
the log. Figures are embedded: the file needs no network and opens from disk in any browser.
Runs with a map also get chimerax.cxc (open it in ChimeraX: the map at the same level, the
pseudo-atoms over it). Every command above writes both files itself; this rebuilds them.

Example:
    cryogmm report polII_abinitio
    firefox polII_abinitio/report.html
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a run folder, or the OUT.mrcs of deconvolve or prepare")


def main(args: argparse.Namespace) -> int:
    from cryogmm.report.html import write_report

    print(f"wrote {write_report(args.run)}")
    return 0


def write_run_report(path, args: argparse.Namespace) -> None:
    """What every command calls last on its output (a run folder or a stack): report.html (and
    chimerax.cxc) with the command line of `args` recorded. The report is derived from the
    run's files: if it fails, the run's results are kept, a warning says how to rebuild it and
    the traceback goes to the log (debug level)."""
    from cryogmm.report.html import write_report

    try:
        write_report(path, command_line=getattr(args, "_command_line", None),
                     final_folder=getattr(args, "output", None) if Path(path).is_dir() else None)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the results matter more than the page about them
        log.debug("report.html failed", exc_info=True)
        log.warning("warning: report.html not written (%s: %s); the results are complete: rebuild the page "
                    "with `cryogmm report %s`", type(exc).__name__, exc, getattr(args, "output", path))
