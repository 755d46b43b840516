"""Run folders: permissions from the umask, atomic renaming, a warning for file-like names."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from cryogmm.io.runs import RunFolder


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_folder_gets_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with RunFolder(tmp_path / "run") as folder:
            (folder / "summary.json").write_text("{}")
            assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failed_run_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path / "run") as folder:
            (folder / "map.mrc").write_text("x")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_named_like_a_file_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cryogmm.io.runs"):
        RunFolder(tmp_path / "groel.pdb")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "--output" in message and "groel.pdb" in message and "folder" in message and "groel " in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cryogmm.io.runs"):
        RunFolder(tmp_path / "groel_fit")
    assert caplog.records == []
