r"""Reverse-time samplers: what `sample` integrates, as small typed settings objects.

- :class:`SDESampler` runs the reverse SDE. For an MSGM, dy = β Σ(y)∇log p dt + √β G(y) ∘ dW is one
  `noise.rotation_step` per step with drift_dt = noise_dt = Δτ and the learned tangent score as
  drift: an exact rotation of u (a Stratonovich, first-order Magnus step). Its `stochasticity`
  η ∈ (0, 1] keeps a share η² of the noise variance,

      dy = ½(1 + η²) β Σ(y)∇log p dt + η √β G(y) ∘ dW,

  so noise_dt = η²Δτ and drift_dt = ½(1 + η²)Δτ. The generator of this reverse process is
  (1 − η²) × the probability-flow ODE's + η² × the reverse SDE's, and both carry the forward
  marginals backwards, so with the exact score every η draws from the same law (η → 0 is the
  ODE). With a learned score they differ: the noise corrects errors of the score but also
  spreads what the score concentrates (Karras et al. 2022 tune the same trade-off per dataset).
- :class:`ODESampler` runs the probability-flow ODE dy/dt = ½ β Σ(y)∇log p by Heun's method
  (:func:`msgm_pp.heun.heun_step`), on the sphere for an MSGM, where every step is a rotation.

Both take `steps` steps from T down to t_ε, equally spaced in log τ near t_ε and in τ near T
(:func:`msgm_pp.schedule.time_grid`); a step from s to s − h covers
Δτ = τ(s) − τ(s − h) exactly. For an MSGM only the direction u moves, at fixed norm r.
"""

import numbers

import equinox as eqx
import jax

from msgm_pp._checks import check_positive_int
from msgm_pp.heun import heun_step
from msgm_pp.schedule import time_grid
from msgm_pp.score import TangentScore
from msgm_pp.serialization import serializable
from msgm_pp.sphere import geodesic_step, project_tangent, renormalise


def _stochasticity(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"`stochasticity` must be a number in (0, 1], got {value!r}; for the "
            "deterministic sampler use mp.ODESampler."
        )
    return float(value)


@serializable
class SDESampler(eqx.Module):
    """The reverse SDE with `steps` steps (first order in the step, exact rotations), keeping a
    share `stochasticity`² of its noise variance (1, the default: the reverse SDE; see the module
    docstring)."""

    steps: int = eqx.field(static=True, default=128)
    stochasticity: float = eqx.field(static=True, default=1.0, converter=_stochasticity)

    def __check_init__(self):
        check_positive_int(self.steps, "steps")

    @property
    def noise_share(self) -> float:
        """η², the share of the reverse SDE's noise variance that each step keeps."""
        return self.stochasticity**2


@serializable
class ODESampler(eqx.Module):
    """The probability-flow ODE by Heun's method with `steps` steps (second order, deterministic
    given the latent point)."""

    steps: int = eqx.field(static=True, default=128)

    def __check_init__(self):
        check_positive_int(self.steps, "steps")


AbstractSampler = SDESampler | ODESampler


def check_sampler(sampler) -> AbstractSampler:
    if not isinstance(sampler, SDESampler | ODESampler):
        raise TypeError(
            "`sampler` must be mp.SDESampler(steps=...) or mp.ODESampler(steps=...), got "
            f"{sampler!r}."
        )
    return sampler


def reverse_times(schedule, t_eps: float, steps: int, dtype):
    """The `steps` + 1 times of :func:`msgm_pp.schedule.time_grid` from T down to t_ε."""
    return time_grid(schedule, t_eps, steps, dtype)[::-1]


def reverse_directions(score: TangentScore, u_T, log_r, key, sampler: AbstractSampler):
    """Integrate the reverse dynamics of directions u_T (n, d) with log-norms ℓ (n,) to s = t_ε."""
    times = reverse_times(score.schedule, score.t_eps, sampler.steps, u_T.dtype)
    return reverse_over(score, u_T, log_r, key, sampler, times)


def reverse_over(score: TangentScore, u, log_r, key, sampler: AbstractSampler, times):
    """Integrate the reverse dynamics of directions u (n, d) at time `times[0]` through the
    decreasing `times` (`sampler.steps` + 1 of them)."""
    drift = jax.vmap(score.drift, in_axes=(0, 0, None))
    sde_step = jax.vmap(score.noise.rotation_step, in_axes=(0, 0, None, 0, None))

    def sde(u, inputs):
        s, s_next, step_key = inputs
        d_tau = score.tau(s) - score.tau(s_next)
        xi = jax.random.normal(step_key, u.shape[:1] + score.noise.increment_shape, u.dtype)
        g = jax.vmap(score, in_axes=(0, 0, None))(u, log_r, s)
        share = sampler.noise_share
        return renormalise(sde_step(u, xi, share * d_tau, g, 0.5 * (1.0 + share) * d_tau)), None

    def velocity(u, s):
        return 0.5 * drift(u, log_r, s)

    def ode(u, inputs):
        s, s_next, _ = inputs
        d_tau = score.tau(s) - score.tau(s_next)
        step = heun_step(
            velocity, u, velocity(u, s), d_tau, s_next, exp=geodesic_step, transport=project_tangent
        )
        return step, None

    keys = jax.random.split(key, sampler.steps)
    body = sde if isinstance(sampler, SDESampler) else ode
    u, _ = jax.lax.scan(body, u, (times[:-1], times[1:], keys))
    return u
