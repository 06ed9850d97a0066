"""The SGM baseline: its probability-flow density and samplers against a Gaussian closed form, its
training, and its NumPyro distribution interface."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import Predictive
from numpyro.infer.util import log_density

import msgm_pp as mp
from msgm_pp import metrics
from msgm_pp.datasets import student_t

C = 3.0  # the normalised data law is N(0, C² I)
LOC, SCALE = jnp.array([1.0, -2.0]), jnp.array([2.0, 0.5])


class GaussianNoisePrediction(eqx.Module):
    """The exact ε(y, t) = σ_t y / v_t for normalised data N(0, C² I): the VP marginal at t is
    N(0, v_t I) with v_t = α_t² C² + σ_t²."""

    schedule: mp.LinearSchedule

    def __call__(self, y, t):
        tau = self.schedule.integral(t * self.schedule.T)
        return jnp.sqrt(-jnp.expm1(-tau)) * y / marginal_variance(tau)


def marginal_variance(tau):
    return jnp.exp(-tau) * C**2 - jnp.expm1(-tau)


@pytest.fixture(scope="module")
def gaussian_sgm():
    schedule = mp.vp_schedule()
    score = mp.VPScore(GaussianNoisePrediction(schedule), schedule, LOC, SCALE, 1e-3)
    return mp.SGM(score)


def test_log_prob_matches_the_gaussian_flow(gaussian_sgm):
    """For Gaussian data the probability-flow ODE scales y by √(v_T / v_ε), so the computed
    log-density is log N(y √(v_T/v_ε); 0, I) + (d/2) log(v_T/v_ε) − Σ log scale exactly. The Heun
    solve is second order (the error falls 16× per 4× steps; measured: 0.03, 1.4e-3 and 8e-5 nats
    at 16, 64 and 256 steps), and at 256 steps it is within 2e-4 nats."""
    score = gaussian_sgm.score
    v_eps = marginal_variance(score.tau(score.t_eps))
    v_T = marginal_variance(score.tau(1.0))
    y = C * jax.random.normal(jax.random.key(0), (200, 2))
    x = score.denormalise(y)
    ratio = v_T / v_eps
    expected = (
        jax.scipy.stats.norm.logpdf(y * jnp.sqrt(ratio)).sum(-1)
        + jnp.log(ratio)
        - jnp.log(SCALE).sum()
    )
    errors = [
        float(jnp.max(jnp.abs(with_steps(gaussian_sgm, steps).log_prob(x) - expected)))
        for steps in (16, 64, 256)
    ]
    assert errors[0] / errors[1] > 10 and errors[1] / errors[2] > 10
    assert errors[2] < 2e-4


@pytest.mark.parametrize(
    "sampler", [mp.ODESampler(256), mp.SDESampler(1024), mp.SDESampler(1024, stochasticity=0.5)]
)
def test_samples_have_the_gaussian_variance(gaussian_sgm, sampler):
    """Normalised samples of the exact model have variance v_ε ≈ C² (the N(0, I) start differs from
    N(0, v_T) by 3e-4 in variance), whatever the SDE's stochasticity: within 4 standard errors
    (√(2/n) relative) per coordinate. The Euler steps of the SDE are first order in law: their
    variance is about 3% low at 256 steps, within 1.5% at 1024 (measured with 20000 draws at
    stochasticity 1, ½ and 0.2), so the SDE runs 1024 steps; Heun's 256 are within 0.1%."""
    n = 20000
    x = gaussian_sgm.with_options(sampler=sampler).sample(jax.random.key(1), (n,))
    y = np.asarray(gaussian_sgm.score.normalise(x), np.float64)
    score = gaussian_sgm.score
    v_eps = float(marginal_variance(score.tau(score.t_eps)))
    assert np.all(np.abs(y.var(0) / v_eps - 1) < 4 * np.sqrt(2 / n))
    assert np.all(np.abs(y.mean(0)) < 4 * np.sqrt(v_eps / n))


def with_steps(model, steps: int):
    return model.with_options(density=mp.ODEDensity(steps, model.density.trace))


@pytest.fixture(scope="module")
def student_data():
    law = student_t(4.0, [[1.0, 0.6], [0.6, 1.0]])
    return law, law.sample(jax.random.key(0), (4000,)), law.sample(jax.random.key(1), (4000,))


def test_training_improves_on_the_initial_network(student_data):
    """1000 DSM steps lower the validation loss, and bring the samples closer to held-out data than
    those of an untrained network, by more than a factor 2 in √MMD."""
    _, train, test = student_data
    model = mp.SGM.fit(train, key=jax.random.key(2), max_steps=1000, progress=False)
    history = model.history
    assert float(history.validation_loss.min()) < 0.5 * float(history.validation_loss[0])
    untrained = mp.SGM(
        eqx.tree_at(lambda s: s.net, model.score, mp.TimeMLP(2, key=jax.random.key(9)))
    )
    before = metrics.mmd(untrained.sample(jax.random.key(3), (2000,)), test[:2000])
    after = metrics.mmd(model.sample(jax.random.key(3), (2000,)), test[:2000])
    assert after < 0.5 * before
    assert dict(history.settings)["loss"] == "dsm"


def test_sliced_score_matching_trains(student_data):
    """The paper's SSM loss (its minimum is negative) falls below the initial network's."""
    _, train, _ = student_data
    model = mp.SGM.fit(train, key=jax.random.key(2), loss="ssm", max_steps=500, progress=False)
    assert (
        float(model.history.validation_loss.min()) < float(model.history.validation_loss[0]) - 0.5
    )


def test_is_a_numpyro_distribution(gaussian_sgm):
    model = gaussian_sgm.with_options(sampler=mp.SDESampler(8), density=mp.ODEDensity(8))
    assert model.sample(jax.random.key(0), (3, 2)).shape == (3, 2, 2)
    assert model.log_prob(jnp.ones((3, 2, 2))).shape == (3, 2)
    assert mp.SGM.infer_shapes(model.score) == ((), (2,))
    assert jax.jit(lambda m, x: m.log_prob(x))(model, jnp.ones((4, 2))).shape == (4,)
    irregular = mp.SGM(model.score, validate_args=False).log_prob(
        jnp.array([[jnp.nan, 0.0], [jnp.inf, 0.0]])
    )
    assert np.isnan(irregular[0]) and irregular[1] == -np.inf

    def prior_model(prior):
        numpyro.sample("x", prior)

    draws = Predictive(prior_model, num_samples=5)(jax.random.key(1), model)["x"]
    assert draws.shape == (5, 2)
    value, _ = log_density(prior_model, (model,), {}, {"x": draws[0]})
    np.testing.assert_allclose(value, model.log_prob(draws[0]), rtol=1e-6)


def test_fit_rejects_bad_input():
    data = np.random.default_rng(0).standard_normal((100, 3))
    with pytest.raises(ValueError, match=r"columns \[1\] have zero spread"):
        mp.SGM.fit(np.column_stack([data[:, 0], np.ones(100)]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown SGM loss"):
        mp.SGM.fit(data, key=jax.random.key(0), loss="ism")
    with pytest.raises(ValueError, match="unknown normalization"):
        mp.SGM.fit(data, key=jax.random.key(0), normalization="minmax")
    with pytest.raises(ValueError, match="NaN or inf"):
        mp.SGM.fit(np.vstack([data, [np.nan] * 3]), key=jax.random.key(0))
    with pytest.raises(TypeError, match="VPScore"):
        mp.SGM("not a score")
