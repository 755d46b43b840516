"""Atomic models: PDB and mmCIF, gzipped or not, waters and hydrogens, errors."""

from __future__ import annotations

import gzip

import gemmi
import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.io.atoms import read_atoms

PDB_TEXT = """\
ATOM      1  N   GLY A   1      11.104   6.134  -6.504  1.00  0.00           N
ATOM      2  CA  GLY A   1      11.639   6.071  -5.147  1.00  0.00           C
ATOM      3  H   GLY A   1      10.500   6.000  -6.900  1.00  0.00           H
ATOM      4  O   GLY B   2      12.000   7.000  -4.000  1.00  0.00           O
HETATM    5 ZN    ZN B   3      20.000  21.000  22.000  1.00  0.00          ZN
HETATM    6  O   HOH C   4      30.000  31.000  32.000  1.00  0.00           O
END
"""


@pytest.fixture
def model_files(tmp_path):
    pdb = tmp_path / "tiny.pdb"
    pdb.write_text(PDB_TEXT)
    pdb_gz = tmp_path / "tiny.pdb.gz"
    pdb_gz.write_bytes(gzip.compress(PDB_TEXT.encode()))
    structure = gemmi.read_structure(str(pdb))
    structure.setup_entities()
    cif = tmp_path / "tiny.cif"
    structure.make_mmcif_document().write_file(str(cif))
    cif_gz = tmp_path / "tiny.cif.gz"
    cif_gz.write_bytes(gzip.compress(cif.read_bytes()))
    return [pdb, pdb_gz, cif, cif_gz]


def test_formats_agree(model_files):
    for path in model_files:
        model = read_atoms(path)
        assert model.n_atoms == 5, path
        np.testing.assert_allclose(model.coordinates_in_angstroms[0], [11.104, 6.134, -6.504])
        np.testing.assert_array_equal(model.atomic_numbers, [7, 6, 1, 8, 30])
        assert list(model.chain_ids) == ["A", "A", "A", "B", "B"]
        assert model.coordinates_in_angstroms.dtype == np.float64


def test_waters_and_hydrogens(model_files):
    assert read_atoms(model_files[0], remove_waters=False).n_atoms == 6
    assert read_atoms(model_files[0], remove_hydrogens=True).n_atoms == 4


def test_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_text("REMARK nothing here\nEND\n")
    waters = tmp_path / "waters.pdb"
    waters.write_text(PDB_TEXT.splitlines()[5] + "\nEND\n")
    broken = tmp_path / "broken.cif"
    broken.write_bytes(b"\x00\x01 not a cif file")
    cases = {tmp_path / "absent.pdb": "not found", empty: "no atoms", waters: "no atoms",
             broken: "not a readable"}
    for path, words in cases.items():
        with pytest.raises(InputError) as info:
            read_atoms(path)
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message


@pytest.mark.shared_data
def test_read_polymerase(shared_data):
    model = read_atoms(shared_data / "models" / "1wcm_polII.pdb.gz")
    # 30,936 ATOM + 9 HETATM (8 Zn, 1 Mg); the file has no waters
    assert model.n_atoms == 30945
    assert sorted(set(model.chain_ids)) == list("ABCDEFGHIJKL")
    assert np.count_nonzero(model.atomic_numbers == 30) == 8
    extent = np.ptp(model.coordinates_in_angstroms, axis=0)
    np.testing.assert_allclose(extent, [138, 144, 154], atol=1.0)


@pytest.mark.shared_data
def test_read_groel_without_waters(shared_data):
    path = shared_data / "models" / "1oel_groel.pdb.gz"
    assert read_atoms(path).n_atoms == 26929
    assert read_atoms(path, remove_waters=False).n_atoms == 26929 + 149
