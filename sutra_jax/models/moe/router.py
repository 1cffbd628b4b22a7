"""The router of the mixture of experts and its auxiliary losses.

The router is a float32 linear map from D to E logits followed by a softmax.
Each token goes to its k most probable experts, weighted by those
probabilities renormalised to sum to 1 (the Mixtral convention). Every
dispatch strategy (`dropless`, `capacity`, `expert_parallel`) takes the same
`RouterOutput`.

The auxiliary losses and the expert load are averages over the real tokens
of the whole batch (`token_mask` is 0 for padding). Under `jax.jit` the batch
is the global batch, so they do not depend on how the batch is sharded.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


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
