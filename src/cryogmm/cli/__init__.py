"""The `cryogmm` command line: one module per command, each with `add_args` and `main(args)`.

Every command ends with one line on stderr when it does not succeed, never a traceback:
bad input (InputError, an output folder that cannot be written) names the problem and the fix,
exit status 2; SIGINT (Ctrl-C) and SIGTERM end it with "interrupted ..." (saying where a resumable
command continues with --resume), exit status 130 and 143; any other exception is a bug: one line
with the path of the log that holds its traceback, exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from cryogmm import __version__
from cryogmm.errors import InputError, caused_by_interrupt

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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, when `argv` starts with a command's name, of that command
    alone: building them all imports every command's module (pandas among them), a quarter of a
    second before a command can start its work."""
    parser = argparse.ArgumentParser(
        prog="cryogmm", description="Gaussian-mixture (pseudo-atom) initial models for single-particle cryo-EM, their "
        "refinement against particle images (refine) and tools. `cryogmm COMMAND --help` explains a command; `cryogmm demo` runs the whole ab initio pipeline "
        "on a built-in phantom.", epilog=REFERENCES)
    parser.add_argument("--version", action="version", version=f"cryogmm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = {argv[0]: COMMANDS[argv[0]]} if argv and argv[0] in COMMANDS else COMMANDS
    for name, module_name in chosen.items():
        module = importlib.import_module(f"cryogmm.cli.{module_name}")
        doc = module.__doc__ or name
        p = sub.add_parser(name, help=doc.strip().splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


class _StopSignals:
    """SIGINT and SIGTERM while a command runs: the first raises KeyboardInterrupt where Python next
    runs (a numba kernel finishes its call first, and numba may then report it as a SystemError)
    and is remembered, so the exit status says which signal it was whatever exception the
    interrupt turned into. Repeats within `REPEAT_SECONDS` (a second Ctrl-C, or the copy a
    terminal sends to every process of the group) and every signal once the command is ending
    are ignored, so the clean-up is not broken off; a later one raises again, in case the first
    was swallowed by a broad `except` on its way up."""

    REPEAT_SECONDS = 2.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self.last = -float("inf")
        self.ending = False
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.ending or now - self.last < self.REPEAT_SECONDS:
            return
        self.received = self.received or signum
        self.last = now
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


EXIT_CRASH = 1
EXIT_STATUS_OF_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
# a full disk or quota: the user, not cryogmm, can fix it
FULL_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def console_main() -> None:
    """The console script (and `python -m cryogmm`): `main()`, then an immediate exit. The
    interpreter's own teardown, freeing every module and numba's compiled code, would take another
    0.2-0.3 s after the work is done; by then every file is closed, and the logs and the output
    are flushed here."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(arguments).parse_args(arguments)
    args._command_line = ["cryogmm", *(sys.argv[1:] if argv is None else argv)]  # recorded in report.html
    signals = _StopSignals()
    signals.install()
    try:
        return int(args._module.main(args) or 0)
    except InputError as err:
        if signals.received is None:
            print(f"cryogmm {args.command}: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return _interrupted(args, err, signals.received)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - every way a command can end reaches the user as one line
        signals.ending = True
        if signals.received is not None or caused_by_interrupt(err):
            return _interrupted(args, err, signals.received or signal.SIGINT)
        if _cannot_write(err):
            print(f"cryogmm {args.command}: error: {err.filename}: cannot write ({err.strerror}); choose a folder "
                  "you can write to, with enough free space", file=sys.stderr)
            return EXIT_BAD_INPUT
        return _crashed(args, err, sys.argv[1:] if argv is None else argv)
    finally:
        signals.ending = True
        if argv is not None:  # called in-process: leave the caller's handlers as they were
            signals.restore()
        elif signals.previous:  # the program ends: Python's finalisation must not meet a late signal either
            for s in _StopSignals.SIGNALS:
                signal.signal(s, signal.SIG_IGN)


def _cannot_write(err: BaseException) -> bool:
    """An OSError on a path whose folder cannot be written (or a full disk): the user's to fix."""
    from cryogmm.io.runs import why_not_writable

    if not isinstance(err, OSError) or not err.filename:
        return False
    if err.errno in FULL_DISK_ERRORS:
        return True
    folder = Path(os.fsdecode(err.filename)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return not folder.is_dir() or why_not_writable(folder) is not None


def _interrupted(args, err: BaseException, signum: int) -> int:
    """One line: where the run stopped and, for a command with --resume whose checkpoints are
    kept, how to continue."""
    from cryogmm.io.checkpoints import CheckpointFolder, checkpoint_dir_for

    name = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    output = getattr(args, "output", None)
    checkpoints = CheckpointFolder(checkpoint_dir_for(output)) if output is not None else None
    if hasattr(args, "resume") and checkpoints is not None and checkpoints.exists():
        where = checkpoints.progress()
        line = (f"{name}; continue with --resume from {where} (the same options; the checkpoints are kept in "
                f"{checkpoints.path})" if where else
                f"{name} before the first checkpoint; continue with --resume (it starts from the beginning)")
    elif isinstance(err, KeyboardInterrupt) and str(err):
        line = f"{name}; {err}"
    elif hasattr(args, "resume") and output is not None and Path(output).exists():  # e.g. `run`'s finished stages
        line = f"{name}; continue with --resume (what is finished in {output} is kept)"
    else:
        line = f"{name}; nothing was written" + ("" if output is None else f" to {output}")
    print(f"cryogmm {args.command}: {line}", file=sys.stderr)
    return EXIT_STATUS_OF_SIGNAL[signum]


def _crashed(args, err: BaseException, argv: list[str]) -> int:
    """A bug (or an unforeseen state): the traceback goes to the run's log (kept beside the output
    folder by RunFolder) or, before there is one, to a log in the temporary folder; the user sees
    one line with its path."""
    log_path = getattr(err, "cryogmm_run_log", None)
    text = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} cryogmm {__version__} {args.command} failed: "
            f"cryogmm {' '.join(argv)}\n" + "".join(traceback.format_exception(err)))
    for candidate in ([Path(log_path)] if log_path else []) + [
            Path(tempfile.gettempdir()) / f"cryogmm-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"]:
        try:
            with open(candidate, "a") as stream:
                stream.write(text)
            log_path = candidate
            break
        except OSError:
            log_path = None
    what = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    if isinstance(err, MemoryError):
        advice = "the run needs more memory than is free: use smaller options or a larger machine"
    else:
        advice = "this is a bug in cryogmm: please report it with that file"
    where = f"the traceback is in {log_path}" if log_path else "no log could be written"
    print(f"cryogmm {args.command}: failed ({what}); {where}; {advice}", file=sys.stderr)
    return EXIT_CRASH


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
