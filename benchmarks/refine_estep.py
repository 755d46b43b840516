"""E-step throughput, peak memory of a lazily read refinement pass, and the Dask equality check of
`cryogmm refine` (`cryogmm.reconstruction.em_fourier`, `cryogmm.pipelines.refine`).

1. Throughput at each of --sizes (box n, 3 Å/px is irrelevant here: a synthetic Gaussian-mixture
   map, padding 2), with the pixels up to radius n / 4 (about Nyquist / 2):
   - `em.grid_log_likelihoods`: --batch particles x 9 shifts x the 4608 orientations of HEALPix
     order 2 (refine's global search), the central slices made beforehand (their time is given
     apart);
   - `em.score`: each particle's own candidates, 8 x 24 = 192 rotations (the children of the 24
     most probable coarse poses, as refine oversamples them) x 9 shifts, slices interpolated inside.
   Throughput is (particles x orientations x translations) per second, the median of --repeats
   timed calls after one warm-up. Beside each, a plain-numpy float64 reference evaluates the same
   log-likelihoods -sum |X - C e_t a_r|^2 / sigma^2 directly (`cryogmm.kernels.reference`; for the
   candidates its slices are interpolated by numpy too) on a subset of the particles, in the same
   process; the ratio and the largest difference of the relative log-likelihoods
   (log p - max over each particle's poses, in nats) are reported.
2. Peak memory of one refinement iteration (the global search, E-step radius n / 4) over
   --particles synthetic particles of --memory-box px written to disk as stacks of 1000 images and
   read lazily (`cryogmm.io.particles.stack_reader`), in a fresh process: the peak resident memory before and
   after `pipelines.refine.iterate` (VmHWM), against the stack's size on disk. Also the bytes of the
   M-step sums each E-step task returns (what a Dask worker sends back per batch).
3. Dask: `pipelines.refine.refine` (one iteration and the final one) on --dask-particles
   particles of --dask-box px, in this process and on a `LocalCluster` of 2 worker processes with
   one thread each; whether maps and poses are equal, and both wall times.

Example (a few minutes on 2 cores):
    python benchmarks/refine_estep.py > refine_estep.json
Full size (10,000 particles of 128 px for the memory pass, about 650 MB on disk; the lead's run):
    python benchmarks/refine_estep.py --particles 10000 --threads 2 --workdir /tmp/estep > refine_estep_full.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (no numpy import at module level)

N_SHIFTS = 9  # a 3 x 3 shift grid
N_CANDIDATE_ROTATIONS = 192  # 24 significant coarse poses x 8 children
PIXEL = 3.0
STACK_CHUNK = 1000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="boxes in px (default 32 64 128)")
    parser.add_argument("--batch", type=int, default=50, help="particles per timed E-step call (default 50)")
    parser.add_argument("--reference-particles", type=int, default=2,
                        help="particles the float64 numpy reference evaluates (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (default 3)")
    parser.add_argument("--particles", type=int, default=400,
                        help="particles of the memory pass (default 400; the full size is 10000)")
    parser.add_argument("--memory-box", type=int, default=128, help="box of the memory pass (default 128)")
    parser.add_argument("--dask-particles", type=int, default=200, help="particles of the Dask check (default 200)")
    parser.add_argument("--dask-box", type=int, default=32, help="box of the Dask check (default 32)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("throughput", "memory", "dask"),
                        help="parts to leave out")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the synthetic stacks (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# synthetic data

def synthetic_map(rng, box: int):
    """A smooth asymmetric map: 40 Gaussians of sigma box / 20 within box / 4 of the centre."""
    import numpy as np

    from cryogmm.grid import Grid
    from cryogmm.mixture import GaussianMixture, evaluate

    mixture = GaussianMixture(rng.uniform(-box / 4, box / 4, (40, 3)) * PIXEL, rng.dirichlet(np.ones(40)),
                              1.0 / (box / 20 * PIXEL) ** 2)
    return evaluate(mixture, Grid.centered((box,) * 3, PIXEL))


def synthetic_ctf(rng, n: int):
    from cryogmm.forward.ctf import CTFParameters

    defocus = rng.uniform(10000.0, 25000.0, n)
    return CTFParameters(defocus, defocus, rng.uniform(-90.0, 90.0, n), voltage_in_kv=300.0,
                         spherical_aberration_in_mm=2.7, amplitude_contrast=0.1)


def synthetic_images(rng, fourier_volume, ctf, snr: float = 0.1):
    """Bright particles: projections at random poses and shifts (up to 2 px) times -CTF, plus white noise."""
    import numpy as np

    from cryogmm.forward.ctf import ctf_images
    from cryogmm.forward.fourier import project_images
    from cryogmm.geometry.so3 import random_rotations

    n, count = fourier_volume.box, len(ctf.defocus_u_in_angstroms)
    transfer = -ctf_images(ctf, n, PIXEL)[..., : n // 2 + 1]
    clean = project_images(fourier_volume, random_rotations(rng, count), rng.uniform(-2.0, 2.0, (count, 2)),
                           ctf=transfer)
    noise = np.sqrt(clean.var(axis=(1, 2), keepdims=True) / snr)
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32)


def write_particles_on_disk(rng, folder: Path, n_particles: int, box: int) -> tuple[Path, object]:
    """Synthetic particles in stacks of 1000 and their STAR file; returns (star, map)."""
    import pandas as pd

    from cryogmm.forward.fourier import map_to_fourier
    from cryogmm.io.mrc import write_stack
    from cryogmm.io.star import ctf_columns, format_image_name, write_particles

    folder.mkdir(parents=True, exist_ok=True)
    volume = synthetic_map(rng, box)
    fourier_volume = map_to_fourier(volume)
    ctf = synthetic_ctf(rng, n_particles)
    names = []
    for first in range(0, n_particles, STACK_CHUNK):
        rows = slice(first, min(first + STACK_CHUNK, n_particles))
        stack = f"particles_{first // STACK_CHUNK:03d}.mrcs"
        write_stack(folder / stack, synthetic_images(rng, fourier_volume, ctf[rows]), PIXEL)
        names += [format_image_name(i, stack) for i in range(rows.stop - rows.start)]
    table = pd.DataFrame({"rlnImageName": names, **ctf_columns(ctf)})
    write_particles(folder / "particles.star", table, {"pixel_size_in_angstroms": PIXEL, "image_size": box})
    return folder / "particles.star", volume


# ---------------------------------------------------------------------------------------------
# 1. throughput

def _timed(function, repeats: int, warm_up: bool = True) -> tuple[float, object]:
    if warm_up:
        function()  # numba caches, BLAS threads
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        seconds.append(time.perf_counter() - start)
    return _common.median(seconds), out


def _relative(log_likelihoods):
    """log p minus each particle's maximum: what the posterior sees."""
    import numpy as np

    flat = np.asarray(log_likelihoods, dtype=np.float64).reshape(log_likelihoods.shape[0], -1)
    return flat - flat.max(axis=1, keepdims=True)


def _reference_log_likelihoods(batch, inv_noise, slices, phases, rows):
    """The float64 reference on particles `rows` (slices (rows, J, S)), in chunks of orientations."""
    import numpy as np

    from cryogmm.kernels.reference import candidate_log_likelihoods_reference

    out = []
    chunk = 256
    for r0 in range(0, slices.shape[1], chunk):
        out.append(candidate_log_likelihoods_reference(batch.coefficients[rows], batch.ctf[rows], 1.0 / inv_noise,
                                                       slices[:, r0:r0 + chunk], phases[rows]))
    return np.concatenate(out, axis=1)


def throughput(box: int, args, rng) -> dict:
    import numpy as np

    from cryogmm.forward.fourier import central_slices, image_coefficients, image_pixels, map_to_fourier
    from cryogmm.geometry import healpix
    from cryogmm.geometry.so3 import random_rotations
    from cryogmm.kernels.reference import (candidate_log_likelihoods_reference, extract_slices_reference,
                                           hermitian_completion)
    from cryogmm.pipelines.refine import _ctf_at_pixels, translation_grid
    from cryogmm.reconstruction import em_fourier as em

    fourier_volume = map_to_fourier(synthetic_map(rng, box))
    radius = box / 4
    pixels = image_pixels(box, radius, include_zero=True)
    ctf = synthetic_ctf(rng, args.batch)
    images = synthetic_images(rng, fourier_volume, ctf)
    batch = em.ParticleBatch(image_coefficients(images, pixels), _ctf_at_pixels(ctf, pixels, PIXEL, -1),
                             np.arange(args.batch))
    noise_power = np.full(box // 2 + 1, float(np.mean(np.abs(batch.coefficients) ** 2)))
    inv_noise = (1.0 / noise_power[pixels.shell]).astype(np.float64)
    offsets = translation_grid(1.5, 1.0)[:N_SHIFTS]
    shifts = np.broadcast_to(offsets, (args.batch, N_SHIFTS, 2)).copy()
    phases = np.exp(-2j * np.pi / box * (shifts[..., :1] * pixels.fx + shifts[..., 1:] * pixels.fy))
    subset = np.arange(min(args.reference_particles, args.batch))
    result = {"box": box, "pixels_per_image": len(pixels), "e_step_radius_in_pixels": radius,
              "batch_particles": args.batch, "translations": N_SHIFTS}

    # grid: all particles x shifts x the coarse orientations, slices shared
    grid = healpix.global_grid(2)
    slice_seconds, slices = _timed(lambda: central_slices(fourier_volume, grid.matrices, pixels), args.repeats)
    seconds, grid_ll = _timed(lambda: em.grid_log_likelihoods(batch, noise_power, pixels, slices, shifts),
                              args.repeats)
    shared = np.broadcast_to(slices[None], (subset.size,) + slices.shape)
    ref_seconds, ref_ll = _timed(lambda: _reference_log_likelihoods(batch, inv_noise, shared, phases, subset), 1,
                                 warm_up=False)
    evaluations = args.batch * len(grid) * N_SHIFTS
    ref_evaluations = subset.size * len(grid) * N_SHIFTS
    ours = _relative(np.swapaxes(grid_ll[subset], 1, 2))  # (B, T, J) -> (B, J, T) as the reference
    result["grid_log_likelihoods"] = {
        "orientations": len(grid), "seconds": seconds, "evaluations_per_second": evaluations / seconds,
        "central_slices_seconds": slice_seconds,
        "numpy_float64_reference": {"particles": int(subset.size), "seconds": ref_seconds,
                                    "evaluations_per_second": ref_evaluations / ref_seconds},
        "ratio_to_reference": (evaluations / seconds) / (ref_evaluations / ref_seconds),
        "largest_difference_of_relative_log_likelihoods_in_nats": float(np.abs(ours - _relative(ref_ll)).max()),
    }

    # candidates: each particle's own rotations, slices interpolated inside the kernel
    rotations = random_rotations(rng, args.batch * N_CANDIDATE_ROTATIONS).reshape(args.batch, -1, 3, 3)
    n_rot = np.full(args.batch, N_CANDIDATE_ROTATIONS)
    n_shift = np.full(args.batch, N_SHIFTS)
    spectrum = fourier_volume.spectrum
    seconds, candidates = _timed(lambda: em.score(spectrum, 2, batch, noise_power, pixels, rotations, n_rot, shifts,
                                                  n_shift), args.repeats)
    full = hermitian_completion(spectrum)

    def reference():
        own = np.stack([extract_slices_reference(full, rotations[b], pixels.fx, pixels.fy, 2.0) for b in subset])
        return candidate_log_likelihoods_reference(batch.coefficients[subset], batch.ctf[subset], 1.0 / inv_noise,
                                                   own, phases[subset])

    ref_seconds, ref_ll = _timed(reference, 1, warm_up=False)
    del full
    evaluations = args.batch * N_CANDIDATE_ROTATIONS * N_SHIFTS
    ref_evaluations = subset.size * N_CANDIDATE_ROTATIONS * N_SHIFTS
    result["score"] = {
        "rotations_per_particle": N_CANDIDATE_ROTATIONS, "seconds": seconds,
        "evaluations_per_second": evaluations / seconds,
        "numpy_float64_reference": {"particles": int(subset.size), "seconds": ref_seconds,
                                    "evaluations_per_second": ref_evaluations / ref_seconds},
        "ratio_to_reference": (evaluations / seconds) / (ref_evaluations / ref_seconds),
        "largest_difference_of_relative_log_likelihoods_in_nats": float(
            np.abs(_relative(candidates.log_likelihood[subset]) - _relative(ref_ll)).max()),
    }
    _common.info(f"{box} px, {len(pixels)} pixels: grid {result['grid_log_likelihoods']['evaluations_per_second']:.3g}"
                 f"/s (x{result['grid_log_likelihoods']['ratio_to_reference']:.0f} numpy), score "
                 f"{result['score']['evaluations_per_second']:.3g}/s (x{result['score']['ratio_to_reference']:.0f})")
    return result


# ---------------------------------------------------------------------------------------------
# 2. peak memory of a lazily read pass (in a fresh process)

def _max_rss_in_bytes() -> int:
    """Peak resident memory of this process: VmHWM of /proc/self/status (Linux). Not ru_maxrss: a
    spawned child (fork + exec) starts with its parent's ru_maxrss, VmHWM belongs to its own memory map."""
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def memory_pass(star: str, volume_path: str, threads: int, queue) -> None:
    """Child process: one global iteration over the lazily read particles; puts its numbers on `queue`."""
    _common.limit_threads(threads)
    import dataclasses

    import numpy as np

    from cryogmm.io.mrc import read_map
    from cryogmm.io.particles import stack_reader
    from cryogmm.io.star import ctf_parameters, read_particles
    from cryogmm.pipelines import refine as rf

    after_imports = _max_rss_in_bytes()
    table = read_particles(star)
    reader, pixel = stack_reader(table)
    particles = rf.ParticleData(reader, ctf_parameters(table), reader.box, pixel, len(reader))
    settings = rf.RefineSettings()
    start = time.perf_counter()
    state = rf.initial_state(particles, read_map(volume_path).data, settings, np.random.default_rng(0))
    state = dataclasses.replace(state, radius_in_pixels=reader.box / 4)
    setup_seconds = time.perf_counter() - start
    after_setup = _max_rss_in_bytes()
    start = time.perf_counter()
    rf.iterate(particles, state, settings)
    queue.put({"max_rss_after_imports_in_bytes": after_imports, "max_rss_after_setup_in_bytes": after_setup,
               "max_rss_after_iteration_in_bytes": _max_rss_in_bytes(), "setup_seconds": setup_seconds,
               "iteration_seconds": time.perf_counter() - start, "batch_size": settings.batch_size})


def memory(args, rng, workdir: Path) -> dict:
    import multiprocessing

    from cryogmm.io.mrc import write_map

    folder = workdir / f"memory_{args.particles}x{args.memory_box}"
    start = time.perf_counter()
    star, volume = write_particles_on_disk(rng, folder, args.particles, args.memory_box)
    write_map(folder / "reference.mrc", volume, PIXEL)
    write_seconds = time.perf_counter() - start
    stack_bytes = sum(p.stat().st_size for p in folder.glob("*.mrcs"))
    _common.info(f"memory pass: {args.particles} particles of {args.memory_box} px ({stack_bytes / 1e6:.0f} MB on "
                 f"disk, written in {write_seconds:.0f} s)")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=memory_pass, args=(str(star), str(folder / "reference.mrc"), args.threads, queue))
    child.start()
    result = queue.get()
    child.join()
    m = 2 * args.memory_box
    task_bytes = m * m * (m // 2 + 1) * (16 + 8)  # complex128 data and float64 weights of the padded half spectrum
    result.update({"particles": args.particles, "box": args.memory_box, "stack_bytes_on_disk": stack_bytes,
                   "tasks_per_half": -(-(args.particles - args.particles // 2) // result["batch_size"]),
                   "write_seconds": write_seconds, "m_step_sums_returned_per_task_in_bytes": task_bytes,
                   "peak_over_stack": result["max_rss_after_iteration_in_bytes"] / stack_bytes})
    _common.info(f"peak RSS {result['max_rss_after_iteration_in_bytes'] / 1e6:.0f} MB (after setup "
                 f"{result['max_rss_after_setup_in_bytes'] / 1e6:.0f} MB); iteration {result['iteration_seconds']:.0f} s")
    return result


# ---------------------------------------------------------------------------------------------
# 3. Dask

def dask_check(args, rng) -> dict:
    import numpy as np

    from cryogmm.forward.fourier import map_to_fourier
    from cryogmm.pipelines import refine as rf

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        return {"skipped": "dask.distributed is not installed (pip install 'cryogmm[dask]')"}
    volume = synthetic_map(rng, args.dask_box)
    ctf = synthetic_ctf(rng, args.dask_particles)
    images = synthetic_images(rng, map_to_fourier(volume), ctf)
    particles = rf.ParticleData(rf.ImagesInMemory(images), ctf, args.dask_box, PIXEL, args.dask_particles)
    settings = rf.RefineSettings(max_iterations=1, batch_size=max(1, args.dask_particles // 8))
    start = time.perf_counter()
    alone = rf.refine(particles, volume, settings, seed=1)
    alone_seconds = time.perf_counter() - start
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        start = time.perf_counter()
        spread = rf.refine(particles, volume, settings, seed=1, executor=client)
        dask_seconds = time.perf_counter() - start
    result = {"particles": args.dask_particles, "box": args.dask_box, "workers": 2, "threads_per_worker": 1,
              "tasks_per_half_and_iteration": -(-args.dask_particles // 2 // settings.batch_size),
              "maps_equal": bool(np.array_equal(alone.map, spread.map)),
              "half_maps_equal": bool(np.array_equal(alone.half_maps, spread.half_maps)),
              "poses_equal": bool(np.array_equal(alone.state.rotations, spread.state.rotations)
                                  and np.array_equal(alone.state.shifts_in_pixels, spread.state.shifts_in_pixels)),
              "largest_map_difference": float(np.abs(alone.map - spread.map).max()),
              "largest_map_value": float(np.abs(alone.map).max()),
              "single_process_seconds": alone_seconds, "dask_seconds": dask_seconds}
    _common.info(f"dask: maps equal {result['maps_equal']}, {alone_seconds:.1f} s alone, {dask_seconds:.1f} s on 2 "
                 "workers")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.limit_threads(args.threads)

    import numpy as np

    rng = np.random.default_rng(args.seed)
    out = {"benchmark": "refine_estep", "git_commit": _common.git_commit(), "machine": _common.machine_info(),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if "throughput" not in args.skip:
        out["throughput"] = [throughput(box, args, rng) for box in args.sizes]
    if "memory" not in args.skip:
        if args.workdir is None:
            with tempfile.TemporaryDirectory() as tmp:
                out["memory"] = memory(args, rng, Path(tmp))
        else:
            out["memory"] = memory(args, rng, args.workdir)
    if "dask" not in args.skip:
        out["dask"] = dask_check(args, rng)
    _common.dump(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
