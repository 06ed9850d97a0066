r"""Posterior sampling with an MSGM prior from its score: twisted sequential Monte Carlo.

The problem is a NumPyro model with one MSGM site x, any other latent sites θ (a noise scale with a
prior, say) and observed sites y. :class:`TwistedSMC` samples p(x, θ | y) ∝ p(x) p(θ) p(y | x, θ)
using the learned score and the norm model only: no probability-flow log-density, no Jacobian
trace.

**Target.** `MSGM.sample` with `SDESampler(K)` draws x = e^ℓ u_0 from a path: ℓ from the norm
model, u_K uniform on S^{d−1}, and K reverse rotations u_{k−1} = R(u_k, η_k) whose generator
coordinates η_k ~ N(Δτ_k G(u_k)ᵀ g(u_k, ℓ, s_k), Δτ_k I) are Gaussian (:mod:`msgm_pp.noise`). The
SMC targets the posterior of that path, p(path) p(θ) p(y | e^ℓ u_0, θ), whose x-marginal is the
posterior under exactly the law that `sample` draws from. Its estimates converge to it as the number
of particles grows, whatever the twist and the norm proposal below; those only set the variance,
which the effective sample size reports.

**Twist** (Wu et al. 2023, "Practical and asymptotically exact conditional sampling in diffusion
models", carried over to rotations). A particle at time s, with norm r = e^ℓ, is guided by the
expected likelihood of a Gaussian guess of x_0 given u:

    x_0 ~ N(x̂_0, v I),   x̂_0 = r e^{−ρτ} Exp_u(τ Σ(u) g(u, ℓ, s)),   v = r² (1 − e^{−2ρτ})/(2ρ).

Exp_u(τ Σ g) is Tweedie's formula in normal coordinates of the sphere
(E[Log_u u_0 | u_τ = u] ≈ τ Σ(u) ∇log p_τ(u)), shrunk by e^{−ρτ}, the correlation of a direction
with its start (ρ is the noise's mixing rate); v is the spread of a direction after τ, so the
twist is flat once directions have mixed and becomes the likelihood at t_ε. With the log-likelihood
L expanded to second order at x̂_0 (exact for a Gaussian likelihood with a linear operator),

    log ψ(u) = L(x̂_0) + ½ v ∇Lᵀ (I − v ∇²L)⁻¹ ∇L,   ∇_{x̂_0} log ψ = (I − v ∇²L)⁻¹ ∇L,

where the solve takes `cg_steps` conjugate-gradient steps with Hessian-vector products of the
likelihood only, and the guidance h = ∇_S log ψ pulls the solved vector back through x̂_0(u). This
inflation is what keeps the weights even: the likelihood of a sharp observation seen through an
uncertain x̂_0 is much flatter than at x̂_0 itself, in each observed direction by its own factor.
The proposal adds h to the score in the reverse step, its shift capped at 3 noise standard
deviations per step; the weight carries the Girsanov ratio of the two Gaussian increments,
−√Δτ ξ·c − ½Δτ|c|² with c = G(u)ᵀh, times ψ_{k−1}/ψ_k, and at t_ε the last weight swaps ψ for the
likelihood itself. The twist only shapes the proposal: the weights stay exact whatever it is.

**Norms and other latent sites.** The reverse dynamics only rotate, so a particle's norm never
changes, and resampling alone would let a few early norms take over (the runs then disagree by
more than their ESS says). So the particles come in groups: each group draws one norm ℓ from a
proposal q(ℓ), with the weight p_ℓ(ℓ)/q(ℓ), and one value of the other latent sites θ from their
prior (they must not depend on x), and its `particles_per_norm` particles are resampled only among
themselves. Each group's total weight then estimates p(ℓ) p(y | ℓ, θ) / q(ℓ) without bias, so the
whole run is importance sampling over (ℓ, θ) with unbiased weights, consistent as the number of
groups grows (Tran et al. 2013, "Importance sampling squared"). The first of `norm_rounds` pilot
runs uses q = p_ℓ; each later run uses 0.9 × a kernel density of the previous run's group
log-norms, weighted by the groups' total weights, + 0.1 p_ℓ (so that q covers the prior's tails
and every mode a pilot found). The groups' norms are drawn stratified over the mixture's parts.
Only the last run is returned; the pilots only choose q.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import Distribution
from numpyro.primitives import Messenger

from msgm_pp._checks import check_key, check_positive_int, describe_indices, warn_caller
from msgm_pp._progress import progress_bar
from msgm_pp.msgm import MSGM
from msgm_pp.samplers import reverse_times
from msgm_pp.score_based import ScoreBasedDistribution
from msgm_pp.sphere import project_tangent, renormalise, sphere_exp

DEFENSIVE_PRIOR_WEIGHT = 0.1
MAX_GUIDANCE_SHIFT = 3.0
PARTICLE_CHUNK_BUDGET = 2**16  # particles × d per vectorised evaluation of the network


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
        components = _systematic_indices(choice_key, self.log_mix, n)
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
    """One run: equally weighted draws after a final resampling, and its diagnostics."""

    x: jax.Array
    others: dict
    group_log_r: jax.Array
    group_log_weights: jax.Array
    ess: jax.Array
    group_ess: jax.Array
    log_evidence: jax.Array
    resamplings: jax.Array
    dropped: jax.Array


class ModelParts(NamedTuple):
    """What a NumPyro model holds for the sampler: its prior site, the other latent sites and the
    observed ones."""

    prior_site: str
    prior: MSGM
    latent_sites: tuple[str, ...]
    observed_sites: tuple[str, ...]


class _PlaceholderPriorDraws(Messenger):
    """Give score-based sites a placeholder value instead of running their sampler, so that the
    structure of a model is read without a costly reverse-time draw: for an MSGM a draw of its
    latent law (a typical norm, a uniform direction), ones otherwise."""

    def __init__(self, fn=None):
        self.filled: dict[str, tuple[int, ...]] = {}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["value"] is None:
            fn = msg["fn"]
            if isinstance(fn, ScoreBasedDistribution):
                shape = fn.shape(msg["kwargs"].get("sample_shape", ()))
                msg["value"] = (
                    _latent_point(fn, jax.random.key(0)).reshape(shape)
                    if isinstance(fn, MSGM) and shape == fn.event_shape
                    else jnp.ones(shape)
                )
                self.filled[msg["name"]] = tuple(msg["value"].shape)


def _to_data(prior: MSGM, y):
    """The data point, shaped like a sample, of the model coordinates y (d,)."""
    x = y if prior.coordinates is None else prior.coordinates.denormalise(y)
    return x.reshape(prior.event_shape)


def _latent_point(prior: MSGM, key):
    """A point of the MSGM's latent law in data coordinates, shaped like a sample."""
    log_r, u = prior.latent.sample_polar(key)
    return _to_data(prior, jnp.exp(log_r) * u)


def _trace(model, args, kwargs, *, substitutions, key=None):
    conditioned = _PlaceholderPriorDraws(handlers.substitute(model, data=substitutions))
    if key is not None:
        conditioned = handlers.seed(conditioned, key)
    return handlers.trace(conditioned).get_trace(*args, **kwargs)


def _sample_sites(trace: dict) -> dict:
    return {name: site for name, site in trace.items() if site["type"] == "sample"}


def inspect_model(model, args, kwargs, key) -> ModelParts:
    """Find the single MSGM site of `model` and check its observed sites; see the errors below."""
    placeholders = _PlaceholderPriorDraws(model)
    try:
        trace = _sample_sites(_trace(placeholders, args, kwargs, substitutions={}, key=key))
    except (TypeError, ValueError) as error:
        filled = ", ".join(
            f"{name!r} of shape {shape}" for name, shape in placeholders.filled.items()
        )
        raise ValueError(
            f"the model failed when run with its score-based sites ({filled or 'none reached'}) "
            f"set to placeholder values: do its operators and observed sites match them? {error}"
        ) from error
    for name, site in trace.items():
        inner = site["fn"]
        while not isinstance(inner, MSGM) and hasattr(inner, "base_dist"):
            inner = inner.base_dist
        if isinstance(inner, MSGM) and inner is not site["fn"]:
            raise ValueError(
                f"the MSGM site {name!r} is wrapped in a {type(site['fn']).__name__} (inside a "
                "plate, or expanded or masked); TwistedSMC needs one draw of the MSGM itself."
            )
    priors = [n for n, s in trace.items() if not s["is_observed"] and isinstance(s["fn"], MSGM)]
    if len(priors) != 1:
        found = ", ".join(f"{n!r}: {type(s['fn']).__name__}" for n, s in trace.items()) or "none"
        baseline = any(isinstance(s["fn"], ScoreBasedDistribution) for s in trace.values())
        raise ValueError(
            "TwistedSMC needs a model with exactly one latent site whose distribution is an "
            f"msgm_pp.MSGM, found {len(priors)} (sample sites: {found})"
            + ("; the SGM baseline is not supported yet." if baseline and not priors else ".")
        )
    value_shape = tuple(trace[priors[0]]["value"].shape)
    if value_shape != tuple(trace[priors[0]]["fn"].event_shape):
        raise ValueError(
            f"the MSGM site {priors[0]!r} has shape {value_shape} (inside a plate or with "
            "sample_shape?); TwistedSMC needs it to be one draw of the event shape "
            f"{tuple(trace[priors[0]]['fn'].event_shape)}."
        )
    observed = tuple(name for name, site in trace.items() if site["is_observed"])
    if not observed:
        raise ValueError(
            "the model has no observed site: pass the data, e.g. numpyro.sample('y', ..., obs=y)."
        )
    for name in observed:
        _check_observed_site(name, trace[name])
    latent = tuple(n for n, s in trace.items() if not s["is_observed"] and n != priors[0])
    return ModelParts(priors[0], trace[priors[0]]["fn"], latent, observed)


def _check_observed_site(name: str, site: dict) -> None:
    value = np.asarray(site["value"])
    if not np.issubdtype(value.dtype, np.number):
        return
    bad = ~np.isfinite(value.astype(float))
    if bad.any():
        raise ValueError(
            f"the observed site {name!r} has NaN or infinite entries at flat indices "
            f"{describe_indices(np.flatnonzero(bad))}; the likelihood needs finite data."
        )
    fn = site["fn"]
    while hasattr(fn, "base_dist") and not hasattr(fn, "scale"):
        fn = fn.base_dist
    scale = getattr(fn, "scale", None)
    if scale is not None and isinstance(fn, Distribution):
        scale = np.asarray(scale)
        if scale.dtype != object and (~(scale > 0)).any():
            raise ValueError(
                f"the observed site {name!r} has a {type(fn).__name__} with a scale that is not "
                f"positive (min {float(np.min(scale)):.3g}); the noise level must be > 0."
            )


class TwistedSMC:
    """Posterior draws for a NumPyro model with an MSGM prior, by twisted SMC over the reverse
    rotations (see the module docstring for the target, twist, weights and norm proposal).

    Usage mirrors `numpyro.infer.MCMC`::

        smc = mp.TwistedSMC(model, num_particles=1024, num_chains=4)
        smc.run(jax.random.key(0), prior, y=y)      # the model's own arguments
        draws = smc.get_samples()                   # {"x": (4 * 1024, d), other latent sites}
        idata = smc.to_inference_data()             # ArviZ, with chains = independent runs

    Args:
        model: a NumPyro model with exactly one latent site whose distribution is an `MSGM`.
        num_particles: particles per run (at least 2); the error of the estimates falls like
            1/√ESS.
        particles_per_norm: the particles that share one norm and one value of the other latent
            sites, and are resampled among themselves (a multiple of it makes `num_particles`).
        num_chains: independent runs, reported as chains (R-hat across them checks that runs
            agree).
        steps: reverse steps; None takes the model's `SDESampler` steps (the law of `sample`).
        norm_rounds: pilot runs that adapt the norm proposal before the returned run.
        ess_threshold: resample a group when its effective sample size falls below this
            fraction of its particles.
        cg_steps: conjugate-gradient steps of the twist's solve (exact for a Gaussian likelihood
            once it reaches the number of well-observed directions).
        progress: see :mod:`msgm_pp._progress`.
    """

    def __init__(
        self,
        model,
        *,
        num_particles: int = 1024,
        particles_per_norm: int = 16,
        num_chains: int = 1,
        steps: int | None = None,
        norm_rounds: int = 2,
        ess_threshold: float = 0.5,
        cg_steps: int = 16,
        progress: bool | None = None,
    ):
        if not callable(model):
            raise TypeError(f"`model` must be a NumPyro model (a callable), got {model!r}.")
        self.model = model
        self.num_particles = check_positive_int(num_particles, "num_particles")
        if self.num_particles < 2:
            raise ValueError(f"`num_particles` must be at least 2, got {num_particles}.")
        self.group_size = check_positive_int(particles_per_norm, "particles_per_norm")
        if self.num_particles % self.group_size:
            raise ValueError(
                f"`num_particles` ({num_particles}) must be a multiple of `particles_per_norm` "
                f"({particles_per_norm})."
            )
        self.num_chains = check_positive_int(num_chains, "num_chains")
        self.steps = None if steps is None else check_positive_int(steps, "steps")
        if isinstance(norm_rounds, bool) or not isinstance(norm_rounds, int) or norm_rounds < 0:
            raise ValueError(f"`norm_rounds` must be a non-negative int, got {norm_rounds!r}.")
        self.norm_rounds = norm_rounds
        if not 0.0 < float(ess_threshold) <= 1.0:
            raise ValueError(f"`ess_threshold` must lie in (0, 1], got {ess_threshold}.")
        self.ess_threshold = float(ess_threshold)
        self.cg_steps = check_positive_int(cg_steps, "cg_steps")
        self.progress = progress
        self._runs: list[SMCOutput] = []
        self._parts: ModelParts | None = None

    def run(self, key, *args, **kwargs) -> None:
        """Sample the posterior of `model(*args, **kwargs)`; read it with :meth:`get_samples`."""
        key = check_key(key)
        inspect_key, *chain_keys = jax.random.split(key, self.num_chains + 1)
        parts = inspect_model(self.model, args, kwargs, inspect_key)
        prior = parts.prior
        steps = prior.sampler.steps if self.steps is None else self.steps
        log_likelihood, draw_others = _model_functions(self.model, args, kwargs, parts)
        _check_likelihood(log_likelihood, draw_others, prior, parts, inspect_key)
        settings = {
            "groups": self.num_particles // self.group_size,
            "group_size": self.group_size,
            "steps": steps,
            "ess_threshold": self.ess_threshold,
            "mixing_rate": float(prior.noise.mixing_rate()),
            "cg_steps": self.cg_steps,
        }

        def run_once(run_key, proposal):
            return _model_smc(self.model, parts, args, kwargs, run_key, proposal, settings)

        dtype = prior.float_dtype
        bar = progress_bar(self.num_chains * (self.norm_rounds + 1), "twisted SMC", self.progress)
        runs = []
        for chain_key in chain_keys:
            proposal = NormProposal.prior(settings["groups"], dtype)
            for round_key in jax.random.split(chain_key, self.norm_rounds + 1)[:-1]:
                pilot = run_once(round_key, proposal)
                proposal = _adapted_proposal(pilot, prior.norm_model, dtype)
                bar.update(1)
            runs.append(jax.block_until_ready(run_once(chain_key, proposal)))
            bar.update(1)
            bar.set_postfix(ess=f"{float(runs[-1].ess):.0f}")
        bar.close()
        self._runs, self._parts = runs, parts
        empty = [
            chain for chain, run in enumerate(runs) if not np.isfinite(float(run.log_evidence))
        ]
        if empty:
            raise ValueError(
                f"every particle of run(s) {empty} has weight 0: the likelihood is zero or "
                "non-finite wherever the prior's draws fall. Check the model and the data."
            )
        dropped = int(sum(int(run.dropped) for run in runs))
        if dropped:
            warn_caller(
                f"{dropped} times a particle met a non-finite score, twist or likelihood and "
                "was given weight 0; the estimates use the others. Check the model for overflow "
                "or values outside its support (see TwistedSMC.dropped per run)."
            )

    def _require_runs(self) -> list[SMCOutput]:
        if not self._runs:
            raise RuntimeError("no draws yet: call run(key, *model_args) first.")
        return self._runs

    def get_samples(self, group_by_chain: bool = False) -> dict:
        """Posterior draws of every latent site: (chains × particles, ...) or, with
        `group_by_chain`, (chains, particles, ...)."""
        runs = self._require_runs()
        draws = {self._parts.prior_site: jnp.stack([run.x for run in runs])}
        for name in self._parts.latent_sites:
            draws[name] = jnp.stack([run.others[name] for run in runs])
        if group_by_chain:
            return draws
        return {name: value.reshape(-1, *value.shape[2:]) for name, value in draws.items()}

    @property
    def ess(self) -> np.ndarray:
        """The effective sample size of each run's final weights, (chains,)."""
        return np.asarray([float(run.ess) for run in self._require_runs()])

    @property
    def group_ess(self) -> np.ndarray:
        """The effective number of norm groups, (chains,): the ESS of the groups' total weights.
        Particles of a group share their norm and are resampled together, so when the groups'
        weights are uneven this, not `ess`, bounds the information about the norm."""
        return np.asarray([float(run.group_ess) for run in self._require_runs()])

    @property
    def log_evidence(self) -> np.ndarray:
        """Each run's log of an unbiased estimate of p(y), the evidence under the law that the
        prior's SDE sampler draws from, (chains,)."""
        return np.asarray([float(run.log_evidence) for run in self._require_runs()])

    @property
    def dropped(self) -> np.ndarray:
        """How many times a particle of each run met non-finite values and was given weight 0
        (resampling refills the dropped places, so this can exceed the particles)."""
        return np.asarray([int(run.dropped) for run in self._require_runs()])

    @property
    def resamplings(self) -> np.ndarray:
        """How many times a group of each run was resampled, summed over steps, (chains,)."""
        return np.asarray([int(run.resamplings) for run in self._require_runs()])

    def to_inference_data(self):
        """The draws as an ArviZ InferenceData (DataTree in ArviZ 1.x), chains = runs, with each
        run's ESS and log-evidence in `sample_stats`."""
        import arviz as az

        draws = {k: np.asarray(v) for k, v in self.get_samples(group_by_chain=True).items()}
        stats = {
            "smc_ess": np.repeat(self.ess[:, None], self.num_particles, axis=1),
            "log_evidence": np.repeat(self.log_evidence[:, None], self.num_particles, axis=1),
        }
        if int(az.__version__.split(".")[0]) >= 1:  # ArviZ 1.x takes the groups as one dict
            return az.from_dict({"posterior": draws, "sample_stats": stats})
        return az.from_dict(posterior=draws, sample_stats=stats)


def _model_functions(model, args, kwargs, parts: ModelParts):
    """(log p(y | x, θ), a draw of θ from its prior) for one particle."""

    def log_likelihood(x, others):
        trace = _trace(model, args, kwargs, substitutions={parts.prior_site: x, **others})
        total = 0.0
        for name in parts.observed_sites:
            site = trace[name]
            log_p = jnp.sum(site["fn"].log_prob(site["value"]))
            total = total + (log_p if site["scale"] is None else site["scale"] * log_p)
        return total

    def draw_others(key, x):
        trace = _trace(model, args, kwargs, substitutions={parts.prior_site: x}, key=key)
        return {name: trace[name]["value"] for name in parts.latent_sites}

    return log_likelihood, draw_others


def _check_likelihood(log_likelihood, draw_others, prior: MSGM, parts: ModelParts, key) -> None:
    """Run the likelihood once on a prior draw, so that shape errors name the sites."""
    x = _latent_point(prior, key)
    try:
        value = log_likelihood(x, draw_others(key, x))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the model's likelihood failed with the prior site {parts.prior_site!r} of shape "
            f"{tuple(prior.event_shape)} (do the forward operator and the observed sites "
            f"{list(parts.observed_sites)} match it?): {error}"
        ) from error
    if np.shape(value) != ():
        raise ValueError(f"the log-likelihood must be a scalar, got shape {np.shape(value)}.")


@eqx.filter_jit
def _model_smc(model, parts: ModelParts, args, kwargs, key, proposal, settings):
    """One SMC run for `model(*args, **kwargs)`, compiled once per model and argument shapes."""
    log_likelihood, draw_others = _model_functions(model, args, kwargs, parts)
    return _smc(parts.prior, log_likelihood, draw_others, key, proposal, **settings)


def _adapted_proposal(pilot: SMCOutput, norm_model, dtype) -> NormProposal:
    """A kernel density of the pilot's group log-norms with their weights (Silverman's bandwidth
    at the groups' effective number, at least 5% of the prior's spread), and 10% of the prior."""
    log_mix = jax.nn.log_softmax(pilot.group_log_weights)
    weights = jnp.exp(log_mix)
    mean = jnp.sum(weights * pilot.group_log_r)
    spread = jnp.sqrt(jnp.sum(weights * (pilot.group_log_r - mean) ** 2))
    prior_spread = jnp.std(norm_model.sample(jax.random.key(0), (4096,)))
    bandwidth = jnp.maximum(1.06 * spread * pilot.group_ess ** (-0.2), 0.05 * prior_spread)
    adapted = NormProposal(
        pilot.group_log_r.astype(dtype),
        log_mix.astype(dtype),
        bandwidth.astype(dtype),
        jnp.asarray(DEFENSIVE_PRIOR_WEIGHT, dtype),
    )
    usable = jnp.isfinite(jax.nn.logsumexp(pilot.group_log_weights)) & jnp.isfinite(bandwidth)
    prior = NormProposal.prior(pilot.group_log_r.shape[0], dtype)
    return jax.tree.map(lambda a, b: jnp.where(usable, a, b), adapted, prior)


def _truncated_cg(operator, b, steps: int):
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


def _ess(log_weights):
    """Kish's (Σw)²/Σw², 0 when every weight is 0."""
    total = jax.nn.logsumexp(log_weights)
    safe = jnp.where(jnp.isfinite(total), log_weights, 0.0)
    ess = jnp.exp(2 * jax.nn.logsumexp(safe) - jax.nn.logsumexp(2 * safe))
    return jnp.where(jnp.isfinite(total), ess, 0.0)


def _drop_non_finite(log_weights, increment, *states):
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
    return log_weights, states, jnp.sum(alive & ~finite)


def _systematic_indices(key, log_weights, n: int | None = None):
    """n indices (default: as many as weights) by systematic resampling."""
    n = log_weights.shape[0] if n is None else n
    cumulative = jnp.cumsum(jax.nn.softmax(log_weights))
    positions = (jax.random.uniform(key, (), cumulative.dtype) + jnp.arange(n)) / n
    return jnp.minimum(jnp.searchsorted(cumulative, positions), log_weights.shape[0] - 1)


def _smc(
    prior: MSGM,
    log_likelihood,
    draw_others,
    key,
    proposal,
    *,
    groups,
    group_size,
    steps,
    ess_threshold,
    mixing_rate,
    cg_steps,
):
    """One run: `groups` norms (and other latent values) from the proposal, each with
    `group_size` direction particles that are resampled only among themselves."""
    score = prior.score
    noise, norm_model, dtype = score.noise, prior.norm_model, prior.float_dtype

    def data_point(u, log_r):
        return _to_data(prior, jnp.exp(log_r) * u)

    def log_likelihood_of_coordinates(y, others):
        return log_likelihood(_to_data(prior, y), others)

    def twist_and_guidance(u, log_r, others, s):
        """(log ψ(u), the score g(u), the guidance ∇_S log ψ(u)); see the module docstring."""
        tau = score.tau(s)
        correlation = jnp.exp(-mixing_rate * tau)
        variance = jnp.exp(2.0 * log_r) * -jnp.expm1(-2.0 * mixing_rate * tau) / (2.0 * mixing_rate)

        def denoise(u):
            g = score(u, log_r, s)
            direction = renormalise(sphere_exp(u, tau * noise._diffusion(u, g)))
            return jnp.exp(log_r) * correlation * direction, g

        y_hat, pull_back, g = jax.vjp(denoise, u, has_aux=True)
        value, gradient = jax.value_and_grad(log_likelihood_of_coordinates)(y_hat, others)

        def inflated(v):
            curvature = jax.jvp(
                jax.grad(lambda y: log_likelihood_of_coordinates(y, others)), (y_hat,), (v,)
            )[1]
            return v - variance * curvature

        solved = _truncated_cg(inflated, gradient, cg_steps)
        (guidance,) = pull_back(solved)
        return value + 0.5 * variance * jnp.dot(gradient, solved), g, project_tangent(u, guidance)

    chunk = max(1, PARTICLE_CHUNK_BUDGET // score.dim)

    def twists(u, log_r, others, s):
        """The twist, score and guidance of every particle, in chunks of bounded memory."""

        def one(particle):
            return twist_and_guidance(*particle, s)

        if u.shape[0] <= chunk:
            return jax.vmap(one)((u, log_r, others))
        return jax.lax.map(one, (u, log_r, others), batch_size=chunk)

    times = reverse_times(score.schedule, score.t_eps, steps, dtype)
    norm_key, direction_key, others_key, step_key, final_key = jax.random.split(key, 5)
    n = groups * group_size

    def per_particle(group_values):
        return jax.tree.map(lambda a: jnp.repeat(a, group_size, axis=0), group_values)

    group_log_r = proposal.sample(norm_key, norm_model, groups, dtype)
    z = jax.random.normal(direction_key, (n, score.dim), dtype)
    u = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    log_r = per_particle(group_log_r)
    others = per_particle(
        jax.vmap(draw_others)(
            jax.random.split(others_key, groups),
            jax.vmap(data_point)(u[::group_size], group_log_r),
        )
    )
    log_psi, g, h = twists(u, log_r, others, times[0])
    log_weights, (log_psi, g, h), dropped = _drop_non_finite(
        norm_model.log_prob(log_r) - proposal.log_prob(log_r, norm_model), log_psi, log_psi, g, h
    )

    def guided_step(u, xi, d_tau, g, h):
        coordinates = noise.drift_coordinates(u, h)
        shift = jnp.sqrt(d_tau * jnp.sum(coordinates**2))
        damping = jnp.minimum(1.0, MAX_GUIDANCE_SHIFT / jnp.maximum(shift, 1e-30))
        h, coordinates = damping * h, damping * coordinates
        u_next = noise.rotation_step(u, xi, d_tau, g + h, d_tau)
        girsanov = -jnp.sqrt(d_tau) * jnp.sum(xi * coordinates) - 0.5 * d_tau * jnp.sum(
            coordinates**2
        )
        return renormalise(u_next), girsanov

    guided_steps = jax.vmap(guided_step, in_axes=(0, 0, None, 0, 0))
    offsets = jnp.arange(groups)[:, None] * group_size

    def resample_within_groups(key, log_weights):
        """(indices, log-weights): systematic resampling of each group whose ESS is low; a
        resampled group keeps its total weight, shared equally."""
        grouped = log_weights.reshape(groups, group_size)
        resample = jax.vmap(_ess)(grouped) < ess_threshold * group_size
        local = jax.vmap(_systematic_indices)(jax.random.split(key, groups), grouped)
        local = jnp.where(resample[:, None], local, jnp.arange(group_size))
        level = jax.nn.logsumexp(grouped, axis=1, keepdims=True) - math.log(group_size)
        grouped = jnp.where(resample[:, None], level, grouped)
        return (local + offsets).ravel(), grouped.ravel(), jnp.sum(resample)

    def step(carry, inputs):
        u, log_psi, g, h, log_weights, resamplings, dropped = carry
        s, s_next, key = inputs
        noise_key, resample_key = jax.random.split(key)
        d_tau = score.tau(s) - score.tau(s_next)
        xi = jax.random.normal(noise_key, (n, *noise.increment_shape), dtype)
        u_next, girsanov = guided_steps(u, xi, d_tau, g, h)
        log_psi_next, g, h = twists(u_next, log_r, others, s_next)
        log_weights, (u_next, log_psi_next, g, h), newly_dropped = _drop_non_finite(
            log_weights, girsanov + log_psi_next - log_psi, u_next, log_psi_next, g, h
        )
        u_next = jnp.where(jnp.isfinite(log_weights)[:, None], u_next, u)
        chosen, log_weights, resampled = resample_within_groups(resample_key, log_weights)
        u, log_psi, g, h = (a[chosen] for a in (u_next, log_psi_next, g, h))
        return (
            u,
            log_psi,
            g,
            h,
            log_weights,
            resamplings + resampled,
            dropped + newly_dropped,
        ), None

    carry = (u, log_psi, g, h, log_weights, jnp.zeros((), jnp.int32), dropped)
    keys = jax.random.split(step_key, steps)
    (u, log_psi, _, _, log_weights, resamplings, dropped), _ = jax.lax.scan(
        step, carry, (times[:-1], times[1:], keys)
    )
    x = jax.vmap(data_point)(u, log_r)
    final = jax.vmap(log_likelihood)(x, others) - log_psi
    log_weights, _, last_dropped = _drop_non_finite(log_weights, final)
    chosen = _systematic_indices(final_key, log_weights)
    return SMCOutput(
        x=x[chosen],
        others=jax.tree.map(lambda a: a[chosen], others),
        group_log_r=group_log_r,
        group_log_weights=jax.nn.logsumexp(log_weights.reshape(groups, group_size), axis=1),
        ess=_ess(log_weights),
        group_ess=_ess(jax.nn.logsumexp(log_weights.reshape(groups, group_size), axis=1)),
        log_evidence=jax.nn.logsumexp(log_weights) - math.log(n),
        resamplings=resamplings,
        dropped=dropped + last_dropped,
    )
