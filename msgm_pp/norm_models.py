r"""Norm models: the learned 1-D law of ℓ = log |x|, the only part of the MSGM latent law that is
fitted (see :mod:`msgm_pp.latent`). Norm models work with ℓ = log r, where heavy tails become light
(a power law r^{−α} is the exponential tail e^{−αℓ}); their `log_prob` is the density of ℓ, so
p_r(r) = p_ℓ(log r)/r.

- :class:`EmpiricalNorm` ("empirical", as in the paper): the piecewise-linear interpolation of the
  empirical CDF of ℓ through the order statistics. Its support is [ℓ_min, ℓ_max].
- :class:`KDENorm` ("kde"): a Gaussian kernel density in ℓ with bandwidth h (Silverman's rule by
  default), built on the data linearly binned onto a grid of step ≤ h/10. `sample` draws a bin and
  adds h·N(0, 1), so samples follow exactly the density that `log_prob` evaluates; the log-density is
  computed on the grid by log-sum-exp (no underflow between sparse tail points) and interpolated by
  cubic Hermite splines (C¹), continued outside the grid by its exact Gaussian tail.
- :class:`KDEGPDNorm` ("kde+gpd"): the KDE below a threshold u (the (1 − ζ) quantile of r; ζ = 0.05
  by default, 10/n on fewer than 200 points) and a generalised Pareto tail ζ·GPD(r − u; ξ, σ) above
  it, so samples can exceed the largest training norm. σ is fixed by continuity of the density at u,
  and ξ ≥ 0 is the maximum-likelihood estimate over the excesses (peaks over threshold); the tail
  index of the norm is α = 1/ξ. Like every peaks-over-threshold estimate it is exact for
  Pareto-type tails and biased where the tail converges slowly to its power law (e.g. Student-t
  norms with ν ≳ 3 overestimate α by 10–25% at the 5% level).
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_ndtr, logsumexp, ndtr

from msgm_pp._checks import check_points, is_concrete
from msgm_pp.serialization import serializable

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _require(valid, what: str) -> None:
    if not bool(np.all(np.asarray(valid))):
        raise ValueError(f"a norm model needs {what}.")


def _finite(*arrays) -> bool:
    return all(bool(np.isfinite(np.asarray(a)).all()) for a in arrays)


def _increasing(values) -> bool:
    return bool((np.diff(np.asarray(values)) >= 0).all())


class AbstractNormModel(eqx.Module):
    """A 1-D law of ℓ = log |x|."""

    @abc.abstractmethod
    def log_prob(self, log_r):
        """log density of ℓ = log r, elementwise."""

    @abc.abstractmethod
    def cdf(self, log_r):
        """P(log |x| <= log_r), elementwise."""

    @abc.abstractmethod
    def sample(self, key, shape=()):
        """Draws of ℓ = log r with the given shape."""


@serializable
class EmpiricalNorm(AbstractNormModel):
    """Linear interpolation of the empirical CDF of ℓ through its distinct order statistics."""

    knots: jax.Array
    levels: jax.Array

    def __check_init__(self):
        if not is_concrete(self.knots):
            return
        _require(np.ndim(self.knots) == 1 and np.size(self.knots) >= 2, "at least 2 knots")
        _require(np.shape(self.levels) == np.shape(self.knots), "one level per knot")
        _require(_finite(self.knots, self.levels), "finite knots and levels")
        _require(_increasing(self.knots), "nondecreasing knots")
        _require(_increasing(self.levels), "nondecreasing levels")
        _require(
            (np.asarray(self.levels) >= 0) & (np.asarray(self.levels) <= 1), "levels in [0, 1]"
        )

    @classmethod
    def fit(cls, log_norms) -> "EmpiricalNorm":
        """The empirical law of the log-norms (a step CDF)."""
        values, counts = np.unique(np.asarray(log_norms, dtype=np.float64), return_counts=True)
        if values.size < 2:
            raise ValueError(
                "the empirical norm model needs at least 2 distinct norms in the data."
            )
        cumulative = np.cumsum(counts) - 0.5 * counts - 0.5 * counts[0]
        levels = cumulative / cumulative[-1]
        return cls(jnp.asarray(values), jnp.asarray(levels))

    def log_prob(self, log_r):
        log_r = jnp.asarray(log_r)
        i = jnp.clip(jnp.searchsorted(self.knots, log_r, side="right") - 1, 0, self.knots.size - 2)
        density = (self.levels[i + 1] - self.levels[i]) / (self.knots[i + 1] - self.knots[i])
        inside = (log_r >= self.knots[0]) & (log_r <= self.knots[-1])
        return jnp.where(inside, jnp.log(density), -jnp.inf)

    def cdf(self, log_r):
        return jnp.interp(log_r, self.knots, self.levels)

    def sample(self, key, shape=()):
        return jnp.interp(jax.random.uniform(key, shape), self.levels, self.knots)


def _hermite(x, start, step, values, slopes):
    """Cubic Hermite interpolation on a uniform grid (x is clipped to the grid)."""
    position = jnp.clip((x - start) / step, 0.0, values.size - 1.0)
    i = jnp.clip(jnp.floor(position), 0, values.size - 2).astype(jnp.int32)
    s = position - i
    s2, s3 = s * s, s * s * s
    return (
        (2 * s3 - 3 * s2 + 1) * values[i]
        + (s3 - 2 * s2 + s) * step * slopes[i]
        + (-2 * s3 + 3 * s2) * values[i + 1]
        + (s3 - s2) * step * slopes[i + 1]
    )


def silverman_bandwidth(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    spread = values.std()
    iqr = np.subtract(*np.percentile(values, [75, 25])) / 1.349
    if iqr > 0:
        spread = min(spread, iqr)
    if not spread > 1e-6:
        raise ValueError(
            f"all data have the same norm (log-norm spread {spread:.2g}): a smooth norm model needs "
            "the norms to vary by more than one part per million."
        )
    return 0.9 * spread * values.size ** (-0.2)


@serializable
class KDENorm(AbstractNormModel):
    """Gaussian KDE of ℓ on binned data; see the module docstring."""

    bandwidth: jax.Array
    grid_start: jax.Array
    grid_step: jax.Array
    bin_cdf: jax.Array
    log_density: jax.Array
    score: jax.Array
    cdf_values: jax.Array

    def __check_init__(self):
        if not is_concrete(self.bandwidth):
            return
        on_grid = (self.bin_cdf, self.log_density, self.score, self.cdf_values)
        _require(
            _finite(self.bandwidth, self.grid_start, self.grid_step, *on_grid), "finite values"
        )
        _require(
            (np.asarray(self.bandwidth) > 0) & (np.asarray(self.grid_step) > 0),
            "a positive bandwidth and grid step",
        )
        _require(np.ndim(self.bin_cdf) == 1 and np.size(self.bin_cdf) >= 2, "a grid of >= 2 points")
        _require(all(np.shape(a) == np.shape(self.bin_cdf) for a in on_grid), "equal grid arrays")
        _require(_increasing(self.bin_cdf) and _increasing(self.cdf_values), "nondecreasing CDFs")

    @classmethod
    def fit(cls, log_norms, bandwidth: float | None = None, max_grid: int = 8192) -> "KDENorm":
        """A Gaussian KDE of the log-norms (Silverman's bandwidth unless given), tabulated on a
        grid of at most `max_grid` points."""
        values = np.asarray(log_norms, dtype=np.float64)
        h = silverman_bandwidth(values) if bandwidth is None else float(bandwidth)
        if not h > 0:
            raise ValueError(f"`bandwidth` must be positive, got {bandwidth}.")
        start, stop = values.min() - 10 * h, values.max() + 10 * h
        step = max(h / 10, (stop - start) / (max_grid - 1))
        size = int(np.ceil((stop - start) / step)) + 1
        grid = start + step * np.arange(size)
        weights = _linear_binning(values, start, step, size)
        log_density, score, cdf = _binned_kde(grid, grid, weights, h)
        return cls(
            bandwidth=jnp.asarray(h),
            grid_start=jnp.asarray(start),
            grid_step=jnp.asarray(step),
            bin_cdf=jnp.asarray(np.cumsum(weights)),
            log_density=jnp.asarray(log_density),
            score=jnp.asarray(score),
            cdf_values=jnp.asarray(cdf),
        )

    @property
    def grid(self):
        """The log-norms at which the density and the CDF are tabulated."""
        return self.grid_start + self.grid_step * jnp.arange(self.log_density.size)

    def log_prob(self, log_r):
        log_r = jnp.asarray(log_r)
        inside = _hermite(log_r, self.grid_start, self.grid_step, self.log_density, self.score)
        h2 = self.bandwidth**2
        grid_end = self.grid_start + self.grid_step * (self.log_density.size - 1)
        below, above = log_r - self.grid_start, log_r - grid_end
        left = self.log_density[0] + self.score[0] * below - below**2 / (2 * h2)
        right = self.log_density[-1] + self.score[-1] * above - above**2 / (2 * h2)
        return jnp.where(below < 0, left, jnp.where(above > 0, right, inside))

    def cdf(self, log_r):
        density = jnp.exp(self.log_density)
        values = _hermite(log_r, self.grid_start, self.grid_step, self.cdf_values, density)
        return jnp.clip(values, 0.0, 1.0)

    def sample(self, key, shape=()):
        bin_key, noise_key = jax.random.split(key)
        bins = jnp.searchsorted(self.bin_cdf, jax.random.uniform(bin_key, shape) * self.bin_cdf[-1])
        bins = jnp.clip(bins, 0, self.bin_cdf.size - 1)
        centres = self.grid_start + self.grid_step * bins
        return centres + self.bandwidth * jax.random.normal(noise_key, shape)


def _linear_binning(values, start, step, size):
    position = (values - start) / step
    lower = np.floor(position).astype(np.int64)
    frac = position - lower
    weights = np.bincount(lower, 1 - frac, minlength=size) + np.bincount(
        lower + 1, frac, minlength=size
    )
    return weights[:size] / values.size


def _binned_kde(points, grid, weights, h, chunk=512):
    """log density, d/dℓ log density and CDF of Σ_j w_j N(g_j, h²) at `points`."""
    centres = grid[weights > 0]
    log_w = np.log(weights[weights > 0])
    log_density, score = np.empty_like(points), np.empty_like(points)
    cdf = np.empty_like(points)
    for lo in range(0, points.size, chunk):
        z = (points[lo : lo + chunk, None] - centres[None, :]) / h
        terms = log_w - 0.5 * z**2 - _LOG_SQRT_2PI - math.log(h)
        log_density[lo : lo + chunk] = logsumexp(terms, axis=1)
        responsibility = np.exp(terms - log_density[lo : lo + chunk, None])
        score[lo : lo + chunk] = -(responsibility * z).sum(axis=1) / h
        cdf[lo : lo + chunk] = (np.exp(log_w) * ndtr(z)).sum(axis=1)
    return log_density, score, cdf


DEFAULT_TAIL_FRACTION = 0.05


@serializable
class KDEGPDNorm(AbstractNormModel):
    """KDE body below the threshold u, generalised Pareto tail above; see the module docstring."""

    body: KDENorm
    log_threshold: jax.Array
    tail_mass: jax.Array
    shape_xi: jax.Array
    scale_sigma: jax.Array
    body_cdf_at_threshold: jax.Array
    truncated_bin_cdf: jax.Array

    def __check_init__(self):
        if not is_concrete(self.tail_mass):
            return
        scalars = (self.log_threshold, self.tail_mass, self.shape_xi, self.scale_sigma)
        _require(
            _finite(*scalars, self.body_cdf_at_threshold, self.truncated_bin_cdf), "finite values"
        )
        _require(
            (np.asarray(self.tail_mass) > 0) & (np.asarray(self.tail_mass) < 1),
            "a tail mass in (0, 1)",
        )
        _require(
            (np.asarray(self.shape_xi) >= 0) & (np.asarray(self.scale_sigma) > 0),
            "a tail shape >= 0 and a positive tail scale",
        )
        _require(
            np.shape(self.truncated_bin_cdf) == np.shape(self.body.bin_cdf),
            "the truncated CDF on the body's grid",
        )

    @classmethod
    def fit(
        cls,
        log_norms,
        tail_fraction: float | None = None,
        bandwidth: float | None = None,
        min_exceedances: int = 10,
    ) -> "KDEGPDNorm":
        """A KDE body and a generalised Pareto tail fitted to the largest `tail_fraction` of the
        log-norms (see the class docstring).

        `tail_fraction` None (the default) is 0.05, or on fewer than 20 · `min_exceedances`
        points the fraction that leaves `min_exceedances` points above the threshold (10 of 100
        points: peaks over threshold on small samples keep a fixed small number of exceedances).
        A given `tail_fraction` is used as it is."""
        values = np.sort(np.asarray(log_norms, dtype=np.float64))
        n = values.size
        if tail_fraction is None:
            tail_fraction = max(DEFAULT_TAIL_FRACTION, min_exceedances / n)
            if not tail_fraction < 0.5:
                raise ValueError(
                    f"the GPD tail needs at least {min_exceedances} points above the threshold "
                    f"and more below it, and n={n} has too few: use more data or norm='kde'."
                )
        if not 0 < tail_fraction < 0.5:
            raise ValueError(f"`tail_fraction` must lie in (0, 0.5), got {tail_fraction}.")
        body = KDENorm.fit(values, bandwidth)
        num_tail = round(tail_fraction * n)
        if num_tail < min_exceedances:
            raise ValueError(
                f"the GPD tail needs at least {min_exceedances} points above the threshold, but "
                f"tail_fraction={tail_fraction} of n={n} gives {num_tail}: use more data, a larger "
                "tail_fraction, or norm='kde'."
            )
        log_u = 0.5 * (values[n - num_tail - 1] + values[n - num_tail])
        zeta = num_tail / n
        excess = np.exp(values[n - num_tail :]) - math.exp(log_u)
        h = float(body.bandwidth)
        grid = np.asarray(body.grid)
        weights = np.diff(np.asarray(body.bin_cdf), prepend=0.0)
        log_p_u, _, body_cdf_u = _binned_kde(np.array([log_u]), grid, weights, h)
        body_cdf_u = float(body_cdf_u[0])
        sigma = zeta * body_cdf_u * math.exp(log_u) / ((1 - zeta) * math.exp(log_p_u[0]))
        xi = _gpd_shape_mle(excess / sigma)
        truncated = weights * np.exp(log_ndtr((log_u - grid) / h))
        return cls(
            body=body,
            log_threshold=jnp.asarray(log_u),
            tail_mass=jnp.asarray(zeta),
            shape_xi=jnp.asarray(xi),
            scale_sigma=jnp.asarray(sigma),
            body_cdf_at_threshold=jnp.asarray(body_cdf_u),
            truncated_bin_cdf=jnp.asarray(np.cumsum(truncated)),
        )

    @property
    def tail_index(self):
        """α = 1/ξ: P(|x| > r) ~ r^{−α}."""
        return 1.0 / self.shape_xi

    def _tail_terms(self, log_r):
        """t = (r − u)/σ and q = ξ t above the threshold (clamped to 0 below it)."""
        t = jnp.maximum(
            jnp.exp(log_r - jnp.log(self.scale_sigma))
            - jnp.exp(self.log_threshold) / self.scale_sigma,
            0.0,
        )
        return t, self.shape_xi * t

    def log_prob(self, log_r):
        log_r = jnp.asarray(log_r)
        body = (
            self.body.log_prob(log_r)
            + jnp.log1p(-self.tail_mass)
            - jnp.log(self.body_cdf_at_threshold)
        )
        t, q = self._tail_terms(log_r)
        tail = (
            jnp.log(self.tail_mass)
            - jnp.log(self.scale_sigma)
            - jnp.log1p(q)
            - t * _log1p_ratio(q)
            + log_r
        )
        return jnp.where(log_r <= self.log_threshold, body, tail)

    def cdf(self, log_r):
        log_r = jnp.asarray(log_r)
        body = (1 - self.tail_mass) * self.body.cdf(log_r) / self.body_cdf_at_threshold
        t, q = self._tail_terms(log_r)
        tail = 1.0 - self.tail_mass * jnp.exp(-t * _log1p_ratio(q))
        return jnp.where(log_r <= self.log_threshold, jnp.minimum(body, 1 - self.tail_mass), tail)

    def sample(self, key, shape=()):
        choose_key, bin_key, body_key, tail_key = jax.random.split(key, 4)
        body = self.body
        cdf = self.truncated_bin_cdf
        bins = jnp.searchsorted(cdf, jax.random.uniform(bin_key, shape) * cdf[-1])
        centres = body.grid_start + body.grid_step * jnp.clip(bins, 0, cdf.size - 1)
        upper = (self.log_threshold - centres) / body.bandwidth
        body_draw = centres + body.bandwidth * jax.random.truncated_normal(
            body_key, -jnp.inf, upper, shape
        )
        w = jax.random.exponential(tail_key, shape)
        a = self.shape_xi * w
        log_growth = jnp.where(
            a > 1e-6,
            a + jnp.log(-jnp.expm1(-jnp.maximum(a, 1e-6))) - jnp.log(jnp.maximum(a, 1e-6)),
            0.5 * a,
        )
        log_excess = jnp.log(self.scale_sigma) + jnp.log(w) + log_growth
        tail_draw = jnp.logaddexp(self.log_threshold, log_excess)
        in_tail = jax.random.uniform(choose_key, shape) < self.tail_mass
        return jnp.where(in_tail, tail_draw, body_draw)


def _log1p_ratio(q):
    """log1p(q)/q, continuous at q = 0."""
    safe = jnp.where(q > 1e-6, q, 1.0)
    return jnp.where(q > 1e-6, jnp.log1p(safe) / safe, 1.0 - 0.5 * q)


def _gpd_shape_mle(scaled_excess, max_shape: float = 10.0) -> float:
    """ξ ∈ [0, max_shape] maximising the GPD log-likelihood of excesses already divided by σ."""
    t = np.asarray(scaled_excess, dtype=np.float64)

    def negative_log_likelihood(xi):
        if xi < 1e-8:
            return t.sum()
        return (1.0 + 1.0 / xi) * np.log1p(xi * t).sum()

    result = minimize_scalar(
        negative_log_likelihood, bounds=(0.0, max_shape), method="bounded", options={"xatol": 1e-6}
    )
    return float(result.x)


NORM_MODELS = {"empirical": EmpiricalNorm, "kde": KDENorm, "kde+gpd": KDEGPDNorm}


def fit_norm_model(data, kind: str = "kde+gpd", **options) -> AbstractNormModel:
    """Fit a norm model to the norms of `data` (n, d). `kind` is "empirical", "kde" or "kde+gpd";
    `options` go to the model's `fit` (bandwidth, tail_fraction)."""
    if kind not in NORM_MODELS:
        raise ValueError(f"unknown norm model {kind!r}; choose one of {sorted(NORM_MODELS)}.")
    check_points(data, "data")
    x = np.asarray(data, dtype=np.float64)
    scale = np.abs(x).max(axis=1, keepdims=True)  # |x| itself overflows float64 beyond 1e154
    log_norms = np.log(scale[:, 0]) + 0.5 * np.log(np.sum((x / scale) ** 2, axis=1))
    return NORM_MODELS[kind].fit(log_norms, **options)
