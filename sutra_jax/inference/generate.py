"""Greedy generation with a chosen output language per request.

Each request has a prompt language, which routes the prompt through that
language's encoder blocks, and an output language, which routes the
positions that predict new tokens through that language's decoder blocks.
The two id streams follow the training layout of a translation example:

  input tokens      BOS p1 p2 ... pn  g1  g2 ...
  encoder language  P   P  P  ... P   O   O
  decoder language  P   P  P  ... O   O   O      (position n predicts g1)

where P is the prompt language and O the output language.

NOTE: this path recomputes the whole sequence for every new token, so it
costs O(L^2) per token. It is exact and is the reference that a KV-cache
decoder must match.
"""

import dataclasses
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax.inference import sampling as sampling_lib

# seqio's autoregressive inputs start every segment with token id 0.
BOS_ID = 0


@dataclasses.dataclass(frozen=True)
class Request:
  """One prompt to continue.

  `greedy_generate` reads only the prompt and the two languages; the KV-cache
  decoder (`sutra_jax.inference.decoding`) reads every field.

  Attributes:
    prompt_ids: token ids of the prompt, without BOS.
    prompt_language_id: language id of the prompt (routes encoder blocks).
    output_language_id: language id of the answer (routes decoder blocks).
    sampling: how the next token is chosen; greedy by default.
    max_new_tokens: this request's limit on new tokens; None uses the
      limit passed to the decoder.
    stop_sequences: token id sequences that end the request when the
      generated tokens end with one of them.
  """

  prompt_ids: Sequence[int]
  prompt_language_id: int
  output_language_id: int
  sampling: sampling_lib.SamplingParams = sampling_lib.GREEDY
  max_new_tokens: int | None = None
  stop_sequences: tuple[tuple[int, ...], ...] = ()


def _initial_buffers(requests: Sequence[Request], length: int):
  """Builds the [B, length] input and language-id buffers for the prompts."""
  batch = len(requests)
  tokens = np.zeros((batch, length), np.int32)
  encoder_ids = np.zeros((batch, length), np.int32)
  decoder_ids = np.zeros((batch, length), np.int32)
  prompt_lengths = np.zeros((batch,), np.int32)
  for row, request in enumerate(requests):
    n = len(request.prompt_ids)
    tokens[row, 0] = BOS_ID
    tokens[row, 1:n + 1] = request.prompt_ids
    encoder_ids[row, :] = request.output_language_id
    encoder_ids[row, :n + 1] = request.prompt_language_id
    decoder_ids[row, :] = request.output_language_id
    decoder_ids[row, :n] = request.prompt_language_id
    prompt_lengths[row] = n + 1  # BOS included.
  return tokens, encoder_ids, decoder_ids, prompt_lengths


@nnx.jit(static_argnames=("max_new_tokens", "min_new_tokens"))
def _greedy_loop(model, tokens, encoder_ids, decoder_ids, lengths, stop_ids,
                 max_new_tokens: int, min_new_tokens: int):
  """Appends up to `max_new_tokens` greedy tokens to each row of `tokens`.

  Args:
    model: a SutraModel.
    tokens: [B, T] int32 input buffer; row b contains `lengths[b]` real tokens.
    encoder_ids: [B, T] encoder language ids.
    decoder_ids: [B, T] decoder language ids.
    lengths: [B] number of real tokens per row.
    stop_ids: [S] token ids that end a row (EOS, chat markers).
    max_new_tokens: maximum number of tokens appended per row.
    min_new_tokens: stop tokens cannot be chosen before this many tokens.

  Returns:
    (tokens, lengths) after generation; generated stop tokens are kept.
  """
  batch, total = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32),
                               (batch, total))
  rows = jnp.arange(batch)

  def cond(carry):
    step, _, _, done = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, tokens, lengths, done = carry
    segment_ids = (positions < lengths[:, None]).astype(jnp.int32)
    output = model(tokens, encoder_language_ids=encoder_ids,
                   decoder_language_ids=decoder_ids, segment_ids=segment_ids,
                   positions=positions)
    last_logits = output.logits[rows, lengths - 1]
    vocabulary_ids = jnp.arange(last_logits.shape[-1])
    blocked = jnp.isin(vocabulary_ids, stop_ids) & (step < min_new_tokens)
    last_logits = jnp.where(blocked, -jnp.inf, last_logits)
    next_ids = jnp.argmax(last_logits, axis=-1).astype(jnp.int32)
    write = ~done & (lengths < total)
    tokens = tokens.at[rows, jnp.minimum(lengths, total - 1)].set(
        jnp.where(write, next_ids, tokens[rows, jnp.minimum(lengths,
                                                            total - 1)]))
    lengths = jnp.where(write, lengths + 1, lengths)
    done = done | ~write | jnp.isin(next_ids, stop_ids)
    return step + 1, tokens, lengths, done

  done = jnp.zeros((batch,), bool)
  _, tokens, lengths, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), tokens, lengths, done))
  return tokens, lengths


def greedy_generate(model, requests: Sequence[Request], *,
                    max_new_tokens: int,
                    stop_ids: Sequence[int] = (),
                    min_new_tokens: int = 0) -> list[list[int]]:
  """Generates a greedy continuation for each request.

  Args:
    model: a SutraModel.
    requests: prompts with their prompt and output languages.
    max_new_tokens: maximum number of new tokens per request.
    stop_ids: token ids that end a request; the stop token is not returned.
    min_new_tokens: the number of tokens generated before a stop token may
      be chosen.

  Returns:
    The new token ids of each request, without the stop token.
  """
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if not 0 <= min_new_tokens <= max_new_tokens:
    raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got "
                     f"{min_new_tokens}")
  longest = max(len(r.prompt_ids) for r in requests)
  total = longest + 1 + max_new_tokens
  tokens, encoder_ids, decoder_ids, lengths = _initial_buffers(requests, total)
  stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
  out_tokens, out_lengths = _greedy_loop(
      model, jnp.asarray(tokens), jnp.asarray(encoder_ids),
      jnp.asarray(decoder_ids), jnp.asarray(lengths), stops,
      max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
  out_tokens = np.asarray(out_tokens)
  out_lengths = np.asarray(out_lengths)
  results = []
  for row, start in enumerate(lengths):
    new = out_tokens[row, start:out_lengths[row]].tolist()
    if new and new[-1] in set(stop_ids):
      new = new[:-1]
    results.append(new)
  return results
