"""Gradients of tiled grouped matmuls that keep no per-tile weight copies.

In the tiled slot layout of `sutra_jax.models.grouped`, tile t of T rows is
multiplied by the weights of its group g(t). The forward pass gathers the
weights per tile, [num_tiles, in, out], several times the size of the
weights [G, in, out], and multiplies all tiles in one batched matmul.

Plain autodiff keeps those per-tile copies from the forward pass for the
backward pass, one set per projection and layer. A backward pass that
gathers them again does not help on XLA:CPU, which schedules such a gather
(it needs only the weights) at the start of the backward pass, so every
layer's copies are alive at once. The rules here keep the weights instead.
Their backward pass is a loop over tiles: each tile reads its group's
weights in place and adds its weight gradient to its group's.

`tile_swiglu` keeps only the inputs of the SwiGLU MLP for the backward
pass, which recomputes the gate and up projections one tile at a time.
That costs 2 more matmuls to the 9 of a forward and backward pass, and
saves 2 hidden activations [S, hidden] per layer, the largest buffers the
MLP would keep.

Shapes: num_tiles tiles of T rows, G groups. `tile_groups` [num_tiles] is
sorted, as the tiled layout builds it.
"""

import functools

import jax
import jax.numpy as jnp


def _project(tiles: jax.Array, weights: jax.Array, tile_groups: jax.Array,
             tile_per_group: bool = False,
             preferred_element_type=None) -> jax.Array:
  """Multiplies every tile by its group's matrix in one batched matmul.

  The per-tile weights [num_tiles, in, out] exist only for this matmul.
  The backward rules below do not keep them.
  """
  if not tile_per_group:
    weights = jnp.take(weights, tile_groups, axis=0)
  return jnp.einsum("tri,tio->tro", tiles, weights,
                    preferred_element_type=preferred_element_type)


def _read_group(weights: jax.Array, group: jax.Array) -> jax.Array:
  """Returns weights[group] [in, out] of weights [G, in, out]."""
  return jax.lax.dynamic_index_in_dim(weights, group, keepdims=False)


def _add_to_group(grads: jax.Array, group: jax.Array,
                  update: jax.Array) -> jax.Array:
  """Adds update [in, out] to grads[group] of grads [G, in, out]."""
  return jax.lax.dynamic_update_index_in_dim(
      grads, _read_group(grads, group) + update, group, axis=0)


def varying_axes(x: jax.Array) -> frozenset:
  """Returns the manual mesh axes over which `x` varies inside shard_map."""
  aval = jax.typeof(x)
  # jax 0.10 keeps them in `manual_axis_type.varying`, older releases in
  # `vma`.
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def _gradient_accumulator(shape, *operands) -> jax.Array:
  """Returns float32 zeros that vary over the mesh axes any operand varies.

  Inside `jax.shard_map`, a scan carry must vary over the same manual axes
  as the values added to it, which come from all the operands.
  """
  zeros = jnp.zeros(shape, jnp.float32)
  axes = frozenset().union(*(varying_axes(x) for x in operands))
  if axes:
    zeros = jax.lax.pcast(zeros, tuple(sorted(axes)), to="varying")
  return zeros


def match_varying(grads, primals):
  """Sums each gradient over the manual mesh axes its primal does not vary.

  Inside `jax.shard_map`, an operand that is the same on every device of an
  axis (the tokens over `tensor`, the weights over the token axes) meets
  values that differ along it. Autodiff transposes that implicit broadcast
  into a `psum`, and a custom rule has to do the same.
  """
  out = []
  for grad, primal in zip(grads, primals):
    extra = varying_axes(grad) - varying_axes(primal)
    if extra:
      grad = jax.lax.psum(grad, tuple(sorted(extra)))
    out.append(grad)
  return tuple(out)


def _dot_f32(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tile_matmul(tiles: jax.Array, weights: jax.Array, tile_groups: jax.Array,
                preferred_element_type=None) -> jax.Array:
  """Multiplies tile t [T, in] by weights[tile_groups[t]] [in, out].

  Args:
    tiles: [num_tiles, T, in].
    weights: [G, in, out], in the dtype of `tiles`.
    tile_groups: [num_tiles] int32, sorted.
    preferred_element_type: the output dtype; None keeps the input dtype.

  Returns:
    [num_tiles, T, out].
  """
  return _project(tiles, weights, tile_groups,
                  preferred_element_type=preferred_element_type)


def _tile_matmul_forward(tiles, weights, tile_groups, preferred_element_type):
  out = tile_matmul(tiles, weights, tile_groups, preferred_element_type)
  return out, (tiles, weights, tile_groups)


def _tile_matmul_backward(preferred_element_type, residuals, out_grad):
  del preferred_element_type
  tiles, weights, tile_groups = residuals

  def tile_step(weights_grad, tile):
    x, dy, group = tile
    dx = _dot_f32(dy, _read_group(weights, group).T)
    weights_grad = _add_to_group(weights_grad, group, _dot_f32(x.T, dy))
    return weights_grad, dx.astype(tiles.dtype)

  weights_grad, tiles_grad = jax.lax.scan(
      tile_step, _gradient_accumulator(weights.shape, tiles, out_grad, weights),
      (tiles, out_grad, tile_groups))
  tiles_grad, weights_grad = match_varying(
      (tiles_grad, weights_grad.astype(weights.dtype)), (tiles, weights))
  return tiles_grad, weights_grad, None


tile_matmul.defvjp(_tile_matmul_forward, _tile_matmul_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def tile_swiglu(tiles: jax.Array, gate: jax.Array, up: jax.Array,
                down: jax.Array, tile_groups: jax.Array,
                tile_per_group: bool = False) -> jax.Array:
  """Applies silu(x @ gate[g]) * (x @ up[g]) @ down[g] to each tile.

  Args:
    tiles: [num_tiles, T, in].
    gate: [G, in, hidden], in the dtype of `tiles`, as are `up` and `down`.
    up: [G, in, hidden].
    down: [G, hidden, out].
    tile_groups: [num_tiles] int32, sorted.
    tile_per_group: tile g contains the rows of group g (num_tiles = G), so
      the weights are used as they are.

  Returns:
    [num_tiles, T, out] in the dtype of `tiles`.
  """
  out, _ = _tile_swiglu_forward(tiles, gate, up, down, tile_groups,
                                tile_per_group)
  return out


def _tile_swiglu_forward(tiles, gate, up, down, tile_groups, tile_per_group):
  def project(x, weights):
    return _project(x, weights, tile_groups, tile_per_group)

  hidden = jax.nn.silu(project(tiles, gate)) * project(tiles, up)
  out = project(hidden, down)
  return out, (tiles, gate, up, down, tile_groups)


def _tile_swiglu_backward(tile_per_group, residuals, out_grad):
  del tile_per_group  # Tile t reads group tile_groups[t] either way.
  tiles, gate, up, down, tile_groups = residuals

  def tile_step(grads, tile):
    x, dy, group = tile
    gate_grad, up_grad, down_grad = grads
    w_gate, w_up = _read_group(gate, group), _read_group(up, group)
    g = jnp.dot(x, w_gate).astype(jnp.float32)
    u = jnp.dot(x, w_up).astype(jnp.float32)
    sigmoid = jax.nn.sigmoid(g)
    silu = g * sigmoid
    dy = dy.astype(jnp.float32)
    hidden_grad = _dot_f32(dy, _read_group(down, group).T.astype(jnp.float32))
    down_grad = _add_to_group(down_grad, group, _dot_f32((silu * u).T, dy))
    d_up = hidden_grad * silu
    d_gate = hidden_grad * u * sigmoid * (1 + g * (1 - sigmoid))
    x32 = x.astype(jnp.float32)
    gate_grad = _add_to_group(gate_grad, group, _dot_f32(x32.T, d_gate))
    up_grad = _add_to_group(up_grad, group, _dot_f32(x32.T, d_up))
    dx = (_dot_f32(d_gate, w_gate.T.astype(jnp.float32)) +
          _dot_f32(d_up, w_up.T.astype(jnp.float32)))
    return (gate_grad, up_grad, down_grad), dx.astype(tiles.dtype)

  zeros = tuple(_gradient_accumulator(w.shape, tiles, out_grad, gate, up, down)
                for w in (gate, up, down))
  (gate_grad, up_grad, down_grad), tiles_grad = jax.lax.scan(
      tile_step, zeros, (tiles, out_grad, tile_groups))
  grads = match_varying(
      (tiles_grad, gate_grad.astype(gate.dtype), up_grad.astype(up.dtype),
       down_grad.astype(down.dtype)), (tiles, gate, up, down))
  return (*grads, None)


tile_swiglu.defvjp(_tile_swiglu_forward, _tile_swiglu_backward)
