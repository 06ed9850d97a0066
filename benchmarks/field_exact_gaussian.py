"""`mp.TwistedSMC` at field scale against an exact posterior: the SGM with the exact score of the
field benchmark's Gaussian prior.

    python benchmarks/field_exact_gaussian.py [--particles 512] [--stochasticity 0.5]
        [--twist energy] [--sweeps 16 32 64] [--sweep-stochasticity η'] [--tasks deblur inpaint]
        [--fields 0 1] [--output PATH]

No learned network is involved, so every difference from the closed form is the sampler's. The
prior is `inverse_fields.py`'s Gaussian with the fitted covariance (the mean and averaged
periodogram of its 512 training fields, a circulant Σ). In the SGM's normalised coordinates x̃ =
(x − m)/s its VP diffusion has the exact noise prediction ε(x̃, t) = σ_t (α_t² Σ̃ + σ_t² I)⁻¹
x̃, applied by FFT, so `mp.SGM` with that score samples the prior up to its steps, and each
task's posterior is Gaussian and closed-form (`inverse_fields.gaussian_posterior_moments`). For
each task and held-out field of `inverse_fields.py` (the same observations), runs of
`--particles` particles with `mp.SDESampler(128, η)` and the same key: the weighted mode, the
approximate mode (`weighted=False`) and the approximate mode with `refine=mp.SplitGibbs(sweeps)`
for each of `--sweeps` (the same approximate draws before the sweeps), whose prior steps take
the sampler's η or, with `--sweep-stochasticity`, their own (`SplitGibbs(stochasticity=η')`).
Recorded per run, over the 1024 pixels: the standardised mean errors z = (mean − exact
mean)/exact sd, as their root mean square and their largest |z|, beside the Monte-Carlo floor
1/√n of n independent exact draws (n the ESS for the weighted mode); the median ratio of the
draws' sd to the exact sd; the exact posterior mass of the draws' 5–95% intervals (0.90 for
exact draws, less by the quantiles' sampling error); the median χ² per observation of the draws;
the ESS and seconds. About 12 minutes on one core with the defaults (deblurring 8, inpainting
4). Writes benchmarks/results/field_exact_gaussian.json (or `--output`).
"""

import argparse
import json
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _machine import write_rows
from inverse_fields import (
    TWISTS,
    chi2_per_observation,
    fields,
    gaussian_posterior_moments,
    stationary_covariance,
    stationary_power,
    tasks,
)
from scipy import stats

import msgm_pp as mp
from msgm_pp.sgm import VPScore

SIDE, STEPS, T_EPS = 32, 128, 1e-3


class CirculantNoisePrediction(eqx.Module):
    """The exact ε(x̃, t) = σ_t (α_t² Σ̃ + σ_t² I)⁻¹ x̃ of x̃_0 ~ N(0, Σ̃), Σ̃ circulant on a
    periodic side × side lattice with eigenvalues `spectrum` (its 2-D FFT)."""

    spectrum: jax.Array
    schedule: mp.LinearSchedule

    def __call__(self, y, t):
        alpha_squared = jnp.exp(-self.schedule.integral(t * self.schedule.T))
        sigma_squared = 1.0 - alpha_squared
        image = jnp.fft.fft2(y.reshape(self.spectrum.shape))
        solved = jnp.fft.ifft2(image / (alpha_squared * self.spectrum + sigma_squared)).real
        return jnp.sqrt(sigma_squared) * solved.reshape(y.shape).astype(y.dtype)


def exact_gaussian_sgm(train: np.ndarray, eta: float) -> tuple[mp.SGM, np.ndarray, np.ndarray]:
    """(the SGM, the prior mean, the prior covariance) of the fitted stationary Gaussian."""
    mean, covariance = stationary_covariance(train)
    scale = float(train.std())
    schedule = mp.vp_schedule()
    spectrum = stationary_power(train) / scale**2
    net = CirculantNoisePrediction(jnp.asarray(spectrum, jnp.float32), schedule)
    loc = jnp.full(SIDE * SIDE, float(mean[0]), jnp.float32)
    score = VPScore(net, schedule, loc, jnp.full(SIDE * SIDE, scale, jnp.float32), T_EPS)
    return mp.SGM(score, sampler=mp.SDESampler(STEPS, eta)), mean, covariance


def against_exact(draws: np.ndarray, exact_mean, exact_sd, effective: float) -> dict:
    z = (draws.mean(0) - exact_mean) / exact_sd
    low, high = np.quantile(draws, [0.05, 0.95], axis=0)
    mass = stats.norm.cdf((high - exact_mean) / exact_sd) - stats.norm.cdf(
        (low - exact_mean) / exact_sd
    )
    return {
        "rms_z": float(np.sqrt(np.mean(z**2))),
        "max_abs_z": float(np.max(np.abs(z))),
        "monte_carlo_floor": float(1 / np.sqrt(effective)),
        "median_sd_ratio": float(np.median(draws.std(0) / exact_sd)),
        "interval_mass": float(np.mean(mass)),
    }


def run(particles, eta, twist, sweeps, sweep_eta, task_names, field_indices) -> list[dict]:
    keys = jax.random.split(jax.random.key(0), 8)  # as inverse_fields.py
    train = fields(keys[0], 512, SIDE)
    truths = fields(keys[3], max(field_indices) + 1, SIDE)
    prior, mean, covariance = exact_gaussian_sgm(train, eta)
    modes = {
        "weighted": dict(weighted=True),
        "approximate": dict(weighted=False),
        **{
            f"approximate, {n} sweeps": dict(
                weighted=False, refine=mp.SplitGibbs(n, stochasticity=sweep_eta)
            )
            for n in sweeps
        },
    }
    rows = []
    for task in tasks(SIDE, float(train.std()), keys[4]):
        if task.name not in task_names:
            continue
        for field in field_indices:
            y = task.observe(jax.random.fold_in(keys[5], field), truths[field])
            exact_mean, exact_covariance = gaussian_posterior_moments(task, y, mean, covariance)
            exact_sd = np.sqrt(np.diag(exact_covariance))
            for mode, options in modes.items():
                smc = mp.TwistedSMC(
                    task.model,
                    num_particles=particles,
                    twist=TWISTS[twist],
                    progress=False,
                    **options,
                )
                start = time.perf_counter()
                smc.run(jax.random.fold_in(keys[6], field), prior, y=y)
                draws = np.asarray(smc.get_samples()["x"], np.float64).reshape(particles, -1)
                seconds = time.perf_counter() - start
                effective = float(smc.ess[0]) if options["weighted"] else float(particles)
                row = {
                    "task": task.name,
                    "field": field,
                    "mode": mode,
                    **against_exact(draws, exact_mean, exact_sd, effective),
                    "chi2_per_observation": float(np.median(chi2_per_observation(task, y, draws))),
                    "ess": float(smc.ess[0]),
                    "seconds": seconds,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=512)
    parser.add_argument("--stochasticity", type=float, default=0.5)
    parser.add_argument("--twist", choices=sorted(TWISTS), default="energy")
    parser.add_argument("--sweeps", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--sweep-stochasticity", type=float, help="η of the sweeps' prior steps")
    parser.add_argument("--tasks", nargs="+", choices=["deblur", "inpaint"])
    parser.add_argument("--fields", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output", help="default: results/field_exact_gaussian.json")
    args = parser.parse_args()
    task_names = args.tasks or ["deblur", "inpaint"]
    rows = run(
        args.particles,
        args.stochasticity,
        args.twist,
        args.sweeps,
        args.sweep_stochasticity,
        task_names,
        args.fields,
    )
    write_rows(args, rows, "field_exact_gaussian.json")


if __name__ == "__main__":
    main()
