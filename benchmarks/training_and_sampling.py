"""Training speed, sampling speed and sample quality against the number of reverse steps.

    python benchmarks/training_and_sampling.py [--fit-steps 4000] [--rounds 9] [--out benchmarks/results/training_and_sampling.json]

1. Training steps per second at d = 4, batch 256, with the paper's MLP (3 × 128, swish) for MSGM
   with each noise and loss, and for the `mp.SGM` baseline's VP-SDE (β ∈ [0.1, 20]) step with the
   same MLP taking (x, t), with sliced and denoising score matching: the classical SGM step the
   paper compares against. Every step is compiled first (500 steps inside one scan), then all are
   timed in `--rounds` interleaved rounds: the medians, and each step's cost relative to the SGM
   step with the same loss as the median of the per-round ratios (paired, so a machine whose speed
   drifts during the run shifts both sides of a ratio alike).
2. Drawing 1e4 samples with 128 reverse steps (SDE and ODE) from a model fitted to the paper's
   correlated Cauchy task.
3. √MMD (the paper's kernel exp(−|x − y|²/d²), 1e4 samples against 1e4 fresh test points) against
   the number of reverse steps, 2 to 256, for both samplers; the floor is two fresh data sets.
"""

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import machine

import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy
from msgm_pp.losses import make_loss
from msgm_pp.metrics import mmd
from msgm_pp.msgm import make_noise
from msgm_pp.score import TangentScore
from msgm_pp.sgm import VPLoss
from msgm_pp.training import NetworkLoss, _Minibatches, _train_chunk

D, BATCH, CHUNK = 4, 256, 500


def chunk_timer(net, loss, data):
    """Compiles `CHUNK` training steps in one scan and returns a function timing one run of them."""
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    state = optimizer.init(params)
    run = lambda key: _train_chunk(
        params,
        None,
        static,
        state,
        optimizer,
        loss,
        data,
        jax.random.split(key, CHUNK),
        _Minibatches(BATCH, None, None),
        None,
    )
    jax.block_until_ready(run(jax.random.key(0)))

    def seconds(key):
        start = time.perf_counter()
        jax.block_until_ready(run(key))
        return time.perf_counter() - start

    return seconds


def training_steps(data) -> dict:
    """{name: (network, loss, batch)} of the steps compared."""
    r = jnp.linalg.norm(data, axis=1)
    batch = (data / r[:, None], jnp.log(r))
    sgm = mp.VPScore(
        mp.TimeMLP(D, key=jax.random.key(0)), mp.vp_schedule(), data.mean(0), data.std(0), 1e-3
    )
    standardised = sgm.normalise(data)
    steps = {
        f"sgm (vp-sde, {loss})": (sgm.net, NetworkLoss(sgm, VPLoss(loss)), standardised)
        for loss in ("ssm", "dsm")
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
            mp.ScoreMLP(D, key=jax.random.key(0)),
            noise,
            mp.mixing_schedule(noise),
            0.0,
            1.0,
            1e-3,
            noise_scaled=True,
        )
        loss = NetworkLoss(score, make_loss(loss_name, noise))
        steps[f"msgm {noise_name} ({loss_name})"] = (score.net, loss, batch)
    return steps


def training_speeds(data, rounds: int) -> dict:
    """Steps per second of every step in `training_steps`, timed in `rounds` interleaved rounds
    (each round runs every step once, so a change in the machine's speed hits all of them alike):
    the median over rounds, its range, and each step's cost relative to the SGM step with the same
    loss, as the median of the per-round ratios."""
    timers = {name: chunk_timer(*parts) for name, parts in training_steps(data).items()}
    seconds = {name: [] for name in timers}
    for r in range(rounds):
        for name, timer in timers.items():
            seconds[name].append(timer(jax.random.key(1 + r)))
    per_second = {name: CHUNK / np.asarray(s) for name, s in seconds.items()}
    same_loss = lambda name: "sgm (vp-sde, dsm)" if "dsm" in name else "sgm (vp-sde, ssm)"
    return {
        "rounds": rounds,
        "steps_per_second": {name: float(np.median(v)) for name, v in per_second.items()},
        "steps_per_second_range": {
            name: [float(v.min()), float(v.max())] for name, v in per_second.items()
        },
        "cost_relative_to_sgm_step_with_the_same_loss": {
            name: float(np.median(per_second[same_loss(name)] / v))
            for name, v in per_second.items()
        },
        "cost_relative_to_sgm_ssm_step": {
            name: float(np.median(per_second["sgm (vp-sde, ssm)"] / v))
            for name, v in per_second.items()
        },
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fit-steps", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/training_and_sampling.json")
    )
    args = parser.parse_args()

    task = CorrelatedCauchy.paper_task(d=D, seed=0)
    data = task.sample(jax.random.key(0), (8192,))
    test = task.sample(jax.random.key(1), (10_000,))
    speeds = training_speeds(data, args.rounds)
    print("training steps/s:", {k: round(v) for k, v in speeds["steps_per_second"].items()})
    print("cost / SGM step, same loss:", speeds["cost_relative_to_sgm_step_with_the_same_loss"])

    start = time.perf_counter()
    model = mp.MSGM.fit(data, key=jax.random.key(2), max_steps=args.fit_steps, progress=False)
    fit_seconds = time.perf_counter() - start

    sampling, quality = {}, {"sde": {}, "ode": {}}
    for sampler, kind in (("sde", mp.SDESampler), ("ode", mp.ODESampler)):
        model = model.with_options(sampler=kind(128))
        model.sample(jax.random.key(3), (10_000,)).block_until_ready()
        start = time.perf_counter()
        model.sample(jax.random.key(4), (10_000,)).block_until_ready()
        sampling[sampler] = time.perf_counter() - start
        for steps in (2, 4, 8, 16, 32, 64, 128, 256):
            x = model.with_options(sampler=kind(steps)).sample(jax.random.key(5), (10_000,))
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
        "machine": machine(),
        "training": {
            "d": D,
            "batch_size": BATCH,
            "network": "MLP 3 x 128, swish",
            **speeds,
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
