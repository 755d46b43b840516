"""`cryogmm run` (particles -> 2D classes -> initial model -> refined map) against `cryogmm refine`
started from the truth, on the same simulated particles, one after the other.

The data (the classify2d issue's set; options change it): Pol II (`models/1wcm_polII.pdb.gz`), 3000
particles of 64 px at 3 Å/px, density at 6 Å, CTF with defocus 1.0 - 2.5 µm, SNR 0.1, random poses,
shifts up to 6 Å (`cryogmm simulate-images ... --seed 1`); reference.mrc is the 6 Å truth.
- run: `cryogmm run particles.star --classes K --particle-diameter D --seed 1 --output run`;
- refine from the truth: `cryogmm refine particles.star --reference reference.mrc --initial-lowpass 40
  --particle-diameter D --seed 1` (the same particles, all of them).
Scored the same way: each map_unsharpened.mrc against the truth after alignment (rotation, shift
and hand: `run`'s initial model fixes an arbitrary frame), FSC 0.5 and 0.143
(`cryogmm.pipelines.compare.compare_with_reference`), and unaligned.
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
from refine_vs_relion import _run, add_particle_set_args, simulate  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_particle_set_args(parser, snr=0.1, extra=(("--classes", int, 25, "2D classes of run"),),
                          workdir_help="folder for the data set and both runs; a data set already there (same "
                                       "settings) is reused, and so is a finished run (default: a temporary folder, "
                                       "removed)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-only", action="store_true", help="cryogmm run only")
    which.add_argument("--refine-only", action="store_true", help="refine from the truth only")
    return parser.parse_args(argv)


def against_truth(map_path: Path, truth_path: Path) -> dict:
    """FSC of a map against the truth as it is and after alignment (rotation, shift, hand)."""
    from cryogmm.io.mrc import read_map
    from cryogmm.pipelines.compare import compare_with_reference

    truth = read_map(truth_path)
    found = read_map(map_path).data
    pixel = truth.voxel_size_in_angstroms
    unaligned = compare_with_reference(found, truth.data, pixel, align=False).figures
    aligned = compare_with_reference(found, truth.data, pixel, align=True).figures
    return {"map": str(map_path), **aligned, "unaligned_fsc_0.5_in_angstroms": unaligned["fsc_0.5_in_angstroms"]}


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
                          against_truth=against_truth(out / "3_refine" / "map_unsharpened.mrc", truth),
                          initial_model_against_truth=against_truth(out / "2_abinitio" / "map.mrc", truth))
            result["run"] = record
        if not args.run_only:
            out = workdir / "refine_from_truth"
            record = _stage(sim, out, ["refine", "particles.star", "--reference", "reference.mrc", "--initial-lowpass",
                                       "40", *common], "refine_from_truth.log")
            summary = json.loads((out / "summary.json").read_text())
            record.update(resolution_in_angstroms=summary["resolution_in_angstroms"],
                          against_truth=against_truth(out / "map_unsharpened.mrc", truth))
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
