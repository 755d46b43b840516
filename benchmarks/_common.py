"""Helpers shared by the benchmark scripts (not part of the package).

Nothing here imports numpy or numba at module level: `limit_threads` must run before they are
imported, so that the thread pools they create see the limits.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(n_threads: int) -> None:
    """Set the numba/OpenMP/MKL/OpenBLAS thread counts; call before importing numpy or numba."""
    if "numpy" in sys.modules or "numba" in sys.modules:
        raise RuntimeError("limit_threads must run before numpy and numba are imported")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(int(n_threads))


def require_file(path: str | os.PathLike, what: str) -> Path:
    """The path if it is a file; otherwise exit with status 2 and a one-line message."""
    path = Path(path)
    if not path.is_file():
        sys.exit(f"error: {what} not found at {path}; pass its path as an argument "
                 f"(the default expects the shared data folder at {SHARED_DATA})")
    return path


def info(message: str) -> None:
    """Progress and information go to stderr; stdout holds only the JSON result."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import numba
    import numpy as np

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available_to_process": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "thread_environment": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+modified-src" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def simulated_maps(model_path: Path, resolution: float, pixel_size: float,
                   reference_resolutions: tuple[float, ...] = ()):
    """The molmap of the model at `resolution` on the grid `cryogmm simulate-map` would use, and
    the same model at each of `reference_resolutions` on that same grid.

    Returns (model, grid, map, {resolution: reference map}).
    """
    from cryogmm.io.atoms import read_atoms
    from cryogmm.simulate.molmap import default_map_grid, molmap, molmap_padding_in_angstroms

    model = read_atoms(model_path)
    grid = default_map_grid(model.coordinates_in_angstroms, pixel_size, None,
                            molmap_padding_in_angstroms(resolution), atomic_numbers=model.atomic_numbers)
    density = molmap(model.coordinates_in_angstroms, model.atomic_numbers, resolution, grid)
    references = {r: molmap(model.coordinates_in_angstroms, model.atomic_numbers, r, grid)
                  for r in reference_resolutions}
    return model, grid, density, references


def median(values) -> float:
    import numpy as np

    return float(np.median(np.asarray(values, dtype=np.float64)))


def dump(result: dict) -> None:
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
