"""msgm_pp: multiplicative score-based generative models as NumPyro distributions."""

from msgm_pp.integrators import forward_sample, forward_sample_exact
from msgm_pp.noise import (
    AbstractNoise,
    DenseNoise,
    IsotropicNoise,
    LatticeNoise,
    TensorNoise,
)
from msgm_pp.schedule import LinearSchedule, mixing_schedule

__version__ = "0.1.0"

__all__ = [
    "AbstractNoise",
    "DenseNoise",
    "IsotropicNoise",
    "LatticeNoise",
    "LinearSchedule",
    "TensorNoise",
    "forward_sample",
    "forward_sample_exact",
    "mixing_schedule",
]
