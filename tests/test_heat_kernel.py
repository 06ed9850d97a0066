"""The spherical heat kernel tables and the exact isotropic sampler, against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unit_rows
from scipy import integrate
from scipy.special import eval_gegenbauer

from msgm_pp import heat_kernel as hk


@pytest.mark.parametrize("d", [3, 16, 32, 64])
def test_series_and_short_time_forms_agree_at_the_switch(d):
    assert hk.angle_table(d).switch_error < 1e-3


@pytest.mark.parametrize(("d", "tau"), [(3, 0.05), (3, 2.0), (8, 0.01), (16, 0.3), (64, 0.05)])
def test_heat_kernel_integrates_to_one_over_the_sphere(d, tau):
    """∫ f_τ(u·u_0) du = |S^{d−2}| ∫_0^π f_τ(cos θ) sin^{d−2} θ dθ = 1."""
    mass, _ = integrate.quad(
        lambda t: hk._series_angle_density(np.array([t]), tau, d)[0], 0, math.pi, limit=200
    )
    assert abs(mass - 1) < 1e-6


@pytest.mark.parametrize("d", [3, 8])
def test_short_time_form_integrates_to_one_for_small_tau(d):
    tau = 1e-4
    mass, _ = integrate.quad(
        lambda t: hk._short_time_angle_density(np.array([t]), tau, d)[0], 0, 0.2, limit=200
    )
    assert abs(mass - 1) < 1e-4


@pytest.mark.parametrize("d", [3, 16, 64])
def test_tabulated_quantiles_invert_the_cdf_off_grid(d):
    rng = np.random.default_rng(d)
    table = hk.angle_table(d)
    for tau in np.exp(rng.uniform(table.log_tau[0], table.log_tau[-1], 12)):
        p = rng.uniform(0.001, 0.999, 50)
        theta = np.asarray(
            hk.angle_quantile(jnp.asarray(p), jnp.full(50, tau), d), dtype=np.float64
        )
        grid = hk._theta_grid(tau, d)
        cdf = np.interp(theta, grid, hk.angle_cdf(grid, tau, d))
        assert np.abs(cdf - p).max() < 2e-3


GEGENBAUER_CASES = [
    (3, 1e-6),
    (3, 1e-3),
    (3, 0.3),
    (8, 2e-4),
    (8, 0.1),
    (16, 1e-3),
    (16, 0.05),
    (64, 1e-3),
    (64, 0.02),
]


@pytest.mark.parametrize(("d", "tau"), GEGENBAUER_CASES)
def test_exact_sampler_matches_gegenbauer_moments(d, tau):
    """E[C_l^λ(c)] / C_l^λ(1) = exp(−l(l+d−2)τ/2) for l = 1, 2, 3 (within 4 standard errors)."""
    n = 100000
    u0 = jnp.broadcast_to(unit_rows(jax.random.key(0), 1, d), (n, d))
    u = hk.sample_direction(jax.random.key(1), u0, tau)
    assert float(jnp.abs(jnp.linalg.norm(u, axis=1) - 1).max()) < 1e-5
    c = np.clip(np.asarray(u @ u0[0], dtype=np.float64), -1, 1)
    lam = (d - 2) / 2
    for l in (1, 2, 3):
        moment = eval_gegenbauer(l, lam, c) / eval_gegenbauer(l, lam, 1.0)
        target = math.exp(-l * (l + d - 2) * tau / 2)
        assert abs(moment.mean() - target) < 4 * moment.std() / math.sqrt(n) + 1e-6


@pytest.mark.parametrize("tau", [1e-4, 0.5, 5.0])
def test_circle_is_the_wrapped_normal(tau):
    n = 100000
    u0 = jnp.broadcast_to(jnp.array([[0.6, 0.8]]), (n, 2))
    u = np.asarray(hk.sample_direction(jax.random.key(2), u0, tau), dtype=np.float64)
    angle = np.arctan2(u[:, 1], u[:, 0]) - math.atan2(0.8, 0.6)
    for l in (1, 2):
        moment = np.cos(l * angle)
        assert (
            abs(moment.mean() - math.exp(-(l**2) * tau / 2))
            < 4 * moment.std() / math.sqrt(n) + 1e-6
        )


def test_zero_intensity_does_not_move():
    u0 = unit_rows(jax.random.key(0), 5, 4)
    np.testing.assert_allclose(hk.sample_direction(jax.random.key(1), u0, 0.0), u0, atol=1e-7)


def test_dimension_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="3 <= d <= 64"):
        hk.angle_table(65)


def test_log_sphere_area():
    assert math.isclose(hk.log_sphere_area(2), math.log(2 * math.pi))
    assert math.isclose(hk.log_sphere_area(3), math.log(4 * math.pi))


def _points_at_angles(theta, d):
    """Unit vectors at angles θ from u0 = e_1, in the (e_1, e_2) plane."""
    u = np.zeros((theta.size, d))
    u[:, 0], u[:, 1] = np.cos(theta), np.sin(theta)
    u0 = np.zeros(d)
    u0[0] = 1.0
    return jnp.asarray(u, jnp.float32), jnp.asarray(u0, jnp.float32)


def _reference_ratio(theta, tau, d):
    """f'/f (derivative in c = cos θ) by the Gegenbauer series in 60-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        lam = mpmath.mpf(d - 2) / 2
        c, tau = mpmath.cos(mpmath.mpf(float(theta))), mpmath.mpf(float(tau))
        p_prev, p, dp_prev, dp = mpmath.mpf(1), c, mpmath.mpf(0), mpmath.mpf(1)
        w = d * mpmath.exp(-(d - 1) * tau / 2)
        f, df = 1 + w * p, w * dp
        l = 1
        while True:
            l += 1
            a, b = 2 * (l + lam - 1) / (l + 2 * lam - 1), mpmath.mpf(l - 1) / (l + 2 * lam - 1)
            p_prev, p = p, a * c * p - b * p_prev
            dp_prev, dp = dp, a * (p_prev + c * dp) - b * dp_prev
            log_n = (
                mpmath.log(2 * l + d - 2)
                + mpmath.loggamma(l + d - 2)
                - mpmath.loggamma(l + 1)
                - mpmath.loggamma(d - 1)
            )
            w = mpmath.exp(log_n - l * (l + d - 2) * tau / 2)
            f, df = f + w * p, df + w * dp
            if l * (l + d - 2) * tau / 2 - log_n > 120:
                return float(df / f)


@pytest.mark.parametrize("d", [2, 3, 5, 16, 32])
def test_dsm_target_matches_high_precision_series(d):
    """|target| / sin θ = f'/f to 1e-4 relative for angles up to 0.9 θ_top(τ)."""
    rng = np.random.default_rng(d)
    for tau in np.geomspace(1e-4, 8.0 / (d - 1), 9):
        theta = rng.uniform(0.02, 0.9, 4) * hk._kernel_theta_top(tau, d)
        theta = theta[np.sin(theta) > 1e-2]
        u, u0 = _points_at_angles(theta, d)
        target = np.asarray(hk.heat_kernel_score(u, u0, tau), dtype=np.float64)
        ratio = np.linalg.norm(target, axis=1) / np.sin(theta)
        reference = np.array([_reference_ratio(t, tau, d) for t in theta])
        np.testing.assert_allclose(ratio, reference, rtol=1e-4)
        tangential = np.sum(np.asarray(u) * target, axis=1) / ratio
        np.testing.assert_allclose(tangential, 0.0, atol=1e-5)


@pytest.mark.parametrize(("d", "tau"), [(2, 0.01), (3, 1e-3), (4, 0.3), (16, 0.05), (32, 0.1)])
def test_dsm_target_is_the_gradient_of_the_log_kernel(d, tau):
    """(f'/f)(u0 − c u) against central differences of `log_heat_kernel` along the geodesic."""
    top = hk._kernel_theta_top(tau, d)
    theta = np.linspace(0.05, 0.85, 9) * top
    delta = top / 64
    u, u0 = _points_at_angles(theta, d)
    plus, _ = _points_at_angles(theta + delta, d)
    minus, _ = _points_at_angles(theta - delta, d)
    slope = (hk.log_heat_kernel(plus, u0, tau) - hk.log_heat_kernel(minus, u0, tau)) / (2 * delta)
    target = hk.heat_kernel_score(u, u0, tau)
    along_geodesic = jnp.stack([-jnp.sin(theta), jnp.cos(theta)], axis=1)
    np.testing.assert_allclose(
        np.asarray(jnp.sum(target[:, :2] * along_geodesic, axis=1)), slope, rtol=2e-3
    )


@pytest.mark.parametrize(("d", "tau"), [(2, 0.01), (3, 1e-4), (3, 0.5), (8, 0.02), (32, 0.004)])
def test_tabulated_kernel_integrates_to_one_over_the_sphere(d, tau):
    theta = np.linspace(0.0, np.pi, 20001)
    u, u0 = _points_at_angles(theta, d)
    density = np.exp(np.asarray(hk.log_heat_kernel(u, u0, tau), dtype=np.float64))
    angle_density = np.exp(hk.log_sphere_area(d - 1)) * density * np.sin(theta) ** (d - 2)
    assert abs(integrate.simpson(angle_density, x=theta) - 1) < 1e-4


def test_dsm_tables_stop_at_d_32():
    with pytest.raises(ValueError, match="loss='ssm'"):
        hk.kernel_table(33)
