"""Does a lattice MSGM learn sparse fields? The draws' sparsity for each network and loss weighting.

    python benchmarks/lattice_sparse.py [--side 8] [--n 2048] [--steps 5000] [--draws 256]
        [--nets plain multiplicative] [--weightings capped likelihood] [--save-models DIR]

8×8 with every network takes about 25 minutes on 2 cores; the field benchmark's size,
`--side 32 --n 512 --draws 64 --nets multiplicative`, about 20.

Training fields are `inverse_fields.fields`: sparse Student-t sources smoothed by a periodic
Gaussian kernel, the fields of the field benchmark, here on a small grid where a fit takes minutes.
For `LatticeScoreNet(multiplicative=False)` (the plain CNN of 0.3) and `multiplicative=True`, each
with the likelihood and the variance weighting, we fit with the other defaults and draw `--draws`
fields with three samplers. Each set of fields is scored by

- peak-to-norm: the median of max|x_i| / |x|;
- energy concentration: d · mean Σ u_i⁴ for u = x/|x| (3d/(d + 2) for white noise, larger where
  a field's energy sits in a few sites);
- lag-1 correlation: the mean of Σ u_i u_{i+e} over the two axes (smoothness).

The training fields and white noise give the two ends of each scale.

Writes benchmarks/results/lattice_sparse_<side>.json (or `--output`).
"""

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from _machine import write_rows
from inverse_fields import fields, peak_to_norm, with_energy

import msgm_pp as mp
from msgm_pp.losses import WEIGHTINGS

SAMPLERS = {
    "SDE 128": mp.SDESampler(128),
    "SDE 512": mp.SDESampler(512),
    "ODE 128": mp.ODESampler(128),
}


def energy_concentration(u) -> tuple[float, float]:
    """Mean and standard error over fields of d·Σu_i⁴ (3d/(d + 2) for a uniform direction) for
    unit fields u of shape (n, d)."""
    u = np.asarray(u, np.float64)
    values = u.shape[1] * np.sum(u**4, axis=1)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def sparsity(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    flat = x.reshape(len(x), -1)
    u_flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    u = u_flat.reshape(x.shape)
    lag1 = np.mean(
        [np.sum(u * np.roll(u, 1, axis), axis=(1, 2)).mean() for axis in (1, 2)], dtype=float
    )
    return {
        "peak_to_norm": peak_to_norm(x),
        "energy_concentration": energy_concentration(u_flat)[0],
        "lag1_correlation": float(lag1),
    }


def run(
    side: int,
    n: int,
    steps: int,
    nets: list[str],
    weightings: list[str],
    draws: int,
    save_models: str | None = None,
):
    train = fields(jax.random.key(0), n, side)
    train = with_energy(train)
    rows = [{"model": "training fields", **sparsity(train)}]
    white = np.random.default_rng(0).standard_normal((4096, side, side))
    rows.append({"model": "white noise", **sparsity(white)})
    for multiplicative in [name == "multiplicative" for name in nets]:
        for weighting in weightings:
            net = mp.LatticeScoreNet(
                (side, side), key=jax.random.key(7), multiplicative=multiplicative
            )
            start = time.perf_counter()
            model = mp.MSGM.fit(
                train,
                key=jax.random.key(1),
                noise=mp.LatticeNoise((side, side)),
                net=net,
                weighting=weighting,
                max_steps=steps,
                progress=False,
            )
            seconds = time.perf_counter() - start
            if save_models:
                name = "multiplicative" if multiplicative else "plain"
                model.save(Path(save_models) / f"lattice_{side}_{name}_{weighting}.msgm")
            for name, sampler in SAMPLERS.items():
                x = model.with_options(sampler=sampler).sample(jax.random.key(2), (draws,))
                row = {
                    "model": "MSGM",
                    "multiplicative": multiplicative,
                    "weighting": weighting,
                    "sampler": name,
                    "training_seconds": seconds,
                    "steps_taken": len(model.history.train_loss),
                    "best_validation_loss": float(np.min(model.history.validation_loss)),
                    **sparsity(np.asarray(x)),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument(
        "--nets",
        nargs="+",
        choices=["plain", "multiplicative"],
        default=["plain", "multiplicative"],
    )
    parser.add_argument(
        "--weightings",
        nargs="+",
        choices=list(WEIGHTINGS),
        default=["capped", "likelihood"],
    )
    parser.add_argument("--draws", type=int, default=256)
    parser.add_argument("--output", help="default: results/lattice_sparse_<side>.json")
    parser.add_argument("--save-models", help="a folder to save the fitted models in")
    args = parser.parse_args()
    rows = run(
        args.side, args.n, args.steps, args.nets, args.weightings, args.draws, args.save_models
    )
    write_rows(args, rows, f"lattice_sparse_{args.side}.json")


if __name__ == "__main__":
    main()
