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
on the grid of :func:`msgm_pp.schedule.time_grid`, equal steps in log τ near t_ε) and the divergence
with the matching trapezoid rule.

The settings are one object, :class:`ODEDensity` (`steps`, and the divergence estimator `trace`):

- :class:`ExactTrace`: the full Jacobian trace, d forward-mode products per evaluation (the default
  for d <= 64).
- :class:`HutchinsonTrace`: zᵀ J z with `num_probes` Rademacher probes z, an unbiased estimate of
  the trace, drawn afresh at every step. The probes come from a fixed key (`seed`), so log_prob is a
  deterministic, smooth function of x (what NUTS needs) whose value is an unbiased estimate over
  the key.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp._checks import check_positive_int
from msgm_pp.heun import heun_step
from msgm_pp.norm_models import AbstractNormModel
from msgm_pp.schedule import time_grid
from msgm_pp.score import TangentScore
from msgm_pp.serialization import serializable
from msgm_pp.sphere import geodesic_step, log_sphere_area, polar, project_tangent

EXACT_TRACE_MAX_DIM = 64


@serializable
class ExactTrace(eqx.Module):
    """The divergence as the exact Jacobian trace (d forward-mode products)."""

    def probes(self, key, steps: int, dim: int, dtype):
        """No probes: an empty (steps + 1, 0, dim) array."""
        return jnp.zeros((steps + 1, 0, dim), dtype)

    def divergence(self, jvp, y, probes):
        """tr ∂F/∂y from d Jacobian-vector products with the unit vectors."""
        return jnp.trace(jax.vmap(jvp)(jnp.eye(y.size, dtype=y.dtype)))


@serializable
class HutchinsonTrace(eqx.Module):
    """The divergence as the mean of zᵀJz over `num_probes` Rademacher probes per step, drawn from
    the key `seed`: an unbiased estimate over the key, a smooth deterministic function of x."""

    num_probes: int = eqx.field(static=True, default=1)
    seed: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        check_positive_int(self.num_probes, "num_probes")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {self.seed!r}.")

    def probes(self, key, steps: int, dim: int, dtype):
        """Rademacher probes (steps + 1, num_probes, dim), one set per ODE time."""
        return jax.random.rademacher(key, (steps + 1, self.num_probes, dim), dtype=dtype)

    def divergence(self, jvp, y, probes):
        """The Hutchinson estimate mean_k v_kᵀ (∂F/∂y) v_k, unbiased for tr ∂F/∂y."""
        return jnp.mean(jnp.sum(probes * jax.vmap(jvp)(probes), axis=-1))


AbstractTrace = ExactTrace | HutchinsonTrace


def default_trace(dim: int) -> AbstractTrace:
    return ExactTrace() if dim <= EXACT_TRACE_MAX_DIM else HutchinsonTrace()


@serializable
class ODEDensity(eqx.Module):
    """log p by the probability-flow ODE with `steps` Heun steps and the divergence estimator
    `trace` (None: :class:`ExactTrace` for d <= 64, :class:`HutchinsonTrace` above).

    Heun's error in log p falls as 1/steps², so with `extrapolate=True` the result is Richardson's
    (4 L(steps) − L(steps/2)) / 3 from a second solve with half the steps (1.5× the cost; `steps`
    even), which cancels the leading error term: at 32 steps on a Student-t (d = 8) and on the
    paper's Cauchy task, 0.009 and 0.012 nats from the converged value against 0.074 and 0.080
    without it (`benchmarks/density_steps.py`)."""

    steps: int = eqx.field(static=True, default=64)
    trace: ExactTrace | HutchinsonTrace | None = None
    extrapolate: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_positive_int(self.steps, "steps")
        if not isinstance(self.extrapolate, bool):
            raise TypeError(f"`extrapolate` must be True or False, got {self.extrapolate!r}.")
        if self.extrapolate and self.steps % 2:
            raise ValueError(
                f"`extrapolate=True` needs an even number of `steps` (it also solves with "
                f"steps/2), got {self.steps}."
            )
        if self.trace is not None and not isinstance(self.trace, ExactTrace | HutchinsonTrace):
            raise TypeError(
                "`trace` must be mp.ExactTrace(), mp.HutchinsonTrace(num_probes=...) or None, got "
                f"{self.trace!r}."
            )

    def for_dim(self, dim: int) -> "ODEDensity":
        """These settings with the default estimator for dimension `dim` filled in."""
        if self.trace is not None:
            return self
        return ODEDensity(self.steps, default_trace(dim), self.extrapolate)

    def probe_key(self):
        """The key of the Hutchinson probes (fixed by `seed`, so that log_prob is a
        deterministic function of x)."""
        return jax.random.key(self.trace.seed if isinstance(self.trace, HutchinsonTrace) else 0)


def solve_log_density(velocity, y0, score, density: ODEDensity, key, readout, **geometry):
    """readout(y_T, ∫ div F dτ) of the probability-flow solve from y0 (see
    :func:`integrate_log_density`) on `score`'s time grid with `density`'s steps, trace and probes
    drawn from `key`; with `density.extrapolate`, Richardson's combination with a solve of half
    the steps (see :class:`ODEDensity`)."""

    def solve(steps, key):
        times = time_grid(score.schedule, score.t_eps, steps, y0.dtype)
        probes = density.trace.probes(key, steps, y0.size, y0.dtype)
        y_end, integral = integrate_log_density(
            velocity, y0, times, score.tau, density.trace, probes, **geometry
        )
        return readout(y_end, integral)

    fine = solve(density.steps, key)
    if not density.extrapolate:
        return fine
    coarse = solve(density.steps // 2, jax.random.fold_in(key, 1))
    return (4 * fine - coarse) / 3


def check_density(density) -> ODEDensity:
    if not isinstance(density, ODEDensity):
        raise TypeError(f"`density` must be mp.ODEDensity(steps=..., trace=...), got {density!r}.")
    return density


def value_and_divergence(field, y, trace: AbstractTrace, probes):
    """field(y) and its divergence at y, by the estimator `trace` with its `probes`."""
    f, jvp = jax.linearize(field, y)
    return f, trace.divergence(jvp, y, probes)


def integrate_log_density(velocity, y0, times, tau, trace: AbstractTrace, probes, **geometry):
    """(y_T, ∫ div F dτ) along the probability-flow path of dy/dτ = velocity(y, t) from y0 at
    times[0], by Heun steps with the trapezoid rule for the divergence (one evaluation per step).
    `geometry` is the `exp` and `transport` of :func:`msgm_pp.heun.heun_step` (flat by default)."""

    def velocity_and_divergence(y, t, step_probes):
        return value_and_divergence(lambda p: velocity(p, t), y, trace, step_probes)

    def step(carry, inputs):
        y, f, div, t = carry
        t_next, next_probes = inputs
        d_tau = tau(t_next) - tau(t)
        y_next = heun_step(velocity, y, f, d_tau, t_next, **geometry)
        f_next, div_next = velocity_and_divergence(y_next, t_next, next_probes)
        return (y_next, f_next, div_next, t_next), 0.5 * d_tau * (div + div_next)

    f0, div0 = velocity_and_divergence(y0, times[0], probes[0])
    (y_end, *_), increments = jax.lax.scan(step, (y0, f0, div0, times[0]), (times[1:], probes[1:]))
    return y_end, jnp.sum(increments)


def irregular_log_prob(x):
    """log p at x = 0 or at a non-finite x: −inf (the density vanishes), NaN for NaN input."""
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.nan, -jnp.inf)


def log_prob_point(score: TangentScore, norm_model: AbstractNormModel, x, density: ODEDensity, key):
    """log p_{t_ε}(x) for one point x of shape (d,); see the module docstring.

    At x = 0 or a non-finite x the path starts from a fixed unit vector instead, so that neither
    values nor gradients of the masked-out branch are NaN."""
    d = score.dim
    regular = jnp.all(jnp.isfinite(x)) & jnp.any(x != 0)
    log_r, u = polar(jnp.where(regular, x, jnp.zeros_like(x).at[0].set(1.0)))

    def velocity(y, s):
        """F_s(y/|y|) = −½ Σ(u) g(u, ℓ, s): the forward probability-flow velocity per unit of τ;
        0-homogeneous in y, so that its divergence in R^d is the divergence on the sphere."""
        return -0.5 * score.drift(y / jnp.linalg.norm(y), log_r, s)

    divergence = solve_log_density(
        velocity,
        u,
        score,
        density,
        key,
        lambda _, integral: integral,
        exp=geodesic_step,
        transport=project_tangent,
    )
    latent = norm_model.log_prob(log_r) - d * log_r - log_sphere_area(d)
    return jnp.where(regular, latent + divergence, irregular_log_prob(x))


class HeldOutNegLogLikelihood(eqx.Module):
    """(net, (u, ℓ), key) -> −mean log p_{t_ε}(e^ℓ u) over the first `max_rows` rows, with the
    network of `score` replaced by `net`: the validation criterion of a likelihood-trained MSGM.

    It tracks what users of the density need, in nats per point (of the model's coordinates y),
    and with `density` at 32 steps it costs one ODE solve per row. The score loss, by contrast,
    estimates the likelihood bound only up to a constant and with noise that fixed keys cannot
    remove from its draws of times and noised points."""

    score: TangentScore
    norm_model: AbstractNormModel
    density: ODEDensity
    max_rows: int = eqx.field(static=True, default=1024)

    def __call__(self, net, batch, key):
        return jnp.mean(self.per_point(net, batch, key))

    def per_point(self, net, batch, key):
        """−log p_{t_ε} of each of the first `max_rows` rows: the terms whose mean is the
        criterion, for comparing two networks row by row (paired differences)."""
        score = eqx.tree_at(lambda sc: sc.net, self.score, net)
        u, log_r = (part[: self.max_rows] for part in batch)
        y = jnp.exp(log_r)[:, None] * u
        log_p = jax.vmap(log_prob_point, in_axes=(None, None, 0, None, None))(
            score, self.norm_model, y, self.density, key
        )
        return -log_p
