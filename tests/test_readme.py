"""The README's Python API example for ab initio runs as written (on a small, fast input)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cryogmm.geometry.so3 import random_rotations
from cryogmm.io.mrc import read_map, write_stack
from cryogmm.io.pseudoatoms import read_pseudoatoms
from cryogmm.io.star import format_image_name, read_particles
from cryogmm.simulate.images import project_atoms
from cryogmm.simulate.phantom import asymmetric_phantom

README = Path(__file__).resolve().parents[1] / "README.md"
# only the speed differs from the example's defaults (thesis-sized runs take minutes)
FAST = dict(n_restarts=2, n_components_initial=20, initial_box=16, initial_counts=500, n_rotations=100, n_cycles=2,
            mixture_steps=5, rotation_steps=2, local_candidates=10, n_components=40, refine_counts=2000,
            refine_mixture_steps=5, refine_steps=20, refine_burn_in=10, refine_thin=5)


def _example(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_readme_abinitio_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import cryogmm.pipelines.abinitio as abinitio

    coordinates, z = asymmetric_phantom(1500)
    clean = project_atoms(coordinates, z, random_rotations(np.random.default_rng(4), 8), None, 20.0, 24, 4.0,
                          dtype=np.float64)
    # class averages as RELION writes them: a background level and negative values around the particle
    write_stack(tmp_path / "class_averages.mrcs", clean - 0.05 * clean.max(), 4.0)
    monkeypatch.chdir(tmp_path)
    # faster defaults; the class itself stays (spawned restart workers unpickle its instances)
    build = abinitio.AbinitioSettings.__init__
    monkeypatch.setattr(abinitio.AbinitioSettings, "__init__", lambda self, **given: build(self, **(FAST | given)))
    exec(compile(_example("run_abinitio("), str(README), "exec"), {"__name__": "__main__"})
    out = tmp_path / "my_run"
    assert sorted(p.name for p in out.iterdir()) == ["fourier_inversion.mrc", "map.mrc", "orientations.star",
                                                      "posterior_mean.mrc", "pseudoatoms.cif", "pseudoatoms.pdb"]
    assert read_map(out / "map.mrc").data.shape == (24, 24, 24)
    assert read_pseudoatoms(out / "pseudoatoms.pdb").n_components == 40
    names = read_particles(out / "orientations.star").particles["rlnImageName"].tolist()
    assert names == [format_image_name(i, "class_averages.mrcs") for i in range(8)]
    printed = capsys.readouterr().out
    assert "masked (auto)" in printed and "centred on the centre of mass" in printed


def test_the_thesis_and_the_em_derivation_are_cited_once():
    text = " ".join(README.read_text().split())
    assert text.count("Paul Joubert, *A Bayesian approach to initial model inference in cryo-electron microscopy*, "
                      "Dissertation, Georg-August-Universität Göttingen, 2016") == 1
    assert text.count('"CryoEM Report 08/08: Derivation of EM algorithm" (8 August 2018)') == 1
