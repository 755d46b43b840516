"""`cryogmm demo` (made small and fast by conftest's `small_demo`): final paths in its records, and what
it compared."""

from __future__ import annotations

import json

from cryogmm.cli import main


def test_demo_records_final_paths_and_says_what_it_compared(tmp_path, small_demo, capsys):
    out = tmp_path / "demo_run"
    assert main(["demo", "--output", str(out), "--quiet"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["demo_run"]
    assert {"phantom_15A.mrc", "images.mrcs", "true_poses.star", "map.mrc", "map_slices.png", "fsc.png"} <= {
        p.name for p in out.iterdir()}
    records = {name: (out / name).read_text() for name in ("summary.json", "settings.json")}
    for name, text in records.items():
        assert ".tmp-" not in text, name
    summary = json.loads(records["summary.json"])
    settings = json.loads(records["settings.json"])["settings"]
    assert summary["images"] == str(out / "images.mrcs")
    assert summary["reference"]["path"] == settings["reference"] == str(out / "phantom_15A.mrc")
    assert settings["true_poses"] == str(out / "true_poses.star")
    assert "the density the images were projected from" in summary["reference"]["compared"]
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "FSC 0.5" in line)
    assert ("map.mrc (inferred from the 8 images alone) against phantom_15A.mrc, the density the images were "
            "projected from (15 Å)") in line and "not the resolution" in line
    from cryogmm.io.star import read_particles

    assert "rlnVoltage" not in read_particles(out / "true_poses.star").optics.columns  # no CTF: none invented
