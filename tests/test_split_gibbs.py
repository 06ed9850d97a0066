"""SplitGibbs: the data step against its Gaussian closed form, the sweeps against an exact
posterior and on a field whose approximate draws miss their data, and bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from test_posterior import gaussian_sgm_problem

import msgm_pp as mp
from msgm_pp import posterior as posterior_module
from msgm_pp.smc import process_of
from msgm_pp.split_gibbs import data_step


def test_the_data_step_draws_the_gaussian_conditional_of_the_forward_diffusion():
    """For an SGM the forward kernel is z = e^{−τ/2} x̃ + (1 − e^{−τ})^{1/2} θ, Gaussian and
    linear in θ, and the observations y = H (loc + scale ⊙ z) + ε are linear in z, so the data
    step is exact: z | x̃, y ~ N(C (a x̃/s² + Mᵀ(y − H loc)/σ²), C) with M = H diag(scale),
    C = (I/s² + MᵀM/σ²)⁻¹. 4096 draws: a mean's error is about 0.016 sd and a variance's about
    2.2%, so 0.08 sd and 8% are 5 and 3.6 standard errors."""
    _, prior, y, *_ = gaussian_sgm_problem(jnp.ones(3))
    process = process_of(prior)
    operator, sigma = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]]), 0.3
    loc, scale = np.asarray(prior.score.loc), np.asarray(prior.score.scale)

    def observations(x, others):
        return y, jnp.asarray(operator, jnp.float32) @ x, jnp.full(2, sigma)

    start, tau = jnp.array([0.4, -1.0, 0.8]), 0.3
    draws = jax.vmap(
        lambda key: data_step(key, process, observations, start, 0.0, {}, tau, cg_steps=8)
    )(jax.random.split(jax.random.key(0), 4096))
    a, s2 = np.exp(-0.5 * tau), -np.expm1(-tau)
    m = operator * scale
    covariance = np.linalg.inv(np.eye(3) / s2 + m.T @ m / sigma**2)
    mean = covariance @ (
        a * np.asarray(start) / s2 + m.T @ (np.asarray(y) - operator @ loc) / sigma**2
    )
    sd = np.sqrt(np.diag(covariance))
    draws = np.asarray(draws, np.float64)
    assert np.all(np.abs(draws.mean(0) - mean) < 0.08 * sd)
    assert np.all(np.abs(draws.var(0) / sd**2 - 1) < 0.08)


def test_the_sweeps_keep_an_exact_posterior_near_where_it_was():
    """With unit-variance data the approximate mode is exact here (tests/test_posterior.py), so
    this measures the sweeps' own bias: one sweep at each τ does not contract a draw all the way
    from the wider posterior of the larger τ before it (measured: means within 0.064 sd, sds
    3–9% too wide, against 0.026 sd and 2–4% without the sweeps). 4096 draws: a mean's error is
    about 0.016 sd and an sd's 1.1%, so 0.1 sd and 12% leave about 2 standard errors above the
    measured bias."""
    model, prior, y, mean, sd, _ = gaussian_sgm_problem(jnp.ones(3))
    smc = mp.TwistedSMC(
        model,
        num_particles=2048,
        num_chains=2,
        weighted=False,
        refine=mp.SplitGibbs(),
        progress=False,
    )
    smc.run(jax.random.key(4), prior, y=y)
    x = np.asarray(smc.get_samples()["x"], np.float64)
    assert len(np.unique(x, axis=0)) == 4096
    assert np.all(np.abs(x.mean(0) - mean) < 0.1 * sd)
    assert np.all(np.abs(x.std(0) / sd - 1) < 0.12)


def test_the_sweeps_bring_field_draws_that_miss_their_data_onto_it():
    """An 8×8 lattice MSGM with the zero score (uniform directions) and its norm known: the exact
    posterior pins the observed sites to within their noise (χ²/m about 1), but the approximate
    mode's guided rotations end far from them (median χ²/m about 600, measured). The sweeps reach
    them up to the spread of the sampler's last step (measured 2.0 with 32 steps; on a 16×16
    lattice with 64 steps 1.15, from 92 without the sweeps)."""
    side, sigma = 8, 0.05
    fields = jax.random.t(jax.random.key(0), 2.0, (256, side, side))
    prior = mp.MSGM.build(fields, key=jax.random.key(1), noise=mp.LatticeNoise((side, side)))
    prior = prior.with_network(mp.LatticeScoreNet((side, side), key=jax.random.key(7)))
    truth = 0.3 * np.asarray(jax.random.normal(jax.random.key(5), (side, side)), np.float32)
    truth[2, 3], truth[5, 1] = -8.0, 4.0
    _, log_r = prior.training_data(jnp.asarray(truth)[None])
    norm = mp.KDENorm.fit(np.asarray(log_r), bandwidth=0.002)
    prior = type(prior)(**{**prior.constructor_arguments(), "norm_model": norm})
    prior = prior.with_options(sampler=mp.SDESampler(32))
    mask = np.asarray(jax.random.uniform(jax.random.key(3), (side, side)) < 0.4)

    def inpainting(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[mask], sigma).to_event(1), obs=y)

    noise = sigma * np.random.default_rng(0).standard_normal(int(mask.sum()))
    y = jnp.asarray(truth[mask] + noise, jnp.float32)
    smc = mp.TwistedSMC(
        inpainting,
        num_particles=64,
        norm_rounds=0,
        weighted=False,
        refine=mp.SplitGibbs(),
        progress=False,
    )
    smc.run(jax.random.key(2), prior, y=y)
    x = np.asarray(smc.get_samples()["x"]).reshape(64, -1)
    chi2 = np.mean(((x[:, mask.ravel()] - np.asarray(y)) / sigma) ** 2, axis=1)
    assert np.median(chi2) < 2.5


def test_the_sweeps_own_stochasticity_replaces_the_samplers_in_their_prior_steps():
    """`SplitGibbs(stochasticity=1)` on a prior that samples at η = ½ moves the same run's draws
    exactly as the default sweeps do on the prior at η = 1, and differently from the default
    sweeps at η = ½."""
    model, prior, y, *_ = gaussian_sgm_problem(jnp.ones(3))
    half = prior.with_options(sampler=mp.SDESampler(64, 0.5))
    smc = mp.TwistedSMC(model, num_particles=64, weighted=False, progress=False)
    smc.run(jax.random.key(2), half, y=y)
    args, kwargs = smc._model_arguments

    def swept(process, settings):
        refined, _ = posterior_module._model_split_gibbs(
            model, smc._parts, process, args, kwargs, jax.random.key(5), smc._runs[0], settings, 64
        )
        return np.asarray(refined.x)

    at_one = process_of(half.with_options(sampler=mp.SDESampler(64, 1.0)))
    own = swept(process_of(half), mp.SplitGibbs(8, stochasticity=1.0))
    np.testing.assert_array_equal(own, swept(at_one, mp.SplitGibbs(8)))
    assert not np.allclose(own, swept(process_of(half), mp.SplitGibbs(8)))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"sweeps": 0}, "`sweeps` must be a positive int"),
        ({"cg_steps": 0}, "`cg_steps` must be a positive int"),
        ({"tau_min": 0.6}, "0 < tau_min <= tau_max < inf, got tau_min=0.6 and tau_max=0.5"),
        ({"tau_min": 0.0}, "0 < tau_min"),
        ({"tau_max": float("inf")}, "tau_max < inf"),
        ({"stochasticity": 0.0}, "`stochasticity` must be a number in \\(0, 1\\]"),
        ({"stochasticity": 1.5}, "`stochasticity` must be a number in \\(0, 1\\]"),
    ],
)
def test_bad_sweep_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        mp.SplitGibbs(**settings)


def student_t_noise(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.StudentT(3.0, x[:1], 0.2).to_event(1), obs=y)


def test_sweeps_need_the_approximate_mode_a_split_gibbs_and_normal_observations():
    with pytest.raises(ValueError, match="pass weighted=False"):
        mp.TwistedSMC(student_t_noise, refine=mp.SplitGibbs())
    with pytest.raises(TypeError, match=r"`refine` must be None or an msgm_pp\.SplitGibbs"):
        mp.TwistedSMC(student_t_noise, weighted=False, refine="gibbs")
    smc = mp.TwistedSMC(
        student_t_noise, num_particles=16, weighted=False, refine=mp.SplitGibbs(), progress=False
    )
    with pytest.raises(
        ValueError, match=r"SplitGibbs conditions on Normal .* 'y' \(StudentT\) are not Normal"
    ):
        _, prior, *_ = gaussian_sgm_problem(jnp.ones(3))
        smc.run(jax.random.key(0), prior, y=jnp.asarray([0.4], jnp.float32))


def test_draws_that_meet_non_finite_values_in_the_sweeps_are_kept_with_a_warning(monkeypatch):
    """The sweeps of every other draw fail (patched to return NaN); those draws come back as the
    approximate run left them (the same key gives the same run), and a warning counts them."""
    model, prior, y, *_ = gaussian_sgm_problem(jnp.ones(3))
    settings = {"num_particles": 24, "particles_per_norm": 8, "weighted": False, "progress": False}
    plain = mp.TwistedSMC(model, **settings)
    plain.run(jax.random.key(5), prior, y=y)
    real = posterior_module.split_gibbs

    def every_other_fails(key, *args, **kwargs):
        z, log_r = real(key, *args, **kwargs)
        return jnp.where(jax.random.uniform(key) < 0.5, jnp.nan, z), log_r

    monkeypatch.setattr(posterior_module, "split_gibbs", every_other_fails)
    refined = mp.TwistedSMC(model, refine=mp.SplitGibbs(sweeps=2), **settings)
    with pytest.warns(UserWarning, match=r"draws met non-finite values in the SplitGibbs"):
        refined.run(jax.random.key(5), prior, y=y)
    before, after = plain.get_samples()["x"], refined.get_samples()["x"]
    unchanged = np.all(np.asarray(before == after), axis=1)
    assert bool(jnp.all(jnp.isfinite(after))) and 0 < unchanged.sum() < 24
