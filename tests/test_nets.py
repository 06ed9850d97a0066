"""Score networks: shapes, determinism and the lattice network's translation equivariance."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unit_rows

import msgm_pp as mp
from msgm_pp.nets import LatticeScoreNet, ScoreMLP, TimeFeatures, periodic_conv


def test_time_features_are_bounded_and_distinct():
    features = jax.vmap(TimeFeatures(6))(jnp.linspace(0, 1, 50))
    assert features.shape == (50, 13)
    assert float(jnp.abs(features).max()) <= 1.0
    distances = jnp.linalg.norm(features[:, None] - features[None], axis=-1)
    assert float(jnp.min(distances + jnp.eye(50))) > 1e-2


def trained_like(net):
    """`net` with a random last layer: a fresh lattice network's is zero."""
    weight_key, bias_key = jax.random.split(jax.random.key(9))
    return eqx.tree_at(
        lambda n: (n.project.weight, n.project.bias),
        net,
        (
            0.3 * jax.random.normal(weight_key, net.project.weight.shape),
            0.3 * jax.random.normal(bias_key, net.project.bias.shape),
        ),
    )


def test_mlp_is_determined_by_its_key():
    u = unit_rows(jax.random.key(0), 1, 5)[0]
    a = ScoreMLP(5, key=jax.random.key(1))(u, 0.3, 0.2)
    b = ScoreMLP(5, key=jax.random.key(1))(u, 0.3, 0.2)
    c = ScoreMLP(5, key=jax.random.key(2))(u, 0.3, 0.2)
    assert a.shape == (5,)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("inputs", ["log", "linear"])
@pytest.mark.parametrize("multiplicative", [True, False])
@pytest.mark.parametrize(("shape", "shift"), [((12,), (5,)), ((6, 8), (2, 3))])
def test_lattice_net_commutes_with_periodic_translations(shape, shift, multiplicative, inputs):
    net = LatticeScoreNet(
        shape,
        key=jax.random.key(0),
        channels=8,
        num_blocks=2,
        multiplicative=multiplicative,
        inputs=inputs,
    )
    net = trained_like(net)
    u = unit_rows(jax.random.key(1), 1, int(np.prod(shape)))[0]
    axes = tuple(range(len(shape)))
    shifted = jnp.roll(u.reshape(shape), shift, axes).ravel()
    out = net(u, 0.4, 0.7).reshape(shape)
    np.testing.assert_allclose(
        net(shifted, 0.4, 0.7), jnp.roll(out, shift, axes).ravel(), atol=1e-5
    )


def test_a_fresh_lattice_net_is_the_zero_score():
    """The zero score's score-matching loss is exactly 0: training starts there, not at a random
    field whose loss grows with the field's peaks."""
    u = unit_rows(jax.random.key(1), 1, 25)[0]
    for multiplicative in (True, False):
        net = LatticeScoreNet(
            (5, 5), key=jax.random.key(0), multiplicative=multiplicative, potential="linear"
        )
        np.testing.assert_array_equal(net(u, 0.3, 0.4), jnp.zeros(25))
    # The exponential potential starts at a = −1: g = −√d v = −d u, along u, which the tangent
    # projection removes.
    g = LatticeScoreNet((5, 5), key=jax.random.key(0))(u, 0.3, 0.4)
    np.testing.assert_allclose(g, -25.0 * u, rtol=1e-6)
    np.testing.assert_allclose(g - jnp.dot(g, u) * u, jnp.zeros(25), atol=1e-5)


def test_the_exponential_potential_pulls_every_site_towards_zero():
    """With a = −exp(α) < 0 and the field term b switched off, each g_i has the sign of −v_i at
    every site and any α; with a = α it does not."""
    u = unit_rows(jax.random.key(1), 1, 30)[0]
    for potential, always in (("exp", True), ("linear", False)):
        net = trained_like(
            LatticeScoreNet((5, 6), key=jax.random.key(0), channels=8, potential=potential)
        )
        no_field = eqx.tree_at(
            lambda n: (n.project.weight, n.project.bias),
            net,
            (net.project.weight.at[1].set(0.0), net.project.bias.at[1].set(0.0)),
        )
        pulls = no_field(u, 0.2, 0.3) * u < 0
        assert bool(jnp.all(pulls)) is always


def test_log_inputs_grow_like_the_log_of_the_field():
    """A peak of v = 12 (a sparse 32×32 field) enters as asinh 12 ≈ 3.2 and log(1 + 144) − log 2
    ≈ 4.3, against 12 and 143 for the linear inputs."""
    v = jnp.array([[0.0, 1.0, -12.0]])
    log_net = LatticeScoreNet((3,), key=jax.random.key(0))
    linear_net = LatticeScoreNet((3,), key=jax.random.key(0), inputs="linear")
    np.testing.assert_allclose(
        log_net._channels(v), [[0.0, 0.8814, -3.1798], [-0.6931, 0.0, 4.2836]], atol=1e-4
    )
    np.testing.assert_allclose(linear_net._channels(v), [[0.0, 1.0, -12.0], [-1.0, 0.0, 143.0]])
    plain = LatticeScoreNet((3,), key=jax.random.key(0), multiplicative=False)
    np.testing.assert_allclose(plain._channels(v), jnp.arcsinh(v))


def test_lattice_net_depends_on_norm_and_time():
    net = trained_like(LatticeScoreNet((5, 5), key=jax.random.key(0)))
    u = unit_rows(jax.random.key(1), 1, 25)[0]
    assert not np.allclose(net(u, 0.0, 0.5), net(u, 1.0, 0.5))
    assert not np.allclose(net(u, 0.0, 0.5), net(u, 0.0, 0.1))


def test_multiplicative_lattice_net_is_a_potential_times_the_field_plus_a_field():
    """g = √d (a ⊙ v + b) with v = u√d, a and b computed from an odd and an even function of v:
    where a depends on the even function alone, flipping the sign of v flips the product term
    and nothing else."""
    shape = (5, 6)
    net = trained_like(LatticeScoreNet(shape, key=jax.random.key(0), channels=8, num_blocks=2))
    assert net.multiplicative and net.lift.in_channels == 2 and net.project.out_channels == 2
    u = unit_rows(jax.random.key(1), 1, 30)[0]
    # The hidden features see v only through odd and even parts; keep only the even input channel
    # and the a channel: then g(−u) = −g(u) exactly.
    even = eqx.tree_at(lambda n: n.lift.weight, net, net.lift.weight.at[:, 0].set(0.0))
    a_only = eqx.tree_at(
        lambda n: (n.project.weight, n.project.bias),
        even,
        (even.project.weight.at[1].set(0.0), even.project.bias.at[1].set(0.0)),
    )
    np.testing.assert_allclose(a_only(-u, 0.2, 0.3), -a_only(u, 0.2, 0.3), atol=1e-5)
    assert not np.allclose(net(-u, 0.2, 0.3), -net(u, 0.2, 0.3), atol=1e-3)


def test_lattice_net_checks_multiplicative_and_inputs():
    with pytest.raises(TypeError, match="multiplicative"):
        LatticeScoreNet((5, 5), key=jax.random.key(0), multiplicative=1)
    with pytest.raises(ValueError, match="inputs"):
        LatticeScoreNet((5, 5), key=jax.random.key(0), inputs="raw")
    with pytest.raises(ValueError, match="potential"):
        LatticeScoreNet((5, 5), key=jax.random.key(0), potential="softplus")


def test_lattice_net_files_without_the_multiplicative_key_load_the_plain_net():
    """Files saved by 0.3 describe the plain network; their config has no `multiplicative`."""
    config = LatticeScoreNet((5, 5), key=jax.random.key(0), multiplicative=False).config()
    del config["multiplicative"], config["inputs"]
    net = LatticeScoreNet.from_config(config)
    assert not net.multiplicative and net.lift.in_channels == 1 and net.project.out_channels == 1
    assert net.inputs == "linear"
    assert LatticeScoreNet.from_config({**config, "multiplicative": True}).multiplicative
    with pytest.raises(ValueError, match="multiplicative"):
        LatticeScoreNet.from_config({**config, "multiplicative": "yes"})


def test_lattice_net_files_before_0_14_load_with_the_linear_potential():
    """Files saved before 0.14 have no `potential` key: their networks returned a = α."""
    config = LatticeScoreNet((5, 5), key=jax.random.key(0)).config()
    assert config["potential"] == "exp"
    assert LatticeScoreNet.from_config(config).potential == "exp"
    del config["potential"]
    assert LatticeScoreNet.from_config(config).potential == "linear"
    with pytest.raises(ValueError, match="potential"):
        LatticeScoreNet.from_config({**config, "potential": "cubic"})


def test_lattice_net_files_of_0_4_load_with_linear_inputs():
    """0.4 saved the multiplicative network without an `inputs` key: it read v and v² − 1."""
    config = LatticeScoreNet((5, 5), key=jax.random.key(0)).config()
    assert config["inputs"] == "log"
    del config["inputs"]
    net = LatticeScoreNet.from_config(config)
    assert net.multiplicative and net.inputs == "linear"
    with pytest.raises(ValueError, match="inputs"):
        LatticeScoreNet.from_config({**config, "inputs": 3})


@pytest.mark.parametrize("shape", [(2,), (3, 3, 3), (8, 2)])
def test_lattice_net_refuses_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        LatticeScoreNet(shape, key=jax.random.key(0))


@pytest.mark.parametrize(
    ("shape", "kernel_size"), [((7,), 3), ((5, 6), 3), ((5, 6), 4), ((4, 9), 5)]
)
def test_periodic_conv_is_equinox_circular_conv(shape, kernel_size):
    conv = eqx.nn.Conv(
        len(shape),
        3,
        2,
        kernel_size,
        padding="SAME",
        padding_mode="CIRCULAR",
        key=jax.random.key(0),
    )
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    np.testing.assert_allclose(periodic_conv(conv, x), conv(x), atol=2e-6)


def test_lattice_net_has_no_xla_convolution():
    """XLA's CPU convolution is slow inside lax.scan (the training loop), so the net avoids it."""
    net = mp.LatticeScoreNet((6, 6), key=jax.random.key(0))
    params, static = eqx.partition(net, eqx.is_array)
    loss = lambda params, u: jnp.sum(eqx.combine(params, static)(u, 0.1, 0.5) ** 2)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params, jnp.ones(36) / 6))
    assert "conv_general_dilated" not in jaxpr


def test_direction_scale_multiplies_the_direction_input():
    u = jnp.array([0.6, 0.0, 0.8, 0.0, 0.0])
    rough = ScoreMLP(5, key=jax.random.key(1), direction_scale=8.0)
    plain = ScoreMLP(5, key=jax.random.key(1))
    np.testing.assert_allclose(rough(u, 0.3, 0.2), plain(8.0 * u, 0.3, 0.2), rtol=1e-6)
    assert plain.direction_scale == 1.0 and "direction_scale" not in plain.config()
    assert ScoreMLP.from_config(rough.config()).direction_scale == 8.0


@pytest.mark.parametrize(
    "scale, error",
    [
        (0.0, ValueError),
        (-1.0, ValueError),
        (float("inf"), ValueError),
        (float("nan"), ValueError),
        (1e4, ValueError),
        (True, TypeError),
        ("8", TypeError),
    ],
)
def test_bad_direction_scales_are_refused(scale, error):
    with pytest.raises(error, match="direction_scale"):
        ScoreMLP(3, key=jax.random.key(0), direction_scale=scale)
