"""Input validation shared by the public entry points.

Checks run on concrete values only: inside `jit` the arguments are tracers and only shapes can be
checked, so the public functions validate before they enter compiled code.
"""

import math
import numbers
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import distribution as _numpyro_distribution

_MAX_LISTED = 10
MAX_DIRECTION_SCALE = 1000.0  # ScoreMLP(direction_scale=c): a bound on what a model file may ask
_NUMPYRO_DISTRIBUTION_FILE = _numpyro_distribution.__file__


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def describe_indices(indices) -> str:
    indices = np.asarray(indices).ravel()
    shown = ", ".join(str(int(i)) for i in indices[:_MAX_LISTED])
    more = f", ... ({indices.size} in all)" if indices.size > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def check_key(key, name: str = "key"):
    """Accept both new-style `jax.random.key` and legacy `jax.random.PRNGKey` keys."""
    if key is None:
        raise TypeError(
            f"`{name}` is required: pass jax.random.key(seed) or jax.random.PRNGKey(seed)."
        )
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        raise TypeError(f"`{name}` must be a JAX PRNG key, got {type(key).__name__}.")
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(
                f"`{name}` must be a single PRNG key, got a batch of shape {key.shape}."
            )
        return key
    if dtype == jnp.uint32 and key.shape == (2,):
        return key
    raise TypeError(
        f"`{name}` must be a JAX PRNG key (jax.random.key or jax.random.PRNGKey), "
        f"got an array of dtype {dtype} and shape {key.shape}."
    )


def check_dim(d, name: str = "d") -> int:
    if isinstance(d, bool) or not isinstance(d, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {type(d).__name__}.")
    if d < 2:
        raise ValueError(
            f"`{name}` must be at least 2 (a direction on S^(d-1) needs d >= 2), got {d}."
        )
    return int(d)


def check_points(
    x,
    name: str,
    dim: int | None = None,
    allow_single: bool = False,
    allow_zero_rows: bool = False,
):
    """Validate an (n, d) array of points with finite entries and (unless `allow_zero_rows`)
    nonzero rows.

    Returns a float array. With `allow_single`, a (d,) vector is accepted as one point.
    """
    if not hasattr(x, "shape"):
        try:
            x = np.asarray(x, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be an array of numbers: {err}") from None
    if not jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {x.dtype}.")
    expected = "(n, d) or (d,)" if allow_single else "(n, d)"
    if x.ndim != 2 and not (allow_single and x.ndim == 1):
        raise ValueError(f"`{name}` must be a 2-D array of shape {expected}, got shape {x.shape}.")
    d = x.shape[-1]
    if d < 2:
        raise ValueError(f"`{name}` has d = {d} columns; msgm_pp models need d >= 2.")
    if dim is not None and d != dim:
        raise ValueError(f"`{name}` has {d} columns but the model has dimension d = {dim}.")
    if x.ndim == 2 and x.shape[0] == 0:
        raise ValueError(f"`{name}` has no rows.")
    if is_concrete(x):
        values = np.asarray(x).reshape(-1, d)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise ValueError(
                f"`{name}` has NaN or inf entries in {int(bad.sum())} row(s) at indices "
                f"{describe_indices(np.flatnonzero(bad))}."
            )
        zero = ~(values != 0).any(axis=1)
        if zero.any() and not allow_zero_rows:
            raise ValueError(
                f"`{name}` has {int(zero.sum())} row(s) of zero norm at indices "
                f"{describe_indices(np.flatnonzero(zero))}: their direction x/|x| is undefined."
            )
        _check_range(values, name, zero)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return jnp.asarray(x)


def _check_range(values: np.ndarray, name: str, zero: np.ndarray) -> None:
    """Rows that the float type JAX computes in cannot hold: entries beyond its largest value, or
    (nonzero) rows whose entries all lie below its smallest normal number, which XLA flushes to
    zero."""
    target = jax.dtypes.canonicalize_dtype(
        values.dtype if np.issubdtype(values.dtype, np.floating) else float
    )
    info = np.finfo(target)
    magnitude = np.abs(values).max(axis=1)
    huge = magnitude > info.max
    if huge.any():
        raise ValueError(
            f"`{name}` has entries beyond the largest {target} ({info.max:.3g}) in "
            f"{int(huge.sum())} row(s) at indices {describe_indices(np.flatnonzero(huge))}: they "
            "would overflow to inf. Rescale the data (or enable x64 for float64 data)."
        )
    tiny = (magnitude < info.tiny) & ~zero
    if tiny.any():
        raise ValueError(
            f"`{name}` has {int(tiny.sum())} row(s) whose entries all lie below the smallest normal "
            f"{target} ({info.tiny:.3g}) at indices {describe_indices(np.flatnonzero(tiny))}; XLA "
            "treats such numbers as zero. Rescale the data."
        )


def check_times(s, n: int | None, name: str = "s"):
    """Validate diffusion times: a scalar or one per sample, finite and >= 0."""
    s = jnp.asarray(s, dtype=jnp.result_type(float))
    if s.ndim > 1 or (s.ndim == 1 and n is not None and s.shape[0] != n):
        want = "a scalar" if n is None else f"a scalar or shape ({n},)"
        raise ValueError(f"`{name}` must be {want}, got shape {s.shape}.")
    if is_concrete(s):
        check_finite_nonnegative(np.atleast_1d(np.asarray(s)), name)
    return s


def check_finite_nonnegative(values: np.ndarray, name: str, where: str = "indices") -> None:
    """Refuse NaN, inf or negative entries of the 1-D `values`, naming their positions."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"`{name}` has NaN or inf at {where} {describe_indices(np.flatnonzero(bad))}."
        )
    negative = values < 0
    if negative.any():
        raise ValueError(
            f"`{name}` must be >= 0; it is negative at {where} "
            f"{describe_indices(np.flatnonzero(negative))} (e.g. {values[negative][0]:g})."
        )


def check_weight_decay(value) -> float:
    """`value` as a float, refused unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`weight_decay` must be a number >= 0, got {value!r}.")
    if not 0 <= value < math.inf:
        raise ValueError(f"`weight_decay` must be a finite number >= 0, got {value!r}.")
    return float(value)


def check_direction_scale(value) -> float:
    """`value` as a float, refused unless it is a number in (0, 1000] (ScoreMLP's factor of u)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`direction_scale` must be a positive number, got {value!r}.")
    if not 0 < value <= MAX_DIRECTION_SCALE:
        raise ValueError(
            f"`direction_scale` must lie in (0, {MAX_DIRECTION_SCALE:g}], got {value!r}."
        )
    return float(value)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def warn_deprecated(message: str) -> None:
    """A DeprecationWarning attributed to the caller (see :func:`warn_caller`)."""
    warn_caller(message, DeprecationWarning)


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """A warning attributed to the first caller outside msgm_pp (and outside NumPyro's
    Distribution metaclass, which calls our constructors)."""
    internal = (
        os.path.dirname(os.path.abspath(__file__)),
        os.path.abspath(_NUMPYRO_DISTRIBUTION_FILE),
    )
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
