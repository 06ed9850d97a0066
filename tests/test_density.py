"""The probability-flow log-density against the spherical heat kernel, and its transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PointMassScore, time_of_tau

import msgm_pp as mp
from msgm_pp.heat_kernel import log_heat_kernel
from msgm_pp.score import TangentScore
from msgm_pp.sphere import log_sphere_area

TAU_0 = 0.1


def point_mass_model(d: int, tau_0: float = TAU_0, **options):
    """An MSGM whose score is exact: directions are the heat kernel at τ = tau_0 around e_1, and
    log-norms are N(0, 1) through a KDE norm model. Its density is closed-form:
    log p(x) = log p_ℓ(ℓ) − d ℓ + log f_{tau_0}(u · e_1)."""
    noise = mp.IsotropicNoise(d)
    schedule = mp.mixing_schedule(noise)
    u0 = jnp.zeros(d).at[0].set(1.0)
    t_eps = time_of_tau(schedule, tau_0)
    score = TangentScore(PointMassScore(u0, schedule), noise, schedule, 0.0, 1.0, t_eps)
    norm_model = mp.KDENorm.fit(np.random.default_rng(0).standard_normal(4000))
    return mp.MSGM(score, norm_model, **options), u0


def with_steps(model, steps: int):
    return model.with_options(density=mp.ODEDensity(steps, model.density.trace))


def typical_points(model, u0, n, key):
    """Points drawn from the model's own law (exact heat-kernel directions, N(0, 1) log-norms)."""
    direction_key, norm_key = jax.random.split(key)
    noise, schedule = model.noise, model.score.schedule
    u = mp.forward_sample_exact(
        noise, jnp.tile(u0, (n, 1)), model.score.t_eps, key=direction_key, schedule=schedule
    )
    log_r = jax.random.normal(norm_key, (n,))
    return jnp.exp(log_r)[:, None] * u, log_r, u


def closed_form(model, u0, log_r, u, tau_0: float = TAU_0):
    return model.norm_model.log_prob(log_r) - model.dim * log_r + log_heat_kernel(u, u0, tau_0)


@pytest.mark.parametrize("d", [2, 3, 16])
def test_log_prob_matches_the_heat_kernel(d):
    """With the exact score, log_prob is the heat-kernel density up to (a) the latent's residual
    non-uniformity at T, bounded by max |log f_{τ(T)} + log|S^{d−1}|| (the schedule mixes to 1e-3),
    and (b) the O(h²) error of the ODE: it is below 0.01 nats at 256 steps in d = 2, where the
    kernel is sharpest, and the distance to the 1024-step solution falls more than 10× from 64 to
    256 steps (16× for a second-order method; measured 17× in d = 2)."""
    model, u0 = point_mass_model(d)
    x, log_r, u = typical_points(model, u0, 400, jax.random.key(d))
    exact = closed_form(model, u0, log_r, u)
    score = model.score
    residual = float(
        jnp.max(jnp.abs(log_heat_kernel(u, u0, score.tau(score.schedule.T)) + log_sphere_area(d)))
    )
    log_p = {steps: with_steps(model, steps).log_prob(x) for steps in (64, 256, 1024)}
    assert float(jnp.max(jnp.abs(log_p[256] - exact))) < residual + 0.01
    distance = {steps: float(jnp.max(jnp.abs(log_p[steps] - log_p[1024]))) for steps in (64, 256)}
    if distance[64] > 1e-3:  # above float32 round-off of the solve
        assert distance[64] / distance[256] > 10.0


@pytest.mark.parametrize("d", [3, 8])
def test_log_prob_is_accurate_for_a_sharp_kernel(d):
    """At τ_0 = 1e-3 (a direction spread of about 0.04 rad, as a well-trained model has near t_ε)
    the integrand of the ODE varies on the scale of τ itself, so equal steps in s were off by 1.2
    to 1.5 nats at 64 steps. The grid of `time_grid` (equal steps in log τ near t_ε) brings the
    largest error over 400 points to 0.09 (d = 3) and 0.14 (d = 8) at 64 steps, and below 0.01
    at 256."""
    model, u0 = point_mass_model(d, tau_0=1e-3)
    x, log_r, u = typical_points(model, u0, 400, jax.random.key(d))
    exact = closed_form(model, u0, log_r, u, tau_0=1e-3)
    errors = {
        steps: float(jnp.max(jnp.abs(with_steps(model, steps).log_prob(x) - exact)))
        for steps in (64, 256)
    }
    assert errors[64] < 0.2 and errors[256] < 0.01


@pytest.mark.parametrize("d, tau_0", [(2, TAU_0), (3, 1e-3), (8, 1e-3)])
def test_extrapolation_cancels_most_of_the_step_error(d, tau_0):
    """Heun's error in log p is c/steps² + O(steps⁻³), so (4 L(64) − L(32))/3 cancels the leading
    term: its mean error over 400 points is at least 4× below that of 64 plain steps (measured
    7–12×; a second-order term alone would vanish) and its largest error below 0.05 nats
    (measured 0.012–0.038; plain 64 steps: 0.05–0.14)."""
    model, u0 = point_mass_model(d, tau_0=tau_0)
    x, log_r, u = typical_points(model, u0, 400, jax.random.key(d))
    exact = closed_form(model, u0, log_r, u, tau_0=tau_0)
    plain = with_steps(model, 64).log_prob(x) - exact
    extrapolated = (
        model.with_options(density=mp.ODEDensity(64, extrapolate=True)).log_prob(x) - exact
    )
    assert abs(float(jnp.mean(extrapolated))) < abs(float(jnp.mean(plain))) / 4
    assert float(jnp.max(jnp.abs(extrapolated))) < 0.05


@pytest.mark.parametrize("model_name", ["msgm", "sgm"])
def test_extrapolation_is_the_richardson_combination(model_name):
    """With the exact trace, ODEDensity(steps, extrapolate=True) is (4 L(steps) − L(steps/2))/3
    of two plain solves, for the MSGM and for the SGM."""
    if model_name == "msgm":
        model, u0 = point_mass_model(3)
        x = typical_points(model, u0, 20, jax.random.key(0))[0]
    else:
        net = mp.TimeMLP(3, key=jax.random.key(0), width=16, depth=1)
        score = mp.VPScore(net, mp.vp_schedule(), jnp.ones(3), 2 * jnp.ones(3), 1e-3)
        model = mp.SGM(score)
        x = jax.random.normal(jax.random.key(1), (20, 3))
    log_p = {steps: with_steps(model, steps).log_prob(x) for steps in (8, 16)}
    extrapolated = model.with_options(density=mp.ODEDensity(16, extrapolate=True)).log_prob(x)
    np.testing.assert_allclose(extrapolated, (4 * log_p[16] - log_p[8]) / 3, rtol=1e-5, atol=1e-5)


def test_extrapolation_needs_an_even_number_of_steps():
    with pytest.raises(ValueError, match="even number of `steps`"):
        mp.ODEDensity(33, extrapolate=True)
    with pytest.raises(TypeError, match="`extrapolate` must be True or False"):
        mp.ODEDensity(32, extrapolate=1)


def test_hutchinson_trace_is_an_unbiased_deterministic_estimate():
    """Averaged over 64 probe keys, the Hutchinson log-density matches the exact trace within 4
    standard errors; for a fixed key it is a deterministic function of x."""
    model, u0 = point_mass_model(3, density=mp.ODEDensity(32, mp.ExactTrace()))
    x, _, _ = typical_points(model, u0, 4, jax.random.key(0))
    exact = model.log_prob(x)
    hutchinson = model.with_options(density=mp.ODEDensity(32, mp.HutchinsonTrace()))
    estimates = jnp.stack([hutchinson._log_prob(x, jax.random.key(k)) for k in range(64)])
    standard_error = estimates.std(0) / np.sqrt(64)
    assert float(estimates.std(0).min()) > 0
    assert jnp.all(jnp.abs(estimates.mean(0) - exact) < 4 * standard_error)
    np.testing.assert_array_equal(hutchinson.log_prob(x), hutchinson.log_prob(x))
    reseeded = model.with_options(density=mp.ODEDensity(32, mp.HutchinsonTrace(seed=5)))
    np.testing.assert_array_equal(reseeded.log_prob(x), estimates[5])


def test_trace_defaults_to_exact_up_to_64_dimensions():
    assert point_mass_model(3)[0].density.trace == mp.ExactTrace()
    noise = mp.IsotropicNoise(65)
    score = TangentScore(
        mp.ScoreMLP(65, key=jax.random.key(0), width=8, depth=1),
        noise,
        mp.mixing_schedule(noise),
        0.0,
        1.0,
        1e-3,
    )
    assert mp.MSGM(score, point_mass_model(3)[0].norm_model).density.trace == mp.HutchinsonTrace()


def test_log_prob_shapes_jit_and_vmap():
    model, u0 = point_mass_model(3, density=mp.ODEDensity(16))
    x, _, _ = typical_points(model, u0, 12, jax.random.key(1))
    flat = model.log_prob(x)
    assert flat.shape == (12,)
    np.testing.assert_array_equal(model.log_prob(x.reshape(3, 4, 3)), flat.reshape(3, 4))
    assert model.log_prob(x[0]).shape == ()
    np.testing.assert_allclose(jax.jit(lambda m, v: m.log_prob(v))(model, x), flat, atol=2e-5)
    np.testing.assert_allclose(jax.vmap(model.log_prob)(x), flat, atol=2e-5)
    assert model.log_prob(jnp.zeros((0, 3))).shape == (0,)


def test_gradient_matches_finite_differences():
    """In float64, central differences with h = 1e-5 have error ~1e-9, far below the rtol."""
    with jax.enable_x64(True):
        model, _ = point_mass_model(3, density=mp.ODEDensity(16))
        model = jax.tree.map(lambda a: a.astype(jnp.float64), model)
        x = jnp.array([[0.7, -1.1, 0.4], [2.0, 0.3, -0.2]], dtype=jnp.float64)
        grad = jax.vmap(jax.grad(model.log_prob))(x)
        h = 1e-5
        for i in range(3):
            e = jnp.zeros(3, jnp.float64).at[i].set(h)
            numeric = (model.log_prob(x + e) - model.log_prob(x - e)) / (2 * h)
            np.testing.assert_allclose(grad[:, i], numeric, rtol=1e-5, atol=1e-7)
        assert bool(jnp.all(jnp.isfinite(grad)))


def test_irregular_points_and_bad_shapes():
    model, _ = point_mass_model(3, density=mp.ODEDensity(8), validate_args=False)
    x = jnp.array([[0.0, 0.0, 0.0], [jnp.inf, 1.0, 0.0], [jnp.nan, 1.0, 0.0], [1.0, 0.5, 0.0]])
    log_p = model.log_prob(x)
    assert log_p[0] == -jnp.inf and log_p[1] == -jnp.inf and jnp.isnan(log_p[2])
    assert jnp.isfinite(log_p[3])
    assert bool(jnp.all(jnp.isfinite(jax.grad(model.log_prob)(x[0]))))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        model.log_prob(jnp.ones((5, 4)))
    with pytest.raises(TypeError, match="`trace` must be"):
        mp.ODEDensity(8, trace="diagonal")
    with pytest.raises(ValueError, match="`steps` must be a positive int"):
        mp.ODEDensity(0)
    with pytest.raises(TypeError, match="`density` must be"):
        model.with_options(density=16)
    with pytest.raises(TypeError, match="unknown option"):
        model.with_options(step=3)


def test_validate_args_gives_minus_inf_outside_the_support():
    model, _ = point_mass_model(3, density=mp.ODEDensity(8), validate_args=True)
    with pytest.warns(UserWarning, match="Out-of-support"):
        log_p = model.log_prob(jnp.array([[jnp.inf, 1.0, 0.0], [1.0, 0.5, 0.0]]))
    assert log_p[0] == -jnp.inf and jnp.isfinite(log_p[1])


def test_infer_shapes_uses_the_score():
    model, _ = point_mass_model(5)
    assert mp.MSGM.infer_shapes(model.score) == ((), (5,))
    assert mp.MSGM.infer_shapes(jax.eval_shape(lambda: model.score)) == ((), (5,))
    with pytest.raises(ValueError, match="needs the score"):
        mp.MSGM.infer_shapes()


def test_log_prob_is_finite_at_the_largest_float32_values():
    """1/1e38 is subnormal in float32, so a norm computed as max|x| · |x / max|x|| lost the
    direction (XLA flushes subnormals to zero) and log_prob was NaN."""
    data = np.random.default_rng(0).standard_cauchy((400, 3)).astype(np.float32)
    model = mp.MSGM.build(data, key=jax.random.key(0), density=mp.ODEDensity(4))
    direction = jnp.array([1.0, -0.5, 0.25], jnp.float32)
    scales = jnp.array([1e36, 1e37, 1e38, 3e38], jnp.float32)
    log_p = np.asarray(model.log_prob(scales[:, None] * direction / 1.0))
    assert np.isfinite(log_p).all()
    assert np.all(np.diff(log_p) < 0)  # deep in the tail the density falls with the norm


def test_float32_points_meet_a_float64_model():
    data = np.random.default_rng(0).standard_cauchy((400, 3))
    with jax.enable_x64(True):
        model = mp.MSGM.build(jnp.asarray(data), key=jax.random.key(0), density=mp.ODEDensity(4))
        from_float32 = model.log_prob(jnp.asarray(data[:4], jnp.float32))
        from_float64 = model.log_prob(jnp.asarray(data[:4], jnp.float64))
    assert from_float32.dtype == jnp.float64
    np.testing.assert_allclose(from_float32, from_float64, atol=1e-5)
