"""The Gaussian-noise ab initio pipeline recovers known poses and structure (Pol II, small)."""

import numpy as np
import pytest

from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.io.atoms import read_atoms
from cryogmm.metrics.alignment import rotation_errors
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.mixture import evaluate, project
from cryogmm.pipelines.abinitio_gaussian import GaussianAbinitioSettings, run_gaussian_abinitio
from cryogmm.simulate.images import add_noise, project_atoms

PIXEL, BOX, N_IMAGES = 8.0, 24, 20


@pytest.mark.shared_data
def test_recovers_poses_and_projections_of_pol_ii(shared_data):
    model = read_atoms(shared_data / "models" / "1wcm_polII.pdb.gz")
    z = model.atomic_numbers
    xyz = model.coordinates_in_angstroms - (model.coordinates_in_angstroms * z[:, None]).sum(0) / z.sum()
    truth = random_rotations(np.random.default_rng(4), N_IMAGES)
    clean = project_atoms(xyz, z, truth, None, 20.0, BOX, PIXEL, dtype=np.float64)
    images = add_noise(np.random.default_rng(0), clean, 10.0)  # SNR 10, as thesis 5.3.1
    settings = GaussianAbinitioSettings(n_restarts=3, n_components_initial=50, n_components=100, initial_box=BOX,
                                        refine_mixture_steps=10, refine_steps=30, refine_burn_in=15, refine_thin=3)
    result = run_gaussian_abinitio(images, PIXEL, settings, seed=1, threads=1)
    ops = np.eye(3)[None]
    per_restart = [rotation_errors(r.rotations, truth, ops).n_within(5.0) for r in result.restarts]
    # the top-ranked restart is one with the most rotations right, and the refinement gets all of them
    assert per_restart[result.best_restart] == max(per_restart), per_restart
    errors = rotation_errors(result.rotations, truth, ops).errors_in_degrees
    assert errors.max() < 5.0 and np.median(errors) < 3.0, errors
    # the model explains each clean image: its projection along the estimated pose correlates
    grid = Grid.centered((BOX, BOX), PIXEL)
    projections = [evaluate(project(result.full_mixture, r, t), grid)
                   for r, t in zip(result.rotations, result.translations_in_angstroms)]
    ccs = [cross_correlation(a, b) for a, b in zip(clean, projections)]
    assert min(ccs) > 0.95, ccs
    refinement = result.sampler_report["refinement"]["acceptance_rates"]
    assert 0.5 < refinement["means"] < 1.0 and 0.1 < refinement["rotations"] < 0.6, refinement
