"""Simulated data: molmap densities, projected particle images, noise and counts (section 3.1.1)."""

from cryogmm.simulate.discretise import discretise
from cryogmm.simulate.images import (add_noise, class_particle_images, ctf_particle_images, project_atoms,
                                     random_defocus, random_shifts)
from cryogmm.simulate.molmap import (
    default_map_grid,
    model_center,
    molmap,
    molmap_padding_in_angstroms,
    sigma_for_resolution,
)

__all__ = [
    "add_noise",
    "class_particle_images",
    "ctf_particle_images",
    "default_map_grid",
    "discretise",
    "model_center",
    "molmap",
    "molmap_padding_in_angstroms",
    "project_atoms",
    "random_defocus",
    "random_shifts",
    "sigma_for_resolution",
]
