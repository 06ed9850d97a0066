"""How the lattice network's inputs and first state decide whether it learns 32×32 sparse fields.

    python benchmarks/lattice_inputs.py [--side 32] [--steps 1000]

About 8 minutes on 2 cores. The fields are `inverse_fields.fields` (sparse Student-t sources
smoothed by a periodic Gaussian kernel), whose v = u√d reaches about 12 at the peaks. To isolate
the small times, where a field's local structure forms, each network is trained on τ ∈ [0.05, 0.2]
only (a constant β and t_ε = T/4), with the validation loss on noised held-out fields every 250
steps. The zero score has loss 0; lower is better. Variants of `LatticeScoreNet`:

- "linear, random last layer": the 0.4 network (inputs v and v² − 1);
- "linear, zero last layer": the same inputs, starting from the zero score;
- "log, zero last layer": asinh v and log(1 + v²) − log 2, the 0.5 default.

Writes benchmarks/results/lattice_inputs.json (or `--output`).
"""

import argparse
import json
import time

import equinox as eqx
import jax
import numpy as np
from _machine import write_rows
from inverse_fields import fields, with_energy

import msgm_pp as mp

VARIANTS = {
    "linear, random last layer": ("linear", False),
    "linear, zero last layer": ("linear", True),
    "log, zero last layer": ("log", True),
}


def network(side: int, inputs: str, zero_last_layer: bool):
    # The 0.4 and 0.5 networks this compares had the linear potential.
    net = mp.LatticeScoreNet((side, side), key=jax.random.key(7), inputs=inputs, potential="linear")
    if zero_last_layer:
        return net
    random_last = eqx.nn.Conv(
        2,
        net.project.in_channels,
        2,
        3,
        padding="SAME",
        padding_mode="CIRCULAR",
        key=jax.random.key(8),
    )
    return eqx.tree_at(lambda n: n.project, net, random_last)


def run(side: int, steps: int, tau_low: float = 0.05, tau_high: float = 0.2):
    train = fields(jax.random.key(0), 512, side)
    train = with_energy(train)
    schedule = mp.LinearSchedule(beta_min=tau_high, beta_max=tau_high, T=1.0)
    rows = []
    for name, (inputs, zero_last_layer) in VARIANTS.items():
        start = time.perf_counter()
        model = mp.MSGM.fit(
            train,
            key=jax.random.key(1),
            noise=mp.LatticeNoise((side, side)),
            net=network(side, inputs, zero_last_layer),
            schedule=schedule,
            t_eps=tau_low / tau_high,
            max_steps=steps,
            eval_every=250,
            patience=None,
            progress=False,
        )
        row = {
            "network": name,
            "validation_steps": np.asarray(model.history.validation_step).tolist(),
            "validation_loss": np.asarray(model.history.validation_loss).tolist(),
            "training_seconds": time.perf_counter() - start,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--output", help="default: results/lattice_inputs.json")
    args = parser.parse_args()
    rows = run(args.side, args.steps)
    write_rows(args, rows, "lattice_inputs.json")


if __name__ == "__main__":
    main()
