"""`cryogmm run` end to end on simulated phantom particles (12 views, 24 px): classify2d ->
selection -> abinitio --prepare -> refine, each stage in its own folder; the final map against the
truth; an interruption in the last stage and --resume; refusals of bad options."""

from __future__ import annotations

import json

import pytest

from cryogmm.cli import main
from cryogmm.cli import run as run_cli
from cryogmm.io.star import read_particles

# a smaller abinitio than the default (this test is about the path, not abinitio's own settings)
FAST_ABINITIO = ["--restarts", "2", "--jobs", "1", "--components-initial", "50", "--components", "300",
                 "--rotations", "500", "--cycles", "6", "--refine-steps", "100", "--burn-in", "50"]
RUN = ["--classes", "12", "--iterations-2d", "8", "--particle-diameter", "110", "--max-iterations", "6", "--seed", "1",
       "--quiet"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, simulate_phantom_views):
    """12 views x 25 particles of the phantom: 24 px of 5 Å, 12 Å density and reference, SNR 0.5, CTF."""
    return simulate_phantom_views(tmp_path_factory.mktemp("run_data"), views=12, per_view=25, seed=4,
                                  extra=("--reference-resolution", "12"))


@pytest.fixture
def fast_abinitio(monkeypatch):
    stage_argv = run_cli._stage_argv

    def patched(args, stage, seed, n_classes):
        argv = stage_argv(args, stage, seed, n_classes)
        return argv + FAST_ABINITIO if stage == "2_abinitio" else argv

    monkeypatch.setattr(run_cli, "_stage_argv", patched)


def test_run_goes_from_particles_to_the_structure_and_resumes_stage_by_stage(simulated, tmp_path, monkeypatch,
                                                                             capsys, fast_abinitio):
    out = tmp_path / "path run"  # a space in the path
    argv = ["run", str(simulated / "particles.star"), *RUN, "--reference", str(simulated / "reference.mrc"),
            "--output", str(out)]
    with monkeypatch.context() as patch:  # Ctrl-C in the refinement
        def interrupted(args):
            raise KeyboardInterrupt("the checkpoints are kept")
        from cryogmm.cli import refine
        patch.setattr(refine, "main", interrupted)
        assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "in stage 3_refine" in err[-1] and "--resume" in err[-1]
    assert (out / "1_classify2d" / "summary.json").is_file() and (out / "2_abinitio" / "summary.json").is_file()
    assert not (out / "3_refine").exists() and not (out / "summary.json").exists()
    assert main(argv) == 2  # the folder exists: --resume or --force
    assert "--force" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [summary["stages"][s]["status"] for s in run_cli.STAGES] == ["kept from before", "kept from before", "ran"]
    # the selection fed both later stages
    kept = summary["figures"]["1_classify2d"]["n_kept_particles"]
    assert len(read_particles(out / "3_refine" / "particles.star").particles) == kept >= 250
    abinitio = json.loads((out / "2_abinitio" / "settings.json").read_text())["settings"]
    assert abinitio["images"].endswith("selected_data.star") and abinitio["prepare"]
    # the structure: the refined map against the 12 Å truth after alignment (Nyquist 10 Å; measured
    # 15.8-16.0 Å; a wrong initial model or wrong poses leave FSC 0.5 beyond 25 Å)
    assert summary["reference"]["fsc_0.5_in_angstroms"] <= 18.0, summary["reference"]
    assert summary["figures"]["3_refine"]["n_iterations"] >= 2
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 1 and settings["command"] == "run" and settings["settings"]["classes"] == 12
    # one page for the run linking each stage's own page, the final map drawn, ChimeraX opening it
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(f'href="{stage}/report.html"' in page and (out / stage / "report.html").is_file()
               for stage in run_cli.STAGES)
    assert "3_refine/map_unsharpened.mrc x mask.mrc: shaded isosurface" in page
    assert "open 3_refine/map_unsharpened.mrc" in (out / "chimerax.cxc").read_text()
    assert "cryogmm refine " in (out / "3_refine" / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("extra, fragment", [
    (["--select", "size=>3"], "--select 'size=>3': not a rule"),
    (["--classes", "0"], "--classes 0"),
    (["--classes", "5000"], "--classes 5000: more than the 300 particles"),
    (["--symmetry", "X7"], "--symmetry X7"),
    (["--initial-lowpass", "-4"], "--initial-lowpass -4"),
    (["--resume"], "--resume"),
])
def test_bad_options_are_refused_with_one_line(simulated, tmp_path, capsys, extra, fragment):
    out = tmp_path / "out"
    assert main(["run", str(simulated / "particles.star"), *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_resume_with_other_options_is_refused(simulated, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    from cryogmm.io.runs import write_settings

    write_settings(out, "run", {"star": str(simulated / "particles.star"), "classes": 7}, 3)
    assert main(["run", str(simulated / "particles.star"), "--classes", "12", "--seed", "3", "--resume",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--classes" in err and "differ from the interrupted run's" in err
