r"""`MSGM`: a trained multiplicative score-based generative model as a NumPyro distribution.

A draw takes a latent point — a norm from the norm model and a uniform direction — and runs the
reverse dynamics of the direction from s = T to s = t_ε (:mod:`msgm_pp.samplers`). The norm is kept
exactly, so the norms of samples follow the norm model, heavy tails included.

`log_prob` integrates the probability-flow ODE forward from x (:mod:`msgm_pp.density`): it is the
exact log-density of the law that the ODE sampler draws from, up to the integration error of its
`log_prob_steps` steps, and differentiable in x.
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp._checks import check_key, check_points
from msgm_pp.density import log_prob_point
from msgm_pp.generative import ScoreBasedDistribution, check_options, map_rows
from msgm_pp.latent import AbstractNormModel, Latent, fit_norm_model, log_norm
from msgm_pp.losses import NetworkLoss, dsm_applies, make_loss
from msgm_pp.nets import LatticeScoreNet, ScoreMLP
from msgm_pp.noise import AbstractNoise, DenseNoise, IsotropicNoise, LatticeNoise
from msgm_pp.samplers import reverse_directions
from msgm_pp.schedule import mixing_schedule
from msgm_pp.score import TangentScore
from msgm_pp.train import (
    TrainingHistory,
    fit_network,
    make_optimizer,
    optimizer_settings,
    record_settings,
)


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


@eqx.filter_jit
def _log_density(score, norm_model, x, steps: int, trace: str, num_probes: int, key):
    def one_point(point):
        return log_prob_point(
            score, norm_model, point, steps=steps, trace=trace, num_probes=num_probes, key=key
        )

    return map_rows(one_point, x, score.dim)


class MSGM(ScoreBasedDistribution):
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

    `log_prob` is −inf at x = 0 and at infinite entries, and NaN for NaN entries.
    """

    pytree_data_fields = ("score", "norm_model", "history")

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
        self._set_options(
            validate_args,
            sampler=sampler,
            sample_steps=sample_steps,
            log_prob_steps=log_prob_steps,
            trace=trace,
            num_probes=num_probes,
        )

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
        options = check_options(dim, sampler, sample_steps, log_prob_steps, trace, num_probes)
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
        history = record_settings(
            history,
            noise=type(noise).__name__,
            loss=loss,
            net=type(score.net).__name__ if net is None else "custom",
            **optimizer_settings(learning_rate, clip_norm, optimizer),
            norm=norm,
            norm_options=json.dumps(norm_options or {}, sort_keys=True),
            t_eps=float(t_eps),
            forward_steps=forward_steps,
            weighted=weighted,
        )
        return cls(score, norm_model, history=history, **options)

    def _draw_chunks(self, key, num_chunks, chunk_size, steps, sampler):
        return _draw(self.score, self.norm_model, key, num_chunks, chunk_size, steps, sampler)

    def _log_density_rows(self, x, steps, trace, num_probes, key):
        return _log_density(self.score, self.norm_model, x, steps, trace, num_probes, key)
