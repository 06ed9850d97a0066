r"""The heat kernel of Brownian motion on S^{d−1}, the exact sampler of isotropic noise and the
exact denoising score-matching target.

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

DSM target: ∇_S log f_τ(u · u_0) = (f'/f)(c)(u_0 − c u). `kernel_table` stores log f and
log(f'/f) on (log τ, θ/θ_top(τ)) for 2 <= d <= 32, built in float64 from the short-time form below
`kernel_switch_tau` and from the series above it, summed in extended precision; JAX interpolates
the table cubically in log τ and linearly in θ. Above d = 32 neither form reaches 1e-4 everywhere
in float64, so DSM stops there (sliced score matching has no such limit).
"""

import functools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import cumulative_simpson, simpson
from scipy.special import gammaln

from msgm_pp.sphere import log_sphere_area, project_tangent

MAX_TABULATED_DIM = 64
_N_TAU = 400
_N_PROB = 1025
_N_THETA = 2049
_SERIES_TAIL = 40.0  # terms are dropped once exp(-l(l+d-2)τ/2) < e^-40
_MAX_TERMS = 1000


def _series_terms(tau, d) -> int | None:
    """Number of Gegenbauer terms until the weights N_l exp(−l(l+d−2)τ/2), which rise, peak and
    fall in l, stay below e^−40; None if that takes more than 1000 terms."""
    l = np.arange(1, _MAX_TERMS + 1)
    log_weight = (
        np.log(2 * l + d - 2) + gammaln(l + d - 2) - gammaln(l + 1) - gammaln(d - 1)
    ) - 0.5 * l * (l + d - 2) * tau
    past_peak = np.arange(l.size) >= np.argmax(log_weight)
    done = np.flatnonzero(past_peak & (log_weight < -_SERIES_TAIL))
    return int(l[done[0]]) + 1 if done.size else None


def _series_kernel(theta, tau, d, with_scales=False, wide=np.float64):
    """|S^{d−1}| f_τ(c) and its c-derivative, c = cos θ, by the Gegenbauer series (d >= 2).

    Uses the normalised polynomials P_l = C_l^{(λ)}/C_l^{(λ)}(1), |P_l| <= 1, with the recurrence
    P_l = [2(l+λ−1) c P_{l−1} − (l−1) P_{l−2}] / (l+2λ−1), weighted by the dimensions
    N_l = (2l+d−2)(l+d−3)! / (l! (d−2)!) of the spherical harmonics of degree l. The sums run in
    the float type `wide`; the kernel tables use numpy.longdouble because the terms cancel where
    the kernel is small.
    Returns None where the series needs more than 1000 terms. With `with_scales`, also the sums of
    the terms' absolute values, which set the scale of the rounding error.
    """
    n_terms = _series_terms(tau, d)
    if n_terms is None:
        return None
    lam = wide(0.5 * (d - 2))
    c = np.cos(np.asarray(theta, dtype=wide))
    prev, cur = np.ones_like(c), c
    d_prev, d_cur = np.zeros_like(c), np.ones_like(c)
    dimension = wide(d)
    weight = dimension * np.exp(wide(-0.5 * (d - 1) * tau))
    total, d_total = 1 + weight * cur, weight * d_cur
    scale, d_scale = 1 + weight * np.abs(cur), weight * np.abs(d_cur)
    for l in range(2, n_terms):
        a, b = 2 * (l + lam - 1) / (l + 2 * lam - 1), (l - 1) / (l + 2 * lam - 1)
        prev, cur = cur, a * c * cur - b * prev
        d_prev, d_cur = d_cur, a * (prev + c * d_cur) - b * d_prev
        dimension *= wide((2 * l + d - 2) * (l + d - 3)) / wide((2 * l + d - 4) * l)
        weight = dimension * np.exp(wide(-0.5 * l * (l + d - 2)) * wide(tau))
        total += weight * cur
        d_total += weight * d_cur
        scale += weight * np.abs(cur)
        d_scale += weight * np.abs(d_cur)
    result = [np.asarray(v, dtype=np.float64) for v in (total, d_total, scale, d_scale)]
    return tuple(result) if with_scales else tuple(result[:2])


def _series_angle_density(theta, tau, d):
    kernel = _series_kernel(theta, tau, d)
    if kernel is None:
        return None
    log_ratio = log_sphere_area(d - 1) - log_sphere_area(d)
    return kernel[0] * math.exp(log_ratio) * np.sin(theta) ** (d - 2)


@np.errstate(over="ignore", divide="ignore", invalid="ignore")
def _short_time_log_kernel(theta, tau, d):
    """log f_τ(cos θ) and ∂_θ log f_τ from the short-time expansion (float64)."""
    k = 0.5 * (d - 2)
    small = theta < 1e-2
    t = np.where(small, 1.0, theta)
    theta2 = theta**2
    cot_gap = np.where(small, theta * (1 / 3 + theta2 / 45), 1.0 / t - 1.0 / np.tan(t))
    curvature = np.where(small, 1 / 3 + theta2 / 45 + 2 * theta2**2 / 945, cot_gap / t)
    d_curvature = np.where(
        small,
        theta * (2 / 45 + 8 * theta2 / 945),
        (1.0 / np.sin(t) ** 2 - 2.0 / t**2 + 1.0 / (np.tan(t) * t)) / t,
    )
    log_theta_over_sin = np.where(small, theta2 / 6, np.log(t) - np.log(np.sin(t)))
    log_f = (
        -0.5 * (d - 1) * math.log(2.0 * math.pi * tau)
        - theta2 / (2.0 * tau)
        + k * log_theta_over_sin
        + 0.5 * tau * (k * k + k * (1.0 - k) * curvature)
    )
    d_log_f = -theta / tau + k * cot_gap + 0.5 * tau * k * (1.0 - k) * d_curvature
    return log_f, d_log_f


@np.errstate(over="ignore", divide="ignore", invalid="ignore")
def _short_time_angle_density(theta, tau, d):
    log_f = _short_time_log_kernel(theta, tau, d)[0]
    return np.exp(log_f + log_sphere_area(d - 1) + (d - 2) * np.log(np.sin(theta)))


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


def _table_rows(table, row, column):
    """Locate fractional indices in a 2-D table (clipped to it).

    Returns the lower row i, the fraction t in [0, 1] towards row i + 1, and `at_row(k)`, row k
    (clipped to the table) interpolated linearly at `column`.
    """
    rows, columns = table.shape
    row = jnp.clip(row, 0.0, rows - 1.0)
    column = jnp.clip(column, 0.0, columns - 1.0)
    i = jnp.clip(jnp.floor(row), 0, rows - 2).astype(jnp.int32)
    j = jnp.clip(jnp.floor(column), 0, columns - 2).astype(jnp.int32)
    wj = column - j

    def at_row(k):
        k = jnp.clip(k, 0, rows - 1)
        return (1 - wj) * table[k, j] + wj * table[k, j + 1]

    return i, row - i, at_row


def _bilinear(table, row, column):
    """Bilinear interpolation of a 2-D table at fractional indices (clipped to the table)."""
    i, t, at_row = _table_rows(table, row, column)
    return (1 - t) * at_row(i) + t * at_row(i + 1)


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
    step = (table.log_tau[-1] - table.log_tau[0]) / (_N_TAU - 1)
    clipped = jnp.clip(jnp.log(jnp.maximum(tau, jnp.finfo(dtype).tiny)), log_tau[0], log_tau[-1])
    scale = jnp.sqrt(jnp.minimum(tau, jnp.exp(log_tau[-1])))
    return _bilinear(z, (clipped - log_tau[0]) / step, p_index) * scale


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
        z = project_tangent(u0, jax.random.normal(tangent_key, u0.shape, u0.dtype))
        tangent = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return jnp.cos(angle)[..., None] * u0 + jnp.sin(angle)[..., None] * tangent


DSM_MAX_DIM = 32
_N_KERNEL_TAU = 400
_N_KERNEL_Z = 513
_KERNEL_SPREAD = 6.0
# The series is used where the kernel exceeds this fraction of the sum of its absolute terms.
_CANCELLATION = 1e2 * float(np.finfo(np.longdouble).eps)


def kernel_switch_tau(d: int) -> float:
    """Below this τ the kernel tables use the short-time expansion, above it the series.

    At the switch the angles that carry all but e^{−18} of the mass stay below about one radian,
    where the short-time form is accurate, while the float64 series still converges without
    cancellation; both give f'/f to better than 1e-5 relative for d <= 32.
    """
    return (1.0 / (math.sqrt(d - 1) + 5.0)) ** 2


def _kernel_theta_top(tau, d, xp=np):
    """Largest tabulated angle at intensity τ: beyond all but e^{−18} of the angle's mass, and a
    smooth minimum with π (a kink in τ would spoil the cubic interpolation along τ)."""
    spread = xp.sqrt(tau) * (math.sqrt(d - 1) + _KERNEL_SPREAD)
    return (spread**-4 + math.pi**-4) ** -0.25


class KernelTable(NamedTuple):
    """log f_τ and log f'_τ/f_τ on (log τ, z = θ/θ_top(τ)) for one dimension d.

    Stored smooth parts: `log_kernel` = log f + θ²/(2τ) and `log_ratio` = log(f'/f) + (d−1)τ/2,
    with f'/f the derivative in c = cos θ (positive: the kernel decreases with the angle).
    """

    log_tau: np.ndarray
    log_kernel: np.ndarray
    log_ratio: np.ndarray


@functools.lru_cache(maxsize=16)
def kernel_table(d: int) -> KernelTable:
    """Tabulate the heat kernel of S^{d−1} (2 <= d <= 32) in float64; see `kernel_switch_tau`."""
    if not 2 <= d <= DSM_MAX_DIM:
        raise ValueError(
            f"the heat-kernel tables (and the exact DSM target) cover 2 <= d <= {DSM_MAX_DIM}, got "
            f"d = {d}: above that neither the series nor the short-time expansion reaches 1e-4 "
            "relative accuracy everywhere. Train with loss='ssm' instead."
        )
    tau_max = 2.0 * (math.log(1e10) + math.log(d)) / (d - 1)
    taus = np.geomspace(1e-6 / d**2, tau_max, _N_KERNEL_TAU)
    z = np.linspace(0.0, 1.0, _N_KERNEL_Z)
    log_kernel = np.empty((_N_KERNEL_TAU, _N_KERNEL_Z))
    log_ratio = np.empty_like(log_kernel)
    log_area = log_sphere_area(d)
    for i, tau in enumerate(taus):
        theta = z * _kernel_theta_top(tau, d)
        log_f, d_log_f = _short_time_log_kernel(theta, tau, d)
        ratio = -d_log_f / np.where(theta > 0, np.sin(theta), 1.0)
        ratio[theta == 0] = 1.0 / tau - (d - 2) / 6.0 - tau * (d - 2) * (4 - d) / 180.0
        if tau >= kernel_switch_tau(d):
            kernel, d_kernel, scale, d_scale = _series_kernel(
                theta, tau, d, with_scales=True, wide=np.longdouble
            )
            reliable = (kernel > _CANCELLATION * scale) & (d_kernel > _CANCELLATION * d_scale)
            log_f = np.where(reliable, np.log(np.abs(kernel)) - log_area, log_f)
            ratio = np.where(reliable, d_kernel / kernel, ratio)
        else:
            angle_density = np.exp(log_f + log_sphere_area(d - 1)) * np.sin(theta) ** (d - 2)
            log_f -= np.log(simpson(angle_density, x=theta))
        log_kernel[i] = log_f + theta**2 / (2.0 * tau)
        log_ratio[i] = np.log(ratio) + 0.5 * (d - 1) * tau
    return KernelTable(np.log(taus), log_kernel, log_ratio)


def _catmull_rom_rows(table, row, column):
    """Interpolate a 2-D table cubically (Catmull–Rom) along rows and linearly along columns."""
    i, t, at_row = _table_rows(table, row, column)
    before, lower, upper, after = (at_row(i + offset) for offset in (-1, 0, 1, 2))
    t2, t3 = t * t, t * t * t
    return 0.5 * (
        2 * lower
        + (upper - before) * t
        + (2 * before - 5 * lower + 4 * upper - after) * t2
        + (3 * lower - 3 * upper + after - before) * t3
    )


def _kernel_lookup(field: str, theta, tau, d):
    """Interpolate the `field` ("log_kernel" or "log_ratio") of `kernel_table(d)` at (θ, τ)."""
    table = kernel_table(d)
    dtype = theta.dtype
    log_tau = jnp.log(jnp.maximum(tau, jnp.finfo(dtype).tiny))
    step = (table.log_tau[-1] - table.log_tau[0]) / (_N_KERNEL_TAU - 1)
    row = (log_tau - table.log_tau[0]) / step
    column = theta / _kernel_theta_top(tau, d, jnp) * (_N_KERNEL_Z - 1)
    return _catmull_rom_rows(jnp.asarray(getattr(table, field), dtype), row, column)


def _norm_with_zero_gradient_at_zero(v):
    squared = jnp.sum(v**2, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def geodesic_angle(u, u0):
    """θ = arccos(u · u0) for unit vectors, computed as 2 atan2(|u − u0|, |u + u0|) (no loss of
    precision near 0 or π). Differentiable everywhere: at u = ±u0, where |u ∓ u0| has no
    gradient, the gradient taken is 0 instead of NaN."""
    return 2.0 * jnp.arctan2(
        _norm_with_zero_gradient_at_zero(u - u0), _norm_with_zero_gradient_at_zero(u + u0)
    )


def log_heat_kernel(u, u0, tau):
    """log f_τ(u · u0): the log-density of u_τ given u_0 = u0 against the uniform surface measure
    of S^{d−1} (2 <= d <= 32), from `kernel_table`. Shapes (..., d), (..., d), (...)."""
    d = u.shape[-1]
    theta = geodesic_angle(u, u0)
    tau = jnp.asarray(tau, theta.dtype)
    smooth = _kernel_lookup("log_kernel", theta, tau, d)
    return smooth - theta**2 / (2.0 * tau)


def heat_kernel_score(u, u0, tau):
    r"""The exact denoising target ∇_S log f_τ(u · u0) = (f'_τ/f_τ)(c) (u0 − c u), c = u · u0.

    This is the gradient on S^{d−1}, with respect to u, of the log transition density of Brownian
    motion on the sphere (2 <= d <= 32). f'/f is interpolated from `kernel_table`; it agrees with
    60-digit arithmetic to 1e-4 relative (1e-5 in practice) for angles up to 0.9 θ_top(τ), which
    carry all but about 1e-9 of the mass, and stays within 1e-3 beyond.
    """
    d = u.shape[-1]
    theta = geodesic_angle(u, u0)
    tau = jnp.asarray(tau, theta.dtype)
    log_ratio = _kernel_lookup("log_ratio", theta, tau, d)
    ratio = jnp.exp(log_ratio - 0.5 * (d - 1) * tau)
    c = jnp.sum(u * u0, axis=-1, keepdims=True)
    return ratio[..., None] * (u0 - c * u)


class PointMassMixtureScore(eqx.Module):
    r"""The exact network output of an MSGM whose directions are drawn from point masses.

    If u_0 = m_j with probability w_j, independently of the norm, the direction at time τ has the
    density p_τ(u) = Σ_j w_j f_τ(u · m_j), and its score on the sphere is

        ∇_S log p_τ(u) = Σ_j π_j(u) ∇_S log f_τ(u · m_j),   π_j ∝ w_j f_τ(u · m_j).

    It has the `net(u, z, t)` interface of :class:`~msgm_pp.TangentScore` (use noise_scaled=False):
    a model with an exact score, to validate samplers and posteriors against closed forms.
    """

    directions: jax.Array
    log_weights: jax.Array
    schedule: eqx.Module

    def __call__(self, u, z, t):
        tau = self.schedule.integral(t * self.schedule.T)
        log_kernels = jax.vmap(lambda m: log_heat_kernel(u, m, tau))(self.directions)
        responsibilities = jax.nn.softmax(log_kernels + self.log_weights)
        return responsibilities @ jax.vmap(lambda m: heat_kernel_score(u, m, tau))(self.directions)
