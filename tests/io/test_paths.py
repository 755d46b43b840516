"""Input paths: a folder given where a file is needed says so."""

from __future__ import annotations

import pytest

from cryogmm.errors import InputError
from cryogmm.io.images import read_input_images
from cryogmm.io.mrc import read_map
from cryogmm.io.paths import require_file
from cryogmm.io.star import read_particles


def test_a_folder_is_not_reported_as_missing(tmp_path):
    folder = tmp_path / "Class2D"
    folder.mkdir()
    (folder / "run_it025_classes.mrcs").write_bytes(b"")
    for reader in (read_input_images, read_map, read_particles, require_file):
        with pytest.raises(InputError, match="is a folder, not a file") as info:
            reader(folder)
        assert "run_it025_classes.mrcs" in str(info.value) and "not found" not in str(info.value)
    with pytest.raises(InputError, match="--model .*: is a folder"):
        require_file(folder, "--model")
    with pytest.raises(InputError, match="file not found"):
        require_file(tmp_path / "missing.mrcs")
