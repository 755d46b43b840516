"""`report.html`: one self-contained page per run, built from what the run folder holds.

The page reads `settings.json` (or a command's own JSON record), `summary.json`, `traces.json`,
`run.log`, the maps, STAR files, pseudo-atoms and PNG figures of a run and shows, where the run
has them: the command line, version, seed, settings and timings; the warnings the run raised (at
the top); the inputs next to projections of the result; the restarts and their log-posteriors;
traces over the steps; FSC curves; the distribution of viewing directions; central slices and a
shaded isosurface of the map from three directions; the pseudo-atoms over the map. Figures are
embedded as base64 PNG: the file needs no network and opens from disk. `chimerax.cxc` beside it
opens the map at the level the page shows, with the pseudo-atoms.

Commands that write a stack rather than a folder (`deconvolve`, `prepare`: OUT.mrcs with
OUT_deconvolve.json ...) get `OUT_report.html` beside the stack.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryogmm.errors import InputError
from cryogmm.io.mrc import atomic_output
from cryogmm.io.runs import write_json
from cryogmm.report.image_grid import Cell, image_grid
from cryogmm.report.plots import PNG_OPTIONS, margins, y_label_inches

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
CHIMERAX_NAME = "chimerax.cxc"
# commands that write OUT.mrcs with OUT_<command>.json and OUT_<command>.png instead of a folder
STACK_COMMANDS = ("deconvolve", "prepare")
MAP_NAMES = ("map.mrc", "fitted_map.mrc", "reference.mrc")  # the run's main map, first found
POSE_FILES = ("orientations.star", "particles.star", "class_poses.star", "particles_poses.star")
# PNG figures commands write -> (section, caption); the rest go under "Other figures"
KNOWN_FIGURES = {
    "deconvolved.png": ("inputs", "Class averages and their deconvolved images (--prepare)"),
    "prepared.png": ("inputs", "Inputs with mask outline and centre of mass, the masks, the prepared images"),
    "deconvolve.png": ("inputs", "Class averages (top) and deconvolved images (bottom)"),
    "prepare.png": ("inputs", "Inputs with mask outline and centre of mass, the masks, the prepared images"),
    "projections.png": ("inputs", "Inputs (top of each pair) and projections of the result along their estimated "
                                  "poses (bottom)"),
    "classes.png": ("inputs", "Class images, largest class first"),
    "ctf.png": ("inputs", "Power spectra next to CTF², the radial profile with the CTF zeros"),
    "restarts.png": ("restarts", "Log-posterior per step of each restart (chosen one bold) and of the refinement"),
    "trace.png": ("traces", "Log-posterior and component size per step"),
    "fsc.png": ("fsc", "Fourier shell correlation"),
    "map_slices.png": ("map", "Central slices of the map"),
    "fitted_map_slices.png": ("map", "Central slices of the fitted map"),
    "reference_slices.png": ("map", "Central slices of the reference map"),
}
_SUMMARY_NAMES = ("summary.json", "ctf.json")
_WARNING_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING \S+: (.*)$")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


@dataclass
class RunFiles:
    """What a run left: its folder, the prefix of its file names ("" for a run folder, "OUT_" for
    a stack command), the record of settings, the summary and the log."""

    folder: Path
    prefix: str = ""
    record: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    log_text: str = ""
    stack: Path | None = None  # OUT.mrcs of a stack command
    shown_as: Path | None = None  # the folder's final path, while the report is written in a temporary one

    @property
    def title(self) -> str:
        return self.stack.name if self.stack else (self.shown_as or self.folder).name

    def file(self, name: str) -> Path | None:
        path = self.folder / f"{self.prefix}{name}"
        return path if path.is_file() else None

    @property
    def command(self) -> str:
        return str(self.record.get("command") or "run")

    @property
    def report_path(self) -> Path:
        return self.folder / f"{self.prefix}{REPORT_NAME}"

    def stages(self) -> list[str]:
        """Sub-folders with a report of their own (the stages of `cryogmm run`), sorted."""
        if self.prefix:
            return []
        return sorted(p.name for p in self.folder.iterdir() if (p / REPORT_NAME).is_file() and not p.name.startswith("."))

    def names(self) -> list[str]:
        """The run's file names (without the prefix), sorted; the report's own files left out, and
        of a stage with a report of its own only that report."""
        own = {REPORT_NAME, CHIMERAX_NAME}
        stages = set(self.stages())
        names = []
        for path in sorted(self.folder.rglob("*") if not self.prefix else self.folder.glob(f"{self.prefix}*")):
            relative = path.relative_to(self.folder).as_posix()
            parts = Path(relative).parts
            if not path.is_file() or any(part.startswith(".") for part in parts):
                continue
            if len(parts) > 1 and parts[0] in stages and parts[1:] != (REPORT_NAME,):
                continue
            name = relative[len(self.prefix):]
            if name not in own:
                names.append(name)
        return names

    def main_map(self) -> Path | None:
        """The run's map: map.mrc (fitted_map.mrc ...) or the one its summary names ("map")."""
        found = next((self.file(n) for n in MAP_NAMES if self.file(n)), None)
        named = self.summary.get("map")
        if found is None and isinstance(named, str) and named.endswith(".mrc") and not Path(named).is_absolute():
            path = self.folder / named
            found = path if path.is_file() else None
        return found


def _read_json(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("warning: %s: not readable as JSON (%s); the report leaves it out", path, exc)
        return {}
    return value if isinstance(value, dict) else {}


def find_run(path: str | os.PathLike) -> RunFiles:
    """The run at `path`: a run folder (with settings.json, summary.json, ctf.json or run.log),
    or the stack OUT.mrcs of `deconvolve`/`prepare` (or its OUT_<command>.json).

    Raises InputError naming `path` when it holds no cryogmm run.
    """
    path = Path(path)
    if path.is_dir():
        run = RunFiles(path)
        run.record = _read_json(run.file("settings.json"))
        summary_path = next((run.file(n) for n in _SUMMARY_NAMES if run.file(n)), None)
        run.summary = _read_json(summary_path)
        if not run.record and "settings" in run.summary:  # ctf keeps its settings in ctf.json
            run.record = {"command": "ctf" if summary_path.name == "ctf.json" else None,
                          "settings": run.summary["settings"]}
        log_path = run.file("run.log")
        run.log_text = log_path.read_text(errors="replace") if log_path else ""
        if not (run.record or run.summary or run.log_text):
            raise InputError(f"{path}: no settings.json, summary.json or run.log; pass a folder that a cryogmm "
                             "command wrote")
        return run
    if path.is_file():
        for command in STACK_COMMANDS:
            stem = path.with_suffix("") if path.suffix.lower() in (".mrcs", ".mrc") else path
            if path.name.endswith(f"_{command}.json"):
                stem = path.with_name(path.name.removesuffix(f"_{command}.json"))
            record_path = stem.with_name(f"{stem.name}_{command}.json")
            if record_path.is_file():
                record = _read_json(record_path)
                stack = next((p for p in (stem.with_suffix(".mrcs"), stem.with_suffix(".mrc")) if p.is_file()), None)
                return RunFiles(stem.parent, f"{stem.name}_", record, record, "", stack)
        raise InputError(f"{path}: not a run folder, nor the stack of `cryogmm deconvolve` or `prepare` (no "
                         f"{path.with_suffix('').name}_deconvolve.json or _prepare.json beside it); pass a run folder")
    raise InputError(f"{path}: no such folder or file; pass the output folder of a cryogmm command")


# ---------------------------------------------------------------------------------------------
# figures

def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, pil_kwargs=PNG_OPTIONS)
    return buffer.getvalue()


def _img(data: bytes, alt: str, width: int | None = None) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    size = f' style="max-width:min(100%, {width}px)"' if width else ""
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}"{size}>'


def _figure(data: bytes, caption: str, width: int | None = None) -> str:
    return f"<figure>{_img(data, caption, width)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def plot_viewing_directions(rot_in_degrees: np.ndarray, tilt_in_degrees: np.ndarray, title: str = "") -> Figure:
    """Where the projection directions point (RELION's rot as longitude, 90° - tilt as latitude)
    on a Mollweide map of the sphere: a point per image for a few hundred images, else the
    number of images per equal-area cell."""
    longitude = np.radians((np.asarray(rot_in_degrees, dtype=float) + 180.0) % 360.0 - 180.0)
    latitude = np.radians(90.0 - np.asarray(tilt_in_degrees, dtype=float))
    fig = Figure(figsize=(7.5, 4.2))
    many = longitude.size > 500
    ax = fig.add_axes((0.07, 0.05, 0.74 if many else 0.86, 0.82), projection="mollweide")
    if not many:
        ax.scatter(longitude, latitude, s=16, color="tab:blue", edgecolors="k", linewidths=0.3)
    else:
        lon_edges = np.linspace(-np.pi, np.pi, 49)
        lat_edges = np.arcsin(np.linspace(-1.0, 1.0, 25))  # equal-area bands
        counts, _, _ = np.histogram2d(longitude, latitude, bins=(lon_edges, lat_edges))
        mesh = ax.pcolormesh(lon_edges, lat_edges, counts.T, cmap="viridis", shading="flat")
        fig.colorbar(mesh, cax=fig.add_axes((0.86, 0.2, 0.02, 0.6)), label="images per cell (equal areas)")
    ax.grid(alpha=0.4)
    ax.tick_params(labelsize=7)
    ax.set_title(title or f"viewing directions of {longitude.size} images (longitude rot, latitude 90° - tilt)",
                 fontsize=9, pad=12)  # above the 75° label
    return fig


def plot_refinement_traces(traces: dict) -> Figure:
    """Panels per step: log-posterior, component sigma, median rotation change and median shift
    change of the refinement (`traces.json`'s "refinement"), sampling steps unshaded."""
    panels = [("log_posterior", "log-posterior"), ("sigma_in_angstroms", "component sigma (Å)"),
              ("rotation_change_median_degrees", "median rotation change (°)"),
              ("shift_change_median_angstroms", "median shift change (Å)")]
    panels = [(key, label) for key, label in panels if len(traces.get(key) or []) > 1]
    fig = Figure(figsize=(3.1 * max(len(panels), 1), 3.0))
    label = y_label_inches(traces.get("log_posterior", [])[1:], base=0.35, per_character=0.065)  # 7-point labels
    axes = np.atleast_1d(fig.subplots(1, max(len(panels), 1), gridspec_kw=margins(
        fig, max(len(panels), 1), left=max(label, 0.75), right=0.1, bottom=0.45, top=0.3, wspace=0.75)))
    burn_in = traces.get("sampling_starts_at_step")
    warmup = traces.get("mixture_only_steps")
    for ax, (key, label) in zip(axes, panels):
        values = np.asarray(traces[key], dtype=float)
        steps = np.arange(1, values.size + 1) if "change" in key else np.arange(values.size)
        start = 1 if key == "log_posterior" else 0  # the first state is far below everything else
        ax.plot(steps[start:], values[start:], lw=1, color="k")
        if burn_in:
            ax.axvspan(0, burn_in, color="0.9", zorder=0)
        if warmup:
            ax.axvspan(0, warmup, color="0.8", zorder=0)
        if "change" in key and np.nanmax(values) > 0:
            ax.set_yscale("symlog", linthresh=max(float(np.nanmin(values[values > 0], initial=1e-3)), 1e-3))
            ax.yaxis.set_major_formatter("{x:g}")  # 0.01 rather than mathtext's 10^-2: a third of the time
        ax.set_xlabel("refinement step")
        ax.set_ylabel(label)
        if key == "log_posterior":
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if burn_in:
        fig.suptitle(f"refinement traces (light grey: burn-in, before step {burn_in}; samples averaged after it"
                     + (f"; darker: the first {warmup} steps update the mixture only, poses fixed" if warmup else "")
                     + ")", fontsize=9)
    return fig


def plot_iteration_traces(iterations: list[dict]) -> Figure | None:
    """One small panel per numeric quantity recorded in each iteration (`summary.json`'s
    "iterations" of refine and classify2d: resolution, pose changes, seconds ...)."""
    keys = []
    for record in iterations:
        for key, value in record.items():
            if key not in keys and key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.append(key)
    if not keys or len(iterations) < 1:
        return None
    cols = min(4, len(keys))
    rows = int(np.ceil(len(keys) / cols))
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows + 0.3))
    # tick labels of at most 7 characters at 7 pt (matplotlib writes larger numbers with an exponent)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, gridspec_kw=margins(
        fig, cols, rows, left=0.6, right=0.1, bottom=0.4, top=0.5, wspace=0.6, hspace=0.65))).ravel()
    x = np.array([r.get("iteration", i + 1) for i, r in enumerate(iterations)], dtype=float)
    for ax, key in zip(axes, keys):
        y = np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in iterations], dtype=float)
        ax.plot(x, y, "o-", ms=3, lw=1, color="k")
        ax.set_title(key.replace("_", " "), fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    fig.suptitle("per iteration", fontsize=9)
    return fig


# (view name, axis summed over in [z, y, x], picture axes as indices into (x, y, z))
_PROJECTIONS = (("along z (x right, y up)", 0, (0, 1)), ("along y (x right, z up)", 1, (0, 2)),
                ("along x (y right, z up)", 2, (1, 2)))


def content_window(volume: np.ndarray, level: float, margin: float = 0.2) -> tuple[slice, slice, slice]:
    """The cube of `volume` ([z, y, x] slices) around the voxels above `level`, widened by
    `margin` of its size on each side and kept inside the box (the whole box if none is above)."""
    above = np.argwhere(volume > level)
    if above.size == 0:
        return tuple(slice(0, n) for n in volume.shape)
    low, high = above.min(axis=0), above.max(axis=0) + 1
    size = int(np.ceil((high - low).max() * (1 + 2 * margin)))
    window = []
    for lo, hi, n in zip(low, high, volume.shape):
        width = min(size, n)
        start = int(np.clip((lo + hi) // 2 - width // 2, 0, n - width))
        window.append(slice(start, start + width))
    return tuple(window)


def projection_extent(shape_zyx, voxel_size_in_angstroms: float, origin_in_angstroms) -> np.ndarray:
    """(x, y, z) lower and upper edges in Å of a box whose voxel `i` is centred at
    `origin + i * voxel` (MRC and ChimeraX): `[[x_lo, y_lo, z_lo], [x_hi, y_hi, z_hi]]`."""
    n = np.asarray(shape_zyx[::-1], dtype=float)
    origin = np.asarray(origin_in_angstroms, dtype=float)
    return np.stack([origin - 0.5 * voxel_size_in_angstroms, origin + (n - 0.5) * voxel_size_in_angstroms])


def map_figures(volume: np.ndarray, voxel_size_in_angstroms: float, origin_in_angstroms, level: float,
                atoms_in_angstroms: np.ndarray | None, name: str) -> list[tuple[bytes, str]]:
    """The shaded isosurface of `volume` at `level` from three directions and, with pseudo-atoms
    (`(K, 3)` positions `(x, y, z)` in Å in the map's frame), their centres over the map's
    projections; both cut to the cube around the surface. Returns (PNG, caption) pairs."""
    from cryogmm.report.render import VIEWS, render_isosurface

    window = content_window(volume, level)
    volume = volume[window]
    origin = np.asarray(origin_in_angstroms, dtype=float) + voxel_size_in_angstroms * np.array(
        [window[2].start, window[1].start, window[0].start])
    out = []
    names = [f"{view} ({('x right, y up', 'x right, z up', 'y right, z up')[i]})" for i, view in enumerate(VIEWS)]
    cells = [Cell(picture, name) for name, picture in zip(names, render_isosurface(volume, level, tuple(VIEWS)))]
    width = volume.shape[0] * voxel_size_in_angstroms
    out.append((_views_png(cells, f"{name}: surface at level {level:.4g} (pictures {width:.0f} Å wide)"),
                f"{name}: shaded isosurface at level {level:.4g} (the level chimerax.cxc opens it at; the "
                "voxels above it hold 80% of the map's positive mass), seen along z, y and x"))
    if atoms_in_angstroms is not None and len(atoms_in_angstroms):
        edges = projection_extent(volume.shape, voxel_size_in_angstroms, origin)
        cells = []
        for view, axis, (a, b) in _PROJECTIONS:
            projection = volume.sum(axis=axis)
            # the atoms in pixels of the projection from its lower left corner
            x = (atoms_in_angstroms[:, a] - edges[0, a]) / voxel_size_in_angstroms
            y = (atoms_in_angstroms[:, b] - edges[0, b]) / voxel_size_in_angstroms
            cells.append(Cell(np.sqrt(np.clip(projection, 0, None)), view, points=np.stack([x, y])))  # gamma: faint parts
        dots = float(np.sqrt(np.clip(4000.0 / len(atoms_in_angstroms), 1.0, 12.0)))  # across, in points
        out.append((_views_png(cells, f"{name}: projections with the {len(atoms_in_angstroms)} pseudo-atoms",
                               dot_points=dots),
                    f"Pseudo-atom centres (orange dots) over the projections of {name} along z, y and x"))
    return out


def _views_png(cells: list, heading: str, **options) -> bytes:
    """Three views of a map side by side, 3 in wide each, as PNG."""
    canvas, _ = image_grid(cells, len(cells), heading=heading, dpi=100, cell_inches=(3.3, 3.3), image_inches=3.0,
                           title_points=9, smooth=True, frame=True, **options)
    buffer = io.BytesIO()
    canvas.save(buffer, format="png", **PNG_OPTIONS)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
html{background:#f4f6f9}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f4f6f9}
main{max-width:1200px;margin:0 auto;padding:1.2em 1.6em 3em}
header{background:#1f3b5a;color:#fff;padding:1.1em 1.6em}
header h1{margin:0 0 .3em;font-size:1.45em}
header code{color:#dfe9f5;background:transparent;word-break:break-all}
header .meta{font-size:.9em;color:#c8d6e6}
section{background:#fff;border:1px solid #dfe3ea;border-radius:6px;padding:.8em 1.2em;margin:1em 0}
h2{font-size:1.15em;margin:.2em 0 .6em;color:#1f3b5a}
figure{margin:.6em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #e5e8ee}
figcaption{font-size:.85em;color:#4b5565;max-width:60em}
table{border-collapse:collapse;font-size:.88em;margin:.3em 0}
td,th{border-bottom:1px solid #e8ebf0;padding:.22em .8em .22em 0;text-align:left;vertical-align:top}
th{color:#4b5565;font-weight:600}
td.num{font-variant-numeric:tabular-nums}
tr.chosen td{font-weight:700}
.warnings{background:#fff6e0;border-color:#e7b24a}
.warnings li{margin:.2em 0}
pre{background:#f7f8fa;border:1px solid #e5e8ee;padding:.6em;overflow-x:auto;font-size:.8em;max-height:40em}
details summary{cursor:pointer;color:#1f3b5a;font-weight:600;margin:.3em 0}
nav a{margin-right:1em;font-size:.9em}
.key{display:flex;flex-wrap:wrap;gap:.4em 2.2em;align-items:flex-start}
"""


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:.6g}" if abs(value) >= 1e4 or value == int(value) else f"{value:.4g}"
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        whole = all(isinstance(v, int) for v in numbers)
        if len(numbers) == len(value) and (len(value) > 30 or (len(value) > 8 and not whole)):
            array = np.asarray(numbers, dtype=float)
            return (f"{len(value)} values: median {_format(float(np.nanmedian(array)))}, "
                    f"lowest {_format(float(np.nanmin(array)))}, highest {_format(float(np.nanmax(array)))}")
        if len(value) > 8:
            return f"{len(value)} entries"
        return ("; " if any(isinstance(v, dict) for v in value) else ", ").join(_format(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_format(v)}" for k, v in value.items())[:400]
    return str(value)


def _rows(mapping: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    rows = []
    for key, value in mapping.items():
        label = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 1 and value:
            rows += _rows(value, f"{label} / ", depth + 1)
        else:
            rows.append((label, _format(value)))
    return rows


def _table(rows: list[tuple[str, str]], header: tuple[str, str] | None = None) -> str:
    head = f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def _section(anchor: str, title: str, body: str, css: str = "") -> str:
    return (f'<section id="{anchor}" class="{css}"><h2>{html.escape(title)}</h2>{body}</section>' if body else "")


def run_warnings(run: RunFiles) -> list[str]:
    """The warnings the run logged (run.log's WARNING records, continuation lines joined) and
    any the summary lists under "warnings"."""
    found, current = [], None
    for line in run.log_text.splitlines():
        match = _WARNING_LINE.match(line)
        if match:
            current = match.group(1)
            found.append(current)
        elif current is not None and line and not _LOG_LINE.match(line):
            found[-1] += "\n" + line  # a message of several lines
        else:
            current = None
    listed = run.summary.get("warnings") or run.record.get("warnings")
    if isinstance(listed, list):
        found += [str(v) for v in listed]
    return [w.removeprefix("warning: ") for w in found]


def _header(run: RunFiles) -> str:
    version = run.record.get("cryogmm_version") or run.summary.get("cryogmm_version")
    seed = run.record.get("seed", run.summary.get("seed"))
    line = run.record.get("command_line")
    source = run.file("settings.json") or run.file(f"{run.command}.json") or run.report_path
    when = (datetime.datetime.fromtimestamp(source.stat().st_mtime, datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC") if source.exists() else "")
    command_line = (f"<code>{html.escape(line if isinstance(line, str) else ' '.join(map(str, line)))}</code>"
                    if line else "<em>command line not recorded</em>")
    where = (run.shown_as or run.folder).resolve()
    return (f"<header><h1>cryogmm {html.escape(run.command)}: {html.escape(run.title)}</h1><div>{command_line}</div>"
            f"<div class=meta>{'cryogmm ' + html.escape(str(version)) if version else 'version not recorded'}"
            f"{' · seed ' + html.escape(_format(seed)) if seed is not None else ' · no seed (deterministic)'}"
            f"{' · written ' + when if when else ''} · {html.escape(str(where))}</div></header>")


def _warnings_section(run: RunFiles) -> str:
    warnings = run_warnings(run)
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return _section("warnings", f"Warnings ({len(warnings)})", f"<ul>{items}</ul>", "warnings")


_KEY_NAMES = ("n_images", "n_particles", "box", "pixel_size_in_angstroms", "symmetry", "n_components",
              "sigma_in_angstroms", "chosen_restart", "final_log_posterior", "resolution_in_angstroms",
              "unmasked_resolution_in_angstroms", "bfactor_in_angstroms2", "n_iterations", "converged", "n_classes",
              "n_selected_classes", "n_selected_particles",
              "n_samples_averaged", "projection_cross_correlations", "seconds", "defocus_in_angstroms", "astigmatism_in_angstroms", "voltage_in_kv",
              "spherical_aberration_in_mm", "amplitude_contrast", "thon_rings")


# settings that end a run (a fixed schedule, or the limit of an adaptive one): name -> label
_SCHEDULE = {"n_cycles": "cycles per restart (initial stage)", "refine_mixture_steps": "refinement: mixture-only steps",
             "refine_steps": "refinement: full steps", "refine_burn_in": "refinement: burn-in steps",
             "refine_thin": "refinement: every n-th sample averaged", "steps": "steps", "burn_in": "burn-in steps",
             "thin": "every n-th sample averaged", "max_iterations": "at most iterations",
             "iterations": "iterations"}


def _stopping_rows(run: RunFiles) -> list[tuple[str, str]]:
    """How the run was told to stop (its schedule from the settings) and how it stopped (the
    summary's converged / stop records)."""
    settings = run.record.get("settings") if isinstance(run.record.get("settings"), dict) else {}
    resolved = settings.get("resolved") if isinstance(settings.get("resolved"), dict) else {}
    rows = [(label, _format(source[name])) for name, label in _SCHEDULE.items()
            for source in (resolved or settings,) if isinstance(source.get(name), int) and not isinstance(
                source.get(name), bool)]
    rows += [(k.replace("_", " "), _format(v)) for k, v in run.summary.items()
             if ("stop" in k or k in ("converged", "n_iterations")) and not isinstance(v, (list, dict))]
    return rows


def _summary_section(run: RunFiles) -> str:
    summary = {k: v for k, v in run.summary.items() if k not in ("iterations", "settings", "images", "notes")}
    if not summary:
        return ""
    key = [(k.replace("_", " "), _format(summary[k])) for k in _KEY_NAMES if k in summary]
    timings = summary.get("timings_in_seconds")
    body = ""
    if key:
        body += f"<div class=key>{_table(key)}"
        if isinstance(timings, dict):
            body += _table([(k.replace("_", " "), _format(v)) for k, v in timings.items()], ("timings", "seconds"))
        stopping = _stopping_rows(run)
        if stopping:
            body += _table(stopping, ("stopping", ""))
        body += "</div>"
    for name in ("final_map", "reference", "rotation_errors"):  # final_map: which map map.mrc is, and why
        if isinstance(summary.get(name), dict):
            body += f"<h3>{html.escape(name.replace('_', ' '))}</h3>" + _table(_rows(summary[name]))
    notes = run.summary.get("notes") or (run.summary.get("prepare") if isinstance(run.summary.get("prepare"), list) else None)
    if notes:
        body += "<h3>what was done to the input</h3><ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>"
    rest = {k: v for k, v in summary.items()
            if k not in _KEY_NAMES and k not in ("final_map", "reference", "rotation_errors", "timings_in_seconds",
                                                 "prepare")}
    body += f"<details><summary>everything in the summary</summary>{_table(_rows(rest))}</details>"
    return _section("summary", "Summary", body)


def _figures_for(run: RunFiles, section: str, shown: set) -> str:
    body = ""
    for name, (where, caption) in KNOWN_FIGURES.items():
        path = run.file(name)
        if where == section and path is not None:
            body += _figure(path.read_bytes(), caption)
            shown.add(name)
    return body


def _restarts_section(run: RunFiles, shown: set) -> str:
    values = run.summary.get("restart_log_posteriors")
    body = ""
    if isinstance(values, list) and values:
        seconds = run.summary.get("restart_seconds") or [None] * len(values)
        chosen = run.summary.get("chosen_restart")
        rows = "".join(f"<tr class='{'chosen' if i + 1 == chosen else ''}'><td>{i + 1}</td><td class=num>"
                       f"{_format(lp)}</td><td class=num>{_format(s)}</td><td>{'chosen' if i + 1 == chosen else ''}"
                       f"</td></tr>" for i, (lp, s) in enumerate(zip(values, seconds)))
        body += ("<table><tr><th>restart</th><th>log-posterior</th><th>seconds</th><th></th></tr>"
                 f"{rows}</table><p>Restarts are independent runs of the initial stage from random starts; the one "
                 "with the highest log-posterior is refined.</p>")
    body += _figures_for(run, "restarts", shown)
    return _section("restarts", "Restarts", body)


def _traces_section(run: RunFiles, shown: set) -> str:
    body = ""
    traces = _read_json(run.file("traces.json"))
    if isinstance(traces.get("refinement"), dict):
        body += _figure(_png(plot_refinement_traces(traces["refinement"])),
                        "Refinement: log-posterior, component sigma and how far the poses moved per step (median "
                        "over images)")
    iterations = run.summary.get("iterations")
    if isinstance(iterations, list) and iterations and all(isinstance(r, dict) for r in iterations):
        fig = plot_iteration_traces(iterations)
        if fig is not None:
            body += _figure(_png(fig), "Quantities recorded per iteration")
    body += _figures_for(run, "traces", shown)
    return _section("traces", "Traces", body)


def _fsc_section(run: RunFiles, shown: set) -> str:
    body = _figures_for(run, "fsc", shown)
    if not body:
        return ""
    rows = []
    for source in (run.summary.get("reference") or {}, run.summary, _read_json(run.file("fsc.json"))):
        if isinstance(source, dict):
            rows += [(k.replace("_", " "), _format(v)) for k, v in source.items()
                     if ("fsc" in k or "resolution" in k) and not isinstance(v, (dict, list))]
    table = _table(list(dict.fromkeys(rows))) if rows else ""
    return _section("fsc", "Fourier shell correlation", table + body +
                    "<p>Dashed lines: FSC 0.5 and 0.143; resolutions in Å where the curves cross them.</p>")


def _poses_section(run: RunFiles) -> str:
    from cryogmm.io.star import read_particles

    for name in POSE_FILES:
        path = run.file(name)
        if path is None:
            continue
        try:
            particles = read_particles(path).particles
        except (InputError, OSError, ValueError) as exc:
            logger.warning("warning: %s: not readable (%s); no viewing-direction plot", path, exc)
            return ""
        if not {"rlnAngleRot", "rlnAngleTilt"} <= set(particles.columns):
            continue
        fig = plot_viewing_directions(particles["rlnAngleRot"].to_numpy(float),
                                      particles["rlnAngleTilt"].to_numpy(float),
                                      f"{name}: viewing directions of {len(particles)} images")
        return _section("directions", "Viewing directions", _figure(
            _png(fig), f"Projection directions in {name} on a Mollweide map (longitude rot, latitude 90° - tilt; "
                       "RELION's convention); gaps are views the data lack"))
    return ""


def _solvent_mask(map_path: Path, shape) -> np.ndarray | None:
    """The refinement's soft mask beside `map_path` (mask.mrc, same grid), or None."""
    from cryogmm.io.mrc import read_map

    path = map_path.with_name("mask.mrc")
    if path == map_path or not path.is_file():
        return None
    try:
        mask = read_map(path).data
    except InputError:
        return None
    return mask if mask.shape == tuple(shape) else None


def _map_section(run: RunFiles, shown: set) -> tuple[str, dict | None]:
    from cryogmm.io.mrc import read_map
    from cryogmm.report.render import surface_level

    body = _figures_for(run, "map", shown)
    map_path = run.main_map()
    details = None
    if map_path is not None:
        try:
            volume = read_map(map_path)
        except InputError as exc:
            logger.warning("warning: %s", exc)
            return _section("map", "Map", body), None
        atoms, sigma = None, None
        atoms_path = run.file("pseudoatoms.pdb") if map_path.parent == run.folder else None
        if atoms_path is not None:
            from cryogmm.io.pseudoatoms import read_pseudoatoms
            try:
                mixture = read_pseudoatoms(atoms_path)
                atoms, sigma = mixture.means_in_angstroms, mixture.sigma_in_angstroms
            except InputError as exc:
                logger.warning("warning: %s", exc)
        density, name = volume.data, map_path.relative_to(run.folder).as_posix()
        unsharpened = map_path.with_name("map_unsharpened.mrc")
        if map_path.name == "map.mrc" and unsharpened.is_file():  # refine: the sharpened map's noise hides the shape
            try:
                density, name = read_map(unsharpened).data, unsharpened.relative_to(run.folder).as_posix()
            except InputError as exc:
                logger.warning("warning: %s", exc)
        shown_map = name  # the map drawn, and opened by chimerax.cxc at the same level
        mask = _solvent_mask(map_path, density.shape)
        if mask is not None:  # solvent noise outside the particle would hide it (as RELION's postprocess masks it)
            density, name = density * mask, f"{name} x mask.mrc"
        level = surface_level(density)
        for data, caption in map_figures(density, volume.voxel_size_in_angstroms, volume.origin_in_angstroms,
                                         level, atoms, name):
            body += _figure(data, caption)
        details = {"map": shown_map, "level": level, "atoms": atoms_path.name if atoms is not None else None,
                   "sigma_in_angstroms": sigma}
    return _section("map", "Map", body), details


def _stages_section(run: RunFiles) -> str:
    stages = run.stages()
    if not stages:
        return ""
    def record(key: str, stage: str) -> dict:
        value = run.summary.get(key)
        value = value.get(stage) if isinstance(value, dict) else None
        return value if isinstance(value, dict) else {}

    rows = "".join(f'<tr><td><a href="{html.escape(stage)}/{REPORT_NAME}">{html.escape(stage)}</a></td>'
                   f"<td>{html.escape(_format(record('stages', stage)))}</td>"
                   f"<td>{html.escape(_format(record('figures', stage)))}</td></tr>" for stage in stages)
    return _section("stages", "Stages", "<p>Each stage has its own report (follow the link).</p><table><tr>"
                    f"<th>stage</th><th>how it ran</th><th>key figures</th></tr>{rows}</table>")


def _other_figures(run: RunFiles, shown: set) -> str:
    body = ""
    for name in run.names():
        if name.lower().endswith(".png") and name not in shown and "/" not in name:
            body += _figure((run.folder / f"{run.prefix}{name}").read_bytes(), name)
    return _section("figures", "Other figures", body)


def _settings_section(run: RunFiles) -> str:
    settings = run.record.get("settings")
    if not isinstance(settings, dict):
        return ""
    return _section("settings", "Settings", _table(_rows(settings)))


def _files_section(run: RunFiles) -> str:
    def row(name: str) -> str:
        size = (run.folder / name).stat().st_size
        human = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
        return f'<tr><td><a href="{html.escape(name)}">{html.escape(name)}</a></td><td class=num>{human}</td></tr>'

    rows = ([row(run.stack.name)] if run.stack is not None else []) + [row(run.prefix + n) for n in run.names()]
    return _section("files", "Files", f"<table>{''.join(rows)}</table>") if rows else ""


def _log_section(run: RunFiles, max_lines: int = 400) -> str:
    if not run.log_text:
        return ""
    lines = run.log_text.splitlines()
    shown = lines[-max_lines:]
    note = f" (the last {max_lines} of {len(lines)} lines)" if len(lines) > max_lines else ""
    return _section("log", "run.log", f"<details><summary>the log{note}</summary><pre>"
                    f"{html.escape(chr(10).join(shown))}</pre></details>")


def build_report_html(run: RunFiles) -> tuple[str, dict | None]:
    """The page for `run` and what the map section showed (map name, level, pseudo-atoms), or
    None for a run without a map."""
    shown: set = set()
    map_html, map_details = _map_section(run, shown)
    sections = [
        _warnings_section(run),
        _summary_section(run),
        _stages_section(run),
        _section("inputs", "Inputs and results", _figures_for(run, "inputs", shown)),
        _restarts_section(run, shown),
        _traces_section(run, shown),
        _fsc_section(run, shown),
        _poses_section(run),
        map_html,
        _other_figures(run, shown),
        _settings_section(run),
        _files_section(run),
        _log_section(run),
    ]
    sections = [s for s in sections if s]
    links = "".join(f'<a href="#{a}">{t}</a>' for a, t in re.findall(r'<section id="([^"]+)"[^>]*><h2>([^<]+)</h2>',
                                                                     "".join(sections)))
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>cryogmm {html.escape(run.command)}: {html.escape(run.title)}</title>"
            f"<style>{_CSS}</style></head><body>{_header(run)}<main><nav>{links}</nav>"
            f"{''.join(sections)}</main></body></html>\n")
    return page, map_details


def chimerax_script(details: dict, version: str = "") -> str:
    """ChimeraX commands that open the run's map at the report's level with the pseudo-atoms
    over it (ChimeraX runs a .cxc from the script's folder, so the names are relative)."""
    lines = [f"# ChimeraX: open the map at the level report.html shows{' (cryogmm ' + version + ')' if version else ''}",
             "# run with: chimerax chimerax.cxc (or `open chimerax.cxc` in ChimeraX)",
             f"open {details['map']}",
             f"volume #1 level {details['level']:.6g} style surface transparency 0.5 color #8cb8e6"]
    if details.get("atoms"):
        radius = max(0.5 * float(details.get("sigma_in_angstroms") or 2.0), 1.0)
        lines += [f"open {details['atoms']}", "style #2 sphere", f"size #2 atomRadius {radius:.3g}",
                  "color #2 #e69a2e"]
    lines.append("view")
    return "\n".join(lines) + "\n"


def write_report(path: str | os.PathLike, *, command_line: list[str] | str | None = None,
                 final_folder: str | os.PathLike | None = None) -> Path:
    """Write `report.html` (and `chimerax.cxc` when the run has a map) for the run at `path` (a
    run folder, or the stack of `deconvolve`/`prepare`), each under a temporary name, then
    renamed. `command_line`, if given, is recorded in the run's settings (settings.json, or
    the command's JSON record) first, so that a rebuilt report shows it too. `final_folder`:
    the name the run folder will have, when `path` is its temporary folder. Returns the
    report's path."""
    run = find_run(path)
    run.shown_as = Path(final_folder) if final_folder is not None else None
    if command_line is not None:
        line = command_line if isinstance(command_line, str) else " ".join(_quote(a) for a in command_line)
        run.record["command_line"] = line
        record_path = run.file("settings.json") if not run.prefix else run.file(f"{run.command}.json")
        if record_path is not None:
            write_json(record_path, run.record)
    page, map_details = build_report_html(run)
    with atomic_output(run.report_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    if map_details is not None:
        with atomic_output(run.folder / f"{run.prefix}{CHIMERAX_NAME}") as tmp:
            tmp.write_text(chimerax_script(map_details, str(run.record.get("cryogmm_version", ""))))
    return run.report_path


def _quote(argument: str) -> str:
    import shlex

    return shlex.quote(str(argument))
