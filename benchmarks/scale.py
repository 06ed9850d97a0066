"""Cost and peak memory against the dimension, and bounded-memory sampling.

    python benchmarks/scale.py [--out benchmarks/results/scale.json] [--only train sample]

Every measurement runs in a fresh Python process, so that its peak resident memory (ru_maxrss)
belongs to that measurement alone: `peak_bytes` is that peak (JAX, compiled code and inputs
included; the figure shows it), `peak_bytes_above_start` its growth during the measured calls
after compilation (0 where they stayed below the earlier peak). On lattices of side 16, 32, 64
and 128 (d = 256 ... 16384):

- `noise`: one lattice rotation step of 64 directions (`simulate_directions`, 100 steps);
- `train`: one MSGM training step (LatticeNoise, the convolutional score net, batch 16, SSM);
- `sample`: drawing 64 fields with 32 reverse SDE steps;
- `dense noise`: the paper's DenseNoise rotation step at d = 256 and 1024 (4 steps there, each
  takes seconds); its d³ float32 tensor alone is 4.3 GB at d = 1024 and would be 17.6 TB at
  d = 16384, so larger d do not fit.

Then: drawing 1e6 vectors (d = 4) and 1e4 fields (d = 1024, 32×32) from trained-shape models with
`sample`, which works in chunks, so its peak memory stays far below 2 GB.
Writes benchmarks/results/scale.json and scale.png.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

MEASURE = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
import msgm_pp as mp
from msgm_pp.forward import simulate_directions

kind, side = sys.argv[1], int(sys.argv[2])
shape = (side, side)
d = side * side if kind != "vectors" else side
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: kB)


def timed(fn, repeats):
    # seconds per call, and the memory peak once fn is compiled and warmed up
    jax.block_until_ready(fn())
    warm = rss()
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats, warm


def lattice_model(d_shape, steps=2, eval_every=None, n=256):
    # sliced score matching, the default for lattice noise
    fields = jax.random.normal(jax.random.key(0), (n, *d_shape))
    net = mp.LatticeScoreNet(d_shape, key=jax.random.key(1), channels=16, num_blocks=2)
    return mp.MSGM.fit(fields, key=jax.random.key(2), noise=mp.LatticeNoise(d_shape), net=net,
                       max_steps=steps, batch_size=16, eval_every=eval_every or steps,
                       validation_fraction=0.0, patience=None, progress=False, forward_steps=4)


def timed_draw(model, samples, steps=32):
    # one cold call, compilation included, as a user meets it; and the memory before it
    base = rss()
    start = time.perf_counter()
    x = jax.block_until_ready(
        model.with_options(sampler=mp.SDESampler(steps)).sample(jax.random.key(3), (samples,))
    )
    return {"seconds": time.perf_counter() - start, "samples": samples, "steps": steps,
            "output_bytes": x.nbytes, "finite": bool(jnp.isfinite(x).all())}, base


if kind in ("noise", "dense noise"):
    noise = mp.LatticeNoise(shape) if kind == "noise" else mp.DenseNoise(d, key=jax.random.key(0))
    u0 = jax.random.normal(jax.random.key(1), (64, d))
    u0 = u0 / jnp.linalg.norm(u0, axis=1, keepdims=True)
    tau = jnp.full(64, 0.1)
    steps = 100 if d <= 256 else 4
    seconds, base = timed(lambda: simulate_directions(noise, u0, tau, jax.random.key(2), steps), 3)
    seconds /= steps
    result = {"seconds_per_step": seconds, "per": "64 directions"}
elif kind == "train":
    fit = lambda steps: lattice_model(shape, steps, eval_every=20).score.net
    # 40 steps more than the 20-step fit, both compiled: the difference is pure training
    long_fit, base = timed(lambda: fit(60), 1)
    short_fit, _ = timed(lambda: fit(20), 1)
    seconds = (long_fit - short_fit) / 40
    result = {"seconds_per_step": seconds, "per": "batch of 16"}
elif kind == "sample":
    model = lattice_model(shape)
    model = model.with_options(sampler=mp.SDESampler(32))
    seconds, base = timed(lambda: model.sample(jax.random.key(3), (64,)), 2)
    result = {"seconds_per_step": seconds / 32, "per": "64 fields"}
elif kind == "draw fields":
    result, base = timed_draw(lattice_model(shape), 10_000)
elif kind == "vectors":
    data = jax.random.t(jax.random.key(0), 3.0, (4096, d))
    model = mp.MSGM.fit(data, key=jax.random.key(1), max_steps=2, eval_every=2, progress=False)
    result, base = timed_draw(model, 1_000_000)
result.update(d=d, peak_bytes_above_start=rss() - base, peak_bytes=rss())
print(json.dumps(result))
"""


def measure(kind: str, side: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, kind, str(side)], capture_output=True, text=True
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.splitlines()[-1])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, rows in results["by_dimension"].items():
        rows = [row for row in rows if "error" not in row]
        ds = [row["d"] for row in rows]
        time_ax.loglog(ds, [row["seconds_per_step"] for row in rows], "o-", label=kind)
        memory_ax.loglog(ds, [row["peak_bytes"] / 1e9 for row in rows], "o-", label=kind)
    for ax in (time_ax, memory_ax):
        ax.set_xlabel("d")
    time_ax.set_ylabel("seconds per step")
    memory_ax.set_ylabel("peak resident memory of the process (GB)")
    time_ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["noise", "train", "sample", "dense noise", "draws"],
        help="rerun these measurements and keep the others from --out",
    )
    args = parser.parse_args()
    sides = (16, 32, 64, 128)
    kinds = {"noise": sides, "train": sides, "sample": sides, "dense noise": (16, 32)}
    draws = {
        "draw 1e6 vectors, d = 4": ("vectors", 4),
        "draw 1e4 fields, 32x32": ("draw fields", 32),
    }
    chosen = set(args.only or [*kinds, "draws"])
    if args.only and args.out.exists():
        results = json.loads(args.out.read_text())  # rerun some rows, keep the others
    else:
        results = {"by_dimension": {}}
    for kind, kind_sides in kinds.items():
        if kind in chosen:
            results["by_dimension"][kind] = [measure(kind, side) for side in kind_sides]
            print(kind, results["by_dimension"][kind], flush=True)
    if "draws" in chosen:
        for name, (kind, side) in draws.items():
            results[name] = measure(kind, side)
            print(name, results[name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
