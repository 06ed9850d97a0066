import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import explicit_tensor, make_noise, unit_rows

import msgm_pp as mp
from msgm_pp.noise import _tensor_mixing_rate


def so3_basis():
    g = np.zeros((3, 3, 3))
    for k, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        g[i, j, k], g[j, i, k] = 1.0, -1.0
    return g


NOISES = {
    "isotropic-3": lambda: mp.IsotropicNoise(3),
    "isotropic-6": lambda: mp.IsotropicNoise(6),
    "dense-3": lambda: mp.DenseNoise(3, key=jax.random.key(0)),
    "dense-6": lambda: mp.DenseNoise(6, key=jax.random.key(1)),
    "tensor-so3": lambda: mp.TensorNoise(so3_basis()),
    "ring-7": lambda: mp.LatticeNoise((7,)),
    "ring-8": lambda: mp.LatticeNoise(8),
    "grid-4x4": lambda: mp.LatticeNoise((4, 4)),
    "grid-3x5": lambda: mp.LatticeNoise((3, 5)),
}


@pytest.fixture(params=sorted(NOISES), ids=sorted(NOISES))
def noise(request):
    return NOISES[request.param]()


def test_generators_are_skew_symmetric_and_consistent(noise):
    g = explicit_tensor(noise)
    assert g.shape == (noise.dim, noise.dim, noise.num_generators)
    np.testing.assert_array_equal(g + g.transpose(1, 0, 2), 0.0)

    x, v = np.asarray(unit_rows(jax.random.key(0), 2, noise.dim)) * np.array([[3.0], [0.5]])
    xi = np.random.default_rng(0).standard_normal(noise.num_generators)
    gx = np.einsum("ijk,j->ik", g, x)
    np.testing.assert_allclose(noise.apply(x, xi), gx @ xi, atol=1e-5)
    np.testing.assert_allclose(noise.apply_transpose(x, v), gx.T @ v, atol=1e-5)
    np.testing.assert_allclose(noise.diffusion(x, v), gx @ gx.T @ v, atol=1e-5)
    np.testing.assert_allclose(noise.diffusion_diagonal(x), np.diag(gx @ gx.T), atol=1e-5)
    ito = 0.5 * np.einsum("ijk,jlk->il", g, g)
    np.testing.assert_allclose(noise.ito_drift(x), ito @ x, atol=1e-5)
    # every column G^k x is orthogonal to x, so Σ(x) x = 0 and the norm is invariant
    np.testing.assert_allclose(gx.T @ x, 0.0, atol=1e-5)
    np.testing.assert_allclose(noise.diffusion(x, x), 0.0, atol=1e-5)


def test_rank_condition_holds(noise):
    g = explicit_tensor(noise)
    x = np.random.default_rng(1).standard_normal(noise.dim)
    assert np.linalg.matrix_rank(np.einsum("ijk,j->ik", g, x)) == noise.dim - 1


def test_methods_broadcast_over_batch_axes(noise):
    x = jax.random.normal(jax.random.key(0), (2, 5, noise.dim))
    xi = jax.random.normal(jax.random.key(1), (2, 5, noise.num_generators))
    assert noise.apply(x, xi).shape == x.shape
    assert noise.apply_transpose(x, x).shape == xi.shape
    assert noise.diffusion(x, x).shape == x.shape
    assert noise.diffusion_diagonal(x).shape == x.shape
    assert noise.ito_drift(x).shape == x.shape
    np.testing.assert_allclose(noise.apply(x, xi)[1, 3], noise.apply(x[1, 3], xi[1, 3]), rtol=1e-6)


def test_rotation_step_is_a_rotation(noise):
    """Steps with large increments and a drift are orthogonal maps: with no renormalisation the
    norm moves only by float32 rounding, where a Euclidean step would change it by O(step²)."""
    u = unit_rows(jax.random.key(2), 1, noise.dim)[0]
    g = jax.random.normal(jax.random.key(4), (noise.dim,))
    for i in range(10):
        xi = jax.random.normal(jax.random.fold_in(jax.random.key(3), i), noise.increment_shape)
        out = noise.rotation_step(u, xi, 0.3, g=g, drift_dt=0.2)
        assert float(jnp.linalg.norm(out - u)) > 1e-2
        u = out
    assert abs(float(jnp.linalg.norm(u)) - 1.0) < 3e-6


def test_isotropic_closed_forms():
    d = 5
    noise = mp.IsotropicNoise(d)
    g = explicit_tensor(noise)
    np.testing.assert_allclose(
        0.5 * np.einsum("ijk,jlk->il", g, g), -(d - 1) / 2 * np.eye(d), atol=1e-6
    )
    u = np.asarray(unit_rows(jax.random.key(0), 1, d)[0])
    gu = np.einsum("ijk,j->ik", g, u)
    np.testing.assert_allclose(gu @ gu.T, np.eye(d) - np.outer(u, u), atol=1e-6)
    assert noise.mixing_rate() == (d - 1) / 2


def test_dense_noise_is_normalised_to_trace_minus_half_d():
    for d in (3, 8):
        noise = mp.DenseNoise(d, key=jax.random.key(d))
        assert noise.generators.shape == (d, d, d)
        assert math.isclose(float(jnp.trace(noise.ito_matrix())), -d / 2, rel_tol=1e-5)


def test_dense_noise_depends_only_on_key():
    a = mp.DenseNoise(4, key=jax.random.key(7))
    b = mp.DenseNoise(4, key=jax.random.PRNGKey(7))
    np.testing.assert_array_equal(a.generators, b.generators)


@pytest.mark.parametrize("shape", [(7,), (8,), (4, 4), (3, 5)])
def test_lattice_mixing_rate_matches_second_moment_operator(shape):
    """The closed form ½λ₁(D − A) (and deg/4) equals the gap computed from the explicit tensor."""
    noise = mp.LatticeNoise(shape)
    numeric = _tensor_mixing_rate(explicit_tensor(noise))
    assert math.isclose(noise.mixing_rate(), numeric, rel_tol=1e-6)


def test_tensor_mixing_rate_of_so3_is_the_isotropic_rate():
    assert math.isclose(
        mp.TensorNoise(so3_basis()).mixing_rate(), mp.IsotropicNoise(3).mixing_rate(), rel_tol=1e-9
    )


def test_lattice_step_never_forms_a_dense_matrix():
    """O(d) memory: no intermediate of the jitted step has d² or more elements."""
    noise = mp.LatticeNoise((64, 64))
    d = noise.dim
    u = jnp.ones(d) / math.sqrt(d)
    jaxpr = jax.make_jaxpr(lambda u, xi: noise.rotation_step(u, xi, 0.1, g=u, drift_dt=0.1))(
        u, jnp.ones(noise.num_generators)
    )
    sizes = []

    def collect(jaxpr):
        for eqn in jaxpr.eqns:
            sizes.extend(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    collect(inner)

    collect(jaxpr.jaxpr)
    assert max(sizes) <= 16 * d


def test_lattice_shapes_are_validated():
    with pytest.raises(ValueError, match=">= 3"):
        mp.LatticeNoise((2, 8))
    with pytest.raises(ValueError, match="1-D ring or a 2-D grid"):
        mp.LatticeNoise((4, 4, 4))


def test_user_tensor_must_be_skew_symmetric():
    g = so3_basis()
    g[0, 1, 2] = 0.5
    with pytest.raises(ValueError, match=r"A1 fails: generators k = \[2\]"):
        mp.TensorNoise(g)


def test_user_tensor_must_satisfy_the_rank_condition():
    single = so3_basis()[:, :, :1]
    with pytest.raises(ValueError, match=r"A2 fails.*K >= d - 1"):
        mp.TensorNoise(single)
    repeated = np.repeat(so3_basis()[:, :, :1], 3, axis=2)
    with pytest.raises(ValueError, match=r"A2 fails: rank G\(x\) = 1 < d - 1 = 2"):
        mp.TensorNoise(repeated)


def test_user_tensor_shape_and_values_are_validated():
    with pytest.raises(ValueError, match=r"shape \(d, d, K\)"):
        mp.TensorNoise(np.zeros((3, 4, 3)))
    g = so3_basis()
    g[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf entries in generators k = \[0\]"):
        mp.TensorNoise(g)


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_dimension_below_two_is_refused(bad):
    with pytest.raises(ValueError, match="at least 2"):
        mp.IsotropicNoise(bad)
    with pytest.raises(ValueError, match="at least 2"):
        mp.DenseNoise(bad, key=jax.random.key(0))


def test_dense_noise_needs_a_key():
    with pytest.raises(TypeError, match="PRNG key"):
        mp.DenseNoise(3, key=0)


@pytest.mark.parametrize("name", ["isotropic", "dense", "lattice"])
def test_trace_ito_matches_the_explicit_tensor(name):
    noise = make_noise(name, 16 if name == "lattice" else 5)
    g = explicit_tensor(noise)
    np.testing.assert_allclose(float(noise.trace_ito()), -0.5 * np.sum(g**2), rtol=1e-5)


def _dot_precisions(jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                found.extend(_dot_precisions(getattr(inner, "jaxpr", inner)))
    return found


@pytest.mark.parametrize("name", ["isotropic", "dense"])
def test_contractions_ask_for_full_float32_precision(name):
    """Skew-symmetry and norm preservation must not depend on the backend's default matmul precision
    (TF32 on some GPUs gives errors of 7e-5): every contraction of the noise asks for HIGHEST."""
    noise = make_noise(name, 5)
    x = jnp.linspace(-1.0, 1.0, 5)
    xi = jnp.ones(noise.increment_shape)
    programs = [
        jax.make_jaxpr(noise.apply)(x, jnp.ones(noise.num_generators)),
        jax.make_jaxpr(noise.apply_transpose)(x, x),
        jax.make_jaxpr(noise.diffusion)(x, x),
        jax.make_jaxpr(lambda u, z: noise.rotation_step(u, z, 0.1, u, 0.1))(x / 2, xi),
    ]
    precisions = [p for program in programs for p in _dot_precisions(program.jaxpr)]
    assert precisions, "no contraction found"
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(p == highest for p in precisions), precisions
