"""Tests of temperature-sampled mixtures."""

import functools
import math
import subprocess
import sys

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from sutra_jax import languages
from sutra_jax.data import mixtures
from sutra_jax.data import pipeline
from sutra_jax.data import tasks
from sutra_jax.errors import ConfigError

TABLE = languages.language_table()


def test_rates_follow_temperature_formula():
  sizes = {"a": 400, "b": 25, "c": 1}
  rates = mixtures.temperature_rates(sizes, temperature=2.0)
  norm = 20 + 5 + 1  # sqrt of each size
  assert rates == pytest.approx({"a": 20 / norm, "b": 5 / norm,
                                 "c": 1 / norm})


def test_temperature_one_is_proportional():
  rates = mixtures.temperature_rates({"a": 30, "b": 10}, temperature=1.0)
  assert rates == pytest.approx({"a": 0.75, "b": 0.25})


def test_infinite_temperature_is_uniform():
  rates = mixtures.temperature_rates({"a": 1000, "b": 1}, math.inf)
  assert rates == pytest.approx({"a": 0.5, "b": 0.5})


def test_overrides_fix_rates():
  rates = mixtures.temperature_rates({"a": 400, "b": 25, "c": 1}, 2.0,
                                     rate_overrides={"a": 0.5})
  assert rates == pytest.approx({"a": 0.5, "b": 0.5 * 5 / 6,
                                 "c": 0.5 * 1 / 6})


@pytest.mark.parametrize("overrides, match", [
    ({"d": 0.1}, "'d'"),
    ({"a": 0.7, "b": 0.6}, "sum to 1.3"),
    ({"a": -0.1}, "-0.1"),
])
def test_invalid_overrides_raise(overrides, match):
  with pytest.raises(ConfigError, match=match):
    mixtures.temperature_rates({"a": 4, "b": 1}, 1.0, overrides)


@pytest.mark.parametrize("temperature", [0, -1.0])
def test_invalid_temperature_raises(temperature):
  with pytest.raises(ConfigError, match="temperature"):
    mixtures.temperature_rates({"a": 4}, temperature)


def test_phase_mixture_rates(model_path, vocabulary):
  name = mixtures.phase_mixture("test_phase", model_path,
                                chat_languages=["en", "th"],
                                lexicon_languages=["ta"],
                                temperature=2.0, language_table=TABLE)
  mixture = seqio.get_mixture_or_task(name)
  key = tasks.vocabulary_key(vocabulary)
  assert name == f"test_phase.vocab_{key}"
  sizes = {t.name: t.num_input_examples("train") for t in mixture.tasks}
  assert sorted(sizes) == sorted([
      f"chat_en.vocab_{key}", f"chat_th.vocab_{key}",
      f"lexicon_en_ta.vocab_{key}", f"lexicon_ta_en.vocab_{key}"])
  norm = sum(math.sqrt(n) for n in sizes.values())
  for task in mixture.tasks:
    assert mixture.get_rate(task) == pytest.approx(
        math.sqrt(sizes[task.name]) / norm), task.name


def test_phase_mixture_is_idempotent(model_path):
  first = mixtures.phase_mixture("test_again", model_path,
                                 chat_languages=["hi"], language_table=TABLE)
  mixture = seqio.get_mixture_or_task(first)
  second = mixtures.phase_mixture("test_again", model_path,
                                  chat_languages=["hi"], language_table=TABLE)
  assert second == first
  assert seqio.get_mixture_or_task(second) is mixture


def test_phase_mixture_overrides(model_path, vocabulary):
  name = mixtures.phase_mixture("test_override", model_path,
                                chat_languages=["en", "hi"],
                                rate_overrides={"chat_en": 0.25},
                                language_table=TABLE)
  mixture = seqio.get_mixture_or_task(name)
  key = tasks.vocabulary_key(vocabulary)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == pytest.approx({f"chat_en.vocab_{key}": 0.25,
                                 f"chat_hi.vocab_{key}": 0.75})


def test_phase_mixture_unknown_override_raises(model_path):
  with pytest.raises(ConfigError, match="'chat_fr'.*chat_en"):
    mixtures.phase_mixture("test_bad_override", model_path,
                           chat_languages=["en"],
                           rate_overrides={"chat_fr": 0.5},
                           language_table=TABLE)


def test_unknown_code_names_gin_parameter(model_path):
  with pytest.raises(ConfigError,
                     match="'xx' in phase_mixture.chat_languages"):
    mixtures.phase_mixture("test_unknown", model_path,
                           chat_languages=["en", "xx"], language_table=TABLE)
  with pytest.raises(ConfigError,
                     match="'hi-Latn' in phase_mixture.lexicon_languages"):
    mixtures.phase_mixture("test_unknown", model_path,
                           lexicon_languages=["hi-Latn"],
                           language_table=TABLE)


def test_code_outside_language_table_raises(model_path):
  table = languages.language_table(languages=["en", "hi"])
  with pytest.raises(ConfigError, match="'ta' in phase_mixture"):
    mixtures.phase_mixture("test_table", model_path,
                           chat_languages=["ta"], language_table=table)


def test_phase_mixture_from_gin(model_path, vocabulary):
  gin.parse_config([
      "phase_mixture.name = 'test_gin'",
      f"phase_mixture.vocabulary = '{model_path}'",
      "phase_mixture.chat_languages = ['hi']",
  ])
  name = mixtures.phase_mixture()
  assert name == f"test_gin.vocab_{tasks.vocabulary_key(vocabulary)}"


def test_no_languages_raises(model_path):
  with pytest.raises(ConfigError, match="no languages"):
    mixtures.phase_mixture("test_empty", model_path, language_table=TABLE)


def _register_numbered_task(name, count, language, vocabulary):
  """Registers a chat-like task of `count` texts '<language> example <i>'."""
  if name in seqio.TaskRegistry.names():
    return name

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    texts = [f"{language} example {i}" for i in range(count)]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([""] * count),
        "targets": tf.constant(texts),
    })

  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn, splits=["train"], num_input_examples={"train": count}),
      output_features=tasks.output_features(vocabulary, inputs_add_eos=False),
      preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
          functools.partial(tasks.add_language_features,
                            inputs_language=language,
                            targets_language=language),
      ])
  return name


def test_small_task_keeps_appearing(vocabulary):
  small = _register_numbered_task("test_small_3", 3, "ta", vocabulary)
  large = _register_numbered_task("test_large_300", 300, "hi", vocabulary)
  # Equal rates: the 3 small examples are used up after about 6 rows.
  mixtures.register_mixture("test_small_large", [small, large],
                            rate_overrides={small: 0.5, large: 0.5})
  ds = pipeline.get_dataset("test_small_large", split="train",
                            sequence_length=16, batch_size=8,
                            language_table=TABLE, shuffle=True, seed=0,
                            repeat=True, pack=False)
  tamil = TABLE.id("ta")
  small_rows = []
  small_per_batch = []
  for batch in pipeline.as_numpy_batches(ds.take(20)):
    is_small = batch["decoder_language_ids"][:, 0] == tamil
    small_rows.extend(tuple(row) for row in batch["decoder_target_tokens"][
        is_small])
    small_per_batch.append(int(is_small.sum()))

  assert len(small_rows) > 40
  assert len(set(small_rows)) == 3
  assert sum(small_per_batch[-5:]) > 5


def test_lexicon_kinds_match_tasks():
  assert mixtures.LEXICON_KINDS == (tasks.LEXICON_FROM_ENGLISH,
                                    tasks.LEXICON_TO_ENGLISH)


def test_import_skips_tensorflow():
  # gin parsing imports this module in every entry point.
  code = ("import sys, sutra_jax.data.mixtures; "
          "print('tensorflow' in sys.modules, 'seqio' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True, timeout=60)
  assert result.stdout.split() == ["False", "False"]


def test_phase_mixture_bad_temperature_names_parameter(model_path):
  with pytest.raises(ConfigError, match="phase_mixture.temperature"):
    mixtures.phase_mixture("test_temperature", model_path,
                           chat_languages=["en"], temperature=0,
                           language_table=TABLE)


def test_unregistered_task_raises():
  with pytest.raises(ConfigError, match="'no_such_task'"):
    mixtures.register_mixture("test_unregistered", ["no_such_task"])
