"""Rotations (SO(3), RELION Euler angles) and, later, point-group symmetry."""
