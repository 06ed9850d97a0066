import math
import os
import subprocess
import sys

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


class LinearField(eqx.Module):
    """A smooth inexact score, (1 + t) M u: the reverse samplers' laws then differ."""

    matrix: jax.Array

    def __call__(self, u, z, t):
        return (1.0 + t) * (self.matrix @ u)


def time_of_tau(schedule, tau):
    a = 0.5 * (schedule.beta_max - schedule.beta_min) / schedule.T
    return (-schedule.beta_min + math.sqrt(schedule.beta_min**2 + 4 * a * tau)) / (2 * a)


# The suite is compile-bound (about 3/4 of its time is XLA backend compilation), so the tests run
# with flags that make XLA:CPU compile faster:
# - its legacy elemental emitters instead of its fusion emitters: tests/test_density.py and
#   tests/test_msgm.py took 476 s against 802 s on one core, test_posterior.py and
#   test_numpyro.py 321 s against 515 s;
# - LLVM at optimisation level 2 instead of 3: with the emitters above, test_msgm.py,
#   test_numpyro.py and test_nets.py took 234 s against 300 s on one core, and test_density.py,
#   test_schedule.py and test_posterior.py 249–254 s against 282–287 s (both orders of the two
#   cores); level 1 was no faster than 2, and level 0 made compute-heavy tests up to 10× slower.
FASTER_COMPILE_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=2")


def flag_name(flag: str) -> str:
    return flag.split("=")[0]


def compile_faster_where_supported() -> None:
    """Add those of FASTER_COMPILE_FLAGS that XLA_FLAGS does not already set (XLA reads them when
    the backend starts; the xdist workers, the notebook kernels and the CLI subprocesses inherit
    them) if this jaxlib knows them: XLA aborts the process on an unknown flag, so a subprocess
    tries them first."""
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [flag for flag in FASTER_COMPILE_FLAGS if flag_name(flag) not in flags]
    if not missing:
        return
    with_flags = " ".join([flags, *missing]).strip()
    probe = [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"]
    env = {**os.environ, "XLA_FLAGS": with_flags}
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        os.environ["XLA_FLAGS"] = with_flags


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    compile_faster_where_supported()
    # ArviZ writes a once-a-day warning stamp on import through a fixed temporary file name
    # (daily_warning.tmp, then a rename), so two xdist workers importing it at once on a fresh
    # machine race: one renames the other's file away and its import fails with
    # FileNotFoundError while collecting test_numpyro.py. Importing it once here, in the
    # controller before the workers start, writes the stamp for the day.
    import arviz  # noqa: F401


def pytest_collection_modifyitems(items):
    # The notebooks are the longest tests (minutes each). With xdist's worksteal scheduling each
    # worker starts on a contiguous share of this order and idle workers take tests from the
    # others' remaining ones, so the longest tests go first instead of being left for the end.
    items.sort(key=lambda item: item.path.name != "test_tutorials.py")
