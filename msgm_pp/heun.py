r"""One step of Heun's method for dy/dτ = F(y, t), in flat space or on the sphere.

With a step map `exp` (y + w in R^d, the geodesic step on S^{d−1}) and a `transport` that brings a
vector at the predicted point back to y (the identity in R^d; the tangent projection P_y on the
sphere, which stands in for parallel transport at O(h²)):

    y* = exp(y, h F(y, t)),   y' = exp(y, ½ h (F(y, t) + transport(y, F(y*, t'))))

The scheme is second order, and on the sphere each step is a rotation. The samplers and
log-densities of both models use this one step, forward (h > 0) or backward (h < 0) in τ.
"""


def _flat_exp(y, w):
    return y + w


def _identity_transport(y, v):
    return v


def heun_step(velocity, y, f, h, t_next, *, exp=_flat_exp, transport=_identity_transport):
    """y' from y, where f = velocity(y, t) is given (so a caller can reuse it) and h = τ(t') − τ(t)."""
    guess = exp(y, h * f)
    return exp(y, 0.5 * h * (f + transport(y, velocity(guess, t_next))))
