import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import gof
from scipy import stats

from msgm_pp.datasets import CorrelatedCauchy, eu_stock_returns, student_t


def test_log_prob_is_the_change_of_variables_of_iid_cauchy():
    task = CorrelatedCauchy.paper_task(d=4, seed=0)
    x = np.random.default_rng(1).standard_normal((10, 4))
    a = np.asarray(task.mixing, np.float64)
    z = np.linalg.solve(a, x.T).T
    expected = stats.cauchy(scale=1 / 50).logpdf(z).sum(1) - np.log(abs(np.linalg.det(a)))
    np.testing.assert_allclose(task.log_prob(jnp.asarray(x, jnp.float32)), expected, rtol=1e-4)


def test_samples_agree_with_log_prob():
    task = CorrelatedCauchy.paper_task(d=2, seed=3)
    x = task.sample(jax.random.key(0), (20000,))
    assert (
        gof.auto_goodness_of_fit(
            np.asarray(x, np.float64), np.exp(np.asarray(task.log_prob(x), np.float64))
        )
        > 2e-4
    )


def test_paper_task_is_fixed_by_its_seed_and_shapes_follow_numpyro():
    a, b = CorrelatedCauchy.paper_task(seed=5), CorrelatedCauchy.paper_task(seed=5)
    np.testing.assert_array_equal(a.mixing, b.mixing)
    assert a.sample(jax.random.key(0), (3, 2)).shape == (3, 2, 4)
    assert a.log_prob(jnp.ones((3, 2, 4))).shape == (3, 2)
    with pytest.raises(ValueError, match="square matrix"):
        CorrelatedCauchy(np.ones((2, 3)))


def integral_over_the_plane(log_density, scale: float, n: int = 1200) -> float:
    """∫ p over R² by the midpoint rule after x = scale · tan(w) in each coordinate: the
    integrand p(x) |dx/dw| stays bounded for densities with tails down to |x|^(−2)."""
    w = (np.arange(n) + 0.5) / n * np.pi - np.pi / 2
    w1, w2 = np.meshgrid(w, w, indexing="ij")
    x = scale * np.stack([np.tan(w1), np.tan(w2)], -1).reshape(-1, 2)
    jacobian = (scale / np.cos(w1) ** 2 * scale / np.cos(w2) ** 2).ravel()
    values = np.exp(np.asarray(log_density(jnp.asarray(x)), np.float64)) * jacobian
    return float(values.sum() * (np.pi / n) ** 2)


@pytest.mark.parametrize(
    "law",
    [
        CorrelatedCauchy.paper_task(d=2, seed=1),
        student_t(1.5, [[2.0, 0.9], [0.9, 1.0]], loc=[0.5, -1.0]),
    ],
    ids=["cauchy", "student-t"],
)
def test_analytic_densities_are_normalised(law):
    """The densities integrate to 1 within 1% (the quadrature error at 1200² points is at most
    0.2% and falls as 1/n)."""
    scale = float(np.abs(np.asarray(law.sample(jax.random.key(0), (2000,)))).mean(0).min())
    assert integral_over_the_plane(law.log_prob, scale) == pytest.approx(1.0, abs=0.01)


def test_student_t_matches_scipy_and_checks_its_scale_matrix():
    sigma = np.array([[2.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 0.5]])
    law = student_t(3.0, sigma, loc=[1.0, 0.0, -1.0])
    x = np.random.default_rng(0).standard_normal((20, 3))
    expected = stats.multivariate_t(loc=[1.0, 0.0, -1.0], shape=sigma, df=3.0).logpdf(x)
    np.testing.assert_allclose(law.log_prob(jnp.asarray(x, jnp.float32)), expected, rtol=1e-4)
    assert law.sample(jax.random.key(0), (5, 2)).shape == (5, 2, 3)
    with pytest.raises(ValueError, match="positive definite"):
        student_t(3.0, [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        student_t(3.0, [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="`df` must be a positive number"):
        student_t(-1.0, np.eye(2))


def test_eu_stock_returns():
    returns = eu_stock_returns()
    assert returns.shape == (1833, 4) and np.all(np.isfinite(returns))
    assert np.all(np.any(returns != 0, axis=1))
    assert returns[0, 0] == pytest.approx(np.log(1613.63 / 1628.75), rel=1e-12)
    assert eu_stock_returns(drop_unchanged_days=False).shape == (1859, 4)
