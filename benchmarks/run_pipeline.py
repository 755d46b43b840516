"""`cryogmm run` (particles -> 2D classes -> initial model -> refined map) against `cryogmm refine`
started from the truth, on the same simulated particles, one after the other.

The data (the classify2d issue's set; options change it): Pol II (`models/1wcm_polII.pdb.gz`), 3000
particles of 64 px at 3 Å/px, density at 6 Å, CTF with defocus 1.0 - 2.5 µm, SNR 0.1, random poses,
shifts up to 6 Å (`cryogmm simulate-images ... --seed 1`); reference.mrc is the 6 Å truth.
- run: `cryogmm run particles.star --classes K --particle-diameter D --seed 1 --output run`;
- refine from the truth: `cryogmm refine particles.star --reference reference.mrc --initial-lowpass 40
  --particle-diameter D --seed 1` (the same particles, all of them).
Scored the same way: each map_unsharpened.mrc against the truth after alignment (rotation, shift
and, for `run`, whose initial model fixes an arbitrary frame and hand, mirror), FSC 0.5 and 0.143.
The issue's target: run's FSC 0.5 within 1 Å of refine-from-the-truth's.

Example:
    python benchmarks/run_pipeline.py --workdir /tmp/run_bench > run_pipeline.json    # about 20 min idle
    python benchmarks/run_pipeline.py --particles 300 --box 32 --pixel-size 6 --resolution 12 --classes 10 \\
        --workdir /tmp/run_tiny > tiny.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from refine_vs_relion import _run, simulate  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz",
                        help="atomic model (default: ../shared/data/models/1wcm_polII.pdb.gz)")
    for flag, kind, default, text in (
            ("--particles", int, 3000, "number of particles"), ("--box", int, 64, "box in px"),
            ("--pixel-size", float, 3.0, "Å per pixel"), ("--resolution", float, 6.0, "resolution of the density in Å"),
            ("--snr", float, 0.1, "signal-to-noise ratio"), ("--max-shift", float, 6.0, "largest shift in Å"),
            ("--classes", int, 25, "2D classes of run"), ("--particle-diameter", float, 170.0, "mask diameter in Å"),
            ("--seed", int, 1, "seed of the simulation and both runs")):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the data set and both runs; a data set already there (same settings) is "
                             "reused, and so is a finished run (default: a temporary folder, removed)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-only", action="store_true", help="cryogmm run only")
    which.add_argument("--refine-only", action="store_true", help="refine from the truth only")
    return parser.parse_args(argv)


def against_truth(map_path: Path, truth_path: Path, allow_mirror: bool) -> dict:
    from cryogmm.io.mrc import read_map
    from cryogmm.metrics.alignment import align_maps
    from cryogmm.metrics.fsc import fourier_shell_correlation, resolution_at

    truth = read_map(truth_path)
    found = read_map(map_path).data
    pixel = truth.voxel_size_in_angstroms
    unaligned = fourier_shell_correlation(found, truth.data, pixel)
    aligned = align_maps(truth.data, found, pixel, allow_mirror=allow_mirror)
    curve = fourier_shell_correlation(aligned.aligned, truth.data, pixel)
    return {"map": str(map_path), "mirrored": bool(aligned.mirrored),
            "fsc_0.5_in_angstroms": resolution_at(curve, 0.5), "fsc_0.143_in_angstroms": resolution_at(curve, 0.143),
            "unaligned_fsc_0.5_in_angstroms": resolution_at(unaligned, 0.5)}


def _stage(sim: Path, out: Path, argv: list, log_name: str) -> dict:
    if (out / "summary.json").is_file():
        _common.info(f"reusing the finished run in {out}")
        return {"reused": True, "wall_seconds": None}
    seconds = _run([sys.executable, "-m", "cryogmm", *argv, "--force", "--quiet", "--output", out], sim,
                   out.parent / log_name)
    return {"reused": False, "wall_seconds": seconds, "command": " ".join(map(str, ["cryogmm", *argv]))}


def main(argv=None) -> int:
    args = parse_args(argv)
    result = {"benchmark": "run_pipeline", "machine": _common.machine_info(), "commit": _common.git_commit(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cryogmm_run_")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        sim = workdir / "sim"
        result["simulation"] = simulate(args, sim)
        truth = sim / "reference.mrc"
        common = ["--particle-diameter", args.particle_diameter, "--seed", args.seed]
        if not args.refine_only:
            out = workdir / "run"
            record = _stage(sim, out, ["run", "particles.star", "--classes", args.classes, *common], "run.log")
            summary = json.loads((out / "summary.json").read_text())
            record.update(stage_seconds=summary["timings_in_seconds"], figures=summary["figures"],
                          against_truth=against_truth(out / "3_refine" / "map_unsharpened.mrc", truth, True),
                          initial_model_against_truth=against_truth(out / "2_abinitio" / "map.mrc", truth, True))
            result["run"] = record
        if not args.run_only:
            out = workdir / "refine_from_truth"
            record = _stage(sim, out, ["refine", "particles.star", "--reference", "reference.mrc", "--initial-lowpass",
                                       "40", *common], "refine_from_truth.log")
            summary = json.loads((out / "summary.json").read_text())
            record.update(resolution_in_angstroms=summary["resolution_in_angstroms"],
                          against_truth=against_truth(out / "map_unsharpened.mrc", truth, False))
            result["refine_from_truth"] = record
        if "run" in result and "refine_from_truth" in result:
            a = result["run"]["against_truth"]["fsc_0.5_in_angstroms"]
            b = result["refine_from_truth"]["against_truth"]["fsc_0.5_in_angstroms"]
            result["fsc_0.5_difference_in_angstroms"] = None if a is None or b is None else a - b
            result["target_met"] = None if a is None or b is None else abs(a - b) <= 1.0
    finally:
        if tmp is not None:
            tmp.cleanup()
    json.dump(result, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
