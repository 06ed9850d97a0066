"""Score-matching losses against closed forms, and the agreement of their estimators."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_noise, unit_rows

import msgm_pp as mp
from msgm_pp.losses import _ism_term, _ssm_term, make_loss
from msgm_pp.nets import ScoreMLP
from msgm_pp.score import TangentScore


class LinearField(eqx.Module):
    """g(u) = A u, whatever the norm and time."""

    matrix: jax.Array

    def __call__(self, u, z, t):
        return self.matrix @ u


def _score(noise, net):
    return TangentScore(net, noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3)


def test_ism_term_matches_the_divergence_on_the_sphere():
    """For isotropic noise and g = P A u: ½|P A u|² + tr A − d uᵀAu."""
    d = 5
    a = jax.random.normal(jax.random.key(0), (d, d))
    score = _score(mp.IsotropicNoise(d), LinearField(a))
    for u in unit_rows(jax.random.key(1), 6, d):
        g = a @ u - (u @ a @ u) * u
        expected = 0.5 * g @ g + jnp.trace(a) - d * (u @ a @ u)
        np.testing.assert_allclose(_ism_term(score, u, 0.0, 0.5), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["isotropic", "dense", "lattice"])
def test_sliced_term_is_unbiased_for_the_exact_trace(name):
    d = 6
    score = _score(make_noise(name, d), ScoreMLP(d, key=jax.random.key(0), width=32))
    u = unit_rows(jax.random.key(1), 1, d)[0]
    slices = jax.random.rademacher(jax.random.key(2), (20000, d), jnp.float32)
    sliced = jax.vmap(_ssm_term, in_axes=(None, None, None, None, 0))(score, u, 0.2, 0.4, slices)
    exact = _ism_term(score, u, 0.2, 0.4)
    standard_error = float(jnp.std(sliced)) / np.sqrt(slices.shape[0])
    assert abs(float(jnp.mean(sliced)) - float(exact)) < 4 * standard_error + 1e-6


@pytest.mark.parametrize("name", ["isotropic", "dense", "lattice"])
def test_sliced_and_implicit_losses_agree_in_expectation(name):
    d = 4
    noise = make_noise(name, d)
    score = _score(noise, ScoreMLP(d, key=jax.random.key(0), width=32))
    x = jax.random.normal(jax.random.key(1), (512, d))
    r = jnp.linalg.norm(x, axis=1)
    batch = (x / r[:, None], jnp.log(r))
    keys = jax.random.split(jax.random.key(2), 40)
    ssm = jax.vmap(lambda k: make_loss("ssm", noise)(score, batch, k))(keys)
    ism = jax.vmap(lambda k: make_loss("ism", noise)(score, batch, k))(keys)
    difference = ssm - ism  # common random numbers: same times and forward draws
    assert abs(float(difference.mean())) < 4 * float(difference.std()) / np.sqrt(40) + 1e-7


def test_dsm_needs_isotropic_noise_with_tabulated_dimension():
    with pytest.raises(ValueError, match="loss='ssm'"):
        make_loss("dsm", make_noise("dense", 4))
    with pytest.raises(ValueError, match="loss='ssm'"):
        make_loss("dsm", mp.IsotropicNoise(40))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("elbo", mp.IsotropicNoise(4))


def test_loss_weight_is_proportional_to_tau_early_and_tends_to_one():
    score = _score(mp.IsotropicNoise(4), ScoreMLP(4, key=jax.random.key(0)))
    s = jnp.array([1e-4, 1.0])
    weight = score.loss_weight(s)
    np.testing.assert_allclose(weight[0], 3.0 * score.tau(s[0]), rtol=1e-3)
    assert float(weight[1]) > 0.999


def test_likelihood_times_are_an_unbiased_importance_sample():
    """τ is drawn log-uniformly and weighted so that E[w h(τ)] is the mean of h over τ uniform on
    [τ_ε, τ_T]: checked for h = 1 and h = τ within 4 standard errors of 2^16 draws. For h = 1/τ,
    the growth of the score-matching terms at small τ, w h is constant: no variance at all."""
    from msgm_pp.losses import _draw_times

    score = _score(mp.IsotropicNoise(4), ScoreMLP(4, key=jax.random.key(0)))
    s, tau, weight = _draw_times(score, (2**16,), jnp.float32, jax.random.key(1), "likelihood")
    tau_start, tau_end = float(score.tau(score.t_eps)), float(score.tau(score.schedule.T))
    np.testing.assert_allclose(score.tau(s), tau, rtol=1e-4)
    for h, mean in ((1.0, 1.0), (tau, 0.5 * (tau_start + tau_end))):
        values = np.asarray(weight * h, np.float64)
        assert abs(values.mean() - mean) < 4 * values.std() / np.sqrt(values.size)
    constant = np.log(tau_end / tau_start) / (tau_end - tau_start)
    np.testing.assert_allclose(weight / tau, constant, rtol=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        make_loss("dsm", mp.IsotropicNoise(4), weighting="elbo")


def test_capped_weights_follow_the_likelihood_early_and_stop_growing_late():
    """The capped weighting draws the likelihood weighting's times with the weight τ replaced by
    λ(τ)/v: the same where vτ ≪ 1 (τ(t_ε) = 0.0075 at 32×32), never above the cap 1/v, and an
    unbiased importance sample of the mean over τ of λ(τ)/(vτ) (within 4 standard errors of 2^16
    draws, against quadrature)."""
    from msgm_pp.losses import _draw_times

    score = _score(mp.LatticeNoise((32, 32)), LinearField(jnp.zeros((1024, 1024))))
    key = jax.random.key(1)
    _, tau, capped = _draw_times(score, (2**16,), jnp.float32, key, "capped")
    _, _, likelihood = _draw_times(score, (2**16,), jnp.float32, key, "likelihood")
    rate = score.spreading_rate()
    assert rate == 2.0  # −2 tr(L)/d with L = −(deg/4) I and deg = 4
    tau_start, tau_end = float(score.tau(score.t_eps)), float(score.tau(score.schedule.T))
    constant = np.log(tau_end / tau_start) / (tau_end - tau_start)
    expected = likelihood * -jnp.expm1(-rate * tau) / (rate * tau)
    np.testing.assert_allclose(capped, expected, rtol=1e-4)
    early = np.asarray(tau) < 0.02 / rate  # there λ(τ)/(vτ) > 1 − 0.02/2
    assert early.sum() > 100
    np.testing.assert_allclose(capped[early], likelihood[early], rtol=0.01)
    assert float(capped.max()) <= constant / rate * (1 + 1e-5)
    assert float(likelihood.max()) > 100 * constant / rate  # the weights that the cap removes
    grid = np.geomspace(tau_start, tau_end, 200_001)
    ratio = -np.expm1(-rate * grid) / (rate * grid)
    mean = np.sum(0.5 * (ratio[1:] + ratio[:-1]) * np.diff(grid)) / (tau_end - tau_start)
    values = np.asarray(capped, np.float64)
    assert abs(values.mean() - mean) < 4 * values.std() / np.sqrt(values.size)


@pytest.mark.parametrize(("name", "weighting"), [("lattice", "capped"), ("dense", "likelihood")])
def test_the_default_weighting_is_capped_on_a_lattice_only(name, weighting):
    noise = make_noise(name, 16)
    data = np.asarray(jax.random.t(jax.random.key(0), 2.0, (256, *noise.event_shape)))
    model = mp.MSGM.build(data, key=jax.random.key(1), noise=noise)
    assert model.loss().weighting == weighting
    assert model.loss(weighting="variance").weighting == "variance"


def test_a_noise_scaled_score_divides_the_network_by_the_spread():
    """With `noise_scaled`, g = P net / √λ(s): a constant network gives |g| √λ(s) constant, so the
    score grows like τ^{-1/2} at small times while the network's output stays O(1)."""

    class Constant(eqx.Module):
        def __call__(self, u, z, t):
            return jnp.array([0.0, 1.0, 0.0, 0.0])

    noise = mp.IsotropicNoise(4)
    score = TangentScore(Constant(), noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3, True)
    u = jnp.array([1.0, 0.0, 0.0, 0.0])
    for s in (1e-3, 0.01, 0.5):
        np.testing.assert_allclose(
            jnp.linalg.norm(score(u, 0.0, s)) * jnp.sqrt(score.loss_weight(s)), 1.0, rtol=1e-5
        )
