"""Capacity-limited (GShard-style) dispatch with deterministic dropping.

Each expert has C = min(N, max(1, ceil(capacity_factor * N * k / E))) slots
for the N tokens of the batch, where N counts every position of the batch, padding
included (C must be static). The routed copies take the slots of their
expert in this order: first every token's first choice, in token order
(row-major over [B, L]), then every token's second choice, and so on. A copy
that finds its expert's C slots taken is dropped: it contributes zero, the
token keeps its other choices and the residual stream, and the drop is
counted. Padding takes no slots.

Ranking all first choices before any second choice is the GShard and Switch
priority: a token loses its less important expert before another token
loses its most important one.

The slots form a [E, C, D] buffer that one batched matmul per projection
computes, which is the fastest MoE layout on CPU when C is close to N * k / E.
Under `jax.jit` the batch is global, so which copies are dropped does not
depend on the mesh.
"""

import math

import jax
import jax.numpy as jnp

from sutra_jax.models import grouped
from sutra_jax.models.moe import experts as experts_lib


def expert_capacity(num_tokens: int, k: int, num_experts: int,
                    capacity_factor: float) -> int:
  """Returns C, the slots per expert, between 1 and N.

  Single-token decoding (N = 1) therefore always has room for its k copies,
  which go to k different experts. An expert never receives more than N
  copies (top-k picks distinct experts), so C = N drops nothing and a larger
  factor would only add empty slots.
  """
  share = capacity_factor * num_tokens * k / num_experts
  return max(1, min(num_tokens, math.ceil(min(share, num_tokens))))


def priority_order(num_tokens: int, k: int) -> jax.Array:
  """Returns the token-major copy indices (n * k + j) in choice-major order."""
  copies = jnp.arange(num_tokens * k, dtype=jnp.int32).reshape(num_tokens, k)
  return copies.T.reshape(-1)


def dispatch(tokens: jax.Array, experts: jax.Array, routing_weights: jax.Array,
             weights: experts_lib.ExpertWeights, *, num_experts: int,
             capacity_factor: float) -> experts_lib.DispatchResult:
  """Computes the routed experts of every token that fits in capacity.

  Args:
    tokens: [N, D] activations.
    experts: [N, k] int32 chosen experts; an id outside [0, E) (padding)
      selects nothing and is not counted as dropped.
    routing_weights: [N, k] float32 weights of the choices.
    weights: the E experts' weights.
    num_experts: E.
    capacity_factor: see `expert_capacity`.

  Returns:
    The combined output and the number of dropped copies of real tokens.
  """
  num_tokens, k = experts.shape
  capacity = expert_capacity(num_tokens, k, num_experts, capacity_factor)
  flat = experts.reshape(-1)
  routing, kept = grouped.make_capacity_routing(
      flat, num_experts, capacity, priority_order(num_tokens, k))
  y = experts_lib.swiglu(routing, routing.to_slots(tokens, rows_per_item=k),
                         weights)
  real = (flat >= 0) & (flat < num_experts)
  dropped = jnp.sum(real & ~kept).astype(jnp.float32)
  return experts_lib.DispatchResult(
      experts_lib.combine(routing, y, routing_weights), dropped)
