"""What each part of the default training recipe does to the learned density, on the paper's task.

    python benchmarks/density_ablation.py [--seeds 2]

The paper's correlated Cauchy task (d = 4; 8192 training and 1000 held-out points, drawn afresh
for each seed as in benchmarks/density.py). Each row adds one change to the row above, from the
0.2 recipe down to the defaults; the later rows vary the defaults. (benchmarks/weight_decay.py
measures the weight decay on every task of benchmarks/density.py.) We record the held-out gap to
the analytic log-density (nats per point; `log_prob` with 128 ODE steps, so that the integration error, below
0.01 nats there, does not enter), the same gap on the 5% largest norms of 8000 fresh draws, and
the wall-clock seconds of the fit on this machine.

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
    "defaults + t_eps = 1e-4": dict(t_eps=1e-4),
    "defaults + t_eps = 1e-5": dict(t_eps=1e-5),
    "defaults + tail emphasis 0.5": dict(tail_emphasis=0.5),
    "defaults + tail emphasis 0.5, t_eps = 1e-4": dict(tail_emphasis=0.5, t_eps=1e-4),
    "defaults + tail emphasis 0.5, t_eps = 1e-5": dict(tail_emphasis=0.5, t_eps=1e-5),
    "defaults + tail emphasis 0.25, t_eps = 1e-5": dict(tail_emphasis=0.25, t_eps=1e-5),
    "defaults + normalization='robust'": dict(normalization="robust"),
    "defaults + EMA 0.999": dict(ema_decay=0.999),
    "defaults + ScoreMLP width 256": dict(width=256),
    "defaults + weight decay 0.1 on the hidden layers": dict(weight_decay=0.1),
}


def fit(train, seed: int, recipe: dict):
    recipe = dict(recipe)
    noise_scaled = recipe.pop("noise_scaled", True)
    width = recipe.pop("width", None)
    net_key, build_normalization = jax.random.key(seed + 7), recipe.pop("normalization", "none")
    emphasis = recipe.pop("tail_emphasis", 0.0)
    model = mp.MSGM.build(
        train,
        key=jax.random.key(seed),
        normalization=build_normalization,
        t_eps=recipe.pop("t_eps", 1e-3),
        net=None if width is None else mp.ScoreMLP(4, key=net_key, width=width),
    )
    score = dataclasses.replace(model.score, noise_scaled=noise_scaled)
    model = type(model)(**{**model.constructor_arguments(), "score": score})
    weighting = recipe.pop("weighting", "likelihood")
    rate = recipe.pop("learning_rate", None)
    max_steps = recipe.pop("max_steps", model.default_max_steps())
    optimizer = mp.training.make_optimizer(
        mp.training.cosine_learning_rate(max_steps) if rate is None else rate,
        weight_decay=recipe.pop("weight_decay", 0.0),
    )
    return mp.train(
        model,
        train,
        key=jax.random.split(jax.random.key(seed), 3)[2],
        loss=model.loss(weighting=weighting),
        optimizer=optimizer,
        max_steps=max_steps,
        row_weights=model.tail_weights(train, emphasis),
        progress=False,
        **recipe,
    )


def largest_norms(truth, seed: int):
    """The 400 largest-norm points of 8000 fresh draws: the top 5% of the norms."""
    draws = np.asarray(truth.sample(jax.random.key(2000 + seed), (8000,)), np.float64)
    return draws[np.argsort(np.linalg.norm(draws, axis=1))[-400:]]


def gap(model, truth, x) -> float:
    log_p = np.asarray(model.log_prob(jnp.asarray(x, jnp.float32)), np.float64)
    return float(np.mean(np.asarray(truth.log_prob(jnp.asarray(x)), np.float64) - log_p))


def run(seed: int) -> dict:
    train, test, truth = task_data("cauchy4", seed)
    tail = largest_norms(truth, seed)
    result = {}
    for name, recipe in RECIPES.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = fit(train, seed, recipe)
        jax.block_until_ready(model.score)
        seconds = time.perf_counter() - start
        accurate = model.with_options(density=mp.ODEDensity(128))
        result[name] = {
            "gap_to_truth": gap(accurate, truth, test),
            "gap_at_top_5_percent_of_norms": gap(accurate, truth, tail),
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
        tail_gaps = np.array([run[name]["gap_at_top_5_percent_of_norms"] for run in runs])
        summary[name] = {
            "gap_at_top_5_percent_of_norms_mean": float(tail_gaps.mean()),
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
