"""Log-likelihood of continuations under a `SutraModel`.

`ModelScorer` implements the `Scorer` of `sutra_jax.eval.rank_classification`.
For an example with prompt ids p and continuation ids c, the model reads
BOS + p + c[:-1] and the score is the sum of log P(c_i | everything before
c_i). Both language id streams carry the example's language.

Choices of one question often share the model input: a one-token
continuation (an answer letter) only needs the prompt. Examples with the
same input and language run through the model once and read their tokens'
log-probabilities at their own positions, so letter scoring costs one
forward pass per question, not one per choice.

Inputs longer than `max_length` keep their last `max_length` tokens: the
start of a long few-shot prompt is dropped, never the continuation.
"""

import collections
from typing import Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax import languages
from sutra_jax.errors import ConfigError
from sutra_jax.inference.generate import BOS_ID


def _bucket(value: int, minimum: int) -> int:
  """Rounds up to a power of two >= minimum, to limit recompilation."""
  size = minimum
  while size < value:
    size *= 2
  return size


@nnx.jit
def _query_log_probs(model, tokens, language_ids, segment_ids, positions,
                     query_tokens):
  """Returns log P(query_tokens[b, q] | tokens[b, :positions[b, q] + 1]).

  Args:
    model: a SutraModel.
    tokens: [B, L] int32 model inputs, right-padded.
    language_ids: [B, L] int32.
    segment_ids: [B, L] int32, 1 for real tokens and 0 for padding.
    positions: [B, Q] int32 positions whose next-token prediction is read.
    query_tokens: [B, Q] int32 tokens whose log-probability is returned.

  Returns:
    [B, Q] float32.
  """
  logits = model(tokens, encoder_language_ids=language_ids,
                 decoder_language_ids=language_ids,
                 segment_ids=segment_ids).logits
  picked = jnp.take_along_axis(logits, positions[:, :, None], axis=1)
  log_probs = jax.nn.log_softmax(picked.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, query_tokens[:, :, None],
                             axis=-1)[:, :, 0]


class ModelScorer:
  """Scores continuations with a model, in batches.

  Attributes:
    routed_languages: `{language: language it is routed as}` for every
      language that the model's table lacks and that was scored with the
      blocks of the fallback language.
  """

  def __init__(self, model, table: languages.LanguageTable, *,
               batch_size: int = 8, max_length: int = 2048,
               fallback_language: str | None = "en"):
    """Creates the scorer.

    Args:
      model: a SutraModel.
      table: its language table.
      batch_size: sequences per forward pass.
      max_length: the maximum number of model input tokens per sequence.
      fallback_language: language whose blocks score languages missing from
        `table`; None rejects them.

    Raises:
      ConfigError: invalid sizes, or a fallback language missing from
        `table`.
    """
    if batch_size <= 0 or max_length <= 1:
      raise ConfigError(f"invalid batch_size {batch_size} or max_length "
                        f"{max_length}: expected positive sizes, max_length "
                        ">= 2")
    if fallback_language is not None and fallback_language not in table:
      raise ConfigError(f"fallback language {fallback_language!r} is not one "
                        f"of the model's languages ({', '.join(table.codes)})")
    self.model = model
    self.table = table
    self.batch_size = batch_size
    self.max_length = max_length
    self.fallback_language = fallback_language
    self.routed_languages: dict[str, str] = {}

  def language_id(self, code: str) -> int:
    """Returns the id whose blocks score `code`, using the fallback if needed.

    Raises:
      ConfigError: `code` is not in the table and there is no fallback.
    """
    if code in self.table:
      return self.table.id(code)
    if self.fallback_language is None:
      raise ConfigError(f"language {code!r} is not one of the model's "
                        f"languages ({', '.join(self.table.codes)}); pass "
                        "--fallback_language to score it with another "
                        "language's blocks")
    self.routed_languages[code] = self.fallback_language
    return self.table.id(self.fallback_language)

  def _sequence(self, example: dict):
    """Returns (model input ids, positions of the targets, target ids)."""
    prompt = [int(t) for t in example["inputs"]]
    targets = [int(t) for t in example["targets"]]
    full = prompt + targets
    model_input = [BOS_ID] + full[:-1]
    positions = list(range(len(prompt), len(full)))
    drop = max(len(model_input) - self.max_length, 0)
    if drop > len(prompt):
      raise ConfigError(f"a continuation of {len(targets)} tokens does not "
                        f"fit in max_length {self.max_length}; raise "
                        "--max_length")
    return (tuple(model_input[drop:]), [p - drop for p in positions],
            targets)

  def __call__(self, examples: Sequence[dict]) -> np.ndarray:
    """Returns the summed continuation log-likelihood of each example."""
    groups = collections.OrderedDict()
    for index, example in enumerate(examples):
      code = example["targets_language"]
      code = code.decode("utf-8") if isinstance(code, bytes) else str(code)
      model_input, positions, targets = self._sequence(example)
      key = (model_input, self.language_id(code))
      groups.setdefault(key, []).append((index, positions, targets))
    scores = np.zeros(len(examples), np.float64)
    # Similar lengths share a batch, so little of it is padding.
    keys = sorted(groups, key=lambda k: len(k[0]))
    for start in range(0, len(keys), self.batch_size):
      batch_keys = keys[start:start + self.batch_size]
      self._score_batch(batch_keys, [groups[k] for k in batch_keys], scores)
      if (start // self.batch_size) % 50 == 0:
        logging.info("Scored %d of %d sequences", start + len(batch_keys),
                     len(keys))
    return scores

  def _score_batch(self, keys, members, scores: np.ndarray) -> None:
    length = _bucket(max(len(k[0]) for k in keys), 16)
    queries = _bucket(max(sum(len(m[2]) for m in group) for group in members),
                      4)
    shape = (self.batch_size, length)
    tokens = np.zeros(shape, np.int32)
    language_ids = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros((self.batch_size, queries), np.int32)
    query_tokens = np.zeros((self.batch_size, queries), np.int32)
    owners = []  # (row, query slot, example index)
    for row, ((model_input, language_id), group) in enumerate(
        zip(keys, members)):
      tokens[row, :len(model_input)] = model_input
      language_ids[row, :] = language_id
      segment_ids[row, :len(model_input)] = 1
      slot = 0
      for index, example_positions, targets in group:
        for position, token in zip(example_positions, targets):
          positions[row, slot] = position
          query_tokens[row, slot] = token
          owners.append((row, slot, index))
          slot += 1
    log_probs = np.asarray(_query_log_probs(
        self.model, tokens, language_ids, segment_ids, positions,
        query_tokens), np.float64)
    for row, slot, index in owners:
      scores[index] += log_probs[row, slot]
