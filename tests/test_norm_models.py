"""Norm models and the latent law p_∞(x) = p_r(|x|) |x|^{1−d} / |S^{d−1}|."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import gof
from scipy import stats
from scipy.special import roots_legendre

import msgm_pp as mp
from msgm_pp.norm_models import EmpiricalNorm, KDEGPDNorm, KDENorm, fit_norm_model

SMOOTH = ["kde", "kde+gpd"]
ALL = ["empirical", *SMOOTH]


def student_t(rng, n, d, nu):
    z = rng.standard_normal((n, d))
    return z / np.sqrt(rng.chisquare(nu, n) / nu)[:, None]


@pytest.fixture(scope="module")
def heavy_data():
    return student_t(np.random.default_rng(0), 20000, 3, 1.5)


@pytest.mark.parametrize("kind", SMOOTH)
@pytest.mark.parametrize("d", [2, 3])
def test_latent_density_integrates_to_one(kind, d, heavy_data):
    """Quadrature in spherical coordinates over R^d, through the public log_prob at real points."""
    latent = mp.Latent.fit(heavy_data[:, :d], kind)
    ell = np.linspace(-12, 30, 8401)
    if d == 2:
        phi = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        directions = np.stack([np.cos(phi), np.sin(phi)], -1)
        weights = np.full(32, 2 * np.pi / 32)
    else:
        cos_theta, w_theta = roots_legendre(12)
        phi = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        ct, ph = np.meshgrid(cos_theta, phi, indexing="ij")
        st = np.sqrt(1 - ct**2)
        directions = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
        weights = (w_theta[:, None] * np.full(16, 2 * np.pi / 16)).ravel()
    points = np.exp(ell)[:, None, None] * directions[None]
    log_p = np.asarray(latent.log_prob(jnp.asarray(points, jnp.float32)), dtype=np.float64)
    integrand = (np.exp(log_p + d * ell[:, None]) * weights).sum(axis=1)
    assert abs(np.trapezoid(integrand, ell) - 1) < 2e-3


def test_empirical_density_is_normalised_exactly(heavy_data):
    model = fit_norm_model(heavy_data, "empirical")
    knots = np.asarray(model.knots, dtype=np.float64)
    mid = 0.5 * (knots[1:] + knots[:-1])
    density = np.exp(np.asarray(model.log_prob(jnp.asarray(mid)), dtype=np.float64))
    assert abs((density * np.diff(knots)).sum() - 1) < 1e-3
    assert model.log_prob(jnp.asarray(knots[0] - 1.0)) == -jnp.inf


@pytest.mark.parametrize("kind", SMOOTH)
@pytest.mark.parametrize("d", [2, 3])
def test_latent_samples_agree_with_log_prob(kind, d, heavy_data):
    latent = mp.Latent.fit(heavy_data[:, :d], kind)
    samples = latent.sample(jax.random.key(1), (20000,))
    probs = jnp.exp(latent.log_prob(samples))
    assert (
        gof.auto_goodness_of_fit(np.asarray(samples, np.float64), np.asarray(probs, np.float64))
        > 2e-4
    )


@pytest.mark.parametrize("kind", ALL)
def test_norm_samples_follow_the_norm_model_cdf(kind, heavy_data):
    model = fit_norm_model(heavy_data, kind)
    log_r = np.asarray(model.sample(jax.random.key(2), (50000,)), np.float64)
    assert (
        stats.kstest(log_r, lambda v: np.asarray(model.cdf(jnp.asarray(v)), np.float64)).pvalue
        > 0.01
    )


def test_latent_norms_follow_the_norm_model_and_directions_are_uniform(heavy_data):
    latent = mp.Latent.fit(heavy_data, "kde")
    x = np.asarray(latent.sample(jax.random.key(3), (40000,)), np.float64)
    log_r = np.log(np.linalg.norm(x, axis=1))
    assert (
        stats.kstest(
            log_r, lambda v: np.asarray(latent.norm_model.cdf(jnp.asarray(v)), np.float64)
        ).pvalue
        > 0.01
    )
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (np.abs(u.mean(0)) < 4 * u.std(0) / math.sqrt(len(u))).all()


@pytest.mark.parametrize(("nu", "d"), [(1.5, 3), (1.5, 4)])
def test_latent_of_isotropic_data_is_the_data_density(nu, d):
    """For spherically symmetric data the latent law is the data law: compare with multivariate t."""
    rng = np.random.default_rng(int(10 * nu) + d)
    latent = mp.Latent.fit(student_t(rng, 100000, d, nu), "kde+gpd")
    test = student_t(rng, 4000, d, nu)
    exact = stats.multivariate_t(np.zeros(d), np.eye(d), df=nu).logpdf(test)
    error = np.abs(np.asarray(latent.log_prob(jnp.asarray(test, jnp.float32)), np.float64) - exact)
    assert error.mean() < 0.05


def test_gpd_tail_recovers_the_student_t_tail_index():
    """|x| of a multivariate Student-t(ν = 1.5) has P(|x| > r) ~ r^{−1.5}."""
    x = student_t(np.random.default_rng(7), 100000, 4, 1.5)
    model = fit_norm_model(x, "kde+gpd")
    assert abs(float(model.tail_index) - 1.5) / 1.5 < 0.15


@pytest.mark.parametrize("alpha", [0.8, 3.0])
def test_gpd_tail_recovers_an_exact_pareto_index(alpha):
    """Norms Pareto(α) × lognormal body: above the threshold the GPD model is exact, so the MLE
    (standard error ≈ (1 + 1/α) / √5000 ≈ 3%) must land within 10%."""
    rng = np.random.default_rng(11)
    n = 100000
    r = np.where(rng.uniform(size=n) < 0.2, rng.pareto(alpha, n) + 1.0, rng.lognormal(-1.0, 0.3, n))
    z = rng.standard_normal((n, 3))
    model = fit_norm_model(r[:, None] * z / np.linalg.norm(z, axis=1, keepdims=True), "kde+gpd")
    assert abs(float(model.tail_index) - alpha) / alpha < 0.10


def test_gpd_tail_generates_norms_beyond_the_training_maximum():
    data = student_t(np.random.default_rng(3), 2000, 4, 1.5)
    level = np.log(np.linalg.norm(data, axis=1).max()) + 1.0
    n = 400000
    gpd = fit_norm_model(data, "kde+gpd")
    beyond = int((np.asarray(gpd.sample(jax.random.key(4), (n,))) > level).sum())
    expected = n * (1 - float(gpd.cdf(jnp.asarray(level))))
    assert expected > 25
    assert abs(beyond - expected) < 4 * math.sqrt(expected)
    kde = fit_norm_model(data, "kde")
    assert 1 - float(kde.cdf(jnp.asarray(level))) < 1e-9
    assert int((np.asarray(kde.sample(jax.random.key(4), (n,))) > level).sum()) == 0


def test_gpd_splice_is_continuous_at_the_threshold():
    model = fit_norm_model(student_t(np.random.default_rng(5), 20000, 3, 2.0), "kde+gpd")
    u = float(model.log_threshold)
    below, above = model.log_prob(jnp.asarray([u - 1e-4, u + 1e-4]))
    assert abs(float(below) - float(above)) < 1e-2


def test_log_prob_is_differentiable_and_jittable(heavy_data):
    latent = mp.Latent.fit(heavy_data, "kde+gpd")
    x = jnp.asarray(heavy_data[:64], jnp.float32)
    np.testing.assert_allclose(
        jax.jit(latent.log_prob)(x), latent.log_prob(x), rtol=1e-5, atol=1e-5
    )
    grads = jax.vmap(jax.grad(latent.log_prob))(x)
    assert bool(jnp.isfinite(grads).all())
    point, e = x[3], jnp.eye(3)[1] * 1e-2
    fd = (latent.log_prob(point + e) - latent.log_prob(point - e)) / 2e-2
    assert abs(float(grads[3, 1]) - float(fd)) < 2e-2 * (1 + abs(float(fd)))


def test_latent_is_a_pytree_that_keeps_its_norm_model(heavy_data):
    latent = mp.Latent.fit(heavy_data, "kde")
    returned = jax.jit(lambda: latent)()
    assert isinstance(returned.norm_model, KDENorm) and returned.dim == 3
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(returned.log_prob(x), latent.log_prob(x), rtol=1e-6)
    assert latent.sample(jax.random.key(0), (5, 2)).shape == (5, 2, 3)
    assert latent.log_prob(jnp.ones((5, 2, 3))).shape == (5, 2)


def test_norm_model_classes():
    data = student_t(np.random.default_rng(1), 1000, 3, 3.0)
    assert isinstance(fit_norm_model(data, "empirical"), EmpiricalNorm)
    assert isinstance(fit_norm_model(data, "kde+gpd"), KDEGPDNorm)
    with pytest.raises(ValueError, match="unknown norm model"):
        fit_norm_model(data, "gaussian")


def test_bad_data_is_refused_with_row_indices():
    data = np.ones((6, 3))
    data[[1, 4], 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf entries in 2 row\(s\) at indices \[1, 4\]"):
        mp.Latent.fit(data)
    data = np.ones((6, 3))
    data[2] = 0.0
    with pytest.raises(ValueError, match=r"1 row\(s\) of zero norm at indices \[2\]"):
        mp.Latent.fit(data)
    with pytest.raises(ValueError, match="2-D array"):
        mp.Latent.fit(np.ones(5))
    with pytest.raises(ValueError, match="d >= 2"):
        mp.Latent.fit(np.ones((5, 1)))


def test_tail_fit_needs_enough_exceedances():
    small = student_t(np.random.default_rng(1), 100, 3, 3.0)
    with pytest.raises(ValueError, match="at least 10 points above the threshold"):
        fit_norm_model(small, "kde+gpd", tail_fraction=0.05)
    with pytest.raises(ValueError, match="n=20 has too few"):
        fit_norm_model(small[:20], "kde+gpd")


@pytest.mark.parametrize("n", [21, 100, 199])
def test_small_samples_keep_ten_points_in_the_default_tail(n):
    """Below 200 points the default tail keeps 10 exceedances instead of refusing the data: the
    tail's mass is 10/n and the spliced density still integrates to one (trapezoid in ℓ on a grid
    of step 0.005, whose error is far below the 1e-3 bound)."""
    model = fit_norm_model(student_t(np.random.default_rng(n), n, 3, 1.5), "kde+gpd")
    assert float(model.tail_mass) == pytest.approx(10 / n)
    ell = np.linspace(float(model.log_threshold) - 20, float(model.log_threshold) + 60, 16001)
    density = np.exp(np.asarray(model.log_prob(jnp.asarray(ell)), np.float64))
    assert abs(np.trapezoid(density, ell) - 1) < 1e-3
    assert float(model.cdf(jnp.asarray(float(model.log_threshold)))) == pytest.approx(
        1 - 10 / n, abs=1e-3
    )


def test_constant_norms_are_refused_by_smooth_models():
    directions = np.random.default_rng(0).standard_normal((50, 3))
    on_sphere = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    with pytest.raises(ValueError, match="same norm"):
        fit_norm_model(on_sphere, "kde")


def test_latent_log_prob_validates_its_argument(heavy_data):
    d = heavy_data.shape[1]
    latent = mp.Latent.fit(heavy_data, "kde")
    checked = mp.Latent(latent.norm_model, d, validate_args=True)
    point = jnp.zeros(d).at[0].set(jnp.nan)
    with pytest.warns(UserWarning, match="Out-of-support"):
        assert checked.log_prob(point) == -jnp.inf
    assert latent.has_rsample is False
