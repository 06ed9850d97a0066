r"""The MSGM latent law, the distribution the forward process ends in.

The forward process keeps |x| and makes the direction uniform, so the latent law is

    p_∞(x) = p_r(|x|) |x|^{1−d} / |S^{d−1}|,   |S^{d−1}| = 2π^{d/2} / Γ(d/2),

with p_r given by a norm model (:mod:`msgm_pp.norm_models`) as a density of ℓ = log r:
p_r(r) = p_ℓ(log r)/r.
"""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

from msgm_pp._checks import check_dim
from msgm_pp.norm_models import AbstractNormModel, fit_norm_model
from msgm_pp.sphere import log_norm, log_sphere_area


class Latent(dist.Distribution):
    r"""The MSGM latent law p_∞(x) = p_r(|x|) |x|^{1−d} / |S^{d−1}| on R^d.

    The direction is uniform on S^{d−1} and independent of the norm, whose law is `norm_model`.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    pytree_data_fields = ("norm_model",)
    pytree_aux_fields = ("dim",)

    def __init__(self, norm_model: AbstractNormModel, dim: int, *, validate_args=None):
        if not isinstance(norm_model, AbstractNormModel):
            raise TypeError(
                f"`norm_model` must be a msgm_pp norm model, got {type(norm_model).__name__}."
            )
        self.norm_model = norm_model
        self.dim = check_dim(dim, "dim")
        super().__init__(batch_shape=(), event_shape=(self.dim,), validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        """False: the norm model is sampled by its inverse CDF on a grid, not reparametrised."""
        return False

    @classmethod
    def fit(cls, data, norm: str = "kde+gpd", **options) -> "Latent":
        """Fit the norm model of the data (n, d) and return the latent law."""
        norm_model = fit_norm_model(data, norm, **options)
        return cls(norm_model, np.shape(data)[1])

    def sample_polar(self, key, sample_shape=()):
        """Draws as (log-norms ℓ of shape sample_shape, unit directions of shape sample_shape + (d,))."""
        norm_key, direction_key = jax.random.split(key)
        shape = tuple(sample_shape) + self.batch_shape
        log_r = self.norm_model.sample(norm_key, shape)
        z = jax.random.normal(direction_key, (*shape, self.dim))
        return log_r, z / jnp.linalg.norm(z, axis=-1, keepdims=True)

    def sample(self, key, sample_shape=()):
        log_r, u = self.sample_polar(key, sample_shape)
        return jnp.exp(log_r)[..., None] * u

    @validate_sample
    def log_prob(self, value):
        log_r = log_norm(value)
        return self.norm_model.log_prob(log_r) - self.dim * log_r - log_sphere_area(self.dim)
