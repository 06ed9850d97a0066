"""How much noise the reverse dynamics of a lattice MSGM should keep: draws for each stochasticity.

    python benchmarks/lattice_stochasticity.py MODEL [--draws 128] [--steps 128 512]
        [--stochasticity 1 0.7 0.5 0.3 0.2 0.1] [--output PATH]

About 10 minutes on 2 cores for a 32×32 model. MODEL is a lattice MSGM of `inverse_fields.fields`,
for instance one saved by `lattice_sparse.py --save-models DIR`. `mp.SDESampler(steps,
stochasticity=η)` runs dy = ½(1 + η²) β Σ∇log p dt + η √β G ∘ dW: with the exact score every η
draws from the same law (η = 1 is the reverse SDE, η → 0 the probability-flow ODE), with a learned
one they differ. For each number of steps and each η the script draws `--draws` fields from the
same latent points and noise and scores them as `lattice_sparse.py` does (peak-to-norm, energy
concentration d · mean Σu_i⁴ with its standard error over fields, lag-1 correlation), beside the
training fields and the ODE sampler (Heun) with as many steps.

Writes benchmarks/results/lattice_stochasticity_<side>.json (or `--output`).
"""

import argparse
import json
import time

import jax
import numpy as np
from _machine import write_rows
from inverse_fields import fields, with_energy
from lattice_sparse import energy_concentration, sparsity

import msgm_pp as mp


def scores(x) -> dict:
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    _, standard_error = energy_concentration(flat / np.linalg.norm(flat, axis=1, keepdims=True))
    return {**sparsity(np.asarray(x)), "energy_concentration_se": standard_error}


def run(model, draws: int, step_counts: list[int], etas: list[float]) -> list[dict]:
    side = model.event_shape[0]
    train = with_energy(fields(jax.random.key(0), 512 if side > 8 else 2048, side))
    rows = [{"sampler": "training fields", **scores(train)}]
    print(json.dumps(rows[0]), flush=True)
    for steps in step_counts:
        samplers = {f"SDE {steps}, η = {eta:g}": mp.SDESampler(steps, eta) for eta in etas}
        samplers[f"ODE {steps}"] = mp.ODESampler(steps)
        for name, sampler in samplers.items():
            start = time.perf_counter()
            x = model.with_options(sampler=sampler).sample(jax.random.key(2), (draws,))
            x = np.asarray(x)
            row = {
                "sampler": name,
                "steps": steps,
                "stochasticity": getattr(sampler, "stochasticity", 0.0),
                "seconds": time.perf_counter() - start,
                **scores(x),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--draws", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[128, 512])
    parser.add_argument(
        "--stochasticity", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3, 0.2, 0.1]
    )
    parser.add_argument("--output", help="default: results/lattice_stochasticity_<side>.json")
    args = parser.parse_args()
    model = mp.load(args.model)
    rows = run(model, args.draws, args.steps, args.stochasticity)
    write_rows(args, rows, f"lattice_stochasticity_{model.event_shape[0]}.json")


if __name__ == "__main__":
    main()
