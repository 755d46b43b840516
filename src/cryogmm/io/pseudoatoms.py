"""Pseudo-atom models: a 3D Gaussian mixture as PDB or mmCIF, one atom per component.

Each component becomes atom `C` of residue `GMM` at its mean, so ChimeraX opens the model over
the map. A symmetric model (`copies` > 1: the asymmetric unit and its symmetric copies, ordered
copy by copy as `expand_symmetry` gives them) has one chain per copy, chain A the asymmetric unit.
The map's box, when given, is the unit cell (PDB `CRYST1`, mmCIF `_cell`; P 1); without it readers
take a 1 Å cell. The occupancy column holds the weight divided by the largest weight (the largest is
1.00), the B-factor column `B = 8 pi^2 sigma^2` (Å^2). Since those columns are rounded, the exact
mixture travels alongside: `REMARK 999 CRYOGMM` lines in PDB, `_cryogmm` and
`_cryogmm_component` categories in mmCIF, giving sigma (Å), precision (1/Å^2), the number of
components and every weight in full precision. `read_pseudoatoms` reads the means from the atoms
(3 decimals) and weights and precision from those records, so they come back exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import gemmi
import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.atoms import check_pdb_records
from cryogmm.io.mrc import atomic_output
from cryogmm.io.paths import require_file
from cryogmm.mixture import GaussianMixture

RESIDUE_NAME = "GMM"
ATOM_NAME = "C"
ELEMENT = "C"
MAX_PDB_COMPONENTS = 99999  # the PDB atom serial field has 5 columns
_RESIDUES_PER_CHAIN = 9999  # the PDB residue number field has 4 columns
_CHAIN_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"  # one character in PDB
_TAG = "REMARK 999 CRYOGMM "
_WEIGHTS_PER_LINE = 2  # keeps REMARK lines within 80 columns at full precision


def _b_factor(mixture: GaussianMixture) -> float:
    """B = 8 pi^2 sigma^2 in Å^2 (the isotropic displacement of the same Gaussian)."""
    return 8.0 * np.pi**2 / mixture.precision_per_square_angstrom


def _check_3d(mixture: GaussianMixture) -> None:
    if mixture.ndim != 3:
        raise ValueError(f"pseudo-atom files hold 3D mixtures, this one is {mixture.ndim}D")


def _fixed(value: float, width: int, decimals: int) -> str:
    """`value` in `width` columns with at most `decimals` decimals (fewer if it is too large)."""
    for d in range(decimals, -1, -1):
        text = f"{value:{width}.{d}f}"
        if len(text) <= width:
            return text
    raise ValueError(f"{value} does not fit {width} PDB columns")


def _chains(k: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Chain index and residue number (from 1) of each of `k` components in `copies` copies: one
    chain per copy, split further where a copy has more residues than PDB numbers (9999)."""
    if copies < 1 or k % copies:
        raise ValueError(f"{k} components cannot be {copies} symmetric copies of one asymmetric unit")
    per_copy = k // copies
    chunks = -(-per_copy // _RESIDUES_PER_CHAIN)
    within = np.arange(k) % per_copy
    return (np.arange(k) // per_copy) * chunks + within // _RESIDUES_PER_CHAIN, within % _RESIDUES_PER_CHAIN + 1


def _cell(cell_in_angstroms) -> tuple[float, float, float] | None:
    if cell_in_angstroms is None:
        return None
    cell = tuple(float(c) for c in np.broadcast_to(np.asarray(cell_in_angstroms, dtype=np.float64), (3,)))
    if not all(np.isfinite(c) and c > 0 for c in cell):
        raise ValueError(f"the cell must be three positive lengths in Å, got {cell_in_angstroms}")
    return cell


def write_pseudoatoms_pdb(path: str | os.PathLike, mixture: GaussianMixture, *, copies: int = 1,
                          symmetry: str | None = None, cell_in_angstroms=None) -> None:
    """Write a 3D mixture as a PDB file (atomically).

    Parameters
    ----------
    copies : the mixture is this many symmetric copies of its first `K / copies` components (the
        asymmetric unit), ordered copy by copy; each copy gets its own chain
    symmetry : name of the point group, recorded in a REMARK
    cell_in_angstroms : the map's box `(x, y, z)` in Å (or one length for a cube): `CRYST1`

    Raises
    ------
    InputError
        More than 99,999 components, means outside the PDB coordinate range
        (-999.999 to 9999.999 Å) or more chains than PDB's 62 chain letters; write mmCIF instead.
    """
    _check_3d(mixture)
    path = Path(path)
    k = mixture.n_components
    if k > MAX_PDB_COMPONENTS:
        raise InputError(f"{path}: {k} components do not fit a PDB file (at most {MAX_PDB_COMPONENTS}); "
                         "write mmCIF (.cif) instead")
    means = mixture.means_in_angstroms
    if np.any(means <= -999.9995) or np.any(means >= 9999.9995):
        raise InputError(f"{path}: component means outside -999.999..9999.999 Å do not fit PDB "
                         "coordinates; write mmCIF (.cif) instead")
    chains, residues = _chains(k, copies)
    if chains.max() >= len(_CHAIN_IDS):
        raise InputError(f"{path}: {chains.max() + 1} chains do not fit PDB chain letters (at most "
                         f"{len(_CHAIN_IDS)}); write mmCIF (.cif) instead")
    cell = _cell(cell_in_angstroms)
    occupancies = mixture.weights / mixture.weights.max()
    b_text = _fixed(_b_factor(mixture), 6, 2)
    lines = _remarks(mixture, copies, symmetry)
    if cell is not None:
        lines.append(f"CRYST1{cell[0]:9.3f}{cell[1]:9.3f}{cell[2]:9.3f}{90.0:7.2f}{90.0:7.2f}{90.0:7.2f} "
                     f"{'P 1':<11}{1:4d}")
    for i, ((x, y, z), occupancy, chain_index, residue) in enumerate(zip(means, occupancies, chains, residues)):
        chain = _CHAIN_IDS[chain_index]
        # columns: record 1-6, serial 7-11, name 13-16, resName 18-20, chain 22, resSeq 23-26,
        # x y z 31-54, occupancy 55-60, B 61-66, element 77-78
        lines.append(f"HETATM{i + 1:5d}  {ATOM_NAME:<3} {RESIDUE_NAME:>3} {chain}{residue:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}{occupancy:6.2f}{b_text}          {ELEMENT:>2}  ")
    lines.append("END")
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _remarks(mixture: GaussianMixture, copies: int, symmetry: str | None) -> list[str]:
    lines = [
        f"{_TAG}PSEUDO-ATOMS OF A GAUSSIAN MIXTURE, ONE ATOM PER COMPONENT",
        f"{_TAG}OCCUPANCY = WEIGHT / LARGEST WEIGHT, B = 8 PI^2 SIGMA^2",
        f"{_TAG}N_COMPONENTS {mixture.n_components}",
        f"{_TAG}SIGMA_ANGSTROM {float(mixture.sigma_in_angstroms)!r}",
        f"{_TAG}PRECISION_PER_SQUARE_ANGSTROM {mixture.precision_per_square_angstrom!r}",
    ]
    if copies > 1 or symmetry:
        lines.append(f"{_TAG}SYMMETRY {symmetry or 'unnamed'} COPIES {copies}: ONE CHAIN PER COPY, "
                     "THE FIRST THE ASYMMETRIC UNIT")
    weights = mixture.weights.tolist()
    for start in range(0, len(weights), _WEIGHTS_PER_LINE):
        chunk = " ".join(repr(w) for w in weights[start:start + _WEIGHTS_PER_LINE])
        lines.append(f"{_TAG}WEIGHTS {chunk}")
    return lines


def write_pseudoatoms_cif(path: str | os.PathLike, mixture: GaussianMixture, *, copies: int = 1,
                          symmetry: str | None = None, cell_in_angstroms=None) -> None:
    """Write a 3D mixture as an mmCIF file (atomically), with `_cryogmm` categories; the options
    are those of `write_pseudoatoms_pdb` (one chain per copy, the box as `_cell`)."""
    _check_3d(mixture)
    k = mixture.n_components
    occupancies = mixture.weights / mixture.weights.max()
    b_factor = _b_factor(mixture)
    chain_of, _ = _chains(k, copies)
    per_copy = k // copies
    names = [_CHAIN_IDS[c] if c < len(_CHAIN_IDS) else f"C{c + 1}" for c in range(chain_of.max() + 1)]
    chains = [gemmi.Chain(name) for name in names]
    for i, (mean, occupancy) in enumerate(zip(mixture.means_in_angstroms.tolist(), occupancies.tolist())):
        residue = gemmi.Residue()
        residue.name = RESIDUE_NAME
        residue.seqid = gemmi.SeqId(i % per_copy + 1, " ")  # mmCIF numbers have no width limit
        residue.het_flag = "H"
        residue.subchain = names[chain_of[i]]  # one asym unit per chain, not one per residue
        residue.entity_id = "1"
        atom = gemmi.Atom()
        atom.name = ATOM_NAME
        atom.element = gemmi.Element(ELEMENT)
        atom.pos = gemmi.Position(*mean)
        atom.occ = occupancy
        atom.b_iso = b_factor
        residue.add_atom(atom)
        chains[chain_of[i]].add_residue(residue)
    model = gemmi.Model(1)
    for chain in chains:
        model.add_chain(chain)
    structure = gemmi.Structure()
    structure.name = "cryogmm_pseudoatoms"
    structure.add_model(model)
    cell = _cell(cell_in_angstroms)
    if cell is not None:
        structure.cell = gemmi.UnitCell(*cell, 90.0, 90.0, 90.0)
        structure.spacegroup_hm = "P 1"
    entity = gemmi.Entity("1")
    entity.entity_type = gemmi.EntityType.NonPolymer
    entity.subchains = names
    structure.entities.append(entity)
    document = structure.make_mmcif_document()
    block = document.sole_block()
    if cell is None:
        for category in ("_cell.", "_symmetry."):  # no box given: drop the placeholder 1 Å cell
            block.find_mmcif_category(category).erase()
    records = {
        "n_components": str(mixture.n_components),
        "sigma_in_angstroms": repr(float(mixture.sigma_in_angstroms)),
        "precision_per_square_angstrom": repr(mixture.precision_per_square_angstrom),
    }
    if copies > 1 or symmetry:
        records.update(symmetry=symmetry or "unnamed", symmetric_copies=str(copies))
    block.set_pairs("_cryogmm.", records)
    block.set_mmcif_category("_cryogmm_component.", {
        "id": [str(i + 1) for i in range(mixture.n_components)],
        "weight": [repr(w) for w in mixture.weights.tolist()],
    }, raw=True)
    with atomic_output(path) as tmp:
        document.write_file(str(tmp))


def write_pseudoatom_files(stem: str | os.PathLike, mixture: GaussianMixture, *, copies: int = 1,
                           symmetry: str | None = None, cell_in_angstroms=None) -> list[Path]:
    """`STEM.pdb` and `STEM.cif` with the same options (`write_pseudoatoms_pdb`); their paths."""
    stem = Path(stem)
    paths = [stem.with_name(f"{stem.name}.pdb"), stem.with_name(f"{stem.name}.cif")]
    for writer, path in zip((write_pseudoatoms_pdb, write_pseudoatoms_cif), paths):
        writer(path, mixture, copies=copies, symmetry=symmetry, cell_in_angstroms=cell_in_angstroms)
    return paths


def read_pseudoatoms(path: str | os.PathLike) -> GaussianMixture:
    """Read a pseudo-atom PDB or mmCIF file back into a GaussianMixture.

    Means come from the atoms (in file order); weights and precision from the cryogmm records.
    Files without them (e.g. saved again by another program) fall back to the columns:
    weights proportional to occupancy, precision `8 pi^2 / mean(B)`.

    Raises
    ------
    InputError
        Missing or unreadable file, no atoms, or records that disagree with the atoms.
    """
    path = Path(path)
    require_file(path)
    try:
        structure = gemmi.read_structure(str(path))
        records = _cif_records(path) if _is_cif(path) else _pdb_records(structure.raw_remarks)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise InputError(f"{path}: not a readable PDB or mmCIF file ({reason}); check the file") from exc
    atoms = [atom for chain in structure[0] for residue in chain for atom in residue] if len(structure) else []
    if atoms and structure.input_format == gemmi.CoorFormat.Pdb:
        check_pdb_records(path, len(atoms))
    if not atoms:
        raise InputError(f"{path}: no atoms found; check that this is a pseudo-atom model")
    means = np.array([atom.pos.tolist() for atom in atoms])
    if records is None:
        occupancies = np.array([atom.occ for atom in atoms], dtype=np.float64)
        b_factors = np.array([atom.b_iso for atom in atoms], dtype=np.float64)
        if occupancies.sum() <= 0 or b_factors.mean() <= 0:
            raise InputError(f"{path}: no cryogmm records and no usable occupancies/B-factors; "
                             "write the model with cryogmm")
        return GaussianMixture(means, occupancies / occupancies.sum(), 8.0 * np.pi**2 / b_factors.mean())
    weights, precision = records
    if len(weights) != len(atoms):
        raise InputError(f"{path}: {len(weights)} weights in the cryogmm records but {len(atoms)} atoms; "
                         "write the model again with cryogmm")
    try:
        return GaussianMixture(means, weights, precision)
    except ValueError as exc:
        raise InputError(f"{path}: invalid mixture records ({exc}); write the model again with cryogmm") from exc


def _is_cif(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith((".cif", ".mmcif"))


def _pdb_records(remarks: list[str]) -> tuple[np.ndarray, float] | None:
    values: dict[str, list[str]] = {}
    for line in remarks:
        if line.startswith(_TAG):
            key, *rest = line[len(_TAG):].split()
            values.setdefault(key, []).extend(rest)
    if "WEIGHTS" not in values or "PRECISION_PER_SQUARE_ANGSTROM" not in values:
        return None
    return np.array(values["WEIGHTS"], dtype=np.float64), float(values["PRECISION_PER_SQUARE_ANGSTROM"][0])


def _cif_records(path: Path) -> tuple[np.ndarray, float] | None:
    block = gemmi.cif.read(str(path)).sole_block()
    precision = block.find_value("_cryogmm.precision_per_square_angstrom")
    weights = block.find_values("_cryogmm_component.weight")
    if precision is None or len(weights) == 0:
        return None
    return np.array(list(weights), dtype=np.float64), float(precision)
