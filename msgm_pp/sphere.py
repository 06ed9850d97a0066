r"""Geometry of the unit sphere S^{d−1} ⊂ R^d, on which every MSGM dynamic lives.

A point x ≠ 0 is written x = r u with r = |x| and u = x/r. The forward noise and every sampler
only move u, so the operations here are what every integrator shares:

- ``polar(x)``: (log r, u), without overflow for huge entries;
- ``project_tangent(u, v)``: P_u v = v − (u·v) u, the tangent part of v at u;
- ``sphere_exp(u, w)``: the geodesic step Exp_u(w) = cos|w| u + sinc|w| w, an exact rotation;
- ``renormalise(u)``: rescale to norm 1, removing float rounding (never used as a projection);
- ``log_sphere_area(d)``: log |S^{d−1}| = log(2 π^{d/2} / Γ(d/2)).
"""

import math

import jax.numpy as jnp
from scipy.special import gammaln


def _row_scale(x):
    """max|x_i| over the last axis (keepdims), clamped to [2^(min_exp+2), 2^(max_exp−2)]: XLA divides
    by multiplying with the reciprocal and flushes subnormal numbers to zero, so 1/1e38 would be 0
    in float32; the clamp keeps the reciprocal normal, and x/scale neither overflows nor
    underflows for any finite x."""
    info = jnp.finfo(x.dtype)
    smallest, largest = 2.0 ** (int(info.minexp) + 2), 2.0 ** (int(info.maxexp) - 2)
    return jnp.clip(jnp.max(jnp.abs(x), axis=-1, keepdims=True), smallest, largest)


def log_norm(x):
    """log |x| over the last axis, for every finite x (−inf at x = 0)."""
    scale = _row_scale(x)
    return jnp.log(scale[..., 0]) + 0.5 * jnp.log(jnp.sum((x / scale) ** 2, axis=-1))


def polar(x):
    """(ℓ, u) = (log |x|, x/|x|) over the last axis, computed on x/max|x_i| so that neither
    overflows or underflows for any finite nonzero x."""
    scaled = x / _row_scale(x)
    return log_norm(x), scaled / jnp.linalg.norm(scaled, axis=-1, keepdims=True)


def project_tangent(u, v):
    """P_u v = v − (u·v) u, over the last axis."""
    return v - jnp.sum(u * v, axis=-1, keepdims=True) * u


def sphere_exp(u, w):
    """Exp_u(w) = cos|w| u + sinc|w| w: the geodesic step from the unit vector u along the tangent
    vector w, over the last axis. It is an exact rotation in the plane of u and w."""
    angle = jnp.sqrt(jnp.sum(w**2, axis=-1, keepdims=True) + jnp.finfo(w.dtype).tiny)
    return jnp.cos(angle) * u + jnp.sinc(angle / jnp.pi) * w


def renormalise(u):
    """Rescale rotated unit vectors to norm 1. Each step is an exact rotation; this only removes the
    float rounding (~1 ulp per rotation) that would otherwise accumulate over thousands of steps."""
    return u / jnp.linalg.norm(u, axis=-1, keepdims=True)


def geodesic_step(u, w):
    """Exp_u(w) with the rounding removed: the step every spherical integrator takes."""
    return renormalise(sphere_exp(u, w))


def log_sphere_area(d) -> float:
    """log |S^{d−1}|, the area of the unit sphere in R^d: |S^{d−1}| = 2 π^{d/2} / Γ(d/2)."""
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d))
