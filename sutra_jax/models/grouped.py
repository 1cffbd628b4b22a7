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

Two implementations compute the same product:

* `ragged_dot`: `jax.lax.ragged_dot`, which XLA lowers to a native grouped
  matmul on TPU and GPU. On CPU, jax 0.10.2 lowers it to G dense matmuls over
  masked copies of all N rows, so its cost grows with G.
* `tiled`: the sorted rows of each group are padded to a multiple of T rows
  and every tile of T rows is multiplied by its group's matrix in one batched
  matmul. It costs (N + G * (T - 1)) rows of work whatever the mix of groups,
  so it is the default on CPU.
"""

import dataclasses

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "ragged_dot", "tiled")
# Largest tile of the tiled implementation, in rows.
_MAX_TILE_ROWS = 128


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
    padded_positions: [N] int32 row of each sorted row in the tiled buffer;
      rows of out-of-range ids point past its end. Used by `tiled` only.
    tile_groups: [num_tiles] int32 group of each tile. Used by `tiled` only.
    tile_rows: T, rows per tile; 0 selects the `ragged_dot` implementation.
  """

  group_ids: jax.Array
  order: jax.Array
  inverse: jax.Array
  group_sizes: jax.Array
  padded_positions: jax.Array
  tile_groups: jax.Array
  tile_rows: int = dataclasses.field(metadata={"static": True})

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
    weights = weights.astype(x_sorted.dtype)
    if not self.tile_rows:
      return jax.lax.ragged_dot(x_sorted, weights, self.group_sizes,
                                preferred_element_type=preferred_element_type)
    return self._tiled_matmul(x_sorted, weights, preferred_element_type)

  def _tiled_matmul(self, x_sorted, weights, preferred_element_type):
    """Multiplies padded tiles of T rows by their group's matrix."""
    num_tiles = self.tile_groups.shape[0]
    capacity = num_tiles * self.tile_rows
    d_in, d_out = weights.shape[1:]
    buffer = jnp.zeros((capacity, d_in), x_sorted.dtype)
    buffer = buffer.at[self.padded_positions].set(x_sorted, mode="drop")
    tiles = buffer.reshape(num_tiles, self.tile_rows, d_in)
    out = jnp.einsum("tri,tio->tro", tiles,
                     jnp.take(weights, self.tile_groups, axis=0),
                     preferred_element_type=preferred_element_type)
    return jnp.take(out.reshape(capacity, d_out), self.padded_positions,
                    axis=0, mode="fill", fill_value=0)

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


def tile_rows_for(num_rows: int, num_groups: int) -> int:
  """Chooses T so that padding adds at most a quarter of the rows.

  Each non-empty group pads at most T - 1 rows, so G * (T - 1) <= N / 4
  bounds the extra work at 25 %. For example N = 1024 token copies over
  G = 8 experts gives T = 32, and N = 512 tokens over G = 28 language groups
  gives T = 4.
  """
  budget = 1 + num_rows // (4 * num_groups)
  tile = 1
  while tile * 2 <= min(budget, _MAX_TILE_ROWS):
    tile *= 2
  return tile


def _resolve(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown grouped matmul implementation "
                     f"{implementation!r}: use one of {IMPLEMENTATIONS}")
  if implementation == "auto":
    return "tiled" if jax.default_backend() == "cpu" else "ragged_dot"
  return implementation


def _tiling(sorted_ids, group_sizes, num_rows, num_groups, tile):
  """Returns (padded_positions [N], tile_groups [num_tiles])."""
  capacity = -(-(num_rows + num_groups * (tile - 1)) // tile) * tile
  padded_sizes = -(-group_sizes // tile) * tile
  padded_ends = jnp.cumsum(padded_sizes)
  padded_starts = padded_ends - padded_sizes
  starts = jnp.cumsum(group_sizes) - group_sizes
  in_range = sorted_ids < num_groups
  safe_ids = jnp.minimum(sorted_ids, num_groups - 1)
  rank = jnp.arange(num_rows, dtype=jnp.int32) - starts[safe_ids]
  padded_positions = jnp.where(in_range, padded_starts[safe_ids] + rank,
                               capacity).astype(jnp.int32)
  tile_starts = jnp.arange(capacity // tile, dtype=jnp.int32) * tile
  tile_groups = jnp.searchsorted(padded_ends, tile_starts, side="right")
  tile_groups = jnp.minimum(tile_groups, num_groups - 1).astype(jnp.int32)
  return padded_positions, tile_groups


def make_routing(group_ids: jax.Array, num_groups: int,
                 implementation: str = "auto") -> GroupRouting:
  """Sorts N rows by group id.

  Args:
    group_ids: [N] integer group of each row.
    num_groups: G, the static number of groups. Groups may be empty.
    implementation: `ragged_dot`, `tiled`, or `auto` (tiled on CPU,
      ragged_dot elsewhere); see the module docstring.

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
  num_rows = group_ids.shape[0]
  if _resolve(implementation) == "ragged_dot":
    empty = jnp.zeros((0,), jnp.int32)
    return GroupRouting(group_ids=group_ids, order=order, inverse=inverse,
                        group_sizes=group_sizes, padded_positions=empty,
                        tile_groups=empty, tile_rows=0)
  tile = tile_rows_for(num_rows, num_groups)
  padded_positions, tile_groups = _tiling(
      jnp.take(group_ids, order), group_sizes, num_rows, num_groups, tile)
  return GroupRouting(group_ids=group_ids, order=order, inverse=inverse,
                      group_sizes=group_sizes,
                      padded_positions=padded_positions,
                      tile_groups=tile_groups, tile_rows=tile)
