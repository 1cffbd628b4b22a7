"""Sharding constraints on activations, from logical axis names.

Parameters carry logical axis names, and `sutra_jax.partitioning` shards
them. Activations need the same treatment: without a constraint, XLA may
follow the FSDP-sharded weights and keep the whole global batch on every
device, which does not fit at scale. `constrain` pins an activation's
layout by the same rules, inside the mesh that `jax.set_mesh` put in
context; outside a mesh it does nothing.
"""

from typing import Sequence

import jax

# Residual stream [B, L, D] and flattened tokens [N, D].
ACTIVATION = ("batch", "length", "act_embed")
TOKENS = ("batch", "act_embed")
# Logits [B, L, V].
LOGITS = ("batch", "length", "vocab")


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains `x` to the layout of its logical axis `names`.

  Args:
    x: an activation.
    names: one logical axis name per dimension, mapped to mesh axes by the
      gin-bound `partitioning.axis_rules`. 'act_embed' has no rule, so the
      model width of activations stays whole.

  Returns:
    `x`, with a sharding constraint when a mesh is in context.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  # Imported here: partitioning builds models, so it imports this package.
  from sutra_jax import partitioning  # pylint: disable=g-import-not-at-top
  spec = partitioning.logical_to_mesh_spec(names, x.shape, mesh,
                                           partitioning.axis_rules())
  return jax.lax.with_sharding_constraint(x, spec)
