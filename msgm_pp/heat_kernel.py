r"""The heat kernel of Brownian motion on S^{d−1} and the exact sampler of isotropic noise.

Under isotropic noise the direction is Brownian motion on the sphere with generator ½ Δ_S run for
τ = ∫β. Its transition density depends only on c = u_τ · u_0 = cos θ (d ≥ 3, λ = (d − 2)/2):

    f_τ(c) = Σ_{l≥0} exp(−l(l+d−2)τ/2) (l+λ)/λ C_l^{(λ)}(c) / |S^{d−1}|,

so E[C_l^{(λ)}(c)] / C_l^{(λ)}(1) = exp(−l(l+d−2)τ/2). For small τ the series converges slowly
and cancels; there the short-time expansion with its first transport correction is used,

    f_τ(θ) ≈ (2πτ)^{−(d−1)/2} (θ/sin θ)^k exp(−θ²/2τ) exp(τ/2 [k² + k(1−k)(1/θ − cot θ)/θ]),

with k = (d − 2)/2 (obtained from the transport equations of the parametrix on S^{d−1}).
The angle θ has density |S^{d−2}| f_τ(cos θ) sin^{d−2} θ on [0, π].

Exact sampling: the quantiles of θ are tabulated once per d in float64, on a log grid of τ, choosing
per τ the series where it is numerically reliable and the short-time form below that; the
discrepancy of the two at the switch is recorded (`AngleTable.switch_error`, a sup-norm CDF
distance). Then u_τ = cos θ u_0 + sin θ w, with w uniform on the unit sphere of u_0^⊥.
For d = 2 the angle is exactly a wrapped normal, √τ N(0, 1), and no table is needed.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import cumulative_simpson
from scipy.special import gammaln

MAX_TABULATED_DIM = 64
_N_TAU = 400
_N_PROB = 1025
_N_THETA = 2049
_SERIES_TAIL = 40.0  # terms are dropped once exp(-l(l+d-2)τ/2) < e^-40
_MAX_TERMS = 1000


def log_sphere_area(d) -> float:
    """log |S^{d−1}|, the area of the unit sphere in R^d: |S^{d−1}| = 2 π^{d/2} / Γ(d/2)."""
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d))


def _series_angle_density(theta, tau, d):
    lam = 0.5 * (d - 2)
    n_terms = math.ceil(math.sqrt(2.0 * _SERIES_TAIL / tau + (0.5 * (d - 2)) ** 2)) + 2
    if n_terms > _MAX_TERMS:
        return None
    c = np.cos(theta)
    prev, cur = np.ones_like(c), 2.0 * lam * c
    total = prev + math.exp(-0.5 * (d - 1) * tau) * (1.0 + lam) / lam * cur
    for l in range(2, n_terms):
        prev, cur = cur, (2.0 * (l + lam - 1.0) * c * cur - (l + 2.0 * lam - 2.0) * prev) / l
        total += math.exp(-0.5 * l * (l + d - 2) * tau) * (l + lam) / lam * cur
    log_ratio = log_sphere_area(d - 1) - log_sphere_area(d)
    return total * math.exp(log_ratio) * np.sin(theta) ** (d - 2)


@np.errstate(over="ignore", divide="ignore", invalid="ignore")
def _short_time_angle_density(theta, tau, d):
    k = 0.5 * (d - 2)
    t = np.maximum(theta, 1e-300)
    small = theta < 1e-4
    t_safe = np.where(small, 1.0, t)
    curvature = np.where(small, 1.0 / 3.0, (1.0 / t_safe - 1.0 / np.tan(t_safe)) / t_safe)
    log_f = (
        -0.5 * (d - 1) * math.log(2.0 * math.pi * tau)
        - theta**2 / (2.0 * tau)
        + k * np.where(small, 0.0, np.log(t_safe) - np.log(np.sin(t_safe)))
        + 0.5 * tau * (k * k + k * (1.0 - k) * curvature)
    )
    return np.exp(log_f + log_sphere_area(d - 1) + (d - 2) * np.log(np.sin(t)))


def _theta_grid(tau, d):
    upper = min(math.pi, math.sqrt(tau) * (math.sqrt(d - 1) + 12.0))
    return np.linspace(0.0, upper, _N_THETA)


def _normalised_cdf(density, theta):
    cdf = np.maximum.accumulate(cumulative_simpson(density, x=theta, initial=0.0))
    return cdf / cdf[-1], cdf[-1]


def _series_is_reliable(density, mass) -> bool:
    return density is not None and density.min() >= -1e-10 * density.max() and abs(mass - 1) < 1e-6


def angle_cdf(theta_grid, tau, d):
    """CDF of θ on `theta_grid` (increasing, from 0) at intensity τ, computed as the table is."""
    density = _series_angle_density(theta_grid, tau, d) if d > 2 else None
    if density is not None:
        cdf, mass = _normalised_cdf(density, theta_grid)
        if _series_is_reliable(density, mass):
            return cdf
    return _normalised_cdf(_short_time_angle_density(theta_grid, tau, d), theta_grid)[0]


class AngleTable(NamedTuple):
    """Quantiles z(τ, p) = θ_p(τ) / √τ on a log-τ grid and a Chebyshev-clustered p grid."""

    log_tau: np.ndarray
    z: np.ndarray
    switch_tau: float
    switch_error: float


def _probability_grid():
    return 0.5 * (1.0 - np.cos(np.pi * np.arange(_N_PROB) / (_N_PROB - 1)))


@functools.lru_cache(maxsize=16)
def angle_table(d: int) -> AngleTable:
    """Build (once per d) the quantile table of θ = arccos(u_τ · u_0); see the module docstring."""
    if not 3 <= d <= MAX_TABULATED_DIM:
        raise ValueError(
            f"the exact isotropic sampler is tabulated for 3 <= d <= {MAX_TABULATED_DIM}, got d = {d}; "
            "use msgm_pp.forward_sample (the geodesic integrator) in higher dimension."
        )
    tau_max = 2.0 * (math.log(1e10) + math.log(d)) / (d - 1)
    tau_min = 1e-6 / d**2
    taus = np.geomspace(tau_min, tau_max, _N_TAU)
    probs = _probability_grid()
    z = np.empty((_N_TAU, _N_PROB))
    switch_tau, switch_error, series_cdf, use_series = tau_min, 0.0, None, True
    for i in reversed(range(_N_TAU)):
        tau, theta = taus[i], _theta_grid(taus[i], d)
        density = _series_angle_density(theta, tau, d) if use_series else None
        if density is not None:
            cdf, mass = _normalised_cdf(density, theta)
            use_series = _series_is_reliable(density, mass)
        else:
            use_series = False
        if use_series:
            switch_tau, series_cdf = tau, cdf
        else:
            if series_cdf is not None:
                previous = _theta_grid(switch_tau, d)
                short = _normalised_cdf(
                    _short_time_angle_density(previous, switch_tau, d), previous
                )[0]
                switch_error, series_cdf = float(np.abs(short - series_cdf).max()), None
            cdf = _normalised_cdf(_short_time_angle_density(theta, tau, d), theta)[0]
        z[i] = np.interp(probs, cdf, theta) / math.sqrt(tau)
    return AngleTable(np.log(taus), z, float(switch_tau), switch_error)


def angle_quantile(p, tau, d: int):
    """The p-quantile of θ = arccos(u_τ · u_0) for Brownian motion on S^{d−1} (3 <= d <= 64),
    interpolated bilinearly in (log τ, p) from :func:`angle_table`; below the table's smallest τ the
    short-time scaling θ ∝ √τ is exact to the table's accuracy, above its largest τ the law is
    uniform on the sphere to 1e-10."""
    table = angle_table(d)
    p, tau = jnp.broadcast_arrays(jnp.asarray(p), jnp.asarray(tau))
    dtype = jnp.result_type(p.dtype, tau.dtype, float)
    p, tau = p.astype(dtype), tau.astype(dtype)
    log_tau, z = jnp.asarray(table.log_tau, dtype), jnp.asarray(table.z, dtype)
    p_index = jnp.arccos(1.0 - 2.0 * p) * ((_N_PROB - 1) / math.pi)
    j = jnp.clip(jnp.floor(p_index), 0, _N_PROB - 2).astype(jnp.int32)
    wj = p_index - j
    step = (table.log_tau[-1] - table.log_tau[0]) / (_N_TAU - 1)
    clipped = jnp.clip(jnp.log(jnp.maximum(tau, jnp.finfo(dtype).tiny)), log_tau[0], log_tau[-1])
    t_index = (clipped - log_tau[0]) / step
    k = jnp.clip(jnp.floor(t_index), 0, _N_TAU - 2).astype(jnp.int32)
    wk = t_index - k
    z_lo = (1 - wj) * z[k, j] + wj * z[k, j + 1]
    z_hi = (1 - wj) * z[k + 1, j] + wj * z[k + 1, j + 1]
    scale = jnp.sqrt(jnp.minimum(tau, jnp.exp(log_tau[-1])))
    return ((1 - wk) * z_lo + wk * z_hi) * scale


def sample_angle(key, tau, d: int):
    """Draw θ = arccos(u_τ · u_0) for Brownian motion on S^{d−1} (3 <= d <= 64), shape of `tau`."""
    tau = jnp.asarray(tau)
    dtype = tau.dtype if jnp.issubdtype(tau.dtype, jnp.floating) else jnp.result_type(float)
    return angle_quantile(jax.random.uniform(key, tau.shape, dtype), tau.astype(dtype), d)


def sample_direction(key, u0, tau):
    """Exact draw of u_τ given unit directions u0 (..., d) and intensities τ (...)."""
    d = u0.shape[-1]
    tau = jnp.broadcast_to(jnp.asarray(tau, u0.dtype), u0.shape[:-1])
    angle_key, tangent_key = jax.random.split(key)
    if d == 2:
        angle = jnp.sqrt(tau) * jax.random.normal(angle_key, tau.shape, u0.dtype)
        tangent = jnp.stack([-u0[..., 1], u0[..., 0]], axis=-1)
    else:
        angle = sample_angle(angle_key, tau, d)
        z = jax.random.normal(tangent_key, u0.shape, u0.dtype)
        z = z - jnp.sum(z * u0, axis=-1, keepdims=True) * u0
        tangent = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return jnp.cos(angle)[..., None] * u0 + jnp.sin(angle)[..., None] * tangent
