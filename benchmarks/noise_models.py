"""The Poisson and Gaussian noise models side by side on the same simulated Pol II class averages.

Data (`cryogmm simulate-images`, thesis 5.3.1): Pol II (1wcm), 25 images of 50 px at 4 Å/px,
density at 15 Å, the 20 Å reference, white Gaussian noise at each `--snr` (inf: none), and one
set with a CTF per image (defocus 1-3 µm, SNR 10, not deconvolved). Each set runs through
`cryogmm abinitio` twice with the same seed: `--noise-model poisson` (with `--clip-negatives` on
the noisy sets, `--prepare` on the CTF set, which deconvolves it) and `--noise-model gaussian`
(with `--ctf` on the CTF set). Reported per run: FSC 0.5 against the reference after alignment,
rotations within 5 degrees (final and top restart), wall time. JSON on stdout, a table on stderr,
a plot (FSC 0.5 per condition and model) to `--plot`.

Example:
    python benchmarks/noise_models.py --snr inf 30 10 3 1 --plot noise_models.png > noise_models.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=_common.SHARED_DATA / "models" / "1wcm_polII.pdb.gz")
    parser.add_argument("--snr", nargs="+", default=["inf", "30", "10", "3", "1"])
    parser.add_argument("--no-ctf", action="store_true", help="leave out the CTF set")
    parser.add_argument("--models", nargs="+", default=["poisson", "gaussian"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data and runs here")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    from cryogmm.cli import main as cryogmm

    model = _common.require_file(args.model, "atomic model")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="noise_models_"))
    conditions = [(f"snr {snr}", snr, False) for snr in args.snr] + ([] if args.no_ctf else [("ctf, snr 10", "10", True)])
    rows = []
    for name, snr, ctf in conditions:
        folder = work / name.replace(" ", "_").replace(",", "")
        if not (folder / "images.mrcs").exists():
            argv_sim = ["simulate-images", str(model), "--number", "25", "--box", "50", "--pixel-size", "4",
                        "--resolution", "15", "--reference-resolution", "20", "--seed", str(args.seed),
                        "--output", str(folder), "--force"]
            if snr != "inf":
                argv_sim += ["--snr", snr]
            if ctf:
                argv_sim += ["--defocus-range", "1", "3"]
            assert cryogmm(argv_sim) == 0
        for noise_model in args.models:
            out = folder / f"run_{noise_model}"
            images = folder / ("particles.star" if ctf else "images.mrcs")
            argv_run = ["abinitio", str(images), "--noise-model", noise_model, "--pixel-size", "4",
                        "--reference", str(folder / "reference.mrc"), "--true-poses", str(folder / "particles.star"),
                        "--seed", str(args.seed), "--jobs", str(args.jobs), "--quiet", "--output", str(out), "--force"]
            if ctf:
                argv_run += ["--ctf"] if noise_model == "gaussian" else ["--prepare"]
            elif snr != "inf" and noise_model == "poisson":
                argv_run += ["--clip-negatives"]
            if ctf:
                argv_run.remove("--pixel-size")
                argv_run.remove("4")
            _common.info(f"{name}: {noise_model}")
            start = time.perf_counter()
            status = cryogmm(argv_run)
            wall = time.perf_counter() - start
            row = {"condition": name, "snr": snr, "ctf": ctf, "noise_model": noise_model, "exit_status": status,
                   "wall_seconds": wall}
            if status == 0:
                summary = json.loads((out / "summary.json").read_text())
                errors = summary["rotation_errors"]
                row.update(fsc_05_in_angstroms=summary["reference"]["fsc_0.5_in_angstroms"],
                           within_5_degrees=errors["refinement"]["within_5_degrees"],
                           top_restart_within_5_degrees=errors["best_restart"]["within_5_degrees"],
                           pipeline_seconds=summary["timings_in_seconds"]["total_seconds"])
            rows.append(row)
            _common.info(json.dumps(row))
    _common.info("condition      model     FSC0.5(Å)  within5  top-restart  wall(s)")
    for r in rows:
        _common.info(f"{r['condition']:<14} {r['noise_model']:<9} {r.get('fsc_05_in_angstroms', float('nan')):9.2f} "
                     f"{r.get('within_5_degrees', -1):8d} {r.get('top_restart_within_5_degrees', -1):12d} "
                     f"{r['wall_seconds']:8.1f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = [c[0] for c in conditions]
        for offset, noise_model in zip((-0.15, 0.15), args.models):
            values = [next((r.get("fsc_05_in_angstroms", float("nan")) for r in rows
                            if r["condition"] == n and r["noise_model"] == noise_model), float("nan")) for n in names]
            ax.bar([i + offset for i in range(len(names))], values, width=0.3, label=noise_model)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("FSC 0.5 vs 20 Å reference (Å)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    _common.dump({"machine": _common.machine_info(), "workdir": str(work), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
