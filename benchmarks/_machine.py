"""The machine a benchmark ran on, recorded in every results JSON."""

import os
import platform

import jax


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_devices": jax.local_device_count(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }
