"""Top-k mixture of SwiGLU experts for the concept core.

The router is a float32 linear map to E logits followed by a softmax. Each
token goes to its k most probable experts, weighted by those probabilities
renormalised to sum to 1 (the Mixtral convention). Dispatch is dropless:
every token is copied k times, the N * k copies are sorted by expert and
multiplied with `grouped.GroupRouting`, and the k outputs of a token are
summed with its routing weights.

The auxiliary losses and the expert load are averages over the real tokens
of the whole batch (`token_mask` is 0 for padding). Under `jax.jit` the batch
is the global batch, so they do not depend on how the batch is sharded.
"""

from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp

from sutra_jax.models import grouped
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.layers import Dense, kernel_init, make_param


class RouterOutput(NamedTuple):
  """Routing decisions for N tokens.

  Attributes:
    logits: [N, E] float32 router logits.
    probs: [N, E] float32 softmax of the logits.
    weights: [N, k] float32 top-k probabilities renormalised to sum to 1.
    experts: [N, k] int32 chosen experts, most probable first.
  """

  logits: jax.Array
  probs: jax.Array
  weights: jax.Array
  experts: jax.Array


def route_top_k(logits: jax.Array, k: int) -> RouterOutput:
  """Chooses the k most probable experts of each token.

  Args:
    logits: [N, E] router logits.
    k: experts per token.
  """
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  top_probs, experts = jax.lax.top_k(probs, k)
  weights = top_probs / jnp.sum(top_probs, axis=-1, keepdims=True)
  return RouterOutput(logits, probs, weights, experts.astype(jnp.int32))


def _real_token_count(token_mask: jax.Array) -> jax.Array:
  # At least 1, so that an all-padding batch gives zero losses, not NaN.
  return jnp.maximum(jnp.sum(token_mask), 1.0)


def expert_slot_counts(experts: jax.Array, token_mask: jax.Array,
                       num_experts: int) -> jax.Array:
  """Counts how many of each token's k routed slots go to each expert.

  Args:
    experts: [N, k] chosen experts.
    token_mask: [N], 1 for real tokens and 0 for padding.
    num_experts: E.

  Returns:
    [N, E] float32 counts: k ones spread over a real token's chosen experts,
    all zeros for padding.
  """
  one_hot = jax.nn.one_hot(experts, num_experts, dtype=jnp.float32)
  return jnp.sum(one_hot, axis=1) * token_mask.astype(jnp.float32)[:, None]


def expert_load(experts: jax.Array, token_mask: jax.Array,
                num_experts: int) -> jax.Array:
  """Computes the fraction of routed token slots that each expert receives.

  Args:
    experts: [N, k] chosen experts.
    token_mask: [N], 1 for real tokens and 0 for padding.
    num_experts: E.

  Returns:
    [E] float32 fractions over the N_real * k slots of real tokens. They sum
    to 1 unless every token is padding.
  """
  counts = jnp.sum(expert_slot_counts(experts, token_mask, num_experts),
                   axis=0)
  real_tokens = _real_token_count(token_mask.astype(jnp.float32))
  return counts / (real_tokens * experts.shape[-1])


def load_balancing_loss(router: RouterOutput,
                        token_mask: jax.Array) -> jax.Array:
  """Computes the Switch Transformer balance loss E * sum_e f_e * p_e.

  f_e is the fraction of routed slots sent to expert e (`expert_load`) and
  p_e the mean router probability of e, both over real tokens. The loss is 1
  when routing is uniform, whatever k is, and grows as routing concentrates.

  Args:
    router: the routing of N tokens.
    token_mask: [N], 1 for real tokens and 0 for padding.

  Returns:
    A float32 scalar.
  """
  mask = token_mask.astype(jnp.float32)
  num_experts = router.probs.shape[-1]
  fraction = expert_load(router.experts, mask, num_experts)
  mean_prob = (jnp.sum(router.probs * mask[:, None], axis=0) /
               _real_token_count(mask))
  return num_experts * jnp.sum(fraction * mean_prob)


def router_z_loss(logits: jax.Array, token_mask: jax.Array) -> jax.Array:
  """Computes the mean over real tokens of logsumexp(logits) squared (ST-MoE).

  Args:
    logits: [N, E] router logits.
    token_mask: [N], 1 for real tokens and 0 for padding.

  Returns:
    A float32 scalar.
  """
  mask = token_mask.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return jnp.sum(log_z**2 * mask) / _real_token_count(mask)


# TODO: add capacity-factor (GShard einsum) and expert-parallel (shard_map
# over the 'expert' mesh axis) dispatch behind the same interface as the
# dropless `MoE._dispatch`.
class MoE(nnx.Module):
  """Dropless top-k mixture of SwiGLU experts.

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
    self.grouped_matmul = config.grouped_matmul
    self.dtype = config.activation_dtype

  def __call__(self, x: jax.Array,
               token_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies the experts.

    Args:
      x: [B, L, D] activations.
      token_mask: [B, L], 1 for real tokens and 0 for padding. Padding tokens
        are still computed but do not count in the losses or the load.

    Returns:
      The output [B, L, D] and a dict with scalar `load_balancing_loss` and
      `router_z_loss`, the [E] `expert_load` and the [B, L, E]
      `expert_slot_counts` of `expert_slot_counts`.
    """
    batch, length, d_model = x.shape
    tokens = x.reshape(batch * length, d_model)
    mask = token_mask.reshape(batch * length).astype(jnp.float32)
    router = route_top_k(self.router(tokens, out_dtype=jnp.float32),
                         self.experts_per_token)

    out = self._dispatch(tokens.astype(self.dtype), router.experts)
    out = jnp.einsum("nkd,nk->nd", out.astype(jnp.float32), router.weights)

    aux = {
        "load_balancing_loss": load_balancing_loss(router, mask),
        "router_z_loss": router_z_loss(router.logits, mask),
        "expert_load": expert_load(router.experts, mask, self.num_experts),
        "expert_slot_counts": expert_slot_counts(
            router.experts, mask, self.num_experts).reshape(
                batch, length, self.num_experts),
    }
    return out.astype(self.dtype).reshape(batch, length, d_model), aux

  def _dispatch(self, tokens: jax.Array, experts: jax.Array) -> jax.Array:
    """Runs each of the N * k token copies through its expert: [N, k, D]."""
    k = self.experts_per_token
    # Copies are token-major: slot n * k + j is token n's j-th choice.
    routing = grouped.make_routing(experts.reshape(-1), self.num_experts,
                                   self.grouped_matmul)
    copies = routing.sort(jnp.repeat(tokens, k, axis=0))
    gate = routing.matmul_sorted(copies, self.gate[...])
    up = routing.matmul_sorted(copies, self.up[...])
    hidden = jax.nn.silu(gate) * up
    out = routing.unsort(routing.matmul_sorted(hidden, self.down[...]))
    return out.reshape(tokens.shape[0], k, tokens.shape[1])
