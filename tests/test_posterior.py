"""TwistedSMC: posteriors under an MSGM prior from the score, against quadrature and importance
sampling, with its NumPyro and ArviZ interface and its errors."""

import math

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import LinearField
from scipy import stats

import msgm_pp as mp
from msgm_pp import posterior as posterior_module
from msgm_pp import smc as smc_module
from msgm_pp.heat_kernel import PointMassMixtureScore, log_heat_kernel
from msgm_pp.sgm import VPScore

ANGLES = np.array([0.3, 2.0, 4.0])
WEIGHTS = np.array([0.5, 0.3, 0.2])
A = np.array([[1.0, 0.6]])
Y = np.array([0.4])
T_EPS = 1e-3


@pytest.fixture(scope="module")
def exact_prior():
    """A 2-D MSGM with an exact score: three directions, log-norms N(0, 0.5²) (as a KDE)."""
    noise = mp.IsotropicNoise(2)
    schedule = mp.mixing_schedule(noise)
    directions = jnp.stack([jnp.cos(ANGLES), jnp.sin(ANGLES)], 1)
    net = PointMassMixtureScore(directions, jnp.log(WEIGHTS), schedule)
    score = mp.TangentScore(net, noise, schedule, 0.0, 1.0, T_EPS)
    norm_model = mp.KDENorm.fit(np.random.default_rng(0).normal(0.0, 0.5, 4000))
    return mp.MSGM(score, norm_model)


def known_noise(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(jnp.asarray(A, jnp.float32) @ x, 0.2).to_event(1), obs=y)


def unknown_noise(prior, y=None):
    x = numpyro.sample("x", prior)
    sigma = numpyro.sample("sigma", dist.LogNormal(math.log(0.2), 0.5))
    numpyro.sample("y", dist.Normal(jnp.asarray(A, jnp.float32) @ x, sigma).to_event(1), obs=y)


def quadrature(prior, sigmas, log_sigma_prior):
    """The posterior of (x, σ) on a polar grid (ℓ, φ) × σ, and log p(y), for the exact prior:
    p(ℓ, φ) = p_ℓ(ℓ) × the heat-kernel mixture at τ(t_ε) over the angle."""
    ell = np.linspace(-3.0, 3.0, 301)
    phi = np.linspace(0.0, 2 * np.pi, 721)[:-1]
    u = np.stack([np.cos(phi), np.sin(phi)], -1)
    tau = float(prior.score.tau(T_EPS))
    directions = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
    log_kernels = [np.asarray(log_heat_kernel(jnp.asarray(u), m, tau)) for m in directions]
    log_angle = np.logaddexp.reduce(np.stack(log_kernels) + np.log(WEIGHTS)[:, None], axis=0)
    log_angle -= np.log(np.sum(np.exp(log_angle)) * (phi[1] - phi[0]))
    log_norm = np.asarray(prior.norm_model.log_prob(jnp.asarray(ell)), dtype=np.float64)
    x = np.exp(ell)[:, None, None] * u[None]
    mean_y = (x @ A.T)[..., 0]
    log_lik = stats.norm(mean_y[..., None], sigmas).logpdf(Y[0])
    log_joint = log_norm[:, None, None] + log_angle[None, :, None] + log_lik + log_sigma_prior
    cell = (ell[1] - ell[0]) * (phi[1] - phi[0])
    weights = np.exp(log_joint - log_joint.max())
    log_evidence = np.log(weights.sum() * cell) + log_joint.max()
    weights /= weights.sum()
    x_weights = weights.sum(-1)
    mean = np.einsum("ij,ijk->k", x_weights, x)
    sd = np.sqrt(np.einsum("ij,ijk->k", x_weights, (x - mean) ** 2))
    sigma_weights = weights.sum((0, 1))
    sigma_mean = sigma_weights @ sigmas
    sigma_sd = np.sqrt(sigma_weights @ (sigmas - sigma_mean) ** 2)
    return mean, sd, sigma_mean, sigma_sd, log_evidence


def test_the_posterior_and_evidence_match_quadrature_with_an_exact_score(exact_prior):
    """The prior puts directions near three angles and norms over a factor e² either way; one
    noisy linear observation leaves two modes (a small norm near 0.3 rad, a large one near
    2 rad). The SMC's target is the SDE sampler's law, which differs from the quadrature's heat
    kernel at t_ε only by the sampler's discretisation. With 2 × 2048 particles and an ESS of
    about 1500 per run, the Monte-Carlo error of a mean is about 0.02 sd and that of log p(y)
    about 0.05 nats, so 0.15 sd and 0.15 nats are 5–7 standard errors; dropping the Girsanov or
    the norm weights moves the mean by 0.5 sd or more (measured)."""
    mean, sd, _, _, log_evidence = quadrature(exact_prior, np.array([0.2]), np.zeros(1))
    smc = mp.TwistedSMC(known_noise, num_particles=2048, num_chains=2, progress=False)
    smc.run(jax.random.key(1), exact_prior, y=jnp.asarray(Y, jnp.float32))
    x = np.asarray(smc.get_samples()["x"], dtype=np.float64)
    assert x.shape == (4096, 2)
    assert np.all(smc.ess > 500)
    assert np.all(np.abs(x.mean(0) - mean) < 0.15 * sd)
    assert np.all(np.abs(x.std(0) / sd - 1) < 0.15)
    assert np.all(np.abs(smc.log_evidence - log_evidence) < 0.15)


def test_a_noise_scale_with_a_prior_is_sampled_with_the_field(exact_prior):
    sigmas = np.linspace(0.02, 1.2, 120)
    log_sigma_prior = stats.lognorm(0.5, scale=0.2).logpdf(sigmas)
    mean, sd, sigma_mean, sigma_sd, _ = quadrature(exact_prior, sigmas, log_sigma_prior)
    smc = mp.TwistedSMC(unknown_noise, num_particles=2048, num_chains=2, progress=False)
    smc.run(jax.random.key(2), exact_prior, y=jnp.asarray(Y, jnp.float32))
    draws = smc.get_samples()
    x, sigma = np.asarray(draws["x"]), np.asarray(draws["sigma"])
    assert sigma.shape == (4096,)
    assert np.all(np.abs(x.mean(0) - mean) < 0.15 * sd)
    assert abs(sigma.mean() - sigma_mean) < 0.15 * sigma_sd


def test_dense_noise_posterior_matches_importance_sampling_from_the_prior():
    """Any skew-symmetric noise: the guided Cayley steps and their Girsanov weights are checked
    against self-normalised importance sampling with 20000 prior draws under a mildly
    informative likelihood (importance ESS above 5000: error about 0.015 sd). The SMC's error is
    set by the effective number of its norm groups (5–240 of 512 in a run of 8192 particles):
    with 2 runs of 2048 it was 0.13 sd (root mean square over 10 keys, largest 0.26), so 16 runs
    of 8192 are used, whose largest error over 8 keys was 0.066 sd (root mean square 0.04 sd in
    the worst coordinate, of which about 0.03 is a bias of the finite groups). The score is a linear
    field, not the score of any law, so the law of `sample` depends on the sampler's
    stochasticity, set to ½ here: the SMC must follow that law, noise variance and drift alike
    (following the reverse SDE's law instead put the third mean 0.2 sd off)."""
    data = jax.random.normal(jax.random.key(0), (512, 3)) * jnp.array([1.0, 0.5, 2.0])
    prior = mp.MSGM.build(data, key=jax.random.key(1), noise="dense")
    field = LinearField(jax.random.normal(jax.random.key(5), (3, 3)))
    prior = prior.with_network(field).with_options(sampler=mp.SDESampler(32, stochasticity=0.5))
    operator = jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5]])

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(operator @ x, 1.0).to_event(1), obs=y)

    y = jnp.array([1.0, -0.8])
    reference = prior.sample(jax.random.key(2), (20000,))
    log_w = dist.Normal(reference @ operator.T, 1.0).log_prob(y).sum(-1)
    w = np.asarray(jax.nn.softmax(log_w), dtype=np.float64)
    assert 1 / np.sum(w**2) > 5000
    mean = w @ np.asarray(reference)
    sd = np.sqrt(w @ (np.asarray(reference) - mean) ** 2)

    smc = mp.TwistedSMC(model, num_particles=8192, num_chains=16, progress=False)
    smc.run(jax.random.key(3), prior, y=y)
    x = np.asarray(smc.get_samples()["x"])
    assert np.all(np.abs(x.mean(0) - mean) < 0.1 * sd)


def test_lattice_posterior_with_the_energy_twist_matches_importance_sampling():
    """The energy twist on a 3×3 lattice, blurred and masked (the observations mix sites), with
    an inexact linear score at η = ½ as in the test above: the means must agree with importance
    sampling from `sample` within 4 combined standard errors, the reference's (40000 draws,
    importance ESS about 950) and the SMC's, taken from its effective number of norm groups
    (conservative: the particles within a group add more). Measured: 0.06 and 0.11 sd at most
    over the 9 sites with two keys, about the same as with the Tweedie twist (0.06 and 0.11)."""
    data = jax.random.t(jax.random.key(0), 3.0, (512, 3, 3))
    prior = mp.MSGM.build(data, key=jax.random.key(1), noise=mp.LatticeNoise((3, 3)))
    field = LinearField(0.3 * jax.random.normal(jax.random.key(5), (9, 9)))
    prior = prior.with_network(field).with_options(sampler=mp.SDESampler(32, stochasticity=0.5))
    mask = jnp.arange(9).reshape(3, 3) % 2 == 0

    def blur(x):
        return 0.5 * x + 0.25 * (jnp.roll(x, 1, -2) + jnp.roll(x, 1, -1))

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(blur(x)[mask], 1.0).to_event(1), obs=y)

    truth = prior.sample(jax.random.key(9), ())
    y = blur(truth)[mask] + jax.random.normal(jax.random.key(8), (5,))
    reference = prior.sample(jax.random.key(2), (40000,))
    log_w = dist.Normal(blur(reference)[:, mask], 1.0).log_prob(y).sum(-1)
    w = np.asarray(jax.nn.softmax(log_w), dtype=np.float64)
    reference = np.asarray(reference, np.float64).reshape(-1, 9)
    mean = w @ reference
    sd = np.sqrt(w @ (reference - mean) ** 2)

    smc = mp.TwistedSMC(
        model, num_particles=4096, num_chains=4, twist=mp.EnergyTwist(), progress=False
    )
    smc.run(jax.random.key(3), prior, y=y)
    x = np.asarray(smc.get_samples()["x"], np.float64).reshape(-1, 9)
    standard_error = sd * np.sqrt(np.sum(w**2) + 1 / np.sum(smc.group_ess))
    assert np.all(np.abs(x.mean(0) - mean) < 4 * standard_error)
    assert np.all(4 * standard_error < 0.25 * sd)  # the check has teeth


class GaussianNoisePrediction(eqx.Module):
    """The exact ε(x̃, t) = σ_t x̃/(α_t² c + σ_t²) of the VP diffusion of x̃_0 ~ N(0, diag(c))."""

    variances: jax.Array
    schedule: mp.LinearSchedule

    def __call__(self, y, t):
        alpha_squared = jnp.exp(-self.schedule.integral(t * self.schedule.T))
        sigma_squared = 1.0 - alpha_squared
        return jnp.sqrt(sigma_squared) * y / (alpha_squared * self.variances + sigma_squared)


def gaussian_sgm_problem(variances):
    """An SGM with the exact score of x = loc + scale · N(0, diag(variances)), a linear Gaussian
    observation, and its closed-form posterior: (model, prior, y, mean, sd, log p(y))."""
    loc, scale = jnp.array([0.3, -0.2, 0.1]), jnp.array([1.0, 0.5, 2.0])
    schedule = mp.vp_schedule()
    score = VPScore(GaussianNoisePrediction(variances, schedule), schedule, loc, scale, T_EPS)
    prior = mp.SGM(score, sampler=mp.SDESampler(256))
    operator, noise_sd = jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]]), 0.3
    y = jnp.array([1.2, -0.5])

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(operator @ x, noise_sd).to_event(1), obs=y)

    prior_cov = np.diag(np.asarray(scale**2 * variances, np.float64))
    H, m0 = np.asarray(operator, np.float64), np.asarray(loc, np.float64)
    y_cov = H @ prior_cov @ H.T + noise_sd**2 * np.eye(2)
    gain = prior_cov @ H.T @ np.linalg.inv(y_cov)
    mean = m0 + gain @ (np.asarray(y) - H @ m0)
    sd = np.sqrt(np.diag(prior_cov - gain @ H @ prior_cov))
    log_evidence = stats.multivariate_normal(H @ m0, y_cov).logpdf(np.asarray(y))
    return model, prior, y, mean, sd, log_evidence


@pytest.mark.parametrize("twist", [mp.TweedieTwist(), mp.EnergyTwist()], ids=["tweedie", "energy"])
def test_the_sgm_baseline_goes_through_the_same_sampler_to_the_gaussian_posterior(twist):
    """The run's ESS (above 1000 of 2048 per run) puts the Monte-Carlo error of a mean near
    0.02 sd and of log p(y) near 0.03 nats; the 256-step sampler's own variance error is below
    1%. So 0.1 sd, 10% and 0.1 nats are 4–5 standard errors. The observations mix coordinates,
    so the energy twist's averages one at a time are approximate; its weights stay exact (ESS
    1480–1740 over 3 keys against 1690–1720 with the Tweedie twist)."""
    model, prior, y, mean, sd, log_evidence = gaussian_sgm_problem(jnp.array([0.5, 2.0, 1.0]))
    smc = mp.TwistedSMC(model, num_particles=2048, num_chains=2, twist=twist, progress=False)
    smc.run(jax.random.key(4), prior, y=y)
    x = np.asarray(smc.get_samples()["x"], np.float64)
    assert np.all(smc.ess > 1000)
    assert np.all(np.abs(x.mean(0) - mean) < 0.1 * sd)
    assert np.all(np.abs(x.std(0) / sd - 1) < 0.1)
    assert np.all(np.abs(smc.log_evidence - log_evidence) < 0.1)


@pytest.mark.parametrize("stochasticity", [1.0, 0.5])
def test_the_approximate_mode_returns_every_particle_and_is_exact_where_the_twist_is(
    stochasticity,
):
    """For unit-variance normalised data the twist's Gaussian guess of x_0 is the exact
    conditional of the sampler's reverse process (for η < 1 too, with the remaining noise η²τ),
    so with a linear Gaussian likelihood it is p(y | x_t) itself and the guided reverse process
    samples the posterior up to time discretisation: the unweighted draws match it (4096
    independent draws: a mean's error is about 0.016 sd, so 0.1 sd is 6 standard errors; with
    the η = 1 guess at η = ½ a mean was 0.9 sd off). Nothing is resampled, so every particle is a
    distinct draw."""
    model, prior, y, mean, sd, _ = gaussian_sgm_problem(jnp.ones(3))
    prior = prior.with_options(sampler=mp.SDESampler(256, stochasticity=stochasticity))
    smc = mp.TwistedSMC(model, num_particles=2048, num_chains=2, weighted=False, progress=False)
    smc.run(jax.random.key(4), prior, y=y)
    x = np.asarray(smc.get_samples()["x"], np.float64)
    assert len(np.unique(x, axis=0)) == 4096 and np.all(smc.resamplings == 0)
    assert np.all(np.abs(x.mean(0) - mean) < 0.1 * sd)
    assert np.all(np.abs(x.std(0) / sd - 1) < 0.1)
    assert np.all(smc.ess > 1500)  # the weights, unused, are nearly even


@pytest.mark.parametrize("pilot_steps", [None, 16])
def test_pilot_rounds_move_the_norms_to_where_the_data_put_them(
    exact_prior, pilot_steps, monkeypatch
):
    """x is observed sharply at a norm 3 prior sds out: the 16 pilot norms drawn from the prior
    all miss it, and the next round's norms must come from the redrawn ones, not the drawn ones;
    also when the pilot takes 16 coarse steps instead of the returned run's."""

    def sharp(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x, 0.02).to_event(1), obs=y)

    y = math.exp(1.5) * jnp.array([math.cos(0.3), math.sin(0.3)])
    steps_of_runs = []
    model_smc = posterior_module._model_smc

    def recording(*args):
        steps_of_runs.append(args[-1]["steps"])
        return model_smc(*args)

    monkeypatch.setattr(posterior_module, "_model_smc", recording)
    smc = mp.TwistedSMC(
        sharp, num_particles=256, norm_rounds=1, pilot_steps=pilot_steps, progress=False
    )
    smc.run(jax.random.key(0), exact_prior, y=y)
    model_steps = exact_prior.sampler.steps
    assert steps_of_runs == [pilot_steps or model_steps, model_steps]
    log_norms = np.log(np.linalg.norm(np.asarray(smc.get_samples()["x"]), axis=1))
    assert abs(log_norms.mean() - 1.5) < 0.02  # the posterior of ℓ has sd ≈ 0.02 / e^1.5


def test_the_twist_spread_follows_the_linear_law_early_and_never_exceeds_r2_over_d():
    fields = jax.random.t(jax.random.key(0), 3.0, (256, 16, 16))
    prior = mp.MSGM.build(fields, key=jax.random.key(1), noise=mp.LatticeNoise((16, 16)))
    process = smc_module.process_of(prior)
    log_r, d = 1.5, process.dim
    times = jnp.linspace(process.score.t_eps, process.score.schedule.T, 200)
    tau = jax.vmap(process.score.tau)(times)
    spread = jax.vmap(lambda s: process.spread(log_r, s))(times) / math.exp(2 * log_r)
    rate = process.mixing_rate
    linearised = -np.expm1(-2 * rate * np.asarray(tau)) / (2 * rate)
    assert linearised[-1] > 10 / d  # a 16×16 lattice mixes slowly: the cap has to bind
    assert np.all(np.asarray(spread) <= (1 + 1e-6) / d)
    early = linearised < 1 / d
    np.testing.assert_allclose(spread[early], linearised[early], rtol=1e-5)


def test_lattice_models_run_with_a_blur_and_a_mask():
    fields = jax.random.t(jax.random.key(0), 3.0, (256, 4, 4))
    prior = mp.MSGM.build(fields, key=jax.random.key(1), noise=mp.LatticeNoise((4, 4)))
    prior = prior.with_options(sampler=mp.SDESampler(8))
    mask = jnp.arange(16).reshape(4, 4) % 2 == 0

    def inpainting(prior, y=None):
        x = numpyro.sample("x", prior)
        blurred = 0.5 * x + 0.25 * (jnp.roll(x, 1, 0) + jnp.roll(x, 1, 1))
        numpyro.sample("y", dist.Normal(blurred[mask], 0.1).to_event(1), obs=y)

    y = jnp.zeros(8)
    smc = mp.TwistedSMC(inpainting, num_particles=64, particles_per_norm=8, progress=False)
    smc.run(jax.random.key(2), prior, y=y)
    x = smc.get_samples()["x"]
    assert x.shape == (64, 4, 4) and bool(jnp.all(jnp.isfinite(x)))
    assert smc.ess[0] >= 1 and np.isfinite(smc.log_evidence[0])


def test_draws_go_to_arviz_with_runs_as_chains_their_log_likelihood_and_runs_repeat(
    exact_prior,
):
    smc = mp.TwistedSMC(unknown_noise, num_particles=256, num_chains=3, progress=False)
    smc.run(jax.random.key(4), exact_prior, y=jnp.asarray(Y, jnp.float32))
    grouped = smc.get_samples(group_by_chain=True)
    assert grouped["x"].shape == (3, 256, 2) and grouped["sigma"].shape == (3, 256)
    posterior = smc.to_inference_data()
    assert posterior.posterior["x"].shape == (3, 256, 2)
    assert np.isfinite(float(az.rhat(posterior)["sigma"]))
    assert smc.resamplings.shape == (3,)
    expected = dist.Normal(
        grouped["x"] @ jnp.asarray(A, jnp.float32).T, grouped["sigma"][..., None]
    )
    expected = expected.log_prob(jnp.asarray(Y, jnp.float32)).sum(-1)
    np.testing.assert_allclose(posterior.log_likelihood["y"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        smc.log_likelihood()["y"], expected.reshape(-1), rtol=1e-5, atol=1e-5
    )
    smc.run(jax.random.key(4), exact_prior, y=jnp.asarray(Y, jnp.float32))
    assert bool(jnp.all(grouped["x"] == smc.get_samples(group_by_chain=True)["x"]))


def test_particles_with_a_non_finite_likelihood_are_dropped_with_a_warning(exact_prior):
    """A likelihood that is NaN for x₁ < 0 (the log of a negative number): those particles get
    weight 0, the run says how many, and the draws are the posterior restricted to x₁ > 0."""

    def log_of_x1(prior, y=None):
        x = numpyro.sample("x", prior)
        location = jnp.log(x[:1])
        numpyro.sample("y", dist.Normal(location, 1.0, validate_args=False).to_event(1), obs=y)

    smc = mp.TwistedSMC(log_of_x1, num_particles=256, progress=False)
    with pytest.warns(UserWarning, match="times a particle met a non-finite score"):
        smc.run(jax.random.key(6), exact_prior, y=jnp.zeros(1))
    x = np.asarray(smc.get_samples()["x"])
    assert smc.dropped[0] > 0 and np.isfinite(x).all() and (x[:, 0] > 0).all()


def test_particles_are_evaluated_in_chunks_with_the_same_result(exact_prior, monkeypatch):
    y = jnp.asarray(Y, jnp.float32)
    whole = mp.TwistedSMC(known_noise, num_particles=128, progress=False)
    whole.run(jax.random.key(7), exact_prior, y=y)
    monkeypatch.setattr(smc_module, "PARTICLE_CHUNK_BUDGET", 64)  # 32 particles of d = 2
    chunked = mp.TwistedSMC(known_noise, num_particles=128, progress=False)
    chunked.run(jax.random.key(7), exact_prior, y=y)
    np.testing.assert_allclose(chunked.get_samples()["x"], whole.get_samples()["x"], atol=1e-6)


def two_priors(prior, y=None):
    numpyro.sample("a", prior)
    numpyro.sample("b", prior)
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def no_msgm(prior, y=None):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(x[:1], 1.0).to_event(1), obs=y)


def in_a_plate(prior, y=None):
    with numpyro.plate("copies", 3):
        x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x.sum(), 1.0), obs=y)


def no_data(prior, y=None):
    numpyro.sample("x", prior)


def wrong_operator(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(jnp.ones((1, 3)) @ x, 0.2).to_event(1), obs=y)


def zero_noise(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(jnp.asarray(A, jnp.float32) @ x, 0.0).to_event(1), obs=y)


@pytest.mark.parametrize(
    ("model", "y", "match"),
    [
        (two_priors, 0.0, "exactly one latent site .* found 2"),
        (no_msgm, Y, "exactly one latent site .* found 0"),
        (no_data, Y, "no observed site"),
        (in_a_plate, 0.0, "'x' is wrapped in a ExpandedDistribution \\(inside a plate"),
        (wrong_operator, Y, "model failed when run with .* \\('x' of shape \\(2,\\)\\)"),
        (
            known_noise,
            np.array([np.nan]),
            "'y' has NaN or infinite entries at flat indices \\[0\\]",
        ),
        (zero_noise, Y, "scale"),
    ],
)
def test_bad_models_and_data_are_refused(exact_prior, model, y, match):
    smc = mp.TwistedSMC(model, num_particles=16, progress=False)
    with pytest.raises(ValueError, match=match):
        smc.run(jax.random.key(0), exact_prior, y=jnp.asarray(y, jnp.float32))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_particles": 1}, ValueError, "at least 2"),
        ({"num_particles": 100, "particles_per_norm": 16}, ValueError, "multiple"),
        ({"ess_threshold": 0.0}, ValueError, "ess_threshold"),
        ({"norm_rounds": -1}, ValueError, "norm_rounds"),
        ({"pilot_steps": 0}, ValueError, "pilot_steps"),
        ({"weighted": 1}, TypeError, "weighted"),
        ({"twist": "energy"}, TypeError, "`twist` must be an msgm_pp.TweedieTwist or EnergyTwist"),
        ({"twist": mp.TweedieTwist(), "cg_steps": 8}, ValueError, "not `cg_steps`"),
    ],
)
def test_bad_settings_are_refused(options, error, match):
    with pytest.raises(error, match=match):
        mp.TwistedSMC(known_noise, **options)


@pytest.mark.parametrize(
    ("twist", "match"),
    [
        (lambda: mp.TweedieTwist(cg_steps=0), "`cg_steps` must be a positive int"),
        (lambda: mp.EnergyTwist(probes=0), "`probes` must be a positive int"),
    ],
)
def test_bad_twist_settings_are_refused(twist, match):
    with pytest.raises(ValueError, match=match):
        twist()


def student_t_noise(prior, y=None):
    x = numpyro.sample("x", prior)
    loc = jnp.asarray(A, jnp.float32) @ x
    numpyro.sample("y", dist.StudentT(3.0, loc, 0.2).to_event(1), obs=y)


def test_the_energy_twist_refuses_observations_that_are_not_normal(exact_prior):
    smc = mp.TwistedSMC(student_t_noise, num_particles=16, twist=mp.EnergyTwist(), progress=False)
    with pytest.raises(
        ValueError,
        match=r"TweedieTwist takes any likelihood\), but .* 'y' \(StudentT\) are not Normal",
    ):
        smc.run(jax.random.key(0), exact_prior, y=jnp.asarray(Y, jnp.float32))
    # the default twist takes any likelihood
    smc = mp.TwistedSMC(student_t_noise, num_particles=16, progress=False)
    smc.run(jax.random.key(0), exact_prior, y=jnp.asarray(Y, jnp.float32))
    assert bool(jnp.all(jnp.isfinite(smc.get_samples()["x"])))


def test_cg_steps_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="twist=TweedieTwist\\(cg_steps=...\\)"):
        smc = mp.TwistedSMC(known_noise, num_particles=16, cg_steps=4, progress=False)
    assert smc.twist == mp.TweedieTwist(cg_steps=4)


def test_draws_before_a_run_are_refused():
    with pytest.raises(RuntimeError, match="call run"):
        mp.TwistedSMC(known_noise).get_samples()
