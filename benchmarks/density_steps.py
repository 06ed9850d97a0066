"""How far the probability-flow log-density is from its converged value at each number of ODE
steps, plain and extrapolated (`mp.ODEDensity(steps, extrapolate=True)`), for trained models.

    python benchmarks/density_steps.py [--tasks student8 cauchy4] [--out PATH]

For each task of benchmarks/density.py (seed 0's data) an MSGM is fitted once (`weight_decay=0.1`,
the default network) in the data's own coordinates and once whitened by Tyler's shape matrix
(`normalization="shape"`, under which elliptical data have nearly uniform directions). We record
the mean held-out `log_prob` at 16 to 512 plain Heun steps and extrapolated from 32, 64 and 128
steps, each as its difference from the extrapolated 512-step value (the reference), with the
seconds of one evaluation of the 1000 points after compilation. Heun's error is about c/steps²
with c > 0 (the plain solve reads high), and c grows with the concentration of the angular
law: this is why the validation criterion of `MSGM.fit` extrapolates (with 32 plain steps it
preferred the data's own coordinates to the whitened ones on the Student-t while the held-out
likelihood said the opposite).

Writes benchmarks/results/density_steps.json.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import density
import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine

import msgm_pp as mp

PLAIN = (16, 32, 64, 128, 256, 512)
EXTRAPOLATED = (32, 64, 128, 512)


def mean_log_prob(model, test, density_setting) -> tuple[float, float]:
    """Mean log_prob over `test` and the seconds of one compiled evaluation."""
    log_prob = jax.jit(model.with_options(density=density_setting).log_prob)
    jax.block_until_ready(log_prob(test))
    start = time.perf_counter()
    values = jax.block_until_ready(log_prob(test))
    return float(np.mean(np.asarray(values, np.float64))), time.perf_counter() - start


def run(task: str) -> dict:
    train, test, _ = density.task_data(task, 0)
    test = jnp.asarray(test, jnp.float32)
    rows = {}
    for normalization in ("none", "shape"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = mp.MSGM.fit(
                train,
                key=jax.random.key(0),
                weight_decay=0.1,
                normalization=normalization,
                progress=False,
            )
        values = {}
        for steps in PLAIN:
            values[f"{steps} steps"] = mean_log_prob(model, test, mp.ODEDensity(steps))
        for steps in EXTRAPOLATED:
            setting = mp.ODEDensity(steps, extrapolate=True)
            values[f"{steps} steps, extrapolated"] = mean_log_prob(model, test, setting)
        reference = values[f"{EXTRAPOLATED[-1]} steps, extrapolated"][0]
        rows[normalization] = {
            "reference_log_likelihood": reference,
            **{
                name: {"minus_reference": value - reference, "seconds": seconds}
                for name, (value, seconds) in values.items()
            },
        }
        print(task, normalization, json.dumps(rows[normalization], indent=1), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["student8", "cauchy4"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/density_steps.json"))
    args = parser.parse_args()
    results = {"machine": machine(), "tasks": {task: run(task) for task in args.tasks}}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
