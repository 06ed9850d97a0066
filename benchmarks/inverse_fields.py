"""Inverse problems on 32×32 heavy-tailed periodic fields: deblurring and inpainting with an MSGM
prior, the SGM prior through the same sampler, and a Gaussian prior with the fitted covariance.

    python benchmarks/inverse_fields.py [--side 32] [--train 512] [--problems 2] [--particles 128]
        [--twist tweedie] [--sweeps N]

Fields (a known generator): sparse sources, each site one with probability 0.1 and a Student-t
(ν = 1.5) amplitude, smoothed by a periodic Gaussian kernel of width 1 site. Priors, trained on
`--train` fields with every default:

- MSGM: `mp.MSGM.fit(fields, noise=mp.LatticeNoise((side, side)))` (the convolutional score net);
- SGM: `mp.SGM.fit(fields.reshape(n, -1))`, the package's additive baseline;
- Gaussian: stationary (circulant) covariance from the averaged periodogram of the training
  fields, the fit a user of periodic fields would make; its posterior is exact, in closed form.

Tasks, each on `--problems` held-out fields:

- deblur: y = K x + N(0, σ²), K a periodic Gaussian blur of width 1.5 sites, σ = 0.1 × the
  fields' standard deviation;
- inpaint: 60% of the sites missing at random, y = the others + N(0, σ²), σ = 0.05 × that sd.

The score-based priors go through `mp.TwistedSMC` twice: weighted (asymptotically exact) and
`weighted=False` (the fast approximate mode), `--particles` particles in groups of 16, one pilot
round, the model's SDE steps, the twist `--twist` (`mp.TweedieTwist()`, the default, or
`mp.EnergyTwist()`); with `--sweeps N` a third time, `weighted=False` with
`refine=mp.SplitGibbs(N)`. Recorded per prior, sampler and task (means over problems): RMSE of
the posterior mean, the share of sites inside their 90% interval, the same two on the extremes
(the 1% of sites with the largest |x|), the draws' median χ² per observation |y − A x|²/(σ² m)
(recorded since 0.14; about 1 where a draw fits the data), the seconds per run, the effective
draws (the ESS for weighted runs, the particles for the approximate mode) and seconds per
effective draw, beside the seconds that `prior.sample` takes for as many unconditional draws and
those draws' peak-to-norm ratio (the median of max|x_i|/|x|, against the training fields': has
the prior learned sparse sources?). Writes benchmarks/results/inverse_fields.json.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _machine import machine

import msgm_pp as mp

SOURCE_PROBABILITY, SOURCE_DF, SMOOTHING = 0.1, 1.5, 1.0
BLUR_WIDTH, MISSING = 1.5, 0.6
TWISTS = {"tweedie": mp.TweedieTwist(), "energy": mp.EnergyTwist()}


def gaussian_kernel_spectrum(side: int, width: float) -> np.ndarray:
    """The 2-D Fourier transform of a periodic Gaussian kernel of unit mass."""
    offsets = np.minimum(np.arange(side), side - np.arange(side))
    profile = np.exp(-0.5 * (offsets / width) ** 2)
    kernel = np.outer(profile, profile)
    return np.fft.fft2(kernel / kernel.sum())


def fields(key, n: int, side: int) -> np.ndarray:
    """n fields: sparse Student-t sources smoothed by a periodic Gaussian kernel."""
    where_key, amplitude_key = jax.random.split(key)
    sources = np.asarray(
        jax.random.bernoulli(where_key, SOURCE_PROBABILITY, (n, side, side))
        * jax.random.t(amplitude_key, SOURCE_DF, (n, side, side)),
        np.float64,
    )
    smooth = np.fft.ifft2(np.fft.fft2(sources) * gaussian_kernel_spectrum(side, SMOOTHING)).real
    return smooth.astype(np.float32)


def with_energy(x: np.ndarray) -> np.ndarray:
    """The fields of `x` whose norm is not 0: a field without sources has no direction."""
    return x[np.linalg.norm(np.reshape(x, (len(x), -1)), axis=1) > 0]


class Task:
    """A linear observation y = A x + N(0, σ²) of a flattened field, as a NumPyro model."""

    def __init__(self, name: str, matrix: np.ndarray, sigma: float, side: int):
        self.name, self.matrix, self.sigma, self.side = name, matrix, sigma, side
        operator = jnp.asarray(matrix, jnp.float32)

        def model(prior, y=None):
            x = numpyro.sample("x", prior)
            numpyro.sample("y", dist.Normal(operator @ x.reshape(-1), sigma).to_event(1), obs=y)

        self.model = model

    def observe(self, key, x: np.ndarray) -> jax.Array:
        noise = self.sigma * np.asarray(jax.random.normal(key, (self.matrix.shape[0],)))
        return jnp.asarray(self.matrix @ x.reshape(-1) + noise, jnp.float32)


def tasks(side: int, sd: float, key) -> list[Task]:
    d = side * side
    spectrum = gaussian_kernel_spectrum(side, BLUR_WIDTH)
    blur = np.stack(
        [
            np.fft.ifft2(np.fft.fft2(e.reshape(side, side)) * spectrum).real.ravel()
            for e in np.eye(d)
        ],
        axis=1,
    )
    kept = np.sort(np.asarray(jax.random.permutation(key, d))[: round((1 - MISSING) * d)])
    return [
        Task("deblur", blur, 0.1 * sd, side),
        Task("inpaint", np.eye(d)[kept], 0.05 * sd, side),
    ]


def stationary_power(train: np.ndarray) -> np.ndarray:
    """The averaged periodogram (side, side): the eigenvalues of the fitted circulant covariance."""
    side = train.shape[-1]
    return np.mean(np.abs(np.fft.fft2(train - train.mean())) ** 2, axis=0) / (side * side)


def stationary_covariance(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of a stationary periodic Gaussian: the averaged periodogram."""
    side = train.shape[-1]
    mean = np.full(side * side, train.mean())
    autocovariance = np.fft.ifft2(stationary_power(train)).real
    rows, cols = np.divmod(np.arange(side * side), side)
    lag_rows = (rows[:, None] - rows[None, :]) % side
    lag_cols = (cols[:, None] - cols[None, :]) % side
    return mean, autocovariance[lag_rows, lag_cols]


def gaussian_posterior_moments(task: Task, y, mean, covariance):
    """The exact posterior mean and covariance under the Gaussian prior."""
    A = task.matrix
    gain = np.linalg.solve(A @ covariance @ A.T + task.sigma**2 * np.eye(len(y)), A @ covariance).T
    post_mean = mean + gain @ (np.asarray(y, np.float64) - A @ mean)
    return post_mean, covariance - gain @ (A @ covariance)


def gaussian_posterior(task: Task, y, mean, covariance):
    """The exact posterior mean and marginal sds under the Gaussian prior."""
    post_mean, post_covariance = gaussian_posterior_moments(task, y, mean, covariance)
    return post_mean, np.sqrt(np.maximum(np.diag(post_covariance), 0.0))


def scores(truth: np.ndarray, mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict:
    truth, mean, low, high = (np.ravel(a) for a in (truth, mean, low, high))
    extremes = np.argsort(-np.abs(truth))[: max(1, truth.size // 100)]
    covered = (low <= truth) & (truth <= high)
    return {
        "rmse": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "coverage": float(np.mean(covered)),
        "extremes_rmse": float(np.sqrt(np.mean((mean[extremes] - truth[extremes]) ** 2))),
        "extremes_coverage": float(np.mean(covered[extremes])),
    }


def chi2_per_observation(task: Task, y, draws: np.ndarray) -> np.ndarray:
    """|y − A x|² / (σ² m) for each draw x (n, d): about 1 for the truth, whose residual is the
    noise, and for draws of an exact posterior whose prior allows the truth."""
    residual = np.asarray(y, np.float64) - draws @ task.matrix.T
    return np.sum(residual**2, axis=1) / (task.sigma**2 * residual.shape[1])


def smc_result(
    task: Task,
    prior,
    y,
    truth,
    key,
    particles: int,
    weighted: bool,
    pilot_steps=None,
    twist="tweedie",
    refine=None,
) -> dict:
    sampler = mp.TwistedSMC(
        task.model,
        num_particles=particles,
        norm_rounds=1,
        pilot_steps=pilot_steps,
        weighted=weighted,
        twist=TWISTS[twist],
        refine=refine,
        progress=False,
    )
    start = time.perf_counter()
    sampler.run(key, prior, y=y)
    draws = np.asarray(sampler.get_samples()["x"], np.float64).reshape(particles, -1)
    seconds = time.perf_counter() - start
    effective = float(sampler.ess[0]) if weighted else float(particles)
    low, high = np.quantile(draws, [0.05, 0.95], axis=0)
    return {
        **scores(truth, draws.mean(0), low, high),
        "chi2_per_observation": float(np.median(chi2_per_observation(task, y, draws))),
        "seconds": seconds,
        "effective_draws": effective,
        "seconds_per_effective_draw": seconds / max(effective, 1e-9),
        "ess": float(sampler.ess[0]),
        "group_ess": float(sampler.group_ess[0]),
    }


def peak_to_norm(fields: np.ndarray) -> float:
    """The median over fields of max|x_i| / |x|: about 0.1 for a direction uniform on the sphere
    at d = 1024, larger where a field's energy sits in a few sites, as in sparse sources."""
    flat = np.asarray(fields, np.float64).reshape(len(fields), -1)
    return float(np.median(np.abs(flat).max(1) / np.linalg.norm(flat, axis=1)))


def unconditional(prior, n: int, key) -> dict:
    """Seconds for n draws of `prior.sample` once compiled (the cost a posterior run is set
    against), and the draws' peak-to-norm ratio (has the prior learned the sparse structure?)."""
    jax.block_until_ready(prior.sample(key, (n,)))
    start = time.perf_counter()
    draws = jax.block_until_ready(prior.sample(jax.random.fold_in(key, 1), (n,)))
    return {"seconds": time.perf_counter() - start, "peak_to_norm": peak_to_norm(draws)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--twist", choices=sorted(TWISTS), default="tweedie")
    parser.add_argument("--sweeps", type=int, help="also the approximate mode + SplitGibbs(N)")
    args = parser.parse_args()
    side = args.side
    keys = jax.random.split(jax.random.key(0), 8)
    train = fields(keys[0], args.train, side)
    sd = float(train.std())

    priors, training_seconds = {}, {}
    start = time.perf_counter()
    priors["MSGM"] = mp.MSGM.fit(train, key=keys[1], noise=mp.LatticeNoise((side, side)))
    training_seconds["MSGM"] = time.perf_counter() - start
    start = time.perf_counter()
    priors["SGM"] = mp.SGM.fit(train.reshape(args.train, -1), key=keys[2])
    training_seconds["SGM"] = time.perf_counter() - start
    print(f"trained: {training_seconds}", flush=True)
    unconditional_draws = {
        name: unconditional(prior, args.particles, keys[7]) for name, prior in priors.items()
    }
    unconditional_draws["training fields"] = {"peak_to_norm": peak_to_norm(train)}
    print(f"unconditional draws: {unconditional_draws}", flush=True)
    mean, covariance = stationary_covariance(train)

    modes = [("weighted", True, None), ("approximate", False, None)]
    if args.sweeps:
        modes.append(("approximate, split Gibbs", False, mp.SplitGibbs(args.sweeps)))
    results = []
    truths = fields(keys[3], args.problems, side)
    for task in tasks(side, sd, keys[4]):
        for problem, truth in enumerate(truths):
            y = task.observe(jax.random.fold_in(keys[5], problem), truth)
            post_mean, post_sd = gaussian_posterior(task, y, mean, covariance)
            record = {"task": task.name, "problem": problem}
            record["Gaussian (exact)"] = scores(
                truth, post_mean, post_mean - 1.645 * post_sd, post_mean + 1.645 * post_sd
            )
            for name, prior in priors.items():
                for mode, weighted, refine in modes:
                    label = f"{name} ({mode})"
                    run_key = jax.random.fold_in(keys[6], problem)
                    record[label] = smc_result(
                        task,
                        prior,
                        y,
                        truth,
                        run_key,
                        args.particles,
                        weighted,
                        twist=args.twist,
                        refine=refine,
                    )
                    print(task.name, problem, label, record[label], flush=True)
            results.append(record)

    output = {
        "machine": machine(),
        "settings": vars(args),
        "field_sd": sd,
        "training_seconds": training_seconds,
        "unconditional_draws": unconditional_draws,
        "problems": results,
    }
    path = Path(__file__).parent / "results" / "inverse_fields.json"
    path.write_text(json.dumps(output, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
