"""Thin readers and writers for the field's formats: MRC, STAR, PDB/mmCIF, run folders."""
