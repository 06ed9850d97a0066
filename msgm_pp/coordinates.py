r"""Per-coordinate location and scale: the affine map y = (x − loc)/scale that a model works in.

A model of y gives a density of x by the change of variables

    log p_X(x) = log p_Y((x − loc)/scale) − Σ_i log scale_i.

The multiplicative noise of an MSGM rotates all coordinates about the origin together, so the model
depends on each coordinate's origin and unit. Data whose coordinates have different units or sit
far from the origin should be normalised first; :func:`unit_mismatch` says when.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp._checks import is_concrete
from msgm_pp.serialization import serializable

NORMALIZATIONS = ("none", "standard", "robust")
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
        raise ValueError(f"unknown normalization {kind!r}; choose one of {list(NORMALIZATIONS)}.")
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


def coordinate_scaling(x: np.ndarray, normalization, dtype) -> CoordinateScaling | None:
    """The scaling `normalization` ("none", "standard", "robust" or a CoordinateScaling) for the
    rows of x, with arrays of `dtype`; None for "none"."""
    if isinstance(normalization, CoordinateScaling):
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
