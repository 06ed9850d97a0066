"""Where the default weight decay acts, and what it does on every task of benchmarks/density.py.

    python benchmarks/weight_decay.py [--seeds 2] [--tasks cauchy4 student16 ...]

The tasks and their data are those of benchmarks/density.py (the same seeds draw the same points),
and tutorial 02's prior: a random walk of 16 steps with Student-t jumps (ν = 2, scale 0.1),
8192 training and 1000 held-out signals. Each is fitted by `mp.MSGM.fit` with the default recipe
and three choices of AdamW's decoupled weight decay λ = 0.1 (Loshchilov & Hutter 2019): none
(the default), the hidden layers' weights (`weight_decay=0.1`: `msgm_pp.nets.hidden_weights`,
every layer after the first) and every weight matrix (the first layer's too; biases never). We record the held-out
log-likelihood (`log_prob` with 128 ODE steps), its gap to the truth where there is one, the same
gap on the first 1000 training points (a model that fits its training points' own directions
has a much smaller gap there: the generalisation gap is the difference), the fit's seconds, the
step whose parameters were kept and the best validation score (the validation points' negative
log-likelihood by a 32-step ODE; fits with the same key share their validation split). The row
"chosen by validation" is, seed by seed, whichever of none and the hidden layers has the lower
validation score: what choosing λ ∈ {0, 0.1} inside `fit` would give, at twice the cost.

Writes benchmarks/results/weight_decay.json.
"""

import time
import warnings

import density
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from _machine import run_tasks_and_seeds
from numpyro.distributions import transforms

import msgm_pp as mp


def random_walk(d: int = 16):
    """Tutorial 02's prior: x = L z, L lower-triangular ones, z_i iid Student-t(2, 0, 0.1)."""
    jumps = dist.StudentT(2.0, 0.0, 0.1).expand([d]).to_event(1)
    steps = transforms.LowerCholeskyAffine(jnp.zeros(d), jnp.tril(jnp.ones((d, d))))
    return dist.TransformedDistribution(jumps, steps)


TASKS = [*density.TASKS, "randomwalk16"]


def task_data(task: str, seed: int):
    if task != "randomwalk16":
        return density.task_data(task, seed)
    law = random_walk(16)
    train_key, test_key = jax.random.split(jax.random.key(1000 + seed))
    train = np.asarray(law.sample(train_key, (density.N_TRAIN,)), np.float64)
    return train, np.asarray(law.sample(test_key, (density.N_TEST,)), np.float64), law


def every_weight_matrix(params):
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def fit(train, seed: int, where: str):
    options = {"none (the default)": {}, "hidden layers": dict(weight_decay=0.1)}.get(where)
    if options is None:
        rate = mp.training.cosine_learning_rate(20000)
        options = dict(optimizer=optax.adamw(rate, weight_decay=0.1, mask=every_weight_matrix))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mp.MSGM.fit(train, key=jax.random.key(seed), progress=False, **options)


WHERE = ("none (the default)", "hidden layers", "every weight matrix")
CHOSEN = "chosen by validation (none or hidden layers)"


def mean_log_prob(model, x) -> float:
    return float(np.mean(np.asarray(model.log_prob(jnp.asarray(x, jnp.float32)), np.float64)))


def run(task: str, seed: int) -> dict:
    train, test, truth = task_data(task, seed)
    seen = train[:1000]
    if truth is not None:
        exact_test, exact_seen = (
            float(np.mean(np.asarray(truth.log_prob(jnp.asarray(x))))) for x in (test, seen)
        )
    result = {}
    for where in WHERE:
        start = time.perf_counter()
        model = fit(train, seed, where)
        jax.block_until_ready(model.score)
        seconds = time.perf_counter() - start
        model = model.with_options(density=mp.ODEDensity(128))
        entry = {
            "test_log_likelihood": mean_log_prob(model, test),
            "train_log_likelihood": mean_log_prob(model, seen),
            "fit_seconds": seconds,
            "best_step": model.history.best_step,
            "best_validation": float(np.min(model.history.validation_loss)),
        }
        if truth is not None:
            entry["gap_to_truth"] = exact_test - entry["test_log_likelihood"]
            entry["gap_on_training_points"] = exact_seen - entry["train_log_likelihood"]
        result[where] = entry
        print(task, seed, where, entry, flush=True)
    chosen = min(WHERE[:2], key=lambda where: result[where]["best_validation"])
    result[CHOSEN] = {**result[chosen], "hidden_layers_chosen": float(chosen == WHERE[1])}
    return result


def main():
    run_tasks_and_seeds(__doc__, TASKS, "benchmarks/results/weight_decay.json", run)


if __name__ == "__main__":
    main()
