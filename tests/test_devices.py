"""Data-parallel training: two CPU devices give the one-device result up to float rounding.
The SGM is the lighter model to compile; it trains through the same `fit_network` as the MSGM.

The two-device run is a fresh Python process, because XLA reads the number of host devices once,
at start; the one-device run is this process.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

from msgm_pp.devices import batch_sharding, chain_method

RUN = """
import json, sys
import equinox as eqx, jax, numpy as np
import msgm_pp as mp
from msgm_pp.datasets import CorrelatedCauchy
from msgm_pp.devices import batch_sharding, chain_method

devices = int(sys.argv[1])
assert jax.device_count() == devices
data = CorrelatedCauchy.paper_task(d=4).sample(jax.random.key(0), (512,))
sharding = batch_sharding(64)
assert (sharding is None) == (devices == 1)
if devices > 1:
    assert sharding.num_devices == devices
    try:
        mp.SGM.fit(data, key=jax.random.key(0), batch_size=63, progress=False)
    except ValueError as error:
        assert "multiple of the number of JAX devices" in str(error)
    else:
        raise AssertionError("batch_size=63 on two devices was accepted")
model = mp.SGM.fit(
    data, key=jax.random.key(1), max_steps=40, eval_every=20, batch_size=64, progress=False
)
params = jax.tree_util.tree_leaves(eqx.filter(model.score, eqx.is_array))
print(json.dumps({
    "train_loss": np.asarray(model.history.train_loss).tolist(),
    "validation_loss": np.asarray(model.history.validation_loss).tolist(),
    "params": np.concatenate([np.ravel(p) for p in params]).tolist(),
    "chain_method": chain_method(2),
}))
"""


def fit_on(devices: int) -> dict:
    if devices == jax.device_count():  # this process already has the devices: no new process
        printed = io.StringIO()
        with (
            contextlib.redirect_stdout(printed),
            mock.patch.object(sys, "argv", ["", str(devices)]),
        ):
            exec(RUN, {})
        return json.loads(printed.getvalue().splitlines()[-1])
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(devices)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_two_devices_train_like_one():
    """Same key, same data: the per-step and validation losses and the trained parameters agree
    to float32 rounding (the gradient is summed in another order across the two devices)."""
    one, two = fit_on(1), fit_on(2)
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two["validation_loss"], one["validation_loss"], rtol=1e-4)
    np.testing.assert_allclose(two["params"], one["params"], atol=1e-5)
    assert (one["chain_method"], two["chain_method"]) == ("vectorized", "parallel")


def test_one_device_needs_no_sharding_and_any_batch_size():
    assert batch_sharding(63, devices=[object()]) is None
    assert chain_method(1) == "vectorized"


def test_batch_size_must_split_evenly():
    with pytest.raises(ValueError, match=r"`batch_size` \(63\).*\(2\)"):
        batch_sharding(63, devices=[object(), object()])
