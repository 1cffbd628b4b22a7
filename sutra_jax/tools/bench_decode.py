"""Decoding throughput: the KV-cache decoder against full recomputation.

`decode_speed` builds a model with random parameters. It then times greedy
generation of `new_tokens` tokens for a batch of prompts twice: with the
KV-cache decoder (`sutra_jax.inference.decoding`), and with the reference
(`sutra_jax.inference.generate`), which runs the whole sequence through the
model for every new token. Neither run has stop tokens, so both
generate exactly `new_tokens` tokens per prompt. Each is compiled and run
once before it is timed.
"""

import time

from flax import nnx
import jax
import numpy as np

from sutra_jax import languages
from sutra_jax.inference import decoding
from sutra_jax.inference import generate
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel


def _requests(config: ModelConfig, table: languages.LanguageTable,
              batch_size: int, prompt_length: int, seed: int):
  """Random prompts, each answered in another language of `table`."""
  rng = np.random.default_rng(seed)
  requests = []
  for row in range(batch_size):
    prompt = rng.integers(3, config.vocab_size, size=prompt_length).tolist()
    requests.append(generate.Request(
        prompt_ids=prompt, prompt_language_id=row % len(table),
        output_language_id=(row + 1) % len(table)))
  return requests


def _median_seconds(function, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def decode_speed(config: ModelConfig, table: languages.LanguageTable, *,
                 batch_size: int, prompt_length: int, new_tokens: int,
                 repeats: int, seed: int = 0) -> dict:
  """Times cached and recomputed greedy decoding.

  Args:
    config: the model config.
    table: its language table.
    batch_size: prompts decoded together.
    prompt_length: tokens per prompt.
    new_tokens: tokens generated per prompt.
    repeats: timed runs of each decoder; the median is reported.
    seed: seeds the parameters and the prompts.

  Returns:
    `cached_tokens_per_second`, `recompute_tokens_per_second` (generated
    tokens of the whole batch per second), their `ratio`, the two median
    times and the settings.
  """
  model = SutraModel(config, rngs=nnx.Rngs(seed))
  requests = _requests(config, table, batch_size, prompt_length, seed)

  def cached():
    results = decoding.generate(model, requests, max_new_tokens=new_tokens)
    assert all(len(r.tokens) == new_tokens for r in results)

  def recompute():
    results = generate.greedy_generate(model, requests,
                                       max_new_tokens=new_tokens)
    assert all(len(r) == new_tokens for r in results)

  # The first call of each compiles it.
  cached()
  recompute()
  cached_seconds = _median_seconds(cached, repeats)
  recompute_seconds = _median_seconds(recompute, repeats)
  generated = batch_size * new_tokens
  return {
      "cached_tokens_per_second": generated / cached_seconds,
      "recompute_tokens_per_second": generated / recompute_seconds,
      "ratio": recompute_seconds / cached_seconds,
      "cached_seconds": cached_seconds,
      "recompute_seconds": recompute_seconds,
      "batch_size": batch_size,
      "prompt_length": prompt_length,
      "new_tokens": new_tokens,
      "repeats": repeats,
      "device": str(jax.devices()[0].device_kind),
  }
