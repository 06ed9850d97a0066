"""Training shared by the MSGM and the SGM baseline.

:func:`train` trains the network of a built model (`MSGM.build`, `SGM.build`) on data: it asks the
model for its loss and training arrays and runs :func:`fit_network`, which optimises the inexact arrays of `net` against `loss(net, batch, key)`:

- minibatches of `batch_size` rows are drawn with replacement inside the compiled step (uniformly,
  or in proportion to `row_weights`), and
  `eval_every` steps run as one `lax.scan`, so Python is entered only between evaluations;
- a validation split (fixed at the start) is scored after each chunk with a fixed key (common
  random numbers, so successive values differ by the parameters only), by the loss or by a
  criterion of the caller's (an MSGM's held-out log-likelihood); the parameters with the best
  validation value are returned, and training stops after `patience` evaluations without
  improvement;
- optionally, an exponential moving average of the parameters is kept, validated and returned;
- a non-finite loss or gradient freezes the parameters at their last finite values and stops
  training with a warning; Ctrl-C stops it too, and both return the best parameters so far;
- a progress bar shows the losses (see `msgm_pp._progress` for where it appears);
- with several JAX devices each minibatch is split across them (see `msgm_pp.devices`).

Everything is a pure function of `key`: the same key gives the same parameters.
"""

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from msgm_pp._checks import (
    check_finite_nonnegative,
    check_key,
    check_positive_int,
    check_weight_decay,
    warn_caller,
)
from msgm_pp._progress import progress_bar
from msgm_pp.devices import batch_sharding
from msgm_pp.nets import hidden_weight_mask
from msgm_pp.serialization import serializable


@serializable
class TrainingHistory(eqx.Module):
    """Losses recorded by `fit_network`.

    train_loss: the minibatch loss at every step taken. validation_loss, validation_step: the
    validation loss after each chunk (entry 0 is the initial network, at step 0). best_step: the
    step whose parameters were kept. stop_reason: "max_steps", "early stopping", "non-finite loss" or
    "interrupted". settings: the training settings as (name, value) pairs (see `MSGM.fit`).
    """

    train_loss: jax.Array
    validation_loss: jax.Array
    validation_step: jax.Array
    best_step: int = eqx.field(static=True)
    stop_reason: str = eqx.field(static=True)
    settings: tuple[tuple[str, object], ...] = eqx.field(static=True, default=())


class NetworkLoss(eqx.Module):
    """(net, batch, key) -> `loss(score, batch, key)` with the network of `score` replaced by
    `net`: the form :func:`fit_network` optimises."""

    score: eqx.Module
    loss: eqx.Module

    def __call__(self, net, batch, key):
        return self.loss(eqx.tree_at(lambda sc: sc.net, self.score, net), batch, key)


def record_settings(history: TrainingHistory, **settings) -> TrainingHistory:
    """`history` with `settings` added to the ones `fit_network` recorded."""
    return dataclasses.replace(history, settings=history.settings + tuple(settings.items()))


def optimizer_settings(learning_rate, clip_norm, weight_decay, optimizer) -> dict:
    """How the optimiser was chosen, for `TrainingHistory.settings` (schedules and custom
    optimisers are recorded by kind only)."""
    default = optimizer is None
    return {
        "learning_rate": (
            "cosine"
            if learning_rate is None
            else learning_rate
            if isinstance(learning_rate, float | int)
            else "schedule"
        ),
        "clip_norm": clip_norm,
        "weight_decay": float(weight_decay) if default else None,
        "optimizer": ("adamw" if weight_decay > 0 else "adam") if default else "custom",
    }


def cosine_learning_rate(max_steps: int, peak: float = 3e-3):
    """The default learning rate of `fit`: a linear warm-up over the first 5% of `max_steps` (at
    most 500 steps) to `peak`, then a cosine decay to 1% of it at `max_steps`. The decay matters
    for a density: the score is learned to the precision that the final steps' noise allows."""
    return _cosine_learning_rate(check_positive_int(max_steps, "max_steps"), float(peak))


# Cached so that equal settings give the same schedule and optimizer objects: `_train_chunk`
# takes the optimizer as a static argument, which jit compares by identity, and a fresh one per
# fit recompiled the training program (about 10 s on 2 cores) for every fit of the same shapes.
@functools.lru_cache(maxsize=64)
def _cosine_learning_rate(max_steps: int, peak: float):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=min(500, max_steps // 20),
        decay_steps=max_steps,
        end_value=0.01 * peak,
    )


def make_optimizer(learning_rate=1e-3, clip_norm: float | None = None, weight_decay: float = 0.0):
    """Adam with an optional global-norm gradient clip; `learning_rate` may be an optax schedule.

    With `weight_decay` λ > 0 it is AdamW: each step also moves the weights w of the network's
    hidden layers by −η λ w (η the learning rate; decoupled weight decay, Loshchilov & Hutter 2019),
    the layers that :func:`msgm_pp.nets.hidden_weights` names."""
    if isinstance(learning_rate, bool) or (
        isinstance(learning_rate, int | float) and not 0 < learning_rate < math.inf
    ):
        raise ValueError(
            f"`learning_rate` must be a positive finite number or an optax schedule, got "
            f"{learning_rate!r}."
        )
    weight_decay = check_weight_decay(weight_decay)
    try:
        return _adam(learning_rate, clip_norm, weight_decay)
    except TypeError:  # an unhashable learning rate (an array) is not cached
        return _adam.__wrapped__(learning_rate, clip_norm, weight_decay)


@functools.lru_cache(maxsize=64)
def _adam(learning_rate, clip_norm, weight_decay):
    if weight_decay > 0:
        adam = optax.adamw(learning_rate, weight_decay=weight_decay, mask=hidden_weight_mask)
    else:
        adam = optax.adam(learning_rate)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def split_validation(key, num_rows: int, validation_fraction: float):
    """Random (train, validation) row indices; validation is empty for a fraction of 0."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"`validation_fraction` must lie in [0, 1), got {validation_fraction}.")
    num_validation = round(validation_fraction * num_rows)
    if validation_fraction > 0:
        num_validation = max(num_validation, 1)
    if num_rows - num_validation < 1:
        raise ValueError(
            f"{num_rows} data rows leave nothing to train on after the validation split."
        )
    order = np.asarray(jax.random.permutation(key, num_rows))
    return order[num_validation:], order[:num_validation]


def validation_repeats(num_rows: int, row_size: int, validation_size: int | None = None) -> int:
    """How often the `num_rows` validation rows are scored per evaluation: until they make
    `validation_size` rows, by default about 2^17 values, between 64 and 4096 rows."""
    if validation_size is None:
        validation_size = min(4096, max(64, 2**17 // row_size))
    validation_size = check_positive_int(validation_size, "validation_size")
    return math.ceil(validation_size / max(num_rows, 1))


def _row_probabilities(row_weights, num_rows: int, train_rows):
    """The training rows' sampling probabilities from `row_weights` (None: uniform draws)."""
    if row_weights is None:
        return None
    weights = np.asarray(row_weights, dtype=np.float64)
    if weights.shape != (num_rows,):
        raise ValueError(
            f"`row_weights` must hold one weight per row of the data, shape ({num_rows},); "
            f"got shape {weights.shape}."
        )
    check_finite_nonnegative(weights, "row_weights", where="rows")
    training_weights = weights[np.asarray(train_rows)]
    if not training_weights.sum() > 0:
        raise ValueError("`row_weights` gives weight 0 to every training row.")
    return jnp.asarray(training_weights / training_weights.sum(), jnp.float32)


def _tree_all_finite(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _select(flag, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(flag, a, b), new, old)


class _Minibatches(eqx.Module):
    """Draws `batch_size` rows with replacement: uniformly, or with the given probabilities."""

    batch_size: int = eqx.field(static=True)
    probabilities: jax.Array | None
    sharding: object = eqx.field(static=True)

    def __call__(self, key, data):
        num_rows = jax.tree_util.tree_leaves(data)[0].shape[0]
        if self.probabilities is None:
            rows = jax.random.randint(key, (self.batch_size,), 0, num_rows)
        else:
            rows = jax.random.choice(key, num_rows, (self.batch_size,), p=self.probabilities)
        batch = jax.tree_util.tree_map(lambda a: a[rows], data)
        if self.sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, self.sharding)
        return batch


@eqx.filter_jit
def _train_chunk(params, average, static, opt_state, optimizer, loss, data, keys, draw, ema_decay):
    def step(carry, key):
        params, average, opt_state, finite = carry
        batch_key, loss_key = jax.random.split(key)
        batch = draw(batch_key, data)
        value, grads = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), batch, loss_key))(
            params
        )
        updates, new_state = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        finite = finite & jnp.isfinite(value) & _tree_all_finite(grads)
        params = _select(finite, new_params, params)
        if ema_decay is not None:
            average = jax.tree_util.tree_map(
                lambda a, p: ema_decay * a + (1.0 - ema_decay) * p, average, params
            )
        carry = (params, average, _select(finite, new_state, opt_state), finite)
        return carry, (value, finite)

    (params, average, opt_state, _), (values, finite_steps) = jax.lax.scan(
        step, (params, average, opt_state, jnp.asarray(True)), keys
    )
    return params, average, opt_state, finite_steps, values


def _split(key, num_rows: int, validation_fraction: float):
    """(train rows, validation rows, validation key, train key) of `fit_network(key=key)`."""
    split_key, validation_key, train_key = jax.random.split(check_key(key), 3)
    train_rows, validation_rows = split_validation(split_key, num_rows, validation_fraction)
    return train_rows, validation_rows, validation_key, train_key


def validation_terms(net, criterion, data, *, key, validation_fraction: float = 0.1):
    """The per-row terms `criterion.per_point(net, rows, key)` whose mean is the validation value
    that :func:`fit_network` with the same `key`, `data` and `validation_fraction` and the
    criterion `criterion` scores `net` with (one term per validation row that the criterion
    reads). A network's best validation value is the mean of these terms at its returned
    parameters, and the terms of two networks trained with the same key pair row by row."""
    num_rows = jax.tree_util.tree_leaves(data)[0].shape[0]
    _, validation_rows, validation_key, _ = _split(key, num_rows, validation_fraction)
    if validation_rows.size == 0:
        raise ValueError("validation_fraction=0 leaves no validation rows to score.")
    rows = jax.tree_util.tree_map(lambda a: a[validation_rows], data)
    (evaluation_key,) = jax.random.split(validation_key, 1)  # as `_evaluate` with one repeat
    return np.asarray(_per_point(criterion, net, rows, evaluation_key))


@eqx.filter_jit
def _per_point(criterion, net, rows, key):
    return criterion.per_point(net, rows, key)


@eqx.filter_jit
def _evaluate(params, static, loss, data, key, repeats):
    keys = jax.random.split(key, repeats)
    return jnp.mean(jax.vmap(lambda k: loss(eqx.combine(params, static), data, k))(keys))


def fit_network(
    net,
    loss,
    data,
    *,
    key,
    max_steps: int = 5000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    validation_fraction: float = 0.1,
    patience: int | None = 10,
    eval_every: int = 250,
    validation_size: int | None = None,
    validation=None,
    ema_decay: float | None = None,
    row_weights=None,
    progress: bool | None = None,
):
    """Minimise `loss(net, batch, key)` over the inexact arrays of `net`; see the module docstring.

    Args:
        net: an Equinox module (only its inexact arrays are trained).
        loss: (net, batch, key) -> scalar, where batch is `data` restricted to some rows.
        data: a pytree of arrays sharing the leading axis (rows).
        key: a JAX PRNG key.
        max_steps: maximum number of optimiser steps.
        batch_size: rows per step; with several JAX devices, a multiple of their number.
        optimizer: an optax transformation; by default Adam with
            `cosine_learning_rate(max_steps)`.
        validation_fraction: share of rows held out for validation and early stopping.
        patience: evaluations without improvement before stopping (None: never stop early).
        eval_every: steps per compiled chunk, between validation evaluations.
        validation_size: validation points scored per evaluation (the held-out rows repeated with
            fresh noise until at least this many); None scores about 2^17 values, between 64 and
            4096 rows (4096 for rows of up to 32 values). Only for the default criterion.
        validation: the criterion (net, rows, key) -> scalar to minimise on the validation rows,
            evaluated once per chunk with a fixed key; None uses `loss`, averaged over
            `validation_size` noised copies.
        ema_decay: keep an exponential moving average of the parameters, a ← decay a + (1 −
            decay) θ after every step, and validate and return the average instead of θ (None:
            no average).
        row_weights: (rows,) finite weights >= 0: minibatch rows are drawn with probability
            proportional to their weight among the training rows (None: uniformly). The
            validation rows are scored unweighted.
        progress: True for a progress bar, False for none; None chooses by where the output
            goes (a bar in a terminal or notebook, a line every 30 s in a log, nothing in CI).

    Returns:
        (trained net, TrainingHistory).
    """
    max_steps = check_positive_int(max_steps, "max_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    eval_every = check_positive_int(eval_every, "eval_every")
    if patience is not None:
        patience = check_positive_int(patience, "patience")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"`ema_decay` must lie in (0, 1) or be None, got {ema_decay!r}.")
    optimizer = make_optimizer(cosine_learning_rate(max_steps)) if optimizer is None else optimizer
    num_rows = jax.tree_util.tree_leaves(data)[0].shape[0]
    train_rows, validation_rows, validation_key, train_key = _split(
        key, num_rows, validation_fraction
    )
    train_data = jax.tree_util.tree_map(lambda a: a[train_rows], data)
    draw = _Minibatches(
        batch_size,
        _row_probabilities(row_weights, num_rows, train_rows),
        batch_sharding(batch_size),
    )
    validation_data = jax.tree_util.tree_map(lambda a: a[validation_rows], data)
    row_size = math.prod(jax.tree_util.tree_leaves(data)[0].shape[1:])
    if validation is None:
        validation = loss
        repeats = validation_repeats(validation_rows.size, row_size, validation_size)
    else:
        repeats = 1

    params, static = eqx.partition(net, eqx.is_inexact_array)
    average = None if ema_decay is None else params
    opt_state = optimizer.init(params)

    def validate(params):
        if validation_rows.size == 0:
            return math.nan
        return float(
            _evaluate(params, static, validation, validation_data, validation_key, repeats)
        )

    best_params, best_step, best_value = params, 0, validate(params)
    validation_losses, validation_steps, train_losses = [best_value], [0], []
    stop_reason, since_best, done = "max_steps", 0, 0
    bar = progress_bar(max_steps, "training", progress)
    try:
        while done < max_steps:
            chunk = min(eval_every, max_steps - done)
            keys = jax.random.split(jax.random.fold_in(train_key, done), chunk)
            params, average, opt_state, finite_steps, values = _train_chunk(
                params,
                average,
                static,
                opt_state,
                optimizer,
                loss,
                train_data,
                keys,
                draw,
                ema_decay,
            )
            values, finite_steps = np.asarray(values), np.asarray(finite_steps)
            if not finite_steps.all():
                taken = int(np.argmin(finite_steps))  # steps before the first non-finite one
                train_losses.extend(values[:taken].tolist())
                done += taken
                stop_reason = "non-finite loss"
                warn_caller(
                    f"training stopped at step {done}: the loss or its gradient became NaN or inf. "
                    f"Returning the parameters with the best validation loss (step {best_step}); "
                    "try a smaller learning_rate, clip_norm, or a larger t_eps.",
                    RuntimeWarning,
                )
                break
            train_losses.extend(values.tolist())
            done += chunk
            bar.update(chunk)
            kept = params if ema_decay is None else average
            value = validate(kept)
            validation_losses.append(value)
            validation_steps.append(done)
            if validation_rows.size == 0 or value < best_value:
                best_params, best_step, best_value, since_best = kept, done, value, 0
            else:
                since_best += 1
            bar.set_postfix(train=f"{values.mean():.4g}", validation=f"{value:.4g}")
            if patience is not None and since_best >= patience:
                stop_reason = "early stopping"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        warn_caller(
            f"training interrupted at step {done}; returning the best parameters so far "
            f"(step {best_step}).",
            RuntimeWarning,
        )
    finally:
        bar.close()
    completed = stop_reason in ("max_steps", "early stopping")
    if completed and best_step == 0 and validation_rows.size > 0:
        warn_caller(
            f"training never improved on the initial network's validation loss "
            f"({validation_losses[0]:.4g}) in {done} steps, so the returned network is the "
            f"untrained one. Check the learning rate, the amount of data ({num_rows} rows, "
            f"{validation_rows.size} for validation) and the loss.",
            RuntimeWarning,
        )
    history = TrainingHistory(
        train_loss=jnp.asarray(train_losses),
        validation_loss=jnp.asarray(validation_losses),
        validation_step=jnp.asarray(validation_steps),
        best_step=best_step,
        stop_reason=stop_reason,
        settings=(
            ("max_steps", max_steps),
            ("batch_size", batch_size),
            ("validation_fraction", validation_fraction),
            ("patience", patience),
            ("eval_every", eval_every),
            ("ema_decay", ema_decay),
            ("row_weights", "none" if row_weights is None else "custom"),
        ),
    )
    return eqx.combine(best_params, static), history


def train(
    model,
    data,
    *,
    key,
    loss=None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    validation_fraction: float = 0.1,
    patience: int | None = 20,
    eval_every: int = 500,
    validation=None,
    ema_decay: float | None = None,
    row_weights=None,
    progress: bool | None = None,
):
    """Train the network of `model` (an MSGM or SGM, e.g. from `MSGM.build`) on `data`.

    Args:
        model: the model whose `score.net` is trained; its other parts are kept.
        data: the training data, of shape (n,) + the model's event shape.
        key: a JAX PRNG key; the same key gives the same parameters.
        loss: the model's loss (a name or loss object; see `MSGM.fit`); its default when None.
        optimizer: an optax transformation; Adam with `cosine_learning_rate(max_steps)` when
            None.
        batch_size: rows per step; None takes `model.default_batch_size()`.
        max_steps: optimiser steps at most; None takes `model.default_max_steps()`.
        validation: the early-stopping criterion, a name that `model.validation_criterion`
            knows ("likelihood" or "loss") or None for the model's default.
        row_weights: sampling weights of the rows of `data` (see :func:`fit_network`). For an
            MSGM, weights that depend on the norm alone leave the learned law unchanged (see
            `MSGM.tail_weights`); any other weights change the law that is learned.
        validation_fraction, patience, eval_every, ema_decay, progress: see :func:`fit_network`.

    Returns:
        The model with the trained network and its `TrainingHistory`.
    """
    net, history = fit_network(
        model.score.net,
        model.network_loss(loss),
        model.training_data(data),
        key=key,
        max_steps=model.default_max_steps() if max_steps is None else max_steps,
        batch_size=model.default_batch_size() if batch_size is None else batch_size,
        optimizer=optimizer,
        validation_fraction=validation_fraction,
        patience=patience,
        eval_every=eval_every,
        validation=model.validation_criterion(validation),
        ema_decay=ema_decay,
        row_weights=row_weights,
        progress=progress,
    )
    return model.with_network(net, history)
