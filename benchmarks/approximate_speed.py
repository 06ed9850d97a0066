"""Seconds for the fast approximate mode of `mp.TwistedSMC` on one 32×32 deblurring problem.

    python benchmarks/approximate_speed.py MODEL [--particles 128] [--runs 2] [--pilot-steps N]
        [--twist tweedie] [--sweeps N] [--output PATH]

About 10 minutes on 2 cores. For instance
    python benchmarks/approximate_speed.py MODEL \
        --output benchmarks/results/approximate_speed_fusion.json
    XLA_FLAGS=--xla_cpu_use_fusion_emitters=false python benchmarks/approximate_speed.py MODEL \
        --output benchmarks/results/approximate_speed_elemental.json

MODEL is a lattice MSGM of `inverse_fields.fields`, for instance one saved by
`lattice_sparse.py --save-models DIR`. The problem is `inverse_fields.py`'s deblurring task on one
fresh field; the same sampler settings (`--particles` particles in groups of 16, one pilot round,
`weighted=False`; the pilot with `--pilot-steps` reverse steps, by default the model's; the
twist `--twist`, by default `mp.TweedieTwist()`; with `--sweeps N`, `refine=mp.SplitGibbs(N)`)
are run `--runs` times with different keys in one process, so the first run includes compilation
and the later ones do not. Each row records XLA_FLAGS, which is read when
JAX's backend starts: run the command once without and once with the flag above to compare
XLA:CPU's fusion emitters (the default) with its elemental emitters.
Writes benchmarks/results/approximate_speed.json (or `--output`).
"""

import argparse
import json
import os

import jax
from _machine import write_rows
from inverse_fields import TWISTS, fields, smc_result, tasks

import msgm_pp as mp


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--pilot-steps", type=int, help="the pilot round's reverse steps")
    parser.add_argument("--twist", choices=sorted(TWISTS), default="tweedie")
    parser.add_argument("--sweeps", type=int, help="refine with mp.SplitGibbs(sweeps)")
    parser.add_argument("--output", help="default: results/approximate_speed.json")
    args = parser.parse_args()
    prior = mp.load(args.model)
    side = prior.event_shape[0]
    train = fields(jax.random.key(0), 512, side)
    deblur = tasks(side, float(train.std()), jax.random.key(7))[0]
    truth = fields(jax.random.key(123), 1, side)[0]
    y = deblur.observe(jax.random.key(5), truth)
    rows = []
    for run in range(args.runs):
        result = smc_result(
            deblur,
            prior,
            y,
            truth,
            jax.random.key(run),
            args.particles,
            False,
            args.pilot_steps,
            args.twist,
            None if args.sweeps is None else mp.SplitGibbs(args.sweeps),
        )
        row = {
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "pilot_steps": args.pilot_steps,
            "twist": args.twist,
            "sweeps": args.sweeps,
            "run": run,
            "seconds": result["seconds"],
            "seconds_per_100_draws": 100 * result["seconds"] / args.particles,
            "rmse": result["rmse"],
            "chi2_per_observation": result["chi2_per_observation"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_rows(args, rows, "approximate_speed.json")


if __name__ == "__main__":
    main()
