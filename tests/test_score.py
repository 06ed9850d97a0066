"""The tangent score's time input: s/T, or log τ normalised to [0, 1] for lattices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msgm_pp as mp


def score_with(time_input, noise=None):
    noise = mp.LatticeNoise((8, 8)) if noise is None else noise
    net = mp.ScoreMLP(noise.dim, key=jax.random.key(0), width=8)
    return mp.TangentScore(
        net, noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3, True, time_input=time_input
    )


def test_log_tau_time_gives_every_factor_of_tau_the_same_share():
    score = score_with("log_tau")
    tau_start, tau_end = score.tau(score.t_eps), score.tau(score.schedule.T)
    taus = jnp.geomspace(tau_start, tau_end, 9)
    times = score.network_time(score.schedule.inverse_integral(taus))
    np.testing.assert_allclose(times, jnp.linspace(0.0, 1.0, 9), atol=1e-5)


def test_fraction_time_is_s_over_t():
    score = score_with("fraction")
    s = jnp.array([1e-3, 0.25, 1.0])
    np.testing.assert_allclose(score.network_time(s), s / score.schedule.T)


def test_the_network_reads_the_chosen_time():
    seen = []

    class Recorder(mp.ScoreMLP):
        def __call__(self, u, z, t):
            seen.append(t)
            return super().__call__(u, z, t)

    noise = mp.LatticeNoise((8, 8))
    net = Recorder(noise.dim, key=jax.random.key(0), width=8)
    score = mp.TangentScore(net, noise, mp.mixing_schedule(noise), 0.0, 1.0, 1e-3, True, "log_tau")
    score(jnp.ones(64) / 8.0, 0.0, score.t_eps)
    np.testing.assert_allclose(seen[-1], 0.0, atol=1e-6)


def test_build_picks_log_tau_for_lattices_only():
    fields = jax.random.t(jax.random.key(0), 3.0, (256, 4, 4))
    lattice = mp.MSGM.build(fields, key=jax.random.key(1), noise=mp.LatticeNoise((4, 4)))
    vectors = mp.MSGM.build(fields.reshape(256, 16), key=jax.random.key(1))
    assert lattice.score.time_input == "log_tau" and vectors.score.time_input == "fraction"


def test_bad_time_input_is_refused():
    with pytest.raises(ValueError, match="time_input"):
        score_with("tau")
