"""The `cryogmm` command line: one module per command, each with `add_args` and `main(args)`.

Bad input ends with one line on stderr naming the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from cryogmm import __version__
from cryogmm.errors import InputError

# command name -> module under cryogmm.cli (listed explicitly, imported lazily)
COMMANDS = {
    "demo": "demo",
    "simulate-map": "simulate_map",
    "simulate-images": "simulate_images",
    "fit-map": "fit_map",
    "abinitio": "abinitio",
    "fsc": "fsc",
    "reconstruct": "reconstruct",
    "orientations": "orientations",
    "deconvolve": "deconvolve",
    "ctf": "ctf",
    "prepare": "prepare",
    "refine": "refine",
    "classify2d": "classify2d",
    "run": "run",
    "report": "report",
}

EXIT_BAD_INPUT = 2

REFERENCES = (
    'References: the thesis (cited as "thesis section 3.4", "Eqn. 2.52"): Paul Joubert, A Bayesian approach to '
    "initial model inference in cryo-electron microscopy, Dissertation, Georg-August-Universität Göttingen, 2016. "
    'The MAP-EM derivation in the style of RELION: "CryoEM Report 08/08: Derivation of EM algorithm" (2018), '
    "after S. H. W. Scheres, J. Struct. Biol. 180, 519-530 (2012).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryogmm", description="Gaussian-mixture (pseudo-atom) initial models for single-particle cryo-EM, their "
        "refinement against particle images (refine) and tools. `cryogmm COMMAND --help` explains a command; `cryogmm demo` runs the whole ab initio pipeline "
        "on a built-in phantom.", epilog=REFERENCES)
    parser.add_argument("--version", action="version", version=f"cryogmm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"cryogmm.cli.{module_name}")
        doc = module.__doc__ or name
        p = sub.add_parser(name, help=doc.strip().splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._command_line = ["cryogmm", *(sys.argv[1:] if argv is None else argv)]  # recorded in report.html
    try:
        return int(args._module.main(args) or 0)
    except InputError as err:
        print(f"cryogmm {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:  # a command may say what was kept, e.g. checkpoints
        if argv is None and threading.current_thread() is threading.main_thread():
            # the program is ending: a second Ctrl-C must not kill it half-way (nor print a traceback)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"cryogmm {args.command}: interrupted" + (f"; {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return 130


def setup_logging(log_path=None, verbose: bool = False) -> logging.Logger:
    """Configure the `cryogmm` logger: messages to stderr and, if given, to `log_path`."""
    logger = logging.getLogger("cryogmm")
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_path is not None:
        file_handler = logging.FileHandler(log_path)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger


def close_logging() -> None:
    logger = logging.getLogger("cryogmm")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True  # back to the library default (setup_logging turned it off)


if __name__ == "__main__":
    sys.exit(main())
