"""msgm_pp: multiplicative score-based generative models as NumPyro distributions."""

from msgm_pp.baselines import SGM, VPScore, vp_schedule
from msgm_pp.distribution import MSGM
from msgm_pp.integrators import forward_sample, forward_sample_exact
from msgm_pp.io import load
from msgm_pp.latent import (
    AbstractNormModel,
    EmpiricalNorm,
    KDEGPDNorm,
    KDENorm,
    Latent,
    fit_norm_model,
)
from msgm_pp.nets import LatticeScoreNet, ScoreMLP, TimeMLP
from msgm_pp.noise import (
    AbstractNoise,
    DenseNoise,
    IsotropicNoise,
    LatticeNoise,
    TensorNoise,
)
from msgm_pp.schedule import LinearSchedule, mixing_schedule
from msgm_pp.score import TangentScore
from msgm_pp.train import TrainingHistory

__version__ = "0.1.0"

__all__ = [
    "MSGM",
    "SGM",
    "AbstractNoise",
    "AbstractNormModel",
    "DenseNoise",
    "EmpiricalNorm",
    "IsotropicNoise",
    "KDEGPDNorm",
    "KDENorm",
    "Latent",
    "LatticeNoise",
    "LatticeScoreNet",
    "LinearSchedule",
    "ScoreMLP",
    "TangentScore",
    "TensorNoise",
    "TimeMLP",
    "TrainingHistory",
    "VPScore",
    "fit_norm_model",
    "forward_sample",
    "forward_sample_exact",
    "load",
    "mixing_schedule",
    "vp_schedule",
]
