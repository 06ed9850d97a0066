"""Why a 32×32 lattice MSGM did not learn its small-time score: the weights of the late times.

    python benchmarks/lattice_weighting.py [--side 32] [--steps 2000] [--forward-steps 16]
        [--variants NAME ...]

About 25 minutes on 2 cores. Each variant trains the default lattice network on 512 fields of
`inverse_fields.fields` for `--steps` steps (4 fields a step, the sliced loss, τ drawn
log-uniformly on its window), then noises 128 fresh fields to τ and runs the learned reverse SDE
back (`lattice_reverse.reverse_from`, 256 steps). With the true score the reversed fields have the
data's lag-1 correlation (0.78) and energy concentration (58); the forward noise lowers the first
and raises the second. Variants:

- "likelihood, τ ≤ 0.1" and "likelihood, τ ≤ 3": the likelihood weighting (weight ∝ τ) on the
  early window only;
- "likelihood, all τ": the same up to τ(T) = 360, what 0.5 trained with;
- "capped at ½, all τ": the weight c(1 − e^{−τ/c}) with c = 1/v = ½ instead of τ, the 0.6
  default (`weighting="capped"`);
- "capped at 5, all τ": the same with c = 5, which leaves the intermediate times more weight.

`--forward-steps` sets the integrator steps of the training draws of u_τ (16, the package
default; `lattice_forward.py` measures their bias). `--variants` runs some of the variants only.

A variant reversed from a τ above its window is marked as such (its network never saw that τ).
Training keeps the parameters with the best validation loss (`best_step`); where no evaluation
beat the zero score's loss of 0 that is the untrained network, the zero score.
Writes benchmarks/results/lattice_weighting.json (or `--output`).
"""

import argparse
import json
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _machine import write_rows
from inverse_fields import fields, with_energy
from lattice_reverse import reverse_rows

import msgm_pp as mp
from msgm_pp.losses import _ssm_term, perturb_directions
from msgm_pp.training import NetworkLoss, cosine_learning_rate, fit_network, make_optimizer

VARIANTS = {
    "likelihood, τ ≤ 0.1": (0.1, None),
    "likelihood, τ ≤ 3": (3.0, None),
    "likelihood, all τ": (None, None),
    "capped at ½, all τ": (None, 0.5),
    "capped at 5, all τ": (None, 5.0),
}


class WindowLoss(eqx.Module):
    """The sliced loss with τ log-uniform on [τ(t_ε), tau_high], weighted by τ or, with a `cap`
    c, by c(1 − e^{−τ/c})."""

    tau_high: float = eqx.field(static=True)
    cap: float | None = eqx.field(static=True)
    forward_steps: int = eqx.field(static=True, default=16)

    def __call__(self, score, batch, key):
        u0, log_r = batch
        time_key, noise_key, slice_key = jax.random.split(key, 3)
        tau_low = score.tau(score.t_eps)
        uniform = jax.random.uniform(time_key, log_r.shape, u0.dtype)
        tau = tau_low * jnp.exp(jnp.log(self.tau_high / tau_low) * uniform)
        s = score.schedule.inverse_integral(tau)
        u = perturb_directions(score.noise, u0, tau, noise_key, self.forward_steps)
        terms = self.terms(score, u, log_r, s, slice_key)
        weight = tau if self.cap is None else -self.cap * jnp.expm1(-tau / self.cap)
        return jnp.mean(weight * terms)

    def terms(self, score, u, log_r, s, key):
        """The sliced score-matching term of each noised direction, one Rademacher slice each."""
        v = jax.random.rademacher(key, u.shape, u.dtype)
        return jax.vmap(_ssm_term, in_axes=(None, 0, 0, 0, 0))(score, u, log_r, s, v)


def fixed_budget_fit(model, net, loss, train, steps: int):
    """(net, history): `steps` steps of `loss` from `net` on `model`'s score, cosine schedule,
    no early stopping, the best validated parameters kept."""
    return fit_network(
        net,
        NetworkLoss(model.score, loss),
        model.training_data(train),
        key=jax.random.key(9),
        max_steps=steps,
        batch_size=model.default_batch_size(),
        optimizer=make_optimizer(cosine_learning_rate(steps), None),
        patience=None,
        eval_every=250,
        progress=False,
    )


def run(side: int, steps: int, taus: list[float], forward_steps: int, variants: list[str]):
    train = fields(jax.random.key(0), 512, side)
    train = with_energy(train)
    noise = mp.LatticeNoise((side, side))
    rows = []
    for name in variants:
        tau_high, cap = VARIANTS[name]
        net = mp.LatticeScoreNet((side, side), key=jax.random.key(7))
        model = mp.MSGM.build(train, key=jax.random.key(1), noise=noise, net=net)
        tau_high = float(model.score.tau(model.score.schedule.T)) if tau_high is None else tau_high
        start = time.perf_counter()
        net, history = fixed_budget_fit(
            model, model.score.net, WindowLoss(tau_high, cap, forward_steps), train, steps
        )
        row = {
            "variant": name,
            "tau_high": tau_high,
            "training_seconds": time.perf_counter() - start,
            "best_step": history.best_step,
            "validation_loss": np.asarray(history.validation_loss).tolist(),
            "reverse": [
                {**row, "seen": row["tau"] <= tau_high}
                for row in reverse_rows(model.with_network(net, history), taus, 256)[1:]
            ],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--taus", type=float, nargs="+", default=[0.03, 0.3, 3.0, 10.0])
    parser.add_argument("--forward-steps", type=int, default=16)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--output", help="default: results/lattice_weighting.json")
    args = parser.parse_args()
    rows = run(args.side, args.steps, args.taus, args.forward_steps, args.variants)
    write_rows(args, rows, "lattice_weighting.json")


if __name__ == "__main__":
    main()
