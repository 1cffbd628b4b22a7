"""Grouped matrix multiplication: each row is multiplied by its group's weights.

The concept core's mixture of experts (a group is an expert) and the language
blocks (a group is a language group) share this primitive. The routing of a
set of R rows is computed once and reused by every grouped matmul on them.
It places the rows in a *slot layout* where the rows of each group are
contiguous:

* `ragged_dot`: the slots are the rows sorted by group, and each weight
  [G, in, out] is applied with one `jax.lax.ragged_dot`, which XLA lowers to
  a native grouped matmul on TPU and GPU. On CPU, jax 0.10.2 lowers it to G
  dense matmuls over masked copies of all rows, so its cost grows with G.
* `megablox`: the same layout as `ragged_dot`, multiplied with the megablox
  Pallas kernels that JAX ships (`sutra_jax.models.megablox`). On TPU
  ragged_dot's weight gradient costs G times its FLOPs; megablox's does not.
  Off TPU the kernels run interpreted, slowly: for tests.
* `tiled`: the rows of each group fill whole tiles of T slots, the last tile
  of a group padded with empty slots, and all tiles are multiplied by their
  group's matrix in one batched matmul. It costs (R + G * (T - 1)) rows of
  work whatever the mix of groups, so it is the default on CPU.
* `capacity`: every group gets exactly C slots (one tile of T = C). Rows past
  the C-th of their group get no slot and are dropped. This is the layout of
  capacity-limited (GShard-style) expert dispatch; see `make_capacity_routing`.

Several matmuls can run back to back in the slot layout (the gate, up and
down projections of a SwiGLU MLP), so the rows are moved into and out of it
only once. Moving is a gather in both directions, never a scatter of rows.

Rows whose group id is outside [0, G), and dropped rows, produce zero output.

`jax.lax.ragged_dot` takes 2-D rows, and in jax 0.10.2 it cannot be vmapped,
so callers flatten [B, L, ...] activations to [R, ...] first.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from sutra_jax.models import megablox
from sutra_jax.models import tiled_vjp

IMPLEMENTATIONS = ("auto", "ragged_dot", "megablox", "tiled")
# Largest tile of the tiled implementation, in rows.
_MAX_TILE_ROWS = 128


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupRouting:
  """The slot layout of R rows, reused by every grouped matmul on them.

  Attributes:
    group_ids: [R] int32 group of each row. Ids outside [0, G) are replaced
      by G.
    row_slots: [R] int32 slot of each row; S (one past the last slot) for a
      row without a slot (an out-of-range id or a dropped row).
    slot_rows: [S] int32 row in each slot; R for an empty slot.
    group_sizes: [G] int32 rows per group, zeros included, before any drop.
    tile_groups: [S // T] int32 group of each tile; empty for `ragged_dot`.
    tile_rows: T, slots per tile; 0 selects `jax.lax.ragged_dot` over the
      sorted rows.
    tile_per_group: tile g holds group g (the capacity layout), so the
      weights need no per-tile gather.
    megablox: with `tile_rows` 0, multiply with the megablox kernels
      instead of `jax.lax.ragged_dot`.
  """

  group_ids: jax.Array
  row_slots: jax.Array
  slot_rows: jax.Array
  group_sizes: jax.Array
  tile_groups: jax.Array
  tile_rows: int = dataclasses.field(metadata={"static": True})
  tile_per_group: bool = dataclasses.field(default=False,
                                           metadata={"static": True})
  megablox: bool = dataclasses.field(default=False, metadata={"static": True})

  @property
  def num_groups(self) -> int:
    return self.group_sizes.shape[0]

  @property
  def num_slots(self) -> int:
    return self.slot_rows.shape[0]

  def to_slots(self, x: jax.Array, rows_per_item: int = 1) -> jax.Array:
    """Gathers rows into the slot layout: [R / rows_per_item, ...] -> [S, ...].

    Args:
      x: the rows, or the items that the rows copy. With `rows_per_item` k,
        rows k * i ... k * i + k - 1 are copies of item i (the k routed
        slots of a token), so the copies are never materialised.
      rows_per_item: k.

    Returns:
      [S, ...], zero in empty slots.
    """
    items = self.slot_rows // rows_per_item
    return jnp.take(x, items, axis=0, mode="fill", fill_value=0)

  def from_slots(self, y: jax.Array) -> jax.Array:
    """Gathers each row's slot back: [S, ...] -> [R, ...], zero if no slot."""
    return jnp.take(y, self.row_slots, axis=0, mode="fill", fill_value=0)

  def matmul(self, x_slots: jax.Array, weights: jax.Array,
             preferred_element_type=None) -> jax.Array:
    """Multiplies each slot by its group's matrix.

    Args:
      x_slots: [S, in] rows in the slot layout (`to_slots`).
      weights: [G, in, out], cast to the dtype of `x_slots`.
      preferred_element_type: accumulation and output dtype. None keeps the
        input dtype.

    Returns:
      [S, out] in the slot layout.
    """
    weights = weights.astype(x_slots.dtype)
    if not self.tile_rows and self.megablox:
      return megablox.grouped_matmul(x_slots, weights, self.group_sizes,
                                     preferred_element_type)
    if not self.tile_rows:
      return jax.lax.ragged_dot(x_slots, weights, self.group_sizes,
                                preferred_element_type=preferred_element_type)
    num_tiles = self.tile_groups.shape[0]
    tiles = x_slots.reshape(num_tiles, self.tile_rows, x_slots.shape[-1])
    if self.tile_per_group:
      out = jnp.einsum("tri,tio->tro", tiles, weights,
                       preferred_element_type=preferred_element_type)
    else:
      out = tiled_vjp.tile_matmul(tiles, weights, self.tile_groups,
                                  preferred_element_type)
    return out.reshape(self.num_slots, out.shape[-1])

  def swiglu(self, x_slots: jax.Array, gate: jax.Array, up: jax.Array,
             down: jax.Array) -> jax.Array:
    """Applies each slot's group MLP: silu(x @ gate) * (x @ up) @ down.

    Args:
      x_slots: [S, in] rows in the slot layout.
      gate: [G, in, hidden], cast to the dtype of `x_slots`, as are the
        others.
      up: [G, in, hidden].
      down: [G, hidden, out].

    Returns:
      [S, out] in the slot layout; zero in empty slots.
    """
    gate, up, down = (w.astype(x_slots.dtype) for w in (gate, up, down))
    if not self.tile_rows:
      hidden = (jax.nn.silu(self.matmul(x_slots, gate)) *
                self.matmul(x_slots, up))
      return self.matmul(hidden, down)
    num_tiles = self.tile_groups.shape[0]
    tiles = x_slots.reshape(num_tiles, self.tile_rows, x_slots.shape[-1])
    out = tiled_vjp.tile_swiglu(tiles, gate, up, down, self.tile_groups,
                                self.tile_per_group)
    return out.reshape(self.num_slots, out.shape[-1])

  def apply(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """Computes `x[r] @ weights[group_ids[r]]` for every row r.

    Args:
      x: [R, in] rows in their original order.
      weights: [G, in, out].

    Returns:
      [R, out] in the original row order.
    """
    return self.from_slots(self.matmul(self.to_slots(x), weights))

  def gather(self, table: jax.Array) -> jax.Array:
    """Picks each row's entry of a per-group table [G, ...], giving [R, ...].

    Rows with an out-of-range id read the last group, which is harmless
    because their matmul outputs are zero.
    """
    return jnp.take(table, self.group_ids, axis=0, mode="clip")


def tile_rows_for(num_rows: int, num_groups: int) -> int:
  """Chooses T so that padding adds at most a quarter of the rows.

  Each non-empty group pads at most T - 1 rows, so G * (T - 1) <= R / 4
  bounds the extra work at 25 %. For example R = 4096 token copies over
  G = 8 experts gives T = 128, and R = 512 tokens over G = 28 language
  groups gives T = 4.
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
    return {"cpu": "tiled", "tpu": "megablox"}.get(jax.default_backend(),
                                                   "ragged_dot")
  return implementation


def _clean_ids(group_ids: jax.Array, num_groups: int) -> jax.Array:
  if group_ids.ndim != 1:
    raise ValueError(f"group_ids must be 1-D [R], got shape {group_ids.shape}: "
                     "flatten the batch first")
  group_ids = group_ids.astype(jnp.int32)
  in_range = (group_ids >= 0) & (group_ids < num_groups)
  return jnp.where(in_range, group_ids, num_groups)


def _ranks(group_ids: jax.Array, num_groups: int,
           priority: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Ranks each row within its group, in row order or in `priority` order.

  Args:
    group_ids: [R] ids in [0, G], where G means no group.
    num_groups: G.
    priority: optional [R] permutation: rows are ranked in the order
      `priority[0], priority[1], ...`.

  Returns:
    (rank [R] int32, 0 for the first row of each group, group_sizes [G]).
  """
  ids = group_ids if priority is None else jnp.take(group_ids, priority)
  one_hot = jax.nn.one_hot(ids, num_groups, dtype=jnp.int32)
  # Exclusive running count per group: O(R * G), cheap next to the matmuls
  # and simpler for XLA than a sort.
  before = jnp.cumsum(one_hot, axis=0) - one_hot
  rank = jnp.take_along_axis(
      before, jnp.minimum(ids, num_groups - 1)[:, None], axis=1)[:, 0]
  if priority is not None:
    rank = jnp.zeros_like(rank).at[priority].set(rank)
  return rank.astype(jnp.int32), jnp.sum(one_hot, axis=0).astype(jnp.int32)


def _slot_rows(row_slots: jax.Array, num_slots: int) -> jax.Array:
  """Inverts `row_slots`: the row in each slot, R for empty slots."""
  num_rows = row_slots.shape[0]
  rows = jnp.arange(num_rows, dtype=jnp.int32)
  return jnp.full((num_slots,), num_rows, jnp.int32).at[row_slots].set(
      rows, mode="drop")


def _ragged_routing(group_ids: jax.Array, num_groups: int,
                    use_megablox: bool = False) -> GroupRouting:
  order = jnp.argsort(group_ids, stable=True).astype(jnp.int32)
  rows = jnp.arange(group_ids.shape[0], dtype=jnp.int32)
  inverse = jnp.zeros_like(order).at[order].set(rows)
  group_sizes = jnp.bincount(group_ids, length=num_groups).astype(jnp.int32)
  # Out-of-range rows sort last, past the sum of group_sizes, where
  # ragged_dot writes zeros.
  return GroupRouting(group_ids=group_ids, row_slots=inverse,
                      slot_rows=order, group_sizes=group_sizes,
                      tile_groups=jnp.zeros((0,), jnp.int32), tile_rows=0,
                      megablox=use_megablox)


def _tiled_routing(group_ids: jax.Array, num_groups: int) -> GroupRouting:
  num_rows = group_ids.shape[0]
  tile = tile_rows_for(num_rows, num_groups)
  num_slots = math.ceil((num_rows + num_groups * (tile - 1)) / tile) * tile
  rank, group_sizes = _ranks(group_ids, num_groups)
  padded_sizes = -(-group_sizes // tile) * tile
  padded_ends = jnp.cumsum(padded_sizes)
  padded_starts = padded_ends - padded_sizes
  safe_ids = jnp.minimum(group_ids, num_groups - 1)
  row_slots = jnp.where(group_ids < num_groups,
                        padded_starts[safe_ids] + rank,
                        num_slots).astype(jnp.int32)
  tile_starts = jnp.arange(num_slots // tile, dtype=jnp.int32) * tile
  tile_groups = jnp.searchsorted(padded_ends, tile_starts, side="right")
  tile_groups = jnp.minimum(tile_groups, num_groups - 1).astype(jnp.int32)
  return GroupRouting(group_ids=group_ids, row_slots=row_slots,
                      slot_rows=_slot_rows(row_slots, num_slots),
                      group_sizes=group_sizes, tile_groups=tile_groups,
                      tile_rows=tile)


def make_routing(group_ids: jax.Array, num_groups: int,
                 implementation: str = "auto") -> GroupRouting:
  """Lays out R rows by group, with a slot for every row.

  Args:
    group_ids: [R] integer group of each row.
    num_groups: G, the static number of groups. Groups may be empty.
    implementation: `ragged_dot`, `megablox`, `tiled`, or `auto` (tiled
      on CPU, megablox on TPU, ragged_dot elsewhere); see the module
      docstring.

  Returns:
    The routing to pass to every grouped matmul over these rows.
  """
  # NOTE: under jit with rows sharded over devices, this layout is computed
  # over the global rows, so XLA gathers them onto every device. The
  # expert-parallel MoE dispatch builds it per device inside shard_map.
  group_ids = _clean_ids(group_ids, num_groups)
  implementation = _resolve(implementation)
  if implementation in ("ragged_dot", "megablox"):
    return _ragged_routing(group_ids, num_groups,
                           implementation == "megablox")
  return _tiled_routing(group_ids, num_groups)


def make_capacity_routing(group_ids: jax.Array, num_groups: int,
                          capacity: int,
                          priority: jax.Array | None = None
                          ) -> tuple[GroupRouting, jax.Array]:
  """Lays out R rows in C slots per group, dropping the rows that do not fit.

  Rows take the slots of their group in order: row order by default, or the
  order of `priority`. The first C rows of a group are kept and the rest
  dropped, so the choice is deterministic.

  Args:
    group_ids: [R] integer group of each row; ids outside [0, G) take no
      slot and are not counted as dropped.
    num_groups: G.
    capacity: C >= 1 slots per group.
    priority: optional [R] permutation of the rows giving the order in which
      they take slots.

  Returns:
    (routing, kept): the routing with S = G * C slots, and [R] bool, True
    for rows that got a slot.
  """
  if capacity < 1:
    raise ValueError(f"capacity must be at least 1, got {capacity}")
  group_ids = _clean_ids(group_ids, num_groups)
  rank, group_sizes = _ranks(group_ids, num_groups, priority)
  num_slots = num_groups * capacity
  kept = (group_ids < num_groups) & (rank < capacity)
  row_slots = jnp.where(kept, group_ids * capacity + rank,
                        num_slots).astype(jnp.int32)
  routing = GroupRouting(
      group_ids=group_ids, row_slots=row_slots,
      slot_rows=_slot_rows(row_slots, num_slots), group_sizes=group_sizes,
      tile_groups=jnp.arange(num_groups, dtype=jnp.int32),
      tile_rows=capacity, tile_per_group=True)
  return routing, kept
