"""What the comparison benchmarks share: the models compared, their fits and the metrics."""

import time

import arviz as az
import jax
import numpy as np
from numpyro.infer import MCMC, NUTS
from scipy import optimize, stats

import msgm_pp as mp
from msgm_pp import metrics

# name -> (model class, fit options). The first two are the paper's comparison (both trained with
# sliced score matching); the last two are the package defaults.
MODELS = {
    "MSGM dense SSM (paper)": (mp.MSGM, {"noise": "dense", "loss": "ssm"}),
    "SGM SSM standard (paper)": (mp.SGM, {"loss": "ssm", "normalization": "standard"}),
    "MSGM isotropic DSM (default)": (mp.MSGM, {}),
    "SGM DSM robust (default)": (mp.SGM, {"loss": "dsm", "normalization": "robust"}),
}
LEVELS = (0.9, 0.99, 0.999)


def fit(name: str, data, key, steps: int, **overrides):
    """Fit model `name` for exactly `steps` steps with no validation split, so that a shorter run
    with the same key is a prefix of a longer one. Below 200 points the MSGM's GPD norm tail is
    fitted to the 12 largest norms. Returns (model, seconds)."""
    model_class, options = MODELS[name]
    if model_class is mp.MSGM and len(data) < 200:
        # the GPD tail of the norm model needs at least 10 exceedances
        options = {**options, "norm_options": {"tail_fraction": 12 / len(data)}}
    start = time.perf_counter()
    model = model_class.fit(
        data,
        key=key,
        max_steps=steps,
        validation_fraction=0.0,
        patience=None,
        progress=False,
        **{**options, **overrides},
    )
    jax.block_until_ready(model.score)
    return model, time.perf_counter() - start


def sample_metrics(samples, test, levels=LEVELS, mmd_scale=None) -> dict:
    """Distances of `samples` to `test` and errors of their tails. With `mmd_scale` (one value per
    coordinate) the paper's MMD is taken after dividing both sets by it, as `sqrt_mmd_scaled`."""
    samples, test = np.asarray(samples, np.float64), np.asarray(test, np.float64)
    finite = np.all(np.isfinite(samples), axis=1)
    result = {"non_finite_samples": int((~finite).sum())}
    if not finite.all():
        return result  # a diverged model: no distance is meaningful
    errors = metrics.tail_quantile_errors(samples, test, levels)
    if mmd_scale is None:
        result["sqrt_mmd"] = metrics.mmd(samples, test)
    else:
        result["sqrt_mmd_scaled"] = metrics.mmd(samples / mmd_scale, test / mmd_scale)
    result.update(
        sqrt_mmd_heavy_tail=metrics.heavy_tail_mmd(samples, test),
        norm_quantile_relative_error=dict(
            zip(map(str, levels), errors["norm"].tolist(), strict=True)
        ),
        norm_tail_index_hill=metrics.hill_tail_index(np.linalg.norm(samples, axis=1)).alpha,
    )
    return result


def student_t_fit(train, iterations: int = 500, tol: float = 1e-10):
    """Maximum-likelihood multivariate t (ν, μ, Σ) by ECME (Liu & Rubin 1995): the EM updates of
    μ and Σ given the weights w_i = (ν + d)/(ν + δ_i), then ν by a one-dimensional maximisation of
    the likelihood, until the log-likelihood gains less than `tol` per point. Started from the
    median and the IQR-based scales, so it does not need finite moments (Cauchy data)."""
    x = np.asarray(train, np.float64)
    n, d = x.shape
    mu = np.median(x, 0)
    spread = np.subtract(*np.percentile(x, [75, 25], 0)) / 1.349
    sigma, nu = np.diag(spread**2), 2.0

    def log_likelihood(nu, mu, sigma):
        return stats.multivariate_t(mu, sigma, df=nu).logpdf(x).mean()

    previous = -np.inf
    for _ in range(iterations):
        centred = x - mu
        delta = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(sigma), centred)
        weights = (nu + d) / (nu + delta)
        mu = weights @ x / weights.sum()
        centred = x - mu
        sigma = (weights[:, None] * centred).T @ centred / n
        nu = optimize.minimize_scalar(
            lambda log_nu, mu=mu, sigma=sigma: -log_likelihood(np.exp(log_nu), mu, sigma),
            bounds=(np.log(0.05), np.log(200.0)),
            method="bounded",
        ).x
        nu = float(np.exp(nu))
        current = log_likelihood(nu, mu, sigma)
        if current - previous < tol:
            break
        previous = current
    return nu, mu, sigma


def nuts(model, key, *model_args, warmup: int = 1000, draws: int = 2000) -> dict:
    """NUTS with a dense mass matrix, 4 vectorised chains: the x draws (chains merged), seconds,
    and ArviZ's smallest bulk ESS and largest R-hat over x's coordinates."""
    mcmc = MCMC(
        NUTS(model, dense_mass=True),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(key, *model_args)
    jax.block_until_ready(mcmc.get_samples())  # run returns before vectorised chains finish
    seconds = time.perf_counter() - start
    posterior = az.from_numpyro(mcmc)
    return {
        "x": np.asarray(mcmc.get_samples()["x"], np.float64),
        "seconds": seconds,
        "ess_min": float(az.ess(posterior)["x"].min()),
        "r_hat_max": float(az.rhat(posterior)["x"].max()),
    }
