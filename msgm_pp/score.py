r"""The learned tangent score of an MSGM.

With x = r u, the network's output stands for g = r P∇log p_s(x), P = I − u uᵀ, the gradient on the
sphere of the log-density of the direction given the norm. It is scale-free: Σ(x)∇log p = r Σ(u) g,
so every training and sampling quantity is O(1) whatever |x| is.

:class:`TangentScore` bundles what the reverse dynamics need: the network, the noise, the schedule
β(s) on [0, T], the standardisation of log r and the smallest time t_ε.
"""

import equinox as eqx
import jax.numpy as jnp

from msgm_pp.noise import AbstractNoise
from msgm_pp.schedule import LinearSchedule
from msgm_pp.serialization import serializable

TIME_INPUTS = ("fraction", "log_tau")


@serializable
class TangentScore(eqx.Module):
    """g_θ(u, ℓ, s) = P_u net(u, (ℓ − log_r_loc)/log_r_scale, c(s)) / σ(s) for one point.

    The network's time input c(s) ∈ [0, 1] is `time_input`: "fraction", c = s/T (the default,
    and what files saved before 0.5 hold), or "log_tau", c = log(τ(s)/τ(t_ε)) / log(τ(T)/τ(t_ε)),
    which gives every factor of τ the same share of [0, 1]. A lattice needs the second: its τ(T)
    grows with the grid (360 at 32×32), and with c = s/T the times τ < 1, where a field's local
    structure forms, shared the first 4.4% of [0, 1] (20% at 8×8).

    With `noise_scaled` (what `MSGM.build` makes), σ(s) = √λ(s) = √(1 − exp(−v τ(s))), the spread
    of a direction at time s (see :meth:`loss_weight`): the score of the noised law grows like
    τ^{-1/2} as s → 0, and dividing by σ keeps what the network outputs O(1) at every time, as the
    noise prediction ε_θ = −σ ∇log p_t of additive diffusion models does. Without it (older model
    files) σ = 1.
    """

    net: eqx.Module
    noise: AbstractNoise
    schedule: LinearSchedule
    log_r_loc: float = eqx.field(static=True)
    log_r_scale: float = eqx.field(static=True)
    t_eps: float = eqx.field(static=True)
    noise_scaled: bool = eqx.field(static=True, default=False)
    time_input: str = eqx.field(static=True, default="fraction")

    def __check_init__(self):
        if not self.log_r_scale > 0:
            raise ValueError(f"`log_r_scale` must be positive, got {self.log_r_scale}.")
        if not 0 < self.t_eps < self.schedule.T:
            raise ValueError(f"`t_eps` must lie in (0, T = {self.schedule.T}), got {self.t_eps}.")
        if self.time_input not in TIME_INPUTS:
            raise ValueError(f"`time_input` must be one of {TIME_INPUTS}, got {self.time_input!r}.")

    @property
    def dim(self) -> int:
        """d, the dimension of the points."""
        return self.noise.dim

    def __call__(self, u, log_r, s):
        z = (log_r - self.log_r_loc) / self.log_r_scale
        g = self.net(u, z, self.network_time(s))
        if self.noise_scaled:
            g = g / jnp.sqrt(self.loss_weight(s))
        return g - jnp.dot(g, u) * u

    def network_time(self, s):
        """c(s), the time the network reads (see the class docstring)."""
        if self.time_input == "fraction":
            return s / self.schedule.T
        tau_start, tau_end = self.tau(self.t_eps), self.tau(self.schedule.T)
        return jnp.log(self.tau(s) / tau_start) / jnp.log(tau_end / tau_start)

    def tau(self, s):
        """τ(s) = ∫_0^s β."""
        return self.schedule.integral(s)

    def drift(self, u, log_r, s):
        """Σ(u) g(u, ℓ, s): the reverse-SDE drift of the direction per unit of τ."""
        return self.noise._diffusion(u, self(u, log_r, s))

    def spreading_rate(self):
        """v = −2 tr(L)/d: a unit direction spreads as E|u_τ − u_0|² ≈ v τ while v τ ≪ 1."""
        return -2.0 * self.noise.trace_ito() / self.dim

    def loss_weight(self, s):
        """λ(s) = 1 − exp(−v τ(s)) with v = :meth:`spreading_rate`.

        The score-matching targets have variance ~ 1/τ at small τ; this weight keeps every time's
        contribution O(1) and tends to 1 once the direction has spread.
        """
        return -jnp.expm1(-self.spreading_rate() * self.tau(s))
