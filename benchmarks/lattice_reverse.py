"""Where a lattice MSGM's learned score fails: noise training-like fields to τ, run it back.

    python benchmarks/lattice_reverse.py MODEL [--taus 0.03 0.3 1 3 10 30] [--steps 256]

MODEL is a lattice MSGM fitted to `inverse_fields.fields` of its grid, for instance one saved by
`lattice_sparse.py --save-models DIR`. About 15 minutes at 32×32 on 2 cores.

For each τ, 128 fresh fields (not the training ones) are noised to τ by the forward process (steps
of 0.1 in τ, at least 16) and then run back to t_ε by the reverse SDE with the learned score, on
`--steps` steps of `time_grid` between t_ε and the time of τ. With the true score the reversed
fields have the law of the data, so their sparsity scores (those of `lattice_sparse.py`) should
return to the data's; where they do not, the score is wrong somewhere below τ.

Writes benchmarks/results/lattice_reverse_<side>.json (or `--output`).
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from _machine import write_rows
from inverse_fields import fields, with_energy
from lattice_sparse import sparsity

import msgm_pp as mp
from msgm_pp.forward import simulate_directions
from msgm_pp.samplers import reverse_over
from msgm_pp.schedule import LinearSchedule, time_grid


def reverse_from(score, u, log_r, s_start, steps: int, key):
    """`samplers.reverse_directions`' SDE, started at time `s_start` instead of T."""
    schedule = score.schedule
    truncated = LinearSchedule(schedule.beta_min, float(schedule.beta(s_start)), s_start)
    times = time_grid(truncated, score.t_eps, steps, u.dtype)[::-1]
    sampler = mp.SDESampler(steps)
    return jax.jit(lambda u: reverse_over(score, u, log_r, key, sampler, times))(u)


def run(path: str, taus: list[float], steps: int):
    model = mp.load(path)
    return model.score.noise.event_shape, reverse_rows(model, taus, steps)


def reverse_rows(model, taus: list[float], steps: int) -> list[dict]:
    """The sparsity scores of 128 fresh fields noised to each τ and of the same run back."""
    score = model.score
    shape = score.noise.event_shape
    data = fields(jax.random.key(5), 128, shape[0])
    data = with_energy(data)
    u0, log_r = model.training_data(data)
    scores = lambda u: sparsity(np.asarray(u).reshape(-1, *shape))
    rows = [{"tau": 0.0, "noised": scores(u0), "reversed": scores(u0)}]
    for tau in taus:
        noised = simulate_directions(
            score.noise, u0, jnp.full(len(u0), tau), jax.random.key(3), max(16, round(tau / 0.1))
        )
        s_start = float(score.schedule.inverse_integral(tau))
        back = reverse_from(score, noised, log_r, s_start, steps, jax.random.key(4))
        row = {"tau": tau, "noised": scores(noised), "reversed": scores(back)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.03, 0.3, 1.0, 3.0, 10.0, 30.0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--output", help="default: results/lattice_reverse_<side>.json")
    args = parser.parse_args()
    shape, rows = run(args.model, args.taus, args.steps)
    write_rows(args, rows, f"lattice_reverse_{shape[0]}.json")


if __name__ == "__main__":
    main()
