"""Batched decoding with a KV cache.

`generate` continues a batch of prompts of different lengths. Each request
chooses its prompt language (encoder blocks), its output language (decoder
blocks), its sampling settings, its limit on new tokens and its stop
sequences. The language id streams follow the layout of
`sutra_jax.inference.generate`, the recompute-everything reference that this
decoder must match:

  input tokens      BOS p1 p2 ... pn  g1  g2 ...
  encoder language  P   P  P  ... P   O   O
  decoder language  P   P  P  ... O   O   O      (position n predicts g1)

The prompts run through the model once, as one right-padded chunk that fills
the cache (prefill). Then each step feeds one new token per row at that row's
own position, so rows of different prompt lengths advance together. The
whole loop is one compiled `jax.lax.while_loop`.
"""

import dataclasses
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax.inference import kv_cache
from sutra_jax.inference import sampling
from sutra_jax.inference.generate import BOS_ID
from sutra_jax.inference.generate import Request

# Prompt chunks are padded to a multiple of this many tokens, so prompts of
# similar length reuse one compiled program.
_LENGTH_BUCKET = 8
# Fills unused slots of the output and stop-sequence buffers; never a token.
_NO_TOKEN = -1
# Marks slots of the recent-token window before the first generated token.
_BEFORE_START = -2

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclasses.dataclass(frozen=True)
class Generation:
  """The continuation of one request.

  Attributes:
    tokens: the new token ids, without the stop token or stop sequence
      that ended the request.
    finish_reason: `stop` (a stop token or sequence) or `length` (the limit
      on new tokens).
    logits: [steps, V] float32 logits from which each generated token was
      chosen, stop tokens included, before stop tokens were blocked; only
      when `return_logits` is set.
  """

  tokens: list[int]
  finish_reason: str
  logits: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _Batch:
  """Host-side arrays of a decoding batch (see `_prepare`)."""

  tokens: np.ndarray          # [B, P] BOS + prompt, right-padded.
  lengths: np.ndarray         # [B] real tokens per row, BOS included.
  encoder_ids: np.ndarray     # [B, P]
  decoder_ids: np.ndarray     # [B, P]
  output_ids: np.ndarray      # [B] output language id.
  budgets: np.ndarray         # [B] max new tokens per row.
  temperature: np.ndarray     # [B] float32
  top_k: np.ndarray           # [B] int32
  top_p: np.ndarray           # [B] float32
  stop_sequences: np.ndarray  # [B, Q, W] left-padded with _NO_TOKEN.
  stop_valid: np.ndarray      # [B, Q] bool


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _stop_arrays(requests: Sequence[Request]):
  """Packs each request's stop sequences into [B, Q, W] and a [B, Q] mask."""
  # Bucketed sizes, so that similar batches reuse one compiled program.
  count = _round_up(max([len(r.stop_sequences) for r in requests] + [1]), 4)
  width = _round_up(
      max([len(s) for r in requests for s in r.stop_sequences] + [1]), 4)
  sequences = np.full((len(requests), count, width), _NO_TOKEN, np.int32)
  valid = np.zeros((len(requests), count), bool)
  for row, request in enumerate(requests):
    for i, sequence in enumerate(request.stop_sequences):
      if not sequence:
        raise ValueError(f"request {row} has an empty stop sequence")
      sequences[row, i, width - len(sequence):] = sequence
      valid[row, i] = True
  return sequences, valid


def _prepare(requests: Sequence[Request], max_new_tokens: int) -> _Batch:
  """Builds the padded prompt chunk and the per-row settings."""
  batch = len(requests)
  width = _round_up(max(len(r.prompt_ids) for r in requests) + 1,
                    _LENGTH_BUCKET)
  tokens = np.full((batch, width), BOS_ID, np.int32)
  encoder_ids = np.zeros((batch, width), np.int32)
  decoder_ids = np.zeros((batch, width), np.int32)
  lengths = np.zeros((batch,), np.int32)
  budgets = np.zeros((batch,), np.int32)
  for row, request in enumerate(requests):
    n = len(request.prompt_ids)
    tokens[row, 1:n + 1] = request.prompt_ids
    encoder_ids[row, :] = request.prompt_language_id
    # Position n (the last prompt token) predicts the first new token.
    decoder_ids[row, :] = request.output_language_id
    decoder_ids[row, :n] = request.prompt_language_id
    lengths[row] = n + 1
    budget = request.max_new_tokens or max_new_tokens
    if not 0 < budget <= max_new_tokens:
      raise ValueError(f"request {row} has max_new_tokens {budget}; expected "
                       f"1 to {max_new_tokens}")
    budgets[row] = budget
  stop_sequences, stop_valid = _stop_arrays(requests)
  return _Batch(
      tokens=tokens, lengths=lengths, encoder_ids=encoder_ids,
      decoder_ids=decoder_ids,
      output_ids=np.asarray([r.output_language_id for r in requests],
                            np.int32),
      budgets=budgets,
      temperature=np.asarray([r.sampling.temperature for r in requests],
                             np.float32),
      top_k=np.asarray([r.sampling.top_k for r in requests], np.int32),
      top_p=np.asarray([r.sampling.top_p for r in requests], np.float32),
      stop_sequences=stop_sequences, stop_valid=stop_valid)


def _ends_with_stop_sequence(recent, stop_sequences, stop_valid):
  """[B] whether the recent tokens [B, W] end with a valid stop sequence."""
  matches = ((stop_sequences == _NO_TOKEN) |
             (stop_sequences == recent[:, None, :]))
  return jnp.any(jnp.all(matches, axis=-1) & stop_valid, axis=-1)


def _prefill(model, arrays, max_new_tokens):
  """Runs the prompts; returns (cache, [B, V] logits for the first token)."""
  tokens = arrays["tokens"]
  batch, width = tokens.shape
  cache = kv_cache.init_cache(model.config, batch, width + max_new_tokens)
  positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32),
                               (batch, width))
  hidden, cache = kv_cache.forward_cached(
      model, tokens, positions, arrays["encoder_ids"], arrays["decoder_ids"],
      cache)
  last = hidden[jnp.arange(batch), arrays["lengths"] - 1]
  return cache, kv_cache.output_logits(model, last)


@nnx.jit(static_argnames=("max_new_tokens", "return_logits", "any_sampled"))
def _decode_loop(model, arrays, stop_ids, min_new_tokens, rng,
                 max_new_tokens: int, return_logits: bool, any_sampled: bool):
  """Generates up to `max_new_tokens` tokens per row.

  Returns:
    (new tokens [B, M] padded with _NO_TOKEN, number of new tokens [B],
    whether each row stopped on a stop token or sequence [B], and the logits
    of each step [B, M, V], or [B, 0, V] without `return_logits`).
  """
  cache, logits = _prefill(model, arrays, max_new_tokens)
  batch, vocab_size = logits.shape
  max_position = cache.max_length - 1
  vocabulary_ids = jnp.arange(vocab_size)
  output_ids = arrays["output_ids"][:, None]

  def cond(carry):
    step, done = carry[0], carry[5]
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    (step, cache, logits, out, count, done, stopped, recent, rng,
     all_logits) = carry
    rng, step_rng = jax.random.split(rng)
    blocked = jnp.isin(vocabulary_ids, stop_ids) & (step < min_new_tokens)
    token = sampling.choose_tokens(
        jnp.where(blocked, -jnp.inf, logits), step_rng,
        arrays["temperature"], arrays["top_k"], arrays["top_p"], any_sampled)
    active = ~done
    out = out.at[:, step].set(jnp.where(active, token, _NO_TOKEN))
    if return_logits:
      all_logits = all_logits.at[:, step].set(logits)
    count = count + active.astype(jnp.int32)
    recent = jnp.where(active[:, None],
                       jnp.concatenate([recent[:, 1:], token[:, None]], 1),
                       recent)
    hit = jnp.isin(token, stop_ids) | _ends_with_stop_sequence(
        recent, arrays["stop_sequences"], arrays["stop_valid"])
    stopped = stopped | (active & hit)
    done = done | (active & (hit | (count >= arrays["budgets"])))

    # The token sits at position lengths + step; finished rows keep running
    # on a clamped position, and their outputs are ignored.
    position = jnp.minimum(arrays["lengths"] + step, max_position)[:, None]
    hidden, cache = kv_cache.forward_cached(
        model, token[:, None], position, output_ids, output_ids, cache)
    logits = kv_cache.output_logits(model, hidden[:, 0])
    return (step + 1, cache, logits, out, count, done, stopped, recent, rng,
            all_logits)

  window = arrays["stop_sequences"].shape[-1]
  carry = (jnp.int32(0), cache, logits,
           jnp.full((batch, max_new_tokens), _NO_TOKEN, jnp.int32),
           jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), bool),
           jnp.full((batch, window), _BEFORE_START, jnp.int32), rng,
           jnp.zeros((batch, max_new_tokens if return_logits else 0,
                      vocab_size), jnp.float32))
  carry = jax.lax.while_loop(cond, body, carry)
  _, _, _, out, count, _, stopped, _, _, all_logits = carry
  return out, count, stopped, all_logits


def _strip_stop(tokens: list[int], request: Request,
                stop_ids: set[int]) -> list[int]:
  """Removes the stop token or stop sequence at the end of `tokens`."""
  if tokens and tokens[-1] in stop_ids:
    return tokens[:-1]
  for sequence in request.stop_sequences:
    if tuple(tokens[-len(sequence):]) == tuple(sequence):
      return tokens[:-len(sequence)]
  return tokens


def generate(model, requests: Sequence[Request], *, max_new_tokens: int,
             stop_ids: Sequence[int] = (), min_new_tokens: int = 0,
             seed: int = 0, return_logits: bool = False) -> list[Generation]:
  """Continues each request with the KV-cache decoder.

  Args:
    model: a `SutraModel`.
    requests: prompts with their languages, sampling settings, limits and
      stop sequences.
    max_new_tokens: the limit on new tokens of requests without their own.
    stop_ids: token ids that end any request (EOS, chat markers).
    min_new_tokens: stop ids cannot be chosen before this many new tokens.
      Stop sequences are not blocked.
    seed: seed of the sampling PRNG; greedy rows do not use it.
    return_logits: also return the logits of every step.

  Returns:
    One `Generation` per request, in order.

  Raises:
    ValueError: no requests, or limits out of range.
  """
  if not requests:
    raise ValueError("generate needs at least one request")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if not 0 <= min_new_tokens <= max_new_tokens:
    raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got "
                     f"{min_new_tokens}")
  batch = _prepare(requests, max_new_tokens)
  steps = int(batch.budgets.max())
  arrays = {name: jnp.asarray(value)
            for name, value in dataclasses.asdict(batch).items()}
  out, count, stopped, all_logits = _decode_loop(
      model, arrays, jnp.asarray(list(stop_ids) or [_NO_TOKEN], jnp.int32),
      jnp.int32(min_new_tokens), jax.random.key(seed),
      max_new_tokens=steps, return_logits=return_logits,
      any_sampled=any(not r.sampling.greedy for r in requests))
  out, count, stopped = np.asarray(out), np.asarray(count), np.asarray(stopped)
  all_logits = np.asarray(all_logits)
  results = []
  for row, request in enumerate(requests):
    tokens = out[row, :count[row]].tolist()
    if stopped[row]:
      tokens = _strip_stop(tokens, request, set(stop_ids))
    results.append(Generation(
        tokens=tokens,
        finish_reason=FINISH_STOP if stopped[row] else FINISH_LENGTH,
        logits=all_logits[row, :count[row]] if return_logits else None))
  return results
