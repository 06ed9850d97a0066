"""Does a lattice MSGM's learned drift move energy back against the forward diffusion?

    python benchmarks/lattice_energy_flux.py MODEL [MODEL ...] [--taus 0.3 3 10]

Seconds per model. MODEL is a lattice MSGM of `inverse_fields.fields`, for instance one saved by
`lattice_sparse.py --save-models DIR`. 64 fresh fields are run forward to τ (steps of at most
0.05 in τ, at least 64). There the forward process moves the energy e = u² by the discrete heat
equation, E[de_i] = ½ Σ_{j~i} (e_j − e_i) dτ = Δe_i dτ, and the reverse SDE's noise spreads it at
the same rate, so a reverse drift that brings sparse fields back has to move energy along −Δe
faster than that. The learned drift's energy rate is r_i = 2 u_i (Σ(u) g)_i, with Σ(u) g the
rotation that `rotation_step` applies per unit of τ. Reported: the least-squares coefficient
k of r on −Δe over all sites and fields (the reverse dynamics concentrate energy only where
k > 1; 0 is no transport), and the fraction
of |r|² that −Δe leaves unexplained.
Writes benchmarks/results/lattice_energy_flux.json (or `--output`).
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import write_rows
from inverse_fields import fields, with_energy

import msgm_pp as mp
from msgm_pp.forward import simulate_directions


def energy_transport(model, tau: float) -> dict:
    score, noise = model.score, model.score.noise
    side = noise.event_shape[0]
    data = fields(jax.random.key(5), 64, side)
    data = with_energy(data)
    u0, log_r = model.training_data(data)
    steps = max(64, round(tau / 0.05))
    u = simulate_directions(noise, u0, jnp.full(len(u0), tau), jax.random.key(3), steps)
    s = float(score.schedule.inverse_integral(tau))
    g = jax.vmap(score, in_axes=(0, 0, None))(u, log_r, s)
    drift = jax.vmap(noise._diffusion)(u, g)
    rate = np.asarray(2.0 * u * drift, np.float64).reshape(-1, *noise.event_shape)
    energy = np.asarray(u, np.float64).reshape(-1, *noise.event_shape) ** 2
    laplacian = 0.5 * sum(np.roll(energy, k, a) - energy for a in (1, 2) for k in (1, -1))
    k = float(np.sum(rate * -laplacian) / np.sum(laplacian**2))
    unexplained = float(np.sum((rate + k * laplacian) ** 2) / np.sum(rate**2))
    return {"tau": tau, "k": k, "unexplained": unexplained}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.3, 3.0, 10.0])
    parser.add_argument("--output", help="default: results/lattice_energy_flux.json")
    args = parser.parse_args()
    rows = []
    for path in args.models:
        model = mp.load(path)
        for tau in args.taus:
            row = {"model": Path(path).name, **energy_transport(model, tau)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_rows(args, rows, "lattice_energy_flux.json")


if __name__ == "__main__":
    main()
