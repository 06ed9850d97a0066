"""What the per-coordinate normalisation does on data whose coordinates differ in unit or origin.

    python benchmarks/coordinate_units.py [--seeds 3]

The paper's correlated Cauchy task (d = 4, 8192 training points, 1000 held out) in three versions:
as it is; with coordinate 0 in a unit 10^4 times smaller (x_0 × 10^4); and with coordinate 1 moved
by 5 times its robust scale. Each is fitted with the MSGM defaults (`normalization="none"`) and with
`normalization="robust"` (median and IQR / 1.349). On the held-out points we record the mean
log-likelihood (nats/point, in the data's own units, so the Jacobian of the normalisation is
included) against the analytic density, the worst ratio over coordinates of the median |x_j| of
4000 samples to that of the held-out data, and the training time.

Writes benchmarks/results/coordinate_units.json.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from _machine import machine

import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy

N_TRAIN, N_TEST, N_SAMPLES = 8192, 1000, 4000
TASK = CorrelatedCauchy.paper_task(d=4, seed=0)
SHIFT = np.array([0.0, 5 * 0.0933, 0.0, 0.0])  # 5 robust scales (IQR / 1.349) of coordinate 1
VERSIONS = {
    "same units": (np.ones(4), np.zeros(4)),
    "x_0 in units 1e4 times smaller": (np.array([1e4, 1.0, 1.0, 1.0]), np.zeros(4)),
    "x_1 moved 5 scales from 0": (np.ones(4), SHIFT),
}


def run(version: str, normalization: str, seed: int) -> dict:
    units, shift = VERSIONS[version]
    data_key, test_key, fit_key, sample_key = jax.random.split(jax.random.key(seed), 4)
    train = np.asarray(TASK.sample(data_key, (N_TRAIN,))) * units + shift
    test = np.asarray(TASK.sample(test_key, (N_TEST,))) * units + shift
    truth = np.asarray(TASK.log_prob((test - shift) / units)) - np.log(units).sum()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = mp.MSGM.fit(train, key=fit_key, normalization=normalization, progress=False)
    seconds = time.perf_counter() - start
    log_p = np.asarray(model.log_prob(test), np.float64)
    draws = np.asarray(model.sample(sample_key, (N_SAMPLES,)), np.float64)
    ratio = np.median(np.abs(draws), 0) / np.median(np.abs(test), 0)
    return {
        "test_log_likelihood": float(log_p.mean()),
        "gap_to_truth": float(truth.mean() - log_p.mean()),
        "worst_median_ratio": float(np.exp(np.abs(np.log(ratio)).max())),
        "median_ratios": ratio.tolist(),
        "warned": any("normalization='robust'" in str(w.message) for w in caught),
        "training_seconds": seconds,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/coordinate_units.json")
    )
    args = parser.parse_args()
    rows = {}
    for version in VERSIONS:
        for normalization in ("none", "robust"):
            runs = [run(version, normalization, seed) for seed in range(args.seeds)]
            gaps = np.array([r["gap_to_truth"] for r in runs])
            rows[f"{version} | {normalization}"] = {
                "gap_to_truth_mean": float(gaps.mean()),
                "gap_to_truth_stderr": float(gaps.std(ddof=1) / np.sqrt(len(gaps))),
                "worst_median_ratio_mean": float(np.mean([r["worst_median_ratio"] for r in runs])),
                "warned": all(r["warned"] for r in runs),
                "training_seconds_mean": float(np.mean([r["training_seconds"] for r in runs])),
                "runs": runs,
            }
            row = rows[f"{version} | {normalization}"]
            print(
                f"{version:32s} {normalization:7s} gap {row['gap_to_truth_mean']:.3f} ± "
                f"{row['gap_to_truth_stderr']:.3f}  worst median ratio "
                f"{row['worst_median_ratio_mean']:.2f}  warned {row['warned']}  "
                f"{row['training_seconds_mean']:.0f} s",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
