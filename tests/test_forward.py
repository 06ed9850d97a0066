"""Forward simulation: norm preservation, the uniform limit, the decay law and weak consistency.

Monte-Carlo assertions compare a sample mean with its target within 4 standard errors computed
from the same sample.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import explicit_tensor, make_noise, unit_rows
from scipy import stats

import msgm_pp as mp
from msgm_pp.diagnostics import direction_moment_z_scores
from msgm_pp.forward import simulate_directions

SMALL_CASES = [(name, d) for name in ("isotropic", "dense", "lattice") for d in (3, 16)]
CASES = [*SMALL_CASES, ("lattice", 1024)]


@pytest.mark.parametrize(("name", "d"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_norm_preserved_over_1000_float32_steps(name, d):
    noise = make_noise(name, d)
    x0 = jax.random.normal(jax.random.key(0), (64, d)) * jnp.logspace(-3, 3, 64)[:, None]
    xs = mp.forward_sample(noise, x0, 1.0, key=jax.random.key(1), steps=1000)
    assert xs.dtype == jnp.float32
    relative = jnp.abs(jnp.linalg.norm(xs, axis=1) / jnp.linalg.norm(x0, axis=1) - 1)
    assert float(relative.max()) < 1e-5
    assert float(jnp.abs(xs - x0).max()) > 1e-3 * float(jnp.abs(x0).max())


@pytest.mark.parametrize(("name", "d"), SMALL_CASES, ids=[f"{n}-{d}" for n, d in SMALL_CASES])
def test_direction_converges_to_uniform(name, d):
    """At the end of the mixing schedule every first and second moment of u is uniform within 4 SE,
    while early on the same statistic detects the starting point (so the test can fail)."""
    noise = make_noise(name, d)
    n = 4000
    u0 = jnp.broadcast_to(unit_rows(jax.random.key(5), 1, d), (n, d))
    tau_end = math.log(1e3) / noise.mixing_rate()
    steps = max(100, math.ceil(tau_end / 0.05))
    u = simulate_directions(noise, u0, jnp.full(n, tau_end), jax.random.key(6), steps)
    assert direction_moment_z_scores(u).max() < 4

    early_tau = jnp.full(n, 0.2 / noise.mixing_rate())
    early = simulate_directions(noise, u0, early_tau, jax.random.key(7), 20)
    assert direction_moment_z_scores(early).max() > 10


@pytest.mark.parametrize("d", [3, 16])
def test_isotropic_mean_cosine_decays_exponentially(d):
    """E[u_s · u_0] = exp(−(d−1) τ(s) / 2) for Brownian motion on the sphere."""
    noise = mp.IsotropicNoise(d)
    schedule = mp.LinearSchedule(0.1, 4.0)
    n = 20000
    x0 = jnp.broadcast_to(3.0 * unit_rows(jax.random.key(0), 1, d), (n, d))
    for s in (0.1, 0.3, 0.6):
        xs = mp.forward_sample(
            noise, x0, s, key=jax.random.key(int(s * 10)), steps=200, schedule=schedule
        )
        cosine = np.asarray(jnp.sum(xs * x0, axis=1) / 9.0, dtype=np.float64)
        target = math.exp(-(d - 1) * float(schedule.integral(s)) / 2)
        assert abs(cosine.mean() - target) < 4 * cosine.std() / math.sqrt(n)


@pytest.mark.parametrize(
    ("name", "d"), [("isotropic", 4), ("dense", 4), ("lattice", 7), ("lattice", 16)]
)
def test_one_step_matches_the_ito_generator(name, d):
    """(E φ(u_h) − φ(u_0)) / h → 𝓛φ(u_0) = (L u)·∇φ + ½ tr(Σ(u) ∇²φ) for φ(x) = sin(a·x) + (b·x)².

    Antithetic pairs (ξ, −ξ) cancel the O(√h) term, so the estimator's standard error is O(1)
    and the weak bias O(h) = 1e-3 is far below it."""
    noise = make_noise(name, d)
    rng = np.random.default_rng(d)
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    u0 = np.asarray(unit_rows(jax.random.key(1), 1, d)[0], dtype=np.float64)

    def phi(x):
        return jnp.sin(x @ a) + (x @ b) ** 2

    g = np.einsum("ijk,j->ik", explicit_tensor(noise), u0)
    sigma = g @ g.T
    hessian = -math.sin(u0 @ a) * np.outer(a, a) + 2 * np.outer(b, b)
    grad = math.cos(u0 @ a) * a + 2 * (u0 @ b) * b
    generator = np.asarray(noise.ito_drift(u0)) @ grad + 0.5 * np.trace(sigma @ hessian)

    h, n = 1e-3, 200000
    xi = jax.random.normal(jax.random.key(2), (n, *noise.increment_shape))
    u = jnp.asarray(u0, jnp.float32)
    step = jax.vmap(lambda xi: noise.rotation_step(u, xi, h))
    pair = (phi(step(xi)) + phi(step(-xi)) - 2 * phi(u)) / (2 * h)
    pair = np.asarray(pair, dtype=np.float64)
    assert abs(pair.mean() - generator) < 4 * pair.std() / math.sqrt(n) + 1e-3 * (
        1 + abs(generator)
    )


@pytest.mark.parametrize("d", [3, 16])
def test_exact_sampler_and_integrator_agree_on_the_law_of_the_cosine(d):
    """Two-sample KS test on c = u_s · u_0 (2e4 draws each) at the 1% level."""
    noise = mp.IsotropicNoise(d)
    schedule = mp.LinearSchedule(0.1, 1.0)
    s = 0.5 * 4 / (d - 1)
    n = 20000
    x0 = jnp.broadcast_to(unit_rows(jax.random.key(0), 1, d), (n, d))
    exact = mp.forward_sample_exact(noise, x0, s, key=jax.random.key(1), schedule=schedule)
    stepped = mp.forward_sample(noise, x0, s, key=jax.random.key(2), steps=400, schedule=schedule)
    c_exact, c_stepped = np.asarray(exact @ x0[0]), np.asarray(stepped @ x0[0])
    assert stats.ks_2samp(c_exact, c_stepped).pvalue > 0.01
    far = mp.forward_sample(noise, x0, 1.5 * s, key=jax.random.key(3), steps=400, schedule=schedule)
    assert stats.ks_2samp(c_exact, np.asarray(far @ x0[0])).pvalue < 1e-6


def test_per_sample_times():
    noise = mp.IsotropicNoise(3)
    schedule = mp.LinearSchedule(1.0, 1.0)
    n = 6000
    x0 = jnp.tile(jnp.array([[0.0, 0.0, 2.0]]), (2 * n, 1))
    s = jnp.concatenate([jnp.zeros(n), jnp.full(n, 0.5)])
    xs = mp.forward_sample(noise, x0, s, key=jax.random.key(0), steps=100, schedule=schedule)
    np.testing.assert_array_equal(xs[:n], x0[:n])
    cosine = np.asarray(xs[n:, 2] / 2.0, dtype=np.float64)
    assert abs(cosine.mean() - math.exp(-0.5)) < 4 * cosine.std() / math.sqrt(n)


def test_single_point_and_both_key_styles():
    noise = mp.DenseNoise(4, key=jax.random.key(0))
    x0 = jnp.array([1.0, -2.0, 0.5, 3.0])
    new_style = mp.forward_sample(noise, x0, 0.3, key=jax.random.key(9), steps=10)
    legacy = mp.forward_sample(noise, x0, 0.3, key=jax.random.PRNGKey(9), steps=10)
    assert new_style.shape == (4,)
    np.testing.assert_array_equal(new_style, legacy)


def test_forward_sample_works_under_jit_and_is_deterministic():
    noise = mp.LatticeNoise((4, 4))
    x0 = jax.random.normal(jax.random.key(0), (8, 16))
    jitted = jax.jit(lambda x, key: mp.forward_sample(noise, x, 0.5, key=key, steps=20))
    eager = mp.forward_sample(noise, x0, 0.5, key=jax.random.key(3), steps=20)
    np.testing.assert_allclose(jitted(x0, jax.random.key(3)), eager, atol=1e-6)
    np.testing.assert_array_equal(
        eager, mp.forward_sample(noise, x0, 0.5, key=jax.random.key(3), steps=20)
    )


def test_exact_sampler_refuses_other_noises_and_large_d():
    with pytest.raises(TypeError, match="IsotropicNoise only"):
        mp.forward_sample_exact(mp.LatticeNoise(5), jnp.ones((2, 5)), 0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="d <= 64"):
        mp.forward_sample_exact(
            mp.IsotropicNoise(65), jnp.ones((2, 65)), 0.1, key=jax.random.key(0)
        )
