"""Where the default MSGM loses likelihood on the paper's task: the gap to the truth by norm.

    python benchmarks/density_by_norm.py [--seeds 2] [--t-eps 1e-3 1e-5] [--out PATH]

The paper's correlated Cauchy (d = 4, x = A z, z_i iid Cauchy(0, 1/50)), trained as in
`density.py` (8192 points of seed s, `mp.MSGM.fit(train, key=key(s))`, with the given `t_eps`),
and scored on 8000 fresh held-out points by `ODEDensity(256)`. The held-out points are split at
the norm quantiles 0.25, 0.5, 0.75, 0.9, 0.95 and 0.99; for each bin the mean gap log p − log p̂
with its standard error over the bin's points, and its contribution to the overall mean (the bin's
share of points times its mean gap). At a large norm one z_i dominates, so x lies within an angle
of about |z_j|/|z_i| of ±a_i: the directions narrow like 1/|x|.

Writes benchmarks/results/density_by_norm.json; about 5 minutes per fit on one core.
"""

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _machine import machine
from density import task_data

import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
N_HELD_OUT = 8000


def run(seed: int, t_eps: float) -> dict:
    train, _, truth = task_data("cauchy4", seed)
    test = np.asarray(
        CorrelatedCauchy.paper_task(4).sample(jax.random.key(777 + seed), (N_HELD_OUT,)),
        np.float64,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = mp.MSGM.fit(train, key=jax.random.key(seed), t_eps=t_eps, progress=False)
    seconds = time.perf_counter() - start
    log_p_model = model.with_options(density=mp.ODEDensity(256)).log_prob(
        jnp.asarray(test, jnp.float32)
    )
    gap = np.asarray(truth.log_prob(jnp.asarray(test)), np.float64) - np.asarray(
        log_p_model, np.float64
    )
    norms = np.linalg.norm(test, axis=1)
    edges = np.quantile(norms, QUANTILES)
    bins = []
    for (q_low, q_high), (low, high) in zip(
        itertools.pairwise(QUANTILES), itertools.pairwise(edges), strict=True
    ):
        inside = gap[(norms >= low) & (norms <= high)]
        bins.append(
            {
                "norm_quantiles": [q_low, q_high],
                "norms": [float(low), float(high)],
                "points": int(inside.size),
                "gap": float(inside.mean()),
                "standard_error": float(inside.std(ddof=1) / np.sqrt(inside.size)),
                "contribution": float(inside.sum() / gap.size),
            }
        )
    return {
        "seed": seed,
        "t_eps": t_eps,
        "fit_seconds": seconds,
        "candidate": dict(model.history.settings).get("candidate"),
        "gap": float(gap.mean()),
        "standard_error": float(gap.std(ddof=1) / np.sqrt(gap.size)),
        "bins": bins,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--t-eps", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/density_by_norm.json"))
    args = parser.parse_args()
    runs = []
    for t_eps in args.t_eps:
        for seed in range(args.seeds):
            runs.append(run(seed, t_eps))
            result = runs[-1]
            print(
                f"t_eps {t_eps:g} seed {seed}: gap {result['gap']:.4f} ± "
                f"{result['standard_error']:.4f} ({result['fit_seconds']:.0f} s)",
                flush=True,
            )
            for b in result["bins"]:
                print(
                    f"  norm quantiles {b['norm_quantiles']}: {b['gap']:.3f} ± "
                    f"{b['standard_error']:.3f}, contributes {b['contribution']:.4f}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
