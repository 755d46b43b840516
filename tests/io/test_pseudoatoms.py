"""Pseudo-atom PDB and mmCIF files: exact round trips of the mixture, column formats, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.io.pseudoatoms import read_pseudoatoms, write_pseudoatoms_cif, write_pseudoatoms_pdb
from cryogmm.mixture import GaussianMixture


def _mixture(k=30, precision=0.037, seed=0, spread=100.0):
    rng = np.random.default_rng(seed)
    return GaussianMixture(rng.uniform(-spread, spread, (k, 3)), rng.dirichlet(np.ones(k)), precision)


@pytest.mark.parametrize("writer, name, mean_tolerance", [
    (write_pseudoatoms_pdb, "model.pdb", 5e-4),  # PDB coordinates have 3 decimals
    (write_pseudoatoms_cif, "model.cif", 1e-6),
])
def test_round_trip(tmp_path, writer, name, mean_tolerance):
    mixture = _mixture()
    path = tmp_path / name
    writer(path, mixture)
    result = read_pseudoatoms(path)
    np.testing.assert_allclose(result.weights, mixture.weights, rtol=1e-12)
    assert result.precision_per_square_angstrom == mixture.precision_per_square_angstrom
    np.testing.assert_allclose(result.means_in_angstroms, mixture.means_in_angstroms, atol=mean_tolerance)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_pdb_columns(tmp_path):
    mixture = _mixture(k=3, precision=0.5)
    path = tmp_path / "model.pdb"
    write_pseudoatoms_pdb(path, mixture)
    lines = path.read_text().splitlines()
    atoms = [line for line in lines if line.startswith("HETATM")]
    assert len(atoms) == 3 and all(len(line) == 80 for line in atoms)
    assert all(len(line) <= 80 for line in lines)
    first = atoms[0]
    assert first[12:16] == " C  " and first[17:20] == "GMM" and first[76:78] == " C"
    np.testing.assert_allclose([float(first[30:38]), float(first[38:46]), float(first[46:54])],
                               mixture.means_in_angstroms[0], atol=5e-4)
    occupancies = [float(line[54:60]) for line in atoms]
    assert max(occupancies) == 1.0
    np.testing.assert_allclose(occupancies, mixture.weights / mixture.weights.max(), atol=5e-3)
    assert float(first[60:66]) == pytest.approx(8 * np.pi**2 / 0.5, abs=5e-3)
    remarks = "\n".join(line for line in lines if line.startswith("REMARK"))
    assert "N_COMPONENTS 3" in remarks and "PRECISION_PER_SQUARE_ANGSTROM 0.5" in remarks
    assert f"SIGMA_ANGSTROM {float(mixture.sigma_in_angstroms)!r}" in remarks


def test_large_b_factor_still_fits(tmp_path):
    mixture = _mixture(k=4, precision=0.01)  # sigma 10 Å, B = 7896 Å^2
    path = tmp_path / "wide.pdb"
    write_pseudoatoms_pdb(path, mixture)
    atom = next(line for line in path.read_text().splitlines() if line.startswith("HETATM"))
    assert float(atom[60:66]) == pytest.approx(8 * np.pi**2 / 0.01, abs=0.05)
    assert read_pseudoatoms(path).precision_per_square_angstrom == 0.01


def test_many_components_span_chains(tmp_path):
    mixture = _mixture(k=10005, precision=0.2)
    write_pseudoatoms_pdb(tmp_path / "many.pdb", mixture)
    result = read_pseudoatoms(tmp_path / "many.pdb")
    np.testing.assert_array_equal(result.weights, mixture.weights)
    np.testing.assert_allclose(result.means_in_angstroms, mixture.means_in_angstroms, atol=5e-4)


def test_files_without_cryogmm_records_fall_back_to_columns(tmp_path):
    mixture = _mixture(k=5, precision=0.1)
    path = tmp_path / "model.pdb"
    write_pseudoatoms_pdb(path, mixture)
    stripped = tmp_path / "stripped.pdb"
    stripped.write_text("\n".join(line for line in path.read_text().splitlines()
                                  if not line.startswith("REMARK")) + "\n")
    result = read_pseudoatoms(stripped)
    assert result.precision_per_square_angstrom == pytest.approx(0.1, rel=1e-4)
    np.testing.assert_allclose(result.weights, mixture.weights, atol=0.02)


def test_writer_refusals(tmp_path):
    with pytest.raises(InputError, match="mmCIF"):
        write_pseudoatoms_pdb(tmp_path / "huge.pdb", _mixture(k=100000, spread=10.0))
    far = GaussianMixture([[10000.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0.5, 0.5], 1.0)
    with pytest.raises(InputError, match="mmCIF"):
        write_pseudoatoms_pdb(tmp_path / "far.pdb", far)
    write_pseudoatoms_cif(tmp_path / "far.cif", far)  # mmCIF has no column limits
    np.testing.assert_allclose(read_pseudoatoms(tmp_path / "far.cif").means_in_angstroms, far.means_in_angstroms)
    flat = GaussianMixture([[0.0, 0.0], [1.0, 1.0]], [0.5, 0.5], 1.0)
    with pytest.raises(ValueError):
        write_pseudoatoms_pdb(tmp_path / "flat.pdb", flat)
    assert not any(p.name.startswith((".huge", ".far.pdb")) for p in tmp_path.iterdir())


def test_read_errors_name_the_file(tmp_path):
    mixture = _mixture(k=4)
    good = tmp_path / "good.pdb"
    write_pseudoatoms_pdb(good, mixture)
    missing_atom = tmp_path / "missing_atom.pdb"
    missing_atom.write_text("\n".join(good.read_text().splitlines()[:-2]) + "\nEND\n")
    no_atoms = tmp_path / "no_atoms.pdb"
    no_atoms.write_text("REMARK 999 nothing\nEND\n")
    broken = tmp_path / "broken.cif"
    broken.write_bytes(b"\x00\x01 not a cif file")
    cases = {tmp_path / "absent.pdb": "not found", missing_atom: "weights", no_atoms: "no atoms",
             broken: "not a readable"}
    for path, words in cases.items():
        with pytest.raises(InputError) as info:
            read_pseudoatoms(path)
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message


@pytest.mark.parametrize("name", ["model.pdb", "model.cif"])
def test_symmetric_copies_get_one_chain_each_and_the_box_is_the_cell(tmp_path, name):
    import gemmi

    from cryogmm.geometry.symmetry import symmetry_operators
    from cryogmm.io.pseudoatoms import write_pseudoatom_files
    from cryogmm.samplers.projected import expand_symmetry

    unit = _mixture(k=7, spread=30.0)
    full = expand_symmetry(unit, symmetry_operators("D2"))
    write_pseudoatom_files(tmp_path / "model", full, copies=4, symmetry="D2", cell_in_angstroms=(96.0, 96.0, 120.0))
    structure = gemmi.read_structure(str(tmp_path / name))
    assert structure.cell.parameters == pytest.approx((96.0, 96.0, 120.0, 90.0, 90.0, 90.0))
    chains = [(chain.name, len(chain)) for chain in structure[0]]
    assert chains == [("A", 7), ("B", 7), ("C", 7), ("D", 7)]
    # chain A is the asymmetric unit, chain B its first symmetric copy
    first = np.array([residue[0].pos.tolist() for residue in structure[0]["A"]])
    np.testing.assert_allclose(first, unit.means_in_angstroms, atol=5e-4)
    result = read_pseudoatoms(tmp_path / name)
    np.testing.assert_allclose(result.means_in_angstroms, full.means_in_angstroms, atol=5e-4)
    np.testing.assert_allclose(result.weights, full.weights, rtol=1e-12)
    if name.endswith(".pdb"):
        lines = (tmp_path / name).read_text().splitlines()
        cryst1 = next(line for line in lines if line.startswith("CRYST1"))
        assert cryst1 == "CRYST1   96.000   96.000  120.000  90.00  90.00  90.00 P 1           1"
        assert any("SYMMETRY D2 COPIES 4" in line for line in lines)


def test_copies_must_divide_the_components(tmp_path):
    with pytest.raises(ValueError, match="copies"):
        write_pseudoatoms_pdb(tmp_path / "x.pdb", _mixture(k=10), copies=3)


def test_more_chains_than_pdb_letters_need_mmcif(tmp_path):
    def copies_of(n_copies, per_copy=1000):
        unit = _mixture(k=per_copy, spread=10.0)
        k = n_copies * per_copy
        return GaussianMixture(np.tile(unit.means_in_angstroms, (n_copies, 1)), np.full(k, 1.0 / k), 0.1)

    write_pseudoatoms_pdb(tmp_path / "ok.pdb", copies_of(60), copies=60)  # icosahedral: 60 chains fit
    assert read_pseudoatoms(tmp_path / "ok.pdb").n_components == 60000
    with pytest.raises(InputError, match="mmCIF"):
        write_pseudoatoms_pdb(tmp_path / "x.pdb", copies_of(63), copies=63)
