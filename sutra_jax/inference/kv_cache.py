"""Key/value cache and the cached forward pass of `SutraModel`.

Every attention layer of the model keeps the rotated keys and the values of
the tokens it has seen in a fixed-size buffer [B, S, K, Dh]. These layers
are the language encoder blocks, the concept core and the language decoder
blocks, and S is the longest sequence the caller will decode. A forward pass over a chunk of new
tokens [B, T] (the whole prompt, then one token per step) writes their keys
and values at their positions and attends over the buffer, so a step costs
O(S) attention work instead of a full forward pass over the prefix.

Rows are left-aligned: row b's token at position p lives in slot p. A query
at position p sees the slots 0..p, which are written before it runs, because
each row writes its slots in order: the prompt first (padded rows write
throw-away keys past their prompt, which later steps overwrite before any
query can see them), then one slot per generated token.

The layers' own projections (`Attention.project_qkv`, `LanguageBlock.
project_qkv` and friends) are used, so the cached pass computes the same
function as `SutraModel.__call__`; the tests compare them at every step.

NOTE: the concept core's dropless MoE routes each token independently of
the others, which is what makes a one-token step equal to the full pass. A
capacity-limited dispatch, whose drops depend on the whole batch, would not
have this property.
"""

import flax.struct
import jax
import jax.numpy as jnp

from sutra_jax.models.config import ModelConfig
from sutra_jax.models.layers import apply_rotary
from sutra_jax.models.layers import dot_product_attention


@flax.struct.dataclass
class KVCache:
  """Keys and values of every attention layer, in model order.

  The layers are the encoder blocks, then the core layers, then the decoder
  blocks.

  Attributes:
    keys: one [B, S, K, Dh] buffer per layer, rotated by position.
    values: one [B, S, K, Dh] buffer per layer.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]

  @property
  def max_length(self) -> int:
    """S, the number of slots per row."""
    return self.keys[0].shape[1] if self.keys else 0


def num_attention_layers(config: ModelConfig) -> int:
  return (config.num_encoder_layers + config.num_core_layers +
          config.num_decoder_layers)


def init_cache(config: ModelConfig, batch: int, max_length: int) -> KVCache:
  """Returns a zero cache of `max_length` slots for `batch` rows."""
  shape = (batch, max_length, config.num_kv_heads, config.head_dim)
  layers = num_attention_layers(config)
  zeros = lambda: jnp.zeros(shape, config.activation_dtype)
  return KVCache(keys=tuple(zeros() for _ in range(layers)),
                 values=tuple(zeros() for _ in range(layers)))


def _cached_attention(query, key, value, cache_key, cache_value, positions,
                      theta):
  """Writes the chunk's keys and values into the cache and attends over it.

  Args:
    query: [B, T, H, Dh] unrotated queries of the chunk.
    key: [B, T, K, Dh] unrotated keys of the chunk.
    value: [B, T, K, Dh] values of the chunk.
    cache_key: [B, S, K, Dh] rotated keys of earlier positions.
    cache_value: [B, S, K, Dh].
    positions: [B, T] int32 position (and slot) of each chunk token, < S.
    theta: the rotary base wavelength.

  Returns:
    (heads [B, T, H, Dh], updated cache_key, updated cache_value).
  """
  query = apply_rotary(query, positions, theta)
  key = apply_rotary(key, positions, theta)
  rows = jnp.arange(positions.shape[0])[:, None]
  cache_key = cache_key.at[rows, positions].set(key.astype(cache_key.dtype))
  cache_value = cache_value.at[rows, positions].set(
      value.astype(cache_value.dtype))
  slots = jnp.arange(cache_key.shape[1], dtype=positions.dtype)
  # [B, T, S]: causal over slots; every slot <= position is already written.
  mask = slots[None, None, :] <= positions[:, :, None]
  heads = dot_product_attention(query, cache_key, cache_value, mask)
  return heads, cache_key, cache_value


def _language_stack(stack, x, language_ids, positions, cache, layer_offset,
                    keys, values):
  """Runs a `LanguageStack` over the chunk x [B, T, D] with the cache."""
  if not stack.layers:
    return x
  batch, length, d_model = x.shape
  routing = stack.routing(language_ids)
  for i, block in enumerate(stack.layers):
    index = layer_offset + i
    flat = x.reshape(batch * length, d_model).astype(block.dtype)
    query, key, value = block.project_qkv(flat, routing, batch, length)
    heads, keys[index], values[index] = _cached_attention(
        query, key, value, cache.keys[index], cache.values[index], positions,
        block.rope_theta)
    x = block.add_attention_and_mlp(flat, heads, routing).reshape(
        batch, length, d_model)
  return x


def _core(core, x, positions, cache, layer_offset, keys, values):
  """Runs the concept core over the chunk x [B, T, D] with the cache."""
  token_mask = jnp.ones(x.shape[:2], jnp.float32)
  for i, layer in enumerate(core.layers):
    index = layer_offset + i
    attention = layer.attention
    query, key, value = attention.project_qkv(layer.attention_norm(x))
    heads, keys[index], values[index] = _cached_attention(
        query, key, value, cache.keys[index], cache.values[index], positions,
        attention.rope_theta)
    x = x + attention.project_out(heads)
    update, _ = layer.moe(layer.mlp_norm(x), token_mask)
    x = x + update
  return x


def output_logits(model, hidden: jax.Array) -> jax.Array:
  """Applies the final norm and output head: [..., D] -> float32 [..., V]."""
  x = model.final_norm(hidden)
  if model.config.tie_embeddings:
    return model.embed.attend(x)
  return model.lm_head(x, out_dtype=jnp.float32)


def forward_cached(model, tokens: jax.Array, positions: jax.Array,
                   encoder_language_ids: jax.Array,
                   decoder_language_ids: jax.Array,
                   cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Runs the model over a chunk of tokens that continues the cached rows.

  Args:
    model: a `SutraModel`.
    tokens: [B, T] int32 token ids of the chunk.
    positions: [B, T] int32 position of each token, which is also its cache
      slot. Each row's chunk must continue that row's written slots.
    encoder_language_ids: [B, T] language id of each token.
    decoder_language_ids: [B, T] language id of the token that each
      position predicts.
    cache: the cache of the earlier positions.

  Returns:
    (hidden [B, T, D] output of the decoder blocks before the final norm,
    the updated cache). `output_logits` maps the hidden states to logits.
  """
  config = model.config
  keys, values = list(cache.keys), list(cache.values)
  x = model.embed(tokens)
  x = _language_stack(model.encoder, x, encoder_language_ids, positions,
                      cache, 0, keys, values)
  x = _core(model.core, x, positions, cache, config.num_encoder_layers, keys,
            values)
  x = _language_stack(model.decoder, x, decoder_language_ids, positions,
                      cache, config.num_encoder_layers +
                      config.num_core_layers, keys, values)
  return x, KVCache(keys=tuple(keys), values=tuple(values))
