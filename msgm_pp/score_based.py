r"""`ScoreBasedDistribution`: what the MSGM and the SGM baseline share as NumPyro distributions.

Both are single distributions (batch_shape ()) whose samples come from a reverse-time sampler and
whose `log_prob` integrates a probability-flow ODE. Their event shape is (d,) for vectors and the
field's shape (h, w) for a lattice model. This base class holds what does not depend on the forward
process:

- the settings `sampler` (:class:`~msgm_pp.SDESampler` or :class:`~msgm_pp.ODESampler`) and
  `density` (:class:`~msgm_pp.ODEDensity`), changed with :meth:`ScoreBasedDistribution.with_options`;
- drawing in compiled chunks of bounded memory, and evaluating log p for any batch shape in
  vectorised chunks;
- pytree flattening that keeps only arrays as leaves, so a model passes through jit and vmap;
- saving (:mod:`msgm_pp.serialization`).

A subclass declares its `pytree_data_fields` (the model parts, then "history"), its `event_shape`
through `_point_shape`, and two single-chunk and single-point kernels: `_draw_chunk(key, n)`,
which returns n flat draws (n, d), and `_log_prob_point(x, key)` for one flat point x (d,).
"""

import json
import math
import numbers
import warnings
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

from msgm_pp._checks import (
    check_key,
    check_points,
    check_positive_int,
    check_weight_decay,
    is_concrete,
    warn_deprecated,
)
from msgm_pp._progress import progress_bar
from msgm_pp.density import ExactTrace, HutchinsonTrace, ODEDensity, check_density
from msgm_pp.nets import hidden_weights
from msgm_pp.samplers import ODESampler, SDESampler, check_sampler
from msgm_pp.serialization import save
from msgm_pp.training import (
    NetworkLoss,
    cosine_learning_rate,
    make_optimizer,
    optimizer_settings,
    record_settings,
    train,
    validation_terms,
)

_CHUNK_BUDGET = 2**18  # sample rows × d per compiled chunk: bounded memory for any n
_DENSITY_CHUNK_BUDGET = 2**16  # log_prob rows × d per vectorised chunk
_LEGACY_OPTIONS = ("sample_steps", "log_prob_steps", "trace", "num_probes")


def _legacy_settings(sampler, density, options: dict):
    """(sampler, density) from the 0.1 spellings: sampler "sde"/"ode", sample_steps,
    log_prob_steps, trace "exact"/"hutchinson" and num_probes."""
    unknown = sorted(set(options) - set(_LEGACY_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; the options are 'sampler' and 'density'.")
    if isinstance(sampler, str) or "sample_steps" in options:
        kinds = {"sde": SDESampler, "ode": ODESampler}
        if isinstance(sampler, str) and sampler not in kinds:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(kinds)}.")
        kind = kinds[sampler] if isinstance(sampler, str) else type(sampler or SDESampler())
        steps = sampler.steps if isinstance(sampler, SDESampler | ODESampler) else 128
        sampler = kind(check_positive_int(options.get("sample_steps", steps), "sample_steps"))
    if any(name in options for name in ("log_prob_steps", "trace", "num_probes")):
        density = ODEDensity() if density is None else density
        trace = options.get("trace")
        if trace not in (None, "exact", "hutchinson"):
            raise ValueError(f"unknown trace estimator {trace!r}; choose 'exact' or 'hutchinson'.")
        current = density.trace if isinstance(density.trace, HutchinsonTrace) else None
        if trace == "exact":
            density_trace = ExactTrace()
        elif trace == "hutchinson" or (current is not None and "num_probes" in options):
            current = current or HutchinsonTrace()
            probes = options.get("num_probes", current.num_probes)
            density_trace = HutchinsonTrace(check_positive_int(probes, "num_probes"), current.seed)
        else:
            density_trace = density.trace  # 0.1 ignored num_probes with the exact trace too
        steps = options.get("log_prob_steps", density.steps)
        density = ODEDensity(check_positive_int(steps, "log_prob_steps"), density_trace)
    return sampler, density


def resolve_settings(sampler, density, options: dict, *, warn: bool = True):
    """The `sampler` and `density` settings, accepting the 0.1 spellings with a DeprecationWarning."""
    if options or isinstance(sampler, str):
        if warn:
            warn_deprecated(
                "the options sampler='sde'/'ode', sample_steps, log_prob_steps, trace and "
                "num_probes are deprecated: pass sampler=mp.SDESampler(steps) or "
                "mp.ODESampler(steps), and density=mp.ODEDensity(steps, trace)."
            )
        sampler, density = _legacy_settings(sampler, density, options)
    sampler = SDESampler() if sampler is None else check_sampler(sampler)
    density = ODEDensity() if density is None else check_density(density)
    return sampler, density


def flat_points(data, event_shape, *, allow_zero_rows: bool = False):
    """`data` as checked flat points (n, d): rows of shape `event_shape` (any (n, d) when None), or
    already flattened fields (n, d)."""
    x = data if hasattr(data, "shape") else np.asarray(data, dtype=float)
    if event_shape is not None and len(event_shape) > 1 and x.shape[1:] == tuple(event_shape):
        x = x.reshape(x.shape[0], -1)
    dim = None if event_shape is None else math.prod(event_shape)
    return check_points(x, "data", dim=dim, allow_zero_rows=allow_zero_rows)


def split_training(options: dict, max_steps: int):
    """(the other options, {"max_steps": ...}), accepting the 0.1 keyword `steps` with a warning."""
    options = dict(options)
    if "steps" in options:
        warn_deprecated(
            "fit(steps=...) is deprecated: the number of training steps is now max_steps."
        )
        max_steps = options.pop("steps")
    return options, {"max_steps": max_steps}


def fit_built(
    model,
    data,
    *,
    key,
    loss,
    learning_rate,
    clip_norm,
    weight_decay,
    optimizer,
    training,
    settings,
    candidates=None,
    selection=None,
):
    """What `MSGM.fit` and `SGM.fit` do after `build`: train with `make_optimizer` unless an
    optimizer is given (with the learning rate `cosine_learning_rate(max_steps)` when
    `learning_rate` is None and no weight decay when `weight_decay` is None), and record the
    settings in the history.

    Several candidates — a sequence of weight decays, or `candidates` (:class:`Candidate`) — are
    each trained with the same key, so on the same validation rows, and `selection` (scores,
    standard errors) -> label picks the one to keep: :func:`lowest_validation_score` (None, the
    default) or :func:`one_standard_error_rule`. The history records every candidate's score
    and, for any other selection than the default (which needs no more), the
    :func:`paired_standard_errors` of its difference from the lowest: one more evaluation of
    the validation rows per candidate."""
    if optimizer is not None and weight_decay is not None:
        raise ValueError(
            "`weight_decay` sets the default optimiser's decay; with your own `optimizer`, put the "
            "decay in it (for instance optax.adamw)."
        )
    selection = lowest_validation_score if selection is None else selection
    if not callable(selection):
        raise TypeError(
            "`selection` must be a function (scores, standard errors) -> label, such as "
            f"mp.one_standard_error_rule, got {selection!r}."
        )
    if training["max_steps"] is None:
        training = dict(training, max_steps=model.default_max_steps())
    if optimizer is not None:
        trained = train(model, data, key=key, loss=loss, optimizer=optimizer, **training)
        recorded = optimizer_settings(learning_rate, clip_norm, None, optimizer)
        return _with_settings(trained, settings, recorded)
    rate = cosine_learning_rate(training["max_steps"]) if learning_rate is None else learning_rate
    if candidates is None:
        candidates = [
            Candidate(f"weight_decay={decay:g}", model, decay, training.get("row_weights"), {})
            for decay in _weight_decays(model, weight_decay, training)
        ]
    fits = {}
    for candidate in candidates:
        optimizer = make_optimizer(rate, clip_norm, candidate.weight_decay)
        options = dict(training, row_weights=candidate.row_weights)
        trained = train(candidate.model, data, key=key, loss=loss, optimizer=optimizer, **options)
        fits[candidate.label] = (trained, candidate)
        if trained.history.stop_reason == "interrupted":  # Ctrl-C ends the search too
            break
    if len(candidates) == 1:
        ((trained, candidate),) = fits.values()
        recorded = optimizer_settings(learning_rate, clip_norm, candidate.weight_decay, None)
        return _with_settings(trained, settings, recorded)
    scores = {label: validation_score(trained) for label, (trained, _) in fits.items()}
    standard_errors = {}
    if selection is not lowest_validation_score:  # the only selection that ignores them
        terms = {
            label: validation_nats(
                trained,
                data,
                key=key,
                validation_fraction=training["validation_fraction"],
                validation=training["validation"],
            )
            for label, (trained, _) in fits.items()
        }
        standard_errors = paired_standard_errors(terms, lowest_validation_score(scores, {}))
    kept = selection(scores, standard_errors)
    if kept not in fits:
        raise ValueError(
            f"`selection` returned {kept!r}, which is none of the candidates {list(fits)}."
        )
    trained, candidate = fits[kept]
    recorded = optimizer_settings(learning_rate, clip_norm, candidate.weight_decay, None)
    recorded["candidate"] = candidate.label
    recorded["selection"] = getattr(selection, "__name__", "custom")
    recorded["validation_by_candidate"] = json.dumps(scores)
    if standard_errors:
        recorded["standard_error_by_candidate"] = json.dumps(standard_errors)
    return _with_settings(trained, {**settings, **candidate.settings}, recorded)


def lowest_validation_score(scores: dict, standard_errors: dict) -> str:
    """The candidate with the lowest validation score: what `fit` keeps by default, the choice
    with the best expected held-out likelihood when the scores are unbiased."""
    return min(scores, key=scores.get)


def one_standard_error_rule(scores: dict, standard_errors: dict) -> str:
    """The first candidate (candidates are listed simplest first) whose validation score exceeds
    the lowest by at most its standard error (:func:`paired_standard_errors`): the one-standard-
    error rule (Breiman, Friedman, Olshen & Stone 1984; Hastie, Tibshirani & Friedman 2009,
    §7.10), so a more complex candidate must beat the simpler ones by more than the noise of the
    validation rows. It gives up some expected likelihood for robustness on small data sets.
    Without standard errors (the loss criterion), the lowest score."""
    if set(standard_errors) != set(scores):
        return lowest_validation_score(scores, standard_errors)
    lowest = min(scores.values())
    return next(label for label in scores if scores[label] - lowest <= standard_errors[label])


def paired_standard_errors(terms: dict, best: str) -> dict:
    """For each candidate, the standard error sd/√n of its per-row validation terms minus those
    of the candidate `best`, row by row (the candidates share their validation rows, so the
    difference is paired); {} where any candidate has no per-row terms (None)."""
    if any(value is None for value in terms.values()):
        return {}
    standard_errors = {}
    for label, value in terms.items():
        difference = np.asarray(value, np.float64) - np.asarray(terms[best], np.float64)
        spread = np.std(difference, ddof=1) if difference.size > 1 else 0.0
        standard_errors[label] = float(spread / math.sqrt(difference.size))
    return standard_errors


def validation_nats(trained, data, *, key, validation_fraction: float = 0.1, validation=None):
    """Each validation row's −log p(x) in nats, in the units of the data, under the network that
    :func:`msgm_pp.train` with this `key`, `data`, `validation_fraction` and `validation`
    returned (:func:`msgm_pp.training.validation_terms` of the likelihood criterion, minus log
    |det W| of the model's coordinates); None where the criterion is the training loss, whose
    terms are not per row."""
    criterion = trained.validation_criterion(validation)
    if not hasattr(criterion, "per_point"):
        return None
    terms = validation_terms(
        trained.score.net,
        criterion,
        trained.training_data(data),
        key=key,
        validation_fraction=validation_fraction,
    )
    return _in_data_units(trained, terms)


class Candidate(NamedTuple):
    """One fit that :func:`fit_built` trains and compares with the others by validation score:
    the built `model` to train, its optimiser's `weight_decay`, the `row_weights` of its training
    rows (None: uniform) and the `settings` its history records if it is kept."""

    label: str
    model: Any
    weight_decay: float
    row_weights: Any
    settings: dict


def validation_score(trained) -> float:
    """The best validation score of a trained model, in units of the data x: a likelihood criterion
    scores the coordinates y = W(x − loc), and −log p(x) = −log p(y) − log |det W|, so candidates
    with different coordinates compare fairly (with the loss criterion, which candidates with
    the same coordinates only share, every score moves by the same constant)."""
    return _in_data_units(trained, float(np.nanmin(trained.history.validation_loss)))


def _in_data_units(trained, negative_log_density):
    """−log p(x) = −log p(y) − log |det W| for a model of the coordinates y = W(x − loc)."""
    coordinates = getattr(trained, "coordinates", None)
    if coordinates is None:
        return negative_log_density
    return negative_log_density - float(coordinates.log_abs_det())


def _weight_decays(model, weight_decay, training) -> tuple:
    """The weight decays to train with: one number, or several to choose from by validation."""
    if weight_decay is None:
        return (0.0,)
    if isinstance(weight_decay, numbers.Real | str):  # check_weight_decay refuses a string
        candidates = (weight_decay,)
    else:
        candidates = tuple(weight_decay)
        if not candidates:
            raise ValueError("`weight_decay` is an empty sequence; give at least one number.")
        if training["validation_fraction"] == 0:
            raise ValueError(
                "choosing among several `weight_decay` values needs validation rows, but "
                "validation_fraction=0."
            )
    candidates = tuple(check_weight_decay(decay) for decay in candidates)
    if max(candidates) > 0:
        hidden_weights(model.score.net)  # refuses a network it cannot decay, before training
    return candidates


def _with_settings(trained, settings: dict, recorded: dict):
    history = record_settings(trained.history, **settings, **recorded)
    return trained.with_network(trained.score.net, history)


@eqx.filter_jit
def _draw_chunk(model, key, chunk_size: int):
    return model._draw_chunk(key, chunk_size)


@eqx.filter_jit
def _log_prob_rows(model, x, key):
    """log p of the rows of x (n, d), vmapped in chunks of 2^16/d rows."""

    def one_point(point):
        return model._log_prob_point(point, key)

    chunk_size = max(1, _DENSITY_CHUNK_BUDGET // model.dim)
    if x.shape[0] <= chunk_size:
        return jax.vmap(one_point)(x)
    return jax.lax.map(one_point, x, batch_size=chunk_size)


_NO_CLOSED_FORM = (
    "{name}.{what}: a learned law has no closed-form {what}, and a heavy-tailed one may have none "
    "at all (a Cauchy-like tail has no mean); estimate it from draws, model.sample(key, (n,)), "
    "or use a robust summary such as their median."
)


class ScoreBasedDistribution(dist.Distribution):
    """Base class of :class:`msgm_pp.MSGM` and :class:`msgm_pp.SGM`; see the module docstring."""

    arg_constraints: ClassVar[dict] = {}
    pytree_aux_fields = ("sampler", "density")
    saved_as_model: ClassVar[bool] = True

    def _init_settings(self, validate_args, sampler, density, options: dict) -> None:
        # The default trace depends on d; fill it in first, so that a 0.1 `num_probes` applies.
        density = density.for_dim(self.dim) if isinstance(density, ODEDensity) else density
        if density is None and options:
            density = ODEDensity().for_dim(self.dim)
        sampler, density = resolve_settings(sampler, density, options, warn=True)
        self.sampler = sampler
        self.density = density.for_dim(self.dim)
        super().__init__(batch_shape=(), event_shape=self._point_shape, validate_args=validate_args)

    @property
    def _point_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """d, the number of coordinates of one point."""
        return math.prod(self._point_shape)

    @property
    def support(self):
        if len(self.event_shape) == 1:
            return constraints.real_vector
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def has_rsample(self) -> bool:
        """False: draws come from a stochastic sampler and are not reparametrised."""
        return False

    @property
    def mean(self):
        raise NotImplementedError(_NO_CLOSED_FORM.format(name=type(self).__name__, what="mean"))

    @property
    def variance(self):
        raise NotImplementedError(_NO_CLOSED_FORM.format(name=type(self).__name__, what="variance"))

    @property
    def options(self) -> dict:
        """The settings of `sample` and `log_prob`: {"sampler": ..., "density": ...}."""
        return {"sampler": self.sampler, "density": self.density}

    def constructor_arguments(self) -> dict:
        """The keyword arguments that rebuild this model (its parts and settings)."""
        parts = {name: getattr(self, name) for name in self.pytree_data_fields}
        return {**parts, **self.options}

    def with_options(self, *, sampler=None, density=None, **deprecated):
        """A copy with other settings, e.g. `model.with_options(sampler=mp.ODESampler(64))` or
        `model.with_options(density=mp.ODEDensity(steps=16))`."""
        sampler, density = resolve_settings(
            self.sampler if sampler is None else sampler,
            self.density if density is None else density,
            deprecated,
        )
        arguments = {**self.constructor_arguments(), "sampler": sampler, "density": density}
        return type(self)(**arguments, validate_args=self._validate_args)

    def default_batch_size(self) -> int:
        """The training batch size that `fit` and :func:`msgm_pp.train` use when none is given."""
        return 256

    def default_max_steps(self) -> int:
        """The training steps that `fit` and :func:`msgm_pp.train` take at most when not told:
        20000 (benchmarks/density.py measures what fewer cost in likelihood)."""
        return 20000

    def validation_criterion(self, name=None):
        """The early-stopping criterion (net, rows, key) -> scalar for :func:`msgm_pp.train`, or
        None for the training loss itself; the baseline knows only "loss"."""
        if name not in (None, "loss"):
            raise ValueError(
                f"{type(self).__name__} supports validation='loss' only, got {name!r}."
            )
        return None

    def network_loss(self, loss=None) -> NetworkLoss:
        """(net, batch, key) -> the loss (a name or `loss` object) with network `net`: what
        :func:`msgm_pp.train` optimises."""
        return NetworkLoss(self.score, self.loss(loss))

    def with_network(self, net, history=None):
        """This model with the network `net` (and the `history` that trained it)."""
        score = eqx.tree_at(lambda sc: sc.net, self.score, net)
        arguments = {**self.constructor_arguments(), "score": score, "history": history}
        return type(self)(**arguments, validate_args=self._validate_args)

    @classmethod
    def options_from_format_2(cls, options: dict) -> dict:
        """Settings saved by msgm_pp 0.1 (model format 1 and 2) in today's form."""
        legacy = dict(options)
        sampler = legacy.pop("sampler", "sde")
        sampler, density = resolve_settings(sampler, None, legacy, warn=False)
        return {"sampler": sampler, "density": density}

    @classmethod
    def infer_shapes(cls, score=None, *args, **kwargs):
        """((), event_shape): a single distribution whose event shape comes from its score.

        `score` may be the score module or its `jax.eval_shape` structure."""
        if score is None or not hasattr(score, "dim"):
            raise ValueError(
                f"{cls.__name__}.infer_shapes needs the score (the module or its jax.eval_shape "
                "structure): the event shape comes from its network, not from array shapes."
            )
        return (), tuple(getattr(getattr(score, "noise", None), "event_shape", (score.dim,)))

    def tree_flatten(self):
        # Only arrays become leaves; activations and other static parts of the network travel in
        # the tree definition, so the distribution passes through jax.jit and jax.vmap.
        fields, aux = super().tree_flatten()
        dynamic, static = eqx.partition(fields, eqx.is_array)
        return dynamic, (aux, static)

    @classmethod
    def tree_unflatten(cls, aux_data, params):
        aux, static = aux_data
        return super().tree_unflatten(aux, eqx.combine(params, static))

    def save(self, path) -> None:
        """Write the model to `path` (no pickle; atomic). Read it back with :func:`msgm_pp.load`."""
        save(self, path)

    def sample(self, key, sample_shape=()):
        """Draws of shape sample_shape + event_shape from the model's `sampler`.

        Draws are made in compiled chunks of at most 2^18 / d points, so memory stays bounded
        for any number of samples; a draw of several chunks shows its progress (see
        :mod:`msgm_pp._progress`).
        """
        key = check_key(key)
        shape = tuple(sample_shape) + self.batch_shape
        if not all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise ValueError(f"`sample_shape` must hold non-negative ints, got {sample_shape!r}.")
        n = math.prod(shape)
        if n == 0:
            return jnp.zeros((*shape, *self.event_shape))
        chunk_size = max(1, min(n, _CHUNK_BUDGET // self.dim))
        keys = jax.random.split(key, math.ceil(n / chunk_size))
        reported = len(keys) > 1 and is_concrete(key)
        bar = progress_bar(n, "sampling", None if reported else False)
        chunks = []
        for number, chunk_key in enumerate(keys):
            chunks.append(_draw_chunk(self, chunk_key, chunk_size))
            if reported:
                jax.block_until_ready(chunks[-1])
                bar.update(min(chunk_size, n - number * chunk_size))
        bar.close()
        x = jnp.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return x[:n].reshape((*shape, *self.event_shape))

    def log_prob(self, value):
        """log p(x) for x of shape batch + event_shape, by the model's `density` settings.

        It is −inf at x = 0 and differentiable in x. Non-finite entries are outside the support:
        with argument validation on (NumPyro's default) they give −inf and a warning; with
        `validate_args=False`, −inf for infinite and NaN for NaN entries.
        """
        x = self._as_points(value)
        if x.size == 0:
            return jnp.zeros(x.shape[: x.ndim - len(self.event_shape)], x.dtype)
        return self._validated_log_prob(x)

    @validate_sample
    def _validated_log_prob(self, value):
        return self._log_prob(value, self.density.probe_key())

    def _as_points(self, value):
        x = jnp.asarray(value)
        event_ndim = len(self.event_shape)
        if x.ndim < event_ndim or x.shape[x.ndim - event_ndim :] != self.event_shape:
            raise ValueError(
                f"`value` must have shape (..., {', '.join(map(str, self.event_shape))}) for this "
                f"model, got shape {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        # The ODE's carry keeps its dtype, so points are computed in the wider of theirs and the
        # model's (float32 data meet a float64 model whenever x64 is on).
        return x.astype(jnp.promote_types(x.dtype, self.float_dtype))

    @property
    def float_dtype(self):
        """The float type of the model's arrays."""
        arrays = [leaf for leaf in jax.tree.leaves(self.score) if eqx.is_inexact_array(leaf)]
        return arrays[0].dtype if arrays else jnp.result_type(float)

    def _log_prob(self, value, key):
        x = self._as_points(value)
        batch = x.shape[: x.ndim - len(self.event_shape)]
        rows = x.reshape(math.prod(batch), self.dim)
        if rows.shape[0] == 0:
            return jnp.zeros(batch, x.dtype)
        return _log_prob_rows(self, rows, key).reshape(batch)

    def draw(self, key, sample_shape=(), *, steps: int | None = None, sampler=None):
        """Deprecated: use `model.with_options(sampler=...).sample(key, shape)`."""
        warn_deprecated(
            "draw is deprecated: use model.with_options(sampler=mp.SDESampler(steps)).sample(...)."
        )
        options = {} if steps is None else {"sample_steps": steps}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = self.with_options(sampler=sampler, **options)
        return model.sample(key, sample_shape)

    def log_density(self, value, *, steps=None, trace=None, num_probes=None, key=None):
        """Deprecated: use `model.with_options(density=mp.ODEDensity(...)).log_prob(x)`."""
        warn_deprecated(
            "log_density is deprecated: use "
            "model.with_options(density=mp.ODEDensity(steps, trace)).log_prob(x)."
        )
        given = {"log_prob_steps": steps, "trace": trace, "num_probes": num_probes}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = self.with_options(**{k: v for k, v in given.items() if v is not None})
        key = model.density.probe_key() if key is None else check_key(key)
        return model._log_prob(value, key)

    def _draw_chunk(self, key, chunk_size: int):
        """chunk_size flat draws, shape (chunk_size, d)."""
        raise NotImplementedError

    def _log_prob_point(self, x, key):
        """log p of one flat point x of shape (d,)."""
        raise NotImplementedError
