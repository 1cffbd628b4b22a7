"""Expert-parallel dispatch: tokens travel to the devices that hold their experts.

The E experts are split over the `expert` mesh axis (E / P per device, with
P its size) and, optionally, their hidden width over the `tensor` axis. The
tokens are split over every mesh axis but `tensor`. Inside `jax.shard_map`
each device

1. sends each of its routed token copies to the device of its expert,
2. runs its local experts on what it received, with the grouped slot layout
   of `sutra_jax.models.grouped` (summing the `tensor` shards of the hidden
   width with a `psum`),
3. sends the outputs back, and combines each token's k outputs.

Two exchanges implement steps 1 and 3 (`ModelConfig.expert_exchange`):

* `all_to_all`: `jax.lax.all_to_all` over fixed [P, B, D] buffers, B rows
  per destination. With `expert_buffer_factor` None, B is the device's
  N_local * k copies, which cannot overflow because a device never sends
  more than it has. A factor f gives B = ceil(f * N_local * k / P), which
  computes less but drops the copies past B for a destination; they are
  counted like the drops of the capacity dispatch (in copy order, so the
  choice is deterministic). XLA:CPU runs this exchange.
* `ragged_all_to_all`: `jax.lax.ragged_all_to_all` moves exactly the routed
  copies, with the sizes exchanged first by an `all_gather`. It never drops.
  XLA:CPU does not implement it (jax 0.10.2 raises UNIMPLEMENTED), so it is
  for TPU and GPU; tests/models/moe_aot_test.py compiles a train step with
  it for a TPU topology.

Without a mesh in context (`jax.set_mesh`) or with an `expert` axis of size
1 there is nothing to exchange, and the dispatch is the dropless one. The
router, its losses and the expert load are computed outside, on the global
batch, so they do not depend on the mesh.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sutra_jax.models import grouped
from sutra_jax.models import sharding
from sutra_jax.models.moe import dropless
from sutra_jax.models.moe import experts as experts_lib

EXPERT_AXIS = "expert"
EXCHANGES = ("all_to_all", "ragged_all_to_all")


def dispatch(tokens: jax.Array, experts: jax.Array, routing_weights: jax.Array,
             weights: experts_lib.ExpertWeights, *, num_experts: int,
             exchange: str = "all_to_all",
             buffer_factor: float | None = None,
             implementation: str = "auto") -> experts_lib.DispatchResult:
  """Computes the routed experts of every token on the experts' devices.

  Args:
    tokens: [N, D] activations of the global batch.
    experts: [N, k] int32 chosen experts; an id outside [0, E) (padding)
      selects nothing.
    routing_weights: [N, k] float32 weights of the choices.
    weights: the E experts' weights.
    num_experts: E, a multiple of the `expert` axis size.
    exchange: 'all_to_all' or 'ragged_all_to_all'.
    buffer_factor: see the module docstring; None never drops.
    implementation: the grouped matmul implementation on each device.

  Returns:
    The combined output and the number of dropped copies of real tokens.

  Raises:
    ValueError: E is not a multiple of the `expert` axis size, or the
      exchange is unknown.
  """
  if exchange not in EXCHANGES:
    raise ValueError(f"unknown expert exchange {exchange!r}: use one of "
                     f"{EXCHANGES}")
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or sharding.is_manual(mesh) or
      mesh.shape.get(EXPERT_AXIS, 1) == 1):
    return dropless.dispatch(tokens, experts, routing_weights, weights,
                             num_experts=num_experts,
                             implementation=implementation)
  num_shards = mesh.shape[EXPERT_AXIS]
  if num_experts % num_shards:
    raise ValueError(
        f"{num_experts} experts cannot be split over the {num_shards} devices "
        f"of the '{EXPERT_AXIS}' mesh axis: make the axis size divide "
        "num_experts")
  token_axes = sharding.token_axes(mesh)
  tensor = sharding.tensor_axis_for(mesh, weights.gate.shape[-1])
  num_tokens = tokens.shape[0]
  # Padding rows route to expert E, which is no expert.
  tokens, experts, routing_weights = sharding.pad_rows(
      math.prod(mesh.shape[a] for a in token_axes),
      [(tokens, 0), (experts, num_experts), (routing_weights, 0)])

  body = functools.partial(
      _local_dispatch, num_experts=num_experts, num_shards=num_shards,
      exchange=exchange, buffer_factor=buffer_factor,
      implementation=implementation, token_axes=token_axes,
      tensor_axis=tensor)
  rows = P(token_axes)
  hidden_in = P(EXPERT_AXIS, None, tensor)
  out, dropped = jax.shard_map(
      body, mesh=mesh,
      in_specs=(rows, rows, rows,
                experts_lib.ExpertWeights(hidden_in, hidden_in,
                                          P(EXPERT_AXIS, tensor, None))),
      out_specs=(rows, P()))(tokens, experts, routing_weights, weights)
  return experts_lib.DispatchResult(out[:num_tokens], dropped)


def _local_dispatch(tokens, experts, routing_weights, weights, *, num_experts,
                    num_shards, exchange, buffer_factor, implementation,
                    token_axes, tensor_axis):
  """Dispatches n local tokens to the E / P local experts of each device."""
  num_tokens, k = experts.shape
  local_experts = num_experts // num_shards
  flat = experts.reshape(-1)
  valid = (flat >= 0) & (flat < num_experts)
  # Destination device and the expert's index there; padding goes to the
  # out-of-range device P.
  destination = jnp.where(valid, flat // local_experts, num_shards)
  local_ids = jnp.where(valid, flat % local_experts, local_experts)

  def run_experts(received_tokens, received_ids):
    routing = grouped.make_routing(received_ids, local_experts,
                                   implementation)
    y = experts_lib.swiglu(routing, routing.to_slots(received_tokens),
                           weights)
    y = routing.from_slots(y)
    if tensor_axis:
      # Each tensor shard computes part of the hidden width, so the down
      # projection's partial sums add up to the full output.
      y = jax.lax.psum(y, tensor_axis)
    return y

  if exchange == "all_to_all":
    copy_out, kept = _all_to_all_exchange(
        tokens, local_ids, destination, k, num_shards, local_experts,
        buffer_factor, run_experts)
  else:
    copy_out, kept = _ragged_exchange(tokens, local_ids, destination, k,
                                      num_shards, local_experts, run_experts)
  out = jnp.einsum("nkd,nk->nd", copy_out.reshape(num_tokens, k, -1),
                   routing_weights.astype(copy_out.dtype),
                   preferred_element_type=jnp.float32)
  dropped = jnp.sum(valid & ~kept).astype(jnp.float32)
  return out, jax.lax.psum(dropped, token_axes)


def _all_to_all_exchange(tokens, local_ids, destination, k, num_shards,
                         local_experts, buffer_factor, run_experts):
  """Exchanges padded [P, B, D] buffers; returns ([n * k, D], kept [n * k])."""
  num_copies = destination.shape[0]
  if buffer_factor is None:
    buffer_rows = num_copies
  else:
    buffer_rows = min(num_copies,
                      math.ceil(buffer_factor * num_copies / num_shards))
  # The capacity layout with one "group" per destination device gives each
  # copy its row in the send buffer and drops the copies past B.
  send, kept = grouped.make_capacity_routing(destination, num_shards,
                                             buffer_rows)
  send_tokens = send.to_slots(tokens, rows_per_item=k)
  send_ids = jnp.take(local_ids, send.slot_rows, mode="fill",
                      fill_value=local_experts)
  exchange = functools.partial(jax.lax.all_to_all, axis_name=EXPERT_AXIS,
                               split_axis=0, concat_axis=0, tiled=True)
  received_tokens = exchange(send_tokens)
  received_ids = exchange(send_ids)
  outputs = run_experts(received_tokens, received_ids)
  return send.from_slots(exchange(outputs)), kept


def _ragged_exchange(tokens, local_ids, destination, k, num_shards,
                     local_experts, run_experts):
  """Exchanges exactly the routed copies; returns ([n * k, D], kept)."""
  num_copies = destination.shape[0]
  # Copies sorted by destination; padding copies sort last and are not sent.
  send = grouped.make_routing(destination, num_shards, "ragged_dot")
  send_tokens = send.to_slots(tokens, rows_per_item=k)
  send_ids = jnp.take(local_ids, send.slot_rows)
  send_sizes = send.group_sizes
  input_offsets = jnp.cumsum(send_sizes) - send_sizes
  # sizes[i, j]: copies that device i sends to device j.
  sizes = jax.lax.all_gather(send_sizes, EXPERT_AXIS)
  me = jax.lax.axis_index(EXPERT_AXIS)
  # Chunks arrive ordered by sender: sender i writes to device j after the
  # chunks of senders 0 .. i - 1.
  starts = jnp.cumsum(sizes, axis=0) - sizes
  output_offsets = starts[me]
  recv_sizes = sizes[:, me]
  recv_offsets = starts[:, me]
  # A device receives at most every copy of every device.
  capacity = num_copies * num_shards
  received_tokens = jax.lax.ragged_all_to_all(
      send_tokens, jnp.zeros((capacity,) + tokens.shape[1:], tokens.dtype),
      input_offsets, send_sizes, output_offsets, recv_sizes,
      axis_name=EXPERT_AXIS)
  received_ids = jax.lax.ragged_all_to_all(
      send_ids, jnp.full((capacity,), local_experts, jnp.int32),
      input_offsets, send_sizes, output_offsets, recv_sizes,
      axis_name=EXPERT_AXIS)
  outputs = run_experts(received_tokens, received_ids)
  # Back along the same chunks: device i's chunk for me sits at
  # recv_offsets[i] here and returns to where i took it from.
  back_offsets = (jnp.cumsum(sizes, axis=1) - sizes)[:, me]
  returned = jax.lax.ragged_all_to_all(
      outputs, jnp.zeros((num_copies,) + outputs.shape[1:], outputs.dtype),
      recv_offsets, recv_sizes, back_offsets, send_sizes,
      axis_name=EXPERT_AXIS)
  kept = jnp.ones((num_copies,), bool)
  return send.from_slots(returned), kept
