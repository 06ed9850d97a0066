"""Forward-simulation throughput and noise memory.

    python benchmarks/forward_throughput.py [--dense-max-dim 1024] [--out benchmarks/results/forward_throughput.json]

For each noise and d, times `steps` forward rotation steps on n samples (after compiling with the
same shapes) and reports sample-steps per second, together with the memory of the noise object:
its array leaves plus the constant tables its step embeds (lattice class masks).
"""

import argparse
import json
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine

import msgm_pp as mp
from msgm_pp.forward import simulate_directions
from msgm_pp.noise import _lattice_colour_classes


def noise_bytes(noise) -> int:
    leaves = jax.tree_util.tree_leaves(eqx.filter(noise, eqx.is_array))
    total = sum(leaf.nbytes for leaf in leaves)
    if isinstance(noise, mp.LatticeNoise):
        total += sum(mask.size for _, mask in _lattice_colour_classes(noise.shape))
    return total


def lattice_for(d: int) -> mp.LatticeNoise:
    side = math.isqrt(d)
    return mp.LatticeNoise((side, side) if side * side == d and d >= 16 else (d,))


def make_noise(name: str, d: int):
    if name == "isotropic":
        return mp.IsotropicNoise(d)
    if name == "dense":
        return mp.DenseNoise(d, key=jax.random.key(0))
    return lattice_for(d)


def measure(noise, n: int, steps: int, repeats: int = 3) -> float:
    u0 = jax.random.normal(jax.random.key(0), (n, noise.dim))
    u0 = u0 / jnp.linalg.norm(u0, axis=1, keepdims=True)
    tau = jnp.full(n, 0.5)
    simulate_directions(noise, u0, tau, jax.random.key(1), steps).block_until_ready()
    best = math.inf
    for r in range(repeats):
        start = time.perf_counter()
        simulate_directions(noise, u0, tau, jax.random.key(2 + r), steps).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return n * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-max-dim", type=int, default=1024)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "forward_throughput.json"
    )
    args = parser.parse_args()
    rows = []
    cases = [(name, d) for name in ("isotropic", "dense", "lattice") for d in (4, 64, 1024)] + [
        ("lattice", 4096)
    ]
    for name, d in cases:
        if name == "dense" and d > args.dense_max_dim:
            continue
        n = 2 if (name == "dense" and d > 256) else max(16, 2**18 // d)
        steps = 2 if (name == "dense" and d > 256) else 20
        noise = make_noise(name, d)
        rate = measure(noise, n, steps)
        row = {
            "noise": name,
            "d": d,
            "shape": list(getattr(noise, "shape", (d,))),
            "n": n,
            "steps": steps,
            "sample_steps_per_s": rate,
            "noise_bytes": noise_bytes(noise),
        }
        rows.append(row)
        print(
            f"{name:<10} d={d:<5} n={n:<6} {rate:12.4g} sample-steps/s   noise memory {row['noise_bytes'] / 1e6:10.4f} MB",
            flush=True,
        )
        del noise
    lattice_4096 = next(r for r in rows if r["noise"] == "lattice" and r["d"] == 4096)
    result = {
        "benchmark": "forward_throughput",
        "machine": machine(),
        "rows": rows,
        "lattice_4096_under_10MB": lattice_4096["noise_bytes"] < 10e6,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
