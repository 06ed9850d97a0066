"""Training speed, sampling speed and sample quality against the number of reverse steps.

    python benchmarks/training_and_sampling.py [--fit-steps 4000] [--out benchmarks/results/training_and_sampling.json]

1. Training steps per second at d = 4, batch 256, with the paper's MLP (3 × 128, swish) for MSGM
   with each noise and loss, and for a VP-SDE (β ∈ [0.1, 20]) sliced-score-matching step with the
   same MLP taking (x, t): the classical SGM step the paper compares against. Each timing compiles
   first, then takes the best of three runs of 500 steps inside one compiled scan.
2. Drawing 1e4 samples with 128 reverse steps (SDE and ODE) from a model fitted to the paper's
   correlated Cauchy task.
3. √MMD (the paper's kernel exp(−|x − y|²/d²), 1e4 samples against 1e4 fresh test points) against
   the number of reverse steps, 2 to 256, for both samplers; the floor is two fresh data sets.
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy
from msgm_pp.distribution import make_noise
from msgm_pp.losses import NetworkLoss, make_loss
from msgm_pp.score import TangentScore
from msgm_pp.train import _train_chunk

D, BATCH, CHUNK = 4, 256, 500


def steps_per_second(net, loss, data, repeats: int = 3) -> float:
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    state = optimizer.init(params)
    run = lambda key: _train_chunk(
        params, static, state, optimizer, loss, data, jax.random.split(key, CHUNK), BATCH
    )
    jax.block_until_ready(run(jax.random.key(0)))
    best = math.inf
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.key(1 + r)))
        best = min(best, time.perf_counter() - start)
    return CHUNK / best


class VPScoreMLP(eqx.Module):
    """The same MLP on (x, features(t)): the classical SGM's score network."""

    mlp: eqx.nn.MLP
    features: mp.nets.TimeFeatures

    def __init__(self, key):
        self.features = mp.nets.TimeFeatures()
        self.mlp = eqx.nn.MLP(D + self.features.size, D, 128, 3, jax.nn.swish, key=key)

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, self.features(t)]))


def vp_ssm_loss(net, x0, key, beta_min=0.1, beta_max=20.0, t_eps=1e-3):
    """Sliced score matching for the VP SDE: ½|s|² + vᵀ∇s v at x_t ~ N(α x0, σ²)."""
    t_key, z_key, v_key = jax.random.split(key, 3)
    t = jax.random.uniform(t_key, x0.shape[:1], minval=t_eps, maxval=1.0)
    log_alpha = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    sigma = jnp.sqrt(-jnp.expm1(2 * log_alpha))
    x = jnp.exp(log_alpha)[:, None] * x0 + sigma[:, None] * jax.random.normal(z_key, x0.shape)
    v = jax.random.rademacher(v_key, x0.shape, x0.dtype)

    def term(x, t, v):
        s, jv = jax.jvp(lambda y: net(y, t), (x,), (v,))
        return 0.5 * jnp.dot(s, s) + jnp.dot(v, jv)

    return jnp.mean(sigma**2 * jax.vmap(term)(x, t, v))


def training_speeds(data) -> dict:
    r = jnp.linalg.norm(data, axis=1)
    batch = (data / r[:, None], jnp.log(r))
    standardised = (data - data.mean(0)) / data.std(0)
    speeds = {
        "sgm (vp-sde, ssm)": steps_per_second(
            VPScoreMLP(jax.random.key(0)), vp_ssm_loss, standardised
        )
    }
    for noise_name, loss_name in [
        ("isotropic", "dsm"),
        ("isotropic", "ssm"),
        ("dense", "ssm"),
        ("lattice", "ssm"),
    ]:
        noise = (
            mp.LatticeNoise((D,))
            if noise_name == "lattice"
            else make_noise(noise_name, D, key=jax.random.key(0))
        )
        score = TangentScore(
            mp.ScoreMLP(D, key=jax.random.key(0)), noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3
        )
        loss = NetworkLoss(score, make_loss(loss_name, noise))
        speeds[f"msgm {noise_name} ({loss_name})"] = steps_per_second(score.net, loss, batch)
    return speeds


def mmd(x, y) -> float:
    d = x.shape[1]

    def mean_kernel(a, b):
        return jax.lax.map(
            lambda row: jnp.exp(-jnp.sum((row - b) ** 2, -1) / d**2).mean(), a, batch_size=256
        ).mean()

    return float(
        jnp.sqrt(jnp.maximum(mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y), 0.0))
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fit-steps", type=int, default=4000)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/training_and_sampling.json")
    )
    args = parser.parse_args()

    task = CorrelatedCauchy.paper_task(d=D, seed=0)
    data = task.sample(jax.random.key(0), (8192,))
    test = task.sample(jax.random.key(1), (10_000,))
    speeds = training_speeds(data)
    sgm = speeds["sgm (vp-sde, ssm)"]
    print("training steps/s:", {k: round(v) for k, v in speeds.items()})

    start = time.perf_counter()
    model = mp.MSGM.fit(data, key=jax.random.key(2), steps=args.fit_steps, progress=False)
    fit_seconds = time.perf_counter() - start

    sampling, quality = {}, {"sde": {}, "ode": {}}
    for sampler in ("sde", "ode"):
        model.draw(jax.random.key(3), (10_000,), sampler=sampler).block_until_ready()
        start = time.perf_counter()
        model.draw(jax.random.key(4), (10_000,), sampler=sampler).block_until_ready()
        sampling[sampler] = time.perf_counter() - start
        for steps in (2, 4, 8, 16, 32, 64, 128, 256):
            x = model.draw(jax.random.key(5), (10_000,), sampler=sampler, steps=steps)
            quality[sampler][steps] = mmd(x, test)
    floor = mmd(task.sample(jax.random.key(6), (10_000,)), test)
    z = jax.random.normal(jax.random.key(7), (10_000, D))
    uniform = (
        jnp.linalg.norm(task.sample(jax.random.key(8), (10_000,)), axis=1, keepdims=True)
        * z
        / jnp.linalg.norm(z, axis=1, keepdims=True)
    )
    print("sampling 1e4 x 128 steps (s):", sampling)
    print("sqrt-MMD vs steps:", quality, "floor", floor)

    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": jax.local_device_count(),
            "jax": jax.__version__,
        },
        "training": {
            "d": D,
            "batch_size": BATCH,
            "network": "MLP 3 x 128, swish",
            "steps_per_second": speeds,
            "cost_relative_to_sgm_step": {k: sgm / v for k, v in speeds.items()},
            "paper_steps_per_second": {"msgm": 20, "sgm": 125},
        },
        "cauchy_fit": {
            "n": 8192,
            "steps": args.fit_steps,
            "seconds": fit_seconds,
            "stop_reason": model.history.stop_reason,
        },
        "sampling_seconds_1e4_x_128_steps": sampling,
        "paper_sampling_seconds_1e4_x_128_steps": 10.0,
        "sqrt_mmd_vs_reverse_steps": quality,
        "sqrt_mmd_floor_fresh_data": floor,
        "sqrt_mmd_uniform_directions": mmd(uniform, test),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
