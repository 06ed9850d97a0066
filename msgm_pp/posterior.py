r"""Posterior sampling in NumPyro with a score-based prior: :class:`TwistedSMC`.

The problem is a NumPyro model with one MSGM (or SGM) site x, any other latent sites θ (a noise
scale with a prior, say) and observed sites y. :class:`TwistedSMC` reads the model's structure,
builds log p(y | x, θ) and a draw of θ from the model itself, and samples p(x, θ | y) by twisted
sequential Monte Carlo over the prior's reverse process (:mod:`msgm_pp.smc`, where the target,
twist, weights and norm proposal are stated).

Each run is compiled once per model and argument shapes. `norm_rounds` pilot runs first adapt the
MSGM's norm proposal: the first uses q = p_ℓ, each later one a kernel density of the previous
run's weighted group log-norms (:func:`msgm_pp.smc.adapted_proposal`). Only the last run is
returned; the pilots only choose q. An SGM has no norm and skips the pilots.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import Distribution, ExpandedDistribution, Independent, Normal
from numpyro.primitives import Messenger

from msgm_pp._checks import (
    check_key,
    check_positive_int,
    describe_indices,
    warn_caller,
    warn_deprecated,
)
from msgm_pp._progress import progress_bar
from msgm_pp.score_based import ScoreBasedDistribution
from msgm_pp.smc import (
    NormProposal,
    SMCOutput,
    adapted_proposal,
    particle_chunk,
    process_of,
    twisted_smc,
    typical_point,
)
from msgm_pp.split_gibbs import SplitGibbs, split_gibbs
from msgm_pp.twists import EnergyTwist, TweedieTwist


class ModelParts(NamedTuple):
    """What a NumPyro model holds for the sampler: its prior site, the other latent sites and the
    observed ones."""

    prior_site: str
    prior: ScoreBasedDistribution
    latent_sites: tuple[str, ...]
    observed_sites: tuple[str, ...]


class _PlaceholderPriorDraws(Messenger):
    """Give score-based sites a placeholder value instead of running their sampler, so that the
    structure of a model is read without a costly reverse-time draw: a draw of its latent law
    mapped to data (for an MSGM a typical norm and a uniform direction), ones when the site has
    another shape."""

    def __init__(self, fn=None):
        self.filled: dict[str, tuple[int, ...]] = {}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["value"] is None:
            fn = msg["fn"]
            if isinstance(fn, ScoreBasedDistribution):
                shape = fn.shape(msg["kwargs"].get("sample_shape", ()))
                msg["value"] = (
                    typical_point(fn, jax.random.key(0))
                    if shape == fn.event_shape
                    else jnp.ones(shape)
                )
                self.filled[msg["name"]] = tuple(msg["value"].shape)


def _trace(model, args, kwargs, *, substitutions, key=None):
    conditioned = _PlaceholderPriorDraws(handlers.substitute(model, data=substitutions))
    if key is not None:
        conditioned = handlers.seed(conditioned, key)
    return handlers.trace(conditioned).get_trace(*args, **kwargs)


def _sample_sites(trace: dict) -> dict:
    return {name: site for name, site in trace.items() if site["type"] == "sample"}


def inspect_model(model, args, kwargs, key) -> ModelParts:
    """Find the single score-based site of `model` and check its observed sites; see the errors
    below."""
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
        while not isinstance(inner, ScoreBasedDistribution) and hasattr(inner, "base_dist"):
            inner = inner.base_dist
        if isinstance(inner, ScoreBasedDistribution) and inner is not site["fn"]:
            raise ValueError(
                f"the {type(inner).__name__} site {name!r} is wrapped in a "
                f"{type(site['fn']).__name__} (inside a plate, or expanded or masked); TwistedSMC "
                "needs one draw of the prior itself."
            )
    priors = [
        name
        for name, site in trace.items()
        if not site["is_observed"] and isinstance(site["fn"], ScoreBasedDistribution)
    ]
    if len(priors) != 1:
        found = ", ".join(f"{n!r}: {type(s['fn']).__name__}" for n, s in trace.items()) or "none"
        raise ValueError(
            "TwistedSMC needs a model with exactly one latent site whose distribution is an "
            f"msgm_pp.MSGM or SGM, found {len(priors)} (sample sites: {found})."
        )
    value_shape = tuple(trace[priors[0]]["value"].shape)
    if value_shape != tuple(trace[priors[0]]["fn"].event_shape):
        raise ValueError(
            f"the prior site {priors[0]!r} has shape {value_shape} (inside a plate or with "
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
    """Posterior draws for a NumPyro model with an MSGM or SGM prior, by twisted SMC over the
    prior's reverse process (:mod:`msgm_pp.smc` states the target, twist, weights and norms).

    Usage mirrors `numpyro.infer.MCMC`::

        smc = mp.TwistedSMC(model, num_particles=1024, num_chains=4)
        smc.run(jax.random.key(0), prior, y=y)      # the model's own arguments
        draws = smc.get_samples()                   # {"x": (4 * 1024, d), other latent sites}
        idata = smc.to_inference_data()             # ArviZ, with chains = independent runs

    Args:
        model: a NumPyro model with exactly one latent site whose distribution is an `MSGM` or
            an `SGM`.
        num_particles: particles per run (at least 2); the error of the estimates falls like
            1/√ESS.
        particles_per_norm: the particles that share one norm and one value of the other latent
            sites, and are resampled among themselves (a multiple of it makes `num_particles`).
        num_chains: independent runs, reported as chains (R-hat across them checks that runs
            agree).
        steps: reverse steps; None takes the model's `SDESampler` steps (the law of `sample`).
        norm_rounds: pilot runs that adapt the norm proposal before the returned run (none
            for an SGM, which has no norm).
        pilot_steps: reverse steps of the pilot runs; None takes `steps`. The pilots only place
            the norm proposal, whatever it is the weighted run stays exact, so coarser pilots
            trade some of the proposal's quality for time.
        ess_threshold: resample a group when its effective sample size falls below this
            fraction of its particles.
        twist: how a particle guesses the likelihood of its end point
            (:mod:`msgm_pp.twists`): `TweedieTwist()` by default, which works with any
            likelihood, or `EnergyTwist()` for Normal observed sites, built for fields (README,
            "Fields"). The weighted run is exact with either.
        cg_steps: deprecated; pass `twist=TweedieTwist(cg_steps=...)`.
        weighted: True (the default) weights and resamples the particles: the estimates converge
            to the posterior as the particles grow. False is the fast approximate mode: every
            particle follows the twisted proposal and is returned as a draw, never weighted or
            resampled (the pilot rounds that choose the norms stay weighted). Its draws are
            independent given their norms but biased by how far the twist is from the exact
            conditional; `ess` still reports the importance ESS they would have for the exact
            target. The README gives the bias measured on problems with a known posterior.
        refine: None, or :class:`~msgm_pp.SplitGibbs` sweeps that move each approximate draw
            towards its data through the prior's own noise after the run (only with
            `weighted=False`: the sweeps are approximate too, and would bias the weighted mode).
            For fields, whose approximate draws can end far from the data (README, "Fields").
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
        pilot_steps: int | None = None,
        ess_threshold: float = 0.5,
        twist: TweedieTwist | EnergyTwist | None = None,
        cg_steps: int | None = None,
        weighted: bool = True,
        refine: SplitGibbs | None = None,
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
        self.pilot_steps = (
            None if pilot_steps is None else check_positive_int(pilot_steps, "pilot_steps")
        )
        if not 0.0 < float(ess_threshold) <= 1.0:
            raise ValueError(f"`ess_threshold` must lie in (0, 1], got {ess_threshold}.")
        self.ess_threshold = float(ess_threshold)
        if cg_steps is not None:
            if twist is not None:
                raise ValueError("pass the conjugate-gradient steps in `twist`, not `cg_steps`.")
            warn_deprecated(
                "TwistedSMC(cg_steps=...) is deprecated: pass twist=TweedieTwist(cg_steps=...)."
            )
            twist = TweedieTwist(cg_steps)
        twist = TweedieTwist() if twist is None else twist
        if not isinstance(twist, TweedieTwist | EnergyTwist):
            raise TypeError(
                f"`twist` must be an msgm_pp.TweedieTwist or EnergyTwist, got {twist!r}."
            )
        self.twist = twist
        if not isinstance(weighted, bool):
            raise TypeError(f"`weighted` must be True or False, got {weighted!r}.")
        self.weighted = weighted
        if refine is not None and not isinstance(refine, SplitGibbs):
            raise TypeError(f"`refine` must be None or an msgm_pp.SplitGibbs, got {refine!r}.")
        if refine is not None and weighted:
            raise ValueError(
                "`refine` moves the draws of the approximate mode: pass weighted=False with it "
                "(the sweeps are approximate, so they would bias the weighted mode's draws)."
            )
        self.refine = refine
        self.progress = progress
        self._runs: list[SMCOutput] = []
        self._parts: ModelParts | None = None
        self._model_arguments: tuple[tuple, dict] = ((), {})

    def run(self, key, *args, **kwargs) -> None:
        """Sample the posterior of `model(*args, **kwargs)`; read it with :meth:`get_samples`."""
        key = check_key(key)
        inspect_key, *chain_keys = jax.random.split(key, self.num_chains + 1)
        parts = inspect_model(self.model, args, kwargs, inspect_key)
        prior = parts.prior
        steps = prior.sampler.steps if self.steps is None else self.steps
        log_likelihood, _, draw_others = _model_functions(self.model, args, kwargs, parts)
        _check_likelihood(log_likelihood, draw_others, prior, parts, inspect_key)
        if isinstance(self.twist, EnergyTwist):
            needs = "EnergyTwist averages Normal observations (TweedieTwist takes any likelihood)"
            _check_gaussian_sites(self.model, args, kwargs, parts, inspect_key, needs)
        if self.refine is not None:
            needs = "SplitGibbs conditions on Normal observations"
            _check_gaussian_sites(self.model, args, kwargs, parts, inspect_key, needs)
        dtype = prior.float_dtype
        settings = {
            "groups": self.num_particles // self.group_size,
            "group_size": self.group_size,
            "steps": steps,
            "ess_threshold": self.ess_threshold,
            "twist": self.twist,
            "dtype": dtype,
        }

        process = process_of(prior)

        def run_once(run_key, proposal, weighted, steps=steps):
            run_settings = dict(settings, weighted=weighted, steps=steps)
            return _model_smc(
                self.model, parts, process, args, kwargs, run_key, proposal, run_settings
            )

        norm_model = getattr(prior, "norm_model", None)
        rounds = self.norm_rounds if norm_model is not None else 0
        stages = rounds + 1 + (self.refine is not None)
        bar = progress_bar(self.num_chains * stages, "twisted SMC", self.progress)
        runs = []
        for chain_key in chain_keys:
            proposal = None if norm_model is None else NormProposal.prior(settings["groups"], dtype)
            for round_key in jax.random.split(chain_key, rounds + 1)[:-1]:
                pilot = run_once(round_key, proposal, True, self.pilot_steps or steps)
                proposal = adapted_proposal(pilot, norm_model, dtype)
                bar.update(1)
            run = jax.block_until_ready(run_once(chain_key, proposal, self.weighted))
            bar.update(1)
            bar.set_postfix(ess=f"{float(run.ess):.0f}")
            if self.refine is not None:
                refine_key = jax.random.fold_in(chain_key, 1)
                run, unrefined = _model_split_gibbs(
                    self.model, parts, process, args, kwargs, refine_key, run, self.refine, steps
                )
                bar.update(1)
                if int(unrefined):
                    warn_caller(
                        f"{int(unrefined)} draws met non-finite values in the SplitGibbs sweeps "
                        "and are returned as the run left them. Check the model for overflow."
                    )
            runs.append(run)
        bar.close()
        self._runs, self._parts, self._model_arguments = runs, parts, (args, kwargs)
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
        """The effective sample size of each run's final weights, (chains,). With
        `weighted=False` the draws are not weighted, and this is the importance ESS they would
        have as draws of the exact target: a gauge of the approximation."""
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

    def log_likelihood(self, group_by_chain: bool = False) -> dict:
        """log p(y | x, θ) of every observed site at each draw, as `numpyro.infer.log_likelihood`
        gives it for MCMC draws: (chains × particles, ...) or (chains, particles, ...). Draws
        that fit the data score about as well as the truth would; a posterior whose draws score
        far below it has not reached the data (see the README's field benchmark)."""
        from numpyro.infer import log_likelihood

        args, kwargs = self._model_arguments
        draws = self.get_samples(group_by_chain=True)
        values = log_likelihood(self.model, draws, *args, batch_ndims=2, **kwargs)
        if group_by_chain:
            return values
        return {name: value.reshape(-1, *value.shape[2:]) for name, value in values.items()}

    def to_inference_data(self):
        """The draws as an ArviZ InferenceData (DataTree in ArviZ 1.x), chains = runs, with each
        run's ESS and log-evidence in `sample_stats` and each observed site's log-likelihood at
        every draw in `log_likelihood` (as `az.from_numpyro` gives for MCMC)."""
        import arviz as az

        draws = {k: np.asarray(v) for k, v in self.get_samples(group_by_chain=True).items()}
        stats = {
            "smc_ess": np.repeat(self.ess[:, None], self.num_particles, axis=1),
            "log_evidence": np.repeat(self.log_evidence[:, None], self.num_particles, axis=1),
        }
        fit = {k: np.asarray(v) for k, v in self.log_likelihood(group_by_chain=True).items()}
        if int(az.__version__.split(".")[0]) >= 1:  # ArviZ 1.x takes the groups as one dict
            return az.from_dict({"posterior": draws, "sample_stats": stats, "log_likelihood": fit})
        return az.from_dict(posterior=draws, sample_stats=stats, log_likelihood=fit)


def _innermost(fn):
    """A distribution without its `Independent` and expanded wrappers."""
    while isinstance(fn, Independent | ExpandedDistribution):
        fn = fn.base_dist
    return fn


def _normal_of(site: dict):
    """The Normal inside an observed site's distribution, or None."""
    fn = _innermost(site["fn"])
    return fn if type(fn) is Normal else None


def _gaussian_observations(site: dict):
    """(values, means, scales) of a Normal observed site, flat; a site scaled by w (a
    `handlers.scale`) has its log-density multiplied by w, as a Normal of scale σ/√w."""
    normal = _normal_of(site)
    value = jnp.asarray(site["value"])
    scale = normal.scale if site["scale"] is None else normal.scale / jnp.sqrt(site["scale"])
    return tuple(jnp.broadcast_to(a, value.shape).ravel() for a in (value, normal.loc, scale))


def _check_gaussian_sites(model, args, kwargs, parts: ModelParts, key, needs: str) -> None:
    trace = _trace(model, args, kwargs, substitutions={}, key=key)
    others = [
        f"{name!r} ({type(_innermost(trace[name]['fn'])).__name__})"
        for name in parts.observed_sites
        if _normal_of(trace[name]) is None
    ]
    if others:
        raise ValueError(f"{needs}, but the observed site(s) {', '.join(others)} are not Normal.")


def _model_functions(model, args, kwargs, parts: ModelParts):
    """(log p(y | x, θ), the flat (values, means, scales) of its Normal observed sites, a draw of
    θ from its prior) for one particle."""

    def log_likelihood(x, others):
        trace = _trace(model, args, kwargs, substitutions={parts.prior_site: x, **others})
        total = 0.0
        for name in parts.observed_sites:
            site = trace[name]
            log_p = jnp.sum(site["fn"].log_prob(site["value"]))
            total = total + (log_p if site["scale"] is None else site["scale"] * log_p)
        return total

    def observations(x, others):
        trace = _trace(model, args, kwargs, substitutions={parts.prior_site: x, **others})
        sites = [_gaussian_observations(trace[name]) for name in parts.observed_sites]
        return tuple(jnp.concatenate(arrays) for arrays in zip(*sites, strict=True))

    def draw_others(key, x):
        trace = _trace(model, args, kwargs, substitutions={parts.prior_site: x}, key=key)
        return {name: trace[name]["value"] for name in parts.latent_sites}

    return log_likelihood, observations, draw_others


def _check_likelihood(log_likelihood, draw_others, prior, parts: ModelParts, key) -> None:
    """Run the likelihood once on a prior draw, so that shape errors name the sites."""
    x = typical_point(prior, key)
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
def _model_smc(model, parts: ModelParts, process, args, kwargs, key, proposal, settings):
    """One SMC run for `model(*args, **kwargs)`, compiled once per model and argument shapes."""
    log_likelihood, observations, draw_others = _model_functions(model, args, kwargs, parts)
    norm_model = getattr(parts.prior, "norm_model", None)
    return twisted_smc(
        process, norm_model, log_likelihood, observations, draw_others, key, proposal, **settings
    )


@eqx.filter_jit
def _model_split_gibbs(model, parts: ModelParts, process, args, kwargs, key, run, settings, steps):
    """`run` with its draws moved by the split-Gibbs sweeps, one particle at a time in chunks."""
    log_likelihood, observations, _ = _model_functions(model, args, kwargs, parts)
    norm_model = getattr(parts.prior, "norm_model", None)

    def one(particle):
        key, z, log_r, others = particle
        return split_gibbs(
            key,
            process,
            norm_model,
            log_likelihood,
            observations,
            z,
            log_r,
            others,
            settings=settings,
            steps=steps,
        )

    n = run.states.shape[0]
    particles = (jax.random.split(key, n), run.states, run.log_r, run.others)
    states, log_r = jax.lax.map(one, particles, batch_size=min(n, particle_chunk(process.dim)))
    x = jax.vmap(process.data_point)(states, log_r)
    finite = jnp.all(jnp.isfinite(x.reshape(n, -1)), axis=1) & jnp.isfinite(log_r)

    def kept(new, old):
        return jnp.where(finite.reshape((n,) + (1,) * (new.ndim - 1)), new, old)

    refined = run._replace(
        x=kept(x, run.x), states=kept(states, run.states), log_r=kept(log_r, run.log_r)
    )
    return refined, n - jnp.sum(finite)
