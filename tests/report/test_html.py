"""report.html: self-contained (no network), every figure decodes, the sections a run calls for,
warnings at the top, the ChimeraX script; and, marked `browser`, the demo's page in headless
Chromium: no console error, every image decoded, a screenshot that is not blank."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from cryogmm.cli import main
from cryogmm.errors import InputError
from cryogmm.geometry.so3 import random_rotations
from cryogmm.io.mrc import read_map, write_map, write_stack
from cryogmm.io.pseudoatoms import write_pseudoatom_files
from cryogmm.io.results import star_optics
from cryogmm.io.runs import write_json, write_settings
from cryogmm.io.star import format_image_name, poses_to_columns, write_particles
from cryogmm.mixture import GaussianMixture
from cryogmm.report.html import find_run, write_report
from cryogmm.report.maps import plot_central_slices
from cryogmm.report.render import surface_level

N, PIXEL = 24, 4.0
WARNING = "warning: 3 images have a background; masked"


def _volume():
    z, y, x = np.indices((N, N, N)) - N // 2
    return sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 8.0) for cx, cy, cz in
               ((3, 0, 0), (-3, 2, 1), (0, -3, -2)))


def _log_record(level: str, message: str) -> str:
    return f"2026-01-02 03:04:05,678 {level} cryogmm.cli.abinitio: {message}"


@pytest.fixture
def run_folder(tmp_path):
    """A small abinitio-like run folder as the command leaves it."""
    folder = tmp_path / "my run"  # a space: links and paths must cope
    folder.mkdir()
    volume = _volume()
    write_map(folder / "map.mrc", volume, PIXEL)
    plot_central_slices(volume, PIXEL, folder / "map_slices.png")
    means = np.array([[3, 0, 0], [-3, 2, 1], [0, -3, -2]], dtype=float) * PIXEL + (N // 2) * PIXEL
    write_pseudoatom_files(folder / "pseudoatoms", GaussianMixture(means, np.ones(3) / 3, 1.0 / (2 * PIXEL) ** 2))
    rotations = random_rotations(np.random.default_rng(0), 30)
    names = [format_image_name(i, "images.mrcs") for i in range(30)]
    write_particles(folder / "orientations.star", pd.DataFrame({"rlnImageName": names, **poses_to_columns(rotations),
                                                                "rlnOpticsGroup": 1}), star_optics(PIXEL, N))
    write_json(folder / "summary.json", {
        "seed": 7, "n_images": 30, "box": N, "pixel_size_in_angstroms": PIXEL, "symmetry": "C1",
        "restart_log_posteriors": [-120.5, -110.25], "restart_seconds": [1.5, 1.25], "chosen_restart": 2,
        "sigma_in_angstroms": 8.0, "timings_in_seconds": {"initial_stage_seconds": 2.75, "total_seconds": 4.0},
        "projection_cross_correlations": list(np.linspace(0.9, 0.99, 30)),
        "reference": {"fsc_0.5_in_angstroms": 12.5, "fsc_0.143_in_angstroms": 9.75, "cross_correlation": 0.98}})
    steps = 40
    write_json(folder / "traces.json", {"restarts": [{"restart": 1, "log_posterior": list(np.linspace(-200, -120, 20))}],
                                        "refinement": {"log_posterior": list(np.linspace(-150, -100, steps + 1)),
                                                       "sigma_in_angstroms": list(np.linspace(12, 8, steps + 1)),
                                                       "rotation_change_median_degrees": [0.0] * 5 + [0.5] * 35,
                                                       "shift_change_median_angstroms": [0.0] * 5 + [0.2] * 35,
                                                       "mixture_only_steps": 5, "sampling_starts_at_step": 20}})
    write_settings(folder, "abinitio", {"images": "images.mrcs", "symmetry": "C1", "restarts": 2,
                                        "resolved": {"refine_steps": 40, "refine_burn_in": 20}}, 7)
    (folder / "run.log").write_text("\n".join([
        _log_record("INFO", "images.mrcs: 30 images of 24 px at 4 Å/px; seed 7"),
        _log_record("WARNING", WARNING), "  and a second line of it",
        _log_record("INFO", "best restart 2 of 2 <b>not bold</b>")]) + "\n")
    return folder


def _images(page: str) -> list[np.ndarray]:
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    decoded = []
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:60]
        data = base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        decoded.append(matplotlib.image.imread(io.BytesIO(data), format="png"))
    return decoded


def _assert_self_contained(page: str, folder: Path, prefix: str = "") -> None:
    """No address outside the page: sources are data: URIs, links are anchors or the run's files."""
    assert not re.search(r"(?:src|href|url)\s*[=(]\s*[\"']?\s*(?:https?:|//|ftp:)", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    for link in re.findall(r'href="([^"]*)"', page):
        assert link.startswith("#") or (folder / link).is_file(), link
    for anchor in re.findall(r'href="#([^"]*)"', page):
        assert f'id="{anchor}"' in page


def test_page_is_self_contained_with_the_sections_of_the_run(run_folder):
    path = write_report(run_folder, command_line=["cryogmm", "abinitio", "images.mrcs", "--output", "my run"])
    assert path == run_folder / "report.html"
    page = path.read_text(encoding="utf-8")
    _assert_self_contained(page, run_folder)
    images = _images(page)
    # map slices, the isosurface, the pseudo-atoms over the map, the traces, the viewing directions
    assert len(images) == 5 and all(min(im.shape[:2]) > 100 and im.std() > 0.01 for im in images)
    # the run's warnings first; no FSC or input figures in this run, so no such sections
    assert re.findall(r'<section id="([^"]+)"', page) == ["warnings", "summary", "restarts", "traces", "directions",
                                                         "map", "settings", "files", "log"]
    warnings = page[page.index('id="warnings"'):page.index('id="summary"')]
    assert "3 images have a background; masked\n  and a second line of it" in warnings
    assert "cryogmm abinitio images.mrcs --output &#x27;my run&#x27;" in page  # quoted as a shell needs it
    assert "seed 7" in page and "<b>not bold</b>" not in page and "&lt;b&gt;not bold&lt;/b&gt;" in page
    stopping = page[page.index("<th>stopping"):page.index("</table>", page.index("<th>stopping"))]
    assert re.sub("<[^>]+>", "|", stopping).count("|refinement: full steps||40|") == 1  # the schedule
    restarts = page[page.index('id="restarts"'):page.index('id="traces"')]
    assert "-110.2" in restarts and "chosen" in restarts
    level = surface_level(read_map(run_folder / "map.mrc").data)
    assert f"level {level:.4g}" in page
    script = (run_folder / "chimerax.cxc").read_text()
    assert "open map.mrc" in script and f"level {level:.6g} " in script and "open pseudoatoms.pdb" in script
    # the command line is kept in settings.json: `cryogmm report` rebuilds the same header
    assert json.loads((run_folder / "settings.json").read_text())["command_line"].startswith("cryogmm abinitio")
    assert sorted(p.name for p in run_folder.iterdir() if p.name.startswith(".")) == []  # no temporary files


def test_cryogmm_report_rebuilds_the_page(run_folder, capsys):
    write_report(run_folder, command_line="cryogmm abinitio images.mrcs --output run")
    (run_folder / "report.html").unlink()
    assert main(["report", str(run_folder)]) == 0
    page = (run_folder / "report.html").read_text(encoding="utf-8")
    assert "cryogmm abinitio images.mrcs --output run" in page
    assert str(run_folder / "report.html") in capsys.readouterr().out


def test_a_run_without_map_or_warnings_has_no_such_sections(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    write_json(folder / "summary.json", {"seed": 1, "n_images": 3})
    write_settings(folder, "orientations", {"images": "x.mrcs"}, 1)
    page = write_report(folder).read_text()
    assert 'id="warnings"' not in page and 'id="map"' not in page and "<img" not in page
    assert "command line not recorded" in page and not (folder / "chimerax.cxc").exists()


def test_a_refined_map_is_drawn_unsharpened_and_masked(tmp_path):
    """refine's map.mrc is sharpened: its amplified noise, spread over the box, would set the level
    and hide the particle; the page draws map_unsharpened.mrc times mask.mrc, and chimerax.cxc opens
    that map at that level."""
    folder = tmp_path / "refine"
    folder.mkdir()
    z, y, x = np.indices((32, 32, 32)) - 16
    particle = np.exp(-(x**2 + y**2 + z**2) / 20.0)
    noise = np.random.default_rng(0).standard_normal((32, 32, 32))
    write_map(folder / "map.mrc", particle + 0.5 * noise, 3.0)
    write_map(folder / "map_unsharpened.mrc", particle + 0.01 * noise, 3.0)
    mask = (x**2 + y**2 + z**2 < 64).astype(np.float32)
    write_map(folder / "mask.mrc", mask, 3.0)
    write_json(folder / "summary.json", {"seed": 1, "resolution_in_angstroms": 7.0})
    write_settings(folder, "refine", {"star": "p.star"}, 1)
    page = write_report(folder).read_text()
    assert "map_unsharpened.mrc x mask.mrc: shaded isosurface at level" in page
    script = (folder / "chimerax.cxc").read_text()
    level = float(re.search(r"level ([0-9.eE+-]+)", script).group(1))
    assert "open map_unsharpened.mrc" in script
    # the level is that of the masked unsharpened map: the surface is the particle alone, while the
    # sharpened map at its own level would show noise all over the box
    from cryogmm.report.render import surface_level
    assert level == pytest.approx(surface_level((particle + 0.01 * noise) * mask), rel=1e-6)
    outside = x**2 + y**2 + z**2 > 64
    assert not np.any(((particle + 0.01 * noise) * mask > level) & outside)
    sharpened = particle + 0.5 * noise
    assert np.count_nonzero((sharpened > surface_level(sharpened)) & outside) > 1000


def test_not_a_run_is_refused_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no settings.json"):
        find_run(tmp_path / "empty")
    with pytest.raises(InputError, match="no such folder"):
        find_run(tmp_path / "missing")
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_prepare_writes_a_report_beside_its_stack(tmp_path):
    y, x = np.indices((32, 32)) - 16
    images = np.stack([np.exp(-((x - dx) ** 2 + y**2) / 10.0) + 1.0 for dx in (-2, 0, 3)])
    write_stack(tmp_path / "in.mrcs", images, 2.0)
    assert main(["prepare", str(tmp_path / "in.mrcs"), "--output", str(tmp_path / "out.mrcs")]) == 0
    page = (tmp_path / "out_report.html").read_text(encoding="utf-8")
    _assert_self_contained(page, tmp_path)
    assert "cryogmm prepare: out.mrcs" in page and len(_images(page)) == 1
    assert f"cryogmm prepare {tmp_path / 'in.mrcs'} --output" in page
    assert json.loads((tmp_path / "out_prepare.json").read_text())["command_line"].startswith("cryogmm prepare")


def test_a_failing_report_keeps_the_results_and_says_how_to_rebuild(run_folder, monkeypatch, caplog):
    import cryogmm.report.html as report_html
    from cryogmm.cli.report import write_run_report

    def broken(run):
        raise RuntimeError("no picture")

    monkeypatch.setattr(report_html, "build_report_html", broken)
    with caplog.at_level(logging.WARNING, logger="cryogmm"):
        write_run_report(run_folder, type("Args", (), {"output": run_folder})())
    assert "report.html not written (RuntimeError: no picture)" in caplog.text and "cryogmm report" in caplog.text
    assert not (run_folder / "report.html").exists() and (run_folder / "map.mrc").exists()


# ------------------------------------------------------------------------------------------
# in a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
# added to a copy of the page: records load errors of any element (a broken image, a blocked
# resource) and, once loaded, how many images decoded; the report itself has no script
PROBE_HEAD = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push("
              "String(e.message||(e.target&&(e.target.src||e.target.href))||e.type))},true);</script>")
PROBE_BODY = ("<script>window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);"
              "var bad=im.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).length;"
              "var d=document.createElement('pre');d.id='probe';d.textContent='PROBE images='+im.length+' broken='+"
              "bad+' errors='+window.__errors.length+' '+window.__errors.join('|');document.body.appendChild(d);});"
              "</script>")


def browser_check(page_path: Path, work: Path) -> dict:
    """Load `page_path` in headless Chromium: the console messages it printed, what the probe saw
    (images, broken images, load errors) and a screenshot of the top 1280 x 2400 pixels."""
    probed = work / "probed.html"
    text = page_path.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_BODY + "</body>", 1),
                      encoding="utf-8")
    chromium = shutil.which("chromium")
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}"]
    dump = subprocess.run([*common, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    probe = re.search(r"PROBE images=(\d+) broken=(\d+) errors=(\d+) ?(.*)", dump.stdout)
    screenshot = work / "screenshot.png"
    shot = subprocess.run([*common, "--window-size=1280,2400", f"--screenshot={screenshot}", page_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in (dump.stderr + shot.stderr).splitlines() if ":CONSOLE" in line]
    return {"console": console, "probe": probe.groups() if probe else None, "screenshot": screenshot,
            "returncodes": (dump.returncode, shot.returncode)}


@pytest.mark.browser
def test_the_checks_catch_a_broken_page(tmp_path):
    """The browser check fails a page with a console error, an image that does not decode and
    a resource it cannot load (so that a pass below means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head></head><body><img src='data:image/png;base64,AAAA'>"
                   "<img src='http://127.0.0.1:9/x.png'><script>console.error('boom')</script></body></html>")
    result = browser_check(bad, tmp_path)
    assert any('"boom"' in line for line in result["console"]), result
    images, broken, errors, _ = result["probe"]
    assert (int(images), int(broken)) == (2, 2) and int(errors) >= 2


@pytest.mark.browser
def test_demo_report_in_chromium(tmp_path, small_demo):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--quiet"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    _assert_self_contained(page, out)
    expected = len(_images(page))
    assert expected >= 8  # projections, restarts, traces, FSC, directions, slices, isosurface, pseudo-atoms
    result = browser_check(out / "report.html", tmp_path)
    assert result["returncodes"] == (0, 0), result
    assert result["console"] == [], result["console"]
    assert result["probe"] is not None, "the page did not finish loading"
    images, broken, errors, messages = result["probe"]
    assert (int(images), int(broken), int(errors)) == (expected, 0, 0), messages
    shot = matplotlib.image.imread(result["screenshot"])
    assert shot.shape[:2] == (2400, 1280)
    grey = shot[..., :3].mean(axis=-1)
    # not blank: the header bar is dark, the figures add many grey levels
    assert (grey < 0.3).mean() > 0.02 and (grey > 0.9).mean() > 0.3
    assert np.unique(np.round(grey, 2)).size > 50


def test_map_pictures_use_the_mrc_voxel_centres_and_a_cube_around_the_surface():
    from cryogmm.report.html import content_window, projection_extent

    # voxel i centred at origin + i * voxel (MRC, ChimeraX): box (nz, ny, nx) = (4, 3, 2) of 2 Å
    np.testing.assert_allclose(projection_extent((4, 3, 2), 2.0, (10.0, 20.0, 30.0)),
                               [[9.0, 19.0, 29.0], [13.0, 25.0, 37.0]])
    volume = np.zeros((40, 40, 40))
    volume[5:11, 20:24, 30:33] = 1.0  # 6 x 4 x 3 voxels above 0.5
    window = content_window(volume, 0.5, margin=0.25)
    assert [w.stop - w.start for w in window] == [9, 9, 9]  # the largest extent, 6, widened by 2 x 25%
    assert all(w.start >= 0 and w.stop <= 40 for w in window)
    cut = volume[window]
    assert cut.sum() == volume.sum()  # everything above the level is inside
    assert [w.start for w in window] == [4, 18, 27]  # centred: (5 + 11) // 2 - 9 // 2, (20 + 24) // 2 - 4 ...
    assert content_window(np.zeros((3, 3, 3)), 0.5) == (slice(0, 3),) * 3
