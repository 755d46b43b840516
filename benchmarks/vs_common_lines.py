"""`cryogmm abinitio` against ASPIRE's common lines on the same simulated images (issue 11).

For each case the images are simulated once (`cryogmm simulate-images MODEL --box 50 --pixel-size 4
--resolution 15 --reference-resolution 20`), then, one after the other, each in a fresh process:

- cryogmm: `cryogmm abinitio images.mrcs --seed 1 [--symmetry G] [--prepare]` with the default schedule
  (and, with --fixed-schedule, once more with `--fixed-schedule`: before/after adaptive stopping);
- ASPIRE (its own virtual environment, `--aspire-python`): CLSync3N orientations, then its
  MeanEstimator on the oriented images, volume and rotations written to files.

Wall time is the whole process (start-up and imports included). Both maps are scored here against
the 20 Å reference after alignment (rotation, shift and hand; `metrics.alignment.align_maps`):
FSC 0.5 / 0.143 and cross-correlation; the rotations against the true poses up to a global
rotation and hand (and the particle's symmetry). ASPIRE's rotation matrices are scored as given and
transposed (the two conventions in use), the better one reported. ASPIRE is never a dependency:
without its python the ASPIRE runs are skipped with a message. Prints JSON on stdout.

Example:
    python benchmarks/vs_common_lines.py --aspire-python /work/aspire-venv/bin/python \\
        --cases polII_25 trpv1_50 polII_25_snr10 groel_d7_25 --workdir /tmp/vs_cl > vs_cl.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODELS = _common.SHARED_DATA / "models"
# name: (model file, images, simulation seed, noise SNR, symmetry imposed by cryogmm, particle symmetry)
CASES = {
    "polII_25": ("1wcm_polII.pdb.gz", 25, 1, None, "C1", "C1"),
    "trpv1_25": ("3j5p_trpv1.pdb.gz", 25, 2, None, "C1", "C4"),
    "trpv1_50": ("3j5p_trpv1.pdb.gz", 50, 2, None, "C1", "C4"),
    "polII_25_snr10": ("1wcm_polII.pdb.gz", 25, 1, 10.0, "C1", "C1"),
    "groel_d7_25": ("1oel_groel_D7_assembly_derived.pdb.gz", 25, 3, None, "D7", "D7"),
}

ASPIRE_SCRIPT = r"""
import sys, time
import numpy as np, mrcfile
start = time.perf_counter()
from aspire.source import ArrayImageSource, OrientedSource
from aspire.abinitio import CLSync3N
from aspire.reconstruction import MeanEstimator
images_path, pixel, volume_path, rotations_path = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
with mrcfile.open(images_path, permissive=True) as f:
    images = np.asarray(f.data, dtype=np.float64)
source = ArrayImageSource(images, pixel_size=pixel)
estimator = CLSync3N(source, seed=1)
oriented = OrientedSource(source, estimator)
rotations = np.asarray(oriented.rotations, dtype=np.float64)
volume = MeanEstimator(oriented).estimate()
data = np.asarray(volume.asnumpy()[0], dtype=np.float32)
with mrcfile.new(volume_path, overwrite=True) as f:
    f.set_data(data)
    f.voxel_size = pixel
np.save(rotations_path, rotations)
print("aspire seconds after imports", time.perf_counter() - start, file=sys.stderr)
"""


def _run(argv: list[str], log: Path, env=None, cwd=None) -> float:
    """Wall seconds of a fresh process; raises with its log's tail if it fails."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, argv[:4]))} ... failed ({done.returncode}):\n{tail}")
    return seconds


def _score_map(volume, reference, pixel) -> dict:
    from cryogmm.metrics.alignment import align_maps
    from cryogmm.metrics.correlation import cross_correlation
    from cryogmm.metrics.fsc import fourier_shell_correlation, resolution_at

    aligned = align_maps(reference, volume, pixel).aligned
    curve = fourier_shell_correlation(reference, aligned, pixel)
    return {"fsc_0.5_in_angstroms": resolution_at(curve, 0.5), "fsc_0.143_in_angstroms": resolution_at(curve, 0.143),
            "cross_correlation": cross_correlation(reference, aligned)}


def _score_rotations(rotations, truth, symmetry: str) -> dict:
    import numpy as np

    from cryogmm.geometry.symmetry import symmetry_operators
    from cryogmm.metrics.alignment import rotation_errors

    errors = rotation_errors(rotations, truth, symmetry_operators(symmetry)).errors_in_degrees
    return {"within_5_degrees": int(np.sum(errors <= 5.0)), "n_images": int(errors.size),
            "median_degrees": float(np.median(errors)), "max_degrees": float(errors.max())}


def run_case(name: str, workdir: Path, aspire_python: Path | None, jobs: int | None,
             fixed_schedule: bool = False) -> dict:
    import numpy as np

    from cryogmm.io.mrc import read_map
    from cryogmm.io.star import columns_to_poses, read_particles

    model, n_images, seed, snr, symmetry, particle_symmetry = CASES[name]
    folder = workdir / name
    data = folder / "data"
    cryogmm = [sys.executable, "-m", "cryogmm"]
    if not (data / "images.mrcs").exists():
        argv = cryogmm + ["simulate-images", str(_common.require_file(MODELS / model, model)), "--number",
                          str(n_images), "--box", "50", "--pixel-size", "4", "--resolution", "15",
                          "--reference-resolution", "20", "--seed", str(seed), "--output", str(data), "--force"]
        if snr is not None:
            argv += ["--snr", str(snr)]
        folder.mkdir(parents=True, exist_ok=True)
        _run(argv, folder / "simulate.log")
    reference = read_map(data / "reference.mrc").data.astype(np.float64)
    truth, _ = columns_to_poses(read_particles(data / "particles.star").particles)
    out = {"case": name, "model": model, "n_images": n_images, "snr": snr, "box": 50, "pixel_size_in_angstroms": 4.0,
           "symmetry_imposed_by_cryogmm": symmetry, "load_before": os.getloadavg()[0]}

    for label in ["cryogmm"] + (["cryogmm_fixed_schedule"] if fixed_schedule else []):
        run = folder / label
        argv = cryogmm + ["abinitio", str(data / "images.mrcs"), "--seed", "1", "--symmetry", symmetry, "--quiet",
                          "--output", str(run), "--force"]
        if snr is not None:
            argv.append("--prepare")
        if jobs:
            argv += ["--jobs", str(jobs)]
        if label == "cryogmm_fixed_schedule":
            argv.append("--fixed-schedule")
        _common.info(f"{name}: {' '.join(argv[2:])}")
        seconds = _run(argv, folder / f"{label}.log")
        summary = json.loads((run / "summary.json").read_text())
        rotations, _ = columns_to_poses(read_particles(run / "orientations.star").particles)
        out[label] = {"wall_seconds": seconds, "pipeline_seconds": summary["timings_in_seconds"]["total_seconds"],
                      **_score_map(read_map(run / "map.mrc").data.astype(np.float64), reference, 4.0),
                      "rotations": _score_rotations(rotations, truth, particle_symmetry),
                      "stopping": summary.get("stopping")}

    if aspire_python is None:
        out["aspire"] = "skipped: no ASPIRE python (--aspire-python)"
        return out
    _common.info(f"{name}: ASPIRE CLSync3N + MeanEstimator")
    script = folder / "aspire_run.py"
    script.write_text(ASPIRE_SCRIPT)
    data, folder = data.resolve(), folder.resolve()
    volume_path, rotations_path = folder / "aspire_volume.mrc", folder / "aspire_rotations.npy"
    script = script.resolve()
    try:
        seconds = _run([str(aspire_python), str(script), str(data / "images.mrcs"), "4.0", str(volume_path),
                        str(rotations_path)], folder / "aspire.log", env={**os.environ, "PYTHONPATH": ""},
                       cwd=folder)  # ASPIRE writes its logs/ and solver checkpoints into the working folder
    except RuntimeError as error:
        out["aspire"] = {"failed": str(error)[-500:]}
        return out
    rotations = np.load(rotations_path)
    scored = {"as_given": _score_rotations(rotations, truth, particle_symmetry),
              "transposed": _score_rotations(np.swapaxes(rotations, -1, -2), truth, particle_symmetry)}
    better = min(scored, key=lambda k: scored[k]["median_degrees"])
    out["aspire"] = {"wall_seconds": seconds, **_score_map(read_map(volume_path).data.astype(np.float64), reference, 4.0),
                     "rotations": scored[better], "rotation_convention": better}
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aspire-python", type=Path, default=Path("/work/aspire-venv/bin/python"),
                        help="python of a virtual environment with ASPIRE installed (skipped if absent)")
    parser.add_argument("--cases", nargs="+", default=["polII_25", "trpv1_50", "polII_25_snr10", "groel_d7_25"],
                        choices=sorted(CASES))
    parser.add_argument("--workdir", type=Path, default=Path("vs_common_lines"))
    parser.add_argument("--jobs", type=int, default=None, help="--jobs for cryogmm abinitio (default: its own)")
    parser.add_argument("--fixed-schedule", action="store_true",
                        help="also run cryogmm with --fixed-schedule (no adaptive stopping): before/after")
    args = parser.parse_args(argv)
    aspire = args.aspire_python if args.aspire_python.is_file() else None
    if aspire is None:
        _common.info(f"ASPIRE skipped: {args.aspire_python} not found (python -m venv DIR && DIR/bin/pip install "
                     "aspire, then pass --aspire-python DIR/bin/python)")
    results = [run_case(name, args.workdir, aspire, args.jobs, args.fixed_schedule) for name in args.cases]
    print(json.dumps({"machine": _common.machine_info(), "cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
