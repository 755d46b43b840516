"""3D auto-refinement: gold-standard MAP-EM against particle images in Fourier space.

The particles are split into two half sets, each refined against its own map from the same
low-passed reference (so that their FSC measures resolution without overfitting). One
iteration, for each half set (`cryogmm.reconstruction.em_fourier`):
1. E-step over every particle's orientation and shift, limited to the current resolution:
   - global stage: all orientations of HEALPix order `coarse_order` (15 degrees for 2) x a
     shift grid (1-pixel steps within `offset_range_in_pixels` of the current shift), as
     single-precision matrix products; the significant poses' children one order finer
     (8 orientations, 4 half-step shifts each) are then scored exactly and carry the
     posterior (RELION's adaptive oversampling);
   - local stages: a ball of orientations of step s around each particle's previous pose
     (radius `local_radius_in_steps` s) and a 3 x 3 shift grid of s-dependent step around its
     previous shift; s halves from stage to stage (3.75, 1.875, 0.94, ... degrees).
2. M-step: posterior-weighted back-projection of CTF x data / noise and CTF^2 / noise, the
   noise power per shell from the weighted residuals (both halves pooled), symmetrisation over
   the point group, the half maps' FSC, tau^2 per shell from it, and the MAP maps (Eqn. 14).
The next E-step reaches `resolution_margin_in_pixels` Fourier pixels beyond the FSC = 0.143
resolution. A stage ends when the resolution stops improving (by less than half a Fourier pixel)
and the poses have settled (median change below the stage's step); the run ends when the last
useful stage (step below resolution / (2 x particle diameter) radians) has done so, or after
`max_iterations`. The final map joins both halves' sums with tau^2 from the full set's FSC,
2 FSC / (1 + FSC).

The first E-step needs the reference on the particles' intensity scale: it is scaled by the
median least-squares factor of a sample of particles at their best-correlating coarse poses.
The particle images are multiplied by a soft circular mask of the particle diameter, and the
references by a soft sphere of the same diameter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, ctf_of_frequencies
from cryogmm.forward.fourier import (DEFAULT_PADDING_FACTOR, FourierPixels, FourierVolume, central_slices,
                                     half_spectrum_radius, image_coefficients, image_pixels, map_to_fourier)
from cryogmm.geometry import healpix
from cryogmm.geometry.so3 import rotation_angle_in_degrees
from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.metrics.fsc import fourier_shell_correlation, resolution_at
from cryogmm.preprocess.mask import soft_edge
from cryogmm.reconstruction import em_fourier as em

log = logging.getLogger(__name__)

MAX_COARSE_SIGNIFICANT = 24  # coarse poses oversampled per particle (the most probable ones)
SCALE_SAMPLE = 200  # particles per half used to put the reference on the data's scale


@dataclass(frozen=True)
class RefineSettings:
    """Options of `refine` (keyword-only; validated here).

    symmetry : point group (C1, Cn, Dn, T, O, I)
    initial_lowpass_in_angstroms : the reference is low-passed to this resolution
    particle_diameter_in_angstroms : soft masks of images and maps (None: 0.9 of the box)
    tau2_fudge : regularisation factor T (> 0; larger trusts the data more)
    max_iterations : upper bound of the schedule
    coarse_order : HEALPix order of the global search (2: 15 degrees, oversampled to 7.5)
    offset_range_in_pixels : shifts searched around the current one in the global stage
    local_radius_in_steps : local searches reach this many steps from the previous pose
    resolution_margin_in_pixels : E-steps reach this far beyond the current resolution
    significant_fraction : posterior mass kept per particle (0.999)
    polarity : -1 for bright particles (RELION's convention; images = -CTF * projection), +1 dark
    batch_size : particles per E-step task
    padding_factor : oversampling of the Fourier volume (2)
    """

    symmetry: str = "C1"
    initial_lowpass_in_angstroms: float = 40.0
    particle_diameter_in_angstroms: float | None = None
    tau2_fudge: float = 1.0
    max_iterations: int = 20
    coarse_order: int = 2
    offset_range_in_pixels: float = 3.0
    local_radius_in_steps: float = 2.5
    resolution_margin_in_pixels: float = 4.0
    significant_fraction: float = em.DEFAULT_SIGNIFICANT_FRACTION
    polarity: int = -1
    batch_size: int = 200
    padding_factor: int = DEFAULT_PADDING_FACTOR

    def __post_init__(self):
        checks = [
            (self.initial_lowpass_in_angstroms > 0, "initial low-pass must be a positive number of Å"),
            (self.particle_diameter_in_angstroms is None or self.particle_diameter_in_angstroms > 0,
             "particle diameter must be a positive number of Å"),
            (np.isfinite(self.tau2_fudge) and self.tau2_fudge > 0, "tau2 fudge must be positive"),
            (1 <= self.max_iterations <= 200, "max iterations must be between 1 and 200"),
            (0 <= self.coarse_order <= 3, "coarse order must be 0..3"),
            (0 <= self.offset_range_in_pixels <= 50, "offset range must be between 0 and 50 pixels"),
            (1 <= self.local_radius_in_steps <= 10, "local radius must be 1..10 steps"),
            (0 < self.significant_fraction <= 1, "significant fraction must be in (0, 1]"),
            (self.polarity in (-1, 1), "polarity must be -1 (bright particles) or +1 (dark)"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.padding_factor in (1, 2, 3), "padding factor must be 1, 2 or 3"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass(frozen=True)
class ParticleData:
    """What the E-step needs of the particles, independent of files.

    read : callable rows -> (len(rows), n, n) float32 images (may read lazily from disk; it must be
        picklable to run on other processes)
    ctf : CTFParameters of all particles, or None for CTF-free particles (a CTF of 1, with the
        polarity's sign); box : n; pixel_size_in_angstroms; n_particles
    """

    read: Callable[[np.ndarray], np.ndarray]
    ctf: CTFParameters | None
    box: int
    pixel_size_in_angstroms: float
    n_particles: int


@dataclass(frozen=True)
class Stage:
    name: str  # "global" or "local"
    step_in_degrees: float
    shift_step_in_pixels: float


@dataclass
class RefineState:
    """Everything an iteration needs; saved as a checkpoint after each iteration."""

    iteration: int
    half: np.ndarray  # (P,) 1 or 2
    rotations: np.ndarray  # (P, 3, 3) MAP rotations
    shifts_in_pixels: np.ndarray  # (P, 2) MAP particle centres t
    max_posterior: np.ndarray  # (P,) weight of the MAP pose
    n_significant: np.ndarray  # (P,)
    noise_power: np.ndarray  # (n_shells,)
    noise_scale: np.ndarray  # (P,) each particle's noise power relative to noise_power
    sigma_offset_in_pixels: float  # the shift prior's width
    references: np.ndarray  # (2, n, n, n) half maps
    tau2: np.ndarray  # (2, n_shells)
    radius_in_pixels: float  # E-step limit of the next iteration
    stage_index: int
    best_radius_in_pixels: float
    history: list = field(default_factory=list)
    converged: bool = False


@dataclass(frozen=True, eq=False)
class RefineResult:
    map: np.ndarray  # (n, n, n) joined MAP reconstruction (unsharpened, unmasked)
    half_maps: np.ndarray  # (2, n, n, n) plain (unregularised) half maps of the last iteration
    fsc: object  # FSCCurve of the half maps (spherical mask)
    resolution_in_angstroms: float | None
    state: RefineState
    timings_in_seconds: dict


# ---------------------------------------------------------------------------------------------
# array helpers

def sphere_mask(box: int, radius_in_pixels: float, edge_in_pixels: float = 4.0) -> np.ndarray:
    c = np.arange(box) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return soft_edge(r - radius_in_pixels, edge_in_pixels).astype(np.float32)


def disc_mask(box: int, radius_in_pixels: float, edge_in_pixels: float = 4.0) -> np.ndarray:
    c = np.arange(box) - box // 2
    r = np.hypot(c[:, None], c[None, :])
    return soft_edge(r - radius_in_pixels, edge_in_pixels).astype(np.float32)


def lowpass_map(volume: np.ndarray, voxel_size_in_angstroms: float, resolution_in_angstroms: float,
                width_in_pixels: float = 3.0) -> np.ndarray:
    """Raised-cosine low-pass: 1 below the resolution's radius, falling to 0 over `width` Fourier pixels."""
    n = volume.shape[0]
    radius = n * voxel_size_in_angstroms / resolution_in_angstroms
    r = half_spectrum_radius(n)
    filt = soft_edge(r - radius, width_in_pixels)
    return np.fft.irfftn(np.fft.rfftn(volume) * filt, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def translation_grid(range_in_pixels: float, step_in_pixels: float) -> np.ndarray:
    """(T, 2) shifts on a square lattice of `step` inside a disc of `range` (the origin first)."""
    k = int(np.floor(range_in_pixels / step_in_pixels + 1e-9))
    g = np.arange(-k, k + 1) * step_in_pixels
    x, y = np.meshgrid(g, g, indexing="xy")
    pts = np.stack([x.ravel(), y.ravel()], axis=1)
    pts = pts[np.hypot(pts[:, 0], pts[:, 1]) <= range_in_pixels + 1e-9]
    return pts[np.argsort(np.hypot(pts[:, 0], pts[:, 1]), kind="stable")]


def stages(settings: RefineSettings) -> list[Stage]:
    """The angular schedule: the oversampled global grid, then local searches halving the step."""
    step = healpix.angular_step_in_degrees(settings.coarse_order + 1)
    out = [Stage("global", step, 0.5)]
    shift_step = 0.5
    for _ in range(5):
        step /= 2
        shift_step = max(0.125, shift_step / 1.5)
        out.append(Stage("local", step, shift_step))
    return out


def _ctf_at_pixels(ctf: CTFParameters | None, pixels: FourierPixels, pixel_size: float, polarity: int,
                   n_particles: int) -> np.ndarray:
    """(B, S) the CTF times the polarity (-1 for bright particles, whose CTF is -CTF at low frequency);
    with no CTF, -polarity: bright particles show the projection as it is."""
    if ctf is None:
        return np.full((n_particles, pixels.fx.size), -polarity, dtype=np.float32)
    scale = 1.0 / (pixels.box * pixel_size)
    return (polarity * ctf_of_frequencies(ctf, pixels.fx * scale, pixels.fy * scale)).astype(np.float32)


def load_batch(particles: ParticleData, rows: np.ndarray, pixels: FourierPixels, mask: np.ndarray,
               polarity: int, noise_scale: np.ndarray | None = None) -> em.ParticleBatch:
    """The masked particles' coefficients and CTFs at `pixels`.

    noise_scale : (B,) each particle's noise power relative to the shell model; data and CTF are
        divided by its square root, which weights the particle by its own noise in every term.
    """
    images = particles.read(rows) * mask
    x = image_coefficients(images, pixels)
    ctf = None if particles.ctf is None else particles.ctf[rows]
    c = _ctf_at_pixels(ctf, pixels, particles.pixel_size_in_angstroms, polarity, len(rows))
    if noise_scale is not None:
        factor = (1.0 / np.sqrt(noise_scale)).astype(np.float32)[:, None]
        x, c = x * factor, c * factor
    return em.ParticleBatch(x, c, np.asarray(rows, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# the E-step of one batch (a picklable task)

@dataclass(frozen=True, eq=False)
class BatchTask:
    particles: ParticleData
    rows: np.ndarray
    spectrum: np.ndarray
    padding_factor: int
    radius_in_pixels: float
    noise_power: np.ndarray
    stage: Stage
    rotations: np.ndarray  # (B, 3, 3) previous poses
    shifts_in_pixels: np.ndarray  # (B, 2)
    settings: RefineSettings
    mask: np.ndarray
    noise_scale: np.ndarray  # (B,)
    sigma_offset_in_pixels: float


@dataclass(frozen=True, eq=False)
class BatchResult:
    rows: np.ndarray
    accumulators: em.Accumulators
    rotations: np.ndarray
    shifts_in_pixels: np.ndarray
    max_posterior: np.ndarray
    n_significant: np.ndarray
    log_likelihood: np.ndarray  # (B,) at the MAP pose
    residual_ratio: np.ndarray  # (B,) residual power over the modelled noise power


def _pad_rows(lists: Sequence[np.ndarray], width: int, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.broadcast_to(fill, (len(lists), width) + fill.shape).copy()
    counts = np.zeros(len(lists), dtype=np.int64)
    for i, values in enumerate(lists):
        out[i, :len(values)] = values
        counts[i] = len(values)
    return out, counts


def _global_candidates(task: BatchTask, batch: em.ParticleBatch, pixels: FourierPixels, fourier_volume):
    """Coarse grid x shift grid by matrix products, then the children of the significant poses."""
    grid = healpix.global_grid(task.settings.coarse_order)
    slices = central_slices(fourier_volume, grid.matrices, pixels)
    offsets = translation_grid(task.settings.offset_range_in_pixels, 1.0)
    shifts = task.shifts_in_pixels[:, None, :] + offsets[None]
    ll = em.grid_log_likelihoods(batch, task.noise_power, pixels, slices, shifts)  # (B, T, J)
    ll = ll + shift_log_prior(shifts, task.sigma_offset_in_pixels)[:, :, None]
    b, t, j = ll.shape
    weights = em.significant_weights(ll.reshape(b, -1), task.settings.significant_fraction,
                                     MAX_COARSE_SIGNIFICANT).reshape(b, t, j)
    child_rotations, child_shifts = [], []
    half = np.array([[-0.25, -0.25], [0.25, -0.25], [-0.25, 0.25], [0.25, 0.25]])
    for i in range(b):
        ti, ji = np.nonzero(weights[i])
        ji, ti = np.unique(ji), np.unique(ti)
        kids, _ = healpix.children(grid.order, grid.direction_index[ji], grid.psi_index[ji])
        child_rotations.append(kids.matrices)
        child_shifts.append((shifts[i, ti][:, None, :] + half[None]).reshape(-1, 2))
    rotations, n_rot = _pad_rows(child_rotations, max(len(r) for r in child_rotations), np.eye(3))
    shifts_out, n_shift = _pad_rows(child_shifts, max(len(s) for s in child_shifts), np.zeros(2))
    return rotations, n_rot, shifts_out, n_shift


def _local_candidates(task: BatchTask):
    stage = task.stage
    deltas = healpix.local_perturbations(stage.step_in_degrees, task.settings.local_radius_in_steps * stage.step_in_degrees)
    rotations = np.einsum("mij,bjk->bmik", deltas, task.rotations)
    offsets = translation_grid(stage.shift_step_in_pixels * 1.01, stage.shift_step_in_pixels)
    if len(offsets) < 9:  # the 3 x 3 square around the previous shift
        g = np.array([-1.0, 0.0, 1.0]) * stage.shift_step_in_pixels
        offsets = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
        offsets = offsets[np.argsort(np.hypot(offsets[:, 0], offsets[:, 1]), kind="stable")]
    shifts = task.shifts_in_pixels[:, None, :] + offsets[None]
    b = len(task.rows)
    return (rotations, np.full(b, rotations.shape[1]), shifts, np.full(b, shifts.shape[1]))


def run_batch(task: BatchTask) -> BatchResult:
    """E-step and M-step sums of one batch of particles against one half map."""
    pixels = image_pixels(task.particles.box, task.radius_in_pixels, include_zero=True)
    batch = load_batch(task.particles, task.rows, pixels, task.mask, task.settings.polarity, task.noise_scale)
    fourier_volume = FourierVolume(task.spectrum, task.particles.box)
    if task.stage.name == "global":
        rotations, n_rot, shifts, n_shift = _global_candidates(task, batch, pixels, fourier_volume)
    else:
        rotations, n_rot, shifts, n_shift = _local_candidates(task)
    candidates = em.score(task.spectrum, task.padding_factor, batch, task.noise_power, pixels, rotations, n_rot,
                          shifts, n_shift, fraction=task.settings.significant_fraction,
                          log_prior=shift_log_prior(shifts, task.sigma_offset_in_pixels)[:, None, :])
    accumulators = em.Accumulators.empty(task.particles.box, task.padding_factor, task.particles.box // 2 + 1)
    ratio = em.backproject(accumulators, task.spectrum, task.padding_factor, batch, task.noise_power, pixels,
                           candidates)
    best_rot, best_shift, best_w = candidates.best()
    flat = candidates.posterior.reshape(len(batch), -1).argmax(axis=1)
    best_ll = candidates.log_likelihood.reshape(len(batch), -1)[np.arange(len(batch)), flat]
    return BatchResult(task.rows, accumulators, best_rot, best_shift, best_w, candidates.n_significant(), best_ll,
                       ratio)


# ---------------------------------------------------------------------------------------------
# executors: results in task order, so that every executor gives the same sums

def run_tasks(tasks: list, executor=None, progress: bool = False, description: str = "E-step", function=None):
    """Yield the tasks' results in task order: serially (executor None), from a `concurrent.futures`
    executor, or from a Dask client. Each result is handed over as soon as it and those before it are
    done, so that the caller can add it and let it go (one batch's sums in memory, not all).

    function : the module-level (picklable) function run on each task (default `run_batch`)."""
    function = run_batch if function is None else function
    bar = tqdm(total=len(tasks), desc=description, disable=not progress, leave=False, unit="batch")
    try:
        if executor is None:
            for task in tasks:
                result = function(task)
                bar.update(1)
                yield result
            return
        if hasattr(executor, "scatter") and hasattr(executor, "gather"):  # dask.distributed.Client
            futures = executor.map(function, tasks, pure=False)
        else:
            futures = [executor.submit(function, task) for task in tasks]
        for i in range(len(futures)):
            result = futures[i].result()
            futures[i] = None  # drop the reference: the result lives only as long as the caller keeps it
            bar.update(1)
            yield result
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# the schedule

def initial_noise_power(particles: ParticleData, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean power |X|^2 per shell (Fourier pixels 0 .. n // 2) of the masked particles `rows`."""
    n = particles.box
    pixels = image_pixels(n, n / 2 + 0.5, include_zero=True)
    total = np.zeros(n // 2 + 1)
    count = np.zeros(n // 2 + 1)
    for start in range(0, len(rows), 500):
        x = image_coefficients(particles.read(rows[start:start + 500]) * mask, pixels)
        power = (np.abs(x) ** 2).astype(np.float64)
        total += np.bincount(pixels.shell, weights=power.sum(axis=0), minlength=n // 2 + 1)[: n // 2 + 1]
        count += np.bincount(pixels.shell, minlength=n // 2 + 1)[: n // 2 + 1] * x.shape[0]
    noise = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    positive = noise[noise > 0]
    noise[noise <= 0] = positive.min() if positive.size else 1.0
    return noise


def fit_reference_scale(particles: ParticleData, rows: np.ndarray, reference: np.ndarray, settings: RefineSettings,
                        radius_in_pixels: float, noise_power: np.ndarray, mask: np.ndarray) -> float:
    """Median least-squares scale of the reference at each sampled particle's best-correlating coarse pose."""
    pixels = image_pixels(particles.box, radius_in_pixels)
    batch = load_batch(particles, rows, pixels, mask, settings.polarity)
    fv = map_to_fourier(reference, padding_factor=settings.padding_factor)
    grid = healpix.global_grid(settings.coarse_order)
    slices = central_slices(fv, grid.matrices, pixels)
    offsets = translation_grid(settings.offset_range_in_pixels, 1.0)
    shifts = np.broadcast_to(offsets, (len(rows),) + offsets.shape)
    cross, quad, _ = em.grid_terms(batch, noise_power, pixels, slices, shifts)
    c, q = cross.astype(np.float64), quad[:, None, :].astype(np.float64)
    correlation = c / np.sqrt(np.maximum(q, 1e-30))  # maximal over poses: the best-correlating one
    q = np.broadcast_to(q, c.shape)
    best = correlation.reshape(len(rows), -1).argmax(axis=1)
    c_best = c.reshape(len(rows), -1)[np.arange(len(rows)), best]
    q_best = q.reshape(len(rows), -1)[np.arange(len(rows)), best]
    scales = c_best / np.maximum(q_best, 1e-30)
    scale = float(np.median(scales))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError("the reference does not correlate with the particles (no positive intensity scale); "
                         "check the reference's hand, polarity (--polarity) and pixel size")
    return scale


def _fsc_of(half_maps: np.ndarray, pixel: float, radius_in_pixels: float):
    """FSC of the unmasked half maps, zero from the first shell the E-step did not reach.

    Beyond that shell the maps hold only what the gridding correction and the crop from the padded
    grid spread from lower frequencies, which is the same in both halves (no mask either: its edge
    would correlate them at every frequency in the same way).
    """
    curve = fourier_shell_correlation(half_maps[0], half_maps[1], pixel)
    correlation = curve.correlation.copy()
    correlation[int(np.floor(radius_in_pixels)):] = 0.0
    return type(curve)(curve.frequency_per_angstrom, correlation, curve.n_voxels)


def _reconstruct_halves(accumulators: list[em.Accumulators], operators, settings: RefineSettings, box: int,
                        radius: float, pixel: float):
    """Both half sets' maps: the plain ones (data / weights), their FSC, tau^2 from it and the MAP maps.

    The FSC (resolution, tau^2) is that of the plain maps: in the MAP maps, shells where tau^2 is
    near zero hold almost nothing but what the real-space crop spreads from lower frequencies,
    the same in both halves, so their FSC would read it as signal.
    """
    pad = settings.padding_factor
    n_shells = box // 2 + 1
    sym = [em.symmetrised(a, operators, radius, pad) for a in accumulators]
    plain = np.stack([em.reconstruct(d, w, box, pad, radius, wiener_constant=1e-6 * max(w.max(), 1e-30))
                      for d, w in sym])
    fsc = _fsc_of(plain, pixel, radius)
    shells = em.padded_shells(box, pad)
    tau2 = np.stack([em.tau2_from_fsc(fsc.correlation, em.mean_weight_per_shell(w, shells, n_shells), pad,
                                      settings.tau2_fudge) for _, w in sym])
    maps = np.stack([band_limit(em.reconstruct(d, w, box, pad, radius, tau2=t), radius) for (d, w), t in zip(sym, tau2)])
    return HalfMaps(plain, maps, tau2, fsc)


@dataclass(frozen=True, eq=False)
class HalfMaps:
    plain: np.ndarray  # (2, n, n, n) data / weights
    regularised: np.ndarray  # (2, n, n, n) MAP (Eqn. 14 with tau^2)
    tau2: np.ndarray  # (2, n_shells)
    fsc: object  # FSCCurve of the plain maps


def band_limit(volume: np.ndarray, radius_in_pixels: float) -> np.ndarray:
    """Zero the map's Fourier coefficients at or beyond `radius_in_pixels` (where no data went in).

    The gridding correction and the crop from the padded grid spread some of the lower frequencies
    there, the same in both half maps; left in, that would read as signal in their FSC.
    """
    n = volume.shape[0]
    r = half_spectrum_radius(n)
    return np.fft.irfftn(np.fft.rfftn(volume) * (r < radius_in_pixels), s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def _radius_of(fsc, threshold: float = 0.143) -> float:
    """FSC crossing in Fourier pixels (shell index, interpolated); the last shell when it never crosses."""
    c = fsc.correlation
    below = np.flatnonzero(c[1:] < threshold) + 1
    if below.size == 0:
        return float(c.size - 1)
    i = int(below[0])
    if c[i - 1] < threshold:
        return float(i)
    return float(i - 1 + (c[i - 1] - threshold) / (c[i - 1] - c[i]))


def initial_state(particles: ParticleData, reference: np.ndarray, settings: RefineSettings,
                  rng: np.random.Generator, half: np.ndarray | None = None) -> RefineState:
    n = particles.box
    pixel = particles.pixel_size_in_angstroms
    if half is None:
        half = np.ones(particles.n_particles, dtype=np.int64)
        half[rng.permutation(particles.n_particles)[: particles.n_particles // 2]] = 2
    half = np.asarray(half, dtype=np.int64)
    for h in (1, 2):
        if np.count_nonzero(half == h) < 2:
            raise InputError(f"half set {h} has {np.count_nonzero(half == h)} particles; refine needs at least "
                             "2 per half set (4 particles in all)")
    mask2 = disc_mask(n, _diameter_px(settings, particles) / 2)
    mask3 = sphere_mask(n, _diameter_px(settings, particles) / 2)
    noise = initial_noise_power(particles, np.arange(particles.n_particles)[: min(particles.n_particles, 2000)], mask2)
    radius = min(n * pixel / settings.initial_lowpass_in_angstroms, _max_radius(n, settings))
    ref = lowpass_map(np.asarray(reference, dtype=np.float64), pixel, settings.initial_lowpass_in_angstroms) * mask3
    sample = rng.permutation(particles.n_particles)[:SCALE_SAMPLE]
    scale = fit_reference_scale(particles, np.sort(sample), ref, settings, radius, noise, mask2)
    log.info("reference scaled by %.4g to the particles' intensities (median of %d particles)", scale, sample.size)
    ref = ref * scale
    p = particles.n_particles
    return RefineState(iteration=0, half=half, rotations=np.tile(np.eye(3), (p, 1, 1)),
                       shifts_in_pixels=np.zeros((p, 2)), max_posterior=np.zeros(p), n_significant=np.zeros(p, np.int64),
                       noise_power=noise, noise_scale=np.ones(p), sigma_offset_in_pixels=settings.offset_range_in_pixels,
                       references=np.stack([ref, ref]).astype(np.float32),
                       tau2=np.zeros((2, n // 2 + 1)), radius_in_pixels=radius, stage_index=0,
                       best_radius_in_pixels=0.0, history=[])


def shift_log_prior(shifts_in_pixels: np.ndarray, sigma_in_pixels: float) -> np.ndarray:
    """log of the Gaussian prior on the particle centres, -|t|^2 / (2 sigma^2), for shifts (..., 2).

    Centred on the box centre, as RELION's: without it, every particle's shift could follow the
    projection of one 3D translation of the map, which costs no likelihood, and the map would drift.
    """
    t = np.asarray(shifts_in_pixels, dtype=np.float64)
    return (-0.5 * (t**2).sum(axis=-1) / sigma_in_pixels**2).astype(np.float32)


def update_sigma_offset(shifts_in_pixels: np.ndarray, minimum_in_pixels: float = 1.0) -> float:
    """sigma of the shift prior from the particles' shifts: sqrt(mean |t|^2 / 2) (2 dimensions)."""
    t = np.asarray(shifts_in_pixels, dtype=np.float64)
    return float(max(np.sqrt(np.mean((t**2).sum(axis=-1)) / 2.0), minimum_in_pixels))


def common_translation(rotations: np.ndarray, shifts_in_pixels: np.ndarray) -> np.ndarray:
    """The 3D translation d (x, y, z) in pixels that the particles' shifts follow in common.

    A map moved by d projects in orientation A to the unmoved map's projection moved by P A d (P
    keeps x and y), so shifts t_i = s_i + P A_i d describe the same data as the moved map with
    shifts s_i: the likelihood cannot tell them apart. d is the least-squares fit
    min_d sum_i |t_i - P A_i d|^2 over the particles.
    """
    pa = np.asarray(rotations, dtype=np.float64)[:, :2, :]  # (P, 2, 3)
    normal = np.einsum("pci,pcj->ij", pa, pa)
    rhs = np.einsum("pci,pc->i", pa, np.asarray(shifts_in_pixels, dtype=np.float64))
    return np.linalg.lstsq(normal, rhs, rcond=None)[0]


def translate_map(volume: np.ndarray, shift_in_pixels: np.ndarray) -> np.ndarray:
    """The map moved by (dx, dy, dz) pixels, v'(x) = v(x - d), by a Fourier phase ramp (periodic)."""
    n = volume.shape[0]
    d = np.asarray(shift_in_pixels, dtype=np.float64)
    f = np.fft.fftfreq(n)
    h = np.fft.rfftfreq(n)
    ramp = np.exp(-2j * np.pi * (d[2] * f[:, None, None] + d[1] * f[None, :, None] + d[0] * h[None, None, :]))
    return np.fft.irfftn(np.fft.rfftn(volume) * ramp, s=volume.shape, axes=(0, 1, 2)).astype(volume.dtype)


def update_noise_scale(scale: np.ndarray, residual_ratio: np.ndarray, n_pixels: int,
                       min_pixels: int = 100) -> np.ndarray:
    """Each particle's noise power relative to the shell model, from its residuals at its poses.

    The new scale is the old one times the particle's residual ratio, divided by the ratios' mean
    (the shell noise, estimated with the old scales, keeps the overall level). Ratios are clipped
    to [1/4, 4]; with fewer than `min_pixels` pixels in the E-step the scales stay as they are.
    """
    if n_pixels < min_pixels:
        return scale.copy()
    ratio = np.clip(residual_ratio, 0.25, 4.0)
    return scale * ratio / ratio.mean()


def needed_step_in_degrees(resolution_in_angstroms: float, diameter_in_angstroms: float,
                           fraction: float) -> float:
    """The angular step that moves the particle's edge by `fraction` of the resolution."""
    return float(np.degrees(2.0 * fraction * resolution_in_angstroms / diameter_in_angstroms))


def _diameter_px(settings: RefineSettings, particles: ParticleData) -> float:
    if settings.particle_diameter_in_angstroms is None:
        return 0.9 * particles.box
    return min(settings.particle_diameter_in_angstroms / particles.pixel_size_in_angstroms, particles.box - 2)


def _max_radius(box: int, settings: RefineSettings) -> float:
    return min(box / 2 - 0.5, (settings.padding_factor * box / 2 - 1) / settings.padding_factor)


def iterate(particles: ParticleData, state: RefineState, settings: RefineSettings, *, executor=None,
            progress: bool = False, final: bool = False) -> tuple[RefineState, list[em.Accumulators]]:
    """One EM iteration of both half sets; returns the new state and the half sets' accumulators.

    final : the last iteration (all frequencies the grid holds): the schedule is not advanced.
    """
    start = time.perf_counter()
    n = particles.box
    pixel = particles.pixel_size_in_angstroms
    schedule = stages(settings)
    stage = schedule[state.stage_index]
    radius = state.radius_in_pixels
    mask2 = disc_mask(n, _diameter_px(settings, particles) / 2)
    mask3 = sphere_mask(n, _diameter_px(settings, particles) / 2)
    operators = symmetry_operators(settings.symmetry)
    rotations = state.rotations.copy()
    shifts = state.shifts_in_pixels.copy()
    max_posterior = state.max_posterior.copy()
    n_significant = state.n_significant.copy()
    log_likelihood = np.zeros(particles.n_particles)
    residual_ratio = np.ones(particles.n_particles)
    accumulators = []
    for h in (1, 2):
        rows_h = np.flatnonzero(state.half == h)
        spectrum = map_to_fourier(state.references[h - 1], padding_factor=settings.padding_factor).spectrum
        tasks = [BatchTask(particles, rows_h[i:i + settings.batch_size], spectrum, settings.padding_factor, radius,
                           state.noise_power, stage, state.rotations[rows_h[i:i + settings.batch_size]],
                           state.shifts_in_pixels[rows_h[i:i + settings.batch_size]], settings, mask2,
                           state.noise_scale[rows_h[i:i + settings.batch_size]], state.sigma_offset_in_pixels)
                 for i in range(0, rows_h.size, settings.batch_size)]
        results = run_tasks(tasks, executor, progress, f"iteration {state.iteration + 1}, half {h}")
        total = em.Accumulators.empty(n, settings.padding_factor, n // 2 + 1)
        for result in results:
            total.add(result.accumulators)
            rotations[result.rows] = result.rotations
            shifts[result.rows] = result.shifts_in_pixels
            max_posterior[result.rows] = result.max_posterior
            n_significant[result.rows] = result.n_significant
            log_likelihood[result.rows] = result.log_likelihood
            residual_ratio[result.rows] = result.residual_ratio
        accumulators.append(total)
    # noise power per shell from both halves' residuals (shells the E-step reached)
    noise = state.noise_power.copy()
    noise_sum = accumulators[0].noise_sum + accumulators[1].noise_sum
    noise_count = accumulators[0].noise_count + accumulators[1].noise_count
    reached = noise_count > 0
    noise[reached] = np.maximum(noise_sum[reached] / noise_count[reached], 1e-30)
    halves = _reconstruct_halves(accumulators, operators, settings, n, radius, pixel)
    maps, tau2, fsc = halves.regularised, halves.tau2, halves.fsc
    noise_scale = update_noise_scale(state.noise_scale, residual_ratio, len(image_pixels(n, radius)))
    r143 = _radius_of(fsc)
    resolution = resolution_at(fsc, 0.143)
    angle_change = rotation_angle_in_degrees(rotations, state.rotations) if state.iteration > 0 else None
    shift_change = np.hypot(*(shifts - state.shifts_in_pixels).T) * pixel if state.iteration > 0 else None
    record = {
        "iteration": state.iteration + 1,
        "stage": stage.name,
        "angular_step_in_degrees": stage.step_in_degrees,
        "shift_step_in_angstroms": stage.shift_step_in_pixels * pixel,
        "e_step_radius_in_pixels": radius,
        "e_step_resolution_in_angstroms": n * pixel / radius,
        "resolution_in_angstroms": resolution,
        "median_angle_change_in_degrees": None if angle_change is None else float(np.median(angle_change)),
        "median_shift_change_in_angstroms": None if shift_change is None else float(np.median(shift_change)),
        "mean_max_posterior": float(np.mean(max_posterior)),
        "mean_significant_poses": float(np.mean(n_significant)),
        "noise_scale_quartiles": np.percentile(noise_scale, [25, 50, 75]).tolist(),
        "sigma_offset_in_angstroms": update_sigma_offset(shifts) * pixel,
        "sum_log_likelihood": float(log_likelihood.sum()),
        "seconds": time.perf_counter() - start,
    }
    # schedule: a finer stage once the step moves the particle's edge by more than half the
    # resolution, or when the resolution stops improving with settled poses; the run ends when a
    # stage that moves the edge by at most a quarter of the resolution stops improving
    improved = r143 > state.best_radius_in_pixels + 0.5
    settled = angle_change is None or np.median(angle_change) <= stage.step_in_degrees
    stage_index, converged = state.stage_index, False
    res_now = resolution if resolution is not None else 2 * pixel
    diameter = _diameter_px(settings, particles) * pixel
    last_stage = stage_index + 1 >= len(schedule)
    if stage.step_in_degrees > needed_step_in_degrees(res_now, diameter, 0.5) and not last_stage:
        stage_index += 1
    elif not improved and settled and state.iteration > 0:
        if stage.step_in_degrees <= needed_step_in_degrees(res_now, diameter, 0.25) or last_stage:
            converged = True
        else:
            stage_index += 1
    if final:
        stage_index, converged = state.stage_index, True
    record["final"] = final
    record["next_stage_index"] = stage_index
    record["converged"] = converged
    new_radius = min(max(r143 + settings.resolution_margin_in_pixels, radius if not improved else 0.0),
                     _max_radius(n, settings))
    # fix the translation gauge: the part of each half's shifts that a 3D translation of its map
    # explains moves into the map (the data are described as well; the frame stays the reference's)
    references = (maps * mask3).astype(np.float32)
    drift = np.zeros((2, 3))
    if not final:
        for h in (1, 2):
            rows_h = state.half == h
            drift[h - 1] = common_translation(rotations[rows_h], shifts[rows_h])
            shifts[rows_h] -= np.einsum("pci,i->pc", rotations[rows_h][:, :2, :], drift[h - 1])
            references[h - 1] = translate_map(references[h - 1], drift[h - 1])
    record["frame_translation_in_angstroms"] = (drift * pixel).tolist()
    new_state = RefineState(
        iteration=state.iteration + 1, half=state.half, rotations=rotations, shifts_in_pixels=shifts,
        max_posterior=max_posterior, n_significant=n_significant, noise_power=noise, noise_scale=noise_scale,
        sigma_offset_in_pixels=update_sigma_offset(shifts),
        references=references, tau2=tau2, radius_in_pixels=float(new_radius),
        stage_index=stage_index, best_radius_in_pixels=max(state.best_radius_in_pixels, r143),
        history=state.history + [record], converged=converged)
    return new_state, accumulators


def join_halves(accumulators: list[em.Accumulators], settings: RefineSettings, state: RefineState, box: int,
                pixel: float):
    """The final map from both halves' sums, tau^2 from the full set's FSC 2 FSC / (1 + FSC).

    Returns the map, the plain half maps (data / weights) and their FSC.
    """
    pad = settings.padding_factor
    operators = symmetry_operators(settings.symmetry)
    radius = state.history[-1]["e_step_radius_in_pixels"]  # what the last E-step reached
    total = em.Accumulators.empty(box, pad, box // 2 + 1)
    for a in accumulators:
        total.add(a)
    halves = _reconstruct_halves(accumulators, operators, settings, box, radius, pixel)
    maps, fsc = halves.plain, halves.fsc
    data, weights = em.symmetrised(total, operators, radius, pad)
    full = np.clip(fsc.correlation, 0, 0.999)
    full = 2 * full / (1 + full)
    tau2 = em.tau2_from_fsc(full, em.mean_weight_per_shell(weights, em.padded_shells(box, pad), box // 2 + 1), pad,
                            settings.tau2_fudge)
    return band_limit(em.reconstruct(data, weights, box, pad, radius, tau2=tau2), radius), maps, fsc


def refine(particles: ParticleData, reference: np.ndarray, settings: RefineSettings, *, seed: int,
           executor=None, progress: bool = False, state: RefineState | None = None,
           checkpoint: Callable[[RefineState], None] | None = None,
           on_iteration: Callable[[dict], None] | None = None) -> RefineResult:
    """Gold-standard auto-refinement of `reference` against `particles` (see the module docstring).

    Parameters
    ----------
    particles : ParticleData
    reference : (n, n, n) initial map on the particles' box and pixel size (any intensity scale)
    settings : RefineSettings
    seed : seeds the half-set split and the scale sample (the only random choices)
    executor : None (in process), a `concurrent.futures` executor or a `dask.distributed.Client`;
        every choice gives the same result
    state : a checkpointed state to resume from; checkpoint : called with the state after each
        iteration; on_iteration : called with each iteration's record (for logging)
    """
    timings = {}
    start = time.perf_counter()
    n = particles.box
    reference = np.asarray(reference)
    if reference.shape != (n, n, n):
        raise InputError(f"the reference has shape {reference.shape}, the particles need ({n}, {n}, {n})")
    if state is None:
        state = initial_state(particles, reference, settings, np.random.default_rng(seed))
        timings["setup"] = time.perf_counter() - start
    while not state.converged and state.iteration < settings.max_iterations:
        state, _ = iterate(particles, state, settings, executor=executor, progress=progress)
        if on_iteration is not None:
            on_iteration(state.history[-1])
        if checkpoint is not None:
            checkpoint(state)
    # the last iteration, as RELION's: the E-step with all data below the Nyquist shell, so that the half maps'
    # FSC and its masked, phase-randomised version see signal and noise at every frequency
    last = replace(state, radius_in_pixels=_max_radius(n, settings), converged=True)
    state, accumulators = iterate(particles, last, settings, executor=executor, progress=progress, final=True)
    if on_iteration is not None:
        on_iteration(state.history[-1])
    t = time.perf_counter()
    final, halves, fsc = join_halves(accumulators, settings, state, n, particles.pixel_size_in_angstroms)
    timings["final_reconstruction"] = time.perf_counter() - t
    timings["iterations"] = float(sum(r["seconds"] for r in state.history))
    timings["total"] = time.perf_counter() - start
    return RefineResult(final, halves, fsc, resolution_at(fsc, 0.143), state, timings)


def settings_dict(settings: RefineSettings) -> dict:
    return asdict(settings)


@dataclass(frozen=True, eq=False)
class ImagesInMemory:
    """A `ParticleData.read` for a stack held in memory: rows -> images[rows]."""

    images: np.ndarray

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.images[np.asarray(rows)], dtype=np.float32)


_STATE_ARRAYS = ("half", "rotations", "shifts_in_pixels", "max_posterior", "n_significant", "noise_power",
                 "noise_scale", "references", "tau2")


def state_to_arrays(state: RefineState) -> dict:
    """The state as a dict of arrays (for an `.npz` checkpoint); `state_from_arrays` inverts it."""
    import json

    arrays = {name: getattr(state, name) for name in _STATE_ARRAYS}
    scalars = {"iteration": state.iteration, "radius_in_pixels": state.radius_in_pixels,
               "sigma_offset_in_pixels": state.sigma_offset_in_pixels,
               "stage_index": state.stage_index, "best_radius_in_pixels": state.best_radius_in_pixels,
               "converged": state.converged, "history": state.history}
    arrays["scalars_json"] = np.array(json.dumps(scalars))
    return arrays


def state_from_arrays(arrays: dict) -> RefineState:
    import json

    scalars = json.loads(str(arrays["scalars_json"]))
    return RefineState(**{name: np.asarray(arrays[name]) for name in _STATE_ARRAYS}, **scalars)
