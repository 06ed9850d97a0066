"""A prototype twist that guides the energy of a lattice field, against the package's twist.

    python benchmarks/field_energy_twist.py MODEL [--task deblur] [--field 1]
        [--stochasticity 1] [--known-norm] [--twists package energy] [--output PATH]

About 4 minutes per twist on one core. MODEL is a 32×32 lattice MSGM of `inverse_fields.fields`;
the task, held-out field, observation and key are those of `inverse_fields.py`. Each twist runs
`mp.TwistedSMC(weighted=False)` (128 particles, one pilot round) with `mp.SDESampler(steps, η)`;
with `--known-norm` the model's norm law is replaced by a point at the truth's norm (as in
`field_data_fit.py`). Recorded: the draws' median χ² per observation, log-norm and peak-to-norm,
and the RMSE, coverage and extremes RMSE of their mean.

The package's twist guesses x₀ ~ N(x̂₀, v I) around a shrunk Tweedie estimate
x̂₀ = r e^{−ρτ} Exp_u(τΣg) (:mod:`msgm_pp.smc`). On a lattice the noise decorrelates a direction
at rate 1 but keeps the pattern of its energy for long (README, "Fields"), so the "energy" twist
guesses x₀ ~ N(m, diag c) with

    m = r e^{−κτ/2} Exp_u(τΣg),   c_i = r² (1 − e^{−κτ}) ē_i(u),

κ = −2 tr(L)/d the spreading rate (2 on a 2-D lattice), so that |m|² + Σc = r², and ē(u) the
energy u_i² averaged over the site and its four neighbours (Σē = 1). For the linear Gaussian
observations of the field benchmark it averages the likelihood over that guess one observation
at a time, log ψ = Σ_k log N(y_k; (A m)_k, σ² + Σ_i A_ki² c_i), which keeps the log-determinant
term: ψ grows when energy moves to where the data are larger than the guess allows. The guidance
is ∇_u log ψ, through m and through c. This uses the task's matrix, so it is a prototype for
these tasks, not a general twist: it is swapped in for `msgm_pp.smc.twist_function` during the
run. Writes benchmarks/results/field_energy_twist.json (or `--output`).
"""

import argparse
import contextlib
import json

import jax
import jax.numpy as jnp
from _machine import write_rows
from field_data_fit import approximate_draws, draw_summary, variants
from inverse_fields import fields
from inverse_fields import tasks as field_tasks

import msgm_pp as mp
import msgm_pp.smc as smc_module
from msgm_pp.sphere import renormalise, sphere_exp


def local_energy(u, shape):
    """u_i² averaged over the site and its 2·len(shape) lattice neighbours (sums to 1)."""
    energy = u.reshape(shape) ** 2
    total = energy
    for axis in range(len(shape)):
        total = total + jnp.roll(energy, 1, axis) + jnp.roll(energy, -1, axis)
    return (total / (1 + 2 * len(shape))).ravel()


def energy_twist_function(matrix, sigma, y, shape):
    """A replacement for `msgm_pp.smc.twist_function` (see the module docstring)."""
    A = jnp.asarray(matrix, jnp.float32)
    A_squared, observed, noise_variance = A**2, jnp.asarray(y), float(sigma) ** 2

    def twist_function(process, log_likelihood, cg_steps):
        rate = float(process.score.spreading_rate())

        def log_psi(z, log_r, s):
            tau = process.noise_share * process.score.tau(s)
            g = process.score(z, log_r, s)
            tweedie = sphere_exp(z, tau * process.score.noise._diffusion(z, g))
            mean = jnp.exp(log_r - 0.5 * rate * tau) * renormalise(tweedie)
            spread = -jnp.expm1(-rate * tau) * jnp.exp(2.0 * log_r)
            variance = noise_variance + A_squared @ (spread * local_energy(z, shape))
            residual = observed - A @ mean
            return jnp.sum(-0.5 * residual**2 / variance - 0.5 * jnp.log(variance)), g

        def twist(z, log_r, others, s):
            (value, g), gradient = jax.value_and_grad(log_psi, has_aux=True)(z, log_r, s)
            return value, g, process.tangent(z, gradient)

        return twist

    return twist_function


@contextlib.contextmanager
def swapped_twist(replacement):
    """Run with `replacement` as the twist; the compiled runs are cleared on the way in and out,
    since the twist is not an argument of the compiled run."""
    original = smc_module.twist_function
    smc_module.twist_function = replacement
    jax.clear_caches()
    try:
        yield
    finally:
        smc_module.twist_function = original
        jax.clear_caches()


def run(model, task_name, field, eta, known_norm, twists, particles=128) -> list[dict]:
    side = model.event_shape[0]
    keys = jax.random.split(jax.random.key(0), 8)
    train = fields(keys[0], 512, side)
    truth = fields(keys[3], field + 1, side)[field]
    task = {t.name: t for t in field_tasks(side, float(train.std()), keys[4])}[task_name]
    y = task.observe(jax.random.fold_in(keys[5], field), truth)
    prior = variants(model, truth)["norm known" if known_norm else "learned"]
    prior = prior.with_options(sampler=mp.SDESampler(model.sampler.steps, eta))
    rows = []
    for twist in twists:
        replacement = (
            energy_twist_function(task.matrix, task.sigma, y, model.event_shape)
            if twist == "energy"
            else smc_module.twist_function
        )
        with swapped_twist(replacement):
            draws = approximate_draws(task, prior, y, jax.random.fold_in(keys[6], field), particles)
        row = {
            "task": task_name,
            "field": field,
            "stochasticity": eta,
            "known_norm": known_norm,
            "twist": twist,
            **draw_summary(task, y, truth, draws),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--task", choices=["deblur", "inpaint"], default="deblur")
    parser.add_argument("--field", type=int, default=1)
    parser.add_argument("--stochasticity", type=float, default=1.0)
    parser.add_argument("--known-norm", action="store_true")
    parser.add_argument("--twists", nargs="+", choices=["package", "energy"])
    parser.add_argument("--output", help="default: results/field_energy_twist.json")
    args = parser.parse_args()
    args.twists = args.twists or ["package", "energy"]
    model = mp.load(args.model)
    rows = run(model, args.task, args.field, args.stochasticity, args.known_norm, args.twists)
    write_rows(args, rows, "field_energy_twist.json")


if __name__ == "__main__":
    main()
