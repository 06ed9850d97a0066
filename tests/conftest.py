import math

import equinox as eqx
import jax
import numpy as np
import pytest

import msgm_pp as mp
from msgm_pp.heat_kernel import heat_kernel_score


def explicit_tensor(noise) -> np.ndarray:
    """The (d, d, K) tensor of a noise, read off from `apply` (G^k_{ij} = ∂(G(x) e_k)_i / ∂x_j)."""
    d, k = noise.dim, noise.num_generators
    columns = jax.vmap(lambda e: jax.vmap(lambda x: noise.apply(x, e))(np.eye(d)))(np.eye(k))
    return np.asarray(columns, dtype=np.float64).transpose(2, 1, 0)


def unit_rows(key, n, d):
    z = jax.random.normal(key, (n, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def make_noise(name: str, d: int):
    if name == "isotropic":
        return mp.IsotropicNoise(d)
    if name == "dense":
        return mp.DenseNoise(d, key=jax.random.key(d))
    if name == "lattice":
        return mp.LatticeNoise({3: (3,), 16: (4, 4), 1024: (32, 32)}.get(d, (d,)))
    raise ValueError(name)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


class PointMassScore(eqx.Module):
    """The exact tangent score when every data direction equals u0: ∇_S log f_τ(u · u0)."""

    u0: jax.Array
    schedule: mp.LinearSchedule

    def __call__(self, u, z, t):
        return heat_kernel_score(u, self.u0, self.schedule.integral(t * self.schedule.T))


def time_of_tau(schedule, tau):
    a = 0.5 * (schedule.beta_max - schedule.beta_min) / schedule.T
    return (-schedule.beta_min + math.sqrt(schedule.beta_min**2 + 4 * a * tau)) / (2 * a)


def pytest_configure(config):
    # ArviZ writes a once-a-day warning stamp on import through a fixed temporary file name
    # (daily_warning.tmp, then a rename), so two xdist workers importing it at once on a fresh
    # machine race: one renames the other's file away and its import fails with
    # FileNotFoundError while collecting test_numpyro.py. Importing it once here, in the
    # controller before the workers start, writes the stamp for the day.
    if not hasattr(config, "workerinput"):
        import arviz  # noqa: F401


def pytest_collection_modifyitems(items):
    # The notebooks are the longest tests (minutes each). With xdist's worksteal scheduling each
    # worker starts on a contiguous share of this order and idle workers take tests from the
    # others' remaining ones, so the longest tests go first instead of being left for the end.
    items.sort(key=lambda item: item.path.name != "test_tutorials.py")
