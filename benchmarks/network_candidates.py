"""The fits that `MSGM.fit` chooses from by default, on every density task and on independent
coordinates.

    python benchmarks/network_candidates.py [--seeds 2] [--tasks iid4 student16 ...] [--out PATH]

Tasks: those of benchmarks/weight_decay.py (the density.py tasks, with the same data for the same
seed, and tutorial 02's random walk), and independent Cauchy coordinates of one scale (1/50) at
d = 4 and d = 16 ("iid4", "iid16": `CorrelatedCauchy(np.eye(d))`, 8192 training and 1000 held-out
points), whose angular law has no quadratic part.

For each task and seed, every candidate (each network of `msgm_pp.msgm.DEFAULT_NETWORKS` in each
coordinates of `DEFAULT_NORMALIZATIONS`) is fitted alone, exactly as `MSGM.fit(train, key=k)`
fits it: `MSGM.fit(train, key=k, net=ScoreMLP(d, key=split(k, 3)[1], direction_scale=c),
weight_decay=λ, normalization=name)`, the network initialisation that `build` makes
(tests/test_msgm.py checks that the default fit is bit for bit the candidate it keeps). We
record the held-out log-likelihood (`log_prob` with 128 ODE steps, extrapolated: within about
0.001 nats of the converged value, benchmarks/density_steps.py), its gap to the truth where
there is one, the best validation score in nats per point of the data (the validation points'
negative log-likelihood by the extrapolated 32-step ODE, minus log |det W| of the coordinates;
the candidates share their validation rows), the standard error of its per-row difference
from the lowest-scoring candidate (`score_based.paired_standard_errors`) and the fit's seconds.
The row "the default fit" is, seed by seed, the candidate that `MSGM.fit` returns, the lowest
validation score (`mp.lowest_validation_score`), with the sum of the fits' seconds; the row
"one-standard-error rule" is the one that `MSGM.fit(selection=mp.one_standard_error_rule)`
keeps: the first candidate, in the order above, within one standard error of the lowest. The
maximum-likelihood Student-t (benchmarks/_comparison.py) is the elliptical reference.

Writes benchmarks/results/network_candidates.json.
"""

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import weight_decay
from _comparison import student_t_fit
from _machine import run_tasks_and_seeds
from scipy import stats

import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy
from msgm_pp.msgm import DEFAULT_NETWORKS, DEFAULT_NORMALIZATIONS
from msgm_pp.score_based import paired_standard_errors, validation_nats, validation_score

INDEPENDENT = {"iid4": 4, "iid16": 16}
TASKS = [*weight_decay.TASKS, *INDEPENDENT]
CANDIDATES = {
    f"normalization={name}, direction_scale={scale:g}, weight_decay={decay:g}": (name, scale, decay)
    for name in DEFAULT_NORMALIZATIONS
    for scale, decay in DEFAULT_NETWORKS
}
DEFAULT = "the default fit (lowest validation score)"
ONE_STANDARD_ERROR = "one-standard-error rule"
REFERENCE = "Student-t (ML)"


def task_data(task: str, seed: int):
    if task not in INDEPENDENT:
        return weight_decay.task_data(task, seed)
    law = CorrelatedCauchy(np.eye(INDEPENDENT[task]))
    train_key, test_key = jax.random.split(jax.random.key(1000 + seed))
    train = np.asarray(law.sample(train_key, (8192,)), np.float64)
    return train, np.asarray(law.sample(test_key, (1000,)), np.float64), law


def fit(train, seed: int, normalization: str, direction_scale: float, decay: float):
    key = jax.random.key(seed)
    net = mp.ScoreMLP(
        train.shape[1], key=jax.random.split(key, 3)[1], direction_scale=direction_scale
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mp.MSGM.fit(
            train,
            key=key,
            net=net,
            weight_decay=decay,
            normalization=normalization,
            progress=False,
        )


def run(task: str, seed: int) -> dict:
    train, test, truth = task_data(task, seed)
    exact = (
        float(np.mean(np.asarray(truth.log_prob(jnp.asarray(test))))) if truth is not None else None
    )
    start = time.perf_counter()
    nu, mu, sigma = student_t_fit(train)
    result = {
        REFERENCE: {
            "test_log_likelihood": float(
                stats.multivariate_t(mu, sigma, df=nu).logpdf(test).mean()
            ),
            "fit_seconds": time.perf_counter() - start,
        }
    }
    terms = {}
    for label, choice in CANDIDATES.items():
        start = time.perf_counter()
        model = fit(train, seed, *choice)
        terms[label] = validation_nats(
            model, train, key=jax.random.split(jax.random.key(seed), 3)[2]
        )
        jax.block_until_ready(model.score)
        seconds = time.perf_counter() - start
        density = mp.ODEDensity(128, extrapolate=True)
        log_p = model.with_options(density=density).log_prob(jnp.asarray(test))
        result[label] = {
            "test_log_likelihood": float(np.mean(np.asarray(log_p, np.float64))),
            "fit_seconds": seconds,
            "best_validation": validation_score(model),
        }
        print(task, seed, label, result[label], flush=True)
    scores = {label: result[label]["best_validation"] for label in CANDIDATES}
    standard_errors = paired_standard_errors(terms, mp.lowest_validation_score(scores, {}))
    for label, standard_error in standard_errors.items():
        result[label]["validation_standard_error"] = standard_error
    for row, selection in (
        (DEFAULT, mp.lowest_validation_score),
        (ONE_STANDARD_ERROR, mp.one_standard_error_rule),
    ):
        kept = selection(scores, standard_errors)
        result[row] = {
            **result[kept],
            "fit_seconds": sum(result[label]["fit_seconds"] for label in CANDIDATES),
            **{f"chose {label}": float(label == kept) for label in CANDIDATES},
        }
    if exact is not None:
        for entry in result.values():
            entry["gap_to_truth"] = exact - entry["test_log_likelihood"]
    return result


def main():
    run_tasks_and_seeds(__doc__, TASKS, "benchmarks/results/network_candidates.json", run)


if __name__ == "__main__":
    main()
