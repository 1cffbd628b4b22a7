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
import jax.numpy as jnp

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
  if mesh.empty or is_manual(mesh):
    # Inside shard_map each device already holds its own block.
    return x
  # Imported here: partitioning builds models, so it imports this package.
  from sutra_jax import partitioning  # pylint: disable=g-import-not-at-top
  spec = partitioning.logical_to_mesh_spec(names, x.shape, mesh,
                                           partitioning.axis_rules())
  return jax.lax.with_sharding_constraint(x, spec)


TENSOR_AXIS = "tensor"


def is_manual(mesh) -> bool:
  """Returns whether `mesh` is the context inside `jax.shard_map`."""
  return any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types)


def token_axes(mesh) -> tuple[str, ...]:
  """Mesh axes that split the tokens: every axis but `tensor`, of size > 1.

  Returns () without a mesh in context or inside `jax.shard_map`.
  """
  if mesh.empty or is_manual(mesh):
    return ()
  return tuple(a for a in mesh.axis_names
               if a != TENSOR_AXIS and mesh.shape[a] > 1)


def tensor_axis_for(mesh, size: int) -> str | None:
  """Returns 'tensor' if that axis exists, is larger than 1 and divides `size`."""
  shards = mesh.shape.get(TENSOR_AXIS, 1)
  return TENSOR_AXIS if shards > 1 and size % shards == 0 else None


def pad_rows(multiple: int, arrays_and_fills):
  """Pads the leading axis of each array to a multiple of `multiple`.

  Args:
    multiple: the row count must become a multiple of it.
    arrays_and_fills: (array, fill value) pairs with equal leading sizes.

  Returns:
    The padded arrays, in order.
  """
  rows = arrays_and_fills[0][0].shape[0]
  extra = -rows % multiple
  if not extra:
    return [a for a, _ in arrays_and_fills]
  return [jnp.concatenate([a, jnp.full((extra,) + a.shape[1:], fill, a.dtype)])
          for a, fill in arrays_and_fills]
