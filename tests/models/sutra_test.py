"""Tests for the whole SutraModel: data flow, packing, padding, paths."""

import dataclasses
import re

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel

TOL = dict(rtol=1e-5, atol=1e-5)


def _assert_vectors_close(actual, desired, rtol=1e-5):
  """Checks ||actual - desired|| <= rtol * ||desired|| for every token vector.

  Packing changes which rows share a matmul tile, so XLA may sum in another
  order. Elementwise tolerances then fail on entries near zero of vectors
  whose norm is large (core hidden states reach about 30).
  """
  actual = np.asarray(actual, np.float64)
  desired = np.asarray(desired, np.float64)
  error = np.linalg.norm(actual - desired, axis=-1)
  scale = np.linalg.norm(desired, axis=-1)
  assert np.all(error <= rtol * scale), (error / scale).max()

# Four languages in three groups.
CONFIG = ModelConfig(
    vocab_size=48, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=32, expert_mlp_dim=24, num_experts=8, experts_per_token=2,
    num_encoder_layers=1, num_core_layers=2, num_decoder_layers=1,
    num_language_groups=3, language_group_ids=(0, 1, 2, 1))


@pytest.fixture(scope="module")
def model(random_module):
  return random_module(lambda: SutraModel(CONFIG, rngs=nnx.Rngs(0)), seed=0)


@nnx.jit
def _forward(model, tokens, encoder_ids, decoder_ids, segment_ids, positions):
  return model(tokens, encoder_language_ids=encoder_ids,
               decoder_language_ids=decoder_ids, segment_ids=segment_ids,
               positions=positions)


def _inputs(seed, batch, length):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (batch, length)),
                       jnp.int32)
  languages = jnp.asarray(rng.integers(0, 4, (batch, length)), jnp.int32)
  return tokens, languages


def _unpacked(batch, length):
  """Segment ids and positions of unpacked, unpadded rows."""
  positions = jnp.tile(jnp.arange(length, dtype=jnp.int32), (batch, 1))
  return jnp.ones((batch, length), jnp.int32), positions


def test_output_shapes_and_dtypes(model):
  tokens, languages = _inputs(0, 2, 6)

  out = _forward(model, tokens, languages, languages, *_unpacked(2, 6))

  assert out.logits.shape == (2, 6, 48)
  assert out.logits.dtype == jnp.float32
  assert out.core_hidden.shape == (2, 6, 32)
  assert out.aux["load_balancing_loss"].shape == ()
  assert out.aux["router_z_loss"].shape == ()
  assert out.aux["expert_load"].shape == (2, 8)
  np.testing.assert_allclose(jnp.sum(out.aux["expert_load"], axis=-1), 1.0,
                             **TOL)


def test_default_segments_and_positions(model):
  tokens, languages = _inputs(1, 2, 6)

  default = nnx.jit(lambda m, t, l: m(
      t, encoder_language_ids=l, decoder_language_ids=l))(model, tokens,
                                                          languages)
  explicit = _forward(model, tokens, languages, languages, *_unpacked(2, 6))

  np.testing.assert_allclose(default.logits, explicit.logits, **TOL)


def test_packed_rows_equal_separate_rows(model):
  tokens, languages = _inputs(2, 2, 6)
  packed = _forward(model, tokens, languages, languages,
                    jnp.array([[1, 1, 1, 2, 2, 2]] * 2),
                    jnp.array([[0, 1, 2, 0, 1, 2]] * 2))

  def alone(start, stop):
    return _forward(model, tokens[:, start:stop], languages[:, start:stop],
                    languages[:, start:stop], *_unpacked(2, stop - start))

  _assert_vectors_close(packed.logits[:, :3], alone(0, 3).logits)
  _assert_vectors_close(packed.logits[:, 3:], alone(3, 6).logits)
  _assert_vectors_close(packed.core_hidden[:, 3:], alone(3, 6).core_hidden)


def test_positions_change_the_output(model):
  tokens, languages = _inputs(3, 2, 6)
  ones, continuous_positions = _unpacked(2, 6)

  restarted = _forward(model, tokens, languages, languages, ones,
                       jnp.array([[0, 1, 2, 0, 1, 2]] * 2))
  continuous = _forward(model, tokens, languages, languages, ones,
                        continuous_positions)

  np.testing.assert_allclose(restarted.logits[:, :3],
                             continuous.logits[:, :3], **TOL)
  assert float(jnp.max(jnp.abs(restarted.logits[:, 3:] -
                               continuous.logits[:, 3:]))) > 1e-4


def test_padding_is_ignored_by_logits_and_aux(model):
  tokens, languages = _inputs(4, 2, 4)
  # The same rows with two padding tokens of arbitrary content appended.
  junk, junk_languages = _inputs(5, 2, 2)
  padded = _forward(model, jnp.concatenate([tokens, junk], axis=1),
                    jnp.concatenate([languages, junk_languages], axis=1),
                    jnp.concatenate([languages, junk_languages], axis=1),
                    jnp.array([[1, 1, 1, 1, 0, 0]] * 2),
                    jnp.array([[0, 1, 2, 3, 0, 0]] * 2))

  unpadded = _forward(model, tokens, languages, languages, *_unpacked(2, 4))

  np.testing.assert_allclose(padded.logits[:, :4], unpadded.logits, **TOL)
  for name in ("load_balancing_loss", "router_z_loss", "expert_load"):
    np.testing.assert_allclose(padded.aux[name], unpadded.aux[name], **TOL,
                               err_msg=name)


def test_decoder_languages_do_not_reach_the_core(model):
  tokens, languages = _inputs(6, 2, 6)

  to_group_0 = _forward(model, tokens, languages, jnp.zeros_like(languages),
                        *_unpacked(2, 6))
  to_group_2 = _forward(model, tokens, languages, jnp.full_like(languages, 2),
                        *_unpacked(2, 6))

  np.testing.assert_array_equal(to_group_0.core_hidden, to_group_2.core_hidden)
  assert float(jnp.max(jnp.abs(to_group_0.logits - to_group_2.logits))) > 1e-4


def test_top_level_parameter_paths(model):
  params = {"/".join(map(str, path)): var for path, var in
            nnx.to_flat_state(nnx.state(model, nnx.Param))}

  assert {p.split("/")[0] for p in params} == {
      "embed", "encoder", "core", "decoder", "final_norm", "lm_head"}
  assert "core/layers/1/moe/gate" in params
  assert "encoder/layers/0/query" in params
  core_size = sum(var[...].size for p, var in params.items()
                  if re.match(r"^core/", p))
  d, h, k, dh, e, f = 32, 4, 2, 8, 8, 24
  # Two norms, attention, router and experts.
  per_layer = 2 * d + 2 * d * h * dh + 2 * d * k * dh + d * e + 3 * e * d * f
  assert core_size == 2 * per_layer


def test_tied_embeddings_drop_the_head():
  config = dataclasses.replace(CONFIG, tie_embeddings=True)
  tokens, languages = _inputs(7, 1, 3)

  abstract = nnx.eval_shape(lambda: SutraModel(config, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m: m(tokens, encoder_language_ids=languages,
                                   decoder_language_ids=languages), abstract)

  assert not hasattr(abstract, "lm_head")
  assert out.logits.shape == (1, 3, 48)


def test_bfloat16_model_returns_float32_logits():
  config = dataclasses.replace(CONFIG, dtype="bfloat16")
  tokens, languages = _inputs(8, 1, 3)

  abstract = nnx.eval_shape(lambda: SutraModel(config, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m: m(tokens, encoder_language_ids=languages,
                                   decoder_language_ids=languages), abstract)

  assert out.logits.dtype == jnp.float32
  assert out.core_hidden.dtype == jnp.bfloat16


def test_mismatched_input_shapes_raise(model):
  tokens, languages = _inputs(9, 2, 4)

  with pytest.raises(ValueError, match="segment_ids has shape"):
    model(tokens, encoder_language_ids=languages,
          decoder_language_ids=languages, segment_ids=jnp.ones((2, 3)))


def test_gradients_reach_every_parameter(model):
  tokens, languages = _inputs(10, 2, 4)

  def loss(model):
    out = model(tokens, encoder_language_ids=languages,
                decoder_language_ids=languages)
    return jnp.mean(out.logits**2) + out.aux["load_balancing_loss"]

  grads = nnx.jit(nnx.grad(loss))(model)

  for path, grad in nnx.to_flat_state(grads):
    assert np.all(np.isfinite(grad[...])), path
    assert np.any(grad[...] != 0), path


def test_remat_model_matches(model, random_module):
  config = dataclasses.replace(CONFIG, remat=True)
  remat = random_module(lambda: SutraModel(config, rngs=nnx.Rngs(0)), seed=0)
  tokens, languages = _inputs(11, 2, 6)

  expected = _forward(model, tokens, languages, languages, *_unpacked(2, 6))
  out = _forward(remat, tokens, languages, languages, *_unpacked(2, 6))

  np.testing.assert_allclose(out.logits, expected.logits, **TOL)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_core_matches_unrolled_core(model, random_module, remat):
  config = dataclasses.replace(CONFIG, scan_core_layers=True, remat=remat)
  scanned = random_module(lambda: SutraModel(config, rngs=nnx.Rngs(0)),
                          seed=0)
  tokens, languages = _inputs(12, 2, 6)
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  positions = jnp.array([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])

  def loss(model):
    out = model(tokens, encoder_language_ids=languages,
                decoder_language_ids=languages, segment_ids=segment_ids,
                positions=positions)
    return (jnp.mean(out.logits**2) + out.aux["load_balancing_loss"] +
            out.aux["router_z_loss"]), out

  grad_fn = nnx.jit(nnx.grad(loss, has_aux=True))
  expected_grads, expected = grad_fn(model)
  grads, out = grad_fn(scanned)

  np.testing.assert_allclose(out.logits, expected.logits, **TOL)
  for name in ("layer_load_balancing_loss", "layer_router_z_loss",
               "expert_load", "expert_slot_counts"):
    np.testing.assert_allclose(out.aux[name], expected.aux[name],
                               err_msg=name, **TOL)
  expected_flat = dict(nnx.to_flat_state(expected_grads))
  for path, grad in nnx.to_flat_state(grads):
    np.testing.assert_allclose(grad[...], expected_flat[path][...],
                               err_msg=str(path), **TOL)
