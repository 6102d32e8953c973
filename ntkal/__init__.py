"""ntkal: force-aware neural tangent kernels for active learning of ML interatomic potentials."""

__version__ = "0.1.0"
