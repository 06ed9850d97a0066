r"""`SGM`: the classical score-based generative model, the baseline MSGM is compared against.

The variance-preserving SDE of Song et al. (2021) on normalised data x̃ = (x − loc)/scale:

    dx̃ = −½ β(t) x̃ dt + √β(t) dW,   β(t) = β_min + (β_max − β_min) t/T,   β ∈ [0.1, 20], T = 1,
    x̃_t | x̃_0 ~ N(α_t x̃_0, σ_t² I),   α_t = exp(−½ τ(t)),   σ_t² = 1 − α_t²,   τ(t) = ∫_0^t β.

The latent law is N(0, I) whatever the data: it has no heavy tails, which is the point of the
comparison. The network ε_θ(x̃, t) (:class:`msgm_pp.nets.TimeMLP`, the same MLP as the MSGM's)
predicts the noise, and the score is ∇log p_t(x̃) = −ε_θ(x̃, t)/σ_t. Losses, both weighted by σ_t²
(so every time contributes O(1)):

- ``"dsm"``, denoising score matching: ½ |ε_θ(α_t x̃_0 + σ_t z, t) − z|² (the default);
- ``"ssm"``, sliced score matching, the loss of the paper's comparison:
  σ_t² (½ |s_θ|² + vᵀ ∇s_θ v) = ½ |ε_θ|² − σ_t vᵀ ∇ε_θ v, one jvp per sample.

Samplers, in τ: the reverse SDE by Euler–Maruyama, x̃ ← x̃ + Δτ (½ x̃ + ½(1 + η²) s) + η √Δτ z
(η the sampler's `stochasticity`, 1 by default), and the
probability-flow ODE dx̃/dτ = −½ (x̃ + s) by Heun's method, both on the grid of `time_grid` (equal
steps in log τ near t_ε, in τ near T). `log_prob` integrates that ODE forward from x̃ at t_ε to T with the trapezoid rule
for its divergence:

    log p(x) = log N(x̃_T; 0, I) + ∫ div(−½ (x̃ + s)) dτ − Σ_i log scale_i.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm as std_normal

from msgm_pp._checks import check_key
from msgm_pp.coordinates import normalization_of
from msgm_pp.density import irregular_log_prob, solve_log_density
from msgm_pp.heun import heun_step
from msgm_pp.nets import TimeMLP
from msgm_pp.samplers import SDESampler, reverse_times
from msgm_pp.schedule import LinearSchedule
from msgm_pp.score_based import ScoreBasedDistribution, fit_built, flat_points, split_training
from msgm_pp.serialization import serializable
from msgm_pp.training import TrainingHistory

VP_LOSSES = ("dsm", "ssm")


def vp_schedule(beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> LinearSchedule:
    """β(t) of Song et al.'s VP SDE, the schedule of the paper's SGM baseline."""
    return LinearSchedule(beta_min=beta_min, beta_max=beta_max, T=T)


@serializable
class VPScore(eqx.Module):
    """The SGM's score on normalised coordinates: s(x̃, t) = −net(x̃, t/T)/σ_t for one point."""

    net: eqx.Module
    schedule: LinearSchedule
    loc: jax.Array
    scale: jax.Array
    t_eps: float = eqx.field(static=True)

    def __check_init__(self):
        if not 0 < self.t_eps < self.schedule.T:
            raise ValueError(f"`t_eps` must lie in (0, T = {self.schedule.T}), got {self.t_eps}.")

    @property
    def dim(self) -> int:
        """d, the dimension of the points."""
        return self.loc.shape[0]

    def tau(self, t):
        """τ(t) = ∫_0^t β, the integrated noise rate."""
        return self.schedule.integral(t)

    def sigma(self, t):
        """σ_t = √(1 − exp(−τ(t)))."""
        return jnp.sqrt(-jnp.expm1(-self.tau(t)))

    def epsilon(self, y, t):
        """The network's noise prediction at normalised y."""
        return self.net(y, t / self.schedule.T)

    def __call__(self, y, t):
        return -self.epsilon(y, t) / self.sigma(t)

    def normalise(self, x):
        """x̃ = (x − loc)/scale."""
        return (x - self.loc) / self.scale

    def denormalise(self, y):
        """x = loc + scale · x̃."""
        return self.loc + self.scale * y


def _noised(score: VPScore, y0, key):
    time_key, noise_key, slice_key = jax.random.split(key, 3)
    t = jax.random.uniform(
        time_key, y0.shape[:1], y0.dtype, minval=score.t_eps, maxval=score.schedule.T
    )
    alpha = jnp.exp(-0.5 * score.tau(t))
    z = jax.random.normal(noise_key, y0.shape, y0.dtype)
    return alpha[:, None] * y0 + score.sigma(t)[:, None] * z, t, z, slice_key


def vp_dsm_loss(score: VPScore, y0, key):
    """½ |ε_θ(x̃_t, t) − z|², the σ_t²-weighted denoising score-matching loss."""
    y, t, z, _ = _noised(score, y0, key)
    eps = jax.vmap(score.epsilon)(y, t)
    return 0.5 * jnp.mean(jnp.sum((eps - z) ** 2, axis=-1))


def vp_ssm_loss(score: VPScore, y0, key):
    """½ |ε_θ|² − σ_t vᵀ∇ε_θ v, the σ_t²-weighted sliced score-matching loss."""
    y, t, _, slice_key = _noised(score, y0, key)
    v = jax.random.rademacher(slice_key, y.shape, y.dtype)

    def term(y, t, v):
        eps, jv = jax.jvp(lambda point: score.epsilon(point, t), (y,), (v,))
        return 0.5 * jnp.dot(eps, eps) - score.sigma(t) * jnp.dot(v, jv)

    return jnp.mean(jax.vmap(term)(y, t, v))


@serializable
class VPLoss(eqx.Module):
    """A VP-SDE loss (score, batch, key) -> scalar, compared by value so compiled training is reused."""

    name: str = eqx.field(static=True)

    def __check_init__(self):
        if self.name not in VP_LOSSES:
            raise ValueError(f"unknown SGM loss {self.name!r}; choose one of {list(VP_LOSSES)}.")

    def __call__(self, score, batch, key):
        return (vp_dsm_loss if self.name == "dsm" else vp_ssm_loss)(score, batch, key)


def _velocity(score: VPScore, y, t):
    """−½ (y + s(y, t)): the probability-flow velocity per unit of τ, forward in time."""
    return -0.5 * (y + score(y, t))


def _reverse(score: VPScore, y_T, key, sampler):
    times = reverse_times(score.schedule, score.t_eps, sampler.steps, y_T.dtype)
    score_at = jax.vmap(score, in_axes=(0, None))
    velocity = jax.vmap(_velocity, in_axes=(None, 0, None))

    def sde(y, inputs):
        t, t_next, step_key = inputs
        d_tau = score.tau(t) - score.tau(t_next)
        z = jax.random.normal(step_key, y.shape, y.dtype)
        share = sampler.noise_share
        drift = 0.5 * y + 0.5 * (1.0 + share) * score_at(y, t)
        return y + d_tau * drift + jnp.sqrt(share * d_tau) * z, None

    def ode(y, inputs):
        t, t_next, _ = inputs
        step_velocity = lambda point, time: velocity(score, point, time)
        h = score.tau(t_next) - score.tau(t)
        return heun_step(step_velocity, y, step_velocity(y, t), h, t_next), None

    keys = jax.random.split(key, sampler.steps)
    body = sde if isinstance(sampler, SDESampler) else ode
    y, _ = jax.lax.scan(body, y_T, (times[:-1], times[1:], keys))
    return y


def log_prob_point(score: VPScore, x, density, key):
    """log p_{t_ε}(x) for one point x (d,) by the probability-flow ODE; see the module docstring."""
    regular = jnp.all(jnp.isfinite(x))
    y0 = score.normalise(jnp.where(regular, x, score.loc))
    velocity = lambda y, t: _velocity(score, y, t)
    log_p_normalised = solve_log_density(
        velocity, y0, score, density, key, lambda y_T, div: jnp.sum(std_normal.logpdf(y_T)) + div
    )
    log_p = log_p_normalised - jnp.sum(jnp.log(score.scale))
    return jnp.where(regular, log_p, irregular_log_prob(x))


@serializable
class SGM(ScoreBasedDistribution):
    """A VP-SDE score-based model on R^d, with the same interface as :class:`MSGM`.

    `score` (network, schedule, normalisation) is a pytree data field and `history` holds the
    training losses. The settings `sampler` and `density` mean what they mean for :class:`MSGM`.
    `log_prob` is −inf at infinite entries and NaN for NaN entries.
    """

    pytree_data_fields = ("score", "history")

    def __init__(
        self,
        score: VPScore,
        *,
        sampler=None,
        density=None,
        history: TrainingHistory | None = None,
        validate_args=None,
        **deprecated,
    ):
        if not isinstance(score, VPScore):
            raise TypeError(f"`score` must be a msgm_pp VPScore, got {type(score).__name__}.")
        self.score = score
        self.history = history
        self._init_settings(validate_args, sampler, density, deprecated)

    @property
    def _point_shape(self) -> tuple[int, ...]:
        return (self.score.dim,)

    @classmethod
    def build(
        cls,
        data,
        *,
        key,
        net=None,
        schedule: LinearSchedule | None = None,
        normalization: str = "robust",
        t_eps: float = 1e-3,
        sampler=None,
        density=None,
        **deprecated,
    ) -> "SGM":
        """An SGM for `data` with an untrained network; train it with :func:`msgm_pp.train`.

        Args:
            data: (n, d) array-like of finite rows.
            key: a JAX PRNG key (for the network's initialisation).
            net: a network ε(x̃, t); `TimeMLP` (3 × 128, swish) by default.
            schedule: β(t); `vp_schedule()` (β ∈ [0.1, 20], T = 1) by default.
            normalization: "robust" (median and interquartile range / 1.349; the default, which
                heavy tails need), "standard" (mean and standard deviation, as in the paper) or
                "none".
            t_eps: the smallest diffusion time, where sampling stops.
            sampler, density: the settings of `sample` and `log_prob`.
        """
        # Of split(key), the second key trains in SGM.fit: fit = build + train with one key.
        net_key, _ = jax.random.split(check_key(key))
        x = flat_points(data, None, allow_zero_rows=True)
        loc, scale = normalization_of(np.asarray(x, np.float64), normalization)
        score = VPScore(
            net=TimeMLP(x.shape[1], key=net_key) if net is None else net,
            schedule=vp_schedule() if schedule is None else schedule,
            loc=jnp.asarray(loc, x.dtype),
            scale=jnp.asarray(scale, x.dtype),
            t_eps=float(t_eps),
        )
        return cls(score, sampler=sampler, density=density, **deprecated)

    def training_data(self, data):
        """The normalised points (n, d) that the losses take."""
        return self.score.normalise(flat_points(data, self.event_shape, allow_zero_rows=True))

    def loss(self, name="dsm") -> VPLoss:
        """The VP-SDE loss `name`: "dsm" (default) or "ssm" (the paper's comparison)."""
        return name if isinstance(name, VPLoss) else VPLoss("dsm" if name is None else name)

    @classmethod
    def fit(
        cls,
        data,
        *,
        key,
        loss: str = "dsm",
        net=None,
        schedule: LinearSchedule | None = None,
        normalization: str = "robust",
        max_steps: int | None = None,
        batch_size: int | None = None,
        learning_rate=None,
        clip_norm: float | None = None,
        weight_decay: float | Sequence[float] | None = None,
        optimizer=None,
        validation_fraction: float = 0.1,
        patience: int | None = 20,
        eval_every: int = 500,
        ema_decay: float | None = None,
        t_eps: float = 1e-3,
        sampler=None,
        density=None,
        progress: bool | None = None,
        **deprecated,
    ) -> "SGM":
        """Build an SGM for `data` and train its network: :meth:`build`, then :func:`msgm_pp.train`.

        Args:
            data, key, net, schedule, normalization, t_eps, sampler, density: see :meth:`build`.
            loss: "dsm" (default) or "ssm" (the paper's comparison).
            The other arguments are those of :meth:`MSGM.fit`; early stopping uses the loss,
                and by default the SGM trains one network (λ = 0), not `MSGM.fit`'s candidates.

        Returns:
            The trained SGM; its `history` holds the losses and the settings.
        """
        deprecated, training = split_training(deprecated, max_steps)
        model = cls.build(
            data,
            key=key,
            net=net,
            schedule=schedule,
            normalization=normalization,
            t_eps=t_eps,
            sampler=sampler,
            density=density,
            **deprecated,
        )
        loss = model.loss(loss)
        return fit_built(
            model,
            data,
            key=jax.random.split(check_key(key))[1],
            loss=loss,
            learning_rate=learning_rate,
            clip_norm=clip_norm,
            weight_decay=weight_decay,
            optimizer=optimizer,
            training=dict(
                training,
                batch_size=batch_size,
                validation_fraction=validation_fraction,
                patience=patience,
                eval_every=eval_every,
                ema_decay=ema_decay,
                progress=progress,
            ),
            settings=dict(
                loss=loss.name,
                net="TimeMLP" if net is None else "custom",
                normalization=normalization,
                t_eps=float(t_eps),
            ),
        )

    def _draw_chunk(self, key, chunk_size: int):
        latent_key, reverse_key = jax.random.split(key)
        y_T = jax.random.normal(latent_key, (chunk_size, self.dim))
        return self.score.denormalise(_reverse(self.score, y_T, reverse_key, self.sampler))

    def _log_prob_point(self, x, key):
        return log_prob_point(self.score, x, self.density, key)
