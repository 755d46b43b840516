"""The bad-input corpus (issue 13): what a new user gives every command by mistake.

Each case runs the command in-process and asserts the exit status, exactly one line on stderr
that names the file or option, no traceback, and nothing left behind: the folders of the inputs
and of the output hold what they held before (no output, no temporary or half-written file).
The refusals that per-command test files already cover (abinitio's non-square, too few, all-zero,
negative and NaN images, its unknown symmetry, missing file, folder, STAR pixel size and
unresolved stack; simulate-map's options; ...) are not repeated here.
Then the CLI's last line of defence: a bug, a MemoryError and an interrupt that numba reports as
a SystemError each end with one line, and a bug keeps the run's log with the traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.io.mrc import read_map, write_map, write_stack
from cryogmm.io.pseudoatoms import write_pseudoatoms_pdb
from cryogmm.io.star import read_particles, write_particles
from cryogmm.mixture import GaussianMixture

BOX, PIXEL = 24, 3.0
ATOMS = [  # element, x, y, z in Å: an asymmetric cluster
    ("C", 40.0, 12.0, -7.0), ("N", 48.0, 12.0, -7.0), ("O", 40.0, 17.0, -7.0),
    ("S", 40.0, 12.0, -13.0), ("C", 36.0, 9.0, -5.0), ("P", 43.0, 15.0, -4.0),
]


def _atom_lines():
    return [f"ATOM  {i:5d}  {e:<3s} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{20.0:6.2f}          {e:>2s}"
            for i, (e, x, y, z) in enumerate(ATOMS, start=1)]


def _write_mrc_bytes(path: Path, header_changes: dict, truncate: int | None = None, source: Path | None = None):
    raw = bytearray(source.read_bytes())
    for offset, value in header_changes.items():
        raw[offset:offset + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw[:truncate] if truncate else raw))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of good and bad inputs, made once (nothing in it is changed by the cases)."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "tiny.pdb").write_text("\n".join(_atom_lines() + ["END"]) + "\n")
    sim = folder / "sim"
    assert main(["simulate-images", str(folder / "tiny.pdb"), "--number", "6", "--box", str(BOX), "--pixel-size",
                 str(PIXEL), "--resolution", "12", "--defocus-range", "1", "2", "--seed", "1",
                 "--output", str(sim)]) == 0
    density = read_map(sim / "reference.mrc").data.astype(np.float64)
    views = [density.sum(axis) for axis in range(3)]
    positive = np.stack(views + [v.T for v in views]) + 1e-3  # six views of the model, all positive
    write_stack(folder / "stack.mrcs", positive, PIXEL)
    write_stack(folder / "one.mrcs", positive[:1], PIXEL)
    write_stack(folder / "zeros.mrcs", np.zeros((4, BOX, BOX)), PIXEL)
    write_stack(folder / "negative.mrcs", positive - positive.max(), PIXEL)
    write_stack(folder / "oblong.mrcs", positive[:, :, :-4], PIXEL)
    volume = read_map(sim / "reference.mrc")
    write_map(folder / "map.mrc", volume.data, volume.voxel_size_in_angstroms)
    write_map(folder / "map2.mrc", np.roll(volume.data, 1, axis=0), volume.voxel_size_in_angstroms)
    nan = volume.data.copy()
    nan[3, 4, 5] = np.nan
    inf = volume.data.copy()
    inf[5, 4, 3] = np.inf
    with pytest.warns(RuntimeWarning):  # mrcfile warns when the header statistics are not finite
        write_map(folder / "nan.mrc", nan, PIXEL)
        write_map(folder / "inf.mrc", inf, PIXEL)
    (folder / "empty.mrcs").write_bytes(b"")
    _write_mrc_bytes(folder / "truncated.mrc", {}, truncate=1024 + 4 * BOX**3 // 2, source=folder / "map.mrc")
    rng = np.random.default_rng(0)
    (folder / "corrupt.mrc").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _write_mrc_bytes(folder / "badmode.mrc", {12: 99}, source=folder / "map.mrc")  # MODE 99
    _write_mrc_bytes(folder / "badsize.mrcs", {0: -24}, source=folder / "stack.mrcs")  # NX -24
    (folder / "text.mrcs").write_text("these are my particles\n" * 100)
    # STAR files derived from the simulated particles
    table = read_particles(sim / "particles.star")
    particles = table.particles.copy()
    particles["rlnImageName"] = [f"{name.split('@')[0]}@sim/{name.split('@')[1].split('/')[-1]}"
                                 for name in particles["rlnImageName"]]
    optics = table.optics.iloc[0].to_dict()
    particles = particles.drop(columns=[c for c in optics if c in particles.columns and c != "rlnOpticsGroup"])

    def star(name, frame, optics_values=None):
        write_particles(folder / name, frame, optics_values or optics)

    star("good.star", particles)
    text = (folder / "good.star").read_text()
    assert text.count("_rlnImageName ") == 1
    (folder / "no_image_name.star").write_text(text.replace("_rlnImageName ", "_rlnMicrographName "))
    star("no_angles.star", particles.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]))
    star("missing_stack.star", particles.assign(rlnImageName=[f"{i}@sim/gone.mrcs" for i in range(1, 7)]))
    star("out_of_range.star", particles.assign(rlnImageName=[f"{i * 10}@sim/images.mrcs" for i in range(1, 7)]))
    star("points_at_a_map.star", particles.assign(rlnImageName=[f"{i}@map.mrc" for i in range(1, 7)]))
    star("partial_ctf.star", particles.drop(columns=["rlnDefocusV"]))
    star("zero_defocus.star", particles.assign(rlnDefocusU=0.0))
    star("other_pixel.star", particles, {**optics, "rlnImagePixelSize": 2 * PIXEL})
    (folder / "garbage.star").write_text("this is not a STAR file\n\x00\x01\x02")
    # atomic and pseudo-atom models
    lines = _atom_lines()
    (folder / "binary.pdb").write_text("\n".join(lines[:3] + ["\x00\x01\x02garbage"] + lines[3:] + ["END"]) + "\n")
    bad = lines[:4] + [lines[4][:33] + "x" + lines[4][34:]] + lines[5:]
    (folder / "bad_coordinate.pdb").write_text("\n".join(bad + ["END"]) + "\n")
    (folder / "no_atoms.pdb").write_text("REMARK nothing here\nEND\n")
    mixture = GaussianMixture(np.array([[0.0, 0, 0], [12, 0, 0], [0, 9, 0], [0, 0, 6]]), np.full(4, 0.25), 0.05)
    write_pseudoatoms_pdb(folder / "pseudoatoms.pdb", mixture)
    text = (folder / "pseudoatoms.pdb").read_text().splitlines()
    atom_rows = [i for i, line in enumerate(text) if line.startswith(("ATOM", "HETATM"))]
    text[atom_rows[2]] = text[atom_rows[2]][:30] + "   12.x0" + text[atom_rows[2]][38:]
    (folder / "corrupt_pseudoatoms.pdb").write_text("\n".join(text) + "\n")
    (folder / "a file").write_text("a file, not a folder\n")
    (folder / "existing_run").mkdir()
    (folder / "existing_run" / "keep.txt").write_text("keep me\n")
    (folder / "existing.mrcs").write_bytes((folder / "stack.mrcs").read_bytes())
    return folder


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


ORIENT = ["--counts", "200", "--rotations", "20", "--steps", "2", "--burn-in", "0", "--quiet"]
FIT = ["--components", "5", "--counts", "200", "--steps", "4", "--burn-in", "2", "--thin", "1", "--quiet"]
RECON = ["--components", "5", "--counts", "200", "--steps", "4", "--burn-in", "2", "--thin", "1", "--quiet"]
ABINITIO = ["--restarts", "1", "--jobs", "1", "--components-initial", "5", "--components", "10", "--initial-box", "16",
            "--initial-counts", "100", "--counts", "200", "--rotations", "20", "--cycles", "1", "--refine-steps", "3",
            "--burn-in", "1", "--thin", "1", "--quiet"]
SIMULATE = ["--resolution", "12", "--pixel-size", "3"]
IMAGES = ["--box", "24", "--pixel-size", "3", "--resolution", "12"]

# (id, argv with {in} = the inputs folder and {out} = an empty output folder, exit status, text the line holds)
CASES = [
    # MRC files: missing, empty, truncated, corrupt, wrong header, text, NaN and Inf
    ("orientations-missing", ["orientations", "{in}/gone.mrcs", "--model", "{in}/pseudoatoms.pdb", "-o", "{out}/r"]
     + ORIENT, 2, "gone.mrcs"),
    ("prepare-empty-file", ["prepare", "{in}/empty.mrcs", "-o", "{out}/p.mrcs"], 2, "empty.mrcs"),
    ("fit-map-truncated", ["fit-map", "{in}/truncated.mrc", "-o", "{out}/r"] + FIT, 2, "truncated.mrc"),
    ("fsc-corrupt", ["fsc", "{in}/corrupt.mrc", "{in}/map.mrc"], 2, "corrupt.mrc"),
    ("fit-map-bad-mode", ["fit-map", "{in}/badmode.mrc", "-o", "{out}/r"] + FIT, 2, "badmode.mrc"),
    ("prepare-bad-size", ["prepare", "{in}/badsize.mrcs", "-o", "{out}/p.mrcs"], 2, "badsize.mrcs"),
    ("orientations-text-as-mrcs", ["orientations", "{in}/text.mrcs", "--model", "{in}/pseudoatoms.pdb",
                                   "-o", "{out}/r"] + ORIENT, 2, "text.mrcs"),
    ("fit-map-nan", ["fit-map", "{in}/nan.mrc", "-o", "{out}/r"] + FIT, 2, "nan.mrc: 1 values are NaN"),
    ("fsc-inf", ["fsc", "{in}/map.mrc", "{in}/inf.mrc"], 2, "inf.mrc: 1 values are NaN or infinite"),
    # images: all zero, negative, volume for stack and back, one image, not square
    ("orientations-all-zero", ["orientations", "{in}/zeros.mrcs", "--model", "{in}/pseudoatoms.pdb",
                               "-o", "{out}/r"] + ORIENT, 2, "zeros.mrcs"),
    ("orientations-negative", ["orientations", "{in}/negative.mrcs", "--model", "{in}/pseudoatoms.pdb",
                               "-o", "{out}/r"] + ORIENT, 2, "negative.mrcs"),
    ("abinitio-volume", ["abinitio", "{in}/map.mrc", "-o", "{out}/r"] + ABINITIO, 2, "map.mrc: a 3D map"),
    ("orientations-volume", ["orientations", "{in}/map.mrc", "--model", "{in}/pseudoatoms.pdb", "-o", "{out}/r"]
     + ORIENT, 2, "map.mrc: a 3D map"),
    ("prepare-volume", ["prepare", "{in}/map.mrc", "-o", "{out}/p.mrcs"], 2, "map.mrc: a 3D map"),
    ("fit-map-stack", ["fit-map", "{in}/stack.mrcs", "-o", "{out}/r"] + FIT, 2, "stack.mrcs: an image stack"),
    ("fsc-stack", ["fsc", "{in}/map.mrc", "{in}/stack.mrcs"], 2, "stack.mrcs: an image stack"),
    ("orientations-one-image", ["orientations", "{in}/one.mrcs", "--model", "{in}/pseudoatoms.pdb", "-o", "{out}/r"]
     + ORIENT, 2, "one.mrcs"),
    ("abinitio-one-image", ["abinitio", "{in}/one.mrcs", "-o", "{out}/r"] + ABINITIO, 2, "one.mrcs: 1 image"),
    ("orientations-not-square", ["orientations", "{in}/oblong.mrcs", "--model", "{in}/pseudoatoms.pdb",
                                 "-o", "{out}/r"] + ORIENT, 2, "square"),
    ("prepare-not-square", ["prepare", "{in}/oblong.mrcs", "-o", "{out}/p.mrcs"], 2, "oblong.mrcs"),
    # STAR files
    ("reconstruct-no-image-name", ["reconstruct", "{in}/no_image_name.star", "-o", "{out}/r"] + RECON, 2,
     "rlnImageName"),
    ("reconstruct-no-angles", ["reconstruct", "{in}/no_angles.star", "-o", "{out}/r"] + RECON, 2, "rlnAngle"),
    ("ctf-missing-stack", ["ctf", "{in}/missing_stack.star", "-o", "{out}/r"], 2, "gone.mrcs"),
    ("deconvolve-index-out-of-range", ["deconvolve", "{in}/out_of_range.star", "-o", "{out}/d.mrcs"], 2,
     "out of range"),
    ("reconstruct-pixel-size-disagrees", ["reconstruct", "{in}/other_pixel.star", "-o", "{out}/r"] + RECON, 2,
     "other_pixel.star"),
    ("reconstruct-star-points-at-a-map", ["reconstruct", "{in}/points_at_a_map.star", "-o", "{out}/r"] + RECON,
     2, "map.mrc is a 3D map"),
    ("ctf-partial-ctf", ["ctf", "{in}/partial_ctf.star", "-o", "{out}/r"], 2, "rlnDefocusV"),
    ("deconvolve-zero-defocus", ["deconvolve", "{in}/zero_defocus.star", "-o", "{out}/d.mrcs"], 2, "rlnDefocusU"),
    ("refine-not-a-star", ["refine", "{in}/garbage.star", "--reference", "{in}/map.mrc", "-o", "{out}/r"], 2,
     "garbage.star"),
    ("classify2d-not-a-star", ["classify2d", "{in}/garbage.star", "--classes", "2", "-o", "{out}/r"], 2,
     "garbage.star"),
    ("run-missing-star", ["run", "{in}/gone.star", "-o", "{out}/r"], 2, "gone.star"),
    ("run-not-a-star", ["run", "{in}/garbage.star", "-o", "{out}/r"], 2, "garbage.star"),
    ("report-missing-folder", ["report", "{in}/no_such_run"], 2, "no_such_run"),
    ("report-a-stack-not-a-run", ["report", "{in}/stack.mrcs"], 2, "stack.mrcs"),
    # numeric options at 0, negative and absurdly large
    ("fit-map-components-0", ["fit-map", "{in}/map.mrc", "-o", "{out}/r"] + FIT + ["--components", "0"], 2,
     "--components"),
    ("fit-map-components-negative", ["fit-map", "{in}/map.mrc", "-o", "{out}/r"] + FIT + ["--components", "-5"], 2,
     "--components"),
    ("fit-map-components-huge", ["fit-map", "{in}/map.mrc", "-o", "{out}/r"] + FIT + ["--components", "1000000000"],
     2, "--components 1000000000"),
    ("orientations-rotations-0", ["orientations", "{in}/stack.mrcs", "--model", "{in}/pseudoatoms.pdb",
                                  "-o", "{out}/r"] + ORIENT + ["--rotations", "0"], 2, "--rotations"),
    ("orientations-rotations-huge", ["orientations", "{in}/stack.mrcs", "--model", "{in}/pseudoatoms.pdb",
                                     "-o", "{out}/r"] + ORIENT + ["--rotations", "1000000000000"], 2,
     "--rotations 1000000000000"),
    ("reconstruct-components-huge", ["reconstruct", "{in}/good.star", "-o", "{out}/r"] + RECON
     + ["--components", "1000000000"], 2, "--components 1000000000"),
    ("fit-map-counts-huge", ["fit-map", "{in}/map.mrc", "-o", "{out}/r"] + FIT + ["--counts", "2000000000"], 2,
     "--counts 2e+09"),
    ("reconstruct-counts-negative", ["reconstruct", "{in}/good.star", "-o", "{out}/r"] + RECON + ["--counts", "-1"],
     2, "--counts"),
    ("simulate-map-box-huge", ["simulate-map", "{in}/tiny.pdb", "-o", "{out}/m.mrc", "--box", "100000"] + SIMULATE,
     2, "--box 100000"),
    ("simulate-images-number-huge", ["simulate-images", "{in}/tiny.pdb", "-o", "{out}/r", "--number", "1000000000"]
     + IMAGES, 2, "--number 1000000000"),
    ("simulate-images-number-0", ["simulate-images", "{in}/tiny.pdb", "-o", "{out}/r", "--number", "0"] + IMAGES, 2,
     "--number 0"),
    ("abinitio-components-huge", ["abinitio", "{in}/stack.mrcs", "-o", "{out}/r"] + ABINITIO
     + ["--components", "1000000000"], 2, "--components 1000000000"),
    ("abinitio-initial-box-0", ["abinitio", "{in}/stack.mrcs", "-o", "{out}/r"] + ABINITIO + ["--initial-box", "0"],
     2, "--initial-box"),
    ("run-classes-0", ["run", "{in}/good.star", "--classes", "0", "-o", "{out}/r"], 2, "--classes"),
    ("classify2d-classes-0", ["classify2d", "{in}/good.star", "--classes", "0", "-o", "{out}/r"], 2, "--classes"),
    ("refine-iterations-negative", ["refine", "{in}/good.star", "--reference", "{in}/map.mrc", "--max-iterations",
                                    "-2", "-o", "{out}/r"], 2, "--max-iterations"),
    ("prepare-radius-negative", ["prepare", "{in}/stack.mrcs", "--mask", "radius", "--radius", "-3",
                                 "-o", "{out}/p.mrcs"], 2, "--radius"),
    ("deconvolve-groups-0", ["deconvolve", "{in}/good.star", "--groups", "0", "-o", "{out}/d.mrcs"], 2, "--groups"),
    ("ctf-max-images-0", ["ctf", "{in}/good.star", "--max-images", "0", "-o", "{out}/r"], 2, "--max-images"),
    ("fsc-pixel-size-0", ["fsc", "{in}/map.mrc", "{in}/map2.mrc", "--pixel-size", "0"], 2, "--pixel-size"),
    # unknown symmetry
    ("fit-map-symmetry", ["fit-map", "{in}/map.mrc", "-o", "{out}/r", "--symmetry", "Q5"] + FIT, 2, "Q5"),
    ("reconstruct-symmetry", ["reconstruct", "{in}/good.star", "-o", "{out}/r", "--symmetry", "D0"] + RECON, 2, "D0"),
    # existing output without --force
    ("orientations-existing-output", ["orientations", "{in}/stack.mrcs", "--model", "{in}/pseudoatoms.pdb",
                                      "-o", "{in}/existing_run"] + ORIENT, 2, "--force"),
    ("prepare-existing-output", ["prepare", "{in}/good.star", "-o", "{in}/existing.mrcs"], 2, "--force"),
    # output folders that cannot be written
    ("fit-map-output-under-a-file", ["fit-map", "{in}/map.mrc", "-o", "{in}/a file/r"] + FIT, 2, "a file"),
    ("orientations-output-in-proc", ["orientations", "{in}/stack.mrcs", "--model", "{in}/pseudoatoms.pdb",
                                     "-o", "/proc/cryogmm-run"] + ORIENT, 2, "/proc"),
    ("deconvolve-output-in-proc", ["deconvolve", "{in}/good.star", "-o", "/proc/deconvolved.mrcs"], 2, "/proc"),
    ("simulate-images-output-under-a-file", ["simulate-images", "{in}/tiny.pdb", "-o", "{in}/a file/sim"] + IMAGES,
     2, "a file"),
    ("fsc-plot-in-proc", ["fsc", "{in}/map.mrc", "{in}/map2.mrc", "--plot", "/proc/fsc.png"], 2, "/proc"),
    ("abinitio-output-in-proc", ["abinitio", "{in}/stack.mrcs", "-o", "/proc/cryogmm-run"] + ABINITIO, 2, "/proc"),
    # atomic and pseudo-atom models that gemmi reads only in part, or not at all
    ("simulate-map-binary-pdb", ["simulate-map", "{in}/binary.pdb", "-o", "{out}/m.mrc"] + SIMULATE, 2,
     "binary.pdb: line 4"),
    ("simulate-images-bad-coordinate", ["simulate-images", "{in}/bad_coordinate.pdb", "-o", "{out}/r"] + IMAGES, 2,
     "bad_coordinate.pdb: line 5"),
    ("simulate-map-no-atoms", ["simulate-map", "{in}/no_atoms.pdb", "-o", "{out}/m.mrc"] + SIMULATE, 2,
     "no_atoms.pdb"),
    ("orientations-corrupt-pseudoatoms", ["orientations", "{in}/stack.mrcs", "--model",
                                          "{in}/corrupt_pseudoatoms.pdb", "-o", "{out}/r"] + ORIENT, 2,
     "corrupt_pseudoatoms.pdb: line"),
]


def _expand(argv, inputs: Path, out: Path) -> list[str]:
    return [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in argv]


@pytest.mark.parametrize("argv, status, fragment", [pytest.param(a, s, f, id=i) for i, a, s, f in CASES])
def test_bad_input_ends_with_one_line_and_leaves_nothing(inputs, tmp_path, capsys, argv, status, fragment):
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(inputs)
    code = main(_expand(argv, inputs, out))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == status, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"cryogmm {argv[0]}: error: ") and fragment in lines[0], err
    assert _snapshot(inputs) == before  # nothing written, replaced or left beside the inputs
    assert list(out.iterdir()) == []  # no output and no temporary file or folder


def test_the_corpus_covers_every_command_with_at_least_40_cases():
    from cryogmm.cli import COMMANDS

    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    covered = {c[1][0] for c in CASES}
    assert covered >= set(COMMANDS) - {"demo"}, set(COMMANDS) - covered  # demo reads no input


UNUSUAL = "dossier ünïcödé avec espaces ☃"


def test_unicode_and_spaces_in_paths_work(inputs, tmp_path, capsys):
    folder = tmp_path / UNUSUAL
    folder.mkdir()
    for name in ("map.mrc", "map2.mrc", "tiny.pdb", "stack.mrcs"):
        shutil.copy(inputs / name, folder / f"é {name}")
    assert main(["fsc", str(folder / "é map.mrc"), str(folder / "é map2.mrc"), "--plot", str(folder / "fsc ☃.png"),
                 "--json", str(folder / "fsc ☃.json")]) == 0
    assert main(["simulate-map", str(folder / "é tiny.pdb"), "-o", str(folder / "carte ü.mrc")] + SIMULATE) == 0
    assert main(["prepare", str(folder / "é stack.mrcs"), "-o", str(folder / "préparé.mrcs")]) == 0
    assert main(["fit-map", str(folder / "é map.mrc"), "-o", str(folder / "ajusté ☃")] + FIT) == 0
    capsys.readouterr()
    assert read_map(folder / "carte ü.mrc").data.shape[0] >= 8
    assert (folder / "fsc ☃.png").stat().st_size > 0 and (folder / "préparé.mrcs").is_file()
    assert (folder / "ajusté ☃" / "pseudoatoms.pdb").is_file()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# -- the CLI's last line of defence -------------------------------------------------------------------------


def _break_fit(monkeypatch, error: BaseException):
    """Make fit-map's pipeline raise `error` once its run folder is open."""
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr("cryogmm.reconstruction.fit_map.fit_map", broken)


def test_a_bug_is_one_line_with_the_log_that_holds_the_traceback(inputs, tmp_path, capsys, monkeypatch):
    _break_fit(monkeypatch, ZeroDivisionError("a planted bug"))
    out = tmp_path / "run"
    assert main(["fit-map", str(inputs / "map.mrc"), "-o", str(out)] + FIT) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cryogmm fit-map: failed (ZeroDivisionError: a planted bug); the traceback is in ")
    log = Path(last.split("the traceback is in ")[1].split(";")[0])
    assert log == tmp_path / "run-failed.log"  # the run's own log, kept beside the output folder
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "a planted bug" in text and "map.mrc" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-failed.log"]  # no output, no temporary folder


def test_memory_error_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    _break_fit(monkeypatch, MemoryError())
    assert main(["fit-map", str(inputs / "map.mrc"), "-o", str(tmp_path / "run")] + FIT) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "more memory" in err.strip().splitlines()[-1]


def _interrupt_in_numba() -> BaseException:
    """What numba raises when Ctrl-C lands in a kernel call: a SystemError chained from it."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise SystemError("CPUDispatcher(<function kernel>) returned a result with an exception set") \
                from interrupt
    except SystemError as error:
        return error


def test_an_interrupt_that_numba_reports_as_a_system_error_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    _break_fit(monkeypatch, _interrupt_in_numba())
    assert main(["fit-map", str(inputs / "map.mrc"), "-o", str(tmp_path / "run")] + FIT) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "SystemError" not in err
    assert err.strip().splitlines()[-1] == f"cryogmm fit-map: interrupted; nothing was written to {tmp_path / 'run'}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_ends_a_command_with_status_143(inputs, tmp_path, capsys, monkeypatch):
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr("cryogmm.reconstruction.fit_map.fit_map", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["fit-map", str(inputs / "map.mrc"), "-o", str(tmp_path / "run")] + FIT) == 143
    assert signal.getsignal(signal.SIGTERM) is handler  # an in-process call leaves the handlers as they were
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"cryogmm fit-map: terminated (SIGTERM); nothing was written to "
                                            f"{tmp_path / 'run'}")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_left_by_a_killed_run_is_named_then_removed_by_force(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    left = tmp_path / ".run.tmp-999999999-deadbeef"  # no such process
    left.mkdir()
    (left / "run.log").write_text("half a run\n")
    assert main(["fit-map", str(inputs / "map.mrc"), "-o", str(out)] + FIT) == 0
    err = capsys.readouterr().err
    assert f"{left} is the unfinished folder of an earlier run that was killed" in err and "--force" in err
    assert left.is_dir()
    assert main(["fit-map", str(inputs / "map.mrc"), "-o", str(out), "--force"] + FIT) == 0
    assert f"removed {left}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_every_option_of_every_case_exists(inputs, tmp_path):
    """Guard against a case that is refused only because its argv names an option that no longer exists."""
    from cryogmm.cli import build_parser

    parser = build_parser()
    for _, argv, _, _ in CASES:
        parsed = parser.parse_args(_expand(argv, inputs, tmp_path))
        assert parsed.command == argv[0]

