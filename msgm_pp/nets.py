r"""Score networks: g(u, z, t) ∈ R^d for a unit direction u, standardised log-norm z and time t.

A network sees the direction, never the raw point: heavy-tailed data reach |x| ~ 1e6, but u lies on
the unit sphere and z = (log |x| − μ)/σ is O(1). Time enters as t = s/T ∈ [0, 1] through fixed
sinusoidal features. The networks return an unconstrained vector; :class:`msgm_pp.score.TangentScore`
projects it onto the tangent space of the sphere.

- :class:`ScoreMLP` for vectors: an MLP on [u, z, features(t)], the authors' architecture (three
  hidden layers of width 128, swish) by default.
- :class:`TimeMLP` for the SGM baseline: the same MLP on [x, features(t)].
- :class:`LatticeScoreNet` for fields on a periodic ring or grid (LatticeNoise): a residual
  convolutional network with circular padding, so it is translation-equivariant like the noise,
  conditioned on (z, t) by feature-wise affine modulation (FiLM), with a multiplicative output
  g = a ⊙ v + b suited to how lattice noise moves energy. Its cost is O(d) per sample.
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp._checks import check_dim, check_direction_scale, check_key, check_positive_int
from msgm_pp.serialization import config_int, config_shape, serializable

# LatticeScoreNet's channels of v = u√d: "log" is asinh v and log(1 + v²) − log 2,
# "linear" is v and v² − 1.
LATTICE_INPUTS = ("log", "linear")
# How LatticeScoreNet's multiplicative output turns its first channel α into the potential a:
# "exp" is a = −exp(α), "linear" (networks saved before 0.14) is a = α.
LATTICE_POTENTIALS = ("exp", "linear")

# Activations a saved network may name; a network with any other activation is saved as custom.
ACTIVATIONS = {
    "swish": jax.nn.swish,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}


class TimeFeatures(eqx.Module):
    """[t, sin(π 2^k t), cos(π 2^k t)] for k = 0 .. num_frequencies − 1."""

    num_frequencies: int = eqx.field(static=True, default=6)

    @property
    def size(self) -> int:
        return 1 + 2 * self.num_frequencies

    def __call__(self, t):
        t = jnp.asarray(t)
        angles = jnp.pi * 2.0 ** jnp.arange(self.num_frequencies, dtype=t.dtype) * t
        return jnp.concatenate([t[None], jnp.sin(angles), jnp.cos(angles)])


def hidden_weights(net) -> list:
    """The weight matrices of `net.mlp`'s layers after the first: where the weight decay of
    :func:`msgm_pp.training.make_optimizer` (and so `MSGM.fit(weight_decay=...)`) acts.

    The first layer reads (u, z, t). Where the directions narrow into ridges it has to form sharp
    features of u, and decaying it too costs 0.07 nats on the paper's task and 0.9 on the
    correlated Cauchy at d = 16, against 0.01 and nothing when only the later layers are decayed
    (benchmarks/weight_decay.py)."""
    if not isinstance(getattr(net, "mlp", None), eqx.nn.MLP):
        raise ValueError(
            f"weight decay acts on the hidden layers of a network's `mlp` (an eqx.nn.MLP), and "
            f"{type(net).__name__} has none; pass weight_decay=0, or an optax `optimizer` with the "
            f"decay you want."
        )
    return [layer.weight for layer in net.mlp.layers[1:]]


def hidden_weight_mask(params):
    """The optax mask of :func:`hidden_weights`: True at those arrays of `params`, False at every
    other array."""
    mask = jax.tree_util.tree_map(lambda _: False, params)
    return eqx.tree_at(hidden_weights, mask, replace_fn=lambda _: True)


def _activation_name(fn) -> str | None:
    return next((name for name, known in ACTIVATIONS.items() if known is fn), None)


class _MLPConfig:
    """`config` and `from_config` of the two MLP networks (see :mod:`msgm_pp.serialization`)."""

    def config(self) -> dict | None:
        activation = _activation_name(self.mlp.activation)
        if activation is None:
            return None
        config = {
            "dim": self.mlp.out_size,
            "width": self.mlp.width_size,
            "depth": self.mlp.depth,
            "num_frequencies": self.features.num_frequencies,
            "activation": activation,
        }
        scale = getattr(self, "direction_scale", 1.0)
        return config if scale == 1.0 else {**config, "direction_scale": scale}

    @classmethod
    def from_config(cls, config: dict):
        scaled = (
            {"direction_scale": config["direction_scale"]} if "direction_scale" in config else {}
        )
        return cls(
            config_int(config, "dim", 2**20),
            key=jax.random.key(0),
            width=config_int(config, "width", 2**14),
            depth=config_int(config, "depth", 64),
            num_frequencies=config_int(config, "num_frequencies", 64),
            activation=ACTIVATIONS[config["activation"]],
            **scaled,
        )


def _mlp(in_size: int, out_size: int, width, depth, activation, key) -> eqx.nn.MLP:
    return eqx.nn.MLP(
        in_size=in_size,
        out_size=out_size,
        width_size=check_positive_int(width, "width"),
        depth=check_positive_int(depth, "depth"),
        activation=activation,
        key=check_key(key),
    )


@serializable
class ScoreMLP(_MLPConfig, eqx.Module):
    """An MLP g(u, z, t) on the concatenation [c·u, z, features(t)] for a single point.

    `direction_scale` c sets how nonlinear the fresh network is in u. With c = 1 (the authors'
    network) the first layer's pre-activations vary with u by about 1/√(d + 14), so the fresh
    network is close to a polynomial of low degree in u. Its first steps learn the quadratic part
    of an angular law (anisotropy, correlation) and build on it; a law without one, such as
    independent coordinates of one scale, whose angular log-density starts at degree 4 (Σ u_i⁴),
    leaves it on a plateau: at d = 4 the 0.9 defaults stayed 1.22 nats from the iid Cauchy's
    density, the loss of assuming uniform directions, and 10.8 nats at d = 16. With c = 8 the
    pre-activations are O(1) and the same fits reach 0.07 and 3.1 nats; on laws with smooth
    angular densities (the multivariate Student-t) the same roughness fits the training points
    instead (benchmarks/network_candidates.py). :meth:`msgm_pp.MSGM.fit` trains it as one of its
    default candidates and keeps the one with the best validation likelihood."""

    mlp: eqx.nn.MLP
    features: TimeFeatures
    direction_scale: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        key,
        width: int = 128,
        depth: int = 3,
        num_frequencies: int = 6,
        direction_scale: float = 1.0,
        activation=jax.nn.swish,
    ):
        dim = check_dim(dim, "dim")
        self.features = TimeFeatures(check_positive_int(num_frequencies, "num_frequencies"))
        self.direction_scale = check_direction_scale(direction_scale)
        self.mlp = _mlp(dim + 1 + self.features.size, dim, width, depth, activation, key)

    def __call__(self, u, z, t):
        inputs = [self.direction_scale * u, jnp.reshape(z, (1,)), self.features(t)]
        return self.mlp(jnp.concatenate(inputs))


@serializable
class TimeMLP(_MLPConfig, eqx.Module):
    """An MLP f(x, t) on [x, features(t)] for a single point: the SGM baseline's network, the same
    family as :class:`ScoreMLP` with the raw (normalised) point in place of (u, z)."""

    mlp: eqx.nn.MLP
    features: TimeFeatures

    def __init__(
        self,
        dim: int,
        *,
        key,
        width: int = 128,
        depth: int = 3,
        num_frequencies: int = 6,
        activation=jax.nn.swish,
    ):
        dim = check_positive_int(dim, "dim")
        self.features = TimeFeatures(check_positive_int(num_frequencies, "num_frequencies"))
        self.mlp = _mlp(dim + self.features.size, dim, width, depth, activation, key)

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, self.features(t)]))


def periodic_conv(conv: eqx.nn.Conv, x):
    """`conv(x)` for a stride-1 convolution with circular "SAME" padding, computed as one matrix
    product over the k^n shifted copies of x (made with `jnp.roll`).

    XLA's CPU convolution is slow inside loops, above all its gradients: a lattice training step
    inside `lax.scan` took ~9 times as long as the same step jitted alone. Shifts and a matrix
    product compile to the same fast code in and out of loops."""
    k = conv.kernel_size
    shifts = itertools.product(*(range(size) for size in k))
    offsets = [
        tuple((size - 1) // 2 - a for size, a in zip(k, shift, strict=True)) for shift in shifts
    ]
    axes = tuple(range(1, x.ndim))
    patches = jnp.stack([jnp.roll(x, offset, axis=axes) for offset in offsets])
    weight = conv.weight.reshape(*conv.weight.shape[:2], len(offsets))
    return jnp.einsum("sc...,ocs->o...", patches, weight) + conv.bias


class _FiLMBlock(eqx.Module):
    conv: eqx.nn.Conv
    modulation: eqx.nn.Linear

    def __call__(self, h, condition):
        scale, shift = jnp.split(self.modulation(condition), 2)
        expand = (slice(None),) + (None,) * (h.ndim - 1)
        modulated = h * (1.0 + scale[expand]) + shift[expand]
        return h + periodic_conv(self.conv, jax.nn.swish(modulated))


@serializable
class LatticeScoreNet(eqx.Module):
    """A periodic residual CNN g(u, z, t) for fields of `shape` (a ring (n,) or a grid (h, w)).

    The field enters as v = u·√d (mean square 1 for a unit vector) and the output is scaled by √d,
    the typical size of the tangent score of a field with O(1) correlations. The last layer starts
    at zero, so a fresh network is the zero tangent score, whose score-matching loss is 0.

    `inputs` says how v is fed: "log" (the default) reads asinh v and log(1 + v²) − log 2, which
    grow like log|v|; "linear" (networks saved before 0.5) reads v and v² − 1. A sparse 32×32
    field has |v| up to about 12, so v² − 1 fed the first layer values up to about 150; with a
    random last layer the fresh network's loss on such fields was about 10⁷, against −2000 for a
    trained one (benchmarks/lattice_inputs.py).

    With `multiplicative` (the default) the network reads an odd and an even channel of v and
    returns g = √d (a ⊙ v + b) from two output channels a and b. Lattice noise moves energy between
    neighbours i, j at the rate v_i g_j − v_j g_i, which for g = a ⊙ v is v_i v_j (a_j − a_i):
    energy flows up the "potential" a. Undoing the forward spreading of a sparse field's energy
    is of this form, with a computed from the local energy v², which a plain CNN on v must
    approximate through its activations. On 8×8 sparse fields the plain network's draws have an
    energy concentration d·E Σu_i⁴ of 3.4–4.7 (white noise 2.9, the training fields 6.6), the
    multiplicative one's up to 6.5 (benchmarks/lattice_sparse.py). `multiplicative=False` is the
    plain network, which reads the odd channel only; model files saved before version 0.4 load
    as such.

    `potential` says how the first output channel α gives a: "exp" (the default since 0.14) is
    a = −exp(α), "linear" (every network saved before 0.14) is a = α. A sparse field noised to
    intermediate times is locally Gaussian with a variance ē_i that spans orders of magnitude
    over the grid, and the score of such a field is −v_i/ē_i: a = −1/ē = −exp(−log ē), the
    exponential of a log-energy that the network computes easily, where a linear a must build
    the reciprocal from its activations. Only the differences of a move energy (a constant a
    gives g along u, which the tangent projection removes), so a < 0 restricts nothing, and a
    fresh network, α = 0 and g = −√d v, is still the zero tangent score (to rounding). On 32×32
    sparse fields it reaches a lower loss at the same cost (−96 against −86 after 2000 steps) and
    its reverse dynamics leave the fields smoother from every τ, with about the same energy
    (benchmarks/lattice_score_variants.py).
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    lift: eqx.nn.Conv
    blocks: list[_FiLMBlock]
    condition: eqx.nn.MLP
    project: eqx.nn.Conv
    features: TimeFeatures
    multiplicative: bool = eqx.field(static=True)
    inputs: str = eqx.field(static=True)
    potential: str = eqx.field(static=True)

    def __init__(
        self,
        shape,
        *,
        key,
        channels: int = 16,
        num_blocks: int = 4,
        kernel_size: int = 3,
        num_frequencies: int = 6,
        multiplicative: bool = True,
        inputs: str = "log",
        potential: str = "exp",
    ):
        shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        if len(shape) not in (1, 2) or min(shape) < 3:
            raise ValueError(
                f"`shape` must be a ring (n,) or grid (h, w) with sides >= 3, got {shape}."
            )
        channels = check_positive_int(channels, "channels")
        num_blocks = check_positive_int(num_blocks, "num_blocks")
        if not isinstance(multiplicative, bool):
            raise TypeError(f"`multiplicative` must be True or False, got {multiplicative!r}.")
        if inputs not in LATTICE_INPUTS:
            raise ValueError(f"`inputs` must be one of {LATTICE_INPUTS}, got {inputs!r}.")
        if potential not in LATTICE_POTENTIALS:
            raise ValueError(f"`potential` must be one of {LATTICE_POTENTIALS}, got {potential!r}.")
        self.shape = shape
        self.multiplicative = multiplicative
        self.inputs = inputs
        self.potential = potential
        self.features = TimeFeatures(check_positive_int(num_frequencies, "num_frequencies"))
        lift_key, condition_key, project_key, *block_keys = jax.random.split(
            check_key(key), 3 + 2 * num_blocks
        )
        conv = lambda c_in, c_out, k: eqx.nn.Conv(
            len(shape), c_in, c_out, kernel_size, padding="SAME", padding_mode="CIRCULAR", key=k
        )
        hidden = 4 * channels
        field_channels = 2 if multiplicative else 1
        self.lift = conv(field_channels, channels, lift_key)
        self.condition = eqx.nn.MLP(
            1 + self.features.size, hidden, hidden, 1, jax.nn.swish, jax.nn.swish, key=condition_key
        )
        self.blocks = [
            _FiLMBlock(
                conv(channels, channels, conv_key),
                eqx.nn.Linear(hidden, 2 * channels, key=film_key),
            )
            for conv_key, film_key in zip(block_keys[::2], block_keys[1::2], strict=True)
        ]
        project = conv(channels, field_channels, project_key)
        self.project = eqx.tree_at(lambda c: (c.weight, c.bias), project, replace_fn=jnp.zeros_like)

    def config(self) -> dict:
        return {
            "shape": list(self.shape),
            "channels": self.lift.out_channels,
            "num_blocks": len(self.blocks),
            "kernel_size": self.lift.kernel_size[0],
            "num_frequencies": self.features.num_frequencies,
            "multiplicative": self.multiplicative,
            "inputs": self.inputs,
            "potential": self.potential,
        }

    @classmethod
    def from_config(cls, config: dict) -> "LatticeScoreNet":
        multiplicative = config.get("multiplicative", False)
        if not isinstance(multiplicative, bool):
            raise ValueError(f"multiplicative = {multiplicative!r:.40} is not true or false")
        inputs = config.get("inputs", "linear")
        if inputs not in LATTICE_INPUTS:
            raise ValueError(f"inputs = {inputs!r:.40} is not one of {LATTICE_INPUTS}")
        potential = config.get("potential", "linear")
        if potential not in LATTICE_POTENTIALS:
            raise ValueError(f"potential = {potential!r:.40} is not one of {LATTICE_POTENTIALS}")
        return cls(
            config_shape(config),
            key=jax.random.key(0),
            channels=config_int(config, "channels", 1024),
            num_blocks=config_int(config, "num_blocks", 64),
            kernel_size=config_int(config, "kernel_size", 31),
            num_frequencies=config_int(config, "num_frequencies", 64),
            multiplicative=multiplicative,
            inputs=inputs,
            potential=potential,
        )

    def _channels(self, v):
        if self.inputs == "log":
            odd, even = jnp.arcsinh(v), jnp.log1p(v**2) - math.log(2.0)
        else:
            odd, even = v, v**2 - 1.0
        return jnp.concatenate([odd, even]) if self.multiplicative else odd

    def hidden_features(self, u, z, t):
        """(v, h): the field v = u·√d as (1, *shape) and the last block's (channels, *shape)
        features, before the output layer."""
        condition = self.condition(jnp.concatenate([jnp.reshape(z, (1,)), self.features(t)]))
        v = math.sqrt(math.prod(self.shape)) * u.reshape((1, *self.shape))
        h = periodic_conv(self.lift, self._channels(v))
        for block in self.blocks:
            h = block(h, condition)
        return v, h

    def __call__(self, u, z, t):
        v, h = self.hidden_features(u, z, t)
        out = periodic_conv(self.project, jax.nn.swish(h))
        if not self.multiplicative:
            g = out[0]
        else:
            potential = -jnp.exp(out[0]) if self.potential == "exp" else out[0]
            g = potential * v[0] + out[1]
        return math.sqrt(math.prod(self.shape)) * g.ravel()
