"""Grouped matrix multiplication: each row is multiplied by its group's weights.

The concept core's mixture of experts (a group is an expert) and the language
blocks (a group is a language group) share this primitive. The routing of a
set of rows is computed once: a stable sort by group id, its inverse and the
group sizes. Each weight [G, in, out] is then applied with one
`jax.lax.ragged_dot` over the sorted rows, which multiplies each contiguous
run of rows by its own group's matrix. The cost is one dense matmul over the
N rows, whatever the mix of groups, and no row is multiplied by the weights of
another group.

`jax.lax.ragged_dot` takes 2-D rows, and in jax 0.10.2 it cannot be vmapped,
so callers flatten [B, L, ...] activations to [N, ...] first.
"""

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupRouting:
  """The sort of N rows by group id, reused by every grouped matmul on them.

  Attributes:
    group_ids: [N] int32 group of each row. Ids outside [0, G) are replaced
      by G, which sorts them last and gives them zero output.
    order: [N] int32 row index at each sorted position (a stable sort).
    inverse: [N] int32 sorted position of each row.
    group_sizes: [G] int32 rows per group, zeros included.
  """

  group_ids: jax.Array
  order: jax.Array
  inverse: jax.Array
  group_sizes: jax.Array

  @property
  def num_groups(self) -> int:
    return self.group_sizes.shape[0]

  def sort(self, x: jax.Array) -> jax.Array:
    """Gathers rows [N, ...] into group order."""
    return jnp.take(x, self.order, axis=0)

  def unsort(self, y: jax.Array) -> jax.Array:
    """Scatters rows [N, ...] from group order back to their positions."""
    return jnp.take(y, self.inverse, axis=0)

  def matmul_sorted(self, x_sorted: jax.Array, weights: jax.Array,
                    preferred_element_type=None) -> jax.Array:
    """Multiplies rows already in group order by their group's matrix.

    Args:
      x_sorted: [N, in] rows in the order of `sort`.
      weights: [G, in, out], cast to the dtype of `x_sorted`.
      preferred_element_type: accumulation and output dtype. None keeps the
        input dtype.

    Returns:
      [N, out] in group order. Rows past the sum of `group_sizes` (ids
      outside [0, G)) are zero.
    """
    return jax.lax.ragged_dot(x_sorted, weights.astype(x_sorted.dtype),
                              self.group_sizes,
                              preferred_element_type=preferred_element_type)

  def apply(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """Computes `x[n] @ weights[group_ids[n]]` for every row n.

    Args:
      x: [N, in] rows in their original order.
      weights: [G, in, out].

    Returns:
      [N, out] in the original row order.
    """
    return self.unsort(self.matmul_sorted(self.sort(x), weights))

  def gather(self, table: jax.Array) -> jax.Array:
    """Picks each row's entry of a per-group table [G, ...], giving [N, ...].

    Rows with an out-of-range id read the last group, which is harmless
    because their matmul outputs are zero.
    """
    return jnp.take(table, self.group_ids, axis=0, mode="clip")


def make_routing(group_ids: jax.Array, num_groups: int) -> GroupRouting:
  """Sorts N rows by group id.

  Args:
    group_ids: [N] integer group of each row.
    num_groups: G, the static number of groups. Groups may be empty.

  Returns:
    The routing to pass to every grouped matmul over these rows.
  """
  if group_ids.ndim != 1:
    raise ValueError(f"group_ids must be 1-D [N], got shape {group_ids.shape}: "
                     "flatten the batch first")
  # NOTE: under jit with rows sharded over devices, this sort runs over the
  # global rows, so XLA gathers them onto every device. Per-device routing
  # inside `jax.shard_map` is not written yet.
  group_ids = group_ids.astype(jnp.int32)
  in_range = (group_ids >= 0) & (group_ids < num_groups)
  group_ids = jnp.where(in_range, group_ids, num_groups)
  order = jnp.argsort(group_ids, stable=True).astype(jnp.int32)
  rows = jnp.arange(group_ids.shape[0], dtype=jnp.int32)
  inverse = jnp.zeros_like(order).at[order].set(rows)
  group_sizes = jnp.bincount(group_ids, length=num_groups).astype(jnp.int32)
  return GroupRouting(group_ids=group_ids, order=order, inverse=inverse,
                      group_sizes=group_sizes)
