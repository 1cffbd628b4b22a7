"""Dense building blocks: parameters, RMSNorm, rotary embedding, attention,
SwiGLU MLP, embedding and output head.

Shape letters used in this package: B batch, L length, D d_model, H query
heads, K key/value heads, Dh head dim, F MLP hidden width, V vocabulary,
N flattened tokens (B * L), E experts, G language groups.

Parameters are stored in `param_dtype` and cast to the activation dtype at
use. Normalisation, softmax and logits run in float32.
"""

from typing import Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from sutra_jax.models.config import ModelConfig

# Added to masked attention scores. It is finite, so a query whose keys are
# all masked (a padding position) gets uniform weights instead of NaN.
_MASKED_SCORE = -1e30


def make_param(rngs: nnx.Rngs, init, shape: Sequence[int],
               names: Sequence[str | None], dtype) -> nnx.Param:
  """Creates a parameter annotated with logical axis names.

  Eager sharding is off so that a model can be built without a mesh;
  `sutra_jax.partitioning.create_sharded_model` places the parameters.

  Args:
    rngs: random streams, of which the `params` stream is used.
    init: a JAX initializer `(key, shape, dtype) -> array`.
    shape: the parameter shape.
    names: one logical axis name (or None) per dimension.
    dtype: the storage dtype.
  """
  if len(names) != len(shape):
    raise ValueError(f"axis names {names} do not match shape {shape}")
  annotated = nnx.with_partitioning(init, tuple(names), eager_sharding=False)
  return nnx.Param(annotated(rngs.params(), tuple(shape), dtype))


# Rematerialisation policies by gin name: what the backward pass may keep
# from the forward pass of a layer instead of recomputing it.
REMAT_POLICIES = {
    # Keep everything: no recomputation, the most memory.
    "none": None,
    # Keep only the layer's inputs and recompute the rest.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the outputs of matmuls without batch dimensions (the projections)
    # and recompute the cheap elementwise work and the attention scores.
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep all matmul outputs, attention scores included.
    "save_all_dots": jax.checkpoint_policies.dots_saveable,
}


def remat_layer(apply: Callable, policy: str) -> Callable:
  """Wraps `apply(layer, *args)` in `nnx.remat` with a named policy.

  Args:
    apply: a function whose first argument is an `nnx.Module`.
    policy: a key of `REMAT_POLICIES`.
  """
  if policy == "none":
    return apply
  return nnx.remat(apply, policy=REMAT_POLICIES[policy])


def kernel_init(in_axis=-2, out_axis=-1, batch_axis=()):
  """Truncated-normal initializer with variance 1 / fan_in."""
  return nnx.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis,
      batch_axis=batch_axis)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
  """Normalises the last axis by its root mean square, in float32.

  Args:
    x: [..., D] activations.
    scale: [D], or broadcastable to `x` (per-token scales of grouped norms).
    eps: added to the mean square.
    dtype: output dtype.
  """
  x = x.astype(jnp.float32)
  inverse_rms = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return (x * inverse_rms * scale.astype(jnp.float32)).astype(dtype)


class RMSNorm(nnx.Module):
  """Root-mean-square normalisation with a learned scale."""

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.scale = make_param(rngs, nnx.initializers.ones, (dim,), ("norm",),
                            param_dtype)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], self.eps, self.dtype)


def apply_rotary(x: jax.Array, positions: jax.Array,
                 theta: float) -> jax.Array:
  """Rotates feature pairs (i, i + Dh/2) by position-dependent angles.

  Pairs are split by halves, not interleaved: pair i is features i and
  i + Dh/2, and it turns by `position * theta ** (-2i / Dh)`. Dot products
  of rotated queries and keys depend only on the difference of their
  positions. Checkpoints that use interleaved pairs need their query and key
  weights permuted.

  Args:
    x: [B, L, heads, Dh] queries or keys, with Dh even.
    positions: [B, L] integer positions. Packed rows restart them at 0 for
      each segment.
    theta: the base wavelength.

  Returns:
    The rotated `x`, in its own dtype.
  """
  half = x.shape[-1] // 2
  inverse_frequency = theta**(-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions.astype(jnp.float32)[..., None] * inverse_frequency
  sin = jnp.sin(angle)[:, :, None, :]
  cos = jnp.cos(angle)[:, :, None, :]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """Builds the causal, segment-aware mask of a packed batch.

  Args:
    segment_ids: [B, L], where 0 marks padding. Tokens attend only to
      earlier or equal positions of their own segment.

  Returns:
    [B, L, L] bool, indexed [batch, query, key].
  """
  indices = jnp.arange(segment_ids.shape[1])
  return _block_mask(segment_ids, indices, segment_ids)


def _block_mask(query_segments: jax.Array, query_indices: jax.Array,
                key_segments: jax.Array) -> jax.Array:
  """Builds the mask of Q queries against all L keys of their rows.

  Args:
    query_segments: [B, Q] segment ids of the queries.
    query_indices: [Q] positions of the queries in their rows.
    key_segments: [B, L] segment ids of the keys, 0 for padding.

  Returns:
    [B, Q, L] bool.
  """
  key_indices = jnp.arange(key_segments.shape[1])
  same_segment = query_segments[:, :, None] == key_segments[:, None, :]
  real_key = (key_segments != 0)[:, None, :]
  causal = query_indices[:, None] >= key_indices[None, :]
  return same_segment & real_key & causal[None]


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """Grouped-query softmax attention with scores in float32.

  Query head h reads key/value head h // (H / K), so consecutive query heads
  share a key/value head.

  Args:
    query: [B, L, H, Dh].
    key: [B, L, K, Dh], where K divides H.
    value: [B, L, K, Dh].
    mask: [B, L, L] bool, True where a query may attend to a key.

  Returns:
    [B, L, H, Dh] in the dtype of `value`.
  """
  batch, length, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  grouped = query.reshape(batch, length, num_kv_heads,
                          num_heads // num_kv_heads, head_dim)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", grouped, key,
                      preferred_element_type=jnp.float32)
  scores = scores * head_dim**-0.5
  scores = jnp.where(mask[:, None, None], scores, _MASKED_SCORE)
  probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, value)
  return out.reshape(batch, length, num_heads, head_dim)


def chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                      segment_ids: jax.Array, query_chunk: int) -> jax.Array:
  """Computes `dot_product_attention` one block of queries at a time.

  Full attention keeps [B, H, L, L] scores, and their gradient, for a whole
  layer: at L = 4096 that is 64 MiB per row and head in float32. Here the
  queries run in blocks of `query_chunk` rows, and each block is recomputed
  in the backward pass, so a block's [B, H, C, L] scores live only while it
  runs. Every query still attends to all keys, so the result is that of
  full attention. The last block is padded when C does not divide L.

  The blocks are an unrolled `lax.scan`: XLA's cost analysis counts the
  body of a loop once, and unrolled every block is counted. On the 8x7B
  v5p step the unrolled blocks used no more memory than the loop did.

  Args:
    query: [B, L, H, Dh].
    key: [B, L, K, Dh].
    value: [B, L, K, Dh].
    segment_ids: [B, L] int, 0 for padding.
    query_chunk: C, queries per block.

  Returns:
    [B, L, H, Dh] in the dtype of `value`.
  """
  batch, length, num_heads, head_dim = query.shape
  num_blocks = -(-length // query_chunk)
  pad = num_blocks * query_chunk - length
  # Padded queries get segment 0, which matches no real key.
  query = jnp.pad(query, ((0, 0), (0, pad), (0, 0), (0, 0)))
  query_segments = jnp.pad(segment_ids, ((0, 0), (0, pad)))
  blocks = (
      query.reshape(batch, num_blocks, query_chunk, num_heads,
                    head_dim).swapaxes(0, 1),
      query_segments.reshape(batch, num_blocks, query_chunk).swapaxes(0, 1),
      jnp.arange(num_blocks) * query_chunk)

  def attend_block(block):
    block_query, block_segments, start = block
    mask = _block_mask(block_segments, start + jnp.arange(query_chunk),
                       segment_ids)
    return dot_product_attention(block_query, key, value, mask)

  attend_block = jax.checkpoint(attend_block, prevent_cse=False)
  _, out = jax.lax.scan(lambda carry, block: (carry, attend_block(block)),
                        None, blocks, unroll=True)
  out = out.swapaxes(0, 1).reshape(batch, num_blocks * query_chunk, num_heads,
                                   head_dim)
  return out[:, :length]


def rotary_attention(query, key, value, segment_ids, positions,
                     theta: float, query_chunk: int = 0) -> jax.Array:
  """Applies the rotary embedding and masked attention to projected heads.

  Args:
    query: [B, L, H, Dh].
    key: [B, L, K, Dh].
    value: [B, L, K, Dh].
    segment_ids: [B, L] int, 0 for padding.
    positions: [B, L] int rotary positions.
    theta: the rotary base wavelength.
    query_chunk: queries per block of `chunked_attention` when positive
      and below L; otherwise all queries at once.

  Returns:
    [B, L, H, Dh].
  """
  query = apply_rotary(query, positions, theta)
  key = apply_rotary(key, positions, theta)
  if 0 < query_chunk < query.shape[1]:
    return chunked_attention(query, key, value, segment_ids, query_chunk)
  return dot_product_attention(query, key, value, attention_mask(segment_ids))


class Attention(nnx.Module):
  """Grouped-query self-attention with rotary positions and a packing mask.

  Parameters: `query` [D, H, Dh], `key` and `value` [D, K, Dh], `out`
  [H, Dh, D].
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, h, k, dh = (config.d_model, config.num_heads, config.num_kv_heads,
                   config.head_dim)
    dtype = config.weight_dtype
    in_init = kernel_init(in_axis=0, out_axis=(1, 2))
    self.query = make_param(rngs, in_init, (d, h, dh),
                            ("embed", "heads", "head_dim"), dtype)
    self.key = make_param(rngs, in_init, (d, k, dh),
                          ("embed", "kv_heads", "head_dim"), dtype)
    self.value = make_param(rngs, in_init, (d, k, dh),
                            ("embed", "kv_heads", "head_dim"), dtype)
    self.out = make_param(rngs, kernel_init(in_axis=(0, 1), out_axis=2),
                          (h, dh, d), ("heads", "head_dim", "embed"), dtype)
    self.rope_theta = config.rope_theta
    self.query_chunk = config.attention_query_chunk
    self.dtype = config.activation_dtype

  def __call__(self, x: jax.Array, segment_ids: jax.Array,
               positions: jax.Array) -> jax.Array:
    """Maps [B, L, D] to [B, L, D]."""
    query, key, value = self.project_qkv(x)
    heads = rotary_attention(query, key, value, segment_ids, positions,
                             self.rope_theta, self.query_chunk)
    return self.project_out(heads)

  def project_qkv(self, x: jax.Array):
    """Projects [B, L, D] to heads, before the rotary embedding.

    The KV-cache decoder (`sutra_jax.inference.kv_cache`) calls this and
    `project_out` around its own cached attention.

    Returns:
      The query [B, L, H, Dh] and the key and value [B, L, K, Dh].
    """
    x = x.astype(self.dtype)
    project = lambda w: jnp.einsum("bld,dhk->blhk", x, w[...].astype(
        self.dtype))
    return project(self.query), project(self.key), project(self.value)

  def project_out(self, heads: jax.Array) -> jax.Array:
    """Maps attention heads [B, L, H, Dh] to the residual update [B, L, D]."""
    return jnp.einsum("blhk,hkd->bld", heads, self.out[...].astype(self.dtype))


class MLP(nnx.Module):
  """SwiGLU feed-forward layer: down(silu(x @ gate) * (x @ up))."""

  def __init__(self, d_model: int, hidden: int, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.gate = make_param(rngs, kernel_init(), (d_model, hidden),
                           ("embed", "mlp"), param_dtype)
    self.up = make_param(rngs, kernel_init(), (d_model, hidden),
                         ("embed", "mlp"), param_dtype)
    self.down = make_param(rngs, kernel_init(), (hidden, d_model),
                           ("mlp", "embed"), param_dtype)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps [..., D] to [..., D]."""
    x = x.astype(self.dtype)
    gate = x @ self.gate[...].astype(self.dtype)
    up = x @ self.up[...].astype(self.dtype)
    return (jax.nn.silu(gate) * up) @ self.down[...].astype(self.dtype)


class Embed(nnx.Module):
  """Token embedding table [V, D], also usable as a tied output head."""

  def __init__(self, vocab_size: int, d_model: int, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal",
                                             out_axis=0)
    self.embedding = make_param(rngs, init, (vocab_size, d_model),
                                ("vocab", "embed"), param_dtype)
    self.dtype = dtype

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Maps [B, L] token ids to [B, L, D]."""
    return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Maps [B, L, D] to float32 logits [B, L, V] with the transposed table."""
    return jnp.einsum("bld,vd->blv", x.astype(self.dtype),
                      self.embedding[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)


class Dense(nnx.Module):
  """A bias-free projection [in, out] with named axes."""

  def __init__(self, in_dim: int, out_dim: int, names: tuple[str, str], *,
               dtype, param_dtype, rngs: nnx.Rngs):
    self.kernel = make_param(rngs, kernel_init(), (in_dim, out_dim), names,
                             param_dtype)
    self.dtype = dtype

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    """Maps [..., in] to [..., out], accumulating in `out_dtype` if given."""
    return jnp.einsum("...i,io->...o", x.astype(self.dtype),
                      self.kernel[...].astype(self.dtype),
                      preferred_element_type=out_dtype)
