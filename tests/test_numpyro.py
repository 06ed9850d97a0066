"""The MSGM as a NumPyro prior: sample/log_prob agreement, NUTS, Predictive and ArviZ."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions.gof import auto_goodness_of_fit
from numpyro.infer import MCMC, NUTS, Predictive
from scipy import stats

import msgm_pp as mp

NU = 3.0
TEST_FAILURE_RATE = 1e-3
ANGLE = 0.6
H = np.diag([1.0, 0.1]) @ np.array(
    [[np.cos(ANGLE), -np.sin(ANGLE)], [np.sin(ANGLE), np.cos(ANGLE)]]
)
SIGMA = 0.3
Y = H @ np.array([-2.0, 8.0])


def student_t(key, n, d, nu):
    z_key, w_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, d))
    return z / jnp.sqrt(jax.random.gamma(w_key, nu / 2, (n, 1)) / (nu / 2))


@pytest.fixture(scope="module")
def prior():
    """A learned 2-D Student-t (ν = 3) prior."""
    data = student_t(jax.random.key(3), 20000, 2, NU)
    model = mp.MSGM.fit(data, key=jax.random.key(1), max_steps=2000, progress=False)
    return model.with_options(sampler=mp.ODESampler(128), density=mp.ODEDensity(16))


def inverse_problem(prior, y=None):
    """y = H x + N(0, σ²): H observes one direction 10× more weakly than the other."""
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(jnp.asarray(H, jnp.float32) @ x, SIGMA).to_event(1), obs=y)


def grid_posterior(log_prior, centre, half_width, n=241):
    """Posterior mean and sd by quadrature on a grid (for the analytic priors)."""
    axes = [np.linspace(c - w, c + w, n) for c, w in zip(centre, half_width, strict=True)]
    x = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    log_post = log_prior(x) + stats.norm(0, SIGMA).logpdf(Y - x @ H.T).sum(-1)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = w @ x
    return mean, np.sqrt(w @ (x - mean) ** 2)


def exact_posterior(log_prior):
    mean, sd = grid_posterior(log_prior, np.zeros(2), np.array([20.0, 20.0]))
    return grid_posterior(log_prior, mean, 8 * sd)


def test_samples_agree_with_log_prob(prior):
    """numpyro's goodness-of-fit p-value for (samples, densities); a density 1.3× too wide must
    fail the same test, so the test has power at this sample size."""
    x = prior.sample(jax.random.key(0), (4000,))
    log_p = prior.log_prob(x)
    assert auto_goodness_of_fit(x, jnp.exp(log_p), dim=2) > TEST_FAILURE_RATE
    too_wide = prior.log_prob(x / 1.3) - 2 * np.log(1.3)
    assert auto_goodness_of_fit(x, jnp.exp(too_wide), dim=2) < TEST_FAILURE_RATE


def test_learned_log_prob_matches_the_analytic_density(prior):
    x = student_t(jax.random.key(11), 2000, 2, NU)
    exact = stats.multivariate_t(np.zeros(2), np.eye(2), df=NU).logpdf(np.asarray(x))
    assert np.mean(np.abs(np.asarray(prior.log_prob(x)) - exact)) < 0.15


def test_nuts_with_the_learned_prior_recovers_the_true_posterior(prior):
    """The true-prior posterior comes from quadrature, so only NUTS's Monte-Carlo error (about
    sd/√ESS ≈ 0.025 sd at the ESS of about 1900 seen here) and the model's error enter the 0.1 sd bound. The prior
    matters here: a Gaussian prior of the same covariance moves the mean by > 0.5 sd."""
    true_mean, true_sd = exact_posterior(stats.multivariate_t(np.zeros(2), np.eye(2), df=NU).logpdf)
    gauss_mean, _ = exact_posterior(stats.multivariate_normal(np.zeros(2), 3 * np.eye(2)).logpdf)
    assert np.all(np.abs(gauss_mean - true_mean) > 0.5 * true_sd)

    mcmc = MCMC(
        NUTS(inverse_problem, dense_mass=True),
        num_warmup=400,
        num_samples=600,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), prior, y=jnp.asarray(Y, jnp.float32))
    x = np.asarray(mcmc.get_samples()["x"], dtype=np.float64)

    posterior = az.from_numpyro(mcmc)
    assert {"mean", "sd", "ess_bulk", "r_hat"} <= set(az.summary(posterior).columns)
    assert float(az.rhat(posterior)["x"].max()) < 1.01
    assert float(az.ess(posterior)["x"].min()) > 800
    assert np.all(np.abs(x.mean(0) - true_mean) < 0.1 * true_sd)

    predictive = Predictive(inverse_problem, posterior_samples=mcmc.get_samples())
    y_rep = predictive(jax.random.key(1), prior)["y"]
    assert y_rep.shape == (2400, 2)
    expected = x.mean(0) @ H.T
    spread = np.sqrt(np.var(x @ H.T, axis=0) + SIGMA**2)
    assert np.all(np.abs(np.asarray(y_rep).mean(0) - expected) < 5 * spread / np.sqrt(2400 / 4))
    with_predictive = az.from_numpyro(mcmc, posterior_predictive={"y": y_rep[None]})
    # InferenceData (ArviZ < 1) and DataTree (ArviZ >= 1) both expose the group by attribute.
    assert with_predictive.posterior_predictive["y"].shape[-1] == 2


def test_prior_predictive_draws_from_the_model(prior):
    draws = Predictive(inverse_problem, num_samples=500)(jax.random.key(2), prior)
    assert draws["x"].shape == (500, 2) and draws["y"].shape == (500, 2)
    norms = np.linalg.norm(np.asarray(draws["x"]), axis=1)
    model_cdf = np.asarray(prior.norm_model.cdf(jnp.log(jnp.asarray(norms))))
    assert stats.kstest(model_cdf, "uniform").pvalue > TEST_FAILURE_RATE
