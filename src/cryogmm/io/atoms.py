"""Atomic models (PDB and mmCIF, gzipped or not) via `gemmi`, as coordinate arrays."""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.paths import require_file


@dataclass(frozen=True, eq=False)
class AtomicModel:
    """Atoms of one model.

    Parameters
    ----------
    coordinates_in_angstroms : (N, 3) float64, `(x, y, z)` in Å
    atomic_numbers : (N,) int (0 for unknown elements)
    chain_ids : (N,) str, the chain of each atom
    name : str, the structure's name (e.g. the PDB ID)
    """

    coordinates_in_angstroms: np.ndarray
    atomic_numbers: np.ndarray
    chain_ids: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        coordinates = np.asarray(self.coordinates_in_angstroms, dtype=np.float64).reshape(-1, 3)
        numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        chains = np.asarray(self.chain_ids, dtype=str).reshape(-1)
        if not numbers.shape[0] == chains.shape[0] == coordinates.shape[0]:
            raise ValueError("coordinates, atomic numbers and chain ids must have one entry per atom")
        object.__setattr__(self, "coordinates_in_angstroms", coordinates)
        object.__setattr__(self, "atomic_numbers", numbers)
        object.__setattr__(self, "chain_ids", chains)

    @property
    def n_atoms(self) -> int:
        return self.coordinates_in_angstroms.shape[0]


def read_atoms(path: str | os.PathLike, remove_waters: bool = True,
               remove_hydrogens: bool = False) -> AtomicModel:
    """Read the first model of a PDB or mmCIF file (`.gz` too).

    Alternative conformations are reduced to the first one so no atom is counted twice.

    Raises
    ------
    InputError
        Missing or unreadable file, or no atoms left.
    """
    path = Path(path)
    require_file(path)
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise InputError(f"{path}: not a readable PDB or mmCIF file ({reason}); check the file") from exc
    if len(structure) > 0 and structure.input_format == gemmi.CoorFormat.Pdb:
        check_pdb_records(path, sum(len(residue) for chain in structure[0] for residue in chain))
    if len(structure) > 0:
        if remove_waters:
            structure.remove_waters()
        if remove_hydrogens:
            structure.remove_hydrogens()
        structure.remove_alternative_conformations()
    coordinates, numbers, chains = [], [], []
    if len(structure) > 0:
        for chain in structure[0]:
            for residue in chain:
                for atom in residue:
                    coordinates.append(atom.pos.tolist())
                    numbers.append(atom.element.atomic_number)
                    chains.append(chain.name)
    if not coordinates:
        raise InputError(f"{path}: no atoms found (after removing waters={remove_waters}, "
                         f"hydrogens={remove_hydrogens}); check that this is an atomic model")
    return AtomicModel(np.array(coordinates), np.array(numbers), np.array(chains), structure.name)


def check_pdb_records(path: Path, n_read: int) -> None:
    """Refuse a PDB file that gemmi read only in part: gemmi stops at binary data and skips
    ATOM/HETATM records it cannot parse, without an error. Every record of the first model must
    hold three coordinates, and gemmi must have read them all; the message names the first line
    that is not a valid record."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    end = raw.find(b"\nENDMDL")  # the first model only
    binary = re.search(rb"[\x00-\x08]", raw if end < 0 else raw[:end])
    if binary:
        line = raw.count(b"\n", 0, binary.start()) + 1
        raise InputError(f"{path}: line {line} holds binary data, not PDB "
                         f"text; gemmi reads only the {n_read} atoms before it; the file is corrupt: download or "
                         "write it again")
    records = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.startswith(b"ENDMDL"):
            break
        if line[:6] in (b"ATOM  ", b"HETATM"):
            try:
                [float(line[a:b]) for a, b in ((30, 38), (38, 46), (46, 54))]
            except ValueError:
                text = line.decode("latin-1").rstrip()
                raise InputError(f"{path}: line {number} is not a valid atom record (x, y, z in columns 31-54: "
                                 f"{text[30:54]!r}); gemmi would skip it; fix the file") from None
            records.append(number)
    if n_read < len(records):
        raise InputError(f"{path}: gemmi read {n_read} of the {len(records)} atom records, stopping at line "
                         f"{records[n_read]}; the file is corrupt: fix it, or download or write it again")
