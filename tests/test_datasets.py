import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import gof
from scipy import stats

from msgm_pp.datasets import CorrelatedCauchy


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
