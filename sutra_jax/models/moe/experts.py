"""Expert weights and the SwiGLU experts applied in a grouped slot layout.

Every dispatch strategy lays the routed token copies out in slots with
`sutra_jax.models.grouped`, runs `swiglu` there and combines each token's k
outputs with `combine`. Shapes: N tokens, k experts per token, E experts,
D model width, F expert hidden width, S slots.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sutra_jax.models import grouped


class ExpertWeights(NamedTuple):
  """The SwiGLU weights of E experts (or of one device's share of them).

  Attributes:
    gate: [E, D, F].
    up: [E, D, F].
    down: [E, F, D].
  """

  gate: jax.Array
  up: jax.Array
  down: jax.Array


class DispatchResult(NamedTuple):
  """What a dispatch strategy returns.

  Attributes:
    output: [N, D] float32, each token's routing-weighted sum of its
      experts' outputs.
    dropped_slots: float32 scalar, routed slots of real tokens that were
      not computed (0 for dropless dispatch).
  """

  output: jax.Array
  dropped_slots: jax.Array


def swiglu(routing: grouped.GroupRouting, x_slots: jax.Array,
           weights: ExpertWeights) -> jax.Array:
  """Applies each slot's expert: down(silu(x @ gate) * (x @ up)).

  Args:
    routing: the slot layout, whose groups are experts.
    x_slots: [S, D] token copies in the slot layout.
    weights: the experts' weights, cast to the dtype of `x_slots`.

  Returns:
    [S, D] in the slot layout; zero in empty slots.
  """
  return routing.swiglu(x_slots, weights.gate, weights.up, weights.down)


def combine(routing: grouped.GroupRouting, y_slots: jax.Array,
            routing_weights: jax.Array) -> jax.Array:
  """Sums each token's k expert outputs with its routing weights.

  Args:
    routing: the slot layout of the N * k copies, token-major (copy
      n * k + j is token n's j-th choice).
    y_slots: [S, D] expert outputs in the slot layout.
    routing_weights: [N, k] float32.

  Returns:
    [N, D] float32. A copy without a slot contributes zero.
  """
  num_tokens, k = routing_weights.shape
  y = routing.from_slots(y_slots).reshape(num_tokens, k, -1)
  return jnp.einsum("nkd,nk->nd", y, routing_weights.astype(y.dtype),
                    preferred_element_type=jnp.float32)
