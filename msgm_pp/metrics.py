r"""Sample-quality and tail metrics for comparing generated samples x (n, d) with data y (m, d).

Two-sample distances (compiled, in float64 and in blocks of rows, so 1e4 × 1e4 pairs take a
few seconds and little memory):

- :func:`mmd`: √MMD with the paper's kernel k(a, b) = exp(−|a − b|²/d²) (biased V-statistic
  MMD² = mean k(x, x') + mean k(y, y') − 2 mean k(x, y), which is never negative).
- :func:`heavy_tail_mmd`: √MMD on :func:`robust_transform`-ed samples (asinh of robustly
  standardised coordinates, which turns power-law tails into exponential ones) with a mixture of
  Gaussian kernels whose bandwidths are multiples of the median pairwise distance of the
  transformed reference. The paper's kernel sees only the bulk of heavy-tailed data (points
  further apart than d are all "far"); this one also sees where the extremes are.
- :func:`energy_distance`: √(2 E|X − Y| − E|X − X'| − E|Y − Y'|), as `scipy.stats.energy_distance`
  in one dimension. It needs finite first moments; for Cauchy-like data apply
  :func:`robust_transform` first.
- :func:`sliced_wasserstein`: the p-Wasserstein distance averaged over random 1-D projections.

Tails:

- :func:`hill_tail_index` and :func:`gpd_tail_index`: the tail index α of positive values (e.g.
  norms), P(V > v) ~ v^(−α), from the largest order statistics (Hill) or a generalised Pareto fit
  to the excesses over a high quantile (peaks over threshold; α = 1/ξ).
- :func:`tail_quantile_errors`: relative errors of the 0.9, 0.99 and 0.999 quantiles of |x| and
  of each |x_i|.
- :func:`survival_function`: (v, P(V > v)) points for log-log survival plots.
"""

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

# jax.enable_x64 is public from jax 0.8 on; before that it lives in jax.experimental.
_enable_x64 = getattr(jax, "enable_x64", None)
if _enable_x64 is None:
    from jax.experimental import enable_x64 as _enable_x64

_BLOCK_ROWS = 1024


def _as_samples(x, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty (n, d) array, got shape {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` has {x.shape[1]} columns but the other sample has {dim}.")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"`{name}` has NaN or inf entries in {rows.size} row(s), e.g. at {rows[:10].tolist()}."
        )
    return x


def _pair(x, y):
    x = _as_samples(x, "x")
    return x, _as_samples(y, "y", x.shape[1])


@partial(jax.jit, static_argnames="kind")
def _pairwise_mean(a, b, squared_widths, kind: str):
    b_norms = jnp.sum(b**2, axis=1)

    def row_sum(row):
        squared = jnp.maximum(jnp.sum(row**2) + b_norms - 2.0 * (b @ row), 0.0)
        if kind == "distance":
            return jnp.sum(jnp.sqrt(squared))
        return jnp.sum(jnp.mean(jnp.exp(-squared[:, None] / squared_widths), axis=1))

    return jnp.sum(jax.lax.map(row_sum, a, batch_size=_BLOCK_ROWS)) / (a.shape[0] * b.shape[0])


def _mean_pairwise(a, b, squared_widths=(), kind: str = "gaussian") -> float:
    """Mean over all pairs of mean_j exp(−|a_i − b_k|²/w_j) (kind "gaussian") or of |a_i − b_k|
    (kind "distance"), in float64, compiled, in blocks of rows."""
    with _enable_x64(True):
        value = _pairwise_mean(
            jnp.asarray(a, jnp.float64),
            jnp.asarray(b, jnp.float64),
            jnp.asarray(squared_widths, jnp.float64),
            kind,
        )
        return float(value)


def _root_mmd(x, y, squared_widths) -> float:
    squared = (
        _mean_pairwise(x, x, squared_widths)
        + _mean_pairwise(y, y, squared_widths)
        - 2 * _mean_pairwise(x, y, squared_widths)
    )
    return math.sqrt(max(squared, 0.0))


def mmd(x, y, *, bandwidth: float | None = None) -> float:
    """√MMD between samples x (n, d) and y (m, d) with kernel exp(−|a − b|²/h²), h = d by default
    (the paper's), as a biased V-statistic."""
    x, y = _pair(x, y)
    h = float(x.shape[1]) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"`bandwidth` must be positive, got {bandwidth}.")
    return _root_mmd(x, y, [h**2])


def robust_transform(x, reference):
    """asinh((x − median)/MAD) per coordinate, with the median and the median absolute deviation
    (× 1.4826, the standard deviation for Gaussian data) of `reference`.

    Bulk values map almost linearly and a power-law tail |v|^(−α) becomes an exponential tail
    e^(−α|z|), so distances between transformed points weigh the tails and the bulk alike.
    """
    reference = _as_samples(reference, "reference")
    x = _as_samples(x, "x", reference.shape[1])
    center = np.median(reference, axis=0)
    spread = 1.4826 * np.median(np.abs(reference - center), axis=0)
    flat = np.flatnonzero(~(spread > 0))
    if flat.size:
        raise ValueError(
            f"`reference` columns {flat.tolist()} have zero median absolute deviation."
        )
    return np.arcsinh((x - center) / spread)


def median_distance(x, max_rows: int = 2000) -> float:
    """The median pairwise distance among (up to `max_rows` evenly spaced) rows of x, computed in
    blocks of rows so that memory stays at about 2^22 numbers whatever d is."""
    x = _as_samples(x, "x")
    x = x[:: max(1, math.ceil(x.shape[0] / max_rows))]
    n, d = x.shape
    block = max(1, 2**22 // (n * d))
    upper = []
    for start in range(0, n - 1, block):
        rows = x[start : start + block]
        squared = np.sum((rows[:, None, :] - x[None, :, :]) ** 2, axis=-1)
        row, column = np.nonzero(
            np.arange(n)[None, :] > np.arange(start, start + len(rows))[:, None]
        )
        upper.append(squared[row, column])
    return float(np.sqrt(np.median(np.concatenate(upper))))


def heavy_tail_mmd(x, y, *, reference=None, multipliers=(0.5, 1.0, 2.0)) -> float:
    """√MMD with the kernel mean_j exp(−|a − b|²/(2 (c_j h)²)) on `robust_transform`-ed samples.

    Both samples are transformed with the statistics of `reference` (default y), and h is the median
    pairwise distance of the transformed reference, so the metric is a fixed function of the two
    samples given the reference.
    """
    x, y = _pair(x, y)
    reference = y if reference is None else reference
    tx, ty = robust_transform(x, reference), robust_transform(y, reference)
    h = median_distance(robust_transform(reference, reference))
    widths = np.asarray(multipliers, dtype=np.float64) * h
    if widths.ndim != 1 or widths.size == 0 or not np.all(widths > 0):
        raise ValueError(f"`multipliers` must be positive numbers, got {multipliers!r}.")
    return _root_mmd(tx, ty, 2 * widths**2)


def energy_distance(x, y) -> float:
    """√(2 E|X − Y| − E|X − X'| − E|Y − Y'|) between samples x (n, d) and y (m, d)."""
    x, y = _pair(x, y)
    squared = (
        2 * _mean_pairwise(x, y, kind="distance")
        - _mean_pairwise(x, x, kind="distance")
        - _mean_pairwise(y, y, kind="distance")
    )
    return math.sqrt(max(squared, 0.0))


def _quantile_function(values, levels):
    return np.quantile(values, levels, axis=0, method="inverted_cdf")


def sliced_wasserstein(x, y, *, num_projections: int = 256, p: float = 1.0, seed: int = 0) -> float:
    """(mean over random unit directions θ of W_p(θ·x, θ·y)^p)^(1/p).

    The one-dimensional W_p compares the empirical quantile functions on the grid (i + ½)/N,
    N = max(n, m); for n = m this is exact (sorted values matched one to one). Directions are
    drawn from `seed`, so the value is a fixed function of the samples.
    """
    x, y = _pair(x, y)
    if not p >= 1:
        raise ValueError(f"`p` must be >= 1, got {p}.")
    directions = np.random.default_rng(seed).standard_normal((num_projections, x.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    px, py = np.sort(x @ directions.T, axis=0), np.sort(y @ directions.T, axis=0)
    if len(x) != len(y):
        levels = (np.arange(max(len(x), len(y))) + 0.5) / max(len(x), len(y))
        px, py = _quantile_function(px, levels), _quantile_function(py, levels)
    return float(np.mean(np.abs(px - py) ** p) ** (1 / p))


class TailIndex(NamedTuple):
    """An estimate of the tail index α, P(V > v) ~ v^(−α), from the `num_exceedances` values
    above `threshold`; `stderr` is the asymptotic standard error."""

    alpha: float
    stderr: float
    threshold: float
    num_exceedances: int


def _positive(values, name: str = "values") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"`{name}` must be finite and positive; {rows.size} are not, e.g. at {rows[:10].tolist()}."
        )
    return values


def _num_exceedances(n: int, tail_fraction: float) -> int:
    if not 0 < tail_fraction < 1:
        raise ValueError(f"`tail_fraction` must lie in (0, 1), got {tail_fraction}.")
    k = round(tail_fraction * n)
    if k < 10 or k >= n:
        raise ValueError(
            f"{n} values with tail_fraction={tail_fraction} leave {k} exceedances; at least 10 "
            "are needed (and fewer than all of them)."
        )
    return k


def hill_tail_index(values, *, tail_fraction: float = 0.05) -> TailIndex:
    """Hill's estimator from the k = tail_fraction · n largest values:
    α̂ = k / Σ_{i<k} (log V_(n−i) − log V_(n−k)); its standard error is α̂/√k."""
    values = np.sort(_positive(values))
    k = _num_exceedances(values.size, tail_fraction)
    threshold = values[-k - 1]
    alpha = k / float(np.sum(np.log(values[-k:]) - math.log(threshold)))
    return TailIndex(alpha, alpha / math.sqrt(k), float(threshold), k)


def gpd_tail_index(values, *, tail_fraction: float = 0.05) -> TailIndex:
    """α = 1/ξ from a maximum-likelihood generalised Pareto fit (scipy) to the excesses over the
    (1 − tail_fraction) quantile; the standard error uses Var ξ̂ ≈ (1 + ξ)²/k. A light tail
    (ξ <= 0) gives α = inf."""
    values = np.sort(_positive(values))
    k = _num_exceedances(values.size, tail_fraction)
    threshold = values[-k - 1]
    shape, _, _ = stats.genpareto.fit(values[-k:] - threshold, floc=0.0)
    if shape <= 0:
        return TailIndex(math.inf, math.nan, float(threshold), k)
    shape_stderr = (1 + shape) / math.sqrt(k)
    return TailIndex(1 / shape, shape_stderr / shape**2, float(threshold), k)


def tail_quantile_errors(x, y, levels=(0.9, 0.99, 0.999)) -> dict:
    """Relative errors (q_x − q_y)/q_y of the `levels` quantiles of |x| (the norm) and of each |x_i|,
    with y the reference. Returns {"levels": (L,), "norm": (L,), "coordinates": (d, L)}."""
    x, y = _pair(x, y)
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"`levels` must be quantile levels in (0, 1), got {levels.tolist()}.")

    def relative(a, b):
        qa, qb = np.quantile(a, levels, axis=0), np.quantile(b, levels, axis=0)
        return ((qa - qb) / qb).T

    return {
        "levels": levels,
        "norm": relative(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)),
        "coordinates": relative(np.abs(x), np.abs(y)),
    }


def survival_function(values, *, num_points: int = 200):
    """(v, P(V > v)) at up to `num_points` order statistics of positive `values`, evenly spaced in
    log-rank over all order statistics but the largest, for log-log survival plots."""
    values = np.sort(_positive(values))
    n = values.size
    exceed = np.unique(np.geomspace(1, max(1, n - 1), num_points).round().astype(int))
    return values[n - exceed - 1], exceed / n
