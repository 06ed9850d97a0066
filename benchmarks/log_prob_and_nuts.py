"""Cost of the probability-flow log-density, and NUTS with a learned prior against the analytic one.

    python benchmarks/log_prob_and_nuts.py [--out benchmarks/results/log_prob_and_nuts.json]

1. log_prob and log_prob + gradient, microseconds per point, at d = 4 and 16 with the paper's MLP
   (3 × 128, swish) and the exact trace, for 16, 32 and 64 ODE steps: batches of 1000 points
   (vmapped) and single points (what one NUTS chain asks for). Best of three compiled runs.
2. NUTS (dense mass matrix, one chain, 1000 warm-up and 2000 kept draws) on a d = 4 inverse
   problem y = H x + N(0, 0.1²) with H = diag(1, 0.5, 0.1, 0.05), x_true in the prior's tail:
   with the analytic multivariate Student-t prior (ν = 3), and with an MSGM fitted to 20000 draws
   of it (`ODEDensity(steps)` with 16, 32, 64 steps). Each run is timed a second time, after compilation; ESS is
   ArviZ's bulk ESS, the minimum over coordinates. The ratio of ESS per second is the learned
   prior's cost per effective sample relative to the analytic prior.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import msgm_pp as mp

NU = 3.0
STEPS = (16, 32, 64)


def student_t(key, n, d, nu):
    z_key, w_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, d))
    return z / jnp.sqrt(jax.random.gamma(w_key, nu / 2, (n, 1)) / (nu / 2))


def best_time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def log_prob_costs(model, d: int) -> dict:
    x = student_t(jax.random.key(5), 1000, d, NU)
    rows = {}
    for steps in STEPS:
        m = model.with_options(density=mp.ODEDensity(steps))
        batched = jax.jit(lambda v, m=m: m.log_prob(v))
        batched_grad = jax.jit(jax.grad(lambda v, m=m: m.log_prob(v).sum()))
        single = jax.jit(lambda v, m=m: jax.lax.map(m.log_prob, v))
        single_grad = jax.jit(lambda v, m=m: jax.lax.map(jax.grad(m.log_prob), v))
        few = x[:100]
        rows[str(steps)] = {
            "log_prob_batched_us": 1e6 * best_time(batched, x) / 1000,
            "log_prob_and_grad_batched_us": 1e6 * best_time(batched_grad, x) / 1000,
            "log_prob_single_us": 1e6 * best_time(single, few) / 100,
            "log_prob_and_grad_single_us": 1e6 * best_time(single_grad, few) / 100,
        }
        print(d, steps, {k: round(v, 1) for k, v in rows[str(steps)].items()}, flush=True)
    return rows


def nuts_run(prior, y, h) -> dict:
    def inverse_problem(prior, y):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(h @ x, 0.1).to_event(1), obs=y)

    mcmc = MCMC(
        NUTS(inverse_problem, dense_mass=True),
        num_warmup=1000,
        num_samples=2000,
        num_chains=1,
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), prior, y, extra_fields=("num_steps",))
    start = time.perf_counter()
    mcmc.run(jax.random.key(1), prior, y, extra_fields=("num_steps",))
    seconds = time.perf_counter() - start
    ess = float(az.ess(az.from_numpyro(mcmc))["x"].min())
    return {
        "seconds": seconds,
        "ess_min": ess,
        "ess_per_second": ess / seconds,
        "leapfrog_steps_per_draw": float(mcmc.get_extra_fields()["num_steps"].mean()),
        "posterior_mean": np.asarray(mcmc.get_samples()["x"]).mean(0).tolist(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/log_prob_and_nuts.json")
    args = parser.parse_args()
    results = {"machine": platform.processor() or platform.machine(), "log_prob": {}, "nuts": {}}

    models = {}
    for d in (4, 16):
        data = student_t(jax.random.key(3), 20000, d, NU)
        models[d] = mp.MSGM.fit(data, key=jax.random.key(1), max_steps=2000, progress=False)
        results["log_prob"][str(d)] = log_prob_costs(models[d], d)

    d = 4
    h = jnp.diag(jnp.array([1.0, 0.5, 0.1, 0.05]))
    x_true = jnp.array([3.0, -2.0, 4.0, 1.0])
    y = h @ x_true + 0.1 * jax.random.normal(jax.random.key(9), (d,))
    analytic = nuts_run(dist.MultivariateStudentT(NU, jnp.zeros(d), jnp.eye(d)), y, h)
    results["nuts"]["analytic"] = analytic
    print("analytic", analytic, flush=True)
    for steps in STEPS:
        run = nuts_run(models[d].with_options(density=mp.ODEDensity(steps)), y, h)
        run["cost_per_effective_sample_vs_analytic"] = (
            analytic["ess_per_second"] / run["ess_per_second"]
        )
        results["nuts"][f"msgm_{steps}_steps"] = run
        print(steps, run, flush=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
