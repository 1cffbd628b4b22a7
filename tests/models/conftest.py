"""Fixtures for the model tests."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _random_module(build, seed: int):
  """Builds `build()` abstractly and fills its parameters from NumPy.

  Compiling the JAX initialisers of a whole model takes several seconds on
  a CPU, and these tests only need distinct, well-scaled values. Norm scales
  get 1 + N(0, 0.1^2) so that per-group norms differ. Matrices get
  N(0, 1 / fan_in) with fan_in the second-to-last axis (a rough scale that
  keeps activations of order 1).
  """
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)

  def fill(var):
    value = var.get_value()
    names = var.get_metadata().get("out_sharding") or ()
    if names and names[-1] == "norm":
      array = 1 + 0.1 * rng.standard_normal(value.shape)
    else:
      fan_in = value.shape[-2] if value.ndim >= 2 else 1
      array = rng.standard_normal(value.shape) / np.sqrt(fan_in)
    return var.replace(jnp.asarray(array, value.dtype))

  state = jax.tree.map(fill, state,
                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="session")
def random_module():
  """Returns `f(build, seed)`: the module `build()` with random parameters."""
  return _random_module


@pytest.fixture(scope="session")
def tpu_devices():
  """The 4 abstract devices of a v5e:2x2 slice, to compile for TPU on CPU.

  Skips where `libtpu` (the [tpu] extra) is not installed.
  """
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pytest.skip("libtpu is not installed: install the [tpu] extra "
                "(pip install -e '.[tpu]') to compile for TPU topologies")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Several test processes may load libtpu at once; none of them runs on a
  # TPU, so the single-process lock is not needed.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topology = topologies.get_topology_desc(platform="tpu",
                                          topology_name="v5e:2x2")
  return topology.devices
