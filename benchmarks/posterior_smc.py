"""Posteriors under MSGM priors by `mp.TwistedSMC`: calibration, agreement with NUTS, and time.

    python benchmarks/posterior_smc.py [--parts exact approximate refined cauchy4 tutorial
        coverage16] [--problems 200]

- exact: a d = 2 MSGM whose score is exact (`PointMassMixtureScore`: directions at 0.3, 2.0 and 4.0
  rad with weights 0.5, 0.3, 0.2; log-norms N(0, 0.5²) as a KDE), observed through
  y = x₁ + 0.6 x₂ + N(0, 0.2²), which leaves two modes. Five problems are checked against
  quadrature (posterior means in posterior standard deviations, log-evidence in nats); then the 90%
  intervals' coverage over `--problems` problems whose x is drawn by the prior's own SDE sampler,
  the law that the SMC targets, so that an exact sampler covers 90% of them.
- approximate: the same five observations with `weighted=False`, against quadrature (the bias of
  the fast approximate mode).
- refined: the same with `refine=mp.SplitGibbs()` (the bias of the sweeps on a two-mode problem).
- cauchy4: the paper's correlated Cauchy (d = 4); an MSGM fitted with the defaults to 8192 draws;
  y = H x + N(0, 0.05²) with the H of benchmarks/posterior_agreement.py. Coverage over
  `--problems` problems with x from the MSGM's sampler; then three problems with x from the true
  prior, where the SMC is compared with NUTS on the MSGM's own `log_prob` (32 ODE steps, dense
  mass, 4 chains of 1000 + 2000) and with NUTS on the analytic prior.
- tutorial: tutorials/02_inverse_problem.ipynb's problem (d = 16, a blurred signal with jumps,
  σ = 0.05): the SMC (`--tutorial-chains` chains, 16 by default, so that its Monte-Carlo error is
  small enough to see a 0.1-sd bias) against NUTS with the learned prior's `log_prob` (32 ODE
  steps, 4 chains of 500 + 1000) and with the true prior; per coordinate, the mean shift and its
  Monte-Carlo standard error.
- coverage16: the 90% intervals' coverage on the tutorial's problem over `--problems` problems
  whose x is drawn by the fitted MSGM's sampler, one run each.

The SMC runs 4 chains (independent runs) of 1024 particles in groups of 16 per norm, 2 pilot
rounds, the model's 128 SDE steps. Writes benchmarks/results/posterior_smc.json.
"""

import argparse
import functools
import json
import math
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _comparison import nuts
from _machine import machine
from numpyro.distributions import transforms
from scipy import stats

import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy
from msgm_pp.heat_kernel import PointMassMixtureScore, log_heat_kernel

ANGLES = np.array([0.3, 2.0, 4.0])
WEIGHTS = np.array([0.5, 0.3, 0.2])
LINE = jnp.array([[1.0, 0.6]])
CAUCHY = CorrelatedCauchy.paper_task(4)
ROTATION = np.linalg.qr(np.random.default_rng(5).standard_normal((4, 4)))[0]
H = jnp.asarray(np.diag([1.0, 0.5, 0.25, 0.1]) @ ROTATION, jnp.float32)
D16 = 16
BLUR = jnp.exp(-0.5 * ((jnp.arange(D16)[:, None] - jnp.arange(D16)[None, :]) / 1.5) ** 2)
BLUR = BLUR / BLUR.sum(axis=1, keepdims=True)


def line_model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(LINE @ x, 0.2).to_event(1), obs=y)


def cauchy_model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(H @ x, 0.05).to_event(1), obs=y)


def blur_model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(BLUR @ x, 0.05).to_event(1), obs=y)


def smc(model, prior, y, key, chains=4, weighted=True, refine=None):
    sampler = mp.TwistedSMC(
        model,
        num_particles=1024,
        num_chains=chains,
        weighted=weighted,
        refine=refine,
        progress=False,
    )
    start = time.perf_counter()
    sampler.run(key, prior, y=y)
    x = np.asarray(sampler.get_samples()["x"], np.float64)
    seconds = time.perf_counter() - start
    return {
        "x": x,
        "seconds": seconds,
        "ess": sampler.ess.tolist(),
        "group_ess": sampler.group_ess.tolist(),
        "log_evidence": sampler.log_evidence.tolist(),
    }


def summary(draws: dict, reference: dict) -> dict:
    shift = (draws["x"].mean(0) - reference["x"].mean(0)) / reference["x"].std(0)
    return {
        "max_abs_mean_shift_in_sd": float(np.abs(shift).max()),
        "sd_ratio_range": [
            float((draws["x"].std(0) / reference["x"].std(0)).min()),
            float((draws["x"].std(0) / reference["x"].std(0)).max()),
        ],
    }


def comparison(draws: dict, learned: dict, exact: dict) -> dict:
    """The SMC against NUTS on the learned log_prob and on the true prior, with times and ESS."""
    return {
        "smc_vs_nuts_learned": summary(draws, learned),
        "smc_vs_nuts_true_prior": summary(draws, exact),
        "nuts_learned_vs_true_prior": summary(learned, exact),
        "seconds": {
            "smc": draws["seconds"],
            "nuts_learned": learned["seconds"],
            "nuts_true_prior": exact["seconds"],
        },
        "smc_ess": draws["ess"],
        "smc_group_ess": draws["group_ess"],
        "nuts_learned_ess_min": learned["ess_min"],
    }


def covered(x, truth) -> np.ndarray:
    low, high = np.quantile(x, [0.05, 0.95], axis=0)
    return (low <= truth) & (truth <= high)


def coverage(model, prior, noise, key, problems: int) -> dict:
    """x from the prior's own sampler, y = A x + noise; 90% intervals of one 1024-particle run."""
    truth_key, noise_key, run_key = jax.random.split(key, 3)
    truths = prior.sample(truth_key, (problems,))
    hits, seconds, ess = [], [], []
    for i, (x_true, k_noise, k_run) in enumerate(
        zip(
            truths,
            jax.random.split(noise_key, problems),
            jax.random.split(run_key, problems),
            strict=True,
        )
    ):
        y = noise(x_true, k_noise)
        run = smc(model, prior, y, k_run, chains=1)
        hits.append(covered(run["x"], np.asarray(x_true)))
        seconds.append(run["seconds"])
        ess.append(run["ess"][0])
        if i % 50 == 49:
            print(f"  {i + 1} problems, coverage so far {np.mean(hits):.3f}", flush=True)
    hits = np.asarray(hits)
    per_problem = hits.mean(1)
    return {
        "problems": problems,
        "coverage": float(hits.mean()),
        "standard_error": float(per_problem.std() / math.sqrt(problems)),
        "coverage_per_coordinate": hits.mean(0).tolist(),
        "median_seconds": float(np.median(seconds[1:])),
        "median_ess": float(np.median(ess)),
    }


def exact_prior():
    noise = mp.IsotropicNoise(2)
    schedule = mp.mixing_schedule(noise)
    directions = jnp.stack([jnp.cos(ANGLES), jnp.sin(ANGLES)], 1)
    net = PointMassMixtureScore(directions, jnp.log(WEIGHTS), schedule)
    score = mp.TangentScore(net, noise, schedule, 0.0, 1.0, 1e-3)
    return mp.MSGM(score, mp.KDENorm.fit(np.random.default_rng(0).normal(0.0, 0.5, 4000)))


def quadrature(prior, y):
    ell = np.linspace(-3.5, 3.5, 501)
    phi = np.linspace(0.0, 2 * np.pi, 1441)[:-1]
    u = np.stack([np.cos(phi), np.sin(phi)], -1)
    tau = float(prior.score.tau(prior.score.t_eps))
    directions = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
    log_angle = np.logaddexp.reduce(
        [
            np.asarray(log_heat_kernel(jnp.asarray(u), m, tau)) + np.log(w)
            for m, w in zip(directions, WEIGHTS, strict=True)
        ],
        axis=0,
    )
    log_angle -= np.log(np.sum(np.exp(log_angle)) * (phi[1] - phi[0]))
    log_norm = np.asarray(prior.norm_model.log_prob(jnp.asarray(ell)), np.float64)
    x = np.exp(ell)[:, None, None] * u[None]
    log_joint = (
        log_norm[:, None]
        + log_angle[None]
        + stats.norm((x @ np.asarray(LINE).T)[..., 0], 0.2).logpdf(float(y[0]))
    )
    weights = np.exp(log_joint - log_joint.max())
    log_evidence = np.log(weights.sum() * (ell[1] - ell[0]) * (phi[1] - phi[0])) + log_joint.max()
    weights /= weights.sum()
    mean = np.einsum("ij,ijk->k", weights, x)
    sd = np.sqrt(np.einsum("ij,ijk->k", weights, (x - mean) ** 2))
    return mean, sd, log_evidence


EXACT_OBSERVATIONS = [0.4, -0.3, 1.0, 2.5, 0.0]


def exact_part(problems: int) -> dict:
    prior = exact_prior()
    checks = []
    for seed, y in enumerate(EXACT_OBSERVATIONS):
        y = jnp.array([y])
        mean, sd, log_evidence = quadrature(prior, y)
        run = smc(line_model, prior, y, jax.random.key(seed))
        checks.append(
            {
                "y": float(y[0]),
                "max_abs_mean_shift_in_sd": float(np.abs((run["x"].mean(0) - mean) / sd).max()),
                "log_evidence_error": float(np.mean(run["log_evidence"]) - log_evidence),
                "seconds": run["seconds"],
                "ess": run["ess"],
            }
        )
        print("exact", checks[-1], flush=True)

    def noise(x, key):
        return LINE @ x + 0.2 * jax.random.normal(key, (1,))

    calibration = coverage(line_model, prior, noise, jax.random.key(100), problems)
    print("exact coverage", calibration, flush=True)
    return {"quadrature": checks, "calibration": calibration}


def approximate_part(refine=None) -> dict:
    """The bias of `weighted=False` (with `refine`) on the exact d = 2 problem, against
    quadrature."""
    prior = exact_prior()
    checks = []
    for seed, y in enumerate(EXACT_OBSERVATIONS):
        y = jnp.array([y])
        mean, sd, _ = quadrature(prior, y)
        run = smc(line_model, prior, y, jax.random.key(seed), weighted=False, refine=refine)
        checks.append(
            {
                "y": float(y[0]),
                "abs_mean_shift_in_sd": np.abs((run["x"].mean(0) - mean) / sd).tolist(),
                "sd_ratio": (run["x"].std(0) / sd).tolist(),
                "seconds": run["seconds"],
            }
        )
        print("approximate", refine, checks[-1], flush=True)
    return {"quadrature": checks}


def cauchy_part(problems: int) -> dict:
    data_key, fit_key, cover_key = jax.random.split(jax.random.key(0), 3)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prior = mp.MSGM.fit(CAUCHY.sample(data_key, (8192,)), key=fit_key, progress=False)
    fit_seconds = time.perf_counter() - start

    def noise(x, key):
        return H @ x + 0.05 * jax.random.normal(key, (4,))

    calibration = coverage(cauchy_model, prior, noise, cover_key, problems)
    print("cauchy4 coverage", calibration, flush=True)
    comparisons = []
    for seed in range(3):
        truth_key, noise_key, run_key = jax.random.split(jax.random.key(10 + seed), 3)
        x_true = CAUCHY.sample(truth_key)
        y = noise(x_true, noise_key)
        learned = nuts(cauchy_model, run_key, prior.with_options(density=mp.ODEDensity(32)), y)
        exact = nuts(cauchy_model, run_key, CAUCHY, y)
        draws = smc(cauchy_model, prior, y, run_key)
        comparisons.append(
            {"x_true": np.asarray(x_true).tolist(), **comparison(draws, learned, exact)}
        )
        print("cauchy4", comparisons[-1], flush=True)
    return {"fit_seconds": fit_seconds, "calibration": calibration, "comparisons": comparisons}


TUTORIAL_KEYS = jax.random.split(jax.random.key(0), 5)  # as in the notebook


def blur_noise(x, key):
    return BLUR @ x + 0.05 * jax.random.normal(key, (D16,))


@functools.cache  # the tutorial and coverage16 parts share one fit
def tutorial_priors():
    """Tutorial 02's true prior (a random walk of Student-t jumps) and the MSGM fitted to it."""
    jumps = dist.StudentT(2.0, 0.0, 0.1).expand([D16]).to_event(1)
    true_prior = dist.TransformedDistribution(
        jumps, transforms.LowerCholeskyAffine(jnp.zeros(D16), jnp.tril(jnp.ones((D16, D16))))
    )
    k_train, _, _, k_fit, _ = TUTORIAL_KEYS
    train = true_prior.sample(k_train, (20_000,))
    start = time.perf_counter()
    prior = mp.MSGM.fit(train, key=k_fit, progress=False)
    return true_prior, prior, time.perf_counter() - start


def mean_shift_with_error(draws: dict, chains: int, reference: dict) -> dict:
    """Per coordinate: the SMC mean minus the NUTS mean in NUTS posterior sds, and its Monte-Carlo
    standard error (SMC: the spread of the independent chains' means; NUTS: sd/√(smallest ESS))."""
    sd = reference["x"].std(0)
    chain_means = draws["x"].reshape(chains, -1, sd.size).mean(1)
    smc_error = chain_means.std(0, ddof=1) / math.sqrt(chains)
    nuts_error = sd / math.sqrt(reference["ess_min"])
    return {
        "shift_in_sd": ((draws["x"].mean(0) - reference["x"].mean(0)) / sd).tolist(),
        "standard_error_in_sd": (np.hypot(smc_error, nuts_error) / sd).tolist(),
    }


def tutorial_part(chains: int) -> dict:
    true_prior, prior, fit_seconds = tutorial_priors()
    _, k_truth, k_noise, _, k_mcmc = TUTORIAL_KEYS
    candidates = np.asarray(true_prior.sample(k_truth, (100,)))
    largest_jump = np.abs(np.diff(candidates, axis=1, prepend=0.0)).max(axis=1)
    x_true = jnp.asarray(candidates[np.argmax(largest_jump > 0.5)])
    y = blur_noise(x_true, k_noise)
    draws = smc(blur_model, prior, y, jax.random.key(1), chains=chains)
    exact = nuts(blur_model, k_mcmc, true_prior, y, warmup=500, draws=1000)
    learned = nuts(
        blur_model, k_mcmc, prior.with_options(density=mp.ODEDensity(32)), y, warmup=500, draws=1000
    )
    truth = np.asarray(x_true)
    result = {
        "fit_seconds": fit_seconds,
        **comparison(draws, learned, exact),
        "chains": chains,
        "smc_seconds_per_4_chains": draws["seconds"] * 4 / chains,
        "smc_vs_nuts_learned_per_coordinate": mean_shift_with_error(draws, chains, learned),
        "truth_covered_of_16": {
            "smc": int(covered(draws["x"], truth).sum()),
            "nuts_learned": int(covered(learned["x"], truth).sum()),
            "nuts_true_prior": int(covered(exact["x"], truth).sum()),
        },
    }
    print("tutorial", result, flush=True)
    return result


def coverage16_part(problems: int) -> dict:
    """The 90% intervals' coverage on tutorial 02's problem, x from the MSGM's own sampler."""
    _, prior, fit_seconds = tutorial_priors()
    calibration = coverage(blur_model, prior, blur_noise, jax.random.key(200), problems)
    print("coverage16", calibration, flush=True)
    return {"fit_seconds": fit_seconds, "calibration": calibration}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["exact", "approximate", "refined", "cauchy4", "tutorial", "coverage16"],
        choices=["exact", "approximate", "refined", "cauchy4", "tutorial", "coverage16"],
    )
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument(
        "--tutorial-chains",
        type=int,
        default=16,
        help="SMC chains of the tutorial part (more chains, smaller Monte-Carlo error)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/posterior_smc.json"))
    args = parser.parse_args()
    results = json.loads(args.out.read_text()).get("parts", {}) if args.out.exists() else {}
    parts = {
        "exact": lambda: exact_part(args.problems),
        "approximate": approximate_part,
        "refined": lambda: approximate_part(mp.SplitGibbs()),
        "cauchy4": lambda: cauchy_part(args.problems),
        "tutorial": lambda: tutorial_part(args.tutorial_chains),
        "coverage16": lambda: coverage16_part(args.problems),
    }
    for name in args.parts:
        results[name] = parts[name]()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), "parts": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
