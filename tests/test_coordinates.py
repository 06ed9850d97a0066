"""Coordinate maps: per-coordinate normalisation (its exact Jacobian, the mixed-units warning, a fit
in mixed units) and the whitening by Tyler's shape matrix."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msgm_pp as mp
from msgm_pp.coordinates import normalization_of, shape_whitening, tyler_shape, unit_mismatch
from msgm_pp.datasets import CorrelatedCauchy

UNITS = np.array([1e4, 1.0, 1.0, 1.0])


def mixed_units(n: int, seed: int = 0) -> np.ndarray:
    """The paper's Cauchy data with the first coordinate in units 10^4 times smaller."""
    task = CorrelatedCauchy.paper_task(d=4, seed=0)
    return np.asarray(task.sample(jax.random.key(seed), (n,))) * UNITS


@pytest.fixture(scope="module")
def robust_fit():
    data = mixed_units(2048)
    model = mp.MSGM.fit(
        data,
        key=jax.random.key(1),
        normalization="robust",
        max_steps=600,
        eval_every=200,
        weight_decay=0.0,
        progress=False,
    )
    return data, model


def test_log_prob_adds_the_log_jacobian_of_the_map_by_finite_differences(robust_fit):
    """log p_X(x) = log p_Y(y(x)) + log|det ∂y/∂x|, with the Jacobian by central differences."""
    data, model = robust_fit
    without = mp.MSGM(model.score, model.norm_model, density=model.density)
    x = np.asarray(data[:6], dtype=np.float64)
    scaling = model.coordinates

    def jacobian(point):
        h = 1e-3 * np.abs(point) + 1e-6
        columns = [
            (
                np.asarray(scaling.normalise(point + h[j] * np.eye(4)[j]), np.float64)
                - np.asarray(scaling.normalise(point - h[j] * np.eye(4)[j]), np.float64)
            )
            / (2 * h[j])
            for j in range(4)
        ]
        return np.stack(columns, axis=1)

    log_det = np.array([np.linalg.slogdet(jacobian(point))[1] for point in x])
    expected = np.asarray(without.log_prob(scaling.normalise(jnp.asarray(x, jnp.float32))))
    np.testing.assert_allclose(
        np.asarray(model.log_prob(jnp.asarray(x, jnp.float32))), expected + log_det, atol=2e-3
    )


def test_a_robust_fit_in_mixed_units_keeps_every_coordinate_scale(robust_fit):
    """Median |x_j| of 4000 draws against the data's, per coordinate. Without normalisation they
    come out 51-88 times too large; the Monte-Carlo error of a median of 4000 is about 4%."""
    model = robust_fit[1]
    draws = np.asarray(model.sample(jax.random.key(2), (4000,)))
    ratio = np.median(np.abs(draws), axis=0) / np.median(np.abs(mixed_units(4000, seed=7)), axis=0)
    assert np.all(np.abs(np.log(ratio)) < np.log(1.3)), ratio


def test_mixed_units_warn_and_comparable_units_do_not():
    with pytest.warns(UserWarning, match=r"robust scales differ .*normalization='robust'"):
        mp.MSGM.build(mixed_units(512), key=jax.random.key(0))
    with pytest.warns(UserWarning, match=r"medians of columns \[1\]"):
        mp.MSGM.build(mixed_units(512) / UNITS + np.array([0, 5.0, 0, 0]), key=jax.random.key(0))
    assert unit_mismatch(mixed_units(512) / UNITS) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        mp.MSGM.build(mixed_units(512), key=jax.random.key(0), normalization="robust")


def test_normalizations_are_the_documented_statistics():
    x = np.random.default_rng(0).standard_cauchy((1001, 3)) * [1.0, 10.0, 100.0]
    loc, scale = normalization_of(x, "robust")
    q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
    np.testing.assert_allclose(loc, q50)
    np.testing.assert_allclose(scale, (q75 - q25) / 1.349)
    np.testing.assert_allclose(normalization_of(x, "standard")[1], x.std(0))


def test_the_model_round_trips_with_its_coordinates(robust_fit, tmp_path):
    data, model = robust_fit
    model.save(tmp_path / "model.msgm")
    loaded = mp.load(tmp_path / "model.msgm")
    np.testing.assert_array_equal(loaded.coordinates.scale, model.coordinates.scale)
    np.testing.assert_array_equal(loaded.log_prob(data[:8]), model.log_prob(data[:8]))


@pytest.mark.parametrize(
    "loc, scale, match",
    [
        ([0.0, 0.0], [1.0, -1.0], r"coordinates \[1\]"),
        ([0.0, np.nan], [1.0, 1.0], r"coordinates \[1\]"),
        ([0.0, 0.0], [1.0, 1.0, 1.0], "vectors of one shape"),
    ],
)
def test_bad_scalings_are_refused(loc, scale, match):
    with pytest.raises(ValueError, match=match):
        mp.CoordinateScaling(jnp.asarray(loc), jnp.asarray(scale))


def test_a_scaling_of_the_wrong_dimension_or_a_zero_point_is_refused():
    data = mixed_units(256)
    with pytest.raises(ValueError, match="`normalization` has dimension 3"):
        mp.MSGM.build(
            data,
            key=jax.random.key(0),
            normalization=mp.CoordinateScaling(jnp.zeros(3), jnp.ones(3)),
        )
    at_the_centre = mp.CoordinateScaling(jnp.asarray(data[5]), jnp.ones(4))
    with pytest.raises(ValueError, match=r"normalised data .* zero norm at indices \[5\]"):
        mp.MSGM.build(data, key=jax.random.key(0), normalization=at_the_centre)


def elliptical_t(n: int, scatter: np.ndarray, df: float = 1.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, scatter.shape[0])) @ np.linalg.cholesky(scatter).T
    return z / np.sqrt(rng.chisquare(df, (n, 1)) / df)


SCATTER = np.array([[4.0, 1.2, 0.0], [1.2, 1.0, -0.3], [0.0, -0.3, 0.25]])


def test_tyler_shape_recovers_the_scatter_of_elliptical_data_whatever_the_scale():
    """Tyler's estimate is consistent for the scatter (up to scale) of any elliptical law; with
    20000 rows its entries have Monte-Carlo errors of about 0.02 (trace-normalised), so 0.08."""
    x = elliptical_t(20_000, SCATTER)
    expected = SCATTER * 3 / np.trace(SCATTER)
    np.testing.assert_allclose(tyler_shape(x), expected, atol=0.08)
    np.testing.assert_allclose(tyler_shape(1e3 * x), tyler_shape(x), rtol=1e-8, atol=1e-10)


def test_shape_whitening_leaves_directions_with_the_identity_shape():
    """Tyler's estimate is affine-equivariant, so the whitened rows' own estimate is the identity:
    their directions are those of a spherical law."""
    x = elliptical_t(5000, SCATTER, seed=1)
    whitening = shape_whitening(x, jnp.float32)
    y = np.asarray(whitening.normalise(jnp.asarray(x)))
    np.testing.assert_allclose(tyler_shape(y), np.eye(3), atol=1e-5)  # float32 y
    np.testing.assert_allclose(
        np.median(np.subtract(*np.percentile(y, [75, 25], 0)) / 1.349), 1.0, rtol=1e-6
    )


def test_affine_coordinates_invert_and_know_their_log_determinant():
    matrix = np.array([[2.0, 0.5], [0.0, 0.25]])
    affine = mp.AffineCoordinates.from_matrix(matrix, loc=[1.0, -1.0])
    x = jnp.array([[0.3, 2.0], [-1.0, 5.0]])
    np.testing.assert_allclose(affine.denormalise(affine.normalise(x)), x, rtol=1e-6)
    np.testing.assert_allclose(affine.normalise(x), (x - affine.loc) @ matrix.T, rtol=1e-6)
    assert float(affine.log_abs_det()) == pytest.approx(np.log(0.5), rel=1e-6)


@pytest.mark.parametrize(
    "arguments, match",
    [
        (dict(matrix=np.zeros((2, 2))), "singular"),
        (dict(matrix=np.eye(2), inverse=2 * np.eye(2)), "not the inverse"),
        (dict(matrix=np.eye(2), log_det=1.0), "not log"),
        (dict(matrix=np.eye(3)), "must be a vector"),
    ],
)
def test_bad_affine_coordinates_are_refused(arguments, match):
    with pytest.raises(ValueError, match=match):
        if "inverse" in arguments or "log_det" in arguments or arguments["matrix"].shape[0] == 3:
            matrix = arguments["matrix"]
            mp.AffineCoordinates(
                jnp.zeros(2),
                jnp.asarray(matrix),
                jnp.asarray(arguments.get("inverse", np.linalg.inv(matrix))),
                jnp.asarray(arguments.get("log_det", 0.0)),
            )
        else:
            mp.AffineCoordinates.from_matrix(arguments["matrix"])


def test_tyler_shape_refuses_too_few_rows_and_zero_rows():
    with pytest.raises(ValueError, match="more rows than coordinates"):
        tyler_shape(np.ones((3, 3)))
    rows = elliptical_t(100, SCATTER)
    rows[[4, 7]] = 0.0
    with pytest.raises(ValueError, match=r"rows \[4, 7\] are zero"):
        tyler_shape(rows)


@pytest.fixture(scope="module")
def shape_fit():
    data = elliptical_t(2048, SCATTER, seed=2)
    settings = dict(max_steps=200, eval_every=100, weight_decay=0.0, progress=False)
    return data, mp.MSGM.fit(data, key=jax.random.key(1), normalization="shape", **settings)


def test_a_shape_normalised_model_is_the_whitened_model_plus_its_log_determinant(
    shape_fit, tmp_path
):
    data, model = shape_fit
    assert isinstance(model.coordinates, mp.AffineCoordinates)
    whitened = type(model)(**{**model.constructor_arguments(), "coordinates": None})
    x = jnp.asarray(data[:16], jnp.float32)
    expected = whitened.log_prob(model.coordinates.normalise(x)) + model.coordinates.log_det
    np.testing.assert_allclose(model.log_prob(x), expected, rtol=1e-5, atol=1e-4)
    key = jax.random.key(3)
    np.testing.assert_allclose(
        model.sample(key, (8,)),
        model.coordinates.denormalise(whitened.sample(key, (8,))),
        atol=1e-4,
    )
    model.save(tmp_path / "shape.msgm")
    np.testing.assert_array_equal(mp.load(tmp_path / "shape.msgm").log_prob(x), model.log_prob(x))


@pytest.mark.parametrize(
    "normalization",
    ["shape", mp.AffineCoordinates.from_matrix(np.eye(16))],
    ids=["shape", "affine"],
)
def test_a_lattice_model_refuses_a_map_that_mixes_coordinates(normalization):
    fields = jax.random.normal(jax.random.key(0), (64, 4, 4))
    with pytest.raises(ValueError, match="lattice model cannot"):
        mp.MSGM.build(
            fields,
            key=jax.random.key(0),
            noise=mp.LatticeNoise((4, 4)),
            normalization=normalization,
        )
