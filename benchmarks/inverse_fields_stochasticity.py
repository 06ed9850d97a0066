"""The field benchmark's posteriors with a saved lattice MSGM at several sampler stochasticities.

    python benchmarks/inverse_fields_stochasticity.py MODEL [--stochasticity 1 0.3]
        [--problems 2] [--particles 128] [--weighted] [--pilot-steps N] [--twist tweedie]
        [--output PATH]

About 15 minutes per stochasticity on one core (approximate mode, two tasks, two problems).
MODEL is a 32×32 lattice MSGM of `inverse_fields.fields`, for instance one saved by
`lattice_sparse.py --side 32 --n 512 --save-models DIR`. The tasks, held-out fields, observations
and keys are those of `inverse_fields.py` (deblurring and 60% inpainting); the prior is MODEL with
`mp.SDESampler(steps, stochasticity=η)`, which `mp.TwistedSMC` follows, for each η given. Each run
is the approximate mode (`weighted=False`; with `--weighted`, the weighted mode too), 128
particles in groups of 16, one pilot round (of `--pilot-steps` reverse steps, by default the
model's; the twist `--twist`, by default `mp.TweedieTwist()`), scored as in `inverse_fields.py`,
beside the exact posterior under the Gaussian prior with the stationary covariance of the same
training fields.
Writes benchmarks/results/inverse_fields_stochasticity.json (or `--output`).
"""

import argparse
import json

import jax
from _machine import write_rows
from inverse_fields import (
    TWISTS,
    fields,
    gaussian_posterior,
    scores,
    smc_result,
    stationary_covariance,
)
from inverse_fields import tasks as field_tasks

import msgm_pp as mp


def run(
    model,
    etas,
    problems: int,
    particles: int,
    weighted: bool,
    pilot_steps=None,
    twist="tweedie",
) -> list[dict]:
    side = model.event_shape[0]
    keys = jax.random.split(jax.random.key(0), 8)
    train = fields(keys[0], 512, side)
    mean, covariance = stationary_covariance(train)
    truths = fields(keys[3], problems, side)
    rows = []
    for task in field_tasks(side, float(train.std()), keys[4]):
        for problem, truth in enumerate(truths):
            y = task.observe(jax.random.fold_in(keys[5], problem), truth)
            post_mean, post_sd = gaussian_posterior(task, y, mean, covariance)
            exact = scores(
                truth, post_mean, post_mean - 1.645 * post_sd, post_mean + 1.645 * post_sd
            )
            rows.append({"task": task.name, "problem": problem, "prior": "Gaussian", **exact})
            print(json.dumps(rows[-1]), flush=True)
            for eta in etas:
                prior = model.with_options(sampler=mp.SDESampler(model.sampler.steps, eta))
                for mode in (True, False) if weighted else (False,):
                    run_key = jax.random.fold_in(keys[6], problem)
                    result = smc_result(
                        task, prior, y, truth, run_key, particles, mode, pilot_steps, twist
                    )
                    rows.append(
                        {
                            "task": task.name,
                            "problem": problem,
                            "prior": "MSGM",
                            "stochasticity": eta,
                            "mode": "weighted" if mode else "approximate",
                            "pilot_steps": pilot_steps,
                            "twist": twist,
                            **result,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--stochasticity", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--weighted", action="store_true")
    parser.add_argument("--pilot-steps", type=int, help="the pilot round's reverse steps")
    parser.add_argument("--twist", choices=sorted(TWISTS), default="tweedie")
    parser.add_argument("--output", help="default: results/inverse_fields_stochasticity.json")
    args = parser.parse_args()
    model = mp.load(args.model)
    rows = run(
        model,
        args.stochasticity,
        args.problems,
        args.particles,
        args.weighted,
        args.pilot_steps,
        args.twist,
    )
    write_rows(args, rows, "inverse_fields_stochasticity.json")


if __name__ == "__main__":
    main()
