r"""Split-Gibbs sweeps that move approximate posterior draws onto their data.

The twisted proposal of :mod:`msgm_pp.smc` steers a particle by a guess of where it will end,
and on a lattice that guess forms late: the approximate mode's draws of a 32×32 field can end far
from their data (README, "Fields"). A split-Gibbs sampler (Vono et al. 2019; with a diffusion
prior: Coeurdoux et al. 2023, Wu et al. 2024 "PnP-DM", Xu & Chi 2024 "DPnP") instead alternates
the data and the prior through an auxiliary variable. Here the auxiliary variable is the prior's
own forward process after a time τ, z ~ q_τ(z | x), and the sweeps sample

    p(x, z | y) ∝ p(x) q_τ(z | x) p(y | z),

whose x-marginal is the posterior with the likelihood seen through τ of noise, and the posterior
itself as τ → 0. One sweep at τ:

1. **data**: z | x, y. To first order the forward kernel is Gaussian in its increment θ,
   z = F(x, θ) with θ ~ N(0, I): for an MSGM direction u, F = (e^{−vτ/2} u + √τ G(u) θ)/|·|,
   the kernel's mean E[u_τ] = e^{Lτ} u (v the spreading rate) plus the noise's displacement (the
   lattice's neighbour rotations for :class:`~msgm_pp.LatticeNoise`), for an SGM's normalised
   point x̃, F = e^{−τ/2} x̃ + (1 − e^{−τ})^{1/2} θ. With the observation means f(F(x, θ))
   linearised at θ = 0 (J their Jacobian) and Gaussian observations y ~ N(f, diag σ²), θ | y is
   Gaussian and drawn exactly by perturbation: θ = θ' + Jᵀ (J Jᵀ + diag σ²)⁻¹ (y − f − J θ' − ε'),
   with θ' and ε' drawn from their priors and the solve by conjugate gradients (whitened by σ);
   then z = F(x, θ) (for a nonlinear f a Gauss–Newton step).
2. **prior**: x | z, the prior's own reverse process from τ to t_ε without guidance (the
   time reversal samples x_0 given x_τ exactly when η = 1 and the score is exact).
3. **norm** (MSGM): ℓ | u, y on a grid, as the SMC's pilot rounds redraw it
   (:func:`msgm_pp.smc.conditional_log_norm`). In the augmented model the likelihood sits on z,
   but drawn given z the norms grew without bound over the sweeps on the 32×32 fields (log-norm
   2.0 → 5.4 where the truth's is 2.0), and given u they stay near the truth's.

τ falls geometrically from `tau_max` to `tau_min` over the sweeps (annealing, as in DPnP), each
snapped to the reverse grid so that step 2 is the sampler's own last steps. Large τ lets the data
move a draw's energy between neighbouring sites; small τ leaves the prior's fine structure. The
other latent values (a noise scale with a prior, say) stay at their draws.

The sweeps are an approximation, not an exact sampler: the kernel is linearised, τ stays above 0,
and with a learned score or η < 1 step 2 is not the exact conditional. Their bias is measured in
the README ("Fields") against the truth, the exact posteriors of the validation problems and the
exact posterior of a Gaussian field prior at 32×32 (benchmarks/field_exact_gaussian.py).
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp._checks import check_positive_int
from msgm_pp.samplers import _stochasticity, reverse_times
from msgm_pp.smc import conditional_log_norm
from msgm_pp.twists import truncated_cg


class SplitGibbs(eqx.Module):
    """Sweeps that refine `TwistedSMC(weighted=False)`'s draws with the data (module docstring).

    Args:
        sweeps: data-then-prior sweeps per draw. At small τ a sweep moves a draw by about √τ,
            so where the data narrow the posterior far below the prior (inpainting a field) the
            draws contract slowly: more sweeps, at their cost, bring them closer.
        tau_max: the noise time τ of the first sweep; each later one is smaller by a constant
            factor, down to `tau_min`.
        tau_min: the noise time of the last sweep; None takes the start of the sampler's last
            reverse step, the finest time the prior resolves. The last sweeps decide how well
            the draws fit the data: their prior step adds about the kernel's spread after τ to
            the observations' noise variance.
        cg_steps: conjugate-gradient steps of each data step.
        stochasticity: η of the prior steps' reverse SDE; None takes the sampler's. With an
            exact score only η = 1 makes step 2 the exact conditional of x given z; with
            η < 1 the sweeps drift as they grow (README, "Fields").

    Needs every observed site to be a Normal (as :class:`~msgm_pp.EnergyTwist` does). A sweep
    costs the reverse steps from its τ to t_ε, without the twist's gradient: on the 32×32
    benchmark the default sweeps cost about a third of the approximate run itself. Their moves
    are local: a draw left in the wrong one of separated modes is pushed to fit the data there,
    through its norm, which can leave it worse than the run did (README, "Posteriors from the
    score").
    """

    sweeps: int = eqx.field(static=True, default=16)
    tau_max: float = eqx.field(static=True, default=0.5)
    tau_min: float | None = eqx.field(static=True, default=None)
    cg_steps: int = eqx.field(static=True, default=50)
    stochasticity: float | None = eqx.field(
        static=True,
        default=None,
        converter=lambda value: None if value is None else _stochasticity(value),
    )

    def __check_init__(self):
        check_positive_int(self.sweeps, "sweeps")
        check_positive_int(self.cg_steps, "cg_steps")
        tau_min = self.tau_max if self.tau_min is None else self.tau_min
        if not 0.0 < float(tau_min) <= float(self.tau_max) < math.inf:
            raise ValueError(
                f"SplitGibbs needs 0 < tau_min <= tau_max < inf, got tau_min={self.tau_min} and "
                f"tau_max={self.tau_max}."
            )

    def first_steps(self, process, times) -> jax.Array:
        """The index on the reverse grid `times` where each sweep's prior step starts."""
        taus = jax.vmap(process.score.tau)(times[:-1])
        tau_min = taus[-1] if self.tau_min is None else self.tau_min
        targets = jnp.geomspace(self.tau_max, tau_min, self.sweeps)
        return jnp.argmin(jnp.abs(taus[None, :] - targets[:, None]), axis=1)


def data_step(key, process, observations, z, log_r, others, tau, cg_steps: int):
    """A draw of the forward process's state after τ given the data, to first order in its noise
    (step 1 of the module docstring)."""

    def observed_means(theta):
        x = process.data_point(process.perturb(z, theta, tau), log_r)
        return observations(x, others)[1]

    theta_key, noise_key = jax.random.split(key)
    values, _, scales = observations(process.data_point(z, log_r), others)
    zero = jnp.zeros(process.increment_shape, z.dtype)
    means, along = jax.linearize(observed_means, zero)
    back = jax.linear_transpose(along, zero)
    theta = jax.random.normal(theta_key, process.increment_shape, z.dtype)
    residual = values - means - along(theta) - scales * jax.random.normal(noise_key, values.shape)

    def whitened(w):
        return along(back(w / scales)[0]) / scales + w

    solved = truncated_cg(whitened, residual / scales, cg_steps) / scales
    return process.perturb(z, theta + back(solved)[0], tau)


def prior_step(key, process, z, log_r, times, first: int, steps: int):
    """The prior's reverse process from times[first] to t_ε, unguided (step 2)."""

    def body(k, carry):
        z, key = carry
        key, noise_key = jax.random.split(key)
        s, s_next = times[k], times[k + 1]
        d_tau = process.score.tau(s) - process.score.tau(s_next)
        score = process.score_at(z, log_r, s)
        xi = jax.random.normal(noise_key, process.increment_shape, z.dtype)
        return process.step(z, xi, d_tau, score, jnp.zeros_like(score)), key

    return jax.lax.fori_loop(first, steps, body, (z, key))[0]


def split_gibbs(
    key, process, norm_model, log_likelihood, observations, z, log_r, others, *, settings, steps
):
    """One particle's state (z, ℓ) after `settings.sweeps` sweeps (SGM: ℓ unchanged)."""
    times = reverse_times(process.score.schedule, process.score.t_eps, steps, z.dtype)
    firsts = settings.first_steps(process, times)
    if settings.stochasticity is not None:
        process = dataclasses.replace(process, noise_share=settings.stochasticity**2)

    def sweep(carry, inputs):
        z, log_r = carry
        first, key = inputs
        data_key, prior_key, norm_key = jax.random.split(key, 3)
        tau = process.score.tau(times[first])
        z = data_step(data_key, process, observations, z, log_r, others, tau, settings.cg_steps)
        z = prior_step(prior_key, process, z, log_r, times, first, steps)
        if norm_model is not None:
            log_r = conditional_log_norm(
                norm_key, process, norm_model, log_likelihood, z, others, log_r
            )
        return (z, log_r), None

    keys = jax.random.split(key, settings.sweeps)
    return jax.lax.scan(sweep, (z, log_r), (firsts, keys))[0]
