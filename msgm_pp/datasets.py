"""Data sets with known densities."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from msgm_pp._checks import check_dim


class CorrelatedCauchy(dist.Distribution):
    r"""x = A z with z_i iid Cauchy(0, scale): the paper's heavy-tailed benchmark.

    p(x) = Π_i Cauchy((A⁻¹ x)_i; 0, scale) / |det A|. The norm has tail index 1.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    pytree_data_fields = ("mixing", "scale")

    def __init__(self, mixing, scale=1.0 / 50.0, *, validate_args=None):
        mixing = jnp.asarray(mixing)
        if mixing.ndim != 2 or mixing.shape[0] != mixing.shape[1]:
            raise ValueError(f"`mixing` must be a square matrix, got shape {mixing.shape}.")
        check_dim(mixing.shape[0], "mixing.shape[0]")
        self.mixing, self.scale = mixing, jnp.asarray(scale)
        super().__init__(event_shape=mixing.shape[:1], validate_args=validate_args)

    @classmethod
    def paper_task(cls, d: int = 4, seed: int = 0) -> "CorrelatedCauchy":
        """A fixed d×d standard-normal mixing matrix (numpy seed `seed`) and scale 1/50."""
        return cls(np.random.default_rng(seed).standard_normal((check_dim(d), d)))

    def sample(self, key, sample_shape=()):
        z = self.scale * jax.random.cauchy(key, (*sample_shape, *self.event_shape))
        return z @ self.mixing.T

    def log_prob(self, value):
        z = jnp.linalg.solve(
            self.mixing, jnp.moveaxis(value, -1, 0).reshape(self.event_shape[0], -1)
        )
        z = z.T.reshape(value.shape)
        terms = dist.Cauchy(0.0, self.scale).log_prob(z)
        return terms.sum(-1) - jnp.linalg.slogdet(self.mixing)[1]
