r"""The affine map y = W(x − loc) that a model works in: per coordinate, y = (x − loc)/scale
(:class:`CoordinateScaling`), or a full matrix (:class:`AffineCoordinates`, e.g. the whitening by
Tyler's shape matrix, :func:`tyler_shape`).

A model of y gives a density of x by the change of variables

    log p_X(x) = log p_Y(W(x − loc)) + log |det W|.

The multiplicative noise of an MSGM rotates all coordinates about the origin together, so the model
depends on each coordinate's origin and unit. Data whose coordinates have different units or sit
far from the origin should be normalised first; :func:`unit_mismatch` says when.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp._checks import describe_indices, is_concrete
from msgm_pp.serialization import serializable

NORMALIZATIONS = ("none", "standard", "robust")  # per coordinate; "shape" is a full matrix
SCALE_RATIO_WARNING = 10.0  # largest / smallest robust scale
OFFSET_WARNING = 1.0  # |median| in robust scales


@serializable
class CoordinateScaling(eqx.Module):
    """y = (x − loc)/scale per coordinate, for flat points x of shape (d,)."""

    loc: jax.Array
    scale: jax.Array

    def __check_init__(self):
        if np.ndim(self.loc) != 1 or np.shape(self.scale) != np.shape(self.loc):
            raise ValueError(
                "`loc` and `scale` must be vectors of one shape, got shapes "
                f"{np.shape(self.loc)} and {np.shape(self.scale)}."
            )
        if not is_concrete(self.scale):
            return
        loc, scale = np.asarray(self.loc), np.asarray(self.scale)
        bad = np.flatnonzero(~np.isfinite(loc) | ~np.isfinite(scale) | ~(scale > 0))
        if bad.size:
            raise ValueError(
                f"coordinates {bad.tolist()} have a non-finite location or a scale that is not a "
                "finite positive number."
            )

    @property
    def dim(self) -> int:
        """d, the number of coordinates."""
        return self.loc.shape[0]

    def normalise(self, x):
        """y = (x − loc)/scale."""
        return (x - self.loc) / self.scale

    def denormalise(self, y):
        """x = loc + scale · y."""
        return self.loc + self.scale * y

    def log_abs_det(self):
        """log |det ∂y/∂x| = −Σ_i log scale_i, added to the log-density of y."""
        return -jnp.sum(jnp.log(self.scale))


@serializable
class AffineCoordinates(eqx.Module):
    """y = W(x − loc) with a full invertible matrix W, for flat points x of shape (d,); `inverse`
    is W⁻¹ and `log_det` log |det W|, both given so that no point pays for a solve."""

    loc: jax.Array
    matrix: jax.Array
    inverse: jax.Array
    log_det: jax.Array

    def __check_init__(self):
        d = np.shape(self.loc)[0] if np.ndim(self.loc) == 1 else None
        if d is None or any(np.shape(a) != (d, d) for a in (self.matrix, self.inverse)):
            raise ValueError(
                "`loc` must be a vector (d,) and `matrix` and `inverse` matrices (d, d), got "
                f"shapes {np.shape(self.loc)}, {np.shape(self.matrix)} and {np.shape(self.inverse)}."
            )
        if not is_concrete(self.matrix):
            return
        parts = [np.asarray(a, np.float64) for a in (self.loc, self.matrix, self.inverse)]
        if not all(np.all(np.isfinite(part)) for part in parts) or not np.isfinite(self.log_det):
            raise ValueError("`loc`, `matrix`, `inverse` and `log_det` must be finite.")
        _, matrix, inverse = parts
        if not np.allclose(matrix @ inverse, np.eye(d), atol=1e-3):
            raise ValueError("`inverse` is not the inverse of `matrix`.")
        if not np.isclose(np.linalg.slogdet(matrix)[1], float(self.log_det), atol=1e-4, rtol=1e-5):
            raise ValueError("`log_det` is not log |det matrix|.")

    @classmethod
    def from_matrix(cls, matrix, loc=None, dtype=jnp.float32) -> "AffineCoordinates":
        """The map y = W(x − loc) of an invertible W (loc 0 by default), its inverse and
        log-determinant computed in float64."""
        matrix = np.asarray(matrix, np.float64)
        loc = np.zeros(matrix.shape[0]) if loc is None else np.asarray(loc, np.float64)
        sign, log_det = np.linalg.slogdet(matrix)
        if sign == 0 or not np.isfinite(log_det):
            raise ValueError("`matrix` is singular.")
        inverse = np.linalg.inv(matrix)
        arrays = (jnp.asarray(a, dtype) for a in (loc, matrix, inverse, log_det))
        return cls(*arrays)

    @property
    def dim(self) -> int:
        """d, the number of coordinates."""
        return self.loc.shape[0]

    def normalise(self, x):
        """y = W(x − loc)."""
        return (x - self.loc) @ self.matrix.T

    def denormalise(self, y):
        """x = loc + W⁻¹y."""
        return self.loc + y @ self.inverse.T

    def log_abs_det(self):
        """log |det ∂y/∂x| = log |det W|, added to the log-density of y."""
        return self.log_det


def tyler_shape(x: np.ndarray, max_iterations: int = 1000, tol: float = 1e-10) -> np.ndarray:
    r"""Tyler's M-estimator of the shape (scatter up to scale) of the rows of x about the origin:
    the fixed point of Σ = (d/n) Σ_i x_i x_iᵀ / (x_iᵀ Σ⁻¹ x_i), with trace d (Tyler 1987).

    It depends on the rows through their directions only, so it exists for any tail: for an
    elliptical law (a multivariate Student-t, any ν) it is consistent for the scatter matrix, and
    Σ^{-1/2} x then has uniformly distributed directions. Raises ValueError when n ≤ d, when a row
    is 0 or not finite, or when the iteration does not converge (the directions lie too close to
    a subspace)."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n <= d:
        raise ValueError(
            f"Tyler's shape estimate needs more rows than coordinates, got {n} rows for d = {d}."
        )
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(
            f"rows {describe_indices(bad)} are zero or not finite; Tyler's shape estimate needs "
            "directions."
        )
    u = x / norms[:, None]
    shape = np.eye(d)
    for _ in range(max_iterations):
        q = np.einsum("ij,jk,ik->i", u, np.linalg.inv(shape), u)
        update = (d / n) * (u / q[:, None]).T @ u
        update *= d / np.trace(update)
        if np.max(np.abs(update - shape)) < tol:
            return update
        shape = update
    raise ValueError(
        f"Tyler's shape estimate did not converge in {max_iterations} iterations: the data's "
        "directions may lie too close to a subspace."
    )


def shape_whitening(x: np.ndarray, dtype) -> AffineCoordinates:
    """y = c Σ^{-1/2} x with Σ = :func:`tyler_shape` (x) and c chosen so that the median over the
    coordinates of y's robust scales (IQR/1.349) is 1. The origin stays where it is."""
    values, vectors = np.linalg.eigh(tyler_shape(x))
    whitening = vectors @ np.diag(values**-0.5) @ vectors.T
    _, scale = robust_location_scale(x @ whitening.T)
    return AffineCoordinates.from_matrix(whitening / np.median(scale), dtype=dtype)


def robust_location_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate median and interquartile range / 1.349 of the rows of x (the standard
    deviation for Gaussian data, and finite for any tail)."""
    q25, median, q75 = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
    return median, (q75 - q25) / 1.349


def normalization_of(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate (loc, scale) of the rows of x: mean and standard deviation ("standard"),
    median and interquartile range / 1.349 ("robust", see :func:`robust_location_scale`), or
    (0, 1) ("none")."""
    if kind not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {kind!r}; choose one of {[*NORMALIZATIONS, 'shape']}."
        )
    if kind == "none":
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    if kind == "standard":
        loc, scale = x.mean(0), x.std(0)
    else:
        loc, scale = robust_location_scale(x)
    flat = np.flatnonzero(~(scale > 0))
    if flat.size:
        raise ValueError(
            f"`data` columns {flat.tolist()} have zero spread, so {kind!r} normalization "
            "is undefined; drop them or use normalization='none'."
        )
    return loc, scale


def coordinate_scaling(x: np.ndarray, normalization, dtype):
    """The map `normalization` ("none", "standard", "robust", "shape", or a CoordinateScaling or
    AffineCoordinates) for the rows of x, with arrays of `dtype`; None for "none"."""
    if normalization == "shape":
        return shape_whitening(x, dtype)
    if isinstance(normalization, CoordinateScaling | AffineCoordinates):
        if normalization.dim != x.shape[1]:
            raise ValueError(
                f"`normalization` has dimension {normalization.dim} but the data have "
                f"d = {x.shape[1]}."
            )
        return normalization
    if normalization == "none":
        return None
    loc, scale = normalization_of(x, normalization)
    return CoordinateScaling(jnp.asarray(loc, dtype), jnp.asarray(scale, dtype))


def unit_mismatch(x: np.ndarray) -> str | None:
    """Why the rows of x need a per-coordinate normalisation before a rotation-based model, or
    None: robust scales that differ more than 10-fold, or a median more than one robust scale
    away from the origin."""
    median, scale = robust_location_scale(x)
    if not np.all(scale > 0):
        return None
    reasons = []
    largest, smallest = int(np.argmax(scale)), int(np.argmin(scale))
    if scale[largest] > SCALE_RATIO_WARNING * scale[smallest]:
        reasons.append(
            f"the coordinates' robust scales differ {scale[largest] / scale[smallest]:.3g}-fold "
            f"(column {largest}: {scale[largest]:.3g}, column {smallest}: {scale[smallest]:.3g})"
        )
    offsets = np.abs(median) / scale
    far = np.flatnonzero(offsets > OFFSET_WARNING)
    if far.size:
        reasons.append(
            f"the medians of columns {far.tolist()} lie up to {offsets.max():.3g} robust scales "
            "from the origin"
        )
    return "; ".join(reasons) or None
