"""msgm_pp: multiplicative score-based generative models as NumPyro distributions."""

from msgm_pp._version import __version__
from msgm_pp.coordinates import AffineCoordinates, CoordinateScaling
from msgm_pp.density import ExactTrace, HutchinsonTrace, ODEDensity
from msgm_pp.forward import forward_sample, forward_sample_exact
from msgm_pp.latent import Latent
from msgm_pp.losses import ScoreMatchingLoss
from msgm_pp.msgm import MSGM
from msgm_pp.nets import LatticeScoreNet, ScoreMLP, TimeMLP
from msgm_pp.noise import (
    AbstractNoise,
    DenseNoise,
    IsotropicNoise,
    LatticeNoise,
    TensorNoise,
)
from msgm_pp.norm_models import (
    AbstractNormModel,
    EmpiricalNorm,
    KDEGPDNorm,
    KDENorm,
    fit_norm_model,
)
from msgm_pp.posterior import TwistedSMC
from msgm_pp.samplers import ODESampler, SDESampler
from msgm_pp.schedule import LinearSchedule, mixing_schedule
from msgm_pp.score import TangentScore
from msgm_pp.score_based import lowest_validation_score, one_standard_error_rule
from msgm_pp.serialization import load
from msgm_pp.sgm import SGM, VPLoss, VPScore, vp_schedule
from msgm_pp.split_gibbs import SplitGibbs
from msgm_pp.training import TrainingHistory, fit_network, train
from msgm_pp.twists import EnergyTwist, TweedieTwist

__all__ = [
    "MSGM",
    "SGM",
    "AbstractNoise",
    "AbstractNormModel",
    "AffineCoordinates",
    "CoordinateScaling",
    "DenseNoise",
    "EmpiricalNorm",
    "EnergyTwist",
    "ExactTrace",
    "HutchinsonTrace",
    "IsotropicNoise",
    "KDEGPDNorm",
    "KDENorm",
    "Latent",
    "LatticeNoise",
    "LatticeScoreNet",
    "LinearSchedule",
    "ODEDensity",
    "ODESampler",
    "SDESampler",
    "ScoreMLP",
    "ScoreMatchingLoss",
    "SplitGibbs",
    "TangentScore",
    "TensorNoise",
    "TimeMLP",
    "TrainingHistory",
    "TweedieTwist",
    "TwistedSMC",
    "VPLoss",
    "VPScore",
    "__version__",
    "fit_network",
    "fit_norm_model",
    "forward_sample",
    "forward_sample_exact",
    "load",
    "lowest_validation_score",
    "mixing_schedule",
    "one_standard_error_rule",
    "train",
    "vp_schedule",
]
