"""The loss terms of the training objective, weighted by gin.

Shapes: B batch, L sequence length, V vocabulary, D model width, P = B * L
pair slots.

The objective of a phase is

    next_token_weight * CE(text tokens)
  + translation_weight * CE(translation target tokens)
  + consistency_weight * consistency(parallel pairs)
  + load-balancing and router z-losses of the core (see `train_step`)

where each CE is the mean over the tokens it scores, and a term without
tokens in the batch is 0. `decoder_example_kinds` (see
`sutra_jax.data.example_kinds`) selects the term that scores a token, and
`decoder_loss_weights` is 0 on the source side of a translation, so the
translation term scores the target side only.

The concept-consistency term compares the two sentences of a parallel pair in
the concept core's space. The pipeline packs a pair as two consecutive
segments, and `decoder_pair_ids` carries, on the tokens of both, the segment
id of the first; each sentence is the mean of `core_hidden` over its real
tokens. `cosine` penalises 1 - cos(first, second) of each pair; `infonce` is
the symmetric contrastive loss (van den Oord et al., 2018; CLIP's form) in
which the other pairs of the global batch are the negatives.
"""

import dataclasses
from typing import Mapping

import gin
import jax
import jax.numpy as jnp
import optax

from sutra_jax.data import example_kinds
from sutra_jax.errors import ConfigError

CONSISTENCY_KINDS = ("cosine", "infonce")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Weights of the loss terms of a phase.

  Attributes:
    next_token_weight: weight of the next-token loss on text and on both
      sentences of parallel pairs.
    translation_weight: weight of the translation loss (target side only).
    consistency_weight: weight of the concept-consistency loss; 0 skips it.
    consistency: 'cosine' or 'infonce'.
    consistency_temperature: the InfoNCE temperature; 0.05 to 0.1 are common
      in sentence-embedding work.
  """

  next_token_weight: float = 1.0
  translation_weight: float = 1.0
  consistency_weight: float = 0.0
  consistency: str = "cosine"
  consistency_temperature: float = 0.1

  def __post_init__(self):
    for name in ("next_token_weight", "translation_weight",
                 "consistency_weight"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or (
          value < 0):
        raise ConfigError(f"invalid LossConfig.{name} = {value!r}: expected a"
                          " number >= 0")
    if self.consistency not in CONSISTENCY_KINDS:
      raise ConfigError(f"invalid LossConfig.consistency = "
                        f"{self.consistency!r}: use one of "
                        f"{', '.join(CONSISTENCY_KINDS)}")
    temperature = self.consistency_temperature
    if isinstance(temperature, bool) or not isinstance(
        temperature, (int, float)) or not temperature > 0:
      raise ConfigError(f"invalid LossConfig.consistency_temperature = "
                        f"{temperature!r}: expected a positive number")


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  total = jnp.sum(mask)
  return jnp.where(total > 0,
                   jnp.sum(values * mask) / jnp.maximum(total, 1e-9), 0.0)


def token_terms(token_loss: jax.Array, weights: jax.Array,
                kinds: jax.Array) -> dict[str, jax.Array]:
  """Splits the per-token cross-entropy into the next-token and translation
  terms.

  Args:
    token_loss: [B, L] float32 cross-entropy of each position.
    weights: [B, L] loss weights, 0 on padding and translation sources.
    kinds: [B, L] `example_kinds` of each token.

  Returns:
    `next_token_loss` and `translation_loss`, each the weighted mean over its
    tokens (0 without tokens), and their weight sums `next_token_tokens` and
    `translation_tokens`.
  """
  weights = weights.astype(jnp.float32)
  translation = weights * (kinds == example_kinds.TRANSLATION)
  text = weights * (kinds != example_kinds.TRANSLATION)
  return {
      "next_token_loss": _masked_mean(token_loss, text),
      "translation_loss": _masked_mean(token_loss, translation),
      "next_token_tokens": jnp.sum(text),
      "translation_tokens": jnp.sum(translation),
  }


def pooled_pairs(hidden: jax.Array, segment_ids: jax.Array,
                 pair_ids: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean-pools the two sentences of every parallel pair.

  Args:
    hidden: [B, L, D] core hidden states.
    segment_ids: [B, L] packed segment ids, 0 on padding.
    pair_ids: [B, L] on both sentences of a pair, the segment id of the
      first sentence; 0 elsewhere.

  Returns:
    `first` and `second`, [P, D] float32 mean states of the first and second
    sentence of pair slot (row b, pair id p) at index b * L + p - 1, and
    `valid` [P] bool, true where both sentences have tokens.
  """
  batch, length, width = hidden.shape
  row = jnp.arange(batch)[:, None] * length
  slot = (row + jnp.maximum(pair_ids, 1) - 1).reshape(-1)
  in_pair = pair_ids > 0
  is_first = (in_pair & (segment_ids == pair_ids)).reshape(-1)
  is_second = (in_pair & (segment_ids == pair_ids + 1)).reshape(-1)
  flat = hidden.reshape(-1, width).astype(jnp.float32)

  def pool(mask):
    mask = mask.astype(jnp.float32)
    sums = jax.ops.segment_sum(flat * mask[:, None], slot,
                               num_segments=batch * length)
    counts = jax.ops.segment_sum(mask, slot, num_segments=batch * length)
    return sums / jnp.maximum(counts, 1.0)[:, None], counts > 0

  first, has_first = pool(is_first)
  second, has_second = pool(is_second)
  return first, second, has_first & has_second


def _unit(x: jax.Array) -> jax.Array:
  # The epsilon keeps the gradient finite for an all-zero state.
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def cosine_consistency(first: jax.Array, second: jax.Array,
                       valid: jax.Array) -> jax.Array:
  """Returns the mean of 1 - cos(first, second) over valid pairs (0 if none).
  """
  cosine = jnp.sum(_unit(first) * _unit(second), axis=-1)
  return _masked_mean(1.0 - cosine, valid.astype(jnp.float32))


def infonce_consistency(first: jax.Array, second: jax.Array,
                        valid: jax.Array, temperature: float) -> jax.Array:
  """Returns the symmetric InfoNCE loss over the valid pairs (0 if none).

  Each first sentence must pick its own second sentence among all valid
  second sentences of the batch, by cosine similarity / `temperature`, and
  the other way round; the loss is the mean of both cross-entropies.
  """
  similarity = (_unit(first) @ _unit(second).T) / temperature  # [P, P]
  labels = jnp.arange(first.shape[0])
  # Invalid slots are neither candidates nor queries.
  blocked = jnp.finfo(jnp.float32).min
  forward = jnp.where(valid[None, :], similarity, blocked)
  backward = jnp.where(valid[None, :], similarity.T, blocked)
  mask = valid.astype(jnp.float32)
  return 0.5 * (
      _masked_mean(optax.softmax_cross_entropy_with_integer_labels(
          forward, labels), mask) +
      _masked_mean(optax.softmax_cross_entropy_with_integer_labels(
          backward, labels), mask))


def consistency_loss(hidden: jax.Array, segment_ids: jax.Array,
                     pair_ids: jax.Array, config: LossConfig
                     ) -> tuple[jax.Array, jax.Array]:
  """Returns (concept-consistency loss, number of valid pairs)."""
  first, second, valid = pooled_pairs(hidden, segment_ids, pair_ids)
  if config.consistency == "cosine":
    loss = cosine_consistency(first, second, valid)
  else:
    loss = infonce_consistency(first, second, valid,
                               config.consistency_temperature)
  return loss, jnp.sum(valid.astype(jnp.float32))


def weighted_terms(token_loss: jax.Array, core_hidden: jax.Array,
                   batch: Mapping[str, jax.Array], config: LossConfig
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns the weighted sum of the three terms, and each term.

  Args:
    token_loss: [B, L] float32 per-position cross-entropy.
    core_hidden: [B, L, D] `ModelOutput.core_hidden`.
    batch: the batch features; `decoder_example_kinds` and
      `decoder_pair_ids` count as all 0 when absent.
    config: the term weights.
  """
  zeros = jnp.zeros_like(batch["decoder_segment_ids"])
  kinds = batch.get("decoder_example_kinds", zeros)
  pair_ids = batch.get("decoder_pair_ids", zeros)
  terms = token_terms(token_loss, batch["decoder_loss_weights"], kinds)
  total = (config.next_token_weight * terms["next_token_loss"] +
           config.translation_weight * terms["translation_loss"])
  if config.consistency_weight:
    consistency, pairs = consistency_loss(
        core_hidden, batch["decoder_segment_ids"], pair_ids, config)
    total = total + config.consistency_weight * consistency
    terms.update(consistency_loss=consistency, consistency_pairs=pairs)
  return total, terms
