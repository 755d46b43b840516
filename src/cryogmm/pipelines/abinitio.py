"""Ab initio 3D mixtures from class averages with unknown orientations (thesis section 3.4).

Initial stage (3.4.1): a small mixture (K = 100) on downsampled images (32 x 32, 1000 counts each),
started from the prior with uniform random rotations, alternating blocks of mixture-only Gibbs
steps with rotation updates: one global step over N_R uniform rotations (Eqns. 3.8-3.11), then
local searches that draw from the same marginal posterior with candidates near the current
rotation (sampling-importance-resampling, spreads 12, 6, 3 degrees), then local Gibbs steps with the
matrix Fisher conditional. The thesis uses local Gibbs steps alone after the global step; they
move a rotation by about a degree per step, so they need many steps to cover the 10-20 degrees
between the global table's rotations (N_R = 1000 rotations are about 25 degrees apart). It is repeated from independent starts and
the restarts are ranked by their final log-posterior (3.4.3).

Refinement stage: the best restart's rotations, a fresh mixture from the prior with more
components (K = 1000), the images at their input size with more counts; first mixture-only steps,
then the full Gibbs sampler (mixture, rotations and in-plane translations). After burn-in every
`refine_thin`-th sample is evaluated on the output grid and averaged: the posterior mean map.

Checkpoints: each finished restart and the refinement chain every `checkpoint_every` steps are
handed to a `checkpoint` object (`load(name) -> dict | None`, `save(name, dict)`), with the
random generator's state, so that a resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from cryogmm.errors import InputError
from cryogmm.geometry.so3 import mean_rotation, rotation_angle_in_degrees
from cryogmm.geometry.symmetry import asymmetric_unit_components, canonical_symmetry_name, symmetry_operators
from cryogmm.grid import Grid
from cryogmm.mixture import GaussianMixture, evaluate
from cryogmm.preprocess.normalise import negative_part
from cryogmm.preprocess.resample import fourier_crop
from cryogmm.samplers.projected import (ImageCounts, ProjectedGibbsSampler, ProjectedState, basin_search,
                                        default_projection_prior, expand_symmetry, global_rotation_step,
                                        local_rotation_search)
from cryogmm.simulate.discretise import discretise

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AbinitioSettings:
    """All settings of an ab initio run (defaults: thesis section 3.4.1, scaled for speed)."""

    symmetry: str = "C1"
    n_restarts: int = 4
    # initial stage
    n_components_initial: int = 100
    initial_box: int = 32
    initial_counts: int = 1000
    n_rotations: int = 1000
    n_cycles: int = 12
    mixture_steps: int = 20
    rotation_steps: int = 5
    local_spreads_in_degrees: tuple[float, ...] = (12.0, 6.0, 3.0)
    local_candidates: int = 50
    # refinement stage
    n_components: int = 1000
    refine_counts: int = 10000
    refine_mixture_steps: int = 100
    refine_steps: int = 300
    refine_burn_in: int = 150
    refine_thin: int = 10
    # basin searches during the burn-in, besides the one that starts the refinement
    refine_basin_searches: int = 1
    refine_translations: bool = True
    max_shift_in_angstroms: float | None = None
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "symmetry", canonical_symmetry_name(self.symmetry))
        positive = ("n_restarts", "n_components_initial", "initial_box", "initial_counts", "n_rotations",
                    "n_cycles", "n_components", "refine_counts", "refine_thin", "checkpoint_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("mixture_steps", "rotation_steps", "refine_mixture_steps", "refine_steps", "refine_burn_in",
                     "refine_basin_searches"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.refine_burn_in >= self.refine_steps and self.refine_steps > 0:
            raise ValueError(f"refine_burn_in ({self.refine_burn_in}) must be below refine_steps ({self.refine_steps})")


@dataclass(frozen=True)
class RestartResult:
    index: int
    log_posterior: float
    mixture: GaussianMixture
    rotations: np.ndarray
    trace: np.ndarray  # log-posterior per step
    seconds: float


@dataclass(frozen=True)
class AbinitioResult:
    settings: AbinitioSettings
    restarts: list[RestartResult]
    best_restart: int
    mixture: GaussianMixture  # best refinement sample (asymmetric unit)
    full_mixture: GaussianMixture  # with symmetric copies
    rotations: np.ndarray
    translations_in_angstroms: np.ndarray
    posterior_mean: np.ndarray  # (n, n, n) on the input pixel size, origin at n // 2
    n_samples: int
    refine_trace: np.ndarray
    sigma_trace: np.ndarray
    log_posterior: float
    timings: dict = field(default_factory=dict)
    # per refinement step: the median over images of how far its rotation (degrees) and in-plane
    # shift (Å) moved in that step
    rotation_change_trace: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shift_change_trace: np.ndarray = field(default_factory=lambda: np.zeros(0))


def images_to_counts(images: np.ndarray, pixel_size_in_angstroms: float, box: int, n_counts: int) -> ImageCounts:
    """Downsample (Fourier crop) non-negative images to `box` and discretise each to `n_counts`
    (Eqn. 2.52). Negative ringing from the cropping is set to zero."""
    n = images.shape[-1]
    box = min(int(box), n)
    small = fourier_crop(images, box) if box < n else np.asarray(images, dtype=np.float64)
    small = np.clip(small, 0.0, None)
    return ImageCounts(discretise(small, n_counts, per_image=True), pixel_size_in_angstroms * n / box)


# what to do about negative images, said to a caller of the Python API (the CLI names its options)
API_REMEDY = ("prepare them first with cryogmm.pipelines.prepare.prepare_images (mask, centre and clip, as "
              "`cryogmm abinitio --prepare` does), or clip them with cryogmm.preprocess.normalise.clip_negatives")


def refuse_negative_images(images: np.ndarray, source: str = "images", remedy: str = API_REMEDY) -> None:
    """InputError if the images have clearly negative pixels (`negative_part`): the Poisson model
    reads them as counts, and silently clipping 40% of the mass away would change the data."""
    n_negative, share = negative_part(images)
    if n_negative:
        raise InputError(f"{source}: {n_negative} pixels are negative ({100 * share:.1f}% of the absolute mass), "
                         f"but the images are read as counts; {remedy}")


def _mixture_arrays(prefix: str, mixture: GaussianMixture) -> dict:
    return {f"{prefix}means": mixture.means_in_angstroms, f"{prefix}weights": mixture.weights,
            f"{prefix}precision": np.array(mixture.precision_per_square_angstrom)}


def _mixture_from(prefix: str, d: dict) -> GaussianMixture:
    return GaussianMixture(np.asarray(d[f"{prefix}means"]), np.asarray(d[f"{prefix}weights"]),
                           float(d[f"{prefix}precision"]))


def _rng_state(rng: np.random.Generator) -> np.ndarray:
    return np.array(json.dumps(rng.bit_generator.state))


def _set_rng_state(rng: np.random.Generator, value) -> None:
    rng.bit_generator.state = json.loads(str(value))


def run_restart(index: int, seed_sequence: np.random.SeedSequence, data: ImageCounts,
                settings: AbinitioSettings, progress: bool = False) -> RestartResult:
    """One run of the initial stage (Fig. 3.16); a top-level function so that it can run in a
    worker process."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed_sequence)
    ops = symmetry_operators(settings.symmetry)
    prior = default_projection_prior(data)
    k = asymmetric_unit_components(settings.n_components_initial, settings.symmetry)
    mixture_sampler = ProjectedGibbsSampler(data, k, prior, ops,
                                            update_mixture=True, update_rotations=False)
    rotation_sampler = ProjectedGibbsSampler(data, k, prior, ops,
                                             update_mixture=False, update_rotations=True)
    state = mixture_sampler.init(rng)
    trace = []
    steps = settings.n_cycles * (settings.mixture_steps + settings.rotation_steps)
    bar = tqdm(total=steps, desc=f"restart {index + 1}", disable=not progress, leave=False, unit="step")
    try:
        for _ in range(settings.n_cycles):
            for _ in range(settings.mixture_steps):
                state, info = mixture_sampler.step(rng, state)
                trace.append(info["log_posterior"])
                bar.update(1)
            state, _ = global_rotation_step(rng, rotation_sampler, state, settings.n_rotations)
            for spread in settings.local_spreads_in_degrees:
                state, _ = local_rotation_search(rng, rotation_sampler, state, settings.local_candidates, spread)
            samples = []
            for _ in range(settings.rotation_steps):
                state, info = rotation_sampler.step(rng, state)
                samples.append(state.rotations)
                trace.append(info["log_posterior"])
                bar.update(1)
            bar.set_postfix(log_posterior=f"{trace[-1]:.6g}", refresh=False)
    finally:
        bar.close()
    log_posterior = mixture_sampler.log_posterior(state)
    trace.append(log_posterior)
    # the restart's orientations: the mean of the last cycle's rotation samples (one draw at 1000
    # counts scatters by several degrees); the log-posterior is that of the last state
    rotations = mean_rotation(np.stack(samples)) if samples else state.rotations
    return RestartResult(index, log_posterior, state.mixture, rotations, np.asarray(trace),
                         time.perf_counter() - start)


def _restart_to_dict(r: RestartResult) -> dict:
    return {"index": np.array(r.index), "log_posterior": np.array(r.log_posterior), "rotations": r.rotations,
            "trace": r.trace, "seconds": np.array(r.seconds), **_mixture_arrays("mixture_", r.mixture)}


def _restart_from_dict(d: dict) -> RestartResult:
    return RestartResult(int(d["index"]), float(d["log_posterior"]), _mixture_from("mixture_", d),
                         np.asarray(d["rotations"]), np.asarray(d["trace"]), float(d["seconds"]))


def default_max_shift_in_angstroms(data: ImageCounts) -> float:
    """Translations searched in the refinement's global step: 10% of the box (at least 2 pixels)."""
    return max(0.1 * data.box, 2.0) * data.pixel_size_in_angstroms


def run_abinitio(images: np.ndarray, pixel_size_in_angstroms: float, settings: AbinitioSettings,
                 seed: int, *, jobs: int = 1, map_restarts: Callable | None = None, checkpoint=None,
                 progress: bool = False) -> AbinitioResult:
    """The whole ab initio pipeline on non-negative square images `(P, n, n)`.

    Images with negative values are refused (InputError, `refuse_negative_images`), as the CLI
    refuses them; prepare them with `cryogmm.pipelines.prepare.prepare_images` first.
    map_restarts : optional `map_restarts(function, indices)` that runs `function(i)` for each
        restart index (e.g. on a Dask cluster) and returns the results in order; otherwise
        restarts run in `jobs` local processes (1: in this process).
    checkpoint : optional object with `load(name) -> dict | None` and `save(name, dict)`.
    """
    images = np.asarray(images, dtype=np.float64)
    refuse_negative_images(images)
    timings = {}
    t0 = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn(settings.n_restarts + 1)
    initial = images_to_counts(images, pixel_size_in_angstroms, settings.initial_box, settings.initial_counts)
    logger.info("initial stage: %d restarts, K = %d, %d images of %d px at %.3g Å/px, %d counts each, N_R = %d, "
                "symmetry %s", settings.n_restarts, settings.n_components_initial, initial.n_images, initial.box,
                initial.pixel_size_in_angstroms, settings.initial_counts, settings.n_rotations, settings.symmetry)

    restarts: dict[int, RestartResult] = {}
    # wall time spent before an interruption (from the checkpoints), so that a resumed run's
    # timings cover the whole run; the time after the last checkpoint is lost work, not counted
    before = 0.0
    if checkpoint is not None:
        for i in range(settings.n_restarts):
            saved = checkpoint.load(f"restart_{i}")
            if saved is not None:
                restarts[i] = _restart_from_dict(saved)
                before = max(before, float(saved.get("stage_elapsed_seconds", 0.0)))
        if restarts:
            logger.info("resuming: %d of %d restarts already done", len(restarts), settings.n_restarts)
            timings["resumed"] = True
    todo = [i for i in range(settings.n_restarts) if i not in restarts]

    def finished(result: RestartResult) -> None:
        restarts[result.index] = result
        logger.info("restart %d: log-posterior %.6g (%.1f s)", result.index + 1, result.log_posterior, result.seconds)
        if checkpoint is not None:
            checkpoint.save(f"restart_{result.index}", {
                **_restart_to_dict(result), "stage_elapsed_seconds": np.array(before + time.perf_counter() - t0)})

    if todo and map_restarts is not None:
        for result in map_restarts(lambda i: run_restart(i, seeds[i], initial, settings), todo):
            finished(result)
    elif todo and jobs > 1 and len(todo) > 1:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        workers = min(jobs, len(todo))
        # spawned, not forked: the parent's numba threads (OpenMP) do not survive a fork. The
        # cores are shared out between the workers, BLAS included: its threads, read from the
        # environment when a worker imports numpy, would otherwise spin against the other worker's
        # (2.5 times slower restarts measured on 2 cores)
        threads = max(1, (os.cpu_count() or 1) // workers)
        saved_environment = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
        try:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(threads,))
            try:
                with _sigint_ignored():  # the workers are started (spawned) by submit
                    futures = [pool.submit(run_restart, i, seeds[i], initial, settings) for i in todo]
                for future in tqdm(as_completed(futures), total=len(futures), desc="restarts",
                                   disable=not progress, leave=False, unit="restart"):
                    finished(future.result())
            except BaseException:
                # Ctrl-C or a failed restart: end the other restarts now rather than wait for them
                # (minutes); the finished ones are in the checkpoint
                with _sigint_ignored():  # a second Ctrl-C must not break off the clean-up
                    _end_workers(pool)
                    pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        except BrokenProcessPool:
            # typically a script without `if __name__ == "__main__":`, which spawned workers re-run
            logger.warning("the restart processes could not start (a script that calls run_abinitio with jobs > 1 "
                           "must do so under `if __name__ == \"__main__\":`); running the restarts here instead")
            for i in todo:
                if i not in restarts:
                    finished(run_restart(i, seeds[i], initial, settings, progress))
        finally:
            for name, value in saved_environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    else:
        for i in todo:
            finished(run_restart(i, seeds[i], initial, settings, progress))
    ranked = sorted(restarts.values(), key=lambda r: -r.log_posterior)
    best = ranked[0]
    if checkpoint is not None and todo:
        checkpoint.save("initial_stage", {"seconds": np.array(before + time.perf_counter() - t0)})
    saved_stage = checkpoint.load("initial_stage") if checkpoint is not None else None
    if not todo and saved_stage is not None:  # every restart came from the checkpoints
        timings["initial_stage_seconds"] = float(saved_stage["seconds"])
    else:
        timings["initial_stage_seconds"] = before + time.perf_counter() - t0
    logger.info("best restart: %d (log-posterior %.6g)", best.index + 1, best.log_posterior)

    t1 = time.perf_counter()
    refine = _refine(images, pixel_size_in_angstroms, settings, seeds[-1], best, checkpoint, progress, timings)
    timings["refinement_seconds"] = timings.pop("refinement_seconds_before_resume", 0.0) + time.perf_counter() - t1
    timings["total_seconds"] = timings["initial_stage_seconds"] + timings["refinement_seconds"]
    return AbinitioResult(settings=settings, restarts=[restarts[i] for i in range(settings.n_restarts)],
                          best_restart=best.index, timings=timings, **refine)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _init_worker(n_threads: int) -> None:
    import numba

    # Ctrl-C is for the main process, which ends the workers (a terminal sends SIGINT to all)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing lock, a named semaphore that a worker ended by
    # SIGTERM could not release ("leaked semaphore objects"); a worker draws no bars
    tqdm.set_lock(threading.RLock())
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process for the duration (main thread only; elsewhere a no-op).

    Processes started meanwhile keep it ignored from their first instruction (an ignored signal
    stays ignored across exec), so Ctrl-C cannot interrupt a spawned worker while it imports,
    before `_init_worker` runs. A Ctrl-C that falls in these few milliseconds is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _end_workers(pool) -> None:
    """Terminate the worker processes of a ProcessPoolExecutor at once (SIGTERM); before Python
    3.14 the executor offers this only through its private `_processes`."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


def _refine(images, pixel_size_in_angstroms, settings: AbinitioSettings, seed_sequence, best: RestartResult,
            checkpoint, progress: bool, timings: dict | None = None) -> dict:
    """The refinement stage; returns the fields of AbinitioResult it owns. On resume, the
    refinement's wall time before the interruption goes to timings["refinement_seconds_before_resume"]."""
    started = time.perf_counter()
    before = 0.0
    data = images_to_counts(images, pixel_size_in_angstroms, images.shape[-1], settings.refine_counts)
    ops = symmetry_operators(settings.symmetry)
    prior = default_projection_prior(data)
    max_shift = settings.max_shift_in_angstroms
    if max_shift is None:
        max_shift = default_max_shift_in_angstroms(data)
    shift_pixels = int(round(max_shift / data.pixel_size_in_angstroms))
    translations = settings.refine_translations and shift_pixels > 0
    k = asymmetric_unit_components(settings.n_components, settings.symmetry)
    warmup = ProjectedGibbsSampler(data, k, prior, ops, update_mixture=True,
                                   update_rotations=False, update_translations=False)
    full = ProjectedGibbsSampler(data, k, prior, ops, update_mixture=True,
                                 update_rotations=True, update_translations=translations)
    rotation_only = ProjectedGibbsSampler(data, k, prior, ops, update_mixture=False,
                                          update_rotations=True, update_translations=translations)
    n_box = images.shape[-1]
    grid = Grid.centered((n_box,) * 3, pixel_size_in_angstroms)
    total = settings.refine_mixture_steps + 1 + settings.refine_steps  # warm-up, one global step, full steps
    start = settings.refine_mixture_steps
    n_more = settings.refine_basin_searches
    basin_steps = {start} | {start + 1 + (j * settings.refine_burn_in) // (n_more + 1) for j in range(1, n_more + 1)}

    rng = np.random.default_rng(seed_sequence)
    saved = checkpoint.load("refinement") if checkpoint is not None else None
    if saved is not None:
        _set_rng_state(rng, saved["rng"])
        state = ProjectedState(_mixture_from("mixture_", saved), np.asarray(saved["rotations"]),
                               np.asarray(saved["translations"]), int(saved["step"]))
        trace = list(np.asarray(saved["trace"]))
        sigmas = list(np.asarray(saved["sigmas"]))
        rotation_changes = list(np.asarray(saved.get("rotation_changes", [])))
        shift_changes = list(np.asarray(saved.get("shift_changes", [])))
        mean_sum = np.asarray(saved["mean_sum"], dtype=np.float64)
        n_samples = int(saved["n_samples"])
        best_lp = float(saved["best_log_posterior"])
        best_state = ProjectedState(_mixture_from("best_", saved), np.asarray(saved["best_rotations"]),
                                    np.asarray(saved["best_translations"]))
        logger.info("resuming the refinement at step %d of %d", state.step, total)
        before = float(saved.get("elapsed_seconds", 0.0))
        if timings is not None:
            timings["refinement_seconds_before_resume"] = before
            timings["resumed"] = True
    else:
        state = warmup.init(rng, rotations=best.rotations)
        trace, sigmas, rotation_changes, shift_changes = [], [], [], []
        mean_sum = np.zeros(grid.shape)
        n_samples = 0
        best_lp, best_state = -np.inf, state
    logger.info("refinement: K = %d, %d images of %d px, %d counts each, translations %s", settings.n_components,
                data.n_images, data.box, settings.refine_counts,
                f"within {shift_pixels * data.pixel_size_in_angstroms:.3g} Å" if translations else "fixed at 0")

    previous = state
    bar = tqdm(total=total, initial=state.step, desc="refinement", disable=not progress, leave=False, unit="step")
    try:
        while state.step < total:
            step = state.step
            if step < settings.refine_mixture_steps:
                state, info = warmup.step(rng, state)
            elif step in basin_steps:
                # the initial stage's rotations were found on coarse images, and some images sit in
                # the wrong basin (often a flipped view): a global table at the full size (with the
                # shift search) proposes rival basins, each refined locally and compared with the
                # refined current rotation; repeated in the burn-in with a sharper mixture
                moved, search = basin_search(rng, rotation_only, state, n_rotations=settings.n_rotations,
                                             max_shift_in_pixels=shift_pixels if translations else 0)
                if search["moved"]:
                    logger.info("refinement step %d: %d images moved to another basin (log-likelihood %+.4g)",
                                step, search["moved"], search["gain"])
                state = ProjectedState(moved.mixture, moved.rotations, moved.translations_in_angstroms, step + 1)
                info = {"log_posterior": trace[-1] if trace else np.nan,
                        "sigma_in_angstroms": state.mixture.sigma_in_angstroms}
            else:
                state, info = full.step(rng, state)
            trace.append(info["log_posterior"])
            sigmas.append(info["sigma_in_angstroms"])
            rotation_changes.append(float(np.median(rotation_angle_in_degrees(previous.rotations, state.rotations))))
            shift_changes.append(float(np.median(np.linalg.norm(
                state.translations_in_angstroms - previous.translations_in_angstroms, axis=-1))))
            done = state.step - (settings.refine_mixture_steps + 1)
            if done > settings.refine_burn_in and (done - settings.refine_burn_in) % settings.refine_thin == 0:
                full_mixture = expand_symmetry(state.mixture, ops)
                mean_sum += evaluate(full_mixture, grid)
                n_samples += 1
            if state.step > settings.refine_mixture_steps + 1 and info["log_posterior"] > best_lp:
                best_lp, best_state = info["log_posterior"], previous
            previous = state
            bar.update(1)
            if state.step % 10 == 0:
                bar.set_postfix(log_posterior=f"{info['log_posterior']:.6g}",
                                sigma=f"{info['sigma_in_angstroms']:.3g}", refresh=False)
            if checkpoint is not None and state.step % settings.checkpoint_every == 0 and state.step < total:
                checkpoint.save("refinement", {
                    "elapsed_seconds": np.array(before + time.perf_counter() - started),
                    "rng": _rng_state(rng), "rotations": state.rotations, "translations": state.translations_in_angstroms,
                    "step": np.array(state.step), "trace": np.asarray(trace), "sigmas": np.asarray(sigmas),
                    "rotation_changes": np.asarray(rotation_changes), "shift_changes": np.asarray(shift_changes),
                    "mean_sum": mean_sum, "n_samples": np.array(n_samples), "best_log_posterior": np.array(best_lp),
                    "best_rotations": best_state.rotations, "best_translations": best_state.translations_in_angstroms,
                    **_mixture_arrays("mixture_", state.mixture), **_mixture_arrays("best_", best_state.mixture)})
    finally:
        bar.close()
    final_lp = full.log_posterior(state)
    trace.append(final_lp)
    sigmas.append(state.mixture.sigma_in_angstroms)
    if final_lp > best_lp:
        best_lp, best_state = final_lp, state
    if n_samples == 0:
        mean_sum = evaluate(expand_symmetry(state.mixture, ops), grid)
        n_samples = 1
    return dict(mixture=best_state.mixture, full_mixture=expand_symmetry(best_state.mixture, ops),
                rotations=state.rotations, translations_in_angstroms=state.translations_in_angstroms,
                posterior_mean=mean_sum / n_samples, n_samples=n_samples, refine_trace=np.asarray(trace),
                sigma_trace=np.asarray(sigmas), log_posterior=final_lp,
                rotation_change_trace=np.asarray(rotation_changes), shift_change_trace=np.asarray(shift_changes))


def settings_dict(settings: AbinitioSettings) -> dict:
    return asdict(settings)
