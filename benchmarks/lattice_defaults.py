"""The lattice one-liner at its defaults: how long `MSGM.fit(fields, noise=LatticeNoise(shape))` takes.

    python benchmarks/lattice_defaults.py [--sides 8 32] [--n 512]

Fields are heavy-tailed and correlated: Student-t (ν = 3) white noise smoothed by a periodic
3×3 box filter. For each side we fit with every default (max_steps 5000, early stopping, the
automatic batch size and validation size) and record the wall-clock training time (compilation
included), the steps taken, the time per step, and the 0.99 and 0.999 quantiles of |x_i| in one
sampling chunk of drawn fields (2^18 values: 4096 fields of 8×8, 256 of 32×32, with the default
128 SDE steps) against as many held-out fields.

Writes benchmarks/results/lattice_defaults.json.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine

import msgm_pp as mp


def fields(key, n: int, side: int) -> np.ndarray:
    noise = jax.random.t(key, 3.0, (n, side, side))
    smoothed = sum(jnp.roll(noise, (a, b), axis=(1, 2)) for a in (-1, 0, 1) for b in (-1, 0, 1))
    return np.asarray(smoothed / 3.0)


def run(side: int, n: int) -> dict:
    train_key, test_key, fit_key, sample_key = jax.random.split(jax.random.key(side), 4)
    draws_n = max(256, 2**18 // side**2)  # one sampling chunk: 4096 fields of 8×8, 256 of 32×32
    train, test = fields(train_key, n, side), fields(test_key, draws_n, side)
    start = time.perf_counter()
    model = mp.MSGM.fit(train, key=fit_key, noise=mp.LatticeNoise((side, side)), progress=False)
    seconds = time.perf_counter() - start
    steps = len(model.history.train_loss)
    print(f"{side}×{side}: trained in {seconds:.0f} s, {steps} steps", flush=True)
    start = time.perf_counter()
    draws = np.asarray(model.sample(sample_key, (draws_n,)))
    sampling_seconds = time.perf_counter() - start
    quantiles = {
        str(level): {
            "model": float(np.quantile(np.abs(draws), level)),
            "held_out": float(np.quantile(np.abs(test), level)),
        }
        for level in (0.99, 0.999)
    }
    settings = dict(model.history.settings)
    return {
        "side": side,
        "n_train": n,
        "batch_size": settings["batch_size"],
        "training_seconds": seconds,
        "steps_taken": steps,
        "seconds_per_step": seconds / steps,
        "stop_reason": model.history.stop_reason,
        "fields_drawn": draws_n,
        "sampling_seconds": sampling_seconds,
        "abs_quantiles": quantiles,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/lattice_defaults.json")
    )
    args = parser.parse_args()
    rows = []
    for side in args.sides:
        rows.append(run(side, args.n))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
