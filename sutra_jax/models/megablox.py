"""Grouped matmul over rows sorted by group, with the megablox TPU kernels.

`jax.lax.ragged_dot` has a native TPU kernel for its forward pass and for
the gradient of its rows, but not for the gradient of its weights, where
the rows are the contracted dimension. libtpu 0.0.42.1 lowers that one to a
dense batched matmul over G masked copies of all rows. It costs G times the
FLOPs and memory of the product itself: 28 times for the language blocks
of the 8x7B model and 8 times for its experts, as measured in the compiled
HLO (docs/scaling.md).

JAX ships the megablox Pallas kernels (`jax.experimental.pallas.ops.tpu.
megablox`): `gmm` multiplies sorted rows by their group's matrix and `tgmm`
computes the weight gradient group by group over the group's own rows.
The rule here uses both, on TPU compiled with Mosaic and on other backends
in Pallas's interpret mode, which runs the same kernel code slowly, for
tests on CPU.

Shapes: S rows in the slot layout (sorted by group, the first
sum(group_sizes) rows belong to groups), G groups, weights [G, in, out].
"""

import functools
import importlib

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sutra_jax.models import tiled_vjp

# The package exports `ops.gmm`, a custom-VJP function, under the name
# `gmm`, which hides the module that defines both kernels.
_kernels = importlib.import_module(
    "jax.experimental.pallas.ops.tpu.megablox.gmm")

# Rows, contracted and output columns per kernel tile. Every row tile reads
# its group's whole [in, out] weights, so tall tiles keep that traffic low.
# A tile that straddles a group boundary is computed once per group.
_TILE = (512, 1024, 1024)
# Rows are padded to a multiple of 128 when they fit in one tile.
_ROW_ALIGN = 128


def _tiling(rows: int, contracted: int, out: int) -> tuple[int, int, int]:
  """Clamps `_TILE` to the problem, whose `rows` are already padded."""
  return (min(_TILE[0], rows), min(_TILE[1], contracted), min(_TILE[2], out))


def _reference_gmm(x, weights, group_sizes, *, preferred_element_type,
                   tiling, transpose_rhs):
  """Computes what `gmm` computes, with `jax.lax.ragged_dot`."""
  del tiling
  if transpose_rhs:
    weights = jnp.swapaxes(weights, 1, 2)
  return jax.lax.ragged_dot(x, weights, group_sizes,
                            preferred_element_type=preferred_element_type)


def _reference_tgmm(x_t, dy, group_sizes, *, preferred_element_type, tiling,
                    num_actual_groups):
  """Computes what `tgmm` computes, with one masked product per group."""
  del tiling
  ends = jnp.cumsum(group_sizes[:num_actual_groups])
  rows = jnp.arange(dy.shape[0])
  in_group = (rows >= (ends - group_sizes[:num_actual_groups])[:, None]) & (
      rows < ends[:, None])
  return jnp.einsum("gr,kr,rn->gkn", in_group.astype(dy.dtype), x_t, dy,
                    preferred_element_type=preferred_element_type)


def _on_platform(kernel, reference, *args, **kwargs) -> jax.Array:
  """Runs the megablox `kernel`, compiled with Mosaic on TPU.

  The choice is made when the program is lowered, so a CPU host compiling
  for a TPU topology (`sutra-aot`) gets the Mosaic kernel. Elsewhere the
  kernel runs in Pallas's interpret mode, except inside `jax.shard_map`,
  where jax 0.10.2's interpreter fails on values typed as varying over
  mesh axes, so `reference` computes the same with XLA ops.
  """
  manual = jax.sharding.get_abstract_mesh().manual_axes
  default = (functools.partial(reference, **kwargs) if manual else
             functools.partial(kernel, **kwargs, interpret=True))

  def call(*args):
    return jax.lax.platform_dependent(
        *args, tpu=functools.partial(kernel, **kwargs, interpret=False),
        default=default)

  if not manual:
    return call(*args)
  # Inside `jax.shard_map` the mesh axes over which each value varies are
  # part of its type, and `pallas_call` needs them for its outputs, which
  # the megablox kernels do not give. A nested shard_map that makes no new
  # axis manual runs the kernel without that check. Its output comes back
  # typed as equal on every device, so it is re-typed as varying over the
  # axes that its inputs vary over, which is what the kernel computes.
  out = jax.shard_map(call, in_specs=P(), out_specs=P(),
                      axis_names=frozenset(), check_vma=False)(*args)
  axes = frozenset().union(*(tiled_vjp.varying_axes(x) for x in args))
  if axes:
    out = jax.lax.pcast(out, tuple(sorted(axes)), to="varying")
  return out


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  return jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def _padded_rows(num_rows: int) -> int:
  align = _ROW_ALIGN if num_rows <= _TILE[0] else _TILE[0]
  return -(-num_rows // align) * align


def _valid_rows(num_rows: int, group_sizes: jax.Array) -> jax.Array:
  """[num_rows, 1] bool: True for the rows that belong to a group."""
  return (jnp.arange(num_rows) < jnp.sum(group_sizes))[:, None]


def _gmm(x: jax.Array, weights: jax.Array, group_sizes: jax.Array,
         out_dtype, transpose_weights: bool = False) -> jax.Array:
  """Multiplies each group's rows by its matrix; zero past the groups.

  The kernel leaves the rows past the last group unwritten, so they are
  masked here.
  """
  num_rows = x.shape[0]
  rows = _padded_rows(num_rows)
  contracted = x.shape[1]
  out = weights.shape[1] if transpose_weights else weights.shape[2]
  y = _on_platform(
      _kernels.gmm, _reference_gmm, _pad_rows(x, rows), weights, group_sizes,
      preferred_element_type=out_dtype,
      tiling=_tiling(rows, contracted, out), transpose_rhs=transpose_weights)
  return jnp.where(_valid_rows(num_rows, group_sizes), y[:num_rows], 0)


def _tgmm(x: jax.Array, dy: jax.Array, group_sizes: jax.Array,
          out_dtype) -> jax.Array:
  """Returns the weight gradient [G, in, out]: x_g^T dy_g for each group."""
  rows = _padded_rows(x.shape[0])
  return _on_platform(
      _kernels.tgmm, _reference_tgmm, _pad_rows(x, rows).T,
      _pad_rows(dy, rows), group_sizes, preferred_element_type=out_dtype,
      tiling=_tiling(rows, x.shape[1], dy.shape[1]),
      num_actual_groups=group_sizes.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def grouped_matmul(x: jax.Array, weights: jax.Array, group_sizes: jax.Array,
                   preferred_element_type=None) -> jax.Array:
  """Computes x[r] @ weights[g] for the rows r of each group g.

  Args:
    x: [S, in] rows sorted by group: group 0's group_sizes[0] rows first.
    weights: [G, in, out], in the dtype of `x`.
    group_sizes: [G] int32 rows per group; rows past their sum get zeros.
    preferred_element_type: the output dtype; None keeps the input dtype.

  Returns:
    [S, out].
  """
  return _gmm(x, weights, group_sizes, preferred_element_type or x.dtype)


def _forward(x, weights, group_sizes, preferred_element_type):
  out = grouped_matmul(x, weights, group_sizes, preferred_element_type)
  return out, (x, weights, group_sizes)


def _backward(preferred_element_type, residuals, out_grad):
  del preferred_element_type
  x, weights, group_sizes = residuals
  out_grad = out_grad.astype(x.dtype)
  x_grad = _gmm(out_grad, weights, group_sizes, x.dtype,
                transpose_weights=True)
  weights_grad = _tgmm(x, out_grad, group_sizes, weights.dtype)
  x_grad, weights_grad = tiled_vjp.match_varying((x_grad, weights_grad),
                                                 (x, weights))
  return x_grad, weights_grad, None


grouped_matmul.defvjp(_forward, _backward)
