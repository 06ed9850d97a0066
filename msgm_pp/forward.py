"""Forward simulation of the multiplicative noise process.

x = r u with r = |x| fixed: only the direction moves, by `noise.rotation_step`. The direction's law
depends on time only through τ(s) = ∫_0^s β, so a sample at time s takes `steps` equal steps of
dτ = τ(s)/steps; per-sample times therefore cost nothing extra.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from msgm_pp._checks import check_key, check_points, check_positive_int, check_times
from msgm_pp.heat_kernel import sample_direction
from msgm_pp.noise import AbstractNoise, IsotropicNoise
from msgm_pp.schedule import mixing_schedule
from msgm_pp.sphere import renormalise


def _prepare(noise, x0, s, key, schedule):
    if not isinstance(noise, AbstractNoise):
        raise TypeError(
            f"`noise` must be a msgm_pp noise (e.g. IsotropicNoise), got {type(noise).__name__}."
        )
    key = check_key(key)
    x0 = check_points(x0, "x0", dim=noise.dim, allow_single=True)
    batch = x0.reshape(-1, noise.dim)
    s = check_times(s, None if x0.ndim == 1 else x0.shape[0])
    schedule = mixing_schedule(noise) if schedule is None else schedule
    tau = jnp.broadcast_to(schedule.integral(s), batch.shape[:1]).astype(batch.dtype)
    r = jnp.linalg.norm(batch, axis=-1)
    return x0.shape, r, batch / r[:, None], tau, key


def forward_sample(noise: AbstractNoise, x0, s, *, key, steps: int = 100, schedule=None):
    """Simulate dx = √β(s) G(x) ∘ dB from x0 to time s with a norm-preserving integrator.

    Args:
        noise: the noise family.
        x0: starting points, shape (n, d) or (d,).
        s: diffusion time(s) >= 0, a scalar or one per row.
        key: a JAX PRNG key.
        steps: integrator steps per sample.
        schedule: β(s); defaults to :func:`msgm_pp.mixing_schedule` of the noise.

    Returns:
        x_s with the shape of x0 and |x_s| = |x0| row by row (up to float rounding).
    """
    steps = check_positive_int(steps, "steps")
    shape, r, u, tau, key = _prepare(noise, x0, s, key, schedule)
    return (r[:, None] * simulate_directions(noise, u, tau, key, steps)).reshape(shape)


@eqx.filter_jit
def simulate_directions(noise: AbstractNoise, u0, tau, key, steps: int):
    """Run `steps` forward rotation steps of size τ/steps on unit directions u0 of shape (n, d)."""
    dtau = tau / steps
    step = jax.vmap(lambda u, xi, dt: noise.rotation_step(u, xi, dt))

    def body(u, step_key):
        xi = jax.random.normal(step_key, u.shape[:1] + noise.increment_shape, u.dtype)
        return renormalise(step(u, xi, dtau)), None

    u, _ = jax.lax.scan(body, u0, jax.random.split(key, steps))
    return u


def forward_sample_exact(noise: IsotropicNoise, x0, s, *, key, schedule=None):
    """Draw x_s exactly for isotropic noise from the spherical heat kernel (no time stepping).

    The angle θ = arccos(u_s · u_0) comes from the tabulated heat kernel (d <= 64; see
    :mod:`msgm_pp.heat_kernel`) and the rotation axis is uniform in u_0^⊥.
    """
    if not isinstance(noise, IsotropicNoise):
        raise TypeError(
            "the exact sampler exists for IsotropicNoise only (its transition density is the spherical "
            f"heat kernel); got {type(noise).__name__}. Use forward_sample instead."
        )
    shape, r, u, tau, key = _prepare(noise, x0, s, key, schedule)
    return (r[:, None] * _exact_directions(key, u, tau)).reshape(shape)


_exact_directions = jax.jit(sample_direction)
