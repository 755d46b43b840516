"""Ab initio 3D mixtures from class averages with unknown orientations (thesis section 3.4).

Initial stage (3.4.1): a small mixture (K = 100) on downsampled images (32 x 32, 1000 counts each),
started from the prior with uniform random rotations, alternating blocks of mixture-only Gibbs
steps with rotation updates: one global step over N_R uniform rotations (Eqns. 3.8-3.11), then
local searches that draw from the same marginal posterior with candidates near the current
rotation (sampling-importance-resampling, spreads 12, 6, 3 degrees), then local Gibbs steps with the
matrix Fisher conditional. The thesis uses local Gibbs steps alone after the global step; they
move a rotation by about a degree per step, so they need many steps to cover the 10-20 degrees
between the global table's rotations (N_R = 1000 rotations are about 25 degrees apart). It is repeated from independent starts and
the restarts are ranked by their final log-posterior (3.4.3). With adaptive stopping the restarts
are screened (successive halving): all run `screen_cycles` cycles, and only the `restarts_kept`
with the highest log-posterior then run on to `n_cycles` (after five cycles the ranking nearly
always keeps a restart that succeeds; after three it often does not: benchmarks/README.md); when
the two best already agree on the orientations, none runs on.

Refinement stage: the best restart's rotations, a fresh mixture from the prior with more
components (K = 300; the thesis uses 1000), the images Fourier-cropped to `refine_box` (32 px; the
thesis uses the input size) with more counts (10000); first mixture-only steps,
then the full Gibbs sampler (mixture, rotations and in-plane translations). After burn-in every
`refine_thin`-th sample is evaluated on the output grid and averaged: the posterior mean map.

Checkpoints: each screened and each finished restart and the refinement chain every `checkpoint_every` steps are
handed to a `checkpoint` object (`load(name) -> dict | None`, `save(name, dict)`), with the
random generator's state, so that a resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
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
from cryogmm.pipelines.final_map import FINAL_MAPS, FinalMap, choose_final_map
from cryogmm.pipelines.workers import WorkerPool
from cryogmm.preprocess.normalise import negative_part
from cryogmm.preprocess.resample import fourier_crop
from cryogmm.samplers.projected import (ImageCounts, ProjectedGibbsSampler, ProjectedState, basin_search,
                                        default_projection_prior, expand_symmetry, global_rotation_step,
                                        local_rotation_search)
from cryogmm.samplers.driver import ChainCheckpoint, run_chain
from cryogmm.samplers.stopping import LogPosteriorPlateau, RotationsStable

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
    n_cycles: int = 8
    mixture_steps: int = 20
    rotation_steps: int = 5
    local_spreads_in_degrees: tuple[float, ...] = (12.0, 6.0, 3.0)
    local_candidates: int = 50
    # refinement stage
    # (the thesis's refinement, slower and a little sharper: n_components 1000, refine_box None,
    # refine_steps 300, refine_burn_in 150, refine_thin 10; see benchmarks/README.md)
    n_components: int = 300
    refine_counts: int = 10000
    refine_box: int | None = 32  # image size in the refinement (Fourier-cropped); None: the input size
    refine_mixture_steps: int = 50
    refine_steps: int = 60
    refine_burn_in: int = 20
    refine_thin: int = 4
    # basin searches during the burn-in, besides the one that starts the refinement
    refine_basin_searches: int = 1
    refine_translations: bool = True
    max_shift_in_angstroms: float | None = None
    checkpoint_every: int = 50
    # map.mrc (pipelines.final_map): "auto" (the posterior mean or the direct Fourier inversion
    # with the final poses, whichever the half-set FSCs say is sharper), "posterior_mean" or
    # "fourier_inversion"
    final_map: str = "auto"
    # adaptive stopping (samplers.stopping): the step counts above are maxima. Every restart runs
    # `screen_cycles` cycles, and only the `restarts_kept` best by log-posterior run on (successive
    # halving), unless the two best already agree (`restart_agreement_share` of the images within
    # `restart_agreement_in_degrees` after the best global rotation and hand): then the initial
    # stage ends there; a restart ends when its cycle-mean rotations are stable (window of
    # `initial_stop_window` cycles, counted after the screening); the warm-up and the burn-in of the
    # refinement end when the log-posterior has reached its plateau (`refine_stop_window` steps,
    # `refine_stop_standard_errors`).
    adaptive_stopping: bool = True
    screen_cycles: int = 5
    restarts_kept: int = 2
    restart_agreement_in_degrees: float = 10.0
    restart_agreement_share: float = 0.9
    initial_stop_window: int | None = None  # None: 2 cycles (no rule with fewer than 4 cycles)
    initial_stop_tolerance_in_degrees: float = 1.0
    refine_stop_window: int | None = None  # None: 10 steps, at most a quarter of the stage's maximum
    refine_stop_standard_errors: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "symmetry", canonical_symmetry_name(self.symmetry))
        if self.refine_box is not None and self.refine_box < 8:
            raise ValueError(f"refine_box must be at least 8 pixels, got {self.refine_box}")
        if self.final_map not in FINAL_MAPS:
            raise ValueError(f"final_map must be one of {', '.join(FINAL_MAPS)}, got {self.final_map!r}")
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
        for name in ("initial_stop_tolerance_in_degrees", "restart_agreement_in_degrees",
                     "refine_stop_standard_errors"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if not 0 < self.restart_agreement_share <= 1:
            raise ValueError(f"restart_agreement_share must be in (0, 1], got {self.restart_agreement_share}")
        for name in ("screen_cycles", "restarts_kept"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        # a rule compares two windows: one longer than half the stage could never fire
        if self.initial_stop_window is not None and not 2 <= self.initial_stop_window <= self.n_cycles // 2:
            raise ValueError(f"initial_stop_window {self.initial_stop_window}: must be at least 2 cycles and at "
                             f"most half of n_cycles ({self.n_cycles})")
        if self.refine_stop_window is not None and not 2 <= self.refine_stop_window <= self.refine_burn_in // 2:
            raise ValueError(f"refine_stop_window {self.refine_stop_window}: must be at least 2 steps and at "
                             f"most half of refine_burn_in ({self.refine_burn_in})")

    def screening(self) -> bool:
        """Whether the restarts are screened after `screen_cycles` cycles (not when all are kept or
        the screening would take every cycle)."""
        return self.adaptive_stopping and self.restarts_kept < self.n_restarts and self.screen_cycles < self.n_cycles

    def cycle_window(self) -> int | None:
        """Window of the restarts' rotation rule in cycles (None: no rule)."""
        if not self.adaptive_stopping:
            return None
        if self.initial_stop_window is not None:
            return self.initial_stop_window
        return 2 if self.n_cycles >= 4 else None

    def refine_window(self, max_steps: int) -> int | None:
        """Window of the refinement's plateau rule for a stage of at most `max_steps` steps."""
        if not self.adaptive_stopping:
            return None
        window = self.refine_stop_window if self.refine_stop_window is not None else min(10, max_steps // 4)
        return window if 2 <= window <= max_steps // 2 else None


@dataclass(frozen=True)
class RestartResult:
    index: int
    log_posterior: float
    mixture: GaussianMixture
    rotations: np.ndarray
    trace: np.ndarray  # log-posterior per step
    seconds: float
    stop: dict = field(default_factory=dict)  # which rule ended the restart, at which cycle
    # where a screened restart goes on from: its last cycle and its generator
    last_cycle: "_CycleState | None" = None
    rng: np.random.Generator | None = None


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
    stopping: dict = field(default_factory=dict)  # per stage: the rule that ended it and the step
    sampling_start: int = 0  # index in refine_trace where the averaged samples begin
    # map.mrc in the images' units (pipelines.final_map) and where it came from; None: the
    # scaled posterior mean
    final_map: FinalMap | None = None


def images_to_counts(images: np.ndarray, pixel_size_in_angstroms: float, box: int, n_counts: int) -> ImageCounts:
    """Downsample (Fourier crop) non-negative images to `box` and discretise each to `n_counts`
    (Eqn. 2.52). Negative ringing from the cropping is set to zero."""
    # imported here: the cryogmm.simulate package loads scipy.ndimage (0.1 s), which the restarts'
    # worker processes, importing this module, need not
    from cryogmm.simulate.discretise import discretise

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


@dataclass(frozen=True)
class _CycleState:
    state: ProjectedState
    mean_rotations: np.ndarray  # mean of the cycle's rotation samples
    trace: np.ndarray  # the cycle's log-posterior per Gibbs step


@dataclass(frozen=True)
class _InitialCycle:
    """One cycle of the initial stage (Fig. 3.16) as one step of the driver: mixture-only Gibbs
    steps, the global rotation step, the local searches, then rotation Gibbs steps."""

    mixture_sampler: ProjectedGibbsSampler
    rotation_sampler: ProjectedGibbsSampler
    settings: AbinitioSettings

    def step(self, rng, cycle: _CycleState) -> tuple[_CycleState, dict]:
        settings, state, trace = self.settings, cycle.state, []
        for _ in range(settings.mixture_steps):
            state, info = self.mixture_sampler.step(rng, state)
            trace.append(info["log_posterior"])
        state, _ = global_rotation_step(rng, self.rotation_sampler, state, settings.n_rotations)
        for spread in settings.local_spreads_in_degrees:
            state, _ = local_rotation_search(rng, self.rotation_sampler, state, settings.local_candidates, spread)
        samples = []
        for _ in range(settings.rotation_steps):
            state, info = self.rotation_sampler.step(rng, state)
            samples.append(state.rotations)
            trace.append(info["log_posterior"])
        # one draw at 1000 counts scatters by several degrees: the cycle's estimate is the mean
        mean = mean_rotation(np.stack(samples)) if samples else state.rotations
        return _CycleState(state, mean, np.asarray(trace)), {"log_posterior": trace[-1] if trace else np.nan}

    def log_posterior(self, cycle: _CycleState) -> float:
        return self.mixture_sampler.log_posterior(cycle.state)


def run_restart(index: int, seed_sequence: np.random.SeedSequence, data: ImageCounts,
                settings: AbinitioSettings, progress: bool = False, *, n_cycles: int | None = None,
                resume: RestartResult | None = None) -> RestartResult:
    """One run of the initial stage (Fig. 3.16) up to `n_cycles` cycles in all (default
    `settings.n_cycles`), fewer when the cycle-mean rotations are stable (`RotationsStable` over
    `cycle_window()` cycles); from the prior, or on from a screened restart `resume` (its cycle
    and generator). A top-level function so that it can run in a worker process."""
    start = time.perf_counter()
    n_cycles = settings.n_cycles if n_cycles is None else n_cycles
    ops = symmetry_operators(settings.symmetry)
    prior = default_projection_prior(data)
    k = asymmetric_unit_components(settings.n_components_initial, settings.symmetry)
    mixture_sampler = ProjectedGibbsSampler(data, k, prior, ops,
                                            update_mixture=True, update_rotations=False)
    rotation_sampler = ProjectedGibbsSampler(data, k, prior, ops,
                                             update_mixture=False, update_rotations=True)
    if resume is None:
        rng = np.random.default_rng(seed_sequence)
        state = mixture_sampler.init(rng)
        first, done, before = _CycleState(state, state.rotations, np.zeros(0)), 0, 0.0
        traces = []
    else:
        rng, first, done, before = resume.rng, resume.last_cycle, resume.stop["step"], resume.seconds
        traces = [resume.trace[:-1]]  # its last entry, the final state's, is this chain's first
    window = settings.cycle_window()
    rules = [RotationsStable(window, settings.initial_stop_tolerance_in_degrees)] if window else []
    chain = run_chain(_InitialCycle(mixture_sampler, rotation_sampler, settings), rng, first, n_cycles - done,
                      on_sample=lambda i, cycle: traces.append(cycle.trace), stopping=rules,
                      monitor=lambda cycle: cycle.mean_rotations, progress=progress, description=f"restart {index + 1}")
    final = chain.final_state
    log_posterior = float(chain.traces["log_posterior"][-1])
    stop = {**chain.stop.as_dict(), "step": done + chain.stop.step}
    # the restart's orientations: the mean of the last cycle's rotation samples; the
    # log-posterior is that of the last state
    return RestartResult(index, log_posterior, final.state.mixture, final.mean_rotations,
                         np.concatenate(traces + [[log_posterior]]), before + time.perf_counter() - start,
                         stop, final, rng)


def restarts_agree(a: RestartResult, b: RestartResult, settings: AbinitioSettings) -> float | None:
    """The share of images whose rotations in restarts a and b agree within
    `restart_agreement_in_degrees` after the best global rotation and hand (up to the symmetry),
    if it reaches `restart_agreement_share`; else None."""
    from cryogmm.metrics.alignment import rotation_errors  # here: the restarts' workers need not import it

    errors = rotation_errors(a.rotations, b.rotations, symmetry_operators(settings.symmetry)).errors_in_degrees
    share = float(np.mean(errors <= settings.restart_agreement_in_degrees))
    return share if share >= settings.restart_agreement_share else None


def _screened_out(restart: RestartResult, rank: int) -> RestartResult:
    """A screened restart that does not go on: its state after the screening, as its result."""
    return _ended(restart, {"rule": "screened_out", "step": restart.stop["step"], "rank": rank})


def _agreed(restart: RestartResult) -> RestartResult:
    """One of the two best screened restarts, which agree: its state after the screening."""
    return _ended(restart, {"rule": "restarts_agree", "step": restart.stop["step"]})


def _ended(restart: RestartResult, stop: dict) -> RestartResult:
    return RestartResult(restart.index, restart.log_posterior, restart.mixture, restart.rotations, restart.trace,
                         restart.seconds, stop)


def _restart_to_dict(r: RestartResult) -> dict:
    out = {"index": np.array(r.index), "log_posterior": np.array(r.log_posterior), "rotations": r.rotations,
           "trace": r.trace, "seconds": np.array(r.seconds), "stop": np.array(json.dumps(r.stop)),
           **_mixture_arrays("mixture_", r.mixture)}
    if r.last_cycle is not None:  # a screened restart: what it goes on from
        out.update({"rng": np.array(json.dumps(r.rng.bit_generator.state)),
                    "last_rotations": r.last_cycle.state.rotations, "last_step": np.array(r.last_cycle.state.step),
                    **_mixture_arrays("last_mixture_", r.last_cycle.state.mixture)})
    return out


def _restart_from_dict(d: dict) -> RestartResult:
    last_cycle, rng = None, None
    if "rng" in d:
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(d["rng"]))
        rotations = np.asarray(d["last_rotations"])
        state = ProjectedState(_mixture_from("last_mixture_", d), rotations, np.zeros((rotations.shape[0], 2)),
                               int(d["last_step"]))
        last_cycle = _CycleState(state, np.asarray(d["rotations"]), np.zeros(0))
    return RestartResult(int(d["index"]), float(d["log_posterior"]), _mixture_from("mixture_", d),
                         np.asarray(d["rotations"]), np.asarray(d["trace"]), float(d["seconds"]),
                         json.loads(str(d["stop"])), last_cycle, rng)


def default_max_shift_in_angstroms(data: ImageCounts) -> float:
    """Translations searched in the refinement's global step: 10% of the box (at least 2 pixels)."""
    return max(0.1 * data.box, 2.0) * data.pixel_size_in_angstroms


def run_abinitio(images: np.ndarray, pixel_size_in_angstroms: float, settings: AbinitioSettings,
                 seed: int, *, jobs: int = 1, map_restarts: Callable | None = None, checkpoint=None,
                 progress: bool = False, pool: WorkerPool | None = None) -> AbinitioResult:
    """The whole ab initio pipeline on non-negative square images `(P, n, n)`.

    Images with negative values are refused (InputError, `refuse_negative_images`), as the CLI
    refuses them; prepare them with `cryogmm.pipelines.prepare.prepare_images` first.
    map_restarts : optional `map_restarts(function, indices)` that runs `function(i)` for each
        restart index (e.g. on a Dask cluster) and returns the results in order; otherwise
        restarts run in `jobs` local processes (1: in this process).
    pool : optional `WorkerPool` started earlier by the caller (so that its processes are ready),
        used instead of `jobs` new processes; the caller closes it.
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

    restarts: dict[int, RestartResult] = {}  # finished
    screened: dict[int, RestartResult] = {}  # after the screening cycles (with screening)
    # wall time spent before an interruption (from the checkpoints), so that a resumed run's
    # timings cover the whole run; the time after the last checkpoint is lost work, not counted
    before = 0.0
    if checkpoint is not None:
        for name, found in (("restart", restarts), ("screen", screened)):
            for i in range(settings.n_restarts):
                saved = checkpoint.load(f"{name}_{i}")
                if saved is not None:
                    found[i] = _restart_from_dict(saved)
                    before = max(before, float(saved.get("stage_elapsed_seconds", 0.0)))
        if restarts or screened:
            logger.info("resuming: %d of %d restarts already done%s", len(restarts), settings.n_restarts,
                        f", {len(screened)} screened" if screened else "")
            timings["resumed"] = True

    def save(name: str, result: RestartResult) -> None:
        if checkpoint is not None:
            checkpoint.save(f"{name}_{result.index}", {
                **_restart_to_dict(result), "stage_elapsed_seconds": np.array(before + time.perf_counter() - t0)})

    ran_any = False
    with _RestartRunner(jobs, map_restarts, seeds, initial, settings, progress, pool) as runner:
        def run(todo, n_cycles, name, found, resume=None):
            nonlocal ran_any
            ran_any = ran_any or bool(todo)
            for result in runner.run(todo, n_cycles, resume or {}):
                found[result.index] = result
                logger.info("restart %d: log-posterior %.6g (%.1f s, %d cycles: %s)", result.index + 1,
                            result.log_posterior, result.seconds, result.stop["step"], result.stop["rule"])
                save(name, result)

        everyone = range(settings.n_restarts)
        if settings.screening():
            # successive halving: every restart runs the screening cycles, the best go on (none
            # if the two best agree already)
            run([i for i in everyone if i not in screened and i not in restarts], settings.screen_cycles, "screen",
                screened)
            ranked, kept, stage_stop = _after_screening(screened, settings)
            run([i for i in kept if i not in restarts], settings.n_cycles, "restart", restarts, screened)
            for rank, i in enumerate(ranked, 1):
                if i not in kept:
                    agreed = stage_stop["rule"] == "restarts_agree" and rank <= 2
                    restarts[i] = _agreed(screened[i]) if agreed else _screened_out(screened[i], rank)
        else:
            run([i for i in everyone if i not in restarts], settings.n_cycles, "restart", restarts)
            stage_stop = {"rule": "max_restarts", "restarts_run": settings.n_restarts}
    best = max((r for r in restarts.values() if r.stop["rule"] != "screened_out"), key=lambda r: r.log_posterior)
    if checkpoint is not None and ran_any:
        checkpoint.save("initial_stage", {"seconds": np.array(before + time.perf_counter() - t0)})
    saved_stage = checkpoint.load("initial_stage") if checkpoint is not None else None
    if not ran_any and saved_stage is not None:  # every restart came from the checkpoints
        timings["initial_stage_seconds"] = float(saved_stage["seconds"])
    else:
        timings["initial_stage_seconds"] = before + time.perf_counter() - t0
    logger.info("best restart: %d (log-posterior %.6g)", best.index + 1, best.log_posterior)

    refine = _refine(images, pixel_size_in_angstroms, settings, seeds[-1], best, checkpoint, progress, timings)
    timings["total_seconds"] = timings["initial_stage_seconds"] + timings["refinement_seconds"]
    refine["stopping"] = {"restarts": [restarts[i].stop for i in sorted(restarts)], "initial_stage": stage_stop,
                          **refine["stopping"]}
    t2 = time.perf_counter()
    final = choose_final_map(images, pixel_size_in_angstroms, refine["rotations"], refine["translations_in_angstroms"],
                             refine["posterior_mean"], symmetry=settings.symmetry, rule=settings.final_map)
    timings["final_map_seconds"] = time.perf_counter() - t2
    timings["total_seconds"] += timings["final_map_seconds"]
    logger.info("map.mrc: %s (%s)", final.source.replace("_", " "),
                ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in final.figures.items()))
    return AbinitioResult(final_map=final, settings=settings, restarts=[restarts[i] for i in sorted(restarts)],
                          best_restart=best.index, timings=timings, **refine)


def _after_screening(screened: dict, settings: AbinitioSettings) -> tuple[list[int], list[int], dict]:
    """The screened restarts ranked by log-posterior, those that go on (the `restarts_kept` best;
    none when the two best agree already, `restarts_agree`) and the initial stage's stopping record."""
    ranked = sorted(screened, key=lambda i: -screened[i].log_posterior)
    share = restarts_agree(screened[ranked[0]], screened[ranked[1]], settings)
    if share is not None:  # the two best found the same orientations
        logger.info("screened after %d cycles: restarts %d and %d agree (%.0f%% of the images within %.3g degrees); "
                    "the initial stage ends", settings.screen_cycles, ranked[0] + 1, ranked[1] + 1, 100 * share,
                    settings.restart_agreement_in_degrees)
        return ranked, [], {"rule": "restarts_agree", "step": settings.screen_cycles,
                            "restarts": [ranked[0] + 1, ranked[1] + 1], "share": share,
                            "restarts_run": settings.n_restarts}
    kept = ranked[:settings.restarts_kept]
    logger.info("screened after %d cycles: restarts %s go on", settings.screen_cycles,
                ", ".join(str(i + 1) for i in kept))
    return ranked, kept, {"rule": "screened", "step": settings.screen_cycles, "kept": [i + 1 for i in kept],
                          "restarts_run": settings.n_restarts}


class _RestartRunner:
    """Runs restarts: with `map_restarts` (e.g. Dask), in a `WorkerPool` (the caller's `pool`, or
    one of `jobs` processes started at the first round that needs it and kept for the next), or in
    this process."""

    def __init__(self, jobs, map_restarts, seeds, initial, settings, progress, pool=None):
        self.jobs, self.map_restarts, self.seeds = jobs, map_restarts, seeds
        self.initial, self.settings, self.progress = initial, settings, progress
        self.pool, self.own_pool, self.broken = pool, False, False

    def __enter__(self):
        return self

    def _local(self, todo, n_cycles, resume):
        for i in todo:
            yield run_restart(i, self.seeds[i], self.initial, self.settings, self.progress, n_cycles=n_cycles,
                              resume=resume.get(i))

    def run(self, todo, n_cycles, resume):
        """The results of restarts `todo` run to `n_cycles` cycles (on from `resume[i]` where given),
        as each finishes."""
        if self.map_restarts is not None:
            yield from self.map_restarts(lambda i: run_restart(i, self.seeds[i], self.initial, self.settings,
                                                               n_cycles=n_cycles, resume=resume.get(i)), todo)
            return
        if (self.pool is None and self.jobs <= 1) or len(todo) <= 1 or self.broken:
            yield from self._local(todo, n_cycles, resume)
            return
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            self.pool, self.own_pool = WorkerPool(min(self.jobs, self.settings.n_restarts)), True
        done = set()
        try:
            try:
                futures = [self.pool.submit(run_restart, i, self.seeds[i], self.initial, self.settings,
                                            n_cycles=n_cycles, resume=resume.get(i)) for i in todo]
                for future in tqdm(as_completed(futures), total=len(futures), desc="restarts",
                                   disable=not self.progress, leave=False, unit="restart"):
                    result = future.result()
                    done.add(result.index)
                    yield result
            except BaseException as error:
                if isinstance(error, BrokenProcessPool):
                    raise
                # Ctrl-C or a failed restart: end the other restarts now rather than wait for them
                # (minutes); the finished ones are in the checkpoint
                self.pool.end()
                self.pool = None
                raise
        except BrokenProcessPool:
            # typically a script without `if __name__ == "__main__":`, which spawned workers re-run
            logger.warning("the restart processes could not start (a script that calls run_abinitio with jobs > 1 "
                           "must do so under `if __name__ == \"__main__\":`); running the restarts here instead")
            self.broken = True
            self.pool.end()
            self.pool = None
            yield from self._local([i for i in todo if i not in done], n_cycles, resume)

    def __exit__(self, *exc):
        if self.pool is not None and self.own_pool:
            self.pool.close()
        return False


def warm_up() -> None:
    """Load the restarts' compiled kernels (from numba's cache) with one tiny restart, so that a
    worker started early (`WorkerPool`) is ready when the first restart arrives."""
    counts = np.zeros((2, 8, 8), dtype=np.int32)
    counts[:, 2:6, 3:5] = 3
    settings = AbinitioSettings(n_components_initial=2, n_rotations=4, n_cycles=1, mixture_steps=1, rotation_steps=1,
                                local_spreads_in_degrees=(5.0,), local_candidates=2)
    run_restart(0, np.random.SeedSequence(0), ImageCounts(counts, 10.0), settings)


def _state_arrays(state: ProjectedState) -> dict:
    return {"rotations": state.rotations, "translations": state.translations_in_angstroms,
            "step": np.array(state.step), **_mixture_arrays("mixture_", state.mixture)}


def _state_from(d: dict) -> ProjectedState:
    return ProjectedState(_mixture_from("mixture_", d), np.asarray(d["rotations"]), np.asarray(d["translations"]),
                          int(d["step"]))


@dataclass(frozen=True)
class _Changes:
    """A sampler whose info also says how far the step moved the rotations and translations
    (median over images), for the refinement's traces."""

    sampler: object

    def step(self, rng, state: ProjectedState) -> tuple[ProjectedState, dict]:
        new, info = self.sampler.step(rng, state)
        return new, {**info, "rotation_change_in_degrees": float(np.median(rotation_angle_in_degrees(
                         state.rotations, new.rotations))),
                     "shift_change_in_angstroms": float(np.median(np.linalg.norm(
                         new.translations_in_angstroms - state.translations_in_angstroms, axis=-1)))}

    def log_posterior(self, state: ProjectedState) -> float:
        return self.sampler.log_posterior(state)


@dataclass(frozen=True)
class _BurnIn:
    """The refinement's burn-in as one chain: full Gibbs steps, with a basin search at the steps
    `basin_steps` (counted from the stage's first step, 0)."""

    full: ProjectedGibbsSampler
    rotation_only: ProjectedGibbsSampler
    basin_steps: frozenset
    first_step: int
    n_rotations: int
    shift_pixels: int

    def step(self, rng, state: ProjectedState) -> tuple[ProjectedState, dict]:
        step = state.step - self.first_step
        if step not in self.basin_steps:
            return self.full.step(rng, state)
        # the initial stage's rotations were found on coarse images, and some images sit in the
        # wrong basin (often a flipped view): a global table at the full size (with the shift
        # search) proposes rival basins, each refined locally and compared with the refined
        # current rotation; repeated in the burn-in with a sharper mixture
        moved, search = basin_search(rng, self.rotation_only, state, n_rotations=self.n_rotations,
                                     max_shift_in_pixels=self.shift_pixels)
        if search["moved"]:
            logger.info("refinement step %d: %d images moved to another basin (log-likelihood %+.4g)",
                        state.step, search["moved"], search["gain"])
        # the log-posterior is not evaluated here: NaN, which the plateau rule and the best state skip
        return (ProjectedState(moved.mixture, moved.rotations, moved.translations_in_angstroms, state.step + 1),
                {"log_posterior": np.nan, "sigma_in_angstroms": state.mixture.sigma_in_angstroms})

    def log_posterior(self, state: ProjectedState) -> float:
        return self.full.log_posterior(state)


def _refine(images, pixel_size_in_angstroms, settings: AbinitioSettings, seed_sequence, best: RestartResult,
            checkpoint, progress: bool, timings: dict) -> dict:
    """The refinement stage as three chains of the driver: the mixture-only warm-up (at most
    `refine_mixture_steps`), the burn-in with the basin searches (at most 1 + `refine_burn_in`
    steps), both ended early by the log-posterior's plateau, then `refine_steps - refine_burn_in`
    sampling steps whose every `refine_thin`-th state enters the posterior mean. Returns the
    fields of AbinitioResult it owns; sets timings["refinement_seconds"] (with the time before an
    interruption) and timings["resumed"] if a chain came from a checkpoint."""
    box = images.shape[-1] if settings.refine_box is None else settings.refine_box  # images_to_counts caps it at the input size
    data = images_to_counts(images, pixel_size_in_angstroms, box, settings.refine_counts)
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
    logger.info("refinement: K = %d, %d images of %d px, %d counts each, translations %s", settings.n_components,
                data.n_images, data.box, settings.refine_counts,
                f"within {shift_pixels * data.pixel_size_in_angstroms:.3g} Å" if translations else "fixed at 0")
    rng = np.random.default_rng(seed_sequence)

    def stage(name):
        if checkpoint is None:
            return None
        return ChainCheckpoint(checkpoint, name, settings.checkpoint_every, _state_arrays, _state_from)

    def info(state):
        return {"log_posterior": full.log_posterior(state), "sigma_in_angstroms": state.mixture.sigma_in_angstroms}

    def plateau(max_steps):
        window = settings.refine_window(max_steps)
        if window is None:
            return [], 0
        return [LogPosteriorPlateau(window, settings.refine_stop_standard_errors)], 2 * window

    rules, min_steps = plateau(settings.refine_mixture_steps)
    warm = run_chain(_Changes(warmup), rng, warmup.init(rng, rotations=best.rotations), settings.refine_mixture_steps,
                     stopping=rules, min_steps=min_steps, final_info=info, progress=progress,
                     description="refinement warm-up", checkpoint=stage("refinement_warmup"))
    n_more = settings.refine_basin_searches
    basin_steps = frozenset({0} | {1 + (j * settings.refine_burn_in) // (n_more + 1) for j in range(1, n_more + 1)})
    rules, min_steps = plateau(settings.refine_burn_in)
    # the plateau is judged after the last basin search has had a window to settle
    min_steps = max(basin_steps) + 1 + min_steps if rules else 0
    burn = run_chain(_Changes(_BurnIn(full, rotation_only, basin_steps, warm.final_state.step, settings.n_rotations,
                                      shift_pixels if translations else 0)),
                     rng, warm.final_state, 1 + settings.refine_burn_in, stopping=rules, min_steps=min_steps,
                     best_from=1, final_info=info, progress=progress, description="refinement burn-in",
                     checkpoint=stage("refinement_burn_in"))

    def density(state):
        return evaluate(expand_symmetry(state.mixture, ops), grid)

    sample = run_chain(_Changes(full), rng, burn.final_state, settings.refine_steps - settings.refine_burn_in,
                       thin=settings.refine_thin, mean_of=density, best_from=0, final_info=info, progress=progress,
                       description="refinement sampling", checkpoint=stage("refinement_sampling"))
    chains = {"refinement_warmup": warm, "refinement_burn_in": burn, "refinement_sampling": sample}
    timings["refinement_seconds"] = sum(chain.seconds for chain in chains.values())
    if any(chain.resumed for chain in chains.values()):
        timings["resumed"] = True
    for name, chain in chains.items():
        logger.info("%s: %d steps (%s)", name.replace("_", " "), chain.stop.step, chain.stop.rule)
    best_state = burn.best_state if burn.best_log_posterior > sample.best_log_posterior else sample.best_state
    final = sample.final_state
    mean = sample.posterior_mean if sample.posterior_mean is not None else density(final)
    # one trace: each chain's traces describe its states 0..n; a chain's state 0 is the previous
    # chain's last state, whose entry is kept once
    trace = np.concatenate([warm.traces["log_posterior"][:-1], burn.traces["log_posterior"][:-1],
                            sample.traces["log_posterior"]])
    sigmas = np.concatenate([warm.traces["sigma_in_angstroms"][:-1], burn.traces["sigma_in_angstroms"][:-1],
                             sample.traces["sigma_in_angstroms"]])
    # one entry per step (the traces' last entry, for the final state, has none)
    changes = {key: np.concatenate([chain.traces[key][:-1] for chain in chains.values()])
               for key in ("rotation_change_in_degrees", "shift_change_in_angstroms")}
    return dict(mixture=best_state.mixture, full_mixture=expand_symmetry(best_state.mixture, ops),
                rotations=final.rotations, translations_in_angstroms=final.translations_in_angstroms,
                posterior_mean=mean, n_samples=max(sample.n_averaged, 1), refine_trace=trace, sigma_trace=sigmas,
                log_posterior=float(sample.traces["log_posterior"][-1]),
                sampling_start=warm.stop.step + burn.stop.step,
                rotation_change_trace=changes["rotation_change_in_degrees"],
                shift_change_trace=changes["shift_change_in_angstroms"],
                stopping={name: chain.stop.as_dict() for name, chain in chains.items()})


def settings_dict(settings: AbinitioSettings) -> dict:
    return asdict(settings)
