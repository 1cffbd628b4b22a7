"""Tests for the megablox grouped matmul rule.

Its values and gradients are checked against per-row loops with the other
implementations in grouped_test.py (the kernels interpreted on CPU) and
across meshes in tests/training/mesh_invariance_test.py. Here: what the
rule costs when compiled for TPU, which is the reason it exists.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax.models import megablox

ROWS, IN, OUT, GROUPS = 4096, 512, 1024, 16


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_weight_gradient_costs_one_product_on_tpu(tpu_devices):
  sharding = jax.sharding.SingleDeviceSharding(tpu_devices[0])
  args = (jax.ShapeDtypeStruct((ROWS, IN), jnp.bfloat16, sharding=sharding),
          jax.ShapeDtypeStruct((GROUPS, IN, OUT), jnp.bfloat16,
                               sharding=sharding),
          jax.ShapeDtypeStruct((GROUPS,), jnp.int32, sharding=sharding))

  def loss(x, weights, group_sizes):
    out = megablox.grouped_matmul(x, weights, group_sizes, jnp.float32)
    return jnp.sum(out * out)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()

  # The forward product, the row gradient and the weight gradient each cost
  # 2 * ROWS * IN * OUT, whatever the number of groups. The rest is
  # elementwise work of order ROWS * OUT.
  product = 2 * ROWS * IN * OUT
  np.testing.assert_allclose(_flops(compiled) / product, 3.0, rtol=0.01)
  assert "jit(tgmm)/pallas_call" in compiled.as_text()
