import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.linalg import expm

import msgm_pp as mp
from msgm_pp.forward import simulate_directions


def test_linear_schedule_integral_matches_quadrature():
    schedule = mp.LinearSchedule(0.3, 7.0, T=2.0)
    for s in (0.0, 0.4, 2.0, 3.0):
        exact, _ = integrate.quad(lambda t: float(schedule.beta(t)), 0, s)
        assert math.isclose(float(schedule.integral(s)), exact, rel_tol=1e-6, abs_tol=1e-9)


def test_schedule_arguments_are_validated():
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        mp.LinearSchedule(2.0, 1.0)
    with pytest.raises(ValueError, match="T > 0"):
        mp.LinearSchedule(0.1, 1.0, T=0.0)
    with pytest.raises(ValueError, match="tol"):
        mp.mixing_schedule(mp.IsotropicNoise(3), tol=2.0)


@pytest.mark.parametrize(
    "noise", [mp.IsotropicNoise(8), mp.LatticeNoise((32,)), mp.LatticeNoise((8, 8))]
)
def test_mixing_schedule_reaches_the_tolerance(noise):
    schedule = mp.mixing_schedule(noise, tol=1e-2, T=1.0)
    assert math.isclose(
        float(schedule.integral(1.0)) * noise.mixing_rate(), math.log(100), rel_tol=1e-6
    )
    assert math.isclose(schedule.beta_max / schedule.beta_min, 100, rel_tol=1e-9)


def test_lattice_energy_profile_mixes_within_the_stated_tolerance():
    """The slow lattice modes live in the energy profile E[u_i²], which obeys dE/dτ = −½(D − A) E
    exactly. From u_0 = e_0 the deviation at site 0 is at most (1 − 1/d) exp(−rate·τ): at s = T of
    `mixing_schedule(tol)` it is below tol·(1 − 1/d) (up to 4 SE); at T/4 it matches the exact
    matrix exponential and is clearly above the tolerance."""
    noise = mp.LatticeNoise((24,))
    d, n, tol = noise.dim, 20000, 0.05
    schedule = mp.mixing_schedule(noise, tol=tol)
    u0 = jnp.zeros((n, d)).at[:, 0].set(1.0)
    start = 1 - 1 / d

    def energy_deviation(s):
        tau = float(schedule.integral(s))
        u = simulate_directions(
            noise, u0, jnp.full(n, tau), jax.random.key(int(100 * s)), math.ceil(tau / 0.05)
        )
        energy = np.asarray(u[:, 0], np.float64) ** 2
        return energy.mean() - 1 / d, energy.std() / math.sqrt(n)

    deviation, se = energy_deviation(1.0)
    assert deviation < tol * start + 4 * se
    laplacian = 2 * np.eye(d) - np.roll(np.eye(d), 1, 0) - np.roll(np.eye(d), -1, 0)
    exact = expm(-0.5 * float(schedule.integral(0.25)) * laplacian)[0, 0] - 1 / d
    early, se = energy_deviation(0.25)
    assert early > tol * start + 4 * se
    assert abs(early - exact) < 4 * se + 5e-3 * exact


def test_lattice_start_correlation_follows_the_drift_and_ends_below_the_tolerance():
    """E[u_τ · u_0] = exp(−(deg/4) τ) exactly, since L = −(deg/4) I for the lattice. It matches at
    τ = ½ and 1 (4 SE), and at s = T of `mixing_schedule(tol)`, whose τ(T) comes from the spectral
    gap of the slower energy modes, it is below tol (4 SE)."""
    noise = mp.LatticeNoise((8, 8))
    n, tol = 4000, 0.05
    schedule = mp.mixing_schedule(noise, tol=tol)
    z = jax.random.normal(jax.random.key(0), (n, noise.dim))
    u0 = z / jnp.linalg.norm(z, axis=1, keepdims=True)

    def correlation(tau, key):
        u = simulate_directions(noise, u0, jnp.full(n, tau), key, math.ceil(tau / 0.05))
        c = np.sum(np.asarray(u, np.float64) * np.asarray(u0, np.float64), axis=1)
        return c.mean(), c.std() / math.sqrt(n)

    for tau, key in ((0.5, 1), (1.0, 2)):
        mean, se = correlation(tau, jax.random.key(key))
        assert abs(mean - math.exp(-0.25 * noise.degree * tau)) < 4 * se
    mean, se = correlation(float(schedule.integral(1.0)), jax.random.key(3))
    assert mean < tol + 4 * se


@pytest.mark.parametrize(
    "schedule", [mp.LinearSchedule(0.05, 5.0), mp.vp_schedule(), mp.LinearSchedule(0.0, 2.0, T=3.0)]
)
def test_time_grid_is_increasing_and_equally_spaced_in_phi(schedule):
    """The grid runs from t_ε to T, and φ(τ) = log τ + κ τ/τ_T (κ = log(τ_T/τ_ε)) increases by
    equal amounts; inverse_integral undoes integral."""
    from msgm_pp.schedule import time_grid

    times = np.asarray(
        time_grid(schedule, 1e-3, 64, jnp.float64 if jax.config.x64_enabled else jnp.float32),
        np.float64,
    )
    assert times[0] == pytest.approx(1e-3) and times[-1] == pytest.approx(schedule.T)
    assert np.all(np.diff(times) > 0)
    tau = np.asarray(schedule.integral(times), np.float64)
    kappa = np.log(tau[-1] / tau[0])
    phi = np.log(tau) + kappa * tau / tau[-1]
    np.testing.assert_allclose(np.diff(phi), (phi[-1] - phi[0]) / 64, rtol=2e-2)
    s = jnp.linspace(0.0, schedule.T, 7)
    np.testing.assert_allclose(schedule.inverse_integral(schedule.integral(s)), s, atol=1e-5)
