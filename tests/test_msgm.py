"""MSGM.fit and sampling on the paper's task and on isotropic data."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import msgm_pp as mp
from msgm_pp import score_based
from msgm_pp.datasets import CorrelatedCauchy
from msgm_pp.losses import perturb_directions
from msgm_pp.msgm import DEFAULT_NETWORKS, DEFAULT_NORMALIZATIONS
from msgm_pp.score_based import validation_score

D = 4
# One fit (weight_decay=0), the 0.9 default: the three-fit default search has tests of its own.
BUDGET = dict(max_steps=1500, eval_every=250, weight_decay=0.0, progress=False)


def student_t(key, n, d, nu):
    z_key, w_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, d))
    return z / jnp.sqrt(jax.random.gamma(w_key, nu / 2, (n, 1)) / (nu / 2))


def mmd(x, y):
    """√MMD with the paper's kernel exp(−|x − y|²/d²) (biased V-statistic)."""
    d = x.shape[1]

    def mean_kernel(a, b):
        return jax.lax.map(
            lambda row: jnp.exp(-jnp.sum((row - b) ** 2, -1) / d**2).mean(), a
        ).mean()

    return float(
        jnp.sqrt(jnp.maximum(mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y), 0))
    )


def assert_same_network(a, b):
    for leaf_a, leaf_b in zip(
        jax.tree.leaves(eqx.filter(a.score, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b.score, eqx.is_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(leaf_a, leaf_b)


@pytest.fixture(scope="module")
def cauchy():
    task = CorrelatedCauchy.paper_task(d=D, seed=0)
    data = task.sample(jax.random.key(0), (4096,))
    return task, data, mp.MSGM.fit(data, key=jax.random.key(1), **BUDGET)


@pytest.fixture(scope="module")
def isotropic_t():
    data = student_t(jax.random.key(2), 4096, D, 3.0)
    return data, mp.MSGM.fit(data, key=jax.random.key(1), **BUDGET)


def mean_squared_tangent_field(model, data, key):
    """E|g(u_s, ℓ, s)|² over data pushed forward to uniform random times."""
    score = model.score
    r = jnp.linalg.norm(data, axis=1)
    time_key, noise_key = jax.random.split(key)
    s = jax.random.uniform(time_key, r.shape, minval=score.t_eps, maxval=score.schedule.T)
    u = perturb_directions(score.noise, data / r[:, None], score.tau(s), noise_key)
    g = jax.vmap(score)(u, jnp.log(r), s)
    return float(jnp.mean(jnp.sum(g**2, axis=1)))


def test_tangent_field_is_near_zero_on_isotropic_data(cauchy, isotropic_t):
    """Isotropic data have a uniform direction at every time, so the tangent score is 0; on the
    anisotropic Cauchy data it is O(1) (E|g|² ≈ 3.3 after this budget)."""
    _, cauchy_data, cauchy_model = cauchy
    t_data, t_model = isotropic_t
    anisotropic = mean_squared_tangent_field(cauchy_model, cauchy_data, jax.random.key(5))
    isotropic = mean_squared_tangent_field(t_model, t_data, jax.random.key(5))
    assert anisotropic > 1.0
    assert isotropic < 0.01 * anisotropic


def test_cauchy_samples_learn_the_angular_structure(cauchy):
    """√MMD to fresh test data: the model against uniform directions with the data's norms. At
    n = 8000 the floor (two fresh data sets) is about 0.005, uniform directions give about 0.013."""
    task, _, model = cauchy
    n = 8000
    test = task.sample(jax.random.key(99), (n,))
    samples = model.sample(jax.random.key(10), (n,))
    z = jax.random.normal(jax.random.key(11), (n, D))
    norms = jnp.linalg.norm(task.sample(jax.random.key(12), (n,)), axis=1, keepdims=True)
    uniform_directions = norms * z / jnp.linalg.norm(z, axis=1, keepdims=True)
    assert mmd(samples, test) < 0.75 * mmd(uniform_directions, test)


@pytest.mark.parametrize("sampler", [mp.SDESampler(32), mp.ODESampler(32)])
def test_sample_norms_follow_the_norm_model(cauchy, sampler):
    """Kolmogorov–Smirnov distance of log |x| to the norm model's CDF, at the 1% level."""
    _, _, model = cauchy
    n = 4000
    x = model.with_options(sampler=sampler).sample(jax.random.key(3), (n,))
    log_r = np.sort(np.log(np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)))
    cdf = np.asarray(model.norm_model.cdf(jnp.asarray(log_r)), dtype=np.float64)
    upper = np.arange(1, n + 1) / n
    distance = max(np.max(upper - cdf), np.max(cdf - (upper - 1 / n)))
    assert distance < 1.63 / math.sqrt(n)


def test_training_reduces_the_validation_loss(cauchy):
    _, data, dsm_model = cauchy
    ssm_model = mp.MSGM.fit(data, key=jax.random.key(1), loss="ssm", **BUDGET)
    for model in (dsm_model, ssm_model):
        losses = np.asarray(model.history.validation_loss)
        assert losses.min() < losses[0] - 0.1
        assert model.history.best_step == model.history.validation_step[int(np.argmin(losses))]


def test_same_key_gives_identical_parameters_and_samples(cauchy):
    _, data, _ = cauchy
    settings = dict(max_steps=40, eval_every=20, progress=False, noise="dense", loss="ssm")
    first = mp.MSGM.fit(data[:500], key=jax.random.key(7), **settings)
    second = mp.MSGM.fit(data[:500], key=jax.random.key(7), **settings)
    assert_same_network(first, second)
    np.testing.assert_array_equal(
        first.sample(jax.random.key(8), (50,)), second.sample(jax.random.key(8), (50,))
    )


def test_distribution_keeps_its_network_through_jit(cauchy):
    _, _, model = cauchy
    passed = jax.jit(lambda m: m)(model)
    assert isinstance(passed.score.net, mp.ScoreMLP)
    sample = jax.jit(lambda m, k: m.sample(k, (3, 2)))(model, jax.random.key(0))
    assert sample.shape == (3, 2, D)
    np.testing.assert_allclose(sample, model.sample(jax.random.key(0), (3, 2)), atol=1e-5)


def test_large_draws_are_made_in_chunks(cauchy, monkeypatch):
    _, _, model = cauchy
    monkeypatch.setattr(score_based, "_CHUNK_BUDGET", 40 * D)
    x = model.with_options(sampler=mp.SDESampler(8)).sample(jax.random.key(0), (7, 15))
    assert x.shape == (7, 15, D)
    assert np.isfinite(np.asarray(x)).all()
    assert len({tuple(np.round(row, 6)) for row in np.asarray(x).reshape(-1, D)}) == 105


def test_lattice_fields_train_and_sample_with_the_convolutional_net():
    shape = (6, 6)
    fields = jax.random.normal(jax.random.key(0), (256, *shape))
    fields = fields + jnp.roll(fields, 1, axis=2)  # neighbour correlations
    net = mp.LatticeScoreNet(shape, key=jax.random.key(3), channels=8, num_blocks=1)
    model = mp.MSGM.fit(
        fields,
        key=jax.random.key(1),
        noise=mp.LatticeNoise(shape),
        net=net,
        max_steps=20,
        eval_every=20,
        batch_size=32,
        forward_steps=4,
        progress=False,
    )
    assert isinstance(model.score.net, mp.LatticeScoreNet) and model.history.train_loss.size == 20
    assert model.event_shape == shape
    x = model.with_options(sampler=mp.SDESampler(8)).sample(jax.random.key(2), (3,))
    assert x.shape == (3, *shape) and np.isfinite(np.asarray(x)).all()
    log_p = model.with_options(density=mp.ODEDensity(4)).log_prob(x)
    assert log_p.shape == (3,) and np.isfinite(np.asarray(log_p)).all()
    flattened = mp.MSGM.build(fields.reshape(256, -1), key=jax.random.key(1), noise=model.noise)
    assert flattened.event_shape == shape


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(noise="lattice"), "LatticeNoise"),
        (dict(noise="gaussian"), "'isotropic', 'dense'"),
        (dict(noise=mp.IsotropicNoise(3)), "dimension 3"),
        (dict(noise="dense", loss="dsm"), "loss='ssm'"),
        (dict(sampler="euler"), "sampler"),
    ],
)
def test_bad_options_are_refused(options, match):
    data = jax.random.normal(jax.random.key(0), (400, D))
    with pytest.raises(ValueError, match=match):
        mp.MSGM.fit(data, key=jax.random.key(0), max_steps=1, progress=False, **options)


def test_bad_data_rows_are_named():
    data = np.ones((20, D))
    data[[3, 7]] = 0.0
    with pytest.raises(ValueError, match=r"zero norm at indices \[3, 7\]"):
        mp.MSGM.fit(data, key=jax.random.key(0), max_steps=1, progress=False)


def test_log_prob_of_isotropic_t_matches_the_analytic_density(isotropic_t):
    """Held-out Student-t (ν = 3) points: mean absolute error against scipy's multivariate t."""
    x = student_t(jax.random.key(12), 2000, D, 3.0)
    _, model = isotropic_t
    exact = stats.multivariate_t(np.zeros(D), np.eye(D), df=3.0).logpdf(np.asarray(x))
    assert np.mean(np.abs(np.asarray(model.log_prob(x)) - exact)) < 0.15


def test_log_prob_survives_jit_of_a_function_returning_the_model(cauchy):
    _, data, model = cauchy
    rebuilt = jax.jit(lambda m: m)(model)
    np.testing.assert_allclose(rebuilt.log_prob(data[:8]), model.log_prob(data[:8]), atol=2e-5)
    np.testing.assert_allclose(
        jax.jit(lambda v: model.log_prob(v))(data[:8]), model.log_prob(data[:8]), atol=2e-5
    )


def test_build_then_train_is_fit(cauchy):
    """fit with one candidate is build followed by train with the same key, and the parts are
    what build chose."""
    _, data, _ = cauchy
    settings = dict(max_steps=20, eval_every=10, progress=False)
    key = jax.random.key(3)
    fitted = mp.MSGM.fit(data[:400], key=key, tail_emphasis=0.5, weight_decay=0.0, **settings)
    built = mp.MSGM.build(data[:400], key=key)
    assert isinstance(built.noise, mp.IsotropicNoise) and built.history is None
    rows = built.tail_weights(data[:400], 0.5)
    trained = mp.train(
        built, data[:400], key=jax.random.split(key, 3)[2], row_weights=rows, **settings
    )
    assert_same_network(fitted, trained)


def test_tail_weights_give_the_top_norms_their_share_and_depend_on_the_norm_only(cauchy):
    """Weights ∝ (1 − rank/n)^(−γ): the top fraction q of the norms gets Σ_{j<=qn} j^(−γ) /
    Σ_{j<=n} j^(−γ) of the draws, about q^(1−γ); rows with equal norms get equal weights."""
    _, _, model = cauchy
    n = 10_000
    directions = jax.random.normal(jax.random.key(0), (n, 4))
    norms = jnp.exp(jnp.linspace(-3.0, 3.0, n))
    rows = directions / jnp.linalg.norm(directions, axis=1, keepdims=True) * norms[:, None]
    for emphasis in (0.25, 0.5, 0.75):
        weights = model.tail_weights(rows, emphasis)
        assert np.all(np.diff(weights) > 0)
        top = np.arange(1, n // 100 + 1) ** -emphasis
        everything = np.arange(1, n + 1) ** -emphasis
        np.testing.assert_allclose(
            weights[-100:].sum() / weights.sum(), top.sum() / everything.sum(), rtol=1e-6
        )
        if emphasis <= 0.5:  # the share tends to q^(1−γ) as n grows, slowly for γ near 1
            assert abs(top.sum() / everything.sum() - 0.01 ** (1 - emphasis)) < 0.01
    mirrored = model.tail_weights(jnp.concatenate([rows[:50], -rows[:50]]), 0.5)
    np.testing.assert_array_equal(mirrored[:50], mirrored[50:])
    assert model.tail_weights(rows, 0.0) is None
    np.testing.assert_array_equal(
        model.tail_weights(rows, np.float32(0.5)), model.tail_weights(rows, 0.5)
    )


@pytest.mark.parametrize(
    "emphasis, error",
    [
        (1.0, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("0.5", TypeError),
    ],
)
def test_bad_tail_emphasis_is_refused(cauchy, emphasis, error):
    _, data, model = cauchy
    with pytest.raises(error, match="tail_emphasis"):
        model.tail_weights(data[:10], emphasis)


def test_fit_records_its_tail_emphasis_and_t_eps(cauchy):
    _, data, model = cauchy
    settings = dict(model.history.settings)
    assert settings["tail_emphasis"] == 0.0 and settings["row_weights"] == "none"
    assert settings["t_eps"] == model.score.t_eps == 1e-3
    emphasised = mp.MSGM.fit(
        data[:400],
        key=jax.random.key(0),
        tail_emphasis=0.5,
        t_eps=1e-5,
        weight_decay=0.0,
        max_steps=10,
        eval_every=10,
        progress=False,
    )
    settings = dict(emphasised.history.settings)
    assert settings["tail_emphasis"] == 0.5 and settings["row_weights"] == "custom"
    assert settings["t_eps"] == emphasised.score.t_eps == 1e-5


def test_fit_records_its_weight_decay_and_optimizer(cauchy):
    _, data, _ = cauchy
    plain = mp.MSGM.fit(
        data[:400], key=jax.random.key(0), weight_decay=0.0, max_steps=10, progress=False
    )
    assert dict(plain.history.settings)["optimizer"] == "adam"
    assert dict(plain.history.settings)["weight_decay"] == 0.0
    decayed = mp.MSGM.fit(
        data[:400], key=jax.random.key(0), weight_decay=0.1, max_steps=10, progress=False
    )
    assert dict(decayed.history.settings)["optimizer"] == "adamw"
    assert dict(decayed.history.settings)["weight_decay"] == 0.1


def test_several_weight_decays_keep_the_fit_with_the_lowest_validation_score(cauchy):
    """One fit per λ with the same key (so the same validation rows); the kept one is the fit
    with that λ alone, bit for bit, and its score is the lowest recorded."""
    _, data, _ = cauchy
    settings = dict(key=jax.random.key(2), max_steps=60, eval_every=20, progress=False)
    chosen = mp.MSGM.fit(data[:400], weight_decay=(0.0, 0.5), **settings)
    recorded = dict(chosen.history.settings)
    scores = json.loads(recorded["validation_by_candidate"])
    assert set(scores) == {"weight_decay=0", "weight_decay=0.5"}
    assert recorded["candidate"] == min(scores, key=scores.get)
    assert recorded["candidate"] == f"weight_decay={recorded['weight_decay']:g}"
    alone = mp.MSGM.fit(data[:400], weight_decay=recorded["weight_decay"], **settings)
    assert float(np.min(alone.history.validation_loss)) == scores[recorded["candidate"]]
    assert_same_network(chosen, alone)
    with pytest.raises(ValueError, match="empty sequence"):
        mp.MSGM.fit(data[:400], weight_decay=(), **settings)
    with pytest.raises(ValueError, match="needs validation rows"):
        mp.MSGM.fit(data[:400], weight_decay=[0.0, 0.1], validation_fraction=0.0, **settings)
    with pytest.raises(TypeError, match="`weight_decay` must be a number"):
        mp.MSGM.fit(data[:400], weight_decay="0.1", **settings)


@pytest.mark.parametrize("gain, kept", [(0.05, "simple"), (0.3, "complex")])
def test_the_one_standard_error_rule_keeps_the_simplest_candidate_within_the_noise(gain, kept):
    """Row differences of ±1 about a mean gain, over 100 rows, have the standard error
    sd/√n = √(100/99)/10 ≈ 0.1005: a gain of 0.05 is inside it and keeps the simple candidate
    (listed first), a gain of 0.3 is not; a worse candidate is never kept, and the lowest score
    is kept whatever the gain by default or without per-row terms."""
    base = np.linspace(-3.0, 3.0, 100)
    signs = np.tile([1.0, -1.0], 50)
    terms = {"simple": base + gain + signs, "complex": base, "worse": base + 1.0}
    scores = {label: float(np.mean(value)) for label, value in terms.items()}
    standard_errors = score_based.paired_standard_errors(terms, "complex")
    np.testing.assert_allclose(standard_errors["simple"], np.std(signs, ddof=1) / 10.0)
    assert standard_errors["complex"] == 0.0 and standard_errors["worse"] == 0.0
    assert mp.one_standard_error_rule(scores, standard_errors) == kept
    assert mp.lowest_validation_score(scores, standard_errors) == "complex"
    assert score_based.paired_standard_errors(dict(terms, worse=None), "complex") == {}
    assert mp.one_standard_error_rule(scores, {}) == "complex"


@pytest.fixture(scope="module")
def default_fit(cauchy):
    """The default fit of 400 rows in 60 steps (four candidates), and its settings."""
    _, data, _ = cauchy
    settings = dict(key=jax.random.key(5), max_steps=60, eval_every=20, progress=False)
    return mp.MSGM.fit(data[:400], **settings), settings


def test_validation_nats_are_the_per_row_terms_of_the_validation_score(cauchy, default_fit):
    """Their mean is the best validation score in nats of the data, here of the whitened
    candidate that the default fit kept (its terms are shifted by −log |det W|); the loss
    criterion has no per-row terms."""
    _, data, _ = cauchy
    model, settings = default_fit
    assert dict(model.history.settings)["normalization"] == "shape"
    key = jax.random.split(settings["key"], 3)[2]
    terms = score_based.validation_nats(model, data[:400], key=key)
    assert terms.shape == (40,)
    np.testing.assert_allclose(terms.mean(), validation_score(model), rtol=1e-5, atol=1e-5)
    assert score_based.validation_nats(model, data[:400], key=key, validation="loss") is None


def test_default_fit_keeps_the_best_of_its_four_candidates(cauchy, default_fit):
    """With no net, weight decay, optimizer or normalization given, fit trains the default
    network with λ = 0 and the rougher network with λ = 0.1, each in the data's coordinates and
    whitened by Tyler's shape matrix, from one initialisation and key, and keeps the lowest
    validation score in nats per point of the data: bit for bit the fit of that candidate alone,
    whose history records the normalization."""
    _, data, _ = cauchy
    chosen, settings = default_fit
    recorded = dict(chosen.history.settings)
    scores = json.loads(recorded["validation_by_candidate"])
    expected = {
        f"normalization={name}, direction_scale={scale:g}, weight_decay={decay:g}": (
            name,
            scale,
            decay,
        )
        for name in DEFAULT_NORMALIZATIONS
        for scale, decay in DEFAULT_NETWORKS
    }
    assert list(scores) == list(expected) and recorded["candidate"] == min(scores, key=scores.get)
    name, scale, decay = expected[recorded["candidate"]]
    assert chosen.score.net.direction_scale == scale and recorded["weight_decay"] == decay
    assert recorded["normalization"] == name
    net = mp.ScoreMLP(D, key=jax.random.split(settings["key"], 3)[1], direction_scale=scale)
    alone = mp.MSGM.fit(data[:400], net=net, weight_decay=decay, normalization=name, **settings)
    assert validation_score(alone) == scores[recorded["candidate"]]
    assert_same_network(chosen, alone)
    assert eqx.tree_equal(chosen.coordinates, alone.coordinates)


def test_a_selection_rule_chooses_among_the_same_fits(cauchy, default_fit):
    """`selection` changes only which of the same candidates is kept: the one-standard-error rule
    keeps the first candidate whose score exceeds the lowest by at most its recorded standard
    error, and the fits and their scores are those of the default selection, which records no
    standard errors (it needs none)."""
    _, data, _ = cauchy
    default, settings = default_fit
    rule = mp.MSGM.fit(data[:400], selection=mp.one_standard_error_rule, **settings)
    recorded, by_rule = dict(default.history.settings), dict(rule.history.settings)
    scores = json.loads(recorded["validation_by_candidate"])
    standard_errors = json.loads(by_rule["standard_error_by_candidate"])
    assert json.loads(by_rule["validation_by_candidate"]) == scores
    assert "standard_error_by_candidate" not in recorded and list(standard_errors) == list(scores)
    assert by_rule["selection"] == "one_standard_error_rule"
    assert recorded["selection"] == "lowest_validation_score"
    lowest = min(scores.values())
    assert by_rule["candidate"] == next(
        label for label in scores if scores[label] - lowest <= standard_errors[label]
    )
    assert all(
        error > 0 for label, error in standard_errors.items() if label != recorded["candidate"]
    )
    with pytest.raises(TypeError, match="`selection` must be a function"):
        mp.MSGM.fit(data[:400], selection="one_standard_error_rule", **settings)
    with pytest.raises(ValueError, match="returned 'best', which is none of the candidates"):
        mp.MSGM.fit(
            data[:400],
            weight_decay=(0.0, 0.1),
            selection=lambda scores, errors: "best",
            **dict(settings, max_steps=10, eval_every=5),
        )


def test_a_given_normalization_keeps_the_choice_of_network(cauchy):
    """normalization="shape" (or "none") fixes the coordinates; the two networks still compete."""
    _, data, _ = cauchy
    settings = dict(key=jax.random.key(0), max_steps=20, eval_every=10, progress=False)
    for name in ("none", "shape"):
        fitted = mp.MSGM.fit(data[:400], normalization=name, **settings)
        recorded = dict(fitted.history.settings)
        labels = [
            f"direction_scale={scale:g}, weight_decay={decay:g}"
            for scale, decay in DEFAULT_NETWORKS
        ]
        assert list(json.loads(recorded["validation_by_candidate"])) == labels
        assert recorded["normalization"] == name


def test_candidates_in_other_coordinates_are_scored_in_units_of_the_data(cauchy):
    """A model of y = W x has log p(x) = log p(y) + log |det W|: the score that compares candidates
    is the validation criterion (in units of y) minus log |det W|, so the same network on data
    scaled by 10 scores log 10⁴ nats higher, and equal in the data's units after the shift."""
    _, data, _ = cauchy
    settings = dict(key=jax.random.key(3), max_steps=20, eval_every=10, progress=False)
    plain = mp.MSGM.fit(data[:400], weight_decay=0.0, **settings)
    scaling = mp.CoordinateScaling(jnp.zeros(D), jnp.full(D, 0.1))
    scaled = mp.MSGM.fit(data[:400], weight_decay=0.0, normalization=scaling, **settings)
    raw = {m: float(np.nanmin(m.history.validation_loss)) for m in (plain, scaled)}
    np.testing.assert_allclose(raw[scaled] - raw[plain], D * np.log(10.0), atol=2e-3)
    np.testing.assert_allclose(validation_score(scaled), validation_score(plain), atol=2e-3)


@pytest.mark.parametrize(
    "options",
    [
        dict(weight_decay=0.0),
        dict(validation_fraction=0.0),
        dict(optimizer=optax.adam(1e-3)),
        dict(net=mp.ScoreMLP(D, key=jax.random.key(0), width=16)),
    ],
    ids=["weight_decay", "no_validation", "optimizer", "net"],
)
def test_a_fit_told_what_to_train_trains_once(cauchy, options):
    _, data, _ = cauchy
    fitted = mp.MSGM.fit(data[:400], key=jax.random.key(0), max_steps=20, progress=False, **options)
    recorded = dict(fitted.history.settings)
    assert "candidate" not in recorded and recorded["normalization"] == "none"
    assert fitted.score.net.direction_scale == 1.0 and fitted.coordinates is None


def test_weight_decay_with_a_custom_optimizer_or_an_mlp_free_net_is_refused(cauchy):
    _, data, _ = cauchy
    with pytest.raises(ValueError, match="put the decay in it"):
        mp.MSGM.fit(data[:400], key=jax.random.key(0), optimizer=optax.adam(1e-3), weight_decay=0.1)
    fields = jax.random.normal(jax.random.key(0), (256, 4, 4))
    with pytest.raises(ValueError, match="LatticeScoreNet has none"):
        mp.MSGM.fit(fields, key=jax.random.key(0), noise=mp.LatticeNoise((4, 4)), weight_decay=0.1)


def test_old_spellings_warn_and_still_work(cauchy):
    _, data, model = cauchy
    with pytest.warns(DeprecationWarning, match="max_steps"):
        old = mp.MSGM.fit(  # one candidate (weight_decay given): the spelling is under test
            data[:400],
            key=jax.random.key(0),
            steps=20,
            eval_every=10,
            weight_decay=0.0,
            progress=False,
        )
    assert old.history.train_loss.size == 20
    with pytest.warns(DeprecationWarning, match="deprecated"):
        changed = model.with_options(sampler="ode", sample_steps=16, log_prob_steps=8)
    assert changed.sampler == mp.ODESampler(16) and changed.density.steps == 8
    with pytest.warns(DeprecationWarning, match="draw is deprecated"):
        x = model.draw(jax.random.key(0), (4,), sampler="ode", steps=16)
    np.testing.assert_array_equal(x, changed.sample(jax.random.key(0), (4,)))
    with pytest.warns(DeprecationWarning, match="log_density is deprecated"):
        log_p = model.log_density(data[:4], steps=8)
    np.testing.assert_array_equal(log_p, changed.log_prob(data[:4]))


def test_samples_are_not_reparametrized(cauchy):
    assert cauchy[2].has_rsample is False


def test_bad_sample_shapes_and_forward_steps_are_refused(cauchy):
    model = cauchy[2]
    with pytest.raises(ValueError, match="`sample_shape` must hold non-negative ints"):
        model.sample(jax.random.key(0), (-1,))
    for forward_steps in (0, -1):
        with pytest.raises(ValueError, match="`forward_steps` must be a positive int"):
            model.loss("ssm", forward_steps=forward_steps)


def test_old_density_spellings_mean_what_they_meant():
    """0.1 applied `num_probes` only where the trace was Hutchinson (by default above d = 64)."""
    small, large = (np.random.default_rng(0).standard_cauchy((300, d)) for d in (3, 70))
    with pytest.warns(DeprecationWarning):
        assert mp.MSGM.build(small, key=jax.random.key(0), num_probes=4).density.trace == (
            mp.ExactTrace()
        )
        model = mp.MSGM.build(large, key=jax.random.key(0), num_probes=4)
        assert model.density.trace == mp.HutchinsonTrace(4)
        assert model.with_options(log_prob_steps=9).density == mp.ODEDensity(
            9, mp.HutchinsonTrace(4)
        )


def test_likelihood_validation_is_the_held_out_log_density(cauchy):
    """The default criterion for d <= 32 is −mean log p of the validation rows (the model's
    coordinates, by a 32-step ODE, extrapolated): it equals log_prob of the same points with those
    settings."""
    _, data, model = cauchy
    assert dict(model.history.settings)["validation"] == "likelihood"
    criterion = model.validation_criterion()
    rows = data[:50]
    value = criterion(model.score.net, model.training_data(rows), jax.random.key(0))
    reference = model.with_options(density=mp.ODEDensity(32, extrapolate=True)).log_prob(rows)
    np.testing.assert_allclose(float(value), -float(jnp.mean(reference)), rtol=1e-4)
    assert model.validation_criterion("loss") is None
    with pytest.raises(ValueError, match="validation"):
        model.validation_criterion("elbo")


def test_the_old_weighted_keyword_maps_to_a_weighting(cauchy):
    _, data, _ = cauchy
    with pytest.warns(DeprecationWarning, match="weighting='none'"):
        model = mp.MSGM.fit(
            data[:400],
            key=jax.random.key(0),
            max_steps=10,
            eval_every=10,
            weight_decay=0.0,
            weighted=False,
            progress=False,
        )
    assert dict(model.history.settings)["weighting"] == "none"


@pytest.mark.slow
def test_held_out_likelihood_is_close_to_the_truth_on_the_paper_task():
    """The paper's task with the default recipe cut to 4000 steps (four fits, about 50 s): the
    held-out log-likelihood of 2000 points is within 0.3 nats of the analytic density. Measured
    with 0.17: 0.147, with a paired standard error of 0.020 (0.103 after 8000 steps, as with
    0.11); seeds of data and training move the gap by about 0.05 (benchmarks/density.py), so 0.3
    is 2.8 standard deviations of both above the measurement. 0.10's default fit measured 0.178
    after 8000 steps and 0.2's recipe 0.56."""
    task = CorrelatedCauchy.paper_task(d=4, seed=0)
    train_key, test_key, fit_key = jax.random.split(jax.random.key(11), 3)
    train = task.sample(train_key, (8192,))
    test = task.sample(test_key, (2000,))
    model = mp.MSGM.fit(train, key=fit_key, max_steps=4000, progress=False)
    log_p = model.with_options(density=mp.ODEDensity(128)).log_prob(test)
    gap = float(jnp.mean(task.log_prob(test) - log_p))
    assert gap < 0.3


@pytest.mark.slow
def test_independent_coordinates_are_learned():
    """Independent Cauchy coordinates of one scale, d = 4: the law has no quadratic angular part,
    and 0.9's default network stayed 1.22 nats from it on held-out points (the loss of uniform
    directions; 1.25 after 3000 steps in a development run). The default fit, 3000 steps, must be
    within 0.5 nats. Measured: 0.097 (0.10 and 0.11), with a paired standard error of 0.012 over
    the 2000 test points."""
    task = CorrelatedCauchy(np.eye(4))
    train_key, test_key, fit_key = jax.random.split(jax.random.key(12), 3)
    train = task.sample(train_key, (8192,))
    test = task.sample(test_key, (2000,))
    model = mp.MSGM.fit(train, key=fit_key, max_steps=3000, progress=False)
    differences = task.log_prob(test) - model.with_options(density=mp.ODEDensity(128)).log_prob(
        test
    )
    assert float(jnp.mean(differences)) < 0.5
