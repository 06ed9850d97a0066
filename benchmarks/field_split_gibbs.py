"""The field benchmark's approximate draws before and after `mp.SplitGibbs` sweeps.

    python benchmarks/field_split_gibbs.py MODEL [--tasks deblur inpaint] [--fields 0 1]
        [--stochasticity 0.5] [--twists energy] [--sweeps 16] [--output PATH]

About 5 minutes per setting on one core (2 tasks × 2 fields by default). MODEL is a 32×32 lattice
MSGM of `inverse_fields.fields`; the tasks, held-out fields, observations and keys are those of
`inverse_fields.py` and `field_energy_twist.py`. Each setting runs
`mp.TwistedSMC(weighted=False, twist=...)` (128 particles, one pilot round) with
`mp.SDESampler(steps, η)`, then moves the same run's draws by the sweeps of
`mp.SplitGibbs(sweeps)` with the key that `TwistedSMC(refine=...)` would use, so the refined rows
are what `refine=` gives and both rows start from the same draws. Recorded for both: the seconds
(the run's include compiling it, the sweeps' compiling them), the draws' median χ² per
observation (about 1 for draws that fit the data), log-norm and peak-to-norm, and the RMSE,
coverage and extremes RMSE of their mean. Writes benchmarks/results/field_split_gibbs.json (or
`--output`).
"""

import argparse
import json
import time

import jax
import numpy as np
from _machine import write_rows
from field_data_fit import draw_summary
from inverse_fields import TWISTS, fields
from inverse_fields import tasks as field_tasks

import msgm_pp as mp
from msgm_pp.posterior import _model_split_gibbs
from msgm_pp.smc import process_of


def approximate_and_refined(task, prior, y, key, twist, sweeps, particles) -> list[tuple]:
    """[(draws, seconds)] of the approximate run and of its draws after the sweeps."""
    smc = mp.TwistedSMC(
        task.model,
        num_particles=particles,
        norm_rounds=1,
        weighted=False,
        twist=twist,
        progress=False,
    )
    start = time.perf_counter()
    smc.run(key, prior, y=y)
    run = jax.block_until_ready(smc._runs[0])
    run_seconds = time.perf_counter() - start
    chain_key = jax.random.split(key, 2)[1]  # as TwistedSMC.run splits it for one chain
    args, kwargs = smc._model_arguments
    start = time.perf_counter()
    refined, _ = _model_split_gibbs(
        task.model,
        smc._parts,
        process_of(prior),
        args,
        kwargs,
        jax.random.fold_in(chain_key, 1),
        run,
        mp.SplitGibbs(sweeps),
        prior.sampler.steps,
    )
    refined_x = jax.block_until_ready(refined.x)
    sweep_seconds = time.perf_counter() - start
    return [
        (np.asarray(x, np.float64).reshape(particles, -1), seconds)
        for x, seconds in ((run.x, run_seconds), (refined_x, sweep_seconds))
    ]


def run(model, task_names, field_indices, etas, twists, sweeps, particles=128) -> list[dict]:
    side = model.event_shape[0]
    keys = jax.random.split(jax.random.key(0), 8)
    train = fields(keys[0], 512, side)
    truths = fields(keys[3], max(field_indices) + 1, side)
    rows = []
    for task in field_tasks(side, float(train.std()), keys[4]):
        if task.name not in task_names:
            continue
        for field in field_indices:
            y = task.observe(jax.random.fold_in(keys[5], field), truths[field])
            key = jax.random.fold_in(keys[6], field)
            for eta in etas:
                prior = model.with_options(sampler=mp.SDESampler(model.sampler.steps, eta))
                for twist in twists:
                    pair = approximate_and_refined(
                        task, prior, y, key, TWISTS[twist], sweeps, particles
                    )
                    for (draws, seconds), refined in zip(pair, (False, True), strict=True):
                        row = {
                            "task": task.name,
                            "field": field,
                            "stochasticity": eta,
                            "twist": twist,
                            "sweeps": sweeps if refined else 0,
                            "seconds": seconds,
                            **draw_summary(task, y, truths[field], draws),
                        }
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--tasks", nargs="+", choices=["deblur", "inpaint"])
    parser.add_argument("--fields", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--stochasticity", nargs="+", type=float, default=[0.5])
    parser.add_argument("--twists", nargs="+", choices=sorted(TWISTS), default=["energy"])
    parser.add_argument("--sweeps", type=int, default=mp.SplitGibbs().sweeps)
    parser.add_argument("--output", help="default: results/field_split_gibbs.json")
    args = parser.parse_args()
    tasks = args.tasks or ["deblur", "inpaint"]
    model = mp.load(args.model)
    rows = run(model, tasks, args.fields, args.stochasticity, args.twists, args.sweeps)
    write_rows(args, rows, "field_split_gibbs.json")


if __name__ == "__main__":
    main()
