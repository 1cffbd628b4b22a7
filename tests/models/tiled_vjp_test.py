"""Tests for the tiled grouped matmul and SwiGLU gradient rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax.models import grouped


def _silu(x):
  return x / (1 + np.exp(-x))


def _swiglu_reference(x, gate, up, down, group_ids):
  """Computes the SwiGLU and its gradients one row at a time, in float64.

  Returns:
    (out [R, out], dx [R, in], d_gate, d_up, d_down), the gradients of the
    loss sum(out * c) with c = `_cotangent(R, out)`.
  """
  x, gate, up, down = (a.astype(np.float64) for a in (x, gate, up, down))
  rows, out_dim = x.shape[0], down.shape[-1]
  c = _cotangent(rows, out_dim)
  out = np.zeros((rows, out_dim))
  dx = np.zeros_like(x)
  grads = [np.zeros_like(w) for w in (gate, up, down)]
  for r, g in enumerate(group_ids):
    if not 0 <= g < gate.shape[0]:
      continue
    a, b = x[r] @ gate[g], x[r] @ up[g]
    sig = 1 / (1 + np.exp(-a))
    hidden = _silu(a) * b
    out[r] = hidden @ down[g]
    d_hidden = down[g] @ c[r]
    d_a = d_hidden * b * sig * (1 + a * (1 - sig))
    d_b = d_hidden * _silu(a)
    grads[2][g] += np.outer(hidden, c[r])
    grads[0][g] += np.outer(x[r], d_a)
    grads[1][g] += np.outer(x[r], d_b)
    dx[r] = gate[g] @ d_a + up[g] @ d_b
  return out, dx, *grads


def _cotangent(rows, out_dim):
  return np.cos(np.arange(rows * out_dim).reshape(rows, out_dim))


def _problem(seed, rows, groups, d_in=6, hidden=7, d_out=5):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((rows, d_in)).astype(np.float32)
  gate = rng.standard_normal((groups, d_in, hidden)).astype(np.float32)
  up = rng.standard_normal((groups, d_in, hidden)).astype(np.float32)
  down = rng.standard_normal((groups, hidden, d_out)).astype(np.float32)
  return x, gate, up, down


def _routing(kind, group_ids, groups):
  if kind == "capacity":
    # Capacity past every group's size: nothing is dropped.
    routing, _ = grouped.make_capacity_routing(jnp.asarray(group_ids), groups,
                                               capacity=len(group_ids))
    return routing
  return grouped.make_routing(jnp.asarray(group_ids), groups, kind)


@pytest.mark.parametrize("kind", ["tiled", "capacity", "ragged_dot"])
def test_swiglu_value_and_gradients_match_row_loop(kind):
  # 40 rows over 5 groups, group 3 empty, and one padding row (id 9).
  group_ids = np.array([0, 2, 4, 1, 9] + [0, 1, 2, 4] * 8 + [2, 2, 0])
  x, gate, up, down = _problem(0, len(group_ids), groups=5)
  routing = _routing(kind, group_ids, 5)
  c = jnp.asarray(_cotangent(*x.shape[:1], down.shape[-1]), jnp.float32)

  def loss(x, gate, up, down):
    out = routing.from_slots(routing.swiglu(routing.to_slots(x), gate, up,
                                            down))
    return jnp.sum(out * c), out

  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
      x, gate, up, down)

  expected = _swiglu_reference(x, gate, up, down, group_ids)
  np.testing.assert_allclose(out, expected[0], rtol=1e-5, atol=1e-5)
  for name, got, want in zip(("x", "gate", "up", "down"), grads, expected[1:]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


def test_tiled_matmul_gradients_match_row_loop():
  group_ids = np.array([1, 1, 0, 3, 3, 3, 0, 1, 7, 0] * 3)
  x, weights, _, _ = _problem(1, len(group_ids), groups=4)
  routing = grouped.make_routing(jnp.asarray(group_ids), 4, "tiled")
  c = _cotangent(len(group_ids), weights.shape[-1])

  grad_x, grad_w = jax.grad(
      lambda x, w: jnp.sum(routing.apply(x, w) * c), argnums=(0, 1))(
          x, weights)

  valid = group_ids < 4
  expected_x = np.zeros_like(x, np.float64)
  expected_w = np.zeros(weights.shape)
  for r in np.flatnonzero(valid):
    g = group_ids[r]
    expected_x[r] = weights[g].astype(np.float64) @ c[r]
    expected_w[g] += np.outer(x[r], c[r])
  np.testing.assert_allclose(grad_x, expected_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad_w, expected_w, rtol=1e-5, atol=1e-5)


def test_tiled_swiglu_keeps_no_per_tile_weight_copies():
  # 4096 rows over 8 groups: 40 tiles of 128, so per-tile copies of a
  # [8, 64, 96] weight would be [40, 64, 96].
  rng = np.random.default_rng(2)
  group_ids = rng.integers(0, 8, 4096)
  x, gate, up, down = _problem(2, 4096, groups=8, d_in=64, hidden=96,
                               d_out=64)
  routing = grouped.make_routing(jnp.asarray(group_ids), 8, "tiled")

  def loss(x, gate, up, down):
    return jnp.sum(routing.swiglu(routing.to_slots(x), gate, up, down) ** 2)

  # The residuals of the forward pass, as jax.vjp keeps them.
  _, vjp = jax.vjp(loss, x, gate, up, down)
  shapes = {tuple(leaf.shape) for leaf in jax.tree.leaves(vjp)}
  num_tiles = routing.tile_groups.shape[0]
  assert (num_tiles, 64, 96) not in shapes
  assert (num_tiles, 96, 64) not in shapes
