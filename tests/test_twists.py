"""Twists: the EnergyTwist's log ψ against the closed-form Gaussian average, and its guess."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import msgm_pp as mp
from msgm_pp import smc as smc_module


class ShiftedGuess(eqx.Module):
    """A stand-in process whose guess of x_0 is N(z + offset, diag variance)."""

    offset: jax.Array
    variance: jax.Array

    @property
    def dim(self) -> int:
        return self.offset.shape[0]

    def energy_guess(self, z, log_r, s):
        return (z + self.offset, self.variance), jnp.zeros_like(z)

    def to_data(self, y):
        return y

    def tangent(self, z, gradient):
        return gradient


def linear_observations(matrix, y, sigma):
    def observations(x, others):
        return y, matrix @ x, jnp.full_like(y, sigma)

    return observations


def closed_form(matrix, y, sigma, mean, variance):
    """Σ_k log N(y_k; (A m)_k, σ² + Σ_i A_ki² c_i), the observations averaged one at a time."""
    total = sigma**2 + (matrix**2) @ variance
    return float(np.sum(stats.norm(matrix @ mean, np.sqrt(total)).logpdf(y)))


def test_the_energy_twist_averages_single_coordinate_observations_exactly():
    """Observations of single coordinates (a mask): the Rademacher probes are exact, so log ψ
    and its guidance are the closed form's to rounding."""
    offset, variance = jnp.array([0.5, -1.0, 2.0, 0.3]), jnp.array([0.2, 1.5, 0.7, 3.0])
    matrix = jnp.eye(4)[jnp.array([0, 2, 3])]
    y, sigma, z = jnp.array([1.0, -0.5, 2.5]), 0.3, jnp.array([0.1, 0.2, -0.4, 1.0])
    process = ShiftedGuess(offset, variance)
    twist = mp.EnergyTwist(probes=3).build(
        process, None, linear_observations(matrix, y, sigma), jax.random.key(0)
    )
    log_psi, _, guidance = twist(z, 0.0, {}, 0.5)
    mean = np.asarray(z + offset, np.float64)
    expected = closed_form(*map(np.asarray, (matrix, y)), sigma, mean, np.asarray(variance))
    np.testing.assert_allclose(float(log_psi), expected, rtol=1e-5)
    total = sigma**2 + variance[jnp.array([0, 2, 3])]
    expected_guidance = matrix.T @ ((y - matrix @ (z + offset)) / total)
    np.testing.assert_allclose(guidance, expected_guidance, rtol=1e-5)


def test_the_energy_twist_estimates_blurred_variances_without_bias():
    """Observations that mix coordinates: J diag(c) Jᵀ is estimated from the probes, each giving
    (Σ_i A_ki ε_i)(Σ_j A_kj c_j ε_j) = Σ_i A_ki² c_i + Σ_{i<j} A_ki A_kj (c_i + c_j) ε_i ε_j, of
    variance Σ_{i<j} A_ki² A_kj² (c_i + c_j)². With 20000 probes log ψ must be within 5 of its
    propagated standard errors of the closed form."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(3, 5))
    variance, mean, y, sigma = rng.uniform(0.2, 2.0, 5), rng.normal(size=5), rng.normal(size=3), 0.5
    process = ShiftedGuess(jnp.asarray(mean, jnp.float32), jnp.asarray(variance, jnp.float32))
    observations = linear_observations(
        jnp.asarray(matrix, jnp.float32), jnp.asarray(y, jnp.float32), sigma
    )
    twist = mp.EnergyTwist(probes=20000).build(process, None, observations, jax.random.key(1))
    log_psi, _, _ = twist(jnp.zeros(5), 0.0, {}, 0.5)
    spread = (matrix**2) @ variance
    total = sigma**2 + spread
    i, j = np.triu_indices(5, 1)
    pairs = (matrix[:, i] * matrix[:, j]) ** 2 * (variance[i] + variance[j]) ** 2
    probe_sd = np.sqrt(pairs.sum(1) / 20000)
    residual = y - matrix @ mean
    sensitivity = 0.5 * np.abs(1 / total - residual**2 / total**2)
    tolerance = 5 * np.sqrt(np.sum((sensitivity * probe_sd) ** 2))
    expected = closed_form(matrix, y, sigma, mean, variance)
    assert abs(float(log_psi) - expected) < tolerance


@pytest.mark.parametrize("noise", ["isotropic", "lattice"])
def test_the_energy_guess_keeps_the_norm_and_puts_the_variance_where_the_noise_moves(noise):
    """|m|² + Σ c = r² at every time (the energy of the guess is the particle's), and c is
    proportional to diag Σ(u): uniform up to 1 − u_i² for isotropic noise, the neighbours' energy
    on a lattice."""
    shape = (6,) if noise == "isotropic" else (4, 4)
    data = jax.random.t(jax.random.key(0), 3.0, (64, *shape))
    kind = mp.IsotropicNoise(6) if noise == "isotropic" else mp.LatticeNoise(shape)
    prior = mp.MSGM.build(data, key=jax.random.key(1), noise=kind)
    process = smc_module.process_of(prior)
    u = jax.random.normal(jax.random.key(2), (process.dim,))
    u = u / jnp.linalg.norm(u)
    log_r = 1.2
    for s in (process.score.t_eps, 0.3 * process.score.schedule.T, process.score.schedule.T):
        (mean, variance), _ = process.energy_guess(u, log_r, s)
        energy = float(jnp.sum(mean**2) + jnp.sum(variance))
        np.testing.assert_allclose(energy, math.exp(2 * log_r), rtol=1e-4)
        where = np.asarray(kind.diffusion_diagonal(u))
        np.testing.assert_allclose(variance / np.sum(variance), where / where.sum(), rtol=1e-4)
