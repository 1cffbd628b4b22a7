"""Fixtures for the model tests."""

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
