"""Does the 32×32 lattice score learn where the energy goes with a quieter loss, a stencil output,
a wider network or an exponential potential? Each against the 0.6 default at the same budget.

    python benchmarks/lattice_score_variants.py [--steps 2000] [--variants NAME ...]
        [--taus 0.3 3 10]

About 25 minutes on one core. Each variant trains on 512 fields of `inverse_fields.fields` for
`--steps` steps with the capped weighting (as `lattice_weighting.py`'s "capped at ½, all τ"), then
noises 128 fresh fields to each of `--taus` and runs the learned reverse SDE back
(`lattice_reverse.reverse_rows`, 256 steps). Variants:

- "default": the 0.6–0.13 default, `LatticeScoreNet` with 16 channels and the linear potential
  a = α, the sliced loss with one Rademacher slice;
- "colour-probed slices": the same network; the slice v is split by a 2×2 colouring of the grid
  into 4 probes, Σ_c v_cᵀ J v_c, which drops from the divergence estimate every cross term
  J_ij v_i v_j between sites one step apart (4 jvps instead of 1);
- "stencil output": g = √d (Σ_o c_o ⊙ shift_o(v) + b) with a 3×3 stencil c predicted per site,
  linear access to the neighbours' values at any amplitude (the network reads them through asinh
  and log(1 + v²)); a stationary Gaussian field's score −C⁻¹x is of this form;
- "32 channels": the default network twice as wide;
- "exponential potential": the potential a = −exp(α), the default since 0.14;
- "exponential potential, colour-probed slices": both changes;
- "exponential potential, capped at 5": the weight 5(1 − e^{−τ/5}) instead of ½(1 − e^{−2τ}),
  which gives the intermediate times more weight (as `lattice_weighting.py`'s "capped at 5").

Writes benchmarks/results/lattice_score_variants.json (or `--output`).
"""

import argparse
import itertools
import json
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _machine import write_rows
from inverse_fields import fields, with_energy
from lattice_reverse import reverse_rows
from lattice_weighting import WindowLoss, fixed_budget_fit

import msgm_pp as mp
from msgm_pp.losses import _field_and_score
from msgm_pp.nets import periodic_conv

SIDE, CAP = 32, 0.5
OFFSETS = list(itertools.product((-1, 0, 1), repeat=2))


def colour_masks(side: int, period: int) -> jax.Array:
    """(period², side²) indicators of the sites of each colour of a period × period colouring."""
    i = np.arange(side)
    colour = (i[:, None] % period) * period + (i[None, :] % period)
    return jnp.asarray(np.stack([(colour == c).ravel() for c in range(period**2)]), jnp.float32)


class ColourProbedLoss(WindowLoss):
    """`WindowLoss` with its divergence estimated with colour-split slices."""

    masks: jax.Array = eqx.field(kw_only=True)

    def terms(self, score, u, log_r, s, key):
        signs = jax.random.rademacher(key, u.shape, u.dtype)

        def term(u, log_r, s, sign):
            (drift, g), linear = jax.linearize(_field_and_score(score, log_r, s), u)
            divergence = jax.vmap(lambda v: jnp.dot(v, linear(v)[0]))(self.masks * sign)
            return 0.5 * jnp.dot(g, drift) + jnp.sum(divergence)

        return jax.vmap(term)(u, log_r, s, signs)


class StencilNet(eqx.Module):
    """`LatticeScoreNet`'s trunk with a 3×3 stencil of v and an offset b as its output."""

    trunk: mp.LatticeScoreNet
    project: eqx.nn.Conv

    def __init__(self, shape, key):
        trunk_key, project_key = jax.random.split(key)
        self.trunk = mp.LatticeScoreNet(shape, key=trunk_key)
        conv = eqx.nn.Conv(
            2, 16, len(OFFSETS) + 1, 3, padding="SAME", padding_mode="CIRCULAR", key=project_key
        )
        self.project = eqx.tree_at(lambda c: (c.weight, c.bias), conv, replace_fn=jnp.zeros_like)

    def __call__(self, u, z, t):
        scale = math.sqrt(math.prod(self.trunk.shape))
        v, h = self.trunk.hidden_features(u, z, t)
        out = periodic_conv(self.project, jax.nn.swish(h))
        shifted = jnp.stack([jnp.roll(v[0], offset, axis=(0, 1)) for offset in OFFSETS])
        return scale * (jnp.sum(out[:-1] * shifted, axis=0) + out[-1]).ravel()


def variant(name: str, tau_high: float):
    """(network, loss) of a variant."""
    shape, key = (SIDE, SIDE), jax.random.key(7)
    default_loss = WindowLoss(tau_high, CAP)
    colour_loss = ColourProbedLoss(tau_high, CAP, masks=colour_masks(SIDE, 2))
    linear = dict(key=key, potential="linear")
    return {
        "default": lambda: (mp.LatticeScoreNet(shape, **linear), default_loss),
        "colour-probed slices": lambda: (mp.LatticeScoreNet(shape, **linear), colour_loss),
        "stencil output": lambda: (StencilNet(shape, key), default_loss),
        "32 channels": lambda: (mp.LatticeScoreNet(shape, channels=32, **linear), default_loss),
        "exponential potential": lambda: (mp.LatticeScoreNet(shape, key=key), default_loss),
        "exponential potential, colour-probed slices": lambda: (
            mp.LatticeScoreNet(shape, key=key),
            colour_loss,
        ),
        "exponential potential, capped at 5": lambda: (
            mp.LatticeScoreNet(shape, key=key),
            WindowLoss(tau_high, 5.0),
        ),
    }[name]()


VARIANTS = [
    "default",
    "colour-probed slices",
    "stencil output",
    "32 channels",
    "exponential potential",
    "exponential potential, colour-probed slices",
    "exponential potential, capped at 5",
]


def run(steps: int, names: list[str], taus: list[float]) -> list[dict]:
    train = with_energy(fields(jax.random.key(0), 512, SIDE))
    rows = []
    for name in names:
        model = mp.MSGM.build(
            train,
            key=jax.random.key(1),
            noise=mp.LatticeNoise((SIDE, SIDE)),
            net=mp.LatticeScoreNet((SIDE, SIDE), key=jax.random.key(7)),
        )
        net, loss = variant(name, float(model.score.tau(model.score.schedule.T)))
        model = model.with_network(net)
        start = time.perf_counter()
        net, history = fixed_budget_fit(model, net, loss, train, steps)
        row = {
            "variant": name,
            "training_seconds": time.perf_counter() - start,
            "validation_loss": np.asarray(history.validation_loss).tolist(),
            "reverse": reverse_rows(model.with_network(net, history), taus, 256)[1:],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--taus", type=float, nargs="+", default=[0.3, 3.0, 10.0])
    parser.add_argument("--output", help="default: results/lattice_score_variants.json")
    args = parser.parse_args()
    write_rows(args, run(args.steps, args.variants, args.taus), "lattice_score_variants.json")


if __name__ == "__main__":
    main()
