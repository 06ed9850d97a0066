"""The paper's Figure 4 on the correlated Cauchy task (d = 4): MSGM against SGM.

    python benchmarks/paper_figure4.py [--seeds 3] [--max-steps 16000] [--size-steps 4000]

(a) √MMD against training iterations (training set 2^13): each point is a fit of exactly that many
    Adam steps with the same key and no validation split, so the points trace one trajectory.
(b) √MMD against the training-set size, 2^6 to 2^14, after `--size-steps` steps.

√MMD uses the paper's kernel exp(−|x − y|²/d²) on 1e4 samples against 1e4 held-out test points;
the heavy-tail MMD, the relative errors of the 0.9/0.99/0.999 quantiles of |x| and the Hill tail
index of |x| (true 1) are recorded too. Each setting runs with `--seeds` seeds (data, network and
training). Models: see benchmarks/_comparison.py. Writes benchmarks/results/paper_figure4.json and
paper_figure4.png.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from _comparison import MODELS, fit, sample_metrics
from _machine import machine

from msgm_pp import metrics
from msgm_pp.datasets import CorrelatedCauchy

N_EVAL = 10_000


def run_seed(task, seed: int, checkpoints, sizes, size_steps: int) -> dict:
    keys = jax.random.split(jax.random.key(seed), 4)
    pool = task.sample(keys[0], (max(sizes),))
    test = task.sample(keys[1], (N_EVAL,))
    fresh = task.sample(keys[2], (N_EVAL,))
    result = {"floor_sqrt_mmd": metrics.mmd(fresh, test), "iterations": {}, "sizes": {}}
    evaluated = {}  # (name, n, steps) -> metrics: (2^13, size_steps) lies on both axes

    def evaluate(name, n, steps):
        if (name, n, steps) not in evaluated:
            model, seconds = fit(name, pool[:n], keys[3], steps)
            samples = model.sample(jax.random.key(seed + 100), (N_EVAL,))
            evaluated[name, n, steps] = {**sample_metrics(samples, test), "seconds": seconds}
            print(
                name, "n", n, "steps", steps, evaluated[name, n, steps].get("sqrt_mmd"), flush=True
            )
        return evaluated[name, n, steps]

    for name in MODELS:
        result["iterations"][name] = {steps: evaluate(name, 2**13, steps) for steps in checkpoints}
        result["sizes"][name] = {n: evaluate(name, n, size_steps) for n in sizes}
    return result


def summarise(runs: list[dict], axis: str) -> dict:
    """Mean and standard error over seeds of √MMD per model and x value (NaN where diverged)."""
    summary = {}
    for name in MODELS:
        xs = list(runs[0][axis][name])
        values = np.array(
            [[run[axis][name][x].get("sqrt_mmd", np.nan) for x in xs] for run in runs]
        )
        summary[name] = {
            "x": [int(x) for x in xs],
            "mean": np.nanmean(values, 0).tolist(),
            "stderr": (np.nanstd(values, 0) / np.sqrt(np.sum(np.isfinite(values), 0))).tolist(),
            "diverged_runs": np.sum(~np.isfinite(values), 0).tolist(),
        }
    return summary


def plot(summary: dict, floor: float, size_steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, axis, label in zip(
        axes, ("iterations", "sizes"), ("Adam iterations", "training-set size"), strict=True
    ):
        for name, values in summary[axis].items():
            ax.errorbar(values["x"], values["mean"], yerr=values["stderr"], marker="o", label=name)
        ax.axhline(floor, color="gray", linestyle=":", label="two fresh data sets")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("√MMD to test data")
    axes[0].set_title("(a) Cauchy d = 4, n = 2^13")
    axes[1].set_title(f"(b) Cauchy d = 4, {size_steps} Adam iterations")
    axes[1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=16000)
    parser.add_argument("--size-steps", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_figure4.json"))
    args = parser.parse_args()

    task = CorrelatedCauchy.paper_task(d=4, seed=0)
    checkpoints = [250 * 2**k for k in range(10) if 250 * 2**k <= args.max_steps]
    sizes = [2**k for k in range(6, 15)]
    runs = [run_seed(task, seed, checkpoints, sizes, args.size_steps) for seed in range(args.seeds)]
    floor = float(np.mean([run["floor_sqrt_mmd"] for run in runs]))
    summary = {axis: summarise(runs, axis) for axis in ("iterations", "sizes")}
    result = {
        "machine": machine(),
        "task": "correlated Cauchy, d = 4, paper_task(seed=0)",
        "evaluation": f"{N_EVAL} samples against {N_EVAL} test points",
        "size_steps": args.size_steps,
        "floor_sqrt_mmd": floor,
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(summary, floor, args.size_steps, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
