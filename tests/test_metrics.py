"""Metrics against closed forms and direct computations."""

import math

import numpy as np
import pytest
from scipy import stats

from msgm_pp import metrics


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return rng.standard_normal((500, 3)), rng.standard_normal((400, 3)) + np.array([0.5, 0, 0])


def direct_mmd(x, y, h):
    kernel = lambda a, b: np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / h**2)
    return math.sqrt(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())


def test_mmd_is_the_paper_v_statistic(samples):
    x, y = samples
    assert metrics.mmd(x, x) == pytest.approx(0.0, abs=1e-6)
    assert metrics.mmd(x, y) == pytest.approx(direct_mmd(x, y, 3.0), rel=1e-9)
    assert metrics.mmd(x, y, bandwidth=0.7) == pytest.approx(direct_mmd(x, y, 0.7), rel=1e-9)
    assert metrics.mmd(x, y) == pytest.approx(metrics.mmd(y, x), rel=1e-12)


def test_heavy_tail_mmd_is_scale_free_and_separates_tails():
    """The robust transform makes the heavy-tail MMD invariant to rescaling the coordinates, and
    it puts a Cauchy sample and a Gaussian with the same interquartile range more than 4 times
    further apart than two Cauchy samples (measured: 9×), at any scale."""
    rng = np.random.default_rng(1)
    a, b = (0.01 * rng.standard_cauchy((2000, 2)) for _ in range(2))
    gaussian = 0.01 * rng.standard_normal((2000, 2)) * 2 / 1.349
    assert metrics.heavy_tail_mmd(a, a) == pytest.approx(0.0, abs=1e-6)
    floor = metrics.heavy_tail_mmd(b, a)
    separated = metrics.heavy_tail_mmd(gaussian, a)
    assert separated > 4 * floor
    assert metrics.heavy_tail_mmd(1e3 * gaussian, 1e3 * a) == pytest.approx(separated, rel=1e-9)


def test_energy_distance_matches_scipy_in_one_dimension():
    rng = np.random.default_rng(2)
    u, v = rng.standard_normal(300), rng.standard_normal(200) * 2 + 1
    expected = stats.energy_distance(u, v)
    assert metrics.energy_distance(u[:, None], v[:, None]) == pytest.approx(expected, rel=1e-9)
    assert metrics.energy_distance(u[:, None], u[:, None]) == pytest.approx(0.0, abs=1e-6)


def test_sliced_wasserstein_of_a_shift():
    """For y = x + μ each projection is shifted by θ·μ exactly, so SW_1 = E_θ|θ·μ| = 2|μ|/π in
    d = 2, up to the Monte-Carlo error of 4096 directions (sd of |cos| is 0.31, so 4 SE = 0.02)."""
    x = np.random.default_rng(3).standard_normal((1000, 2))
    mu = np.array([3.0, 4.0])
    value = metrics.sliced_wasserstein(x, x + mu, num_projections=4096)
    assert value == pytest.approx(2 * 5 / math.pi, abs=0.02 * 5)
    assert metrics.sliced_wasserstein(x, x) == 0.0


@pytest.mark.parametrize(
    ("estimator", "relative_stderr"),
    [
        (metrics.hill_tail_index, lambda alpha: 1.0),
        (metrics.gpd_tail_index, lambda alpha: 1 + alpha),  # (1 + ξ)/ξ with ξ = 1/α
    ],
)
@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_tail_index_of_pareto_data(estimator, relative_stderr, alpha):
    """On Pareto(α) data, the k = 20000 largest of 1e5 values give α within 10% and within 4
    reported standard errors; the standard error is the asymptotic one, α/√k for Hill and
    (1 + ξ)α/(ξ√k) for the GPD fit (at most 2.5% of α here, so 10% is at least 4 of them)."""
    values = stats.pareto(alpha).rvs(size=100_000, random_state=4)
    estimate = estimator(values, tail_fraction=0.2)
    assert estimate.num_exceedances == 20000
    assert abs(estimate.alpha / alpha - 1) < 0.1
    assert abs(estimate.alpha - alpha) < 4 * estimate.stderr
    expected_stderr = relative_stderr(alpha) * alpha / math.sqrt(20000)
    assert estimate.stderr == pytest.approx(expected_stderr, rel=0.2)


def test_tail_quantile_errors_of_a_scaled_sample():
    y = np.random.default_rng(5).standard_cauchy((1000, 3))
    errors = metrics.tail_quantile_errors(2 * y, y)
    assert errors["coordinates"].shape == (3, 3) and errors["norm"].shape == (3,)
    np.testing.assert_allclose(errors["norm"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(errors["coordinates"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(metrics.tail_quantile_errors(y, y)["norm"], 0.0, atol=1e-12)


def test_survival_function_is_the_empirical_tail():
    values, survival = metrics.survival_function(np.arange(1.0, 1001.0), num_points=50)
    np.testing.assert_allclose(survival, (1000 - values) / 1000)
    assert values[0] == 999.0 and np.all(np.diff(values) < 0)


def test_bad_input_names_the_rows():
    x = np.ones((5, 2))
    x[3, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"`x` has NaN or inf entries in 1 row\(s\), e.g. at \[3\]"
    ):
        metrics.mmd(x, np.ones((4, 2)))
    with pytest.raises(ValueError, match="has 3 columns but the other sample has 2"):
        metrics.energy_distance(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="finite and positive"):
        metrics.hill_tail_index(np.array([1.0, -1.0] * 200))
    with pytest.raises(ValueError, match="at least 10"):
        metrics.hill_tail_index(np.arange(1.0, 50.0))


def test_median_distance_matches_all_pairs_without_an_n_by_n_by_d_array():
    x = np.random.default_rng(3).standard_cauchy((301, 7))
    squared = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    expected = np.sqrt(np.median(squared[np.triu_indices(len(x), k=1)]))
    assert metrics.median_distance(x) == pytest.approx(expected, rel=1e-12)
