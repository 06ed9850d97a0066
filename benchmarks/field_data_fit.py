"""Do the approximate posterior draws of the field benchmark fit the data they condition on?

    python benchmarks/field_data_fit.py MODEL [--fields 0 1] [--stochasticity 1]
        [--particles 128] [--output PATH]

About 4 minutes per run on one core, 12 runs for two fields. MODEL is a 32×32 lattice MSGM of
`inverse_fields.fields` (for instance saved by `lattice_sparse.py --side 32 --n 512
--save-models DIR`); the tasks, held-out fields, observations and keys are those of
`inverse_fields.py`. A posterior draw x of y = A x + N(0, σ² I) leaves the residual y − A x, and
its χ² per observation, |y − A x|² / (σ² m), is about 1 for the truth (the residual is the noise)
and for draws of the exact posterior of a prior that allows the truth. Recorded for each task and
field: that χ²/m for the truth, for 128 draws of the exact posterior under the Gaussian prior of
`inverse_fields.py`, and for the draws of `mp.TwistedSMC(weighted=False)` (128 particles, one
pilot round, `mp.SDESampler(steps, η)`) with three priors that differ only where stated:

- "learned": MODEL;
- "norm known": MODEL with its norm law replaced by a kernel density of bandwidth 0.002 at the
  truth's log-norm, so every draw has the truth's norm;
- "no score": MODEL with a fresh `LatticeScoreNet` (the zero tangent score: uniform
  directions), so the reverse rotations are the noise and the guidance alone.

With each, the draws' median χ²/m, their log-norm, their median peak-to-norm ratio and the RMSE
and extremes RMSE (the 1% of sites with the largest |x|) of their mean. Writes
benchmarks/results/field_data_fit.json (or `--output`).
"""

import argparse
import json

import jax
import numpy as np
from _machine import write_rows
from inverse_fields import (
    chi2_per_observation,
    fields,
    gaussian_posterior_moments,
    peak_to_norm,
    scores,
    stationary_covariance,
)
from inverse_fields import tasks as field_tasks

import msgm_pp as mp
from msgm_pp.norm_models import KDENorm

KNOWN_NORM_BANDWIDTH = 0.002


def gaussian_posterior_draws(task, y, mean, covariance, n: int, seed: int) -> np.ndarray:
    """n draws of the exact posterior under the Gaussian prior N(mean, covariance)."""
    post_mean, post_covariance = gaussian_posterior_moments(task, y, mean, covariance)
    post_covariance = 0.5 * (post_covariance + post_covariance.T)
    eigenvalues, vectors = np.linalg.eigh(post_covariance)
    root = vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    normal = np.random.default_rng(seed).standard_normal((n, len(post_mean)))
    return post_mean + normal @ root.T


def variants(model, truth: np.ndarray) -> dict:
    """The three priors of the module docstring."""
    _, truth_log_norm = model.training_data(truth[None])
    known_norm = KDENorm.fit(np.asarray(truth_log_norm), bandwidth=KNOWN_NORM_BANDWIDTH)
    arguments = model.constructor_arguments()
    fresh = mp.LatticeScoreNet(model.event_shape, key=jax.random.key(7))
    return {
        "learned": model,
        "norm known": type(model)(**{**arguments, "norm_model": known_norm}),
        "no score": model.with_network(fresh),
    }


def approximate_draws(task, prior, y, key, particles: int, twist=None) -> np.ndarray:
    """(particles, d) draws of `mp.TwistedSMC(weighted=False)` with one pilot round."""
    smc = mp.TwistedSMC(
        task.model,
        num_particles=particles,
        norm_rounds=1,
        weighted=False,
        twist=twist,
        progress=False,
    )
    smc.run(key, prior, y=y)
    return np.asarray(smc.get_samples()["x"], np.float64).reshape(particles, -1)


def draw_summary(task, y, truth: np.ndarray, draws: np.ndarray) -> dict:
    flat = truth.reshape(-1).astype(np.float64)
    low, high = np.quantile(draws, [0.05, 0.95], axis=0)
    return {
        "chi2_per_observation": float(np.median(chi2_per_observation(task, y, draws))),
        "log_norm": float(np.mean(np.log(np.linalg.norm(draws, axis=1)))),
        "peak_to_norm": peak_to_norm(draws),
        **scores(flat, draws.mean(0), low, high),
    }


def run(model, field_indices, eta: float, particles: int) -> list[dict]:
    side = model.event_shape[0]
    keys = jax.random.split(jax.random.key(0), 8)
    train = fields(keys[0], 512, side)
    mean, covariance = stationary_covariance(train)
    truths = fields(keys[3], max(field_indices) + 1, side)
    sampler = mp.SDESampler(model.sampler.steps, eta)
    rows = []
    for task in field_tasks(side, float(train.std()), keys[4]):
        for problem in field_indices:
            truth = truths[problem]
            flat = truth.reshape(1, -1).astype(np.float64)
            y = task.observe(jax.random.fold_in(keys[5], problem), truth)
            base = {"task": task.name, "problem": problem}
            rows.append(
                {
                    **base,
                    "prior": "truth",
                    "chi2_per_observation": float(chi2_per_observation(task, y, flat)[0]),
                    "log_norm": float(np.log(np.linalg.norm(flat))),
                    "peak_to_norm": peak_to_norm(flat),
                }
            )
            draws = gaussian_posterior_draws(task, y, mean, covariance, particles, problem)
            rows.append({**base, "prior": "Gaussian, exact", **draw_summary(task, y, truth, draws)})
            for name, prior in variants(model, truth).items():
                run_key = jax.random.fold_in(keys[6], problem)
                prior = prior.with_options(sampler=sampler)
                draws = approximate_draws(task, prior, y, run_key, particles)
                summary = draw_summary(task, y, truth, draws)
                rows.append({**base, "prior": name, "stochasticity": eta, **summary})
            for row in rows[-5:]:
                print(json.dumps(row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--fields", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--stochasticity", type=float, default=1.0)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--output", help="default: results/field_data_fit.json")
    args = parser.parse_args()
    model = mp.load(args.model)
    rows = run(model, args.fields, args.stochasticity, args.particles)
    write_rows(args, rows, "field_data_fit.json")


if __name__ == "__main__":
    main()
