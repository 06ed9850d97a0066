r"""The log-density of an MSGM by the probability-flow ODE (instantaneous change of variables).

Run forward in diffusion time, the probability-flow ODE moves x = r u only in direction:

    du/dτ = F_s(u) = −½ Σ(u) g(u, ℓ, s),   ℓ = log r fixed,   τ = ∫β ds,

and carries the model law p_{t_ε} (the law `MSGM.sample` draws with the ODE sampler) to the latent
law p_∞. Along the path,

    log p_{t_ε}(x) = log p_∞(r u_T) + ∫_{τ(t_ε)}^{τ(T)} div F_s(u_s) dτ,
    log p_∞(x)     = log p_ℓ(ℓ) − d ℓ − log |S^{d−1}|.

The latent term does not depend on u_T (the latent direction is uniform). F is tangent to the
sphere and, as a field on R^d, homogeneous of degree one in r, so its divergence in R^d is the
divergence on the unit sphere; it is the trace of the Jacobian of the 0-homogeneous extension
y ↦ F(y/|y|) at y = u. The gradient of log p in x is taken through the whole ODE solve, so the
radial dependence that enters through the network's ℓ input is kept.

The path is integrated with the second-order geodesic Heun scheme of the ODE sampler (forward in s,
equal steps in s) and the divergence with the matching trapezoid rule.

Divergence estimators:

- ``"exact"``: the full Jacobian trace, d forward-mode products per evaluation (the default for
  d <= 64).
- ``"hutchinson"``: zᵀ J z with Rademacher probes z, an unbiased estimate of the trace, drawn
  afresh at every step. The probes come from a fixed key, so log_prob is a deterministic, smooth
  function of x (what NUTS needs) whose value is an unbiased estimate over the key.
"""

import jax
import jax.numpy as jnp

from msgm_pp.heat_kernel import log_sphere_area
from msgm_pp.integrators import remove_rounding_drift
from msgm_pp.latent import AbstractNormModel, log_norm
from msgm_pp.noise import project_tangent, sphere_exp
from msgm_pp.score import TangentScore

TRACE_ESTIMATORS = ("exact", "hutchinson")
EXACT_TRACE_MAX_DIM = 64


def check_trace_estimator(trace: str) -> str:
    if trace not in TRACE_ESTIMATORS:
        raise ValueError(
            f"unknown trace estimator {trace!r}; choose one of {list(TRACE_ESTIMATORS)}."
        )
    return trace


def default_trace_estimator(dim: int) -> str:
    return "exact" if dim <= EXACT_TRACE_MAX_DIM else "hutchinson"


def _safe_polar(x):
    """(ℓ, u) = (log|x|, x/|x|) for one point, and whether x is a finite nonzero vector.

    Elsewhere (ℓ, u) are those of a fixed unit vector, so that neither values nor gradients of
    the masked-out branch are NaN."""
    regular = jnp.all(jnp.isfinite(x)) & jnp.any(x != 0)
    safe_x = jnp.where(regular, x, jnp.zeros_like(x).at[0].set(1.0))
    scaled = safe_x / jnp.max(jnp.abs(safe_x))
    return log_norm(safe_x), scaled / jnp.linalg.norm(scaled), regular


def _irregular_log_prob(x):
    """log p at x = 0 or at a non-finite x: −inf (the density vanishes), NaN for NaN input."""
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.nan, -jnp.inf)


def _velocity(score: TangentScore, y, log_r, s):
    """F_s(y/|y|) = −½ Σ(u) g(u, ℓ, s): the forward probability-flow velocity per unit of τ."""
    return -0.5 * score.drift(y / jnp.linalg.norm(y), log_r, s)


def value_and_divergence(field, y, trace: str, probes):
    """field(y) and its divergence at y: the exact Jacobian trace, or the mean of zᵀJz over the
    Rademacher `probes` z (num_probes, d), an unbiased estimate."""
    f, jvp = jax.linearize(field, y)
    if trace == "exact":
        columns = jax.vmap(jvp)(jnp.eye(y.size, dtype=y.dtype))
        return f, jnp.trace(columns)
    return f, jnp.mean(jnp.sum(probes * jax.vmap(jvp)(probes), axis=-1))


def trace_probes(key, steps: int, num_probes: int, dim: int, trace: str, dtype):
    """Rademacher probes for the `steps` + 1 divergence evaluations of a solve (none if exact)."""
    if trace == "hutchinson":
        return jax.random.rademacher(key, (steps + 1, num_probes, dim), dtype=dtype)
    return jnp.zeros((steps + 1, 0, dim), dtype)


def _velocity_and_divergence(score: TangentScore, u, log_r, s, trace: str, probes):
    """F_s(u) and div F_s(u) on the sphere."""
    return value_and_divergence(lambda y: _velocity(score, y, log_r, s), u, trace, probes)


def log_prob_point(
    score: TangentScore,
    norm_model: AbstractNormModel,
    x,
    *,
    steps: int,
    trace: str = "exact",
    num_probes: int = 1,
    key=None,
):
    """log p_{t_ε}(x) for one point x of shape (d,); see the module docstring."""
    d = score.dim
    log_r, u, regular = _safe_polar(x)
    T, t_eps = score.schedule.T, score.t_eps
    times = t_eps + (T - t_eps) * jnp.arange(steps + 1, dtype=u.dtype) / steps
    signs = trace_probes(key, steps, num_probes, d, trace, u.dtype)

    def heun(carry, inputs):
        u, f, div, s = carry
        s_next, next_probes = inputs
        d_tau = score.tau(s_next) - score.tau(s)
        guess = remove_rounding_drift(sphere_exp(u, d_tau * f))
        f_guess = _velocity(score, guess, log_r, s_next)
        increment = 0.5 * d_tau * (f + project_tangent(u, f_guess))
        u_next = remove_rounding_drift(sphere_exp(u, increment))
        f_next, div_next = _velocity_and_divergence(
            score, u_next, log_r, s_next, trace, next_probes
        )
        return (u_next, f_next, div_next, s_next), 0.5 * d_tau * (div + div_next)

    f0, div0 = _velocity_and_divergence(score, u, log_r, times[0], trace, signs[0])
    _, increments = jax.lax.scan(heun, (u, f0, div0, times[0]), (times[1:], signs[1:]))
    latent = norm_model.log_prob(log_r) - d * log_r - log_sphere_area(d)
    return jnp.where(regular, latent + jnp.sum(increments), _irregular_log_prob(x))
