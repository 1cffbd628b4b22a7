"""Dropless dispatch: every routed token copy is computed.

The N * k copies are laid out by expert with `grouped.make_routing` (a
sort for `ragged_dot`, padded tiles for `tiled`), each expert's SwiGLU runs
as three grouped matmuls in that layout, and the outputs are gathered back
and combined. The cost is that of N * k rows (plus tile padding) whatever
the balance of the experts, and no token is ever dropped.

With a mesh in context (`jax.set_mesh`) whose axes split the tokens, the
layout is built per device inside `jax.shard_map`. Each device routes its
own tokens through all E experts, whose weights it gathers. Where the
`tensor` axis divides the hidden width, the weights stay split over it. A
layout over the global rows would make XLA gather every token onto every
device.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sutra_jax.models import grouped
from sutra_jax.models import sharding
from sutra_jax.models.moe import experts as experts_lib


def dispatch(tokens: jax.Array, experts: jax.Array, routing_weights: jax.Array,
             weights: experts_lib.ExpertWeights, *, num_experts: int,
             implementation: str = "auto") -> experts_lib.DispatchResult:
  """Computes the routed experts of every token.

  Args:
    tokens: [N, D] activations.
    experts: [N, k] int32 chosen experts; an id outside [0, E) (padding)
      selects nothing.
    routing_weights: [N, k] float32 weights of the choices.
    weights: the E experts' weights.
    num_experts: E.
    implementation: the grouped matmul implementation (`grouped`).

  Returns:
    The combined output and zero dropped slots.
  """
  local = functools.partial(_local_dispatch, num_experts=num_experts,
                            implementation=implementation)
  mesh = jax.sharding.get_abstract_mesh()
  token_axes = sharding.token_axes(mesh)
  if not token_axes:
    output = local(tokens, experts, routing_weights, weights,
                   tensor_axis=None)
  else:
    output = _sharded_dispatch(local, mesh, token_axes, tokens, experts,
                               routing_weights, weights, num_experts)
  return experts_lib.DispatchResult(output, jnp.zeros((), jnp.float32))


def _sharded_dispatch(local, mesh, token_axes, tokens, experts,
                      routing_weights, weights, num_experts):
  """Runs `local` on each device's rows inside `jax.shard_map`."""
  num_tokens = tokens.shape[0]
  tokens, experts, routing_weights = sharding.pad_rows(
      math.prod(mesh.shape[a] for a in token_axes),
      [(tokens, 0), (experts, num_experts), (routing_weights, 0)])
  tensor = sharding.tensor_axis_for(mesh, weights.gate.shape[-1])
  rows = P(token_axes)
  hidden_in = P(None, None, tensor)
  output = jax.shard_map(
      functools.partial(local, tensor_axis=tensor), mesh=mesh,
      in_specs=(rows, rows, rows,
                experts_lib.ExpertWeights(hidden_in, hidden_in,
                                          P(None, tensor, None))),
      out_specs=rows)(tokens, experts, routing_weights, weights)
  return output[:num_tokens]


def _local_dispatch(tokens, experts, routing_weights, weights, *, num_experts,
                    implementation, tensor_axis):
  """Dispatches N local tokens to all E experts; returns [N, D] float32."""
  k = experts.shape[1]
  routing = grouped.make_routing(experts.reshape(-1), num_experts,
                                 implementation)
  y = experts_lib.swiglu(routing, routing.to_slots(tokens, rows_per_item=k),
                         weights)
  if tensor_axis:
    # Each tensor shard computes part of the hidden width, so the down
    # projection's partial sums add up to the full output.
    y = jax.lax.psum(y, tensor_axis)
  return experts_lib.combine(routing, y, routing_weights)
