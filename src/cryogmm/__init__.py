"""cryogmm: Gaussian-mixture ("pseudo-atom") densities for single-particle cryo-EM.

The package turns maps, class averages and particle images into isotropic Gaussian mixtures by
expectation maximisation and Gibbs sampling. Importing it has no side effects: it configures no
logging and touches no files.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryogmm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
