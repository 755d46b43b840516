"""Shared test helpers: the `shared_data`, `relion` and `browser` markers, dtype-aware tolerances, a
small fast `cryogmm demo`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


RELION_PROGRAMS = ("relion_reconstruct", "relion_project")
BROWSER = "chromium"  # Debian's package of the same name (headless Chromium)


def pytest_collection_modifyitems(config, items):
    skip_data = pytest.mark.skip(reason=f"needs the shared data folder {SHARED_DATA} (absent in a fresh clone)")
    missing = [name for name in RELION_PROGRAMS if shutil.which(name) is None]
    skip_relion = pytest.mark.skip(reason=f"needs RELION 3.1 ({', '.join(missing)} not on PATH; "
                                   "apt-get install -y relion)")
    skip_browser = pytest.mark.skip(reason=f"needs a headless browser ({BROWSER} not on PATH; apt-get install -y "
                                    f"{BROWSER})")
    no_browser = shutil.which(BROWSER) is None
    for item in items:
        if "browser" in item.keywords and no_browser:
            item.add_marker(skip_browser)
        if "shared_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)
        if "relion" in item.keywords and missing:
            item.add_marker(skip_relion)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


def _simulate_phantom_views(folder: Path, *, views: int, per_view: int, seed: int, ctf: bool = True,
                            extra: tuple = ()) -> Path:
    """`views` x `per_view` particles of the built-in phantom by `cryogmm simulate-images`: 24 px of
    5 Å, 12 Å density, SNR 0.5, shifts up to 4 Å, CTF 1.0-2.5 µm (none with ctf=False); returns the
    output folder (particles.star, images.mrcs, class_projections.mrcs, reference.mrc)."""
    from cryogmm.cli import main
    from cryogmm.io.pseudoatoms import write_pseudoatoms_pdb
    from cryogmm.mixture import GaussianMixture
    from cryogmm.simulate.phantom import asymmetric_phantom

    folder.mkdir(parents=True, exist_ok=True)
    coordinates, _ = asymmetric_phantom(2000)
    write_pseudoatoms_pdb(folder / "phantom.pdb", GaussianMixture(coordinates, np.full(2000, 1 / 2000), 1.0))
    out = folder / "sim"
    assert main(["simulate-images", str(folder / "phantom.pdb"), "--classes", str(views), "--particles-per-class",
                 str(per_view), "--box", "24", "--pixel-size", "5", "--resolution", "12", "--snr", "0.5",
                 "--max-shift", "4", *(["--defocus-range", "1.0", "2.5"] if ctf else []), *extra, "--seed", str(seed),
                 "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def simulate_phantom_views():
    """The function `_simulate_phantom_views(folder, views=, per_view=, seed=, ctf=, extra=)`."""
    return _simulate_phantom_views


def tolerance(dtype) -> float:
    """Relative tolerance for comparisons in `dtype` (one helper for all tests)."""
    return {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]


# `cryogmm demo` made small and fast: 8 images of 24 px, short chains (seconds, not a minute)
FAST_DEMO = dict(n_restarts=2, n_components_initial=20, initial_box=16, initial_counts=500, n_rotations=100,
                 n_cycles=2, mixture_steps=5, rotation_steps=2, local_candidates=10, n_components=40,
                 refine_counts=2000, refine_mixture_steps=5, refine_steps=20, refine_burn_in=10, refine_thin=5)


@pytest.fixture
def small_demo(monkeypatch):
    import cryogmm.cli.demo as demo
    import cryogmm.pipelines.abinitio as abinitio

    monkeypatch.setattr(demo, "DEMO_BOX", 24)
    monkeypatch.setattr(demo, "DEMO_IMAGES", 8)
    build = abinitio.AbinitioSettings.__init__
    monkeypatch.setattr(abinitio.AbinitioSettings, "__init__",
                        lambda self, **given: build(self, **(given | FAST_DEMO)))
