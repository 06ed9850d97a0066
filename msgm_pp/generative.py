r"""`ScoreBasedDistribution`: what the MSGM and the SGM baseline share as NumPyro distributions.

Both are single distributions on R^d (batch_shape (), event_shape (d,), support real_vector) whose
samples come from a reverse-time sampler and whose `log_prob` integrates a probability-flow ODE.
This base class holds the parts that do not depend on the forward process:

- the static options `sampler`, `sample_steps`, `log_prob_steps`, `trace` and `num_probes`, with
  :meth:`~ScoreBasedDistribution.with_options` and per-call overrides in
  :meth:`~ScoreBasedDistribution.draw` and :meth:`~ScoreBasedDistribution.log_density`;
- drawing in compiled chunks of bounded memory, and evaluating log p for any batch shape;
- pytree flattening that keeps only arrays as leaves, so a model passes through jit and vmap;
- saving (:mod:`msgm_pp.io`).

A subclass declares its `pytree_data_fields` (the model parts, then "history"), a `dim` property,
and the two per-chunk kernels `_draw_chunks` and `_log_density_rows`.
"""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

from msgm_pp._checks import check_key, check_positive_int
from msgm_pp.density import check_trace_estimator, default_trace_estimator
from msgm_pp.samplers import check_sampler

_CHUNK_BUDGET = 2**18  # sample rows × d per compiled chunk: bounded memory for any n
_DENSITY_CHUNK_BUDGET = 2**16  # log_prob rows × d per vectorised chunk
_PROBE_KEY_SEED = 0
OPTION_NAMES = ("sampler", "sample_steps", "log_prob_steps", "trace", "num_probes")


def check_options(dim, sampler, sample_steps, log_prob_steps, trace, num_probes) -> dict:
    """The validated sampling and log-density options; `trace=None` picks the default for d."""
    return {
        "sampler": check_sampler(sampler),
        "sample_steps": check_positive_int(sample_steps, "sample_steps"),
        "log_prob_steps": check_positive_int(log_prob_steps, "log_prob_steps"),
        "trace": check_trace_estimator(default_trace_estimator(dim) if trace is None else trace),
        "num_probes": check_positive_int(num_probes, "num_probes"),
    }


def map_rows(one_point, x, dim: int):
    """vmap `one_point` over the rows of x, in chunks of 2^16/d rows when x is larger."""
    chunk_size = max(1, _DENSITY_CHUNK_BUDGET // dim)
    if x.shape[0] <= chunk_size:
        return jax.vmap(one_point)(x)
    return jax.lax.map(one_point, x, batch_size=chunk_size)


class ScoreBasedDistribution(dist.Distribution):
    """Base class of :class:`msgm_pp.MSGM` and :class:`msgm_pp.SGM`; see the module docstring."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    pytree_aux_fields = OPTION_NAMES

    def _set_options(self, validate_args, **options) -> None:
        for name, value in check_options(self.dim, **options).items():
            setattr(self, name, value)
        super().__init__(batch_shape=(), event_shape=(self.dim,), validate_args=validate_args)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def options(self) -> dict:
        """The static settings of `sample` and `log_prob`; see the class docstring."""
        return {name: getattr(self, name) for name in OPTION_NAMES}

    def with_options(self, **options):
        """A copy with some of `options` changed, e.g. `model.with_options(log_prob_steps=32)`."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; the options are {list(OPTION_NAMES)}.")
        parts = {name: getattr(self, name) for name in self.pytree_data_fields}
        return type(self)(**parts, validate_args=self._validate_args, **{**self.options, **options})

    @classmethod
    def infer_shapes(cls, score=None, *args, **kwargs):
        """((), (d,)): a single distribution on R^d, with d = `score.dim`.

        `score` may be the score module or its `jax.eval_shape` structure."""
        if score is None or not hasattr(score, "dim"):
            raise ValueError(
                f"{cls.__name__}.infer_shapes needs the score (the module or its jax.eval_shape "
                "structure): the event shape (d,) comes from its network, not from array shapes."
            )
        return (), (score.dim,)

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
        from msgm_pp import io as model_io

        model_io.save(self, path)

    @validate_sample
    def log_prob(self, value):
        return self.log_density(value)

    def log_density(
        self,
        value,
        *,
        steps: int | None = None,
        trace: str | None = None,
        num_probes: int | None = None,
        key=None,
    ):
        """log p(x) for x of shape batch + (d,), with optional overrides of the model's options.

        Args:
            value: points of shape (..., d).
            steps: probability-flow ODE steps (default `log_prob_steps`).
            trace: "exact" or "hutchinson" (default the model's `trace`).
            num_probes, key: Hutchinson probes per step and their key (default `num_probes` and a
                fixed key, so that log p is a deterministic function of x).

        Returns:
            log p of shape batch.
        """
        x = jnp.asarray(value)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"`value` must have shape (..., {self.dim}) for this model on R^{self.dim}, got "
                f"shape {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        steps = self.log_prob_steps if steps is None else check_positive_int(steps, "steps")
        trace = self.trace if trace is None else check_trace_estimator(trace)
        num_probes = (
            self.num_probes if num_probes is None else check_positive_int(num_probes, "num_probes")
        )
        key = jax.random.key(_PROBE_KEY_SEED) if key is None else check_key(key)
        rows = x.reshape(math.prod(x.shape[:-1]), self.dim)
        if rows.shape[0] == 0:
            return jnp.zeros(x.shape[:-1], x.dtype)
        log_p = self._log_density_rows(rows, steps, trace, num_probes, key)
        return log_p.reshape(x.shape[:-1])

    def sample(self, key, sample_shape=()):
        return self.draw(key, sample_shape)

    def draw(self, key, sample_shape=(), *, steps: int | None = None, sampler: str | None = None):
        """Samples of shape sample_shape + (d,), with optional overrides of the sampler settings.

        Draws are made in chunks of at most 2^18 / d rows inside one compiled loop, so memory stays
        bounded for any number of samples.
        """
        key = check_key(key)
        steps = self.sample_steps if steps is None else check_positive_int(steps, "steps")
        sampler = self.sampler if sampler is None else check_sampler(sampler)
        shape = tuple(sample_shape) + self.batch_shape
        n = math.prod(shape)
        if n == 0:
            return jnp.zeros((*shape, self.dim))
        chunk_size = max(1, min(n, _CHUNK_BUDGET // self.dim))
        num_chunks = math.ceil(n / chunk_size)
        x = self._draw_chunks(key, num_chunks, chunk_size, steps, sampler)
        return x[:n].reshape((*shape, self.dim))

    def _draw_chunks(self, key, num_chunks: int, chunk_size: int, steps: int, sampler: str):
        """num_chunks × chunk_size draws as an array of shape (num_chunks · chunk_size, d)."""
        raise NotImplementedError

    def _log_density_rows(self, x, steps: int, trace: str, num_probes: int, key):
        """log p for the rows of x (n, d)."""
        raise NotImplementedError
