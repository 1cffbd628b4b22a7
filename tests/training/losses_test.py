"""Tests of the loss terms against NumPy loop references."""

import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax.data import example_kinds
from sutra_jax.errors import ConfigError
from sutra_jax.training import losses

TEXT, TRANSLATION, PARALLEL = (example_kinds.TEXT, example_kinds.TRANSLATION,
                               example_kinds.PARALLEL)


def test_token_terms_match_loop_reference():
  rng = np.random.default_rng(0)
  token_loss = rng.uniform(0, 5, (3, 10)).astype(np.float32)
  weights = rng.integers(0, 2, (3, 10)).astype(np.float32)
  kinds = rng.integers(0, 3, (3, 10)).astype(np.int32)

  terms = losses.token_terms(jnp.asarray(token_loss), jnp.asarray(weights),
                             jnp.asarray(kinds))

  text = [token_loss[b, t] for b in range(3) for t in range(10)
          if weights[b, t] and kinds[b, t] != TRANSLATION]
  translation = [token_loss[b, t] for b in range(3) for t in range(10)
                 if weights[b, t] and kinds[b, t] == TRANSLATION]
  np.testing.assert_allclose(terms["next_token_loss"], np.mean(text),
                             rtol=1e-6)
  np.testing.assert_allclose(terms["translation_loss"], np.mean(translation),
                             rtol=1e-6)
  assert terms["next_token_tokens"] == len(text)
  assert terms["translation_tokens"] == len(translation)


def test_translation_term_reads_target_side_only():
  # One translation row as the feature converter packs it: source tokens
  # (positions 0-2) carry weight 0, target tokens (3-5) weight 1, then text.
  weights = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 0, 0]], np.float32)
  kinds = np.array([[1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
  token_loss = np.array([[1e6, 1e6, 1e6, 1.0, 2.0, 4.0, 7.0, 9.0, 1e6, 1e6]],
                        np.float32)

  terms = losses.token_terms(jnp.asarray(token_loss), jnp.asarray(weights),
                             jnp.asarray(kinds))

  assert float(terms["translation_loss"]) == pytest.approx(7.0 / 3, rel=1e-7)
  assert float(terms["next_token_loss"]) == 8.0
  assert float(terms["translation_tokens"]) == 3.0


def test_empty_terms_are_zero():
  zeros = jnp.zeros((2, 4))
  terms = losses.token_terms(zeros + 3.0, zeros, zeros.astype(jnp.int32))
  assert float(terms["next_token_loss"]) == 0.0
  assert float(terms["translation_loss"]) == 0.0


# Two rows. Row 0: text (segment 1), pair (segments 2 and 3), pair (4 and 5).
# Row 1: pair (1 and 2), then a second sentence whose first was cut off
# (segment 3, pair id 2, which the loss must ignore), then padding.
SEGMENTS = np.array([[1, 1, 2, 2, 3, 3, 3, 4, 5, 5],
                     [1, 1, 1, 2, 2, 3, 3, 0, 0, 0]], np.int32)
PAIRS = np.array([[0, 0, 2, 2, 2, 2, 2, 4, 4, 4],
                  [1, 1, 1, 1, 1, 2, 2, 0, 0, 0]], np.int32)


def _reference_pairs(hidden):
  """Loops over rows and pair ids; returns [(first, second)] mean states."""
  pairs = []
  for b in range(hidden.shape[0]):
    for p in sorted(set(PAIRS[b]) - {0}):
      first = [hidden[b, t] for t in range(10)
               if PAIRS[b, t] == p and SEGMENTS[b, t] == p]
      second = [hidden[b, t] for t in range(10)
                if PAIRS[b, t] == p and SEGMENTS[b, t] == p + 1]
      if first and second:
        pairs.append((np.mean(first, axis=0), np.mean(second, axis=0)))
  return pairs


def _cos(a, b):
  return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_pooled_pairs_match_loop_reference():
  hidden = np.random.default_rng(1).normal(size=(2, 10, 6)).astype(np.float32)
  first, second, valid = losses.pooled_pairs(
      jnp.asarray(hidden), jnp.asarray(SEGMENTS), jnp.asarray(PAIRS))
  reference = _reference_pairs(hidden)
  assert int(valid.sum()) == len(reference) == 3
  got = [(np.asarray(first[i]), np.asarray(second[i]))
         for i in np.flatnonzero(np.asarray(valid))]
  for (a, b), (ra, rb) in zip(got, reference):
    np.testing.assert_allclose(a, ra, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, rb, rtol=1e-5, atol=1e-6)


def test_cosine_consistency_matches_reference():
  hidden = np.random.default_rng(2).normal(size=(2, 10, 6)).astype(np.float32)
  config = losses.LossConfig(consistency_weight=1.0, consistency="cosine")
  loss, count = losses.consistency_loss(jnp.asarray(hidden),
                                        jnp.asarray(SEGMENTS),
                                        jnp.asarray(PAIRS), config)
  reference = np.mean([1 - _cos(a, b) for a, b in _reference_pairs(hidden)])
  np.testing.assert_allclose(loss, reference, rtol=1e-5)
  assert float(count) == 3


def test_infonce_consistency_matches_reference():
  hidden = np.random.default_rng(3).normal(size=(2, 10, 6)).astype(np.float32)
  config = losses.LossConfig(consistency_weight=1.0, consistency="infonce",
                             consistency_temperature=0.2)
  loss, _ = losses.consistency_loss(jnp.asarray(hidden),
                                    jnp.asarray(SEGMENTS),
                                    jnp.asarray(PAIRS), config)

  pairs = _reference_pairs(hidden)
  n = len(pairs)
  similarity = np.array([[_cos(pairs[i][0], pairs[j][1]) / 0.2
                          for j in range(n)] for i in range(n)])

  def cross_entropy(logits):
    return np.mean([np.log(np.sum(np.exp(row))) - row[i]
                    for i, row in enumerate(logits)])

  reference = 0.5 * (cross_entropy(similarity) +
                     cross_entropy(similarity.T))
  np.testing.assert_allclose(loss, reference, rtol=1e-5)


def test_consistency_without_pairs_is_zero():
  hidden = jnp.ones((1, 4, 3))
  segments = jnp.array([[1, 1, 2, 0]])
  for kind in losses.CONSISTENCY_KINDS:
    config = losses.LossConfig(consistency=kind)
    loss, count = losses.consistency_loss(hidden, segments,
                                          jnp.zeros_like(segments), config)
    assert float(loss) == 0.0
    assert float(count) == 0.0


def test_weighted_terms_combine_with_gin_weights():
  rng = np.random.default_rng(4)
  hidden = rng.normal(size=(2, 10, 6)).astype(np.float32)
  token_loss = rng.uniform(0, 3, (2, 10)).astype(np.float32)
  kinds = np.where(PAIRS > 0, PARALLEL, TEXT).astype(np.int32)
  kinds[0, :2] = TRANSLATION
  batch = {"decoder_segment_ids": jnp.asarray(SEGMENTS),
           "decoder_loss_weights": jnp.asarray(SEGMENTS > 0, jnp.float32),
           "decoder_example_kinds": jnp.asarray(kinds),
           "decoder_pair_ids": jnp.asarray(PAIRS)}
  config = losses.LossConfig(next_token_weight=0.5, translation_weight=2.0,
                             consistency_weight=3.0)

  total, terms = losses.weighted_terms(jnp.asarray(token_loss),
                                       jnp.asarray(hidden), batch, config)

  expected = (0.5 * terms["next_token_loss"] +
              2.0 * terms["translation_loss"] +
              3.0 * terms["consistency_loss"])
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  np.testing.assert_allclose(terms["translation_loss"],
                             token_loss[0, :2].mean(), rtol=1e-6)


def test_missing_features_count_as_text():
  token_loss = jnp.asarray([[1.0, 2.0, 3.0]])
  batch = {"decoder_segment_ids": jnp.asarray([[1, 1, 0]]),
           "decoder_loss_weights": jnp.asarray([[1.0, 1.0, 0.0]])}
  total, terms = losses.weighted_terms(token_loss, jnp.zeros((1, 3, 2)),
                                       batch, losses.LossConfig())
  assert float(total) == pytest.approx(1.5)
  assert "consistency_loss" not in terms


@pytest.mark.parametrize("field, value", [
    ("translation_weight", -1.0), ("consistency", "l2"),
    ("consistency_temperature", 0.0)])
def test_loss_config_rejects_invalid_value(field, value):
  with pytest.raises(ConfigError, match=f"LossConfig.{field}"):
    losses.LossConfig(**{field: value})
