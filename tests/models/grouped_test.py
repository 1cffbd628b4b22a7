"""Tests for the grouped matmul that both the MoE and the language blocks use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax.models import grouped


def _per_row_reference(x, weights, group_ids):
  """Multiplies each row by its group's matrix, one row at a time."""
  out = np.zeros((x.shape[0], weights.shape[-1]), np.float64)
  for n, g in enumerate(group_ids):
    if 0 <= g < weights.shape[0]:
      out[n] = x[n].astype(np.float64) @ weights[g].astype(np.float64)
  return out


def _random_problem(seed, rows, groups, d_in=8, d_out=5):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((rows, d_in)).astype(np.float32)
  weights = rng.standard_normal((groups, d_in, d_out)).astype(np.float32)
  return x, weights


IMPLEMENTATIONS = ("ragged_dot", "megablox", "tiled")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_apply_matches_per_row_loop_with_empty_groups(implementation):
  x, weights = _random_problem(0, rows=11, groups=5)
  # Groups 1 and 4 get no rows, and the ids are deliberately unsorted.
  group_ids = np.array([3, 0, 2, 3, 0, 0, 2, 3, 3, 2, 0])
  routing = grouped.make_routing(jnp.asarray(group_ids), num_groups=5,
                                 implementation=implementation)

  out = jax.jit(routing.apply)(jnp.asarray(x), jnp.asarray(weights))

  np.testing.assert_allclose(out, _per_row_reference(x, weights, group_ids),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_slot_layout_is_grouped_stable_and_invertible(implementation):
  group_ids = np.array([2, 0, 2, 1, 0, 2])
  routing = grouped.make_routing(jnp.asarray(group_ids), num_groups=4,
                                 implementation=implementation)
  rows = jnp.arange(6.0)[:, None] + 1

  slots = np.asarray(routing.to_slots(rows))[:, 0]

  # Filled slots list the rows of group 0, then 1, then 2, each in row
  # order; tiled layouts add empty (zero) slots between groups.
  np.testing.assert_array_equal(slots[slots > 0], [2, 5, 4, 1, 3, 6])
  np.testing.assert_array_equal(routing.group_sizes, [2, 1, 3, 0])
  np.testing.assert_array_equal(routing.from_slots(routing.to_slots(rows)),
                                rows)


def test_to_slots_reads_items_of_copies():
  # Rows are k = 2 copies of 3 items: rows 2n and 2n + 1 copy item n.
  routing = grouped.make_routing(jnp.array([1, 0, 0, 1, 1, 0]), num_groups=2,
                                 implementation="ragged_dot")
  items = jnp.array([[10.0], [20.0], [30.0]])

  slots = routing.to_slots(items, rows_per_item=2)[:, 0]

  np.testing.assert_array_equal(slots, [10, 20, 30, 10, 20, 30])


def test_capacity_routing_keeps_first_rows_in_priority_order():
  group_ids = jnp.array([0, 0, 1, 0, 5, 1, 0])
  # Default order: rows 0, 1 of group 0 fit in C = 2, rows 3 and 6 do not.
  routing, kept = grouped.make_capacity_routing(group_ids, 2, capacity=2)
  np.testing.assert_array_equal(kept, [1, 1, 1, 0, 0, 1, 0])
  np.testing.assert_array_equal(routing.slot_rows, [0, 1, 2, 5])
  # Reversed priority: the last rows of each group win.
  _, kept = grouped.make_capacity_routing(group_ids, 2, capacity=2,
                                          priority=jnp.arange(7)[::-1])
  np.testing.assert_array_equal(kept, [0, 0, 1, 1, 0, 1, 1])


def test_capacity_routing_matmul_matches_loop_on_kept_rows():
  x, weights = _random_problem(4, rows=20, groups=3)
  group_ids = np.random.default_rng(4).integers(0, 3, 20)
  routing, kept = grouped.make_capacity_routing(jnp.asarray(group_ids), 3,
                                                capacity=5)

  out = routing.apply(jnp.asarray(x), jnp.asarray(weights))

  expected = _per_row_reference(x, weights, group_ids) * np.asarray(
      kept)[:, None]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  for g in range(3):
    rows = np.flatnonzero(group_ids == g)
    np.testing.assert_array_equal(np.asarray(kept)[rows],
                                  np.arange(rows.size) < 5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_out_of_range_ids_give_zero_rows(implementation):
  x, weights = _random_problem(1, rows=6, groups=3)
  group_ids = np.array([0, -1, 2, 3, 1, 7])
  routing = grouped.make_routing(jnp.asarray(group_ids), num_groups=3,
                                 implementation=implementation)

  out = routing.apply(jnp.asarray(x), jnp.asarray(weights))

  np.testing.assert_allclose(out, _per_row_reference(x, weights, group_ids),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(out[3], 0.0)
  np.testing.assert_array_equal(routing.group_sizes, [1, 1, 1])


def test_gather_picks_each_rows_group_entry():
  table = jnp.arange(12.0).reshape(3, 4)
  routing = grouped.make_routing(jnp.array([2, 0, 1, 2]), num_groups=3)

  np.testing.assert_array_equal(routing.gather(table),
                                np.asarray(table)[[2, 0, 1, 2]])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rows,groups", [(7, 4), (1100, 5)])
def test_gradients_match_row_loop(implementation, rows, groups):
  # 1100 rows span several 512-row megablox tiles, with groups that start
  # and end inside a tile; id -1 and `groups` are out of range.
  rng = np.random.default_rng(2)
  x, weights = _random_problem(2, rows=rows, groups=groups, d_in=3, d_out=2)
  group_ids = rng.integers(-1, groups + 1, rows)
  group_ids[group_ids == 2] = 1  # Group 2 is empty.
  routing = grouped.make_routing(jnp.asarray(group_ids), num_groups=groups,
                                 implementation=implementation)
  upstream = rng.standard_normal((rows, 2)).astype(np.float32)

  grad_x, grad_w = jax.jit(jax.grad(
      lambda x, w: jnp.sum(routing.apply(x, w) * upstream),
      argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(weights))

  expected_x = np.zeros((rows, 3))
  expected_w = np.zeros((groups, 3, 2))
  for n, g in enumerate(group_ids):
    if 0 <= g < groups:
      expected_w[g] += np.outer(x[n], upstream[n])
      expected_x[n] = weights[g] @ upstream[n]
  np.testing.assert_allclose(grad_x, expected_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad_w, expected_w, rtol=1e-5, atol=1e-5)


def test_make_routing_rejects_2d_ids():
  with pytest.raises(ValueError, match="flatten"):
    grouped.make_routing(jnp.zeros((2, 3), jnp.int32), num_groups=2)


@pytest.mark.parametrize("rows,groups", [(64, 8), (512, 28), (37, 3), (5, 9)])
def test_tiled_matches_loop_and_ragged_dot(rows, groups):
  x, weights = _random_problem(rows + groups, rows=rows, groups=groups)
  rng = np.random.default_rng(rows)
  # Skewed ids: one large group, a few small ones, some groups empty.
  group_ids = np.where(rng.random(rows) < 0.6, 0,
                       rng.integers(0, groups, rows))
  ids = jnp.asarray(group_ids)
  tiled = grouped.make_routing(ids, groups, implementation="tiled")
  native = grouped.make_routing(ids, groups, implementation="ragged_dot")

  out = jax.jit(tiled.apply)(jnp.asarray(x), jnp.asarray(weights))

  reference = _per_row_reference(x, weights, group_ids)
  np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, native.apply(x, weights), rtol=1e-5,
                             atol=1e-5)


def test_tiled_gradients_match_ragged_dot():
  x, weights = _random_problem(7, rows=40, groups=6)
  ids = jnp.asarray(np.random.default_rng(7).integers(0, 6, 40))

  def loss(implementation, x, w):
    routing = grouped.make_routing(ids, 6, implementation=implementation)
    return jnp.sum(jnp.sin(routing.apply(x, w)))

  tiled = jax.grad(lambda x, w: loss("tiled", x, w), argnums=(0, 1))(
      x, weights)
  native = jax.grad(lambda x, w: loss("ragged_dot", x, w), argnums=(0, 1))(
      x, weights)
  for got, expected in zip(tiled, native):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_tile_rows_bounds_padding():
  assert grouped.tile_rows_for(1024, 8) == 32
  assert grouped.tile_rows_for(512, 28) == 4
  assert grouped.tile_rows_for(10, 28) == 1
  for rows, groups in [(1024, 8), (512, 28), (4096, 3)]:
    tile = grouped.tile_rows_for(rows, groups)
    assert groups * (tile - 1) <= rows / 4
