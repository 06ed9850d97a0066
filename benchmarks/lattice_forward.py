"""How many forward steps a lattice draw of u_τ needs: the energy a coarse step cannot spread.

    python benchmarks/lattice_forward.py [--side 32] [--taus 1 3 10 30 100] [--steps 4 16 64 256 1024]

About 5 minutes on 2 cores. 256 fields of `inverse_fields.fields` are run forward to τ by
`forward.simulate_directions` with each number of steps (τ/steps per step, two keys each), and
the mean energy concentration d·Σu_i⁴ of the results is reported with its standard error over
fields. One step of `LatticeNoise` is a Strang sweep of nearest-neighbour rotations, so it moves
energy at most a few sites however large the step: a coarse step under-spreads. Training draws
u_τ with `forward_steps` = 16 steps (`MSGM.fit`) for every τ up to τ(T) (360 at 32×32), and the
reverse SDE spends its steps on the same kind of sweep, so a bias here is a bias in both.
Writes benchmarks/results/lattice_forward.json (or `--output`).
"""

import argparse
import json

import jax
import jax.numpy as jnp
from _machine import write_rows
from inverse_fields import fields, with_energy
from lattice_sparse import energy_concentration

import msgm_pp as mp
from msgm_pp.forward import simulate_directions


def run(side: int, taus: list[float], step_counts: list[int]) -> list[dict]:
    data = fields(jax.random.key(5), 256, side).reshape(256, -1)
    data = with_energy(data)
    u0 = data / jnp.linalg.norm(data, axis=1, keepdims=True)
    noise = mp.LatticeNoise((side, side))
    mean, error = energy_concentration(u0)
    rows = [{"tau": 0.0, "steps": 0, "seed": 0, "energy_concentration": mean, "se": error}]
    for tau in taus:
        for steps in step_counts:
            for seed in range(2):
                u = simulate_directions(
                    noise, u0, jnp.full(len(u0), tau), jax.random.key(seed), steps
                )
                mean, error = energy_concentration(u)
                row = {"tau": tau, "steps": steps, "seed": seed}
                row |= {"energy_concentration": mean, "se": error}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--taus", type=float, nargs="+", default=[1.0, 3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16, 64, 256, 1024])
    parser.add_argument("--output", help="default: results/lattice_forward.json")
    args = parser.parse_args()
    rows = run(args.side, args.taus, args.steps)
    write_rows(args, rows, "lattice_forward.json")


if __name__ == "__main__":
    main()
