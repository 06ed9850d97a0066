r"""`MSGM`: a multiplicative score-based generative model as a NumPyro distribution.

A draw takes a latent point — a norm from the norm model and a uniform direction — and runs the
reverse dynamics of the direction from s = T to s = t_ε (:mod:`msgm_pp.samplers`). The norm is kept
exactly, so the norms of samples follow the norm model, heavy tails included.

`log_prob` integrates the probability-flow ODE forward from x (:mod:`msgm_pp.density`): it is the
exact log-density of the law that the ODE sampler draws from, up to the integration error of its
steps, and differentiable in x.

A model is made in two steps, which :meth:`MSGM.fit` runs one after the other:
:meth:`MSGM.build` chooses the parts from the data (noise, network, schedule, norm model) and
:func:`msgm_pp.train` trains the network.
"""

import dataclasses
import json
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp._checks import check_key, check_points, warn_caller, warn_deprecated
from msgm_pp.coordinates import (
    AffineCoordinates,
    CoordinateScaling,
    coordinate_scaling,
    unit_mismatch,
)
from msgm_pp.density import HeldOutNegLogLikelihood, ODEDensity, log_prob_point
from msgm_pp.latent import Latent
from msgm_pp.losses import ScoreMatchingLoss, dsm_applies, make_loss
from msgm_pp.nets import LatticeScoreNet, ScoreMLP
from msgm_pp.noise import AbstractNoise, DenseNoise, IsotropicNoise, LatticeNoise
from msgm_pp.norm_models import AbstractNormModel, fit_norm_model
from msgm_pp.samplers import reverse_directions
from msgm_pp.schedule import mixing_schedule
from msgm_pp.score import TangentScore
from msgm_pp.score_based import (
    Candidate,
    ScoreBasedDistribution,
    fit_built,
    flat_points,
    split_training,
)
from msgm_pp.serialization import serializable
from msgm_pp.sphere import log_norm
from msgm_pp.training import TrainingHistory

# Extrapolated, so that laws whose directions are concentrated (where 32 plain steps read about
# 0.08 nats high, benchmarks/density_steps.py) are not preferred over diffuse ones.
VALIDATION_DENSITY = ODEDensity(steps=32, extrapolate=True)
# The fits that `MSGM.fit` chooses from by default: each (ScoreMLP direction_scale, weight decay)
# in each of these coordinates.
DEFAULT_NETWORKS = ((1.0, 0.0), (8.0, 0.1))
DEFAULT_NORMALIZATIONS = ("none", "shape")


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


@serializable
class MSGM(ScoreBasedDistribution):
    """A multiplicative score-based model: event_shape (d,), or (h, w) for a lattice model.

    Make one with :meth:`MSGM.fit` (or :meth:`MSGM.build` and :func:`msgm_pp.train`), or read one
    with :func:`msgm_pp.load`. `score` (network, noise, schedule), `norm_model` and
    `coordinates` are pytree data fields, so the distribution keeps its network through jit and
    vmap; `history` holds the training losses.

    `coordinates` (a :class:`~msgm_pp.CoordinateScaling` or :class:`~msgm_pp.AffineCoordinates`,
    or None for the identity) maps data x to the coordinates y = W(x − loc) that the diffusion
    rotates; `log_prob` adds its exact log-Jacobian log |det W|.

    Settings (change them with :meth:`with_options`):

    - `sampler`: :class:`~msgm_pp.SDESampler` (default, 128 steps) or :class:`~msgm_pp.ODESampler`,
      how `sample` integrates the reverse dynamics;
    - `density`: :class:`~msgm_pp.ODEDensity`, the probability-flow ODE of `log_prob`: its Heun
      `steps` (default 64; the error falls as 1/steps²: on trained models of the paper's task and
      of a Student-t at d = 8 the mean reads 0.018–0.019 nats high at 64 steps and 0.001 with
      `extrapolate=True`, benchmarks/density_steps.py) and `trace`, :class:`~msgm_pp.ExactTrace`
      (the default for d <= 64) or :class:`~msgm_pp.HutchinsonTrace` (an unbiased estimate, the
      default above).

    `log_prob` is −inf at the origin of y (x = loc) and at infinite entries, and NaN for NaN
    entries.
    """

    pytree_data_fields = ("score", "norm_model", "coordinates", "history")

    def __init__(
        self,
        score: TangentScore,
        norm_model: AbstractNormModel,
        *,
        coordinates: CoordinateScaling | AffineCoordinates | None = None,
        sampler=None,
        density=None,
        history: TrainingHistory | None = None,
        validate_args=None,
        **deprecated,
    ):
        if not isinstance(score, TangentScore):
            raise TypeError(f"`score` must be a msgm_pp TangentScore, got {type(score).__name__}.")
        if not isinstance(norm_model, AbstractNormModel):
            raise TypeError(
                f"`norm_model` must be a msgm_pp norm model, got {type(norm_model).__name__}."
            )
        if coordinates is not None and not isinstance(
            coordinates, CoordinateScaling | AffineCoordinates
        ):
            raise TypeError(
                "`coordinates` must be a msgm_pp CoordinateScaling, AffineCoordinates or None, got "
                f"{type(coordinates).__name__}."
            )
        if coordinates is not None and coordinates.dim != score.dim:
            raise ValueError(
                f"`coordinates` has dimension {coordinates.dim} but the score has d = {score.dim}."
            )
        self.score = score
        self.norm_model = norm_model
        self.coordinates = coordinates
        self.history = history
        self._init_settings(validate_args, sampler, density, deprecated)

    @property
    def _point_shape(self) -> tuple[int, ...]:
        return self.score.noise.event_shape

    @property
    def noise(self) -> AbstractNoise:
        """The forward noise (isotropic, dense or lattice) of the score."""
        return self.score.noise

    @property
    def latent(self) -> Latent:
        """The latent law p_∞ that sampling starts from (on flat points of dimension d)."""
        return Latent(self.norm_model, self.dim)

    @classmethod
    def build(
        cls,
        data,
        *,
        key,
        noise="isotropic",
        net=None,
        schedule=None,
        norm: str = "kde+gpd",
        norm_options: dict | None = None,
        normalization="none",
        t_eps: float = 1e-3,
        sampler=None,
        density=None,
        **deprecated,
    ) -> "MSGM":
        """An MSGM for `data` with an untrained network; train it with :func:`msgm_pp.train`.

        Args:
            data: (n, d) array-like of finite, nonzero rows, or (n, h, w) fields for a lattice.
            key: a JAX PRNG key (for the network's initialisation and a dense noise).
            noise: "isotropic" (default), "dense" (the paper's), or a noise instance such as
                `LatticeNoise((h, w))`.
            net: a network g(u, z, t); `ScoreMLP` (or `LatticeScoreNet` for lattice noise) by
                default.
            schedule: β(s) on [0, T]; `mixing_schedule(noise)` by default.
            norm, norm_options: the norm model ("kde+gpd", "kde" or "empirical") and its options,
                fitted to the norms of `data` in float64.
            normalization: the per-coordinate map y = (x − loc)/scale applied before the model:
                "none" (the default: the diffusion rotates x itself), "robust" (median and
                interquartile range / 1.349), "standard" (mean and standard deviation), "shape"
                (vector data: the whitening y = c Σ^{-1/2} x by Tyler's shape matrix about the
                origin, :func:`msgm_pp.coordinates.shape_whitening`, under which elliptical data
                have uniform directions), or a :class:`~msgm_pp.CoordinateScaling` or
                :class:`~msgm_pp.AffineCoordinates`. With "none", a UserWarning recommends
                "robust" when the columns' robust scales differ more than 10-fold or a median
                lies more than one scale from the origin.
            t_eps: the smallest diffusion time, where sampling stops and `log_prob` starts.
            sampler, density: the settings of `sample` and `log_prob` (see the class docstring).

        Returns:
            The untrained MSGM. Its network standardises log r by the mean and standard deviation
            of the data's log-norms.
        """
        # Of split(key, 3), the last key trains in MSGM.fit: fit = build + train with one key.
        noise_key, net_key, _ = jax.random.split(check_key(key), 3)
        # A field's shape is known from a lattice noise; any other noise is checked by make_noise.
        field_shape = getattr(noise, "event_shape", ())
        x = flat_points(data, field_shape if len(field_shape) > 1 else None)
        noise = make_noise(noise, x.shape[1], key=noise_key)
        x64 = np.asarray(x, dtype=np.float64)
        mixes = isinstance(normalization, AffineCoordinates) or normalization == "shape"
        if isinstance(noise, LatticeNoise) and mixes:
            raise ValueError(
                "normalization='shape' (or any AffineCoordinates) mixes all coordinates, which a "
                "lattice model cannot: use 'none', 'robust', 'standard' or a CoordinateScaling."
            )
        coordinates = coordinate_scaling(x64, normalization, x.dtype)
        if coordinates is None and isinstance(normalization, str):
            mismatch = unit_mismatch(x64)
            if mismatch:
                warn_caller(
                    f"{mismatch}. The multiplicative noise rotates all coordinates about the "
                    "origin together, so fit on comparable units: pass normalization='robust'."
                )
        y = _normalised(coordinates, x)
        norm_model = fit_norm_model(np.asarray(y, dtype=np.float64), norm, **(norm_options or {}))
        log_r = np.asarray(log_norm(y), dtype=np.float64)
        score = TangentScore(
            net=default_net(noise, key=net_key) if net is None else net,
            noise=noise,
            schedule=mixing_schedule(noise) if schedule is None else schedule,
            log_r_loc=float(log_r.mean()),
            log_r_scale=float(max(log_r.std(), 1e-6)),
            t_eps=float(t_eps),
            noise_scaled=True,
            time_input="log_tau" if isinstance(noise, LatticeNoise) else "fraction",
        )
        return cls(
            score,
            norm_model,
            coordinates=coordinates,
            sampler=sampler,
            density=density,
            **deprecated,
        )

    def default_batch_size(self) -> int:
        """256 points, or for a lattice as many fields as hold about 2048 values (at least 4):
        a convolutional step costs in proportion to the values in its batch, and each field
        holds many local patterns to learn from (32 fields of 8×8, 8 of 16×16, 4 of 32×32)."""
        if isinstance(self.noise, LatticeNoise):
            return max(4, min(256, 2048 // self.dim))
        return 256

    def default_max_steps(self) -> int:
        """20000 steps for vectors; 5000 for a lattice, whose steps cost in proportion to the
        field (benchmarks/lattice_defaults.py: 261 s at 8×8 on 2 cores)."""
        return 5000 if isinstance(self.noise, LatticeNoise) else 20000

    def training_data(self, data):
        """(u, ℓ): the unit directions (n, d) and log-norms (n,) of the data's coordinates y that
        the losses take."""
        y = _normalised(self.coordinates, flat_points(data, self.event_shape))
        log_r = log_norm(y)
        return y / jnp.exp(log_r)[:, None], log_r

    def tail_weights(self, data, emphasis: float):
        """Sampling weights of the rows of `data` that draw large norms more often, for
        :func:`msgm_pp.train`'s `row_weights`: the row whose norm has rank k (0 for the smallest)
        of n gets w ∝ (1 − k/n)^(−γ), γ = `emphasis`, so the top fraction q of the norms gets
        about q^(1−γ) of the draws for large n (γ = 0.5: the top 1% gets 9–10%). None for γ = 0.

        The forward process keeps every norm, so weighting the data by a function of the norm
        leaves the law of x₀ given x_s unchanged, and with it the minimiser of every
        score-matching loss: the learned law stays the same, while the network's effort moves to
        large norms, where heavy-tailed data are sparse and their angular law is narrowest.
        """
        if isinstance(emphasis, bool) or not isinstance(emphasis, numbers.Real):
            raise TypeError(f"`tail_emphasis` must be a number in [0, 1), got {emphasis!r}.")
        if not 0 <= emphasis < 1:
            raise ValueError(f"`tail_emphasis` must lie in [0, 1), got {emphasis!r}.")
        if emphasis == 0:
            return None
        log_r = np.asarray(self.training_data(data)[1])
        rank = np.searchsorted(np.sort(log_r), log_r)  # equal norms, equal weights
        return (1.0 - rank / rank.size) ** (-float(emphasis))

    def loss(self, name=None, *, forward_steps: int = 16, weighting: str | None = None):
        """The score-matching loss `name` for this model's noise: "dsm", "ssm" or "ism"; None picks
        "dsm" where its exact target exists (isotropic noise, d <= 32) and "ssm" otherwise.
        `weighting` ("likelihood", "capped", "variance" or "none") is explained in
        :mod:`msgm_pp.losses`; None picks "capped" for a lattice and "likelihood" otherwise."""
        if isinstance(name, ScoreMatchingLoss):
            name, forward_steps, weighting = name.name, name.forward_steps, name.weighting
        if name is None:
            name = "dsm" if dsm_applies(self.noise) else "ssm"
        if weighting is None:
            weighting = "capped" if isinstance(self.noise, LatticeNoise) else "likelihood"
        return make_loss(name, self.noise, forward_steps=forward_steps, weighting=weighting)

    def validation_criterion(self, name=None):
        """The early-stopping criterion for :func:`msgm_pp.train`: "likelihood", the held-out
        log-likelihood of the first 1024 validation rows by the probability-flow ODE with 32 steps,
        extrapolated (`ODEDensity(32, extrapolate=True)`,
        :class:`~msgm_pp.density.HeldOutNegLogLikelihood`), or "loss", the training loss on noised
        copies of them (returned as None). None picks "likelihood" for d <= 32 and "loss" above,
        where an exact trace costs more than the training it checks."""
        if self._validation_name(name) == "loss":
            return None
        density = dataclasses.replace(VALIDATION_DENSITY, trace=self.density.trace)
        return HeldOutNegLogLikelihood(self.score, self.norm_model, density)

    def _validation_name(self, name) -> str:
        if name is None:
            return "likelihood" if self.dim <= 32 else "loss"
        if name not in ("likelihood", "loss"):
            raise ValueError(f"`validation` must be 'likelihood', 'loss' or None, got {name!r}.")
        return name

    @classmethod
    def fit(
        cls,
        data,
        *,
        key,
        noise="isotropic",
        loss=None,
        net=None,
        schedule=None,
        max_steps: int | None = None,
        batch_size: int | None = None,
        learning_rate=None,
        clip_norm: float | None = None,
        weight_decay: float | Sequence[float] | None = None,
        optimizer=None,
        validation_fraction: float = 0.1,
        patience: int | None = 20,
        eval_every: int = 500,
        validation: str | None = None,
        ema_decay: float | None = None,
        norm: str = "kde+gpd",
        norm_options: dict | None = None,
        normalization=None,
        t_eps: float = 1e-3,
        forward_steps: int = 16,
        weighting: str | None = None,
        tail_emphasis: float = 0.0,
        selection=None,
        sampler=None,
        density=None,
        progress: bool | None = None,
        **deprecated,
    ) -> "MSGM":
        """Build an MSGM for `data` and train its network: :meth:`build`, then :func:`msgm_pp.train`.

        Args:
            data, key, noise, net, schedule, norm, norm_options, t_eps, sampler, density: see
                :meth:`build`.
            normalization: see :meth:`build`; None (the default) is "none" or, in the default
                fit below, chosen between "none" and "shape".
            loss: "dsm" (exact heat-kernel target; the default for isotropic noise with d <= 32),
                "ssm" (the paper's sliced score matching; the default otherwise) or "ism".
            forward_steps: integrator steps for the forward draws where they are not exact.
            weighting: how the loss draws and weights times: "likelihood" (the likelihood
                weighting with importance-sampled times), "capped" (the same, with the late
                times' weights capped), "variance" (λ(s), the 0.2 default) or "none" (the paper);
                see :mod:`msgm_pp.losses`. None (the default) picks "capped" for a lattice and
                "likelihood" otherwise. The 0.2 keyword
                `weighted` still works, with a DeprecationWarning (True is "variance", False
                "none").
            tail_emphasis: γ in [0, 1): draw training rows with the largest norms more often, by
                :meth:`tail_weights`, which leaves the learned law unchanged (0: uniform draws).
            learning_rate, clip_norm, weight_decay: for the default optimiser
                (:func:`~msgm_pp.training.make_optimizer`): the learning rate, a number, an optax
                schedule, or None for :func:`~msgm_pp.training.cosine_learning_rate` (peak 3e-3);
                the decay λ of the hidden layers' weights (AdamW; 0 is plain Adam), or a sequence
                of them, e.g. (0.0, 0.1): one fit with each, same key and validation rows, and
                `selection` keeps one; or pass any optax `optimizer`.
                With none of `net`, `weight_decay` and `optimizer` given and validation rows
                (`validation_fraction` > 0), vector data get the same choice between the default
                network with λ = 0 and a network rougher in u (`ScoreMLP(direction_scale=8)`)
                with λ = 0.1 (:meth:`default_candidates`); with `normalization` None too, each
                in the data's coordinates and, where the validation is "likelihood", whitened by
                Tyler's shape matrix (`normalization="shape"`): four fits, compared in nats per
                point of the data, in that order (simplest first). `history.settings` records
                the scores and the choice.
            selection: how a fit with several candidates keeps one, a function (scores,
                standard errors) -> label: None or :func:`~msgm_pp.lowest_validation_score` (the
                lowest score, the best expected held-out likelihood) or
                :func:`~msgm_pp.one_standard_error_rule` (the simplest candidate within one
                standard error of the lowest, for small data sets where the scores are noisy).
                Any other selection than the default also records the standard errors of the
                candidates' paired per-row differences from the lowest score.
            validation: the early-stopping criterion: "likelihood" or "loss"; None picks by
                dimension (see :meth:`validation_criterion`).
            batch_size: rows per step; None takes :meth:`default_batch_size`.
            max_steps: optimiser steps at most; None takes :meth:`default_max_steps`.
            validation_fraction, patience, eval_every, ema_decay, progress: see
                :func:`msgm_pp.training.fit_network`.

        Returns:
            The trained MSGM; its `history` holds the losses and the settings.
        """
        deprecated, training = split_training(deprecated, max_steps)
        if "weighted" in deprecated:
            warn_deprecated(
                "fit(weighted=...) is deprecated: pass weighting='variance' (weighted=True) or "
                "weighting='none' (weighted=False); the default is now the likelihood weighting "
                "(capped on lattices)."
            )
            weighting = "variance" if deprecated.pop("weighted") else "none"
        searched = (
            net is None and weight_decay is None and optimizer is None and bool(validation_fraction)
        )

        def built(normalization):
            return cls.build(
                data,
                key=key,
                noise=noise,
                net=net,
                schedule=schedule,
                norm=norm,
                norm_options=norm_options,
                normalization=normalization,
                t_eps=t_eps,
                sampler=sampler,
                density=density,
                **deprecated,
            )

        model = built("none" if normalization is None else normalization)
        loss = model.loss(loss, forward_steps=forward_steps, weighting=weighting)
        row_weights = model.tail_weights(data, tail_emphasis)
        candidates = model.default_candidates(key, row_weights) if searched else None
        if candidates is not None and normalization is None:
            by_normalization = {"none": candidates}
            if model._validation_name(validation) == "likelihood" and len(data) > model.dim:
                whitened = built("shape")
                whitened_weights = whitened.tail_weights(data, tail_emphasis)
                by_normalization["shape"] = whitened.default_candidates(key, whitened_weights)
            candidates = [
                candidate._replace(
                    label=f"normalization={name}, {candidate.label}",
                    settings={"normalization": name},
                )
                for name, group in by_normalization.items()
                for candidate in group
            ]
        return fit_built(
            model,
            data,
            key=jax.random.split(check_key(key), 3)[2],
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
                validation=validation,
                ema_decay=ema_decay,
                row_weights=row_weights,
                progress=progress,
            ),
            settings=dict(
                noise=type(model.noise).__name__,
                loss=loss.name,
                net=type(model.score.net).__name__ if net is None else "custom",
                norm=norm,
                norm_options=json.dumps(norm_options or {}, sort_keys=True),
                normalization=_normalization_name(normalization),
                t_eps=model.score.t_eps,
                tail_emphasis=float(tail_emphasis),
                forward_steps=forward_steps,
                weighting=loss.weighting,
                validation=model._validation_name(validation),
            ),
            candidates=candidates,
            selection=selection,
        )

    def default_candidates(self, key, row_weights=None) -> list | None:
        """The fits in this model's coordinates that :meth:`fit` chooses from by default: for the
        default :class:`~msgm_pp.ScoreMLP` of vector data, a :class:`~msgm_pp.score_based.Candidate`
        for each pair of `direction_scale` and weight decay in `DEFAULT_NETWORKS`, all from the
        network initialisation that `build(key=key)` makes, training on rows drawn with
        `row_weights` (for instance :meth:`tail_weights`; None: uniformly); None (train this model
        as it is) for other networks.

        Which is best depends on the law: the rougher network learns independent coordinates
        (iid Cauchy at d = 16: 10.8 → 3.1 nats from the truth) and a random walk with Student-t
        steps (0.82 → 0.71), and overfits smooth laws (benchmarks/network_candidates.py)."""
        net = self.score.net
        if type(net) is not ScoreMLP or net.direction_scale != 1.0:
            return None
        net_key = jax.random.split(check_key(key), 3)[1]  # the key `build` initialised `net` with
        candidates = []
        for direction_scale, decay in DEFAULT_NETWORKS:
            start = self
            if direction_scale != 1.0:
                rougher = ScoreMLP(self.dim, key=net_key, direction_scale=direction_scale)
                start = self.with_network(rougher)
            label = f"direction_scale={direction_scale:g}, weight_decay={decay:g}"
            candidates.append(Candidate(label, start, decay, row_weights, {}))
        return candidates

    def _draw_chunk(self, key, chunk_size: int):
        latent_key, reverse_key = jax.random.split(key)
        log_r, u_T = self.latent.sample_polar(latent_key, (chunk_size,))
        u = reverse_directions(self.score, u_T, log_r, reverse_key, self.sampler)
        y = jnp.exp(log_r)[:, None] * u
        return y if self.coordinates is None else self.coordinates.denormalise(y)

    def _log_prob_point(self, x, key):
        if self.coordinates is None:
            return log_prob_point(self.score, self.norm_model, x, self.density, key)
        y = self.coordinates.normalise(x)
        log_p = log_prob_point(self.score, self.norm_model, y, self.density, key)
        return log_p + self.coordinates.log_abs_det()


def _normalization_name(normalization) -> str:
    if normalization is None:
        return "none"
    return normalization if isinstance(normalization, str) else "custom"


def _normalised(coordinates: CoordinateScaling | None, x):
    """The coordinates y of the checked points x (n, d); each row must be away from y = 0."""
    if coordinates is None:
        return x
    return check_points(coordinates.normalise(x), "normalised data (x - loc) / scale")
