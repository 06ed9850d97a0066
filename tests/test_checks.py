"""Bad input gets a ValueError or TypeError that says what is wrong and where."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msgm_pp as mp

NOISE = mp.IsotropicNoise(3)
KEY = jax.random.key(0)


def points(n=6):
    return np.arange(1.0, 3 * n + 1).reshape(n, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_listed(bad):
    x = points()
    x[[0, 5], 1] = bad
    with pytest.raises(
        ValueError, match=r"`x0` has NaN or inf entries in 2 row\(s\) at indices \[0, 5\]"
    ):
        mp.forward_sample(NOISE, x, 0.1, key=KEY)


def test_zero_rows_are_listed():
    x = points(30)
    x[3:25] = 0.0
    with pytest.raises(
        ValueError, match=r"22 row\(s\) of zero norm at indices \[3, 4, .*\(22 in all\)\]"
    ):
        mp.forward_sample(NOISE, x, 0.1, key=KEY)


def test_shapes_are_checked():
    with pytest.raises(
        ValueError, match=r"2-D array of shape \(n, d\) or \(d,\), got shape \(2, 2, 3\)"
    ):
        mp.forward_sample(NOISE, np.ones((2, 2, 3)), 0.1, key=KEY)
    with pytest.raises(ValueError, match="has 4 columns but the model has dimension d = 3"):
        mp.forward_sample(NOISE, np.ones((2, 4)), 0.1, key=KEY)
    with pytest.raises(ValueError, match="has no rows"):
        mp.forward_sample(NOISE, np.ones((0, 3)), 0.1, key=KEY)


def test_negative_or_non_finite_times_are_listed():
    with pytest.raises(ValueError, match=r"`s` must be >= 0; it is negative at indices \[1, 3\]"):
        mp.forward_sample(NOISE, points(4), jnp.array([0.1, -0.2, 0.3, -1.0]), key=KEY)
    with pytest.raises(ValueError, match=r"`s` has NaN or inf at indices \[0\]"):
        mp.forward_sample(NOISE, points(2), jnp.array([jnp.nan, 0.1]), key=KEY)
    with pytest.raises(ValueError, match=r"scalar or shape \(4,\)"):
        mp.forward_sample(NOISE, points(4), jnp.ones(3), key=KEY)


def test_keys_steps_and_types_are_checked():
    with pytest.raises(TypeError, match="PRNG key"):
        mp.forward_sample(NOISE, points(), 0.1, key=42)
    with pytest.raises(TypeError, match="required"):
        mp.forward_sample(NOISE, points(), 0.1, key=None)
    with pytest.raises(ValueError, match="`steps` must be a positive int"):
        mp.forward_sample(NOISE, points(), 0.1, key=KEY, steps=0)
    with pytest.raises(TypeError, match="msgm_pp noise"):
        mp.forward_sample("isotropic", points(), 0.1, key=KEY)
    with pytest.raises(TypeError, match="real numbers"):
        mp.forward_sample(NOISE, np.array([["a", "b", "c"]]), 0.1, key=KEY)


def test_rows_the_float_type_cannot_hold_are_named():
    """float64 data meet float32 arithmetic when x64 is off; XLA flushes subnormals to zero."""
    huge = points()
    huge[2, 0] = 1e300
    with pytest.raises(ValueError, match=r"beyond the largest float32 .* indices \[2\].*x64"):
        mp.MSGM.build(huge, key=KEY)
    tiny = points().astype(np.float32)
    tiny[[1, 4]] = np.float32(1e-39)
    with pytest.raises(ValueError, match=r"2 row\(s\) whose entries all lie below the smallest"):
        mp.SGM.build(tiny, key=KEY)


@pytest.mark.parametrize("scale", [1e36, 1e-36])
def test_data_at_extreme_float32_scales_build_models(scale):
    """Norms, log-norms and the norm model stay finite at any representable scale."""
    data = (np.random.default_rng(0).standard_t(3.0, (400, 3)) * scale).astype(np.float32)
    model = mp.MSGM.build(data, key=KEY, density=mp.ODEDensity(4))
    assert np.isfinite(model.score.log_r_scale) and model.score.log_r_scale > 0
    assert np.isfinite(np.asarray(model.log_prob(data[:5]))).all()


@pytest.mark.parametrize("model_class", [mp.MSGM, mp.SGM])
def test_moments_without_a_closed_form_say_how_to_estimate_them(model_class):
    model = model_class.build(np.random.default_rng(0).standard_cauchy((64, 3)), key=KEY)
    for moment in ("mean", "variance"):
        with pytest.raises(
            NotImplementedError, match=rf"{model_class.__name__}\.{moment}: .*draws"
        ):
            getattr(model, moment)
