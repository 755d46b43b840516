"""`pipelines.refine.refine` on a real Dask cluster (two worker processes) gives the single-process result."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.io.mrc import read_map
from cryogmm.io.particles import stack_reader
from cryogmm.io.pseudoatoms import write_pseudoatoms_pdb
from cryogmm.io.star import ctf_parameters, read_particles
from cryogmm.mixture import GaussianMixture
from cryogmm.pipelines import refine as rf
from cryogmm.simulate.phantom import asymmetric_phantom

distributed = pytest.importorskip("dask.distributed")

N_PARTICLES, BOX, PIXEL = 200, 32, 4.5


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    """200 phantom particles on disc (read lazily, as the CLI reads them) and the 8 Å truth."""
    folder = tmp_path_factory.mktemp("dask_data")
    coordinates, _ = asymmetric_phantom(2000)
    write_pseudoatoms_pdb(folder / "phantom.pdb", GaussianMixture(coordinates, np.full(2000, 1 / 2000), 1.0))
    assert main(["simulate-images", str(folder / "phantom.pdb"), "--number", str(N_PARTICLES), "--box", str(BOX),
                 "--pixel-size", str(PIXEL), "--resolution", "8", "--snr", "0.5", "--max-shift", "6",
                 "--defocus-range", "1.0", "2.5", "--seed", "2", "--output", str(folder / "sim")]) == 0
    table = read_particles(folder / "sim" / "particles.star")
    reader, pixel = stack_reader(table)
    data = rf.ParticleData(reader, ctf_parameters(table), reader.box, pixel, len(reader))
    return data, read_map(folder / "sim" / "reference.mrc").data


def test_dask_cluster_gives_the_single_process_result(particles):
    """Bit for bit (measured): each batch is an independent task whose sums come back in task order
    and are added in the main process in that order, whoever ran it. Nothing else could differ but
    the float32 matrix products of the E-step, which the workers run with one BLAS thread (Dask
    sets OMP/MKL/OPENBLAS_NUM_THREADS=1) and this process with two: they agree to the last bit here
    (OpenBLAS 0.3.31 splits a product over blocks of its output, each summed by one thread); a BLAS
    that split the inner sums over threads would leave float32 rounding differences (and poses
    that flip between near-equal candidates)."""
    data, reference = particles
    # iteration 1 and the final one (both global searches); 4 tasks per half set and iteration
    settings = rf.RefineSettings(max_iterations=1, batch_size=25)
    alone = rf.refine(data, reference, settings, seed=5, executor=None)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        spread = rf.refine(data, reference, settings, seed=5, executor=client)
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_array_equal(spread.state.half, alone.state.half)
    np.testing.assert_array_equal(spread.state.rotations, alone.state.rotations)
    np.testing.assert_array_equal(spread.state.shifts_in_pixels, alone.state.shifts_in_pixels)
    np.testing.assert_array_equal(spread.half_maps, alone.half_maps)
    np.testing.assert_array_equal(spread.map, alone.map)
    assert [r["resolution_in_angstroms"] for r in spread.state.history] == [
        r["resolution_in_angstroms"] for r in alone.state.history]
