r"""Reverse-time samplers of an MSGM: the reverse SDE and the probability-flow ODE.

Both move only the direction u from the latent (s = T) back to s = t_ε at fixed norm r, over
`steps` equal steps in s. A step from s to s − h covers Δτ = τ(s) − τ(s − h) exactly.

- ``"sde"``: dy = β Σ(y)∇log p dt + √β G(y) ∘ dW, one `noise.rotation_step` per step with
  drift_dt = noise_dt = Δτ and the learned tangent score as drift: an exact rotation of u (a
  Stratonovich, first-order Magnus step).
- ``"ode"``: dy/dt = ½ β Σ(y)∇log p by Heun's method on the sphere. With F(u, s) = ½ Σ(u) g(u, ℓ, s)
  and Exp_u(w) = cos|w| u + sinc|w| w: u* = Exp_u(Δτ F(u, s)), then
  u ← Exp_u(½Δτ (F(u, s) + P_u F(u*, s − h))). Projecting onto the tangent space at u stands in for
  parallel transport at O(h²), so the scheme is second order, and each step is a rotation.

Both renormalise after each step only to remove float rounding.
"""

import jax
import jax.numpy as jnp

from msgm_pp.integrators import remove_rounding_drift
from msgm_pp.noise import project_tangent, sphere_exp
from msgm_pp.score import TangentScore

SAMPLERS = ("sde", "ode")


def check_sampler(method: str) -> str:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {list(SAMPLERS)}.")
    return method


def reverse_directions(score: TangentScore, u_T, log_r, key, steps: int, method: str = "sde"):
    """Integrate the reverse dynamics of directions u_T (n, d) with log-norms ℓ (n,) to s = t_ε."""
    check_sampler(method)
    T, t_eps = score.schedule.T, score.t_eps
    times = T - (T - t_eps) * jnp.arange(steps + 1, dtype=u_T.dtype) / steps
    drift = jax.vmap(score.drift, in_axes=(0, 0, None))
    sde_step = jax.vmap(score.noise.rotation_step, in_axes=(0, 0, None, 0, None))

    def sde(u, inputs):
        s, s_next, step_key = inputs
        d_tau = score.tau(s) - score.tau(s_next)
        xi = jax.random.normal(step_key, u.shape[:1] + score.noise.increment_shape, u.dtype)
        g = jax.vmap(score, in_axes=(0, 0, None))(u, log_r, s)
        return remove_rounding_drift(sde_step(u, xi, d_tau, g, d_tau)), None

    def ode(u, inputs):
        s, s_next, _ = inputs
        half_d_tau = 0.5 * (score.tau(s) - score.tau(s_next))
        first = half_d_tau * drift(u, log_r, s)
        guess = remove_rounding_drift(sphere_exp(u, first))
        second = project_tangent(u, half_d_tau * drift(guess, log_r, s_next))
        return remove_rounding_drift(sphere_exp(u, 0.5 * (first + second))), None

    keys = jax.random.split(key, steps)
    u, _ = jax.lax.scan(sde if method == "sde" else ode, u_T, (times[:-1], times[1:], keys))
    return u
