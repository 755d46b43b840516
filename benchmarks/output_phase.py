"""Time the output phase of `cryogmm abinitio` (issue 11): everything after the pipeline, i.e.
`write_outputs` (maps, STAR files, pseudo-atoms, projections.png, map_slices.png, restarts.png,
summary.json ...) and `write_run_report` (report.html, chimerax.cxc).

Each repeat is one real run, `cryogmm abinitio IMAGES --seed 1 --quiet --jobs 1` in a fresh
process (imports such as matplotlib's count where the command pays them), with the two calls
timed inside it. Without --images, the Pol II case of benchmarks/vs_common_lines.py is simulated
first (25 clean images of 50 px at 4 Å: `cryogmm simulate-images 1wcm_polII.pdb.gz --number 25
--box 50 --pixel-size 4 --resolution 15 --reference-resolution 20 --seed 1`). Prints JSON on
stdout: per run and the medians, with the load average before each run.

Example:
    python benchmarks/output_phase.py --workdir /tmp/output_phase --repeats 3 > output_phase.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _child(argv: list[str]) -> None:
    """One run of the command with write_outputs and write_run_report timed; JSON on stdout."""
    import cryogmm.cli.abinitio as abinitio
    import cryogmm.cli.report as report
    from cryogmm.cli import main

    seconds = {}

    def timed(name, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] = time.perf_counter() - start
        return call

    abinitio.write_outputs = timed("write_outputs", abinitio.write_outputs)
    report.write_run_report = timed("report", report.write_run_report)
    start = time.perf_counter()
    status = main(argv)
    seconds["command"] = time.perf_counter() - start
    print(json.dumps({"status": status, **{f"{k}_seconds": round(v, 3) for k, v in seconds.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=None, help="the images (default: simulate the Pol II case)")
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the simulated images and the runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    images = args.images
    if images is None:
        data = args.workdir / "polII_25"
        images = data / "images.mrcs"
        if not images.exists():
            model = _common.require_file(_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz", "the Pol II model")
            _common.info(f"simulating {images}")
            subprocess.run([sys.executable, "-m", "cryogmm", "simulate-images", str(model), "--number", "25",
                            "--box", "50", "--pixel-size", "4", "--resolution", "15", "--reference-resolution", "20",
                            "--seed", "1", "--output", str(data), "--force"], check=True, stdout=subprocess.DEVNULL)
    _common.require_file(images, "the images")
    runs = []
    for repeat in range(args.repeats):
        load = os.getloadavg()[0]
        argv = ["abinitio", str(images), "--seed", "1", "--quiet", "--jobs", "1", "--output",
                str(args.workdir / "run"), "--force"]
        done = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--child", *argv],
                              check=True, capture_output=True, text=True)
        run = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append({"load_before": load, **run})
        _common.info(f"run {repeat + 1}: {run}")
    total = [r["write_outputs_seconds"] + r["report_seconds"] for r in runs]
    print(json.dumps({
        "images": str(images), "commit": _common.git_commit(), "machine": _common.machine_info(), "runs": runs,
        "median_write_outputs_seconds": statistics.median(r["write_outputs_seconds"] for r in runs),
        "median_report_seconds": statistics.median(r["report_seconds"] for r in runs),
        "median_output_phase_seconds": statistics.median(total),
    }, indent=1))


if __name__ == "__main__":
    main()
