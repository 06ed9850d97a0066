"""The field benchmark's approximate draws with `mp.EnergyTwist` against the default `mp.TweedieTwist`.

    python benchmarks/field_energy_twist.py MODEL [--tasks deblur inpaint] [--fields 0 1]
        [--stochasticity 1 0.5] [--known-norm] [--twists tweedie energy] [--repeats 1]
        [--output PATH]

About 4 minutes per run on one core (2 tasks × 2 fields × 2 stochasticities × 2 twists = 16 runs
by default). MODEL is a 32×32 lattice MSGM of `inverse_fields.fields`; the tasks, held-out fields,
observations and keys are those of `inverse_fields.py`. Each run is
`mp.TwistedSMC(weighted=False, twist=...)` (128 particles, one pilot round, the
`field_data_fit.approximate_draws` of `field_data_fit.py`) with `mp.SDESampler(steps, η)`; with
`--known-norm` the model's norm law is replaced by a point at the truth's norm (as in
`field_data_fit.py`). Recorded: the draws' median χ² per observation (about 1 for draws that fit
the data), log-norm and peak-to-norm, and the RMSE, coverage and extremes RMSE of their mean.
With `--repeats n`, each setting runs n times with different keys (the first is the key of a
single run), to show how much runs vary.
Writes benchmarks/results/field_energy_twist.json (or `--output`).
"""

import argparse
import json

import jax
from _machine import write_rows
from field_data_fit import approximate_draws, draw_summary, variants
from inverse_fields import TWISTS, fields
from inverse_fields import tasks as field_tasks

import msgm_pp as mp


def run(
    model, task_names, field_indices, etas, known_norm, twists, repeats=1, particles=128
) -> list[dict]:
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
            prior = variants(model, truths[field])["norm known" if known_norm else "learned"]
            for eta in etas:
                conditioned = prior.with_options(sampler=mp.SDESampler(model.sampler.steps, eta))
                for twist in twists:
                    for repeat in range(repeats):
                        key = jax.random.fold_in(keys[6], field)
                        key = key if repeat == 0 else jax.random.fold_in(key, repeat)
                        draws = approximate_draws(
                            task, conditioned, y, key, particles, TWISTS[twist]
                        )
                        row = {
                            "task": task.name,
                            "field": field,
                            "stochasticity": eta,
                            "known_norm": known_norm,
                            "twist": twist,
                            "repeat": repeat,
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
    parser.add_argument("--stochasticity", nargs="+", type=float, default=[1.0, 0.5])
    parser.add_argument("--known-norm", action="store_true")
    parser.add_argument("--twists", nargs="+", choices=sorted(TWISTS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", help="default: results/field_energy_twist.json")
    args = parser.parse_args()
    tasks = args.tasks or ["deblur", "inpaint"]
    twists = args.twists or ["tweedie", "energy"]
    model = mp.load(args.model)
    rows = run(model, tasks, args.fields, args.stochasticity, args.known_norm, twists, args.repeats)
    write_rows(args, rows, "field_energy_twist.json")


if __name__ == "__main__":
    main()
