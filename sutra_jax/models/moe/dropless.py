"""Dropless dispatch: every routed token copy is computed.

The N * k copies are laid out by expert with `grouped.make_routing` (a
sort for `ragged_dot`, padded tiles for `tiled`), each expert's SwiGLU runs
as three grouped matmuls in that layout, and the outputs are gathered back
and combined. The cost is that of N * k rows (plus tile padding) whatever
the balance of the experts, and no token is ever dropped.
"""

import jax
import jax.numpy as jnp

from sutra_jax.models import grouped
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
  k = experts.shape[1]
  routing = grouped.make_routing(experts.reshape(-1), num_experts,
                                 implementation)
  y = experts_lib.swiglu(routing, routing.to_slots(tokens, rows_per_item=k),
                         weights)
  return experts_lib.DispatchResult(
      experts_lib.combine(routing, y, routing_weights),
      jnp.zeros((), jnp.float32))
