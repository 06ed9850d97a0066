"""What each part of the default training recipe does to the learned density, on the paper's task.

    python benchmarks/density_ablation.py [--seeds 2]

The paper's correlated Cauchy task (d = 4; 8192 training and 1000 held-out points, drawn afresh
for each seed as in benchmarks/density.py). Each row adds one change to the row above, starting
from the 0.2 recipe; the last rows vary the final one. We record the held-out gap to the analytic
log-density (nats per point; `log_prob` with 128 ODE steps, so that the integration error, below
0.01 nats there, does not enter) and the wall-clock seconds of the fit on this machine.

Writes benchmarks/results/density_ablation.json.
"""

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import machine
from density import task_data

import msgm_pp as mp

OLD = dict(max_steps=5000, eval_every=250, patience=10, validation="loss")
RECIPES = {
    "0.2 recipe: variance weighting, Adam 1e-3, 5000 steps, loss validation": dict(
        OLD, weighting="variance", learning_rate=1e-3, noise_scaled=False
    ),
    "+ likelihood weighting (importance-sampled times)": dict(
        OLD, learning_rate=1e-3, noise_scaled=False
    ),
    "+ noise-scaled score": dict(OLD, learning_rate=1e-3),
    "+ likelihood validation": dict(OLD, learning_rate=1e-3, validation="likelihood"),
    "+ cosine schedule, peak 3e-3, 20000 steps, patience 20 x 500 (the defaults)": {},
    "defaults + normalization='robust'": dict(normalization="robust"),
    "defaults + EMA 0.999": dict(ema_decay=0.999),
    "defaults + ScoreMLP width 256": dict(width=256),
}


def fit(train, seed: int, recipe: dict):
    recipe = dict(recipe)
    noise_scaled = recipe.pop("noise_scaled", True)
    width = recipe.pop("width", None)
    net_key, build_normalization = jax.random.key(seed + 7), recipe.pop("normalization", "none")
    model = mp.MSGM.build(
        train,
        key=jax.random.key(seed),
        normalization=build_normalization,
        net=None if width is None else mp.ScoreMLP(4, key=net_key, width=width),
    )
    score = dataclasses.replace(model.score, noise_scaled=noise_scaled)
    model = type(model)(**{**model.constructor_arguments(), "score": score})
    weighting = recipe.pop("weighting", "likelihood")
    rate = recipe.pop("learning_rate", None)
    max_steps = recipe.pop("max_steps", model.default_max_steps())
    optimizer = optax.adam(mp.training.cosine_learning_rate(max_steps) if rate is None else rate)
    return mp.train(
        model,
        train,
        key=jax.random.split(jax.random.key(seed), 3)[2],
        loss=model.loss(weighting=weighting),
        optimizer=optimizer,
        max_steps=max_steps,
        progress=False,
        **recipe,
    )


def run(seed: int) -> dict:
    train, test, truth = task_data("cauchy4", seed)
    truth_log_p = np.asarray(truth.log_prob(jnp.asarray(test)), np.float64)
    result = {}
    for name, recipe in RECIPES.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = fit(train, seed, recipe)
        jax.block_until_ready(model.score)
        seconds = time.perf_counter() - start
        accurate = model.with_options(density=mp.ODEDensity(128))
        log_p = np.asarray(accurate.log_prob(jnp.asarray(test, jnp.float32)), np.float64)
        result[name] = {
            "gap_to_truth": float(np.mean(truth_log_p - log_p)),
            "fit_seconds": seconds,
            "steps_taken": int(model.history.train_loss.size),
            "best_step": model.history.best_step,
        }
        print(seed, name, result[name], flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/density_ablation.json")
    )
    args = parser.parse_args()
    runs = [run(seed) for seed in range(args.seeds)]
    summary = {}
    for name in RECIPES:
        gaps = np.array([run[name]["gap_to_truth"] for run in runs])
        summary[name] = {
            "gap_to_truth_mean": float(gaps.mean()),
            "gap_to_truth_stderr": float(gaps.std(ddof=1) / np.sqrt(len(gaps)))
            if len(gaps) > 1
            else None,
            "fit_seconds_mean": float(np.mean([run[name]["fit_seconds"] for run in runs])),
        }
    result = {"machine": machine(), "seeds": args.seeds, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
