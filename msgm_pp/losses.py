r"""Score-matching losses for the tangent score g_θ (see :mod:`msgm_pp.score`).

A batch is (u_0, ℓ): unit directions (n, d) and log-norms (n,) of data points. Each loss draws a
time s, moves u_0 to u_s with the forward noise, and averages a weight times a per-sample term. All
three losses have the same minimiser, the true tangent score; they differ in variance and cost.

The `weighting` says how times are drawn and weighted:

- ``"likelihood"`` (the default): the score error is measured in the metric Σ(u) of the noise and
  weighted by β(s), which makes the loss, up to a constant, the bound of Song, Durkan, Murray &
  Ermon (2021) on KL(p_data ‖ p_θ) carried over to the sphere:
  ½ ∫ β(s) E |g_θ − g|²_Σ(u) ds = ½ ∫ E |g_θ − g|²_Σ dτ. Its integrand grows like 1/τ at small τ,
  so τ is drawn log-uniformly on [τ(t_ε), τ(T)] and weighted by τ log(τ(T)/τ(t_ε)) / (τ(T) −
  τ(t_ε)) (importance sampling): an unbiased estimate of the mean over τ of the Σ-norm term,
  with O(1) variance at every time.
- ``"capped"`` (the default for :class:`~msgm_pp.noise.LatticeNoise`): the same draws, with the
  weight τ replaced by λ(τ)/v = (1 − e^{−vτ})/v, v = −2 tr(L)/d (:meth:`TangentScore.loss_weight`):
  equal to the likelihood weighting while τ ≪ 1/v, the time over which a direction relaxes, and
  capped at 1/v after it. The objective is ½ ∫ (λ(τ)/(vτ)) E |g_θ − g|²_Σ dτ, which has the same
  minimiser. Where τ(T) ≫ 1/v, as on a lattice (τ(T) = 360 at 32×32, 1/v = ½), the likelihood
  weights of the late times, where the directions are nearly uniform and the target nearly 0,
  reach τ(T)/τ(t_ε) ≈ 5·10⁴ times those of the early ones. Run back from fields noised to
  τ = 0.3 (lag-1 correlation 0.37; the fields' is 0.78), a 32×32 network trained for 2000 steps
  restores 0.42 with the likelihood weights, 0.69 with the cap, and 0.74 when trained on τ ≤ 3
  alone (benchmarks/lattice_weighting.py).
- ``"variance"``: s ~ U[t_ε, T] weighted by λ(s) (`TangentScore.loss_weight`), which keeps every
  time's contribution O(1);
- ``"none"``: s ~ U[t_ε, T], unweighted, as in the paper.

- ``"ssm"``, sliced score matching (the paper's loss), per sample
  ½ gᵀΣ(u)g + vᵀ ∇(Σ(u)g) v with v a Rademacher vector: one jvp per sample. With x = r u the
  ambient divergence of Σ(x)ŝ(x) equals the divergence on the unit sphere of Σ(u)g at fixed ℓ, so
  the term is computed on u and is O(1) whatever |x| is.
- ``"ism"``, implicit score matching: the same with the exact trace of the Jacobian (d jvps per
  sample; affordable for small d).
- ``"dsm"``, denoising score matching for isotropic noise: ½ |g(u_s) − ∇_S log f_τ(u_s · u_0)|²
  with the exact spherical heat-kernel target (:func:`msgm_pp.heat_kernel.heat_kernel_score`), in
  the Σ(u) metric under the likelihood weighting.

The forward draw is exact for isotropic noise (the tabulated heat kernel, d <= 64) and otherwise
uses `forward_steps` steps of the norm-preserving integrator.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp._checks import check_positive_int
from msgm_pp.forward import simulate_directions
from msgm_pp.heat_kernel import DSM_MAX_DIM, MAX_TABULATED_DIM, heat_kernel_score, sample_direction
from msgm_pp.noise import IsotropicNoise
from msgm_pp.score import TangentScore

LOSS_NAMES = ("ssm", "ism", "dsm")
WEIGHTINGS = ("likelihood", "capped", "variance", "none")


def perturb_directions(noise, u0, tau, key, forward_steps: int = 16):
    """Draw u_τ given u_0 (n, d) for intensities τ (n,)."""
    if isinstance(noise, IsotropicNoise) and noise.dim <= MAX_TABULATED_DIM:
        return sample_direction(key, u0, tau)
    return simulate_directions(noise, u0, tau, key, forward_steps)


def _draw_times(score: TangentScore, shape, dtype, key, weighting: str):
    """(s, τ(s), weight) for `shape` draws under `weighting` (see the module docstring)."""
    if weighting in ("likelihood", "capped"):
        tau_start, tau_end = score.tau(score.t_eps), score.tau(score.schedule.T)
        log_ratio = jnp.log(tau_end / tau_start)
        tau = tau_start * jnp.exp(log_ratio * jax.random.uniform(key, shape, dtype))
        s = jnp.clip(score.schedule.inverse_integral(tau), score.t_eps, score.schedule.T)
        reach = tau if weighting == "likelihood" else score.loss_weight(s) / score.spreading_rate()
        return s, tau, reach * log_ratio / (tau_end - tau_start)
    s = jax.random.uniform(key, shape, dtype, minval=score.t_eps, maxval=score.schedule.T)
    weight = score.loss_weight(s) if weighting == "variance" else jnp.ones_like(s)
    return s, score.tau(s), weight


def _noised_batch(score: TangentScore, batch, key, forward_steps, weighting):
    u0, log_r = batch
    time_key, noise_key, extra_key = jax.random.split(key, 3)
    s, tau, weight = _draw_times(score, log_r.shape, u0.dtype, time_key, weighting)
    u = perturb_directions(score.noise, u0, tau, noise_key, forward_steps)
    return u0, log_r, s, tau, u, weight, extra_key


def _field_and_score(score, log_r, s):
    """y ↦ (Σ(û) g(û, ℓ, s), g) with û = y/|y|: the field is 0-homogeneous in y."""

    def field(y):
        u = y / jnp.linalg.norm(y)
        g = score(u, log_r, s)
        return score.noise._diffusion(u, g), g

    return field


def _ssm_term(score, u, log_r, s, v):
    drift, jv, g = jax.jvp(_field_and_score(score, log_r, s), (u,), (v,), has_aux=True)
    return 0.5 * jnp.dot(g, drift) + jnp.dot(v, jv)


def _ism_term(score, u, log_r, s):
    jacobian, g = jax.jacfwd(_field_and_score(score, log_r, s), has_aux=True)(u)
    return 0.5 * jnp.dot(g, score.noise._diffusion(u, g)) + jnp.trace(jacobian)


def _dsm_term(score, u, u0, log_r, s, tau, metric: bool):
    error = score(u, log_r, s) - heat_kernel_score(u, u0, tau)
    return 0.5 * jnp.dot(error, score.noise._diffusion(u, error) if metric else error)


def ssm_loss(score: TangentScore, batch, key, *, forward_steps: int = 16, weighting="likelihood"):
    """Sliced score matching with Rademacher slices (one jvp per sample)."""
    _, log_r, s, _, u, weight, slice_key = _noised_batch(
        score, batch, key, forward_steps, weighting
    )
    v = jax.random.rademacher(slice_key, u.shape, u.dtype)
    terms = jax.vmap(_ssm_term, in_axes=(None, 0, 0, 0, 0))(score, u, log_r, s, v)
    return jnp.mean(weight * terms)


def ism_loss(score: TangentScore, batch, key, *, forward_steps: int = 16, weighting="likelihood"):
    """Implicit score matching with the exact Jacobian trace (d jvps per sample)."""
    _, log_r, s, _, u, weight, _ = _noised_batch(score, batch, key, forward_steps, weighting)
    terms = jax.vmap(_ism_term, in_axes=(None, 0, 0, 0))(score, u, log_r, s)
    return jnp.mean(weight * terms)


def dsm_loss(score: TangentScore, batch, key, *, forward_steps: int = 16, weighting="likelihood"):
    """Denoising score matching against the exact heat-kernel target (isotropic noise)."""
    u0, log_r, s, tau, u, weight, _ = _noised_batch(score, batch, key, forward_steps, weighting)
    metric = weighting in ("likelihood", "capped")
    terms = jax.vmap(_dsm_term, in_axes=(None, 0, 0, 0, 0, 0, None))(
        score, u, u0, log_r, s, tau, metric
    )
    return jnp.mean(weight * terms)


_LOSSES = {"ssm": ssm_loss, "ism": ism_loss, "dsm": dsm_loss}


class ScoreMatchingLoss(eqx.Module):
    """The loss `name` ("ssm", "ism" or "dsm") as (score, batch, key) -> scalar, with its
    `forward_steps` and `weighting` (one of `WEIGHTINGS`); compared by value, so
    compiled training is reused."""

    name: str = eqx.field(static=True)
    forward_steps: int = eqx.field(static=True, default=16)
    weighting: str = eqx.field(static=True, default="likelihood")

    def __check_init__(self):
        if self.name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.name!r}; choose one of {list(LOSS_NAMES)}.")
        check_positive_int(self.forward_steps, "forward_steps")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown weighting {self.weighting!r}; choose one of {list(WEIGHTINGS)}."
            )

    def __call__(self, score, batch, key):
        loss = _LOSSES[self.name]
        return loss(score, batch, key, forward_steps=self.forward_steps, weighting=self.weighting)


def dsm_applies(noise) -> bool:
    """Whether the exact DSM target exists: isotropic noise with a tabulated heat kernel."""
    return isinstance(noise, IsotropicNoise) and noise.dim <= DSM_MAX_DIM


def make_loss(name: str, noise, *, forward_steps: int = 16, weighting: str = "likelihood"):
    """The loss `name` ("ssm", "ism" or "dsm") for `noise`, checked for applicability."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSS_NAMES)}.")
    if name == "dsm" and not dsm_applies(noise):
        raise ValueError(
            "loss='dsm' needs the exact transition density, known for IsotropicNoise with "
            f"d <= {DSM_MAX_DIM}; got {type(noise).__name__} with d = {noise.dim}. Use loss='ssm'."
        )
    return ScoreMatchingLoss(name, int(forward_steps), weighting)
