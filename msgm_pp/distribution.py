r"""`MSGM`: a trained multiplicative score-based generative model as a NumPyro distribution.

A draw takes a latent point — a norm from the norm model and a uniform direction — and runs the
reverse dynamics of the direction from s = T to s = t_ε (:mod:`msgm_pp.samplers`). The norm is kept
exactly, so the norms of samples follow the norm model, heavy tails included.

`log_prob` integrates the probability-flow ODE forward from x (:mod:`msgm_pp.density`): it is the
exact log-density of the law that the ODE sampler draws from, up to the integration error of its
`log_prob_steps` steps, and differentiable in x.
"""

import dataclasses
import json
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

from msgm_pp import io as model_io
from msgm_pp._checks import check_key, check_points, check_positive_int
from msgm_pp.density import check_trace_estimator, default_trace_estimator, log_prob_point
from msgm_pp.latent import AbstractNormModel, Latent, fit_norm_model, log_norm
from msgm_pp.losses import NetworkLoss, dsm_applies, make_loss
from msgm_pp.nets import LatticeScoreNet, ScoreMLP
from msgm_pp.noise import AbstractNoise, DenseNoise, IsotropicNoise, LatticeNoise
from msgm_pp.samplers import check_sampler, reverse_directions
from msgm_pp.schedule import mixing_schedule
from msgm_pp.score import TangentScore
from msgm_pp.train import TrainingHistory, fit_network, make_optimizer

_CHUNK_BUDGET = 2**18  # sample rows × d per compiled chunk: bounded memory for any n
_DENSITY_CHUNK_BUDGET = 2**16  # log_prob rows × d per vectorised chunk
_PROBE_KEY_SEED = 0


def make_noise(noise, dim: int, *, key) -> AbstractNoise:
    """A noise from its name ("isotropic" or "dense") or an AbstractNoise of dimension `dim`."""
    if isinstance(noise, AbstractNoise):
        if noise.dim != dim:
            raise ValueError(f"`noise` has dimension {noise.dim} but the data have d = {dim}.")
        return noise
    if noise == "isotropic":
        return IsotropicNoise(dim)
    if noise == "dense":
        return DenseNoise(dim, key=key)
    if noise == "lattice":
        raise ValueError(
            "for lattice noise pass the field shape: noise=mp.LatticeNoise(shape=(h, w))."
        )
    raise ValueError(
        f"`noise` must be 'isotropic', 'dense' or a msgm_pp noise such as LatticeNoise, got {noise!r}."
    )


def default_net(noise: AbstractNoise, *, key):
    """A periodic CNN for lattice noise, the paper's MLP otherwise."""
    if isinstance(noise, LatticeNoise):
        return LatticeScoreNet(noise.shape, key=key)
    return ScoreMLP(noise.dim, key=key)


@eqx.filter_jit
def _draw(score, norm_model, key, num_chunks: int, chunk_size: int, steps: int, method: str):
    latent = Latent(norm_model, score.dim)

    def one_chunk(chunk_key):
        latent_key, reverse_key = jax.random.split(chunk_key)
        log_r, u_T = latent.sample_polar(latent_key, (chunk_size,))
        u = reverse_directions(score, u_T, log_r, reverse_key, steps, method)
        return jnp.exp(log_r)[:, None] * u

    draws = jax.lax.map(one_chunk, jax.random.split(key, num_chunks))
    return draws.reshape(-1, score.dim)


def _check_options(dim, sampler, sample_steps, log_prob_steps, trace, num_probes) -> dict:
    return {
        "sampler": check_sampler(sampler),
        "sample_steps": check_positive_int(sample_steps, "sample_steps"),
        "log_prob_steps": check_positive_int(log_prob_steps, "log_prob_steps"),
        "trace": check_trace_estimator(default_trace_estimator(dim) if trace is None else trace),
        "num_probes": check_positive_int(num_probes, "num_probes"),
    }


@eqx.filter_jit
def _log_density(score, norm_model, x, steps: int, trace: str, num_probes: int, key):
    def one_point(point):
        return log_prob_point(
            score, norm_model, point, steps=steps, trace=trace, num_probes=num_probes, key=key
        )

    chunk_size = max(1, _DENSITY_CHUNK_BUDGET // score.dim)
    if x.shape[0] <= chunk_size:
        return jax.vmap(one_point)(x)
    return jax.lax.map(one_point, x, batch_size=chunk_size)


class MSGM(dist.Distribution):
    """A trained MSGM on R^d: event_shape (d,), support real_vector.

    Build one with :meth:`MSGM.fit` or :func:`msgm_pp.load`. `score` (network, noise, schedule) and
    `norm_model` are pytree data fields, so the distribution keeps its network through jit and vmap;
    `history` holds the training losses.

    Accuracy and cost are set by static options (change them with :meth:`with_options`, or per call
    with :meth:`draw` and :meth:`log_density`):

    - `sampler` ("sde" or "ode") and `sample_steps`: how `sample` integrates the reverse dynamics;
    - `log_prob_steps`: Heun steps of the probability-flow ODE in `log_prob` (the error falls as
      1/steps²; on the paper's Cauchy task its mean is 0.006 nats at the default 64 steps);
    - `trace`: "exact" (the Jacobian trace; the default for d <= 64) or "hutchinson" (an unbiased
      estimate with `num_probes` Rademacher probes per step from a fixed key, the default above).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    pytree_data_fields = ("score", "norm_model", "history")
    pytree_aux_fields = ("sampler", "sample_steps", "log_prob_steps", "trace", "num_probes")

    def __init__(
        self,
        score: TangentScore,
        norm_model: AbstractNormModel,
        *,
        sampler: str = "sde",
        sample_steps: int = 128,
        log_prob_steps: int = 64,
        trace: str | None = None,
        num_probes: int = 1,
        history: TrainingHistory | None = None,
        validate_args=None,
    ):
        if not isinstance(score, TangentScore):
            raise TypeError(f"`score` must be a msgm_pp TangentScore, got {type(score).__name__}.")
        if not isinstance(norm_model, AbstractNormModel):
            raise TypeError(
                f"`norm_model` must be a msgm_pp norm model, got {type(norm_model).__name__}."
            )
        self.score = score
        self.norm_model = norm_model
        self.history = history
        options = _check_options(
            score.dim, sampler, sample_steps, log_prob_steps, trace, num_probes
        )
        for name, value in options.items():
            setattr(self, name, value)
        super().__init__(batch_shape=(), event_shape=(score.dim,), validate_args=validate_args)

    @property
    def options(self) -> dict:
        """The static settings of `sample` and `log_prob`; see the class docstring."""
        return {name: getattr(self, name) for name in self.pytree_aux_fields}

    def with_options(self, **options) -> "MSGM":
        """A copy with some of `options` changed, e.g. `model.with_options(log_prob_steps=32)`."""
        unknown = sorted(set(options) - set(self.pytree_aux_fields))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown}; the options are {list(self.pytree_aux_fields)}."
            )
        return type(self)(
            self.score,
            self.norm_model,
            history=self.history,
            validate_args=self._validate_args,
            **{**self.options, **options},
        )

    @classmethod
    def infer_shapes(cls, score=None, *args, **kwargs):
        """((), (d,)): an MSGM is a single distribution on R^d, with d = `score.dim`.

        `score` may be the TangentScore or its `jax.eval_shape` structure."""
        if score is None or not hasattr(score, "dim"):
            raise ValueError(
                "MSGM.infer_shapes needs the score (a TangentScore or its jax.eval_shape "
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

    @property
    def dim(self) -> int:
        return self.score.dim

    @property
    def noise(self) -> AbstractNoise:
        return self.score.noise

    @classmethod
    def fit(
        cls,
        data,
        *,
        key,
        noise="isotropic",
        loss: str | None = None,
        net=None,
        schedule=None,
        steps: int = 5000,
        batch_size: int = 256,
        learning_rate=1e-3,
        clip_norm: float | None = None,
        optimizer=None,
        validation_fraction: float = 0.1,
        patience: int | None = 10,
        eval_every: int = 250,
        norm: str = "kde+gpd",
        norm_options: dict | None = None,
        t_eps: float = 1e-3,
        forward_steps: int = 16,
        weighted: bool = True,
        sampler: str = "sde",
        sample_steps: int = 128,
        log_prob_steps: int = 64,
        trace: str | None = None,
        num_probes: int = 1,
        progress: bool | None = None,
    ) -> "MSGM":
        """Fit the norm model and train the tangent score on data of shape (n, d).

        Args:
            data: (n, d) array-like of finite, nonzero rows.
            key: a JAX PRNG key; the same key gives the same model.
            noise: "isotropic" (default), "dense" (the paper's), or a noise instance such as
                `LatticeNoise(shape)`.
            loss: "dsm" (exact heat-kernel target; the default for isotropic noise with d <= 32),
                "ssm" (the paper's sliced score matching; the default otherwise) or "ism".
            net: a network g(u, z, t); `ScoreMLP` (or `LatticeScoreNet` for lattice noise) by
                default.
            schedule: β(s) on [0, T]; `mixing_schedule(noise)` by default.
            steps, batch_size, validation_fraction, patience, eval_every, progress: see
                :func:`msgm_pp.train.fit_network`.
            learning_rate, clip_norm: for the default Adam optimiser (learning_rate may be an optax
                schedule); or pass any optax `optimizer`.
            norm, norm_options: the norm model ("kde+gpd", "kde" or "empirical") and its options.
            t_eps: the smallest diffusion time, where sampling stops.
            forward_steps: integrator steps for the forward draws where they are not exact.
            weighted: weight the loss by λ(s) (see `TangentScore.loss_weight`); False is the paper.
            sampler, sample_steps, log_prob_steps, trace, num_probes: the options of `sample` and
                `log_prob` (see the class docstring).

        Returns:
            The trained MSGM; its `history` holds the losses.
        """
        key = check_key(key)
        x = check_points(data, "data")
        dim = x.shape[1]
        options = _check_options(dim, sampler, sample_steps, log_prob_steps, trace, num_probes)
        noise_key, net_key, train_key = jax.random.split(key, 3)
        noise = make_noise(noise, dim, key=noise_key)
        if loss is None:
            loss = "dsm" if dsm_applies(noise) else "ssm"
        loss_fn = make_loss(loss, noise, forward_steps=forward_steps, weighted=weighted)
        norm_model = fit_norm_model(
            np.asarray(data, dtype=np.float64), norm, **(norm_options or {})
        )
        log_r = log_norm(x)
        u = x / jnp.exp(log_r)[:, None]
        log_r_np = np.asarray(log_r, dtype=np.float64)
        score = TangentScore(
            net=default_net(noise, key=net_key) if net is None else net,
            noise=noise,
            schedule=mixing_schedule(noise) if schedule is None else schedule,
            log_r_loc=float(log_r_np.mean()),
            log_r_scale=float(max(log_r_np.std(), 1e-6)),
            t_eps=float(t_eps),
        )
        trained_net, history = fit_network(
            score.net,
            NetworkLoss(score, loss_fn),
            (u, log_r),
            key=train_key,
            steps=steps,
            batch_size=batch_size,
            optimizer=make_optimizer(learning_rate, clip_norm) if optimizer is None else optimizer,
            validation_fraction=validation_fraction,
            patience=patience,
            eval_every=eval_every,
            progress=progress,
        )
        score = eqx.tree_at(lambda sc: sc.net, score, trained_net)
        settings = {
            "noise": type(noise).__name__,
            "loss": loss,
            "net": type(score.net).__name__ if net is None else "custom",
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate
            if isinstance(learning_rate, float | int)
            else "schedule",
            "clip_norm": clip_norm,
            "optimizer": "adam" if optimizer is None else "custom",
            "validation_fraction": validation_fraction,
            "patience": patience,
            "eval_every": eval_every,
            "norm": norm,
            "norm_options": json.dumps(norm_options or {}, sort_keys=True),
            "t_eps": float(t_eps),
            "forward_steps": forward_steps,
            "weighted": weighted,
        }
        history = dataclasses.replace(history, settings=tuple(settings.items()))
        return cls(score, norm_model, history=history, **options)

    def save(self, path) -> None:
        """Write the model to `path` (no pickle; atomic). Read it back with :func:`msgm_pp.load`."""
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
            log p of shape batch; −inf at x = 0 and at infinite entries, NaN for NaN entries.
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
        batch = x.reshape(math.prod(x.shape[:-1]), self.dim)
        if batch.shape[0] == 0:
            return jnp.zeros(x.shape[:-1], x.dtype)
        log_p = _log_density(self.score, self.norm_model, batch, steps, trace, num_probes, key)
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
        x = _draw(self.score, self.norm_model, key, num_chunks, chunk_size, steps, sampler)
        return x[:n].reshape((*shape, self.dim))
