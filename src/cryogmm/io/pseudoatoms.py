"""Pseudo-atom models: a 3D Gaussian mixture as PDB or mmCIF, one atom per component.

Each component becomes atom `C` of residue `GMM` at its mean, so ChimeraX opens the model over
the map. The occupancy column holds the weight divided by the largest weight (the largest is
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
from cryogmm.io.mrc import atomic_output
from cryogmm.io.paths import require_file
from cryogmm.mixture import GaussianMixture

RESIDUE_NAME = "GMM"
ATOM_NAME = "C"
ELEMENT = "C"
MAX_PDB_COMPONENTS = 99999  # the PDB atom serial field has 5 columns
_RESIDUES_PER_CHAIN = 9999  # the PDB residue number field has 4 columns
_CHAIN_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
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


def write_pseudoatoms_pdb(path: str | os.PathLike, mixture: GaussianMixture) -> None:
    """Write a 3D mixture as a PDB file (atomically).

    Raises
    ------
    InputError
        More than 99,999 components, or means outside the PDB coordinate range
        (-999.999 to 9999.999 Å); write mmCIF instead.
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
    occupancies = mixture.weights / mixture.weights.max()
    b_text = _fixed(_b_factor(mixture), 6, 2)
    lines = _remarks(mixture)
    for i, ((x, y, z), occupancy) in enumerate(zip(means, occupancies)):
        chain = _CHAIN_IDS[i // _RESIDUES_PER_CHAIN]
        residue = i % _RESIDUES_PER_CHAIN + 1
        # columns: record 1-6, serial 7-11, name 13-16, resName 18-20, chain 22, resSeq 23-26,
        # x y z 31-54, occupancy 55-60, B 61-66, element 77-78
        lines.append(f"HETATM{i + 1:5d}  {ATOM_NAME:<3} {RESIDUE_NAME:>3} {chain}{residue:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}{occupancy:6.2f}{b_text}          {ELEMENT:>2}  ")
    lines.append("END")
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _remarks(mixture: GaussianMixture) -> list[str]:
    lines = [
        f"{_TAG}PSEUDO-ATOMS OF A GAUSSIAN MIXTURE, ONE ATOM PER COMPONENT",
        f"{_TAG}OCCUPANCY = WEIGHT / LARGEST WEIGHT, B = 8 PI^2 SIGMA^2",
        f"{_TAG}N_COMPONENTS {mixture.n_components}",
        f"{_TAG}SIGMA_ANGSTROM {float(mixture.sigma_in_angstroms)!r}",
        f"{_TAG}PRECISION_PER_SQUARE_ANGSTROM {mixture.precision_per_square_angstrom!r}",
    ]
    weights = mixture.weights.tolist()
    for start in range(0, len(weights), _WEIGHTS_PER_LINE):
        chunk = " ".join(repr(w) for w in weights[start:start + _WEIGHTS_PER_LINE])
        lines.append(f"{_TAG}WEIGHTS {chunk}")
    return lines


def write_pseudoatoms_cif(path: str | os.PathLike, mixture: GaussianMixture) -> None:
    """Write a 3D mixture as an mmCIF file (atomically), with `_cryogmm` categories."""
    _check_3d(mixture)
    occupancies = mixture.weights / mixture.weights.max()
    b_factor = _b_factor(mixture)
    chain = gemmi.Chain("A")
    for i, (mean, occupancy) in enumerate(zip(mixture.means_in_angstroms.tolist(), occupancies.tolist())):
        residue = gemmi.Residue()
        residue.name = RESIDUE_NAME
        residue.seqid = gemmi.SeqId(i + 1, " ")
        residue.het_flag = "H"
        residue.subchain = "A"  # one asym unit for all components, not one per residue
        residue.entity_id = "1"
        atom = gemmi.Atom()
        atom.name = ATOM_NAME
        atom.element = gemmi.Element(ELEMENT)
        atom.pos = gemmi.Position(*mean)
        atom.occ = occupancy
        atom.b_iso = b_factor
        residue.add_atom(atom)
        chain.add_residue(residue)
    model = gemmi.Model(1)
    model.add_chain(chain)
    structure = gemmi.Structure()
    structure.name = "cryogmm_pseudoatoms"
    structure.add_model(model)
    entity = gemmi.Entity("1")
    entity.entity_type = gemmi.EntityType.NonPolymer
    entity.subchains = ["A"]
    structure.entities.append(entity)
    document = structure.make_mmcif_document()
    block = document.sole_block()
    for category in ("_cell.", "_symmetry."):  # no crystal: drop the placeholder 1 Å cell
        block.find_mmcif_category(category).erase()
    block.set_pairs("_cryogmm.", {
        "n_components": str(mixture.n_components),
        "sigma_in_angstroms": repr(float(mixture.sigma_in_angstroms)),
        "precision_per_square_angstrom": repr(mixture.precision_per_square_angstrom),
    })
    block.set_mmcif_category("_cryogmm_component.", {
        "id": [str(i + 1) for i in range(mixture.n_components)],
        "weight": [repr(w) for w in mixture.weights.tolist()],
    }, raw=True)
    with atomic_output(path) as tmp:
        document.write_file(str(tmp))


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
