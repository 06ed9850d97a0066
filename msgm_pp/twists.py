r"""Twists of :class:`~msgm_pp.TwistedSMC`: a particle's guess of the likelihood of its end point.

A particle z of the reverse process at time s is guided by log ψ(z) ≈ log E[p(y | x_0) | z], the
likelihood averaged over a Gaussian guess of its end point x_0 (Wu et al. 2023, "Practical and
asymptotically exact conditional sampling in diffusion models"). :mod:`msgm_pp.smc` states how ψ
enters the proposal and the weights: whatever the twist, the weighted run is exact in the limit of
many particles; a better twist needs fewer, and biases the approximate mode less. Each twist
builds, for one run, a function (z, ℓ, θ, s) -> (log ψ, score, guidance ∇_z log ψ) of one particle.

:class:`TweedieTwist` (the default) guesses x_0 ~ N(x̂_0(z), v I): one variance for every
coordinate, with the likelihood expanded to second order (any likelihood; exact averaging for a
Gaussian one with a linear operator). :class:`EnergyTwist` guesses x_0 ~ N(m(z), diag c(z)) with the
variance where the noise puts it, and averages Gaussian observations one at a time; it was built for
fields whose reverse process must gather energy into peaks (README, "Fields").
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp._checks import check_positive_int


def truncated_cg(operator, b, steps: int):
    """x ≈ M⁻¹ b for a symmetric M given by `operator`, by `steps` conjugate-gradient steps from
    x = 0 that stop where M shows a direction of non-positive curvature (then x is the last
    iterate, or b itself if that happens at once)."""

    def step(carry, _):
        x, r, p, rr, stopped = carry
        mp_ = operator(p)
        curvature = jnp.dot(p, mp_)
        stopped = stopped | (curvature <= 0) | (rr == 0)
        alpha = jnp.where(stopped, 0.0, rr / jnp.where(stopped, 1.0, curvature))
        x, r_next = x + alpha * p, r - alpha * mp_
        rr_next = jnp.dot(r_next, r_next)
        beta = rr_next / jnp.where(rr > 0, rr, 1.0)
        p = jnp.where(stopped, p, r_next + beta * p)
        return (x, jnp.where(stopped, r, r_next), p, jnp.where(stopped, rr, rr_next), stopped), None

    start = (jnp.zeros_like(b), b, b, jnp.dot(b, b), jnp.zeros((), bool))
    (x, *_), _ = jax.lax.scan(step, start, None, length=steps)
    return jnp.where(jnp.any(x != 0), x, b)


class TweedieTwist(eqx.Module):
    r"""x_0 ~ N(x̂_0(z), v I) around Tweedie's estimate, with the likelihood L expanded to second
    order at x̂_0 (exact for a Gaussian likelihood with a linear operator):

        log ψ = L(x̂_0) + ½ v ∇Lᵀ (I − v ∇²L)⁻¹ ∇L,   ∇_{x̂_0} log ψ = (I − v ∇²L)⁻¹ ∇L,

    the solve by `cg_steps` conjugate-gradient steps with Hessian-vector products of the likelihood,
    and the guidance pulls the solved vector back through x̂_0(z). x̂_0 and v are the process's
    :meth:`denoised` and :meth:`spread` (:mod:`msgm_pp.smc`). Works with any likelihood.
    """

    cg_steps: int = eqx.field(static=True, default=16)

    def __check_init__(self):
        check_positive_int(self.cg_steps, "cg_steps")

    def build(self, process, log_likelihood, observations, key):
        """The twist of one particle for a run: (z, ℓ, θ, s) -> (log ψ, score, guidance). Uses
        `log_likelihood(x, θ)`; `observations` and `key` are for other twists."""
        del observations, key

        def log_likelihood_of_coordinates(y, others):
            return log_likelihood(process.to_data(y), others)

        def twist(z, log_r, others, s):
            variance = process.spread(log_r, s)
            y_hat, pull_back, score = jax.vjp(
                lambda z: process.denoised(z, log_r, s), z, has_aux=True
            )
            value, gradient = jax.value_and_grad(log_likelihood_of_coordinates)(y_hat, others)
            curvature = jax.grad(lambda y: log_likelihood_of_coordinates(y, others))

            def inflated(v):
                return v - variance * jax.jvp(curvature, (y_hat,), (v,))[1]

            solved = truncated_cg(inflated, gradient, self.cg_steps)
            (guidance,) = pull_back(solved)
            log_psi = value + 0.5 * variance * jnp.dot(gradient, solved)
            return log_psi, score, process.tangent(z, guidance)

        return twist


class EnergyTwist(eqx.Module):
    r"""x_0 ~ N(m(z), diag c(z)) with the variance where the noise puts it, and the Gaussian
    observations averaged one at a time.

    For an MSGM direction u at log-norm ℓ after the remaining time τ (η²τ with stochasticity η),

        m = r e^{−κτ/2} Exp_u(τ Σ(u) g),   c = r² (1 − e^{−κτ}) diag Σ(u) / tr Σ(u),

    with κ = −2 tr(L)/d the rate at which a direction spreads (so |m|² + Σ c = r²): the sign
    pattern of u decorrelates at rate κ/2 while its energy stays where the noise moves it.
    diag Σ(u) is uniform for isotropic noise and the neighbours' energy on a lattice, where a
    direction decorrelates fast but its energy spreads slowly. For an SGM it is Tweedie's x̂_0 with
    the uniform variance of :class:`TweedieTwist`.

    Each Gaussian observation y_k ~ N(f_k(x, θ), σ_k²) is averaged on its own,
    E N(y_k; f_k(x_0), σ_k²) ≈ N(y_k; f_k(m), σ_k² + J_k diag(c) J_kᵀ) with J = ∂f/∂x at m, so
    log ψ keeps each observation's log-determinant term: it grows where a particle puts energy under
    data larger than its mean allows. J_k diag(c) J_kᵀ = Σ_i J_ki² c_i is estimated as the mean
    of (J ε_p)_k (J (c ⊙ ε_p))_k over `probes` fixed Rademacher vectors ε_p: unbiased, exact for
    observations of single coordinates (a mask), and linear in c, so smooth where a coordinate's
    variance vanishes (the square (J (√c ⊙ ε))_k² is not: its gradient is infinite there); an
    estimate below 0 counts as 0. The guidance is ∇_z log ψ through m and c.

    Needs every observed site to be a Normal (possibly inside `Independent` or expanded), whose
    mean and scale may depend on x and the other latent sites. Measured on the field benchmark:
    README, "Fields".
    """

    probes: int = eqx.field(static=True, default=8)

    def __check_init__(self):
        check_positive_int(self.probes, "probes")

    def build(self, process, log_likelihood, observations, key):
        """The twist of one particle for a run: (z, ℓ, θ, s) -> (log ψ, score, guidance). Uses
        `observations(x, θ)`, the flat (values, means, scales) of the Normal observed sites, and
        draws its probes from `key`."""
        del log_likelihood
        signs = jax.random.rademacher(key, (self.probes, process.dim))

        def log_psi(z, log_r, others, s):
            (mean, variance), score = process.energy_guess(z, log_r, s)

            def observed(y):
                return observations(process.to_data(y), others)

            (values, locs, scales), along = jax.linearize(observed, mean)

            def spread(sign):
                sign = sign.astype(variance.dtype)
                return along(sign)[1] * along(variance * sign)[1]

            total = scales**2 + jnp.maximum(jnp.mean(jax.vmap(spread)(signs), axis=0), 0.0)
            log_density = -0.5 * ((values - locs) ** 2 / total + jnp.log(2.0 * math.pi * total))
            return jnp.sum(log_density), score

        def twist(z, log_r, others, s):
            (value, score), gradient = jax.value_and_grad(log_psi, has_aux=True)(
                z, log_r, others, s
            )
            return value, score, process.tangent(z, gradient)

        return twist
