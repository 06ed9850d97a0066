r"""Twisted sequential Monte Carlo over the reverse process of a score-based prior.

The posterior is p(x, θ | y) ∝ p(x) p(θ) p(y | x, θ) for a prior x whose sampler is a reverse
diffusion driven by a learned score, θ other latent values (a noise scale with a prior, say) and
L(x, θ) = log p(y | x, θ). Only the score (and, for an MSGM, the norm model) is used: no
probability-flow log-density and no Jacobian trace.

**Reverse processes.** Each particle follows the Euler steps of the prior's own SDE sampler, whose
increments are Gaussian, so the SMC targets the posterior under exactly the law that `sample`
draws from:

- MSGM (:class:`RotationProcess`): x = e^ℓ u_0 with ℓ from the norm model and u_K uniform on
  S^{d−1}; each reverse rotation u_{k−1} = R(u_k, θ_k) has generator coordinates
  θ_k ~ N(½(1 + η²) Δτ_k G(u_k)ᵀ g(u_k, ℓ, s_k), η² Δτ_k I) (:mod:`msgm_pp.noise`);
- SGM (:class:`DiffusionProcess`): x̃_K ~ N(0, I) and
  x̃_{k−1} ~ N(x̃_k + Δτ_k (½ x̃_k + ½(1 + η²) s(x̃_k, s_k)), η² Δτ_k I) on normalised coordinates;

η is the `stochasticity` of the prior's :class:`~msgm_pp.SDESampler` (1, the reverse SDE, by
default; a prior that samples with the ODE is sampled here with η = 1).

**Twist** (Wu et al. 2023, "Practical and asymptotically exact conditional sampling in diffusion
models", carried over to rotations). A particle z at time s is guided by the expected likelihood of
a Gaussian guess of its end point, x_0 ~ N(x̂_0(z), v I) in model coordinates:

- MSGM: x̂_0 = r e^{−ρτ} Exp_u(τ Σ(u) g(u, ℓ, s)) and v = r² (1 − e^{−2ρτ})/(2ρ). Exp_u(τ Σ g) is
  Tweedie's formula in normal coordinates of the sphere (E[Log_u u_0 | u_τ = u] ≈ τ Σ(u) ∇log
  p_τ(u)), shrunk by e^{−ρτ}, the correlation of a direction with its start (ρ is the noise's
  mixing rate); v is the spread of a direction after τ, so the twist is flat once directions
  have mixed. v is capped at r²/d, the average variance of a coordinate of r u (Σ Var u_i ≤ 1):
  the linearised spread grows towards r²/(2ρ), which for slowly mixing noise (a 32×32 lattice
  has ρ ≈ 0.019) is thousands of times larger and would leave the twist flat until the end.
- SGM: Tweedie's x̂_0 = (x̃ − σ_t ε_θ(x̃, t))/α_t and v = σ_t², the spread of x̃_0 given x̃_t for
  data of unit variance (the choice of pseudoinverse guidance, Song et al. 2023).

These are guesses for the time reversal (η = 1). With a stochasticity η < 1 less noise remains
between x_t and x_0 (none as η → 0, where x_0 is a function of x_t), and both formulas use
η²τ in place of τ (with the score still at s): for data of unit variance under the SGM's VP
diffusion the reverse process is then an Ornstein–Uhlenbeck process of rate ½η², and x̃_0 given
x̃_t is exactly N(e^{−η²τ/2} x̃_t, 1 − e^{−η²τ}), which is what they give.

The default twist (:class:`~msgm_pp.twists.TweedieTwist`) expands L to second order at x̂_0
(exact for a Gaussian likelihood with a linear operator),

    log ψ(z) = L(x̂_0) + ½ v ∇Lᵀ (I − v ∇²L)⁻¹ ∇L,   ∇_{x̂_0} log ψ = (I − v ∇²L)⁻¹ ∇L,

with a truncated conjugate-gradient solve, and the guidance h = ∇_z log ψ pulls the solved vector
back through x̂_0(z). The inflation keeps the weights even: a sharp observation seen through an
uncertain x̂_0 is much flatter than at x̂_0 itself, in each observed direction by its own factor.
:class:`~msgm_pp.twists.EnergyTwist` guesses a variance per coordinate instead (where the noise
moves the direction) and averages Gaussian observations one at a time.

The proposal adds the drift η² Δτ h (the Doob transform's: the noise variance times ∇log ψ) to
the reverse step, its shift capped at 3 noise standard deviations per step (root mean square over
the noise coordinates, so that the cap means the same at every d); the weight carries the
Girsanov ratio of the two Gaussian increments, −η√Δτ ξ·c − ½η²Δτ|c|² with c the guidance in
noise coordinates (G(u)ᵀh, or h for the SGM), times ψ_{k−1}/ψ_k, and at t_ε the last
weight swaps ψ for the likelihood itself. The twist only shapes the proposal: the weights are exact
whatever it is, and the estimates converge as the particles grow; the effective sample size reports
their variance.

**Groups: norms and other latent values.** The MSGM's reverse dynamics only rotate, so a particle's
norm never changes, and resampling alone would let a few early norms take over. So the particles
come in groups: each group draws one log-norm ℓ from a proposal q(ℓ), with the weight p_ℓ(ℓ)/q(ℓ),
and one value of θ from its prior, and its particles are resampled only among themselves. Each
group's total weight then estimates p(ℓ) p(y | ℓ, θ)/q(ℓ) without bias, so the whole run is
importance sampling over (ℓ, θ) with unbiased weights, consistent as the number of groups grows
(Tran et al. 2013, "Importance sampling squared"). :func:`adapted_proposal` turns a pilot run into
0.9 × a kernel density, weighted by the groups' total weights, + 0.1 p_ℓ. Its centres are not
the norms the pilot groups drew but a Gibbs-like redraw of each: ℓ' ~ p_ℓ(ℓ') exp L(e^ℓ' u, θ)
with u one of the group's directions drawn by weight (:func:`conditional_log_norm`, a 1-D grid
with the likelihood only). Where the pilot's weights are even this is much like the drawn norms;
in high d they collapse onto one group, whose drawn norm can be far off (a 32×32 field: e^2.5
against a true e^3.1), while its direction, shaped by the data, says where the norm should be.
Any q keeps the weights exact; this one puts the norms where the data are. An SGM has no norm:
its groups only share θ.

**Approximate mode** (`weighted=False`): every particle follows the twisted proposal and none is
resampled; the draws are the proposal's, independent given their groups' norms, and biased by how
far the twist is from the exact conditional. Their weights are still computed, so the run reports
the importance ESS those draws would have for the exact target.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp.coordinates import AffineCoordinates, CoordinateScaling
from msgm_pp.msgm import MSGM
from msgm_pp.samplers import SDESampler, reverse_times
from msgm_pp.score import TangentScore
from msgm_pp.sgm import SGM, VPScore
from msgm_pp.sphere import project_tangent, renormalise, sphere_exp

DEFENSIVE_PRIOR_WEIGHT = 0.1
MAX_GUIDANCE_SHIFT = 3.0  # noise sds per step, root mean square over the noise coordinates
PARTICLE_CHUNK_BUDGET = 2**16  # particles × d per vectorised evaluation of the network


class RotationProcess(eqx.Module):
    """The MSGM's reverse rotations of a direction u (d,) at its group's log-norm ℓ."""

    score: TangentScore
    coordinates: CoordinateScaling | AffineCoordinates | None
    event_shape: tuple[int, ...] = eqx.field(static=True)
    mixing_rate: float = eqx.field(static=True)
    noise_share: float = eqx.field(static=True, default=1.0)

    @property
    def dim(self) -> int:
        return self.score.dim

    @property
    def increment_shape(self) -> tuple[int, ...]:
        return self.score.noise.increment_shape

    def start(self, key, n: int, dtype):
        """n directions, uniform on the sphere."""
        z = jax.random.normal(key, (n, self.dim), dtype)
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

    def data_point(self, u, log_r):
        """The data point, shaped like a sample, of a particle: e^ℓ u mapped to data."""
        return self.to_data(jnp.exp(log_r) * u)

    def to_data(self, y):
        """The data point, shaped like a sample, of model coordinates y (d,)."""
        x = y if self.coordinates is None else self.coordinates.denormalise(y)
        return x.reshape(self.event_shape)

    def tweedie_direction(self, u, log_r, s):
        """(η²τ, the score g(u, ℓ, s), Exp_u(η²τ Σ(u) g)): Tweedie's step on the sphere with the
        remaining noise η²τ."""
        tau = self.noise_share * self.score.tau(s)
        g = self.score(u, log_r, s)
        return tau, g, renormalise(sphere_exp(u, tau * self.score.noise._diffusion(u, g)))

    def denoised(self, u, log_r, s):
        """(x̂_0 in model coordinates, the score g(u, ℓ, s)), with the remaining noise η²τ."""
        tau, g, direction = self.tweedie_direction(u, log_r, s)
        return jnp.exp(log_r - self.mixing_rate * tau) * direction, g

    def energy_guess(self, u, log_r, s):
        """((m, c), g): the mean and coordinate variances of :class:`~msgm_pp.twists.EnergyTwist`'s
        guess of x_0 in model coordinates, and the score."""
        tau, g, direction = self.tweedie_direction(u, log_r, s)
        rate = self.score.spreading_rate()
        mean = jnp.exp(log_r - 0.5 * rate * tau) * direction
        where = self.score.noise._diffusion_diagonal(u)
        variance = jnp.exp(2.0 * log_r) * -jnp.expm1(-rate * tau) * where / jnp.sum(where)
        return (mean, variance), g

    def spread(self, log_r, s):
        """v, the variance of each coordinate of the guess of x_0 around x̂_0, at most r²/d."""
        rate = self.mixing_rate
        tau = self.noise_share * self.score.tau(s)
        mixing = -jnp.expm1(-2.0 * rate * tau) / (2.0 * rate)
        return jnp.exp(2.0 * log_r) * jnp.minimum(mixing, 1.0 / self.dim)

    def score_at(self, u, log_r, s):
        return self.score(u, log_r, s)

    def perturb(self, u, theta, tau):
        """(e^{−vτ/2} u + √τ G(u) θ)/|·|: the forward rotations over τ to first order in their
        increment θ (G(u) θ stands for the noise's `displacement`), with their mean
        E[u_τ] = e^{Lτ} u = e^{−vτ/2} u (v the spreading rate), so that |·| ≈ 1 on average."""
        shrink = jnp.exp(-0.5 * self.score.spreading_rate() * tau)
        return renormalise(shrink * u + jnp.sqrt(tau) * self.score.noise.displacement(u, theta))

    def tangent(self, u, gradient):
        return project_tangent(u, gradient)

    def drift_coordinates(self, u, guidance):
        return self.score.noise.drift_coordinates(u, guidance)

    def step(self, u, xi, d_tau, g, guidance):
        """One reverse Euler step of the sampler (noise variance η²Δτ, score drift
        ½(1 + η²)Δτ) with the guidance's drift η²Δτ added."""
        share = self.noise_share
        drift = 0.5 * (1.0 + share) * g + share * guidance
        return renormalise(self.score.noise.rotation_step(u, xi, share * d_tau, drift, d_tau))


class DiffusionProcess(eqx.Module):
    """The SGM's reverse VP diffusion of a normalised point x̃ (d,); it has no norm (ℓ is unused)."""

    score: VPScore
    event_shape: tuple[int, ...] = eqx.field(static=True)
    noise_share: float = eqx.field(static=True, default=1.0)

    @property
    def dim(self) -> int:
        return self.score.dim

    @property
    def increment_shape(self) -> tuple[int, ...]:
        return (self.score.dim,)

    def start(self, key, n: int, dtype):
        """n draws of the latent law N(0, I)."""
        return jax.random.normal(key, (n, self.dim), dtype)

    def data_point(self, y, log_r):
        return self.to_data(y)

    def to_data(self, y):
        return self.score.denormalise(y).reshape(self.event_shape)

    def denoised(self, y, log_r, s):
        """(Tweedie's x̂_0 with the remaining noise η²τ, the score s(x̃, t) = −ε_θ/σ_t)."""
        score = self.score_at(y, log_r, s)
        tau = self.noise_share * self.score.tau(s)
        return (y - jnp.expm1(-tau) * score) * jnp.exp(0.5 * tau), score

    def spread(self, log_r, s):
        return -jnp.expm1(-self.noise_share * self.score.tau(s))

    def energy_guess(self, y, log_r, s):
        """((x̂_0, v for every coordinate), the score): Gaussian noise has no direction to follow."""
        mean, score = self.denoised(y, log_r, s)
        return (mean, jnp.full_like(mean, self.spread(log_r, s))), score

    def score_at(self, y, log_r, s):
        return -self.score.epsilon(y, s) / self.score.sigma(s)

    def perturb(self, y, theta, tau):
        """e^{−τ/2} x̃ + (1 − e^{−τ})^{1/2} θ: the forward VP diffusion over τ."""
        return jnp.exp(-0.5 * tau) * y + jnp.sqrt(-jnp.expm1(-tau)) * theta

    def tangent(self, y, gradient):
        return gradient

    def drift_coordinates(self, y, guidance):
        return guidance

    def step(self, y, xi, d_tau, score, guidance):
        share = self.noise_share
        drift = 0.5 * y + 0.5 * (1.0 + share) * score + share * guidance
        return y + d_tau * drift + jnp.sqrt(share * d_tau) * xi


def particle_chunk(dim: int) -> int:
    """Particles per vectorised evaluation of the network, so that memory stays bounded."""
    return max(1, PARTICLE_CHUNK_BUDGET // dim)


def process_of(prior) -> RotationProcess | DiffusionProcess:
    """The reverse process that `prior.sample` follows with its SDE sampler (the reverse SDE,
    η = 1, when the prior samples with the ODE)."""
    share = prior.sampler.noise_share if isinstance(prior.sampler, SDESampler) else 1.0
    if isinstance(prior, MSGM):
        rate = float(prior.noise.mixing_rate())
        return RotationProcess(
            prior.score, prior.coordinates, tuple(prior.event_shape), rate, share
        )
    if isinstance(prior, SGM):
        return DiffusionProcess(prior.score, tuple(prior.event_shape), share)
    raise TypeError(f"no reverse process for a {type(prior).__name__}; expected an MSGM or SGM.")


def typical_point(prior, key):
    """A point of the prior's latent law mapped to data, shaped like a sample (no reverse run)."""
    process = process_of(prior)
    if isinstance(prior, MSGM):
        log_r, u = prior.latent.sample_polar(key)
        return process.data_point(u, log_r)
    return process.to_data(process.start(key, 1, prior.float_dtype)[0])


class NormProposal(NamedTuple):
    """q(ℓ) = (1 − w) Σ_j π_j N(ℓ; c_j, b²) + w p_ℓ(ℓ): a kernel density of earlier log-norms
    (centres c_j, log-weights log π_j, bandwidth b) with a share w of the prior; w = 1 is the
    prior itself."""

    centres: jax.Array
    log_mix: jax.Array
    bandwidth: jax.Array
    prior_weight: jax.Array

    @classmethod
    def prior(cls, groups: int, dtype) -> "NormProposal":
        """The norm model itself (w = 1), shaped for `groups` kernel centres."""
        zeros = jnp.zeros((groups,), dtype)
        return cls(zeros, zeros - math.log(groups), jnp.ones((), dtype), jnp.ones((), dtype))

    def sample(self, key, norm_model, n: int, dtype):
        """n draws with the components stratified: round(w n) from the prior, the rest from the
        kernels in proportion to their weights (systematic resampling), which keeps the draws a
        valid sample for weights p/q (a deterministic mixture) with less variance."""
        prior_key, choice_key, noise_key = jax.random.split(key, 3)
        from_prior = jnp.arange(n) < jnp.round(self.prior_weight * n)
        components = systematic_indices(choice_key, self.log_mix, n)
        kernel = self.centres[components] + self.bandwidth * jax.random.normal(
            noise_key, (n,), dtype
        )
        return jnp.where(from_prior, norm_model.sample(prior_key, (n,)).astype(dtype), kernel)

    def log_prob(self, log_r, norm_model):
        """log q(ℓ), elementwise."""
        z = (log_r[..., None] - self.centres) / self.bandwidth
        kernels = -0.5 * z**2 - jnp.log(self.bandwidth) - 0.5 * math.log(2.0 * math.pi)
        return jnp.logaddexp(
            jnp.log1p(-self.prior_weight) + jax.nn.logsumexp(kernels + self.log_mix, axis=-1),
            jnp.log(self.prior_weight) + norm_model.log_prob(log_r),
        )


class SMCOutput(NamedTuple):
    """One run: equally weighted draws, and its diagnostics."""

    x: jax.Array
    others: dict
    states: jax.Array  # each draw's state in the reverse process at t_ε (u or x̃)
    log_r: jax.Array  # each draw's log-norm (0 for an SGM)
    group_log_r: jax.Array
    group_redrawn_log_r: jax.Array  # a draw of each group's ℓ given one of its directions
    group_log_weights: jax.Array
    ess: jax.Array
    group_ess: jax.Array
    log_evidence: jax.Array
    resamplings: jax.Array
    dropped: jax.Array


def reference_log_norms(norm_model) -> jax.Array:
    """A fixed sample of 4096 log-norms from the norm model, for its spread and range."""
    return norm_model.sample(jax.random.key(0), (4096,))


def adapted_proposal(pilot: SMCOutput, norm_model, dtype) -> NormProposal:
    """A kernel density of the pilot groups' redrawn log-norms with the groups' weights
    (Silverman's bandwidth at the groups' effective number, at least 5% of the prior's spread),
    and 10% of the prior."""
    centres = pilot.group_redrawn_log_r
    log_mix = jax.nn.log_softmax(pilot.group_log_weights)
    weights = jnp.exp(log_mix)
    mean = jnp.sum(weights * centres)
    spread = jnp.sqrt(jnp.sum(weights * (centres - mean) ** 2))
    prior_spread = jnp.std(reference_log_norms(norm_model))
    bandwidth = jnp.maximum(1.06 * spread * pilot.group_ess ** (-0.2), 0.05 * prior_spread)
    adapted = NormProposal(
        centres.astype(dtype),
        log_mix.astype(dtype),
        bandwidth.astype(dtype),
        jnp.asarray(DEFENSIVE_PRIOR_WEIGHT, dtype),
    )
    usable = jnp.isfinite(jax.nn.logsumexp(pilot.group_log_weights)) & jnp.isfinite(bandwidth)
    prior = NormProposal.prior(pilot.group_log_r.shape[0], dtype)
    return jax.tree.map(lambda a, b: jnp.where(usable, a, b), adapted, prior)


def conditional_log_norm(key, process, norm_model, log_likelihood, u, others, log_r):
    """A draw of ℓ' from p(ℓ' | u, θ, y) ∝ p_ℓ(ℓ') exp L(e^ℓ' u, θ), the norm's conditional along
    the direction u (ignoring how u's own law depends on ℓ): a cell of a 64-point grid over the
    norm model's range, then a point of a 65-point grid across the cell and its neighbours, each
    drawn by its value. ℓ where the likelihood is nowhere finite."""
    draws = reference_log_norms(norm_model).astype(log_r.dtype)
    margin = jnp.std(draws)
    coarse = jnp.linspace(jnp.min(draws) - margin, jnp.max(draws) + margin, 64)

    def profile(ell):
        value = norm_model.log_prob(ell) + log_likelihood(process.data_point(u, ell), others)
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def draw(key, grid):
        values = jax.vmap(profile)(grid)
        return grid[jax.random.categorical(key, values)], jnp.max(values)

    coarse_key, fine_key = jax.random.split(key)
    centre, _ = draw(coarse_key, coarse)
    width = coarse[1] - coarse[0]
    fine, value = draw(fine_key, centre + jnp.linspace(-width, width, 65))
    return jnp.where(jnp.isfinite(value), fine, log_r)


def ess(log_weights):
    """Kish's (Σw)²/Σw², 0 when every weight is 0."""
    total = jax.nn.logsumexp(log_weights)
    safe = jnp.where(jnp.isfinite(total), log_weights, 0.0)
    value = jnp.exp(2 * jax.nn.logsumexp(safe) - jax.nn.logsumexp(2 * safe))
    return jnp.where(jnp.isfinite(total), value, 0.0)


def drop_non_finite(log_weights, increment, *states):
    """Add `increment` to the log-weights; a particle whose increment or state is not finite (a
    score or likelihood that overflowed) gets weight 0 and finite placeholder states, so that it
    cannot spread NaN through resampling. Returns (log_weights, states, newly dropped)."""
    finite = jnp.isfinite(increment)
    for state in states:
        finite &= jnp.all(jnp.isfinite(state.reshape(state.shape[0], -1)), axis=1)
    alive = jnp.isfinite(log_weights)
    log_weights = jnp.where(finite, log_weights + increment, -jnp.inf)
    states = tuple(
        jnp.where(finite.reshape(-1, *([1] * (a.ndim - 1))), a, jnp.zeros_like(a)) for a in states
    )
    return log_weights, states, jnp.sum(alive & ~finite, dtype=jnp.int32)


def systematic_indices(key, log_weights, n: int | None = None):
    """n indices (default: as many as weights) by systematic resampling."""
    n = log_weights.shape[0] if n is None else n
    cumulative = jnp.cumsum(jax.nn.softmax(log_weights))
    positions = (jax.random.uniform(key, (), cumulative.dtype) + jnp.arange(n)) / n
    return jnp.minimum(jnp.searchsorted(cumulative, positions), log_weights.shape[0] - 1)


def twisted_smc(
    process,
    norm_model,
    log_likelihood,
    observations,
    draw_others,
    key,
    proposal: NormProposal | None,
    *,
    groups: int,
    group_size: int,
    steps: int,
    ess_threshold: float,
    twist,
    dtype,
    weighted: bool = True,
):
    """One run: `groups` norms (none for an SGM: `norm_model` None) and values of the other
    latent sites, each with `group_size` particles that are resampled only among themselves (or,
    unless `weighted`, never). `twist` is a :mod:`msgm_pp.twists` twist; `observations` maps
    (x, θ) to the flat (values, means, scales) of Gaussian observed sites, or is None."""
    chunk = particle_chunk(process.dim)

    def twists(z, log_r, others, s):
        """The twist, score and guidance of every particle, in chunks of bounded memory."""

        def one(particle):
            return particle_twist(*particle, s)

        if z.shape[0] <= chunk:
            return jax.vmap(one)((z, log_r, others))
        return jax.lax.map(one, (z, log_r, others), batch_size=chunk)

    times = reverse_times(process.score.schedule, process.score.t_eps, steps, dtype)
    norm_key, start_key, others_key, step_key, final_key = jax.random.split(key, 5)
    particle_twist = twist.build(process, log_likelihood, observations, jax.random.fold_in(key, 1))
    redraw_key = jax.random.fold_in(final_key, 1)
    n = groups * group_size

    def per_particle(group_values):
        return jax.tree.map(lambda a: jnp.repeat(a, group_size, axis=0), group_values)

    z = process.start(start_key, n, dtype)
    if norm_model is None:
        group_log_r = jnp.zeros((groups,), dtype)
        log_weights = jnp.zeros((n,), dtype)
    else:
        group_log_r = proposal.sample(norm_key, norm_model, groups, dtype)
        log_weights = per_particle(
            norm_model.log_prob(group_log_r) - proposal.log_prob(group_log_r, norm_model)
        )
    log_r = per_particle(group_log_r)
    group_points = jax.vmap(process.data_point)(z[::group_size], group_log_r)
    others = per_particle(jax.vmap(draw_others)(jax.random.split(others_key, groups), group_points))

    def guided_step(z, xi, d_tau, score, guidance):
        noise_dt = process.noise_share * d_tau
        coordinates = process.drift_coordinates(z, guidance)
        shift = jnp.sqrt(noise_dt * jnp.mean(coordinates**2))
        damping = jnp.minimum(1.0, MAX_GUIDANCE_SHIFT / jnp.maximum(shift, 1e-30))
        coordinates = damping * coordinates
        z_next = process.step(z, xi, d_tau, score, damping * guidance)
        girsanov = -jnp.sqrt(noise_dt) * jnp.sum(xi * coordinates) - 0.5 * noise_dt * jnp.sum(
            coordinates**2
        )
        return z_next, girsanov

    guided_steps = jax.vmap(guided_step, in_axes=(0, 0, None, 0, 0))
    offsets = jnp.arange(groups)[:, None] * group_size

    def resample_within_groups(key, log_weights):
        """(indices, log-weights): systematic resampling of each group whose ESS is low; a
        resampled group keeps its total weight, shared equally."""
        grouped = log_weights.reshape(groups, group_size)
        resample = jax.vmap(ess)(grouped) < ess_threshold * group_size
        if not weighted:
            resample = jnp.zeros_like(resample)
        local = jax.vmap(systematic_indices)(jax.random.split(key, groups), grouped)
        local = jnp.where(resample[:, None], local, jnp.arange(group_size))
        level = jax.nn.logsumexp(grouped, axis=1, keepdims=True) - math.log(group_size)
        grouped = jnp.where(resample[:, None], level, grouped)
        return (local + offsets).ravel(), grouped.ravel(), jnp.sum(resample, dtype=jnp.int32)

    def step(carry, inputs):
        """Weight the particles at time s by the last move and the new twist, resample, and
        move them to s_next. The twist appears once in the loop, so it is compiled once."""
        z, previous_log_psi, girsanov, log_weights, resamplings, dropped = carry
        s, s_next, key = inputs
        noise_key, resample_key = jax.random.split(key)
        log_psi, score, guidance = twists(z, log_r, others, s)
        log_weights, (z, log_psi, score, guidance), newly_dropped = drop_non_finite(
            log_weights, girsanov + log_psi - previous_log_psi, z, log_psi, score, guidance
        )
        chosen, log_weights, resampled = resample_within_groups(resample_key, log_weights)
        z, log_psi, score, guidance = (a[chosen] for a in (z, log_psi, score, guidance))
        d_tau = process.score.tau(s) - process.score.tau(s_next)
        xi = jax.random.normal(noise_key, (n, *process.increment_shape), dtype)
        z, girsanov = guided_steps(z, xi, d_tau, score, guidance)
        carry = (z, log_psi, girsanov, log_weights, resamplings + resampled)
        return (*carry, dropped + newly_dropped), None

    zeros = jnp.zeros((n,), dtype)
    carry = (z, zeros, zeros, log_weights, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    keys = jax.random.split(step_key, steps)
    (z, log_psi, girsanov, log_weights, resamplings, dropped), _ = jax.lax.scan(
        step, carry, (times[:-1], times[1:], keys)
    )
    x = jax.vmap(process.data_point)(z, log_r)
    final = girsanov + jax.vmap(log_likelihood)(x, others) - log_psi
    log_weights, _, last_dropped = drop_non_finite(log_weights, final)
    grouped = log_weights.reshape(groups, group_size)
    group_log_weights = jax.nn.logsumexp(grouped, axis=1)
    if norm_model is None:
        group_redrawn_log_r = group_log_r
    else:
        pick_key, draw_key = jax.random.split(redraw_key)
        picked = offsets[:, 0] + jax.vmap(jax.random.categorical)(
            jax.random.split(pick_key, groups), jnp.where(jnp.isfinite(grouped), grouped, -1e30)
        )
        group_redrawn_log_r = jax.vmap(
            lambda key, u, others, ell: conditional_log_norm(
                key, process, norm_model, log_likelihood, u, others, ell
            )
        )(
            jax.random.split(draw_key, groups),
            z[picked],
            jax.tree.map(lambda a: a[picked], others),
            group_log_r,
        )
    if weighted:
        chosen = systematic_indices(final_key, log_weights)
    else:  # every particle is a draw, unless it met non-finite values
        alive = jnp.where(jnp.isfinite(log_weights), 0.0, -jnp.inf)
        chosen = jnp.where(jnp.isfinite(alive), jnp.arange(n), systematic_indices(final_key, alive))
    return SMCOutput(
        x=x[chosen],
        others=jax.tree.map(lambda a: a[chosen], others),
        states=z[chosen],
        log_r=log_r[chosen],
        group_log_r=group_log_r,
        group_redrawn_log_r=group_redrawn_log_r,
        group_log_weights=group_log_weights,
        ess=ess(log_weights),
        group_ess=ess(group_log_weights),
        log_evidence=jax.nn.logsumexp(log_weights) - math.log(n),
        resamplings=resamplings,
        dropped=dropped + last_dropped,
    )
