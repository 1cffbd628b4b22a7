"""Tests for KV-cache decoding against the full forward pass."""

from flax import nnx
import numpy as np
import pytest

from sutra_jax.errors import ConfigError
from sutra_jax.inference import decoding
from sutra_jax.inference import generate
from sutra_jax.inference.sampling import SamplingParams
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel


def _model(num_experts=4, experts_per_token=2, seed=3):
  config = ModelConfig(
      vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
      mlp_dim=48, expert_mlp_dim=32, num_experts=num_experts,
      experts_per_token=experts_per_token, num_encoder_layers=1,
      num_core_layers=2, num_decoder_layers=1, num_language_groups=3,
      language_group_ids=(0, 1, 2))
  return SutraModel(config, rngs=nnx.Rngs(seed))


_REQUESTS = (
    generate.Request([5, 6, 7, 8, 9, 10, 11, 12, 13], 0, 0),
    generate.Request([10, 11], 1, 2),
    generate.Request([12, 13, 14], 2, 1),
)


def _full_forward_logits(model, requests, new_tokens):
  """Logits of one full forward pass at each row's generating positions.

  Rows are right-padded without segment ids: causal attention keeps the
  padding out of the earlier positions, so each row's logits equal those of
  its unpadded sequence.
  """
  rows = []
  for request, new in zip(requests, new_tokens):
    n = len(request.prompt_ids)
    tokens = [generate.BOS_ID, *request.prompt_ids, *new[:-1]]
    p, o = request.prompt_language_id, request.output_language_id
    rows.append((tokens, [p] * (n + 1) + [o] * (len(tokens) - n - 1),
                 [p] * n + [o] * (len(tokens) - n)))
  width = max(len(tokens) for tokens, _, _ in rows)
  pad = lambda values: values + [0] * (width - len(values))
  arrays = [np.asarray([pad(row[i]) for row in rows], np.int32)
            for i in range(3)]
  logits = np.asarray(model(arrays[0], encoder_language_ids=arrays[1],
                            decoder_language_ids=arrays[2]).logits)
  return [logits[row, len(r.prompt_ids):len(r.prompt_ids) + len(new)]
          for row, (r, new) in enumerate(zip(requests, new_tokens))]


# Every test decodes the same three prompts for _STEPS tokens, so the tests
# share a few compiled decoding programs.
_STEPS = 6


@pytest.fixture(scope="module", params=[(1, 1), (4, 2)], ids=["dense", "moe"])
def decoded(request):
  """(model, greedy results) for a dense and a mixture-of-experts core."""
  model = _model(*request.param)
  return model, decoding.generate(model, _REQUESTS, max_new_tokens=_STEPS,
                                  return_logits=True)


def test_cached_logits_match_full_forward(decoded):
  model, results = decoded
  references = _full_forward_logits(model, _REQUESTS,
                                    [r.tokens for r in results])
  for result, reference in zip(results, references):
    assert len(result.tokens) == _STEPS
    assert result.finish_reason == decoding.FINISH_LENGTH
    np.testing.assert_allclose(result.logits, reference, rtol=1e-5,
                               atol=1e-5)


def test_cached_greedy_equals_recompute(decoded):
  model, results = decoded
  recomputed = generate.greedy_generate(model, _REQUESTS,
                                        max_new_tokens=_STEPS)
  assert [r.tokens for r in results] == recomputed


def _truncate(free, stop_ids, stop_sequence, limit):
  """The greedy tokens a row keeps under its stop rules: (tokens, reason)."""
  for i, token in enumerate(free[:limit]):
    if token in stop_ids:
      return free[:i], decoding.FINISH_STOP
    if stop_sequence and tuple(free[i + 1 - len(stop_sequence):i + 1]) == (
        stop_sequence):
      return free[:i + 1 - len(stop_sequence)], decoding.FINISH_STOP
  return free[:limit], decoding.FINISH_LENGTH


def test_stop_rules_and_limits(decoded):
  model, results = decoded
  free = [r.tokens for r in results]
  stop_ids = [free[2][3]]
  rules = [dict(stop_sequences=(tuple(free[0][2:4]),)),
           dict(max_new_tokens=3),
           dict()]
  requests = [generate.Request(r.prompt_ids, r.prompt_language_id,
                               r.output_language_id, **rule)
              for r, rule in zip(_REQUESTS, rules)]
  stopped = decoding.generate(model, requests, max_new_tokens=_STEPS,
                              stop_ids=stop_ids, return_logits=True)
  for row, (result, rule) in enumerate(zip(stopped, rules)):
    sequence = rule.get("stop_sequences", [()])[0]
    tokens, reason = _truncate(free[row], stop_ids, sequence,
                               rule.get("max_new_tokens", _STEPS))
    assert result.tokens == tokens, row
    assert result.finish_reason == reason, row
  assert stopped[2].finish_reason == decoding.FINISH_STOP


def test_min_new_tokens_matches_recompute(decoded):
  model, results = decoded
  stop_ids = [results[1].tokens[0]]
  cached = decoding.generate(model, _REQUESTS, max_new_tokens=_STEPS,
                             stop_ids=stop_ids, min_new_tokens=2,
                             return_logits=True)
  reference = generate.greedy_generate(model, _REQUESTS,
                                       max_new_tokens=_STEPS,
                                       stop_ids=stop_ids, min_new_tokens=2)
  assert [r.tokens for r in cached] == reference
  assert stop_ids[0] not in cached[1].tokens[:2]


_SAMPLING = (SamplingParams(temperature=1.5, top_k=1),
             SamplingParams(temperature=2.0, top_p=1e-6),
             SamplingParams(temperature=3.0, top_k=3))


def _sample(model, seed):
  requests = [generate.Request(r.prompt_ids, r.prompt_language_id,
                               r.output_language_id, sampling=sampling)
              for r, sampling in zip(_REQUESTS, _SAMPLING)]
  return decoding.generate(model, requests, max_new_tokens=_STEPS, seed=seed,
                           return_logits=True)


def test_sampling_filters(decoded):
  model, greedy = decoded
  for seed in (0, 1):
    sampled = _sample(model, seed)
    # top_k=1 and a tiny top_p leave only the argmax.
    assert sampled[0].tokens == greedy[0].tokens
    assert sampled[1].tokens == greedy[1].tokens
    for token, logits in zip(sampled[2].tokens, sampled[2].logits):
      assert token in np.argsort(-logits)[:3]


def test_sampling_depends_on_seed():
  model = _model()
  runs = [tuple(_sample(model, seed)[2].tokens) for seed in (0, 0, 1, 2, 3)]
  assert runs[0] == runs[1]
  assert len(set(runs)) > 1


@pytest.mark.parametrize("settings", [dict(temperature=-1.0),
                                      dict(top_k=-2), dict(top_p=0.0),
                                      dict(top_p=1.5)])
def test_invalid_sampling_params_raise(settings):
  with pytest.raises(ConfigError, match="invalid"):
    SamplingParams(**settings)
