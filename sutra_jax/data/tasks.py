"""seqio Tasks over the embedded demo corpus.

Task names replace `-` in a language code with `_` and end with a key of the
vocabulary, so tasks built with two tokenizers can coexist in one registry:

    chat_<code>.vocab_<key>         conversations in <code>
    lexicon_en_<code>.vocab_<key>   English name -> name in <code>
    lexicon_<code>_en.vocab_<key>   name in <code> -> English name
    parallel_en_<code>.vocab_<key>  English name and name in <code>, as a
                                    parallel pair

for example `chat_zh_Hant.vocab_1a2b3c4d`. `<key>` is the first 8 hex digits
of the SHA-256 of `str(vocabulary)`, which for a `SentencePieceVocabulary`
contains the model path and the MD5 of the model.

Every task has the same output features, so any of them can be mixed:

* `inputs` (int32 [n]): the source name and EOS for a lexicon task, empty for
  a chat task.
* `targets` (int32 [m]): the conversation in the chat format and EOS, or the
  translated name and EOS.
* `inputs_language`, `targets_language` (string scalars): language codes of
  `inputs` and `targets`. `sutra_jax.data.feature_converter` turns them into
  per-token language ids.
* `example_kind` (string scalar): 'text' for chat, 'translation' for the
  lexicon tasks, 'parallel' for the parallel-pair tasks (see
  `sutra_jax.data.example_kinds`). A lexicon task trains translation with
  loss on the target side; a parallel task gives the two names as separate
  segments for the concept-consistency loss.

Splits are `train` and `validation`, the held-out slice of
`sutra_jax.data.corpus`.
"""

import dataclasses
import functools
import hashlib
from typing import Callable, Sequence

import seqio
import tensorflow as tf

from sutra_jax.data import corpus
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError
from sutra_jax.languages import DEMO_LANGUAGES

CHAT = "chat"
LEXICON_FROM_ENGLISH = "lexicon_from_en"
LEXICON_TO_ENGLISH = "lexicon_to_en"
PARALLEL = "parallel"
TASK_KINDS = (CHAT, LEXICON_FROM_ENGLISH, LEXICON_TO_ENGLISH, PARALLEL)
# The `example_kind` feature of each task kind.
_EXAMPLE_KIND = {CHAT: "text", LEXICON_FROM_ENGLISH: "translation",
                 LEXICON_TO_ENGLISH: "translation", PARALLEL: "parallel"}

# Maps a split name to its (inputs text, targets text) pairs.
_PairsFn = Callable[[str], list[tuple[str, str]]]


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Metadata of a registered demo task.

  Attributes:
    name: the registered seqio name.
    kind: one of `TASK_KINDS`.
    inputs_language: language code of the `inputs` tokens.
    targets_language: language code of the `targets` tokens.
  """

  name: str
  kind: str
  inputs_language: str
  targets_language: str


_TASK_INFO: dict[str, TaskInfo] = {}


def task_info(name: str) -> TaskInfo | None:
  """Returns the metadata of a demo task, or None for other tasks."""
  return _TASK_INFO.get(name)


# --- vocabulary -------------------------------------------------------------


def sentencepiece_vocabulary(model_path: str) -> seqio.SentencePieceVocabulary:
  """Loads a SentencePiece model as a seqio vocabulary.

  Raises:
    DataError: the file is missing or does not use seqio's special ids
      (PAD 0, EOS 1, UNK 2).
  """
  if not tf.io.gfile.exists(model_path):
    raise DataError(f"SentencePiece model not found: {model_path!r}; train "
                    "one with `sutra-tokenizer train` or fix the path")
  vocabulary = seqio.SentencePieceVocabulary(model_path)
  processor = vocabulary.tokenizer
  ids = (processor.pad_id(), processor.eos_id(), processor.unk_id())
  if ids != (0, 1, 2):
    raise DataError(f"SentencePiece model {model_path!r} has PAD, EOS, UNK "
                    f"ids {ids}; seqio needs (0, 1, 2), so retrain it with "
                    "`sutra-tokenizer train`")
  return vocabulary


def as_vocabulary(vocabulary: seqio.Vocabulary | str) -> seqio.Vocabulary:
  """Returns `vocabulary`, loading it first if it is a model path."""
  if isinstance(vocabulary, str):
    return sentencepiece_vocabulary(vocabulary)
  return vocabulary


def vocabulary_key(vocabulary: seqio.Vocabulary) -> str:
  """Returns the 8-hex-digit key that task names carry for `vocabulary`."""
  return hashlib.sha256(str(vocabulary).encode("utf-8")).hexdigest()[:8]


def base_task_name(kind: str, code: str) -> str:
  """Returns a task name without the vocabulary key, e.g. `lexicon_en_hi`."""
  code = code.replace("-", "_")
  if kind == CHAT:
    return f"chat_{code}"
  if kind == LEXICON_FROM_ENGLISH:
    return f"lexicon_en_{code}"
  if kind == LEXICON_TO_ENGLISH:
    return f"lexicon_{code}_en"
  if kind == PARALLEL:
    return f"parallel_en_{code}"
  raise ConfigError(f"unknown task kind {kind!r}: use one of "
                    f"{', '.join(TASK_KINDS)}")


def task_name(kind: str, code: str, vocabulary: seqio.Vocabulary) -> str:
  """Returns the registered name of a demo task."""
  return f"{base_task_name(kind, code)}.vocab_{vocabulary_key(vocabulary)}"


# --- sources and preprocessing ----------------------------------------------


class _InMemorySource(seqio.FunctionDataSource):
  """A FunctionDataSource for examples held in memory.

  seqio warns that an uncached FunctionDataSource shuffles poorly after a
  restart. That concern is about file-level shuffling. These examples come
  from a list, and the Task shuffles the whole split with a buffer at least as
  large as the split, so this source never requests file shuffling.
  """

  def get_dataset(self, split="train", shuffle=True, seed=None,
                  shard_info=None, **kwargs):
    del shuffle  # The Task shuffles the examples.
    return super().get_dataset(split=split, shuffle=False, seed=seed,
                               shard_info=shard_info, **kwargs)


def _text_pairs_source(pairs_fn: _PairsFn) -> _InMemorySource:
  """Builds a source of {"inputs", "targets"} strings from (inputs, targets)."""

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # Task-level shuffling covers these examples.
    pairs = pairs_fn(split)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([p[0] for p in pairs], dtype=tf.string),
        "targets": tf.constant([p[1] for p in pairs], dtype=tf.string),
    })

  counts = {split: len(pairs_fn(split)) for split in corpus.SPLITS}
  return _InMemorySource(dataset_fn, splits=corpus.SPLITS,
                         num_input_examples=counts)


def add_language_features(dataset: tf.data.Dataset, inputs_language: str,
                          targets_language: str,
                          example_kind: str = "text") -> tf.data.Dataset:
  """Adds the `inputs_language`, `targets_language` and `example_kind`
  string features."""

  def add(example):
    return {
        **example,
        "inputs_language": tf.constant(inputs_language),
        "targets_language": tf.constant(targets_language),
        "example_kind": tf.constant(example_kind),
    }

  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _language_feature() -> seqio.Feature:
  return seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=0),
                       add_eos=False, dtype=tf.string, rank=0)


def output_features(vocabulary: seqio.Vocabulary,
                    inputs_add_eos: bool) -> dict[str, seqio.Feature]:
  """Returns the output features that every demo task shares.

  Args:
    vocabulary: the token vocabulary.
    inputs_add_eos: whether `inputs` ends with EOS; false for chat tasks,
      whose `inputs` are empty.
  """
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=inputs_add_eos),
      "targets": seqio.Feature(vocabulary, add_eos=True),
      "inputs_language": _language_feature(),
      "targets_language": _language_feature(),
      "example_kind": _language_feature(),
  }


# --- registration -----------------------------------------------------------


def _examples_fn(kind: str, code: str) -> _PairsFn:
  if kind == CHAT:
    return lambda split: [("", c) for c in corpus.conversations(code, split)]
  if kind in (LEXICON_FROM_ENGLISH, PARALLEL):
    return lambda split: corpus.lexicon(code, split)
  return lambda split: [(x, en) for en, x in corpus.lexicon(code, split)]


def _register_task(kind: str, code: str,
                   vocabulary: seqio.Vocabulary) -> str:
  name = task_name(kind, code, vocabulary)
  if name in seqio.TaskRegistry.names():
    existing = seqio.TaskRegistry.get(name)
    if existing.output_features["targets"].vocabulary == vocabulary:
      return name
    seqio.TaskRegistry.remove(name)  # A key collision: replace the task.

  source_language, target_language = {
      CHAT: (code, code),
      LEXICON_FROM_ENGLISH: ("en", code),
      LEXICON_TO_ENGLISH: (code, "en"),
      PARALLEL: ("en", code),
  }[kind]
  source = _text_pairs_source(_examples_fn(kind, code))
  largest_split = max(source.num_input_examples(s) for s in corpus.SPLITS)
  seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=output_features(vocabulary,
                                      inputs_add_eos=kind != CHAT),
      preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
          functools.partial(add_language_features,
                            inputs_language=source_language,
                            targets_language=target_language,
                            example_kind=_EXAMPLE_KIND[kind]),
      ],
      shuffle_buffer_size=max(largest_split, 1),
  )
  _TASK_INFO[name] = TaskInfo(name, kind, source_language, target_language)
  return name


def register_demo_tasks(
    vocabulary: seqio.Vocabulary | str,
    languages: Sequence[str] = DEMO_LANGUAGES,
    kinds: Sequence[str] = TASK_KINDS,
) -> dict[str, list[str]]:
  """Registers the demo corpus tasks of some languages; safe to call again.

  A language without a lexicon (see `corpus.lexicon_languages`) gets only its
  chat task.

  Args:
    vocabulary: a seqio vocabulary or the path of a SentencePiece model.
    languages: demo language codes.
    kinds: which of `TASK_KINDS` to register.

  Returns:
    The registered task names by kind, in `languages` order.

  Raises:
    ConfigError: an unknown language code or task kind.
    DataError: the vocabulary file is missing or unusable.
  """
  vocabulary = as_vocabulary(vocabulary)
  for kind in kinds:
    base_task_name(kind, "en")  # Validates the kind.
  for code in languages:
    if code not in DEMO_LANGUAGES:
      raise ConfigError(
          f"unknown demo language code {code!r}: the demo corpus has "
          f"{', '.join(DEMO_LANGUAGES)}")
  names = {kind: [] for kind in kinds}
  for code in languages:
    for kind in kinds:
      if kind != CHAT and code not in corpus.lexicon_languages():
        continue
      names[kind].append(_register_task(kind, code, vocabulary))
  return names
