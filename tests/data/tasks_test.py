"""Tests of the seqio Tasks over the demo corpus."""

import pytest
import seqio

from sutra_jax.data import chat
from sutra_jax.data import corpus
from sutra_jax.data import tasks
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

LENGTHS = {"inputs": 64, "targets": 256}


@pytest.fixture(scope="module")
def names(vocabulary):
  return tasks.register_demo_tasks(vocabulary, ["hi", "zh-Hant", "en"])


def _first(name, split="validation"):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False)
  return next(ds.as_numpy_iterator())


def test_task_names(names, vocabulary):
  key = tasks.vocabulary_key(vocabulary)
  assert names == {
      tasks.CHAT: [f"chat_hi.vocab_{key}", f"chat_zh_Hant.vocab_{key}",
                   f"chat_en.vocab_{key}"],
      tasks.LEXICON_FROM_ENGLISH: [f"lexicon_en_hi.vocab_{key}",
                                   f"lexicon_en_zh_Hant.vocab_{key}"],
      tasks.LEXICON_TO_ENGLISH: [f"lexicon_hi_en.vocab_{key}",
                                 f"lexicon_zh_Hant_en.vocab_{key}"],
      tasks.PARALLEL: [f"parallel_en_hi.vocab_{key}",
                       f"parallel_en_zh_Hant.vocab_{key}"],
  }


def test_registration_is_idempotent(names, vocabulary):
  count = len(seqio.TaskRegistry.names())
  again = tasks.register_demo_tasks(vocabulary, ["hi", "zh-Hant", "en"])
  assert again == names
  assert len(seqio.TaskRegistry.names()) == count


def test_registration_accepts_model_path(names, model_path):
  assert tasks.register_demo_tasks(model_path, ["hi"],
                                   kinds=(tasks.CHAT,)) == {
                                       tasks.CHAT: names[tasks.CHAT][:1]}


def test_task_metadata(names):
  info = tasks.task_info(names[tasks.LEXICON_TO_ENGLISH][1])
  assert info.kind == tasks.LEXICON_TO_ENGLISH
  assert info.inputs_language == "zh-Hant"
  assert info.targets_language == "en"


def test_lexicon_example(names, vocabulary):
  example = _first(names[tasks.LEXICON_FROM_ENGLISH][0])
  english, hindi = corpus.lexicon("hi", "validation")[0]
  eos = vocabulary.eos_id
  assert list(example["inputs"]) == vocabulary.encode(english) + [eos]
  assert list(example["targets"]) == vocabulary.encode(hindi) + [eos]
  assert example["inputs_language"] == b"en"
  assert example["targets_language"] == b"hi"
  assert example["example_kind"] == b"translation"


def test_parallel_example(names, vocabulary):
  example = _first(names[tasks.PARALLEL][0])
  english, hindi = corpus.lexicon("hi", "validation")[0]
  eos = vocabulary.eos_id
  assert list(example["inputs"]) == vocabulary.encode(english) + [eos]
  assert list(example["targets"]) == vocabulary.encode(hindi) + [eos]
  assert example["example_kind"] == b"parallel"


def test_reverse_lexicon_example(names, vocabulary):
  example = _first(names[tasks.LEXICON_TO_ENGLISH][0])
  english, hindi = corpus.lexicon("hi", "validation")[0]
  assert vocabulary.decode(example["inputs"][:-1].tolist()) == hindi
  assert vocabulary.decode(example["targets"][:-1].tolist()) == english
  assert example["inputs_language"] == b"hi"
  assert example["targets_language"] == b"en"


def test_chat_example(names, vocabulary):
  example = _first(names[tasks.CHAT][1])
  conversation = corpus.conversations("zh-Hant", "validation")[0]
  assert example["inputs"].size == 0
  assert example["targets"][-1] == vocabulary.eos_id
  assert vocabulary.decode(example["targets"][:-1].tolist()) == conversation
  assert vocabulary.tokenizer.piece_to_id(chat.USER) in example["targets"]
  assert example["inputs_language"] == b"zh-Hant"
  assert example["targets_language"] == b"zh-Hant"
  assert example["example_kind"] == b"text"


def test_split_sizes(names):
  task = seqio.get_mixture_or_task(names[tasks.CHAT][0])
  assert task.splits == corpus.SPLITS
  for split in corpus.SPLITS:
    assert task.num_input_examples(split) == len(
        corpus.conversations("hi", split))


def test_unknown_language_raises(vocabulary):
  with pytest.raises(ConfigError, match="'xx'"):
    tasks.register_demo_tasks(vocabulary, ["xx"])


def test_unknown_kind_raises(vocabulary):
  with pytest.raises(ConfigError, match="'poetry'"):
    tasks.register_demo_tasks(vocabulary, ["hi"], kinds=("poetry",))


def test_missing_model_raises(tmp_path):
  with pytest.raises(DataError, match="not found"):
    tasks.register_demo_tasks(str(tmp_path / "missing.model"), ["hi"])
