"""Tests for model log-likelihood scoring against a per-example loop."""

from flax import nnx
import numpy as np
import pytest

from sutra_jax import languages
from sutra_jax.errors import ConfigError
from sutra_jax.eval import scoring
from sutra_jax.inference.generate import BOS_ID
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel

_TABLE = languages.LanguageTable(codes=("en", "hi", "mr"),
                                 group_of=("en", "hi", "hi"))


def _model():
  config = ModelConfig(
      vocab_size=40, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
      mlp_dim=48, expert_mlp_dim=32, num_experts=4, experts_per_token=2,
      num_encoder_layers=1, num_core_layers=1, num_decoder_layers=1,
      num_language_groups=_TABLE.num_groups,
      language_group_ids=_TABLE.group_ids)
  return SutraModel(config, rngs=nnx.Rngs(5))


def _example(inputs, targets, language):
  return {"inputs": np.asarray(inputs, np.int32),
          "targets": np.asarray(targets, np.int32),
          "targets_language": language.encode("utf-8")}


_REFERENCE_WIDTH = 32


@nnx.jit
def _forward(model, tokens, language_ids):
  return model(tokens, encoder_language_ids=language_ids,
               decoder_language_ids=language_ids).logits


def _reference(model, example, language_id, max_length):
  """Scores one example with its own unpadded forward pass and NumPy."""
  full = list(example["inputs"]) + list(example["targets"])
  model_input = [BOS_ID] + full[:-1]
  first_target = len(example["inputs"])
  drop = max(len(model_input) - max_length, 0)
  model_input = model_input[drop:]
  # Right padding to one fixed width compiles the model once; causal
  # attention keeps it out of the positions read below.
  padded = np.zeros((1, _REFERENCE_WIDTH), np.int32)
  padded[0, :len(model_input)] = model_input
  ids = np.full((1, _REFERENCE_WIDTH), language_id, np.int32)
  logits = np.asarray(_forward(model, padded, ids)[0], np.float64)
  total = 0.0
  for position in range(first_target, len(full)):
    row = logits[position - drop]
    log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
    total += row[full[position]] - log_z
  return total


_EXAMPLES = [
    # Two one-token continuations of one prompt share a forward pass.
    _example([3, 4, 5, 6], [7], "en"),
    _example([3, 4, 5, 6], [8], "en"),
    _example([3, 4, 5, 6], [9, 10, 11], "en"),
    _example([12, 13], [14, 15], "mr"),
    _example(list(range(5, 30)), [31, 32], "hi"),
    # Not in the table: scored with the English blocks.
    _example([3, 4, 5, 6], [7], "sw"),
]


@pytest.mark.parametrize("max_length", [2048, 12])
def test_scores_match_loop_reference(max_length):
  model = _model()
  scorer = scoring.ModelScorer(model, _TABLE, batch_size=2,
                               max_length=max_length)
  scores = scorer(_EXAMPLES)
  codes = ["en", "en", "en", "mr", "hi", "en"]
  for example, code, score in zip(_EXAMPLES, codes, scores):
    reference = _reference(model, example, _TABLE.id(code), max_length)
    assert score == pytest.approx(reference, rel=1e-5, abs=1e-5)
  assert scores[0] == scores[5]
  assert scorer.routed_languages == {"sw": "en"}


def test_unknown_language_without_fallback_raises():
  scorer = scoring.ModelScorer(_model(), _TABLE, fallback_language=None)
  with pytest.raises(ConfigError, match="'sw' is not one of the model's"):
    scorer([_example([3], [4], "sw")])


def test_continuation_longer_than_max_length_raises():
  scorer = scoring.ModelScorer(_model(), _TABLE, max_length=3)
  with pytest.raises(ConfigError, match="raise --max_length"):
    scorer([_example([3, 4], [5, 6, 7, 8], "en")])
