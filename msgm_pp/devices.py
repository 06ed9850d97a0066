"""Using every JAX device: data-parallel training and parallel NumPyro chains.

- :func:`batch_sharding`: the sharding of a training minibatch along its rows over all devices.
  `fit_network` constrains each minibatch to it inside the compiled step, so XLA splits the
  per-example work across devices and all-reduces the gradient; parameters stay replicated. With
  one device (the ordinary case) nothing changes. Random draws do not depend on the sharding
  (JAX's partitionable threefry), so results match a single device up to float rounding.
- :func:`chain_method`: "parallel" when there is a device per NUTS chain, else "vectorized".

On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=N` (set before JAX starts) splits the
host into N devices, which is how the tests check multi-device training.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def batch_sharding(batch_size: int, devices=None) -> NamedSharding | None:
    """Rows of a minibatch split evenly over `devices` (all JAX devices by default); None for one
    device. Raises ValueError if `batch_size` is not a multiple of the number of devices."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(
            f"`batch_size` ({batch_size}) must be a multiple of the number of JAX devices "
            f"({len(devices)}) to split each minibatch evenly across them."
        )
    return NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))


def chain_method(num_chains: int) -> str:
    """NumPyro's `chain_method` for `num_chains` chains: "parallel" (one device per chain) when
    there are at least that many local devices, "vectorized" otherwise."""
    return "parallel" if jax.local_device_count() >= num_chains > 1 else "vectorized"
