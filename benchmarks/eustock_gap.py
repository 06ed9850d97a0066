"""Where the MSGM's held-out likelihood on EuStockMarkets differs from the ML Student-t's.

    pip install -e ".[bench,data]"
    python benchmarks/eustock_gap.py [--seeds 3] [--out benchmarks/results/eustock_gap.json]

The splits are `density.py`'s (80% training days, 20% held out, one permutation per seed). For
each split:

1. Paired: the default `mp.MSGM.fit` against the ML Student-t, per held-out day (the MSGM's
   log-density by `ODEDensity(256)`, as in `density.py`): the mean difference and its standard
   error over the days.
2. Elliptical models with uniform directions, which isolate what a learned angular law can add.
   An elliptical density of y = W(x − loc) is p_ℓ(log |y|) / (|y|^d |S^{d−1}|) · |det W|; each
   row changes one part on the way from the ML Student-t to the MSGM's own whitened coordinates:

   - "ML Student-t about the origin": the ML fit's ν and Σ with μ = 0 (the MSGM rotates about the
     origin);
   - "ML location and scatter, KDE+GPD norm law": W = Σ^{-1/2}, loc = μ of the ML fit, and the
     package's default norm model (`KDEGPDNorm`) fitted to the whitened training norms in place
     of the t's radial law;
   - "Tyler shape about the origin, KDE+GPD norm law": the coordinates of the MSGM's
     `normalization="shape"` candidates (Tyler's shape matrix about the origin) with the same
     norm model, i.e. that candidate with a zero score network.

Writes JSON with every split's numbers; a few minutes on 2 cores (three default fits).
"""

import argparse
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from _comparison import student_t_fit
from _machine import machine
from density import fit_model, task_data
from scipy import special, stats

from msgm_pp.coordinates import tyler_shape
from msgm_pp.norm_models import KDEGPDNorm
from msgm_pp.score_based import paired_standard_errors


def elliptical_log_density(train, test, loc, scatter) -> np.ndarray:
    """Per test row: uniform directions and the default norm model in y = scatter^{-1/2}(x − loc)."""
    d = train.shape[1]
    values, vectors = np.linalg.eigh(scatter)
    whitening = vectors @ np.diag(values**-0.5) @ vectors.T
    log_norm = lambda x: np.log(np.linalg.norm((x - loc) @ whitening.T, axis=1))
    norm_law = KDEGPDNorm.fit(log_norm(train))
    ell = log_norm(test)
    log_sphere_area = math.log(2) + 0.5 * d * math.log(math.pi) - special.gammaln(0.5 * d)
    return (
        np.asarray(norm_law.log_prob(jnp.asarray(ell)), np.float64)
        - d * ell
        - log_sphere_area
        + np.linalg.slogdet(whitening)[1]
    )


def run(seed: int) -> dict:
    train, test, _ = task_data("eustock", seed)
    nu, mu, sigma = student_t_fit(train)
    student = stats.multivariate_t(mu, sigma, df=nu).logpdf(test)
    msgm_log_prob, seconds = fit_model("MSGM (defaults)", train, seed)
    msgm = msgm_log_prob(test)
    rows = {
        "ML Student-t": student,
        "MSGM (defaults)": msgm,
        "ML Student-t about the origin": stats.multivariate_t(0 * mu, sigma, df=nu).logpdf(test),
        "ML location and scatter, KDE+GPD norm law": elliptical_log_density(train, test, mu, sigma),
        "Tyler shape about the origin, KDE+GPD norm law": elliptical_log_density(
            train, test, np.zeros_like(mu), tyler_shape(train)
        ),
    }
    standard_errors = paired_standard_errors(rows, "ML Student-t")
    return {
        "seed": seed,
        "test_days": int(test.shape[0]),
        "msgm_fit_seconds": seconds,
        "student_t_nu": nu,
        "test_log_likelihood": {name: float(v.mean()) for name, v in rows.items()},
        "difference_from_the_ml_student_t": {
            name: {"mean": float(np.mean(v - student)), "standard_error": standard_errors[name]}
            for name, v in rows.items()
            if name != "ML Student-t"
        },
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eustock_gap.json"))
    args = parser.parse_args()
    runs = []
    for seed in range(args.seeds):
        runs.append(run(seed))
        differences = runs[-1]["difference_from_the_ml_student_t"]
        print(
            f"split {seed}: "
            + "; ".join(
                f"{name} {v['mean']:+.4f} ± {v['standard_error']:.4f}"
                for name, v in differences.items()
            ),
            flush=True,
        )
    names = runs[0]["test_log_likelihood"]
    summary = {
        name: float(np.mean([r["test_log_likelihood"][name] for r in runs])) for name in names
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine(), "mean_over_splits": summary, "splits": runs}, indent=2)
        + "\n"
    )
    print("mean over splits:", {k: round(v, 4) for k, v in summary.items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
