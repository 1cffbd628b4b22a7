"""Text in, text out: KV-cache decoding with language codes and stop strings.

`TextGenerator` wraps a model, its vocabulary and its language table, so a
caller passes prompts as strings and languages as codes. Every request ends
at EOS or a chat role marker; a request's stop strings end it too and are
cut from the returned text.

A stop string becomes one or two token sequences for the decoder. The first
is its own tokenisation, which SentencePiece starts with a word boundary.
The second is its tokenisation after a word (the pieces that follow the
word's pieces in `encode(word + stop)`), which is how the string usually
appears inside running text. Both miss a stop string that the model spells
with other pieces, so the text is also cut at the first stop string after
decoding.
"""

import dataclasses
from typing import Sequence

import seqio

from sutra_jax import languages
from sutra_jax.data import chat
from sutra_jax.errors import ConfigError
from sutra_jax.inference import decoding
from sutra_jax.inference import generate
from sutra_jax.inference import sampling as sampling_lib


# A word that a stop string is tokenised after, to see its pieces in running
# text.
_CONTEXT_WORD = "a"


@dataclasses.dataclass(frozen=True)
class TextRequest:
  """One text prompt to continue.

  Attributes:
    prompt: the text to continue, already in the chat format if it is a
      chat turn.
    output_language: code of the answer's language (decoder blocks).
    prompt_language: code of the prompt's language (encoder blocks); None
      uses `output_language`.
    sampling: how tokens are chosen.
    max_new_tokens: this request's limit on new tokens; None uses the
      generator call's limit.
    stop: strings that end the answer; they are not returned.
  """

  prompt: str
  output_language: str
  prompt_language: str | None = None
  sampling: sampling_lib.SamplingParams = sampling_lib.GREEDY
  max_new_tokens: int | None = None
  stop: tuple[str, ...] = ()


def stop_sequences(vocabulary: seqio.Vocabulary,
                   stop: Sequence[str]) -> tuple[tuple[int, ...], ...]:
  """Returns the token sequences that end a request for each stop string.

  Raises:
    ConfigError: an empty stop string.
  """
  word = tuple(vocabulary.encode(_CONTEXT_WORD))
  sequences = []
  for text in stop:
    if not text:
      raise ConfigError("invalid stop string '': pass a non-empty string")
    variants = [tuple(vocabulary.encode(text))]
    in_context = tuple(vocabulary.encode(_CONTEXT_WORD + text))
    if in_context[:len(word)] == word:
      variants.append(in_context[len(word):])
    sequences.extend(v for v in variants if v and v not in sequences)
  return tuple(sequences)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """Cuts `text` before the first occurrence of any stop string."""
  end = min([text.find(s) for s in stop if s in text] + [len(text)])
  return text[:end]


class TextGenerator:
  """Continues text prompts with a model's KV-cache decoder."""

  def __init__(self, model, vocabulary: seqio.Vocabulary,
               table: languages.LanguageTable):
    """Creates the generator.

    Args:
      model: a SutraModel.
      vocabulary: its vocabulary, with the chat markers as single pieces.
      table: its language table.
    """
    self.model = model
    self.vocabulary = vocabulary
    self.table = table
    self.stop_ids = chat.stop_token_ids(vocabulary)

  def check_languages(self, request: TextRequest) -> None:
    """Raises ConfigError if a language code is not in the model's table."""
    languages.check_codes([request.output_language], self.table,
                          "the output language")
    if request.prompt_language:
      languages.check_codes([request.prompt_language], self.table,
                            "the prompt language")

  def _token_request(self, request: TextRequest) -> generate.Request:
    self.check_languages(request)
    prompt_language = request.prompt_language or request.output_language
    return generate.Request(
        prompt_ids=self.vocabulary.encode(request.prompt),
        prompt_language_id=self.table.id(prompt_language),
        output_language_id=self.table.id(request.output_language),
        sampling=request.sampling, max_new_tokens=request.max_new_tokens,
        stop_sequences=stop_sequences(self.vocabulary, request.stop))

  def count_tokens(self, text: str) -> int:
    return len(self.vocabulary.encode(text))

  def generate(self, requests: Sequence[TextRequest], *, max_new_tokens: int,
               seed: int = 0) -> list[str]:
    """Returns the answer text of each request, in order.

    Raises:
      ConfigError: an unknown language code or an empty stop string.
    """
    token_requests = [self._token_request(r) for r in requests]
    results = decoding.generate(self.model, token_requests,
                                max_new_tokens=max_new_tokens,
                                stop_ids=self.stop_ids, seed=seed)
    return [cut_at_stop(self.vocabulary.decode(result.tokens), request.stop)
            for request, result in zip(requests, results)]
