"""Noise schedules β(s) on s ∈ [0, T], the mixing-aware default, and the integration grid.

The direction process du = √β(s) G(u) ∘ dB depends on time only through the integrated intensity
τ(s) = ∫_0^s β(s') ds'. A schedule is therefore summarised by `beta` and `integral`.

Near s = 0 the score of the noised law grows like τ^{-1/2} and its divergence like τ^{-1}, so a
step of fixed length in s is too coarse there (with 64 equal steps the log-density of a sharply
trained model is off by 0.3 nats on the paper's task). :func:`time_grid` spaces the integration
times equally in log τ near t_ε, where both integrands are O(1) per unit, and equally in τ near T.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp.serialization import serializable


@serializable
class LinearSchedule(eqx.Module):
    """β(s) = β_min + (β_max − β_min) s / T on [0, T], the schedule of the paper's code.

    τ(s) = β_min s + (β_max − β_min) s² / (2T). For s > T the line is continued.
    """

    beta_min: float
    beta_max: float
    T: float = 1.0

    def __check_init__(self):
        if not (0 <= self.beta_min <= self.beta_max) or self.beta_max <= 0:
            raise ValueError(
                f"LinearSchedule needs 0 <= beta_min <= beta_max and beta_max > 0, got "
                f"beta_min={self.beta_min}, beta_max={self.beta_max}."
            )
        if not self.T > 0:
            raise ValueError(f"LinearSchedule needs T > 0, got T={self.T}.")

    def beta(self, s):
        """β(s) = β_min + (β_max − β_min) s/T."""
        return self.beta_min + (self.beta_max - self.beta_min) * jnp.asarray(s) / self.T

    def integral(self, s):
        """τ(s) = ∫_0^s β = β_min s + ½ (β_max − β_min) s²/T."""
        s = jnp.asarray(s)
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2 / self.T

    def inverse_integral(self, tau):
        """The time s >= 0 with τ(s) = `tau`, the positive root of the quadratic τ(s)."""
        tau = jnp.asarray(tau)
        if self.beta_max == self.beta_min:
            return tau / self.beta_min
        slope = (self.beta_max - self.beta_min) / self.T
        if self.beta_min == 0:
            return jnp.sqrt(2.0 * tau / slope)
        # 2τ / (β_min + √(β_min² + 2 slope τ)): the root without cancellation at small τ.
        return 2.0 * tau / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * tau))


def time_grid(schedule, t_eps: float, steps: int, dtype):
    """`steps` + 1 increasing times from t_ε to T, equally spaced in φ(τ) = log τ + κ τ/τ_T with
    κ = log(τ_T/τ(t_ε)): about half the steps equally spaced in log τ (where the small-time
    score is sharp) and half equally spaced in τ (where the law relaxes to the latent one)."""
    tau_start = schedule.integral(jnp.asarray(t_eps, dtype))
    tau_end = schedule.integral(jnp.asarray(schedule.T, dtype))
    kappa = jnp.log(tau_end / tau_start)

    def phi(log_tau):
        return log_tau + kappa * jnp.exp(log_tau) / tau_end

    fractions = jnp.arange(steps + 1, dtype=dtype) / steps
    targets = phi(jnp.log(tau_start)) + fractions * (
        phi(jnp.log(tau_end)) - phi(jnp.log(tau_start))
    )

    def newton(log_tau, _):
        slope = 1.0 + kappa * jnp.exp(log_tau) / tau_end
        return jnp.clip(log_tau - (phi(log_tau) - targets) / slope, None, jnp.log(tau_end)), None

    # φ is convex in log τ and starting to the right of the root (φ(w) >= w), Newton converges
    # monotonically; 40 iterations reach float32 round-off from any start on [τ_ε, τ_T].
    log_tau, _ = jax.lax.scan(newton, jnp.minimum(targets, jnp.log(tau_end)), None, length=40)
    times = schedule.inverse_integral(jnp.exp(log_tau))
    return times.at[0].set(t_eps).at[-1].set(schedule.T)


def mixing_schedule(
    noise, tol: float = 1e-3, ratio: float = 100.0, T: float = 1.0
) -> LinearSchedule:
    """Linear schedule whose slowest direction mode has decayed to `tol` at s = T.

    The first and second moments of the direction relax at rates ≥ λ = `noise.mixing_rate()` per
    unit of τ, so τ(T) = log(1/tol) / λ makes every such mode smaller than `tol` times its start.
    β_max / β_min = `ratio` keeps the paper's shape (β ∈ [0.01, 1] has ratio 100).
    """
    if not 0 < tol < 1:
        raise ValueError(f"`tol` must lie in (0, 1), got {tol}.")
    if not ratio >= 1:
        raise ValueError(f"`ratio` must be >= 1, got {ratio}.")
    tau_end = math.log(1.0 / tol) / float(noise.mixing_rate())
    beta_max = 2.0 * tau_end / (T * (1.0 + 1.0 / ratio))
    return LinearSchedule(beta_min=beta_max / ratio, beta_max=beta_max, T=T)
