"""The training loop: determinism, best-parameter return, early stopping and failure handling."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msgm_pp as mp
from msgm_pp import training as train


class Mean(eqx.Module):
    w: jax.Array


def squared_error(net, batch, key):
    return jnp.mean((net.w - batch) ** 2)


DATA = jax.random.normal(jax.random.key(0), (500, 3)) + jnp.array([1.0, -2.0, 3.0])


def fit_mean(loss, seed, **options):
    settings = dict(max_steps=1000, eval_every=100, optimizer=optax.adam(0.05), progress=False)
    return train.fit_network(
        Mean(jnp.zeros(3)), loss, DATA, key=jax.random.key(seed), **(settings | options)
    )


def test_training_reaches_the_minimiser_and_is_deterministic():
    fits = [fit_mean(squared_error, 1, max_steps=600) for _ in range(2)]
    (net, history), (again, history_again) = fits
    np.testing.assert_array_equal(net.w, again.w)
    np.testing.assert_array_equal(history.train_loss, history_again.train_loss)
    # the minimiser is the mean of the training rows; the estimate is within a few standard errors
    assert float(jnp.abs(net.w - DATA.mean(0)).max()) < 4 / np.sqrt(450) + 0.02
    assert history.train_loss.shape == (600,)
    assert history.validation_step.tolist() == [0, 100, 200, 300, 400, 500, 600]


def test_row_weights_make_the_minimiser_the_weighted_mean_of_the_training_rows():
    weights = np.where(np.asarray(DATA[:, 0]) > 1.0, 10.0, 1.0)
    rate = optax.cosine_decay_schedule(0.05, 2000)
    # no validation rows: the unweighted validation loss would pick parameters nearer the plain mean
    net, history = fit_mean(
        squared_error,
        1,
        max_steps=2000,
        optimizer=optax.adam(rate),
        validation_fraction=0.0,
        row_weights=weights,
    )
    weighted_mean = (weights[:, None] * np.asarray(DATA)).sum(0) / weights.sum()
    # the weights move the minimiser by about 0.6 in the first coordinate; a decayed rate ends
    # within a few hundredths of it
    assert abs(weighted_mean[0] - float(DATA[:, 0].mean())) > 0.4
    np.testing.assert_allclose(net.w, weighted_mean, atol=0.05)
    assert dict(history.settings)["row_weights"] == "custom"


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(499), r"shape \(500,\)"),
        (np.where(np.arange(500) == 7, -1.0, 1.0), r"rows \[7\]"),
        (np.where(np.arange(500) == 3, np.nan, 1.0), r"rows \[3\]"),
        (np.zeros(500), "every training row"),
    ],
)
def test_bad_row_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        fit_mean(squared_error, 1, max_steps=10, row_weights=weights)


def test_the_best_validated_parameters_are_returned():
    # minibatch noise makes later parameters worse at times
    net, history = fit_mean(
        squared_error, 1, max_steps=400, eval_every=50, optimizer=optax.sgd(0.9), patience=None
    )
    best = int(np.argmin(history.validation_loss))
    assert history.best_step == int(history.validation_step[best])
    _, validation_rows = train.split_validation(jax.random.split(jax.random.key(1), 3)[0], 500, 0.1)
    value = float(squared_error(net, DATA[validation_rows], None))
    np.testing.assert_allclose(value, float(history.validation_loss[best]), rtol=1e-5)


def test_patience_stops_training_and_warns_that_nothing_improved():
    flat = lambda net, batch, key: jnp.mean(batch**2) + 0.0 * jnp.sum(net.w)
    with pytest.warns(RuntimeWarning, match=r"never improved .* in 30 steps.*500 rows, 50 for"):
        _, history = fit_mean(flat, 2, max_steps=10_000, eval_every=10, patience=3)
    assert history.stop_reason == "early stopping"
    assert history.validation_step[-1] == 30
    assert history.best_step == 0


def test_a_fit_that_improves_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, history = fit_mean(squared_error, 1, max_steps=200)
    assert history.best_step > 0


@pytest.mark.parametrize("rate", [-1.0, 0.0, float("nan"), float("inf"), True])
def test_bad_learning_rates_are_refused(rate):
    with pytest.raises(ValueError, match="`learning_rate` must be a positive finite number"):
        train.make_optimizer(rate)


def test_weight_decay_shrinks_the_hidden_weights_only():
    """AdamW's decoupled decay: with zero gradients a step moves each weight w of the layers after
    the first by −η λ w, and leaves the first layer (which reads u, z, t) and every bias alone."""
    net = mp.ScoreMLP(4, key=jax.random.key(0))
    params = eqx.filter(net, eqx.is_inexact_array)
    rate, decay = 1e-2, 0.1
    optimizer = train.make_optimizer(rate, weight_decay=decay)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    layers, moved = net.mlp.layers, updates.mlp.layers
    for layer, update in zip(layers[1:], moved[1:], strict=True):
        np.testing.assert_allclose(update.weight, -rate * decay * layer.weight, rtol=1e-6)
        assert not np.any(update.bias)
    assert not np.any(moved[0].weight) and not np.any(moved[0].bias)
    assert train.make_optimizer(rate, weight_decay=0.0) is train.make_optimizer(rate)


@pytest.mark.parametrize(
    ("decay", "error"), [(-0.1, ValueError), (float("inf"), ValueError), (True, TypeError)]
)
def test_bad_weight_decay_is_refused(decay, error):
    with pytest.raises(error, match="`weight_decay` must be"):
        train.make_optimizer(1e-3, weight_decay=decay)


@pytest.mark.parametrize(
    ("row_size", "validation_size", "repeats"),
    [(4, None, 410), (32, None, 410), (1024, None, 13), (2**16, None, 7), (4, 100, 10)],
)
def test_validation_scores_about_2_to_the_17_values(row_size, validation_size, repeats):
    """Ten held-out rows are repeated (with fresh noise) until they make 4096 rows for vectors,
    2^17 values for larger rows, and never fewer than 64 rows."""
    assert train.validation_repeats(10, row_size, validation_size) == repeats


def test_non_finite_loss_keeps_the_last_finite_parameters():
    def blows_up(net, batch, key):
        loss = jnp.mean((net.w - batch) ** 2)
        return jnp.where(net.w[0] > 0.5, jnp.nan, loss)

    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        net, history = fit_mean(blows_up, 3)
    assert history.stop_reason == "non-finite loss"
    assert bool(jnp.all(jnp.isfinite(net.w))) and float(net.w[0]) <= 0.5
    assert np.isfinite(history.train_loss).all() and history.train_loss.size < 1000


@jax.custom_vjp
def nan_gradient_above_half(w):
    return w


nan_gradient_above_half.defvjp(
    lambda w: (w, w), lambda w, g: (jnp.where(w[0] > 0.5, jnp.nan, 1.0) * g,)
)


def test_non_finite_gradient_with_finite_loss_stops_and_keeps_the_steps_taken():
    def poisoned(net, batch, key):
        return jnp.mean((nan_gradient_above_half(net.w) - batch) ** 2)

    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        net, history = fit_mean(poisoned, 3)
    assert history.stop_reason == "non-finite loss"
    assert bool(jnp.all(jnp.isfinite(net.w)))
    # w[0] passes 0.5 within the first chunk of 100 steps: the steps before the first bad gradient
    # are recorded, the rest of that chunk is not, and the best parameters are the initial ones
    assert 0 < history.train_loss.size < 100 and history.best_step == 0


def test_keyboard_interrupt_returns_the_best_model(monkeypatch):
    calls = []
    original = train._train_chunk

    def interrupt_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(train, "_train_chunk", interrupt_second_chunk)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        _, history = fit_mean(squared_error, 4)
    assert history.stop_reason == "interrupted"
    assert history.best_step == 100 and history.train_loss.size == 100


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_bad_validation_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        train.split_validation(jax.random.key(0), 10, fraction)


def test_a_single_row_cannot_be_split():
    with pytest.raises(ValueError, match="nothing to train"):
        train.split_validation(jax.random.key(0), 1, 0.5)


def test_ema_returns_the_moving_average_of_the_iterates():
    """Full-batch gradient descent on ½|w − c|² has iterates w_k = c + (1 − η)^k (w_0 − c) (the
    minibatch rows are resampled, so the loss here ignores them); the returned network is the
    average a_k = δ a_{k−1} + (1 − δ) w_k with a_0 = w_0, to float32 rounding."""
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda net, batch, key: 0.5 * jnp.sum((net.w - target) ** 2) + 0.0 * jnp.sum(batch)
    rate, decay, steps = 0.05, 0.9, 60
    net, history = fit_mean(
        loss, 0, max_steps=steps, optimizer=optax.sgd(rate), ema_decay=decay, validation_fraction=0
    )
    average = np.zeros(3)
    for k in range(1, steps + 1):
        iterate = np.asarray(target) * (1 - (1 - rate) ** k)
        average = decay * average + (1 - decay) * iterate
    np.testing.assert_allclose(net.w, average, rtol=1e-5)
    assert dict(history.settings)["ema_decay"] == decay
    with pytest.raises(ValueError, match="ema_decay"):
        fit_mean(loss, 0, ema_decay=1.0)


def test_a_custom_validation_criterion_chooses_the_parameters():
    """With `validation`, early stopping and the returned parameters follow that criterion: here
    the distance to a point that training moves away from after the start, so the initial
    network is kept and the recorded values are the criterion's."""
    criterion = lambda net, rows, key: jnp.sum((net.w - jnp.array([-5.0, 5.0, -5.0])) ** 2)
    with pytest.warns(RuntimeWarning, match="never improved"):
        net, history = fit_mean(squared_error, 3, max_steps=300, validation=criterion, patience=2)
    np.testing.assert_array_equal(net.w, jnp.zeros(3))
    assert history.stop_reason == "early stopping" and history.best_step == 0
    np.testing.assert_allclose(history.validation_loss[0], 75.0)


class SquaredDistance(eqx.Module):
    """A criterion with per-row terms: the squared distance of each row to the network's point."""

    def per_point(self, net, rows, key):
        return jnp.sum((rows - net.w) ** 2, axis=1)

    def __call__(self, net, rows, key):
        return jnp.mean(self.per_point(net, rows, key))


def test_validation_terms_are_the_rows_whose_mean_is_the_best_validation_value():
    """The terms of the rows fit_network held out: their mean is the recorded best value, and
    they are those rows' own distances (the 50 rows that the key's split leaves out)."""
    criterion = SquaredDistance()
    net, history = fit_mean(squared_error, 4, max_steps=300, validation=criterion)
    terms = train.validation_terms(net, criterion, DATA, key=jax.random.key(4))
    assert terms.shape == (50,)
    np.testing.assert_allclose(terms.mean(), np.min(history.validation_loss), rtol=1e-6)
    _, rows = train.split_validation(jax.random.split(jax.random.key(4), 3)[0], 500, 0.1)
    np.testing.assert_allclose(terms, np.sum((DATA[rows] - net.w) ** 2, axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="no validation rows"):
        train.validation_terms(net, criterion, DATA, key=jax.random.key(4), validation_fraction=0)


def test_the_default_learning_rate_warms_up_then_decays_by_a_cosine():
    schedule = train.cosine_learning_rate(20_000)
    values = np.array([float(schedule(step)) for step in (0, 250, 500, 10_250, 20_000)])
    np.testing.assert_allclose(values, [0.0, 1.5e-3, 3e-3, 0.5 * (3e-3 + 3e-5), 3e-5], rtol=1e-3)


def test_a_second_fit_with_the_same_settings_compiles_nothing():
    """The optimizer is a static argument of the compiled training chunk, which jit compares by
    identity; a fresh default optimizer per fit recompiled the chunk (about 10 s on 2 cores for
    an MSGM) on every fit of the same shapes."""
    fit_mean(squared_error, 1, optimizer=None, max_steps=200)
    compiles = []

    def count(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        fit_mean(squared_error, 2, optimizer=None, max_steps=200)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []
    assert train.make_optimizer(train.cosine_learning_rate(200)) is train.make_optimizer(
        train.cosine_learning_rate(200)
    )
    assert train.make_optimizer(1e-3) is not train.make_optimizer(2e-3)
    assert isinstance(train.make_optimizer(jnp.asarray(1e-3)), optax.GradientTransformation)
