"""Noise schedules β(s) on s ∈ [0, T] and the mixing-aware default.

The direction process du = √β(s) G(u) ∘ dB depends on time only through the integrated intensity
τ(s) = ∫_0^s β(s') ds'. A schedule is therefore summarised by `beta` and `integral`.
"""

import math

import equinox as eqx
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
