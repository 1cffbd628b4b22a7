"""Tests for RMSNorm, the rotary embedding, attention, the MLP and embedding."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax.errors import ConfigError
from sutra_jax.models import layers
from sutra_jax.models.config import ModelConfig

TOL = dict(rtol=1e-5, atol=1e-5)

CONFIG = ModelConfig(
    vocab_size=32, d_model=16, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=24, expert_mlp_dim=24, num_experts=4, experts_per_token=2,
    num_encoder_layers=0, num_core_layers=1, num_decoder_layers=0)


def _rotary_reference(x, positions, theta):
  """Rotates pairs (i, i + Dh/2) as complex numbers x_i + j x_(i + Dh/2)."""
  half = x.shape[-1] // 2
  pairs = x[..., :half] + 1j * x[..., half:]
  frequency = theta**(-np.arange(half) / half)
  angle = positions[..., None, None] * frequency
  rotated = pairs * np.exp(1j * angle)
  return np.concatenate([rotated.real, rotated.imag], axis=-1)


def _attention_reference(module, x, segment_ids, positions):
  """Loops over batch rows and query heads with NumPy in float64."""
  x = np.asarray(x, np.float64)
  wq, wk, wv, wo = (np.asarray(w[...], np.float64) for w in
                    (module.query, module.key, module.value, module.out))
  num_heads, num_kv = wq.shape[1], wk.shape[1]
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    q = _rotary_reference(np.einsum("ld,dhk->lhk", x[b], wq), positions[b],
                          module.rope_theta)
    k = _rotary_reference(np.einsum("ld,dhk->lhk", x[b], wk), positions[b],
                          module.rope_theta)
    v = np.einsum("ld,dhk->lhk", x[b], wv)
    seg = segment_ids[b]
    for h in range(num_heads):
      kv = h // (num_heads // num_kv)
      for i in range(x.shape[1]):
        allowed = [j for j in range(i + 1) if seg[j] == seg[i] and seg[j]]
        if not allowed:
          continue
        scores = np.array([q[i, h] @ k[j, kv] for j in allowed])
        scores /= np.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        head = probs @ v[allowed, kv]
        out[b, i] += head @ wo[h]
  return out


def _attention_module(seed=0):
  return layers.Attention(CONFIG, rngs=nnx.Rngs(seed))


@nnx.jit
def _attend(module, x, segment_ids, positions):
  # One compilation per input shape instead of op-by-op dispatch.
  return module(x, segment_ids, positions)


def test_rms_norm_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 5, 16)).astype(np.float32)
  scale = rng.standard_normal(16).astype(np.float32)

  out = layers.rms_norm(jnp.asarray(x), jnp.asarray(scale), 1e-5, jnp.float32)

  expected = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-5) * scale
  np.testing.assert_allclose(out, expected, **TOL)


def test_rotary_matches_complex_rotation():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
  positions = rng.integers(0, 50, (2, 5))

  out = layers.apply_rotary(jnp.asarray(x), jnp.asarray(positions), 10_000.0)

  np.testing.assert_allclose(out, _rotary_reference(x, positions, 10_000.0),
                             **TOL)


def test_rotary_scores_depend_on_relative_position():
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)

  def score(query_position, key_position):
    rq = layers.apply_rotary(q, jnp.array([[query_position]]), 10_000.0)
    rk = layers.apply_rotary(k, jnp.array([[key_position]]), 10_000.0)
    return float(jnp.sum(rq * rk))

  np.testing.assert_allclose(score(7, 3), score(4, 0), **TOL)
  np.testing.assert_allclose(score(12, 8), score(4, 0), **TOL)
  assert abs(score(7, 3) - score(7, 5)) > 1e-3


def test_attention_mask_is_causal_within_segments():
  mask = layers.attention_mask(jnp.array([[1, 1, 2, 2, 0]]))

  expected = np.array([
      [1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 1, 0, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 0],
  ], bool)
  np.testing.assert_array_equal(mask[0], expected)


def test_attention_matches_per_head_loop():
  module = _attention_module()
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 6, 16)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  positions = np.array([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])

  out = _attend(module, jnp.asarray(x), jnp.asarray(segment_ids),
                jnp.asarray(positions))

  expected = _attention_reference(module, x, segment_ids, positions)
  # Padding rows are zero in the reference and unspecified in the module.
  real = segment_ids != 0
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], **TOL)
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize("query_chunk", [1, 3, 4])
def test_chunked_attention_matches_per_head_loop(query_chunk):
  # 3 and 4 do not divide the 7 positions, so the last block is padded.
  chunked = dataclasses.replace(CONFIG, attention_query_chunk=query_chunk)
  module = layers.Attention(chunked, rngs=nnx.Rngs(5))
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 7, 16)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1]])
  positions = np.array([[0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 6]])

  out = _attend(module, jnp.asarray(x), jnp.asarray(segment_ids),
                jnp.asarray(positions))

  expected = _attention_reference(module, x, segment_ids, positions)
  real = segment_ids != 0
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], **TOL)


def test_chunked_attention_gradients_equal_full_attention():
  rng = np.random.default_rng(6)
  query, key, value = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                       for shape in ((2, 9, 4, 8), (2, 9, 2, 8), (2, 9, 2, 8)))
  segment_ids = jnp.array([[1] * 5 + [2] * 3 + [0], [1] * 9])
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0], list(range(9))])
  weights = jnp.asarray(rng.standard_normal((2, 9, 4, 8)), jnp.float32)
  weights = weights * (segment_ids != 0)[:, :, None, None]

  def loss(query_chunk, q, k, v):
    heads = layers.rotary_attention(q, k, v, segment_ids, positions, 1e4,
                                    query_chunk)
    return jnp.sum(heads * weights)

  full = jax.grad(functools.partial(loss, 0), argnums=(0, 1, 2))(
      query, key, value)
  chunked = jax.jit(jax.grad(functools.partial(loss, 4), argnums=(0, 1, 2)))(
      query, key, value)

  for name, got, want in zip("qkv", chunked, full):
    np.testing.assert_allclose(got, want, err_msg=name, **TOL)


def test_negative_attention_query_chunk_is_rejected():
  with pytest.raises(ConfigError, match="attention_query_chunk = -1"):
    dataclasses.replace(CONFIG, attention_query_chunk=-1)


def test_packed_segments_equal_separate_rows():
  module = _attention_module(seed=1)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((1, 7, 16)), jnp.float32)
  packed = _attend(module, x, jnp.array([[1, 1, 1, 2, 2, 2, 0]]),
                  jnp.array([[0, 1, 2, 0, 1, 2, 0]]))

  first = _attend(module, x[:, :3], jnp.ones((1, 3), jnp.int32), jnp.arange(3)[None])
  second = _attend(module, x[:, 3:6], jnp.ones((1, 3), jnp.int32),
                   jnp.arange(3)[None])

  np.testing.assert_allclose(packed[:, :3], first, **TOL)
  np.testing.assert_allclose(packed[:, 3:6], second, **TOL)


def test_attention_sees_only_relative_positions():
  module = _attention_module(seed=2)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((1, 5, 16)), jnp.float32)
  segment_ids = jnp.ones((1, 5), jnp.int32)
  positions = jnp.arange(5)[None]

  base = _attend(module, x, segment_ids, positions)
  shifted = _attend(module, x, segment_ids, positions + 3)
  stretched = _attend(module, x, segment_ids, positions * 2)

  np.testing.assert_allclose(shifted, base, **TOL)
  assert float(jnp.max(jnp.abs(stretched - base))) > 1e-3


def test_mlp_matches_numpy():
  module = layers.MLP(16, 24, dtype=jnp.float32, param_dtype=jnp.float32,
                      rngs=nnx.Rngs(0))
  x = np.random.default_rng(6).standard_normal((4, 16)).astype(np.float32)

  out = module(jnp.asarray(x))

  gate = x @ np.asarray(module.gate[...])
  up = x @ np.asarray(module.up[...])
  silu = gate / (1 + np.exp(-gate))
  np.testing.assert_allclose(out, (silu * up) @ np.asarray(module.down[...]),
                             **TOL)


def test_embed_lookup_and_tied_logits():
  module = layers.Embed(10, 4, dtype=jnp.float32, param_dtype=jnp.float32,
                        rngs=nnx.Rngs(0))
  table = np.asarray(module.embedding[...])
  tokens = jnp.array([[3, 0, 9]])

  np.testing.assert_array_equal(module(tokens)[0], table[[3, 0, 9]])
  logits = module.attend(module(tokens))
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits[0], table[[3, 0, 9]] @ table.T, **TOL)


def test_params_carry_logical_axis_names():
  module = _attention_module()

  names = {path[-1]: var.get_metadata()["out_sharding"]
           for path, var in nnx.to_flat_state(nnx.state(module))}

  assert names == {
      "query": ("embed", "heads", "head_dim"),
      "key": ("embed", "kv_heads", "head_dim"),
      "value": ("embed", "kv_heads", "head_dim"),
      "out": ("heads", "head_dim", "embed"),
  }


def test_bfloat16_activations_keep_float32_params():
  config = dataclasses.replace(CONFIG, dtype="bfloat16")
  module = layers.Attention(config, rngs=nnx.Rngs(0))
  x = jnp.ones((1, 3, 16), jnp.float32)

  out = _attend(module, x, jnp.ones((1, 3), jnp.int32), jnp.arange(3)[None])

  assert out.dtype == jnp.bfloat16
  assert module.query[...].dtype == jnp.float32
