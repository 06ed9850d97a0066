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

Samplers, in τ: the reverse SDE by Euler–Maruyama, x̃ ← x̃ + Δτ (½ x̃ + s) + √Δτ z, and the
probability-flow ODE dx̃/dτ = −½ (x̃ + s) by Heun's method. `log_prob` integrates that ODE forward
from x̃ at t_ε to T with the trapezoid rule for its divergence:

    log p(x) = log N(x̃_T; 0, I) + ∫ div(−½ (x̃ + s)) dτ − Σ_i log scale_i.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm as std_normal

from msgm_pp._checks import check_key, check_points
from msgm_pp.density import trace_probes, value_and_divergence
from msgm_pp.generative import ScoreBasedDistribution, check_options, map_rows
from msgm_pp.losses import NetworkLoss
from msgm_pp.nets import TimeMLP
from msgm_pp.schedule import LinearSchedule
from msgm_pp.train import (
    TrainingHistory,
    fit_network,
    make_optimizer,
    optimizer_settings,
    record_settings,
)

VP_LOSSES = ("dsm", "ssm")
NORMALIZATIONS = ("standard", "robust", "none")


def vp_schedule(beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> LinearSchedule:
    """β(t) of Song et al.'s VP SDE, the schedule of the paper's SGM baseline."""
    return LinearSchedule(beta_min=beta_min, beta_max=beta_max, T=T)


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
        return self.loc.shape[0]

    def tau(self, t):
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
        return (x - self.loc) / self.scale

    def denormalise(self, y):
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


class VPLoss(eqx.Module):
    """A VP-SDE loss (score, batch, key) -> scalar, compared by value so compiled training is reused."""

    name: str = eqx.field(static=True)

    def __check_init__(self):
        if self.name not in VP_LOSSES:
            raise ValueError(f"unknown SGM loss {self.name!r}; choose one of {list(VP_LOSSES)}.")

    def __call__(self, score, batch, key):
        return (vp_dsm_loss if self.name == "dsm" else vp_ssm_loss)(score, batch, key)


def normalisation(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate (loc, scale): mean and standard deviation ("standard", the paper's), median
    and interquartile range / 1.349 ("robust"), or (0, 1) ("none")."""
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {kind!r}; choose one of {list(NORMALIZATIONS)}.")
    if kind == "none":
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    if kind == "standard":
        loc, scale = x.mean(0), x.std(0)
    else:
        q25, loc, q75 = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
        scale = (q75 - q25) / 1.349
    flat = np.flatnonzero(~(scale > 0))
    if flat.size:
        raise ValueError(
            f"`data` columns {flat.tolist()} have zero spread, so {kind!r} normalization "
            "is undefined; drop them or use normalization='none'."
        )
    return loc, scale


def _velocity(score: VPScore, y, t):
    """−½ (y + s(y, t)): the probability-flow velocity per unit of τ, forward in time."""
    return -0.5 * (y + score(y, t))


def _reverse(score: VPScore, y_T, key, steps: int, method: str):
    T, t_eps = score.schedule.T, score.t_eps
    times = T - (T - t_eps) * jnp.arange(steps + 1, dtype=y_T.dtype) / steps
    score_at = jax.vmap(score, in_axes=(0, None))
    velocity = jax.vmap(_velocity, in_axes=(None, 0, None))

    def sde(y, inputs):
        t, t_next, step_key = inputs
        d_tau = score.tau(t) - score.tau(t_next)
        z = jax.random.normal(step_key, y.shape, y.dtype)
        return y + d_tau * (0.5 * y + score_at(y, t)) + jnp.sqrt(d_tau) * z, None

    def ode(y, inputs):
        t, t_next, _ = inputs
        d_tau = score.tau(t) - score.tau(t_next)
        first = velocity(score, y, t)
        guess = y - d_tau * first
        return y - 0.5 * d_tau * (first + velocity(score, guess, t_next)), None

    keys = jax.random.split(key, steps)
    y, _ = jax.lax.scan(sde if method == "sde" else ode, y_T, (times[:-1], times[1:], keys))
    return y


@eqx.filter_jit
def _draw(score: VPScore, key, num_chunks: int, chunk_size: int, steps: int, method: str):
    def one_chunk(chunk_key):
        latent_key, reverse_key = jax.random.split(chunk_key)
        y_T = jax.random.normal(latent_key, (chunk_size, score.dim))
        return score.denormalise(_reverse(score, y_T, reverse_key, steps, method))

    draws = jax.lax.map(one_chunk, jax.random.split(key, num_chunks))
    return draws.reshape(-1, score.dim)


def log_prob_point(score: VPScore, x, *, steps: int, trace: str, num_probes: int, key):
    """log p_{t_ε}(x) for one point x (d,) by the probability-flow ODE; see the module docstring."""
    regular = jnp.all(jnp.isfinite(x))
    y0 = score.normalise(jnp.where(regular, x, score.loc))
    T, t_eps = score.schedule.T, score.t_eps
    times = t_eps + (T - t_eps) * jnp.arange(steps + 1, dtype=y0.dtype) / steps
    probes = trace_probes(key, steps, num_probes, score.dim, trace, y0.dtype)

    def velocity_and_divergence(y, t, step_probes):
        return value_and_divergence(lambda p: _velocity(score, p, t), y, trace, step_probes)

    def heun(carry, inputs):
        y, f, div, t = carry
        t_next, next_probes = inputs
        d_tau = score.tau(t_next) - score.tau(t)
        f_guess = _velocity(score, y + d_tau * f, t_next)
        y_next = y + 0.5 * d_tau * (f + f_guess)
        f_next, div_next = velocity_and_divergence(y_next, t_next, next_probes)
        return (y_next, f_next, div_next, t_next), 0.5 * d_tau * (div + div_next)

    f0, div0 = velocity_and_divergence(y0, times[0], probes[0])
    (y_T, *_), increments = jax.lax.scan(heun, (y0, f0, div0, times[0]), (times[1:], probes[1:]))
    log_p = jnp.sum(std_normal.logpdf(y_T)) + jnp.sum(increments) - jnp.sum(jnp.log(score.scale))
    irregular = jnp.where(jnp.any(jnp.isnan(x)), jnp.nan, -jnp.inf)
    return jnp.where(regular, log_p, irregular)


@eqx.filter_jit
def _log_density(score: VPScore, x, steps: int, trace: str, num_probes: int, key):
    def one_point(point):
        return log_prob_point(
            score, point, steps=steps, trace=trace, num_probes=num_probes, key=key
        )

    return map_rows(one_point, x, score.dim)


class SGM(ScoreBasedDistribution):
    """A trained VP-SDE score-based model on R^d, with the same interface as :class:`MSGM`.

    `score` (network, schedule, normalisation) is a pytree data field and `history` holds the
    training losses. The options `sampler`, `sample_steps`, `log_prob_steps`, `trace` and
    `num_probes` mean what they mean for :class:`MSGM`. `log_prob` is −inf at infinite entries and
    NaN for NaN entries.
    """

    pytree_data_fields = ("score", "history")

    def __init__(
        self,
        score: VPScore,
        *,
        sampler: str = "sde",
        sample_steps: int = 128,
        log_prob_steps: int = 64,
        trace: str | None = None,
        num_probes: int = 1,
        history: TrainingHistory | None = None,
        validate_args=None,
    ):
        if not isinstance(score, VPScore):
            raise TypeError(f"`score` must be a msgm_pp VPScore, got {type(score).__name__}.")
        self.score = score
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

    @classmethod
    def fit(
        cls,
        data,
        *,
        key,
        loss: str = "dsm",
        net=None,
        schedule: LinearSchedule | None = None,
        normalization: str = "standard",
        steps: int = 5000,
        batch_size: int = 256,
        learning_rate=1e-3,
        clip_norm: float | None = None,
        optimizer=None,
        validation_fraction: float = 0.1,
        patience: int | None = 10,
        eval_every: int = 250,
        t_eps: float = 1e-3,
        sampler: str = "sde",
        sample_steps: int = 128,
        log_prob_steps: int = 64,
        trace: str | None = None,
        num_probes: int = 1,
        progress: bool | None = None,
    ) -> "SGM":
        """Normalise the data per coordinate and train the VP-SDE score on data of shape (n, d).

        Args:
            data: (n, d) array-like of finite rows.
            key: a JAX PRNG key; the same key gives the same model.
            loss: "dsm" (default) or "ssm" (the paper's comparison).
            net: a network ε(x̃, t); `TimeMLP` (3 × 128, swish) by default.
            schedule: β(t); `vp_schedule()` (β ∈ [0.1, 20], T = 1) by default.
            normalization: "standard" (mean and standard deviation, as in the paper), "robust"
                (median and interquartile range) or "none".
            t_eps: the smallest diffusion time, where sampling stops.
            The other arguments are those of :meth:`MSGM.fit`.

        Returns:
            The trained SGM; its `history` holds the losses.
        """
        key = check_key(key)
        x = check_points(data, "data", allow_zero_rows=True)
        dim = x.shape[1]
        options = check_options(dim, sampler, sample_steps, log_prob_steps, trace, num_probes)
        loss_fn = VPLoss(loss)
        loc, scale = normalisation(np.asarray(x, np.float64), normalization)
        net_key, train_key = jax.random.split(key)
        score = VPScore(
            net=TimeMLP(dim, key=net_key) if net is None else net,
            schedule=vp_schedule() if schedule is None else schedule,
            loc=jnp.asarray(loc, x.dtype),
            scale=jnp.asarray(scale, x.dtype),
            t_eps=float(t_eps),
        )
        trained_net, history = fit_network(
            score.net,
            NetworkLoss(score, loss_fn),
            score.normalise(x),
            key=train_key,
            steps=steps,
            batch_size=batch_size,
            optimizer=make_optimizer(learning_rate, clip_norm) if optimizer is None else optimizer,
            validation_fraction=validation_fraction,
            patience=patience,
            eval_every=eval_every,
            progress=progress,
        )
        history = record_settings(
            history,
            loss=loss,
            net="TimeMLP" if net is None else "custom",
            normalization=normalization,
            **optimizer_settings(learning_rate, clip_norm, optimizer),
            t_eps=float(t_eps),
        )
        return cls(eqx.tree_at(lambda s: s.net, score, trained_net), history=history, **options)

    def _draw_chunks(self, key, num_chunks, chunk_size, steps, sampler):
        return _draw(self.score, key, num_chunks, chunk_size, steps, sampler)

    def _log_density_rows(self, x, steps, trace, num_probes, key):
        return _log_density(self.score, x, steps, trace, num_probes, key)
