"""Reverse samplers: norm preservation, the exact score of a point mass, and the ODE's order."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LinearField, PointMassScore, make_noise, time_of_tau, unit_rows
from scipy.special import eval_gegenbauer

import msgm_pp as mp
from msgm_pp.samplers import check_sampler, reverse_directions
from msgm_pp.score import TangentScore


@pytest.mark.parametrize(
    "sampler",
    [mp.SDESampler(1024), mp.SDESampler(1024, stochasticity=0.5), mp.ODESampler(256)],
    ids=["sde", "sde-half-noise", "ode"],
)
def test_exact_point_mass_score_recovers_the_heat_kernel(sampler):
    """Started from the uniform law at T, every sampler must end at the law of u_τ given u_0 = e_1
    with τ = τ(t_ε) = 0.1: its Gegenbauer moments are exp(−l(l+d−2)τ/2). With the exact score the
    law does not depend on the SDE's stochasticity. The SDE step is first order in law (its bias
    halves with the step: -0.018, -0.009, -0.0023 for l = 2 at 128, 256 and 1024 steps), so it
    runs 1024 steps here, the ODE 256."""
    d, n, tau_end = 3, 20000, 0.1
    noise = mp.IsotropicNoise(d)
    schedule = mp.mixing_schedule(noise)
    u0 = jnp.eye(d)[0]
    score = TangentScore(
        PointMassScore(u0, schedule), noise, schedule, 0.0, 1.0, time_of_tau(schedule, tau_end)
    )
    u_T = unit_rows(jax.random.key(0), n, d)
    u = reverse_directions(score, u_T, jnp.zeros(n), jax.random.key(1), sampler)
    c = np.clip(np.asarray(u @ u0, dtype=np.float64), -1, 1)
    for l in (1, 2):
        moment = eval_gegenbauer(l, 0.5, c)
        target = math.exp(-l * (l + d - 2) * tau_end / 2)
        assert abs(moment.mean() - target) < 4 * moment.std() / math.sqrt(n)


@pytest.mark.parametrize("name", ["isotropic", "dense", "lattice"])
@pytest.mark.parametrize("sampler", [mp.SDESampler, mp.ODESampler])
def test_samplers_keep_unit_norm(name, sampler):
    d = 16
    noise = make_noise(name, d)
    net = LinearField(jax.random.normal(jax.random.key(0), (d, d)))
    score = TangentScore(net, noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3)
    u = reverse_directions(
        score, unit_rows(jax.random.key(1), 64, d), jnp.zeros(64), jax.random.key(2), sampler(32)
    )
    np.testing.assert_allclose(jnp.linalg.norm(u, axis=1), 1.0, atol=2e-6)


def test_ode_without_score_leaves_directions_in_place():
    noise = mp.IsotropicNoise(5)
    score = TangentScore(
        LinearField(jnp.zeros((5, 5))), noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3
    )
    u_T = unit_rows(jax.random.key(1), 10, 5)
    u = reverse_directions(score, u_T, jnp.zeros(10), jax.random.key(2), mp.ODESampler(16))
    np.testing.assert_allclose(u, u_T, atol=1e-6)


def test_ode_sampler_is_second_order():
    """Halving the step divides the error against a fine reference by about four."""
    jax.config.update("jax_enable_x64", True)
    try:
        d = 4
        noise = mp.IsotropicNoise(d)
        net = LinearField(0.5 * jax.random.normal(jax.random.key(0), (d, d), jnp.float64))
        schedule = mp.LinearSchedule(0.1, 2.0)
        score = TangentScore(net, noise, schedule, 0.0, 1.0, 1e-3)
        u_T = jnp.asarray(unit_rows(jax.random.key(1), 8, d), jnp.float64)
        run = lambda steps: reverse_directions(
            score, u_T, jnp.zeros(8), jax.random.key(2), mp.ODESampler(steps)
        )
        reference = run(2048)
        errors = [float(jnp.abs(run(steps) - reference).max()) for steps in (16, 32, 64)]
    finally:
        jax.config.update("jax_enable_x64", False)
    assert errors[0] > 1e-6
    for coarse, fine in itertools.pairwise(errors):
        assert 3.0 < coarse / fine < 5.0


def test_bad_sampler_settings_are_refused():
    with pytest.raises(ValueError, match="`steps` must be a positive int"):
        mp.SDESampler(0)
    with pytest.raises(ValueError, match="`steps` must be a positive int"):
        mp.ODESampler(steps=2.5)
    with pytest.raises(TypeError, match="`sampler` must be"):
        check_sampler("euler")
    for eta in (0.0, 1.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="`stochasticity` must be a number in"):
            mp.SDESampler(8, stochasticity=eta)
    # stored as a Python float, which a model file can hold
    assert type(mp.SDESampler(8, stochasticity=np.float32(0.5)).stochasticity) is float
