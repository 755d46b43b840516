"""Acceptance figures of finished `cryogmm abinitio` runs on simulated data (issue 3).

For each RUN folder (made with --reference and --true-poses so that summary.json holds the aligned
FSC and cross-correlation), reads orientations.star and restarts/restart_N.star and measures the
rotation errors against the true poses up to a global rotation and hand (Eqns. 3.12-3.18), taking
the particle's own symmetry into account (`--particle-symmetry`, e.g. C4 for TRPV1 even when the
run imposed none). Reports per restart: log-posterior, errors within 5 degrees; whether the
top-ranked restart has the fewest errors; and for the final result: all within 5 degrees, FSC 0.5
<= 16 Å, cross-correlation >= 0.98.

Example:
    python benchmarks/abinitio_acceptance.py RUN --true-poses data/particles.star --particle-symmetry C4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--true-poses", type=Path, required=True)
    parser.add_argument("--particle-symmetry", default="C1")
    args = parser.parse_args(argv)
    import numpy as np

    from cryogmm.geometry.symmetry import symmetry_operators
    from cryogmm.io.star import columns_to_poses, read_particles
    from cryogmm.metrics.alignment import rotation_errors

    truth, _ = columns_to_poses(read_particles(args.true_poses).particles)
    ops = symmetry_operators(args.particle_symmetry)
    summary = json.loads((args.run / "summary.json").read_text())

    def errors(star):
        rotations, _ = columns_to_poses(read_particles(star).particles)
        e = rotation_errors(rotations, truth, ops)
        return {"within_5_degrees": int(e.n_within(5.0)), "median_degrees": float(np.median(e.errors_in_degrees)),
                "max_degrees": float(e.errors_in_degrees.max()), "mirrored": bool(e.mirrored)}

    restarts = [errors(args.run / "restarts" / f"restart_{i + 1}.star")
                for i in range(len(summary["restart_log_posteriors"]))]
    final = errors(args.run / "orientations.star")
    chosen = summary["chosen_restart"] - 1
    fewest = max(r["within_5_degrees"] for r in restarts)
    reference = summary.get("reference", {})
    result = {
        "run": str(args.run), "particle_symmetry": args.particle_symmetry, "symmetry_imposed": summary["symmetry"],
        "restarts": [dict(r, log_posterior=lp) for r, lp in zip(restarts, summary["restart_log_posteriors"])],
        "chosen_restart": chosen + 1,
        "chosen_restart_has_fewest_errors": restarts[chosen]["within_5_degrees"] == fewest,
        "final": final, "all_within_5_degrees": final["within_5_degrees"] == truth.shape[0],
        "fsc_0.5_in_angstroms": reference.get("fsc_0.5_in_angstroms"),
        "fsc_0.143_in_angstroms": reference.get("fsc_0.143_in_angstroms"),
        "cross_correlation": reference.get("cross_correlation"),
        "total_seconds": summary["timings_in_seconds"]["total_seconds"],
    }
    _common.dump(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
