"""Tests for greedy generation with per-request languages."""

from flax import nnx
import numpy as np
import pytest

from sutra_jax.inference import generate
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel


def _tiny_model():
  config = ModelConfig(
      vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
      mlp_dim=48, expert_mlp_dim=32, num_experts=4, experts_per_token=2,
      num_encoder_layers=1, num_core_layers=1, num_decoder_layers=1,
      num_language_groups=3, language_group_ids=(0, 1, 2))
  return SutraModel(config, rngs=nnx.Rngs(3))


def _reference_greedy(model, request, max_new_tokens, stop_ids):
  """Runs the unbatched, unpadded model once per new token."""
  tokens = [generate.BOS_ID, *request.prompt_ids]
  new = []
  for _ in range(max_new_tokens):
    length = len(tokens)
    prompt_positions = len(request.prompt_ids) + 1
    encoder_ids = [request.prompt_language_id] * prompt_positions + [
        request.output_language_id] * (length - prompt_positions)
    decoder_ids = [request.prompt_language_id] * (prompt_positions - 1) + [
        request.output_language_id] * (length - prompt_positions + 1)
    output = model(np.asarray([tokens], np.int32),
                   encoder_language_ids=np.asarray([encoder_ids], np.int32),
                   decoder_language_ids=np.asarray([decoder_ids], np.int32))
    next_id = int(np.argmax(np.asarray(output.logits[0, -1])))
    if next_id in stop_ids:
      break
    new.append(next_id)
    tokens.append(next_id)
  return new


def test_greedy_batch_matches_unbatched_reference():
  model = _tiny_model()
  requests = [
      generate.Request([5, 6, 7, 8, 9], 0, 0),
      generate.Request([10, 11], 1, 2),
      generate.Request([12, 13, 14], 2, 1),
  ]
  outputs = generate.greedy_generate(model, requests, max_new_tokens=4)
  for request, output in zip(requests, outputs):
    assert output == _reference_greedy(model, request, 4, ())


def test_output_language_changes_the_continuation():
  model = _tiny_model()
  prompt = [5, 6, 7, 8]
  outputs = generate.greedy_generate(
      model, [generate.Request(prompt, 0, lang) for lang in range(3)],
      max_new_tokens=8)
  assert len({tuple(o) for o in outputs}) > 1


def test_stop_token_ends_row_and_is_dropped():
  model = _tiny_model()
  request = generate.Request([5, 6, 7], 0, 0)
  free = generate.greedy_generate(model, [request], max_new_tokens=6)[0]
  stop = free[2]
  stopped = generate.greedy_generate(model, [request], max_new_tokens=6,
                                     stop_ids=[stop])[0]
  assert stopped == free[:free.index(stop)]


def test_max_new_tokens_must_be_positive():
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate.greedy_generate(_tiny_model(), [generate.Request([1], 0, 0)],
                             max_new_tokens=0)


def test_min_new_tokens_blocks_early_stop():
  model = _tiny_model()
  request = generate.Request([5, 6, 7], 0, 0)
  free = generate.greedy_generate(model, [request], max_new_tokens=6)[0]
  first = free[0]

  stopped = generate.greedy_generate(model, [request], max_new_tokens=6,
                                     stop_ids=[first])[0]
  delayed = generate.greedy_generate(model, [request], max_new_tokens=6,
                                     stop_ids=[first], min_new_tokens=2)[0]

  assert stopped == []
  assert len(delayed) >= 2
  assert first not in delayed[:2]
