"""The mixture-of-experts layer of the concept core.

The router (`router.py`) picks each token's top-k experts. One of three
dispatch strategies, chosen by `ModelConfig.moe_dispatch`, then computes
them:

* `dropless` (dropless.py): every routed copy is computed;
* `capacity` (capacity.py): each expert has a fixed number of slots and the
  copies past it are dropped, deterministically;
* `expert_parallel` (expert_parallel.py): the experts are split over the
  `expert` mesh axis and the copies travel to them with an all-to-all.

All three compute the same function when nothing is dropped. Padding tokens
go through the router, which keeps its input shape fixed, but are
dispatched nowhere. They take no expert slot, add nothing to the losses or
the load, and their output is zero.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from sutra_jax.models.config import ModelConfig
from sutra_jax.models.layers import Dense, kernel_init, make_param
from sutra_jax.models.moe import capacity
from sutra_jax.models.moe import dropless
from sutra_jax.models.moe import expert_parallel
from sutra_jax.models.moe import experts as experts_lib
from sutra_jax.models.moe import router as router_lib
from sutra_jax.models.sharding import TOKENS, constrain


class MoE(nnx.Module):
  """Top-k mixture of SwiGLU experts.

  Parameters, with F = `expert_mlp_dim`:
    router/kernel: [D, E]
    gate, up: [E, D, F]
    down: [E, F, D]
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, e, f = config.d_model, config.num_experts, config.expert_mlp_dim
    param_dtype = config.weight_dtype
    self.router = Dense(d, e, ("embed", "experts"), dtype=jnp.float32,
                        param_dtype=param_dtype, rngs=rngs)
    expert_init = kernel_init(in_axis=1, out_axis=2, batch_axis=(0,))
    self.gate = make_param(rngs, expert_init, (e, d, f),
                           ("experts", "embed", "mlp"), param_dtype)
    self.up = make_param(rngs, expert_init, (e, d, f),
                         ("experts", "embed", "mlp"), param_dtype)
    self.down = make_param(rngs, expert_init, (e, f, d),
                           ("experts", "mlp", "embed"), param_dtype)
    self.num_experts = e
    self.experts_per_token = config.experts_per_token
    self.config = config

  def __call__(self, x: jax.Array,
               token_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies the experts.

    Args:
      x: [B, L, D] activations.
      token_mask: [B, L], 1 for real tokens and 0 for padding.

    Returns:
      The output [B, L, D] and a dict of float32 auxiliary outputs: scalars
      `load_balancing_loss`, `router_z_loss` and `dropped_slots` (routed
      copies of real tokens that were not computed), the [E] `expert_load`
      and the [B, L, E] `expert_slot_counts`.
    """
    batch, length, d_model = x.shape
    tokens = constrain(x.reshape(batch * length, d_model), TOKENS)
    mask = token_mask.reshape(batch * length).astype(jnp.float32)
    routed = router_lib.route_top_k(
        self.router(tokens, out_dtype=jnp.float32), self.experts_per_token)
    # Padding goes to expert E, which every strategy treats as no expert.
    chosen = jnp.where(mask[:, None] > 0, routed.experts, self.num_experts)
    result = self._dispatch(tokens.astype(self.config.activation_dtype),
                            chosen, routed.weights)
    aux = {
        "load_balancing_loss": router_lib.load_balancing_loss(routed, mask),
        "router_z_loss": router_lib.router_z_loss(routed.logits, mask),
        "dropped_slots": result.dropped_slots,
        "expert_load": router_lib.expert_load(routed.experts, mask,
                                              self.num_experts),
        "expert_slot_counts": router_lib.expert_slot_counts(
            routed.experts, mask, self.num_experts).reshape(
                batch, length, self.num_experts),
    }
    out = result.output.astype(self.config.activation_dtype)
    return out.reshape(batch, length, d_model), aux

  def _dispatch(self, tokens, chosen, routing_weights):
    config = self.config
    # Cast before any dispatch gathers the weights across devices, so the
    # gather (and the reduction of their gradients) moves the compute dtype.
    weights = experts_lib.ExpertWeights(
        *(w[...].astype(config.activation_dtype)
          for w in (self.gate, self.up, self.down)))
    common = dict(num_experts=self.num_experts)
    if config.moe_dispatch == "capacity":
      return capacity.dispatch(tokens, chosen, routing_weights, weights,
                               capacity_factor=config.capacity_factor,
                               **common)
    if config.moe_dispatch == "expert_parallel":
      return expert_parallel.dispatch(
          tokens, chosen, routing_weights, weights,
          exchange=config.expert_exchange,
          buffer_factor=config.expert_buffer_factor,
          implementation=config.grouped_matmul, **common)
    return dropless.dispatch(tokens, chosen, routing_weights, weights,
                             implementation=config.grouped_matmul, **common)
