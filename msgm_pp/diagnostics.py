"""Checks on the law of directions u = x/|x|."""

import math

import jax.numpy as jnp
import numpy as np


def direction_moment_z_scores(x) -> np.ndarray:
    """|mean − uniform value| / standard error for every entry of E[u] and the upper triangle of
    E[u uᵀ], u = x/|x|, over the rows of x (n, d).

    Under uniform directions the targets are 0 and I/d and every score is O(1); anisotropic data,
    or a forward process that has not mixed, give large scores.
    """
    u = np.asarray(x / jnp.linalg.norm(x, axis=-1, keepdims=True), np.float64)
    n, d = u.shape
    i, j = np.triu_indices(d)
    moments = np.concatenate([u, u[:, i] * u[:, j]], axis=1)
    target = np.concatenate([np.zeros(d), (i == j) / d])
    return np.abs(moments.mean(0) - target) / (moments.std(0) / math.sqrt(n))
