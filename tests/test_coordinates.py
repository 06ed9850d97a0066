"""Per-coordinate normalisation: its exact Jacobian, the mixed-units warning and a fit in mixed units."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msgm_pp as mp
from msgm_pp.coordinates import normalization_of, unit_mismatch
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
