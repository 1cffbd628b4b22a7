"""Training a multilingual SentencePiece model on language-balanced samples.

The model follows seqio's `SentencePieceVocabulary` conventions: id 0 is
padding, 1 is EOS, 2 is UNK, and there is no BOS piece. Byte fallback is on,
so any text encodes without UNK, and the normalization rule defaults to
`identity` with whitespace kept as is, so `decode(encode(text)) == text`.
The chat markers of `sutra_jax.data.chat` are user-defined symbols: they are
always one piece each.
"""

import math
import os
import random
import re
import shutil
import tempfile
import time
from typing import Mapping, Sequence

from absl import logging
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from sutra_jax import languages
from sutra_jax import progress
from sutra_jax.data import chat
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

MODEL_TYPES = ("unigram", "bpe")
# mT5 (Xue et al., 2021) samples languages with probability ∝ n^0.3, that is
# a temperature of 1 / 0.3.
DEFAULT_TEMPERATURE = 1 / 0.3
# SentencePiece's default limit on a training sentence, in bytes.
MAX_SENTENCE_BYTES = 4192
# Pieces that every model has besides the learned ones: PAD, EOS, UNK and the
# 256 byte-fallback pieces.
_RESERVED_PIECES = 3 + 256

# Languages written without spaces between words. `tokens_per_word` counts
# their words as characters.
UNSEGMENTED_LANGUAGES = frozenset({"ja", "zh", "zh-Hant", "zh-Hans", "th",
                                   "lo", "km", "my"})


# --- input preparation ------------------------------------------------------


def validate_language_label(code: str) -> str:
  """Checks a training language code; a region subtag is allowed.

  Training only balances languages, so NTREX codes such as `zho-CN` and
  `eng-IN` (ISO 639 plus an ISO 3166 region) are accepted besides the
  model's language codes (`sutra_jax.languages.validate_code`).

  Raises:
    ConfigError: the language part is not ISO 639, or the subtag is neither
      an ISO 15924 script nor a region.
  """
  language, _, region = code.partition("-")
  if region and (re.fullmatch(r"[A-Z]{2}|\d{3}", region)):
    languages.validate_code(language)
    return code
  return languages.validate_code(code)


def split_long_line(line: str,
                    max_bytes: int = MAX_SENTENCE_BYTES) -> list[str]:
  """Splits `line` into chunks of at most `max_bytes` UTF-8 bytes.

  A chunk ends at the last space before the limit, or at a character boundary
  when the chunk has no space. Joining the chunks gives back `line`. A single
  character longer than `max_bytes` becomes a chunk of its own.
  """
  chunks = []
  while len(line.encode("utf-8")) > max_bytes:
    # Largest character prefix that fits, found on the encoded bytes.
    fit = len(line.encode("utf-8")[:max_bytes].decode("utf-8", "ignore"))
    fit = max(fit, 1)
    cut = line.rfind(" ", 1, fit) + 1 or fit
    chunks.append(line[:cut])
    line = line[cut:]
  if line:
    chunks.append(line)
  return chunks


def _training_lines(texts: Sequence[str], max_bytes: int) -> list[str]:
  """Splits texts into non-blank lines that SentencePiece accepts."""
  lines = []
  for text in texts:
    for line in text.splitlines():
      if line.strip():
        lines.extend(split_long_line(line, max_bytes))
  return lines


def language_quotas(line_counts: Mapping[str, int], temperature: float,
                    total: int,
                    language_weights: Mapping[str, float] | None = None
                    ) -> dict[str, int]:
  """Divides `total` sampled lines between languages, ∝ count^(1/temperature).

  `language_weights` multiply the share of some languages (default 1).
  Every language with lines gets at least one.
  """
  extra = language_weights or {}
  weights = {c: n**(1 / temperature) * extra.get(c, 1.0)
             for c, n in line_counts.items() if n > 0}
  norm = sum(weights.values())
  return {c: max(1, round(total * w / norm)) for c, w in weights.items()}


def balanced_sample(lines_by_language: Mapping[str, Sequence[str]],
                    temperature: float, total: int, seed: int,
                    language_weights: Mapping[str, float] | None = None
                    ) -> list[str]:
  """Draws a language-balanced sample of lines.

  A language whose quota exceeds its lines contributes each of its lines
  `quota // n` times plus a random `quota % n` of them once more, so small
  languages are upsampled without dropping any line. A larger language
  contributes a random `quota` of its lines.

  Args:
    lines_by_language: training lines by language code.
    temperature: 1 samples languages in proportion to their line counts,
      larger values move towards uniform.
    total: the approximate number of lines to draw.
    seed: seeds the random choices.
    language_weights: multipliers of some languages' shares.

  Returns:
    The sampled lines, shuffled.
  """
  rng = random.Random(seed)
  quotas = language_quotas(
      {c: len(lines) for c, lines in lines_by_language.items()}, temperature,
      total, language_weights)
  sample = []
  for code in sorted(quotas):
    lines = list(lines_by_language[code])
    repeats, remainder = divmod(quotas[code], len(lines))
    sample.extend(lines * repeats)
    sample.extend(rng.sample(lines, remainder))
  rng.shuffle(sample)
  return sample


# --- training ---------------------------------------------------------------


def _validate_arguments(texts_by_language, vocab_size, model_type, temperature,
                        sample_lines_count, user_defined_symbols,
                        character_coverage) -> None:
  for code in texts_by_language:
    validate_language_label(code)
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
    raise ConfigError(f"invalid vocab_size {vocab_size!r}: expected an integer")
  minimum = _RESERVED_PIECES + len(user_defined_symbols) + 1
  if vocab_size < minimum:
    raise ConfigError(
        f"vocab_size {vocab_size} is too small: the 256 byte-fallback pieces, "
        f"PAD, EOS, UNK and {len(user_defined_symbols)} user-defined symbols "
        f"need {minimum - 1}; use a vocab_size of at least {minimum}")
  if model_type not in MODEL_TYPES:
    raise ConfigError(f"unknown model_type {model_type!r}: use one of "
                      f"{', '.join(MODEL_TYPES)}")
  if not temperature > 0:
    raise ConfigError(f"invalid temperature {temperature!r}: expected a "
                      "positive number; 1 keeps the natural language mix")
  # SentencePiece 0.2 rejects coverages below 0.98.
  if not 0.98 <= character_coverage <= 1.0:
    raise ConfigError(f"invalid character_coverage {character_coverage!r}: "
                      "SentencePiece accepts 0.98 to 1.0")
  if sample_lines_count is not None and sample_lines_count <= 0:
    raise ConfigError(f"invalid sample_lines {sample_lines_count!r}: expected "
                      "a positive number of lines")


def _explain_training_error(error: RuntimeError, vocab_size: int,
                            character_coverage: float) -> DataError:
  """Turns SentencePiece's size errors into a DataError that names the fix."""
  message = str(error)
  too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
  if too_high:
    return DataError(
        f"vocab_size {vocab_size} is too large for this corpus: SentencePiece "
        f"found at most {too_high.group(2)} pieces; use --vocab_size "
        f"{too_high.group(2)} or less, or add text")
  too_small = re.search(
      r"smaller than required_chars\. (\d+) vs (\d+)", message)
  if too_small:
    return DataError(
        f"vocab_size {vocab_size} is smaller than the {too_small.group(2)} "
        f"characters needed for character_coverage={character_coverage}; "
        "raise --vocab_size well above that or lower --character_coverage "
        "(rare characters then fall back to bytes)")
  return DataError(f"SentencePiece training failed: {message.strip()}")


def _record_model_prefix(model_path: str, output_prefix: str) -> None:
  """Stores the final prefix in the model in place of the staging prefix.

  The staging folder has a random name, so without this two identical
  trainings would write different files.
  """
  model = sentencepiece_model_pb2.ModelProto()
  with open(model_path, "rb") as f:
    model.ParseFromString(f.read())
  model.trainer_spec.model_prefix = output_prefix
  with open(model_path, "wb") as f:
    f.write(model.SerializeToString())


def train_sentencepiece(
    texts_by_language: Mapping[str, Sequence[str]],
    output_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    temperature: float = DEFAULT_TEMPERATURE,
    sample_lines: int | None = None,
    seed: int = 0,
    user_defined_symbols: Sequence[str] = chat.MARKERS,
    character_coverage: float = 1.0,
    normalization_rule_name: str = "identity",
    max_sentence_length: int = MAX_SENTENCE_BYTES,
    num_threads: int = 1,
    language_weights: Mapping[str, float] | None = None,
) -> str:
  """Trains a SentencePiece model on a language-balanced sample.

  Texts are split into lines, lines longer than `max_sentence_length` bytes
  are split into chunks (SentencePiece would skip them), and
  `balanced_sample` draws `sample_lines` lines, so each language gets a quota
  ∝ line_count^(1/temperature).

  Args:
    texts_by_language: training text by language code.
    output_prefix: the model is written to `PREFIX.model` and the piece list to
      `PREFIX.vocab`. Each file is replaced atomically.
    vocab_size: number of pieces, including PAD, EOS, UNK, the 256 byte pieces
      and the user-defined symbols.
    model_type: `unigram` or `bpe`.
    temperature: language sampling temperature (see `balanced_sample`).
    sample_lines: number of lines to sample; defaults to the number of lines
      in the input, so the sample reweights languages without growing.
    seed: seeds the sampling and SentencePiece's random generator.
    user_defined_symbols: strings that always become one piece.
    character_coverage: fraction of characters that get their own piece; the
      rest are encoded as bytes. 1.0 needs a vocab_size above the number of
      distinct characters in the sample.
    normalization_rule_name: SentencePiece normalization; `identity` keeps the
      text unchanged, so decoding restores it exactly.
    max_sentence_length: the maximum length of a training line, in bytes.
      Longer lines are split into chunks.
    num_threads: SentencePiece trainer threads. The learned pieces depend on
      the thread count (SentencePiece 0.2.3), so the default of 1 makes a
      model reproducible from its inputs and seed; use more for large
      corpora.
    language_weights: multipliers of some languages' sampling shares, such
      as those of `parity_weights`.

  Returns:
    The path of the written `.model` file.

  Raises:
    ConfigError: an invalid argument or language code.
    DataError: the texts are empty, or SentencePiece rejects the vocab size
      for this corpus (the message names the size that would work).
  """
  _validate_arguments(texts_by_language, vocab_size, model_type, temperature,
                      sample_lines, user_defined_symbols, character_coverage)
  if not isinstance(num_threads, int) or num_threads < 1:
    raise ConfigError(f"invalid num_threads {num_threads!r}: expected a "
                      "positive integer")
  lines_by_language = {
      code: _training_lines(texts, max_sentence_length)
      for code, texts in texts_by_language.items()
  }
  lines_by_language = {c: l for c, l in lines_by_language.items() if l}
  if not lines_by_language:
    raise DataError("no training text: every language is empty; pass text "
                    "files with at least one non-blank line")
  total = sample_lines or sum(len(l) for l in lines_by_language.values())
  sample = balanced_sample(lines_by_language, temperature, total, seed,
                           language_weights)

  output_prefix = os.path.abspath(output_prefix)
  output_dir = os.path.dirname(output_prefix)
  os.makedirs(output_dir, exist_ok=True)
  staging_dir = tempfile.mkdtemp(prefix=".spm-train-", dir=output_dir)
  try:
    staging_prefix = os.path.join(staging_dir, "model")
    spm.set_random_generator_seed(seed)
    start = time.monotonic()
    try:
      spm.SentencePieceTrainer.train(
          # NOTE: the bar counts the lines that SentencePiece reads. The
          # training that follows has no progress callback.
          sentence_iterator=progress.track(
              sample, desc="SentencePiece input", unit="line"),
          model_prefix=staging_prefix,
          vocab_size=vocab_size,
          model_type=model_type,
          character_coverage=character_coverage,
          byte_fallback=True,
          split_digits=True,
          normalization_rule_name=normalization_rule_name,
          remove_extra_whitespaces=False,
          add_dummy_prefix=True,
          user_defined_symbols=list(user_defined_symbols),
          pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
          max_sentence_length=max_sentence_length,
          input_sentence_size=0,  # Keep the whole sample.
          shuffle_input_sentence=False,
          num_threads=num_threads,
          minloglevel=2,
      )
    except RuntimeError as e:
      raise _explain_training_error(e, vocab_size,
                                    character_coverage) from None
    logging.info("Trained a %d-piece %s model on %d lines of %d languages in "
                 "%.1f s", vocab_size, model_type, len(sample),
                 len(lines_by_language), time.monotonic() - start)
    _record_model_prefix(staging_prefix + ".model", output_prefix)
    # The .vocab file goes first, so a reader that finds the new .model also
    # finds its piece list.
    os.replace(staging_prefix + ".vocab", output_prefix + ".vocab")
    os.replace(staging_prefix + ".model", output_prefix + ".model")
  finally:
    shutil.rmtree(staging_dir, ignore_errors=True)
  return output_prefix + ".model"


# --- parity balancing -------------------------------------------------------


def parity_weights(model_path: str,
                   texts_by_language: Mapping[str, Sequence[str]],
                   english: str, strength: float) -> dict[str, float]:
  """Returns each parallel language's (tokens / English tokens)^strength.

  A language is parallel to English when it has as many lines; its ratio is
  its token count over English's on those lines. Other languages get 1.
  """
  processor = spm.SentencePieceProcessor(model_file=model_path)

  def count(lines):
    return sum(len(ids) for ids in processor.encode(list(lines)))

  english_lines = texts_by_language[english]
  english_tokens = count(english_lines)
  weights = {}
  for code, lines in texts_by_language.items():
    if len(lines) == len(english_lines) and english_tokens:
      weights[code] = (count(lines) / english_tokens)**strength
    else:
      weights[code] = 1.0
  return weights


def train_with_parity(
    texts_by_language: Mapping[str, Sequence[str]],
    output_prefix: str,
    vocab_size: int,
    *,
    rounds: int,
    strength: float = 2.0,
    english: str | None = None,
    **kwargs,
) -> str:
  """Trains, then retrains with languages reweighted towards equal tokens.

  After each training, every language parallel to English (same number of
  lines) has its sampling share multiplied by (its tokens / English tokens)
  ^ `strength`, counted on the training text. Languages that still need
  more tokens than English so get more of the sample, and more pieces. With
  parallel text such as NTREX-128 this evens out the ratio to English.

  Args:
    texts_by_language: training text by language code; needs English.
    output_prefix: see `train_sentencepiece`; every round overwrites it.
    vocab_size: see `train_sentencepiece`.
    rounds: retrainings after the first training; 0 trains once.
    strength: the exponent of the reweighting.
    english: the English code; default the first of `eng`, `en` present.
    **kwargs: other `train_sentencepiece` arguments.

  Returns:
    The path of the written `.model` file.

  Raises:
    ConfigError: `rounds` < 0, `strength` <= 0, or no English text.
  """
  if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
    raise ConfigError(f"invalid parity_rounds {rounds!r}: expected 0 or "
                      "more")
  if not strength > 0:
    raise ConfigError(f"invalid parity_strength {strength!r}: expected a "
                      "positive number")
  english = english or next(
      (c for c in ("eng", "en") if c in texts_by_language), None)
  if rounds and english not in texts_by_language:
    raise ConfigError("parity rounds need English text parallel to the "
                      "other languages: add eng.txt or en.txt (or the NTREX "
                      "newstest2019-src.eng.txt)")
  weights = dict(kwargs.pop("language_weights", None) or {})
  model_path = train_sentencepiece(texts_by_language, output_prefix,
                                   vocab_size, language_weights=weights,
                                   **kwargs)
  for round_index in range(rounds):
    update = parity_weights(model_path, texts_by_language, english, strength)
    weights = {c: weights.get(c, 1.0) * w for c, w in update.items()}
    logging.info("Parity round %d: language weights %s", round_index + 1,
                 {c: round(w, 3) for c, w in weights.items()})
    model_path = train_sentencepiece(texts_by_language, output_prefix,
                                     vocab_size, language_weights=weights,
                                     **kwargs)
  return model_path


# --- reporting --------------------------------------------------------------


def count_words(text: str, code: str) -> int:
  """Counts words, or non-space characters for `UNSEGMENTED_LANGUAGES`."""
  if code in UNSEGMENTED_LANGUAGES:
    return sum(not ch.isspace() for ch in text)
  return len(text.split())


def tokens_per_word(model_path: str,
                    texts_by_language: Mapping[str, Sequence[str]]
                    ) -> dict[str, float]:
  """Measures tokenizer fertility: tokens per word for each language.

  Words are whitespace-separated, except in `UNSEGMENTED_LANGUAGES` (such as
  Japanese, Chinese and Thai), whose words are counted as characters.

  Args:
    model_path: a SentencePiece `.model` file.
    texts_by_language: text by language code.

  Returns:
    Tokens per word by language code; NaN for a language without words.

  Raises:
    DataError: `model_path` cannot be loaded.
  """
  try:
    processor = spm.SentencePieceProcessor(model_file=model_path)
  except (OSError, RuntimeError) as e:
    raise DataError(f"cannot load SentencePiece model {model_path!r}: {e}; "
                    "check the path") from None
  result = {}
  for code, texts in texts_by_language.items():
    tokens = sum(len(ids) for ids in processor.encode(list(texts)))
    words = sum(count_words(text, code) for text in texts)
    result[code] = tokens / words if words else math.nan
  return result

