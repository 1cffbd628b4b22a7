"""Tests of the TFDS sources: mocked public datasets and a real tiny one."""

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from sutra_jax.data import sources
from sutra_jax.data import tfds_sources
from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

LENGTHS = {"inputs": 32, "targets": 32}


class TinyText(tfds.core.GeneratorBasedBuilder):
  """23 lines of text in 3 files, prepared offline into a temporary folder."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(23):
      yield i, {"text": f"line {i}"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  TinyText(data_dir=str(data_dir),
           file_format="tfrecord").download_and_prepare(
               download_config=tfds.download.DownloadConfig(
                   max_examples_per_split=None))
  return str(data_dir)


def _examples(task_name, split="train"):
  task = seqio.get_mixture_or_task(task_name)
  return list(task.get_dataset(LENGTHS, split=split,
                               shuffle=False).as_numpy_iterator())


def test_wiki40b_tasks_per_language(vocabulary, tmp_path):
  spec = {"kind": "tfds", "name": "wiki", "languages": ["hi", "ru"],
          "dataset": "wiki40b/{language}:1.3.0", "cleaner": "wiki40b",
          "data_dir": str(tmp_path), "num_examples": 6}
  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
    registered = sources.register_sources([spec], vocabulary)
    assert [t.name.split(".")[0] for t in registered] == ["wiki_hi",
                                                          "wiki_ru"]
    examples = _examples(registered[1].name)
    validation = _examples(registered[0].name, "validation")
  assert len(examples) == 6
  assert len(validation) == 6
  assert all(ex["targets_language"] == b"ru" for ex in examples)
  assert all(ex["inputs"].size == 0 for ex in examples)
  assert all(ex["targets"][-1] == 1 for ex in examples)  # EOS.
  assert seqio.get_mixture_or_task(
      registered[0].name).num_input_examples("train") == 6


def test_c4_language_splits(vocabulary, tmp_path):
  spec = {"kind": "tfds", "name": "c4", "languages": ["hi"],
          "dataset": "c4/multilingual:3.1.0", "data_dir": str(tmp_path),
          "splits": {"train": "{language}",
                     "validation": "{language}-validation"},
          "num_examples": {"hi": 4}}
  with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path)):
    [task] = sources.register_sources([spec], vocabulary)
    assert len(_examples(task.name, "validation")) == 4


def test_translation_pairs(vocabulary, tmp_path):
  spec = {"kind": "tfds_parallel", "name": "ted", "pairs": [["pt", "en"]],
          "dataset": "ted_hrlr_translate/{source}_to_{target}:1.0.0",
          "data_dir": str(tmp_path), "num_examples": 3}
  with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
    [task] = sources.register_sources([spec], vocabulary)
    builder = tfds.builder("ted_hrlr_translate/pt_to_en:1.0.0",
                           data_dir=str(tmp_path))
    raw = list(builder.as_dataset(split="train").as_numpy_iterator())
    examples = _examples(task.name)
  assert task.name.startswith("ted_pt_en.vocab_")
  assert (task.inputs_language, task.targets_language) == ("pt", "en")
  for ex, pair in zip(examples, raw):
    assert vocabulary.decode(ex["inputs"][:-1].tolist()) == pair["pt"].decode()
    assert vocabulary.decode(ex["targets"][:-1].tolist()) == pair["en"].decode()
    assert ex["inputs"][-1] == 1


def test_missing_dataset_names_the_command(vocabulary, tmp_path):
  spec = {"kind": "tfds", "name": "wiki", "languages": ["hi"],
          "dataset": "wiki40b/{language}:1.3.0", "data_dir": str(tmp_path)}
  with pytest.raises(DataError) as error:
    sources.register_sources([spec], vocabulary)
  message = str(error.value)
  assert "not prepared" in message
  assert f"tfds build wiki40b/hi:1.3.0 --data_dir={tmp_path}" in message
  assert "\n" not in message
  assert list(tmp_path.iterdir()) == []  # Nothing was downloaded.


def test_unknown_dataset_and_feature(vocabulary, tmp_path, tiny_dir):
  with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_data'"):
    tfds_sources.TfdsTextSource("no_such_data", {"train": "train"},
                                data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="no feature 'body'"):
    tfds_sources.TfdsTextSource("tiny_text", {"train": "train"},
                                data_dir=tiny_dir, text_feature="body")
  with pytest.raises(ConfigError, match="unknown field 'lang'"):
    sources.register_sources(
        [{"kind": "tfds", "name": "w", "languages": ["hi"],
          "dataset": "wiki40b/{lang}"}], vocabulary)


def test_prepared_dataset_counts(tiny_dir):
  source = tfds_sources.TfdsTextSource("tiny_text", {"train": "train"},
                                       data_dir=tiny_dir)
  assert source.num_input_examples("train") == 23


@pytest.mark.parametrize("num_shards", [2, 4])
def test_tfds_shards_are_disjoint_and_cover(tiny_dir, num_shards):
  source = tfds_sources.TfdsTextSource("tiny_text", {"train": "train"},
                                       data_dir=tiny_dir)
  seen = []
  for index in range(num_shards):
    shard = seqio.ShardInfo(index=index, num_shards=num_shards)
    ds = source.get_dataset("train", shuffle=False, shard_info=shard)
    texts = [ex["targets"].decode() for ex in ds.as_numpy_iterator()]
    assert texts, index
    seen.extend(texts)
  assert sorted(seen) == sorted(f"line {i}" for i in range(23))


def test_clean_wiki40b():
  text = ("\n_START_ARTICLE_\nTitle\n_START_SECTION_\nHistory\n"
          "_START_PARAGRAPH_\nFirst line._NEWLINE_Second line.")
  assert tfds_sources.clean_wiki40b(tf.constant(text)).numpy().decode() == (
      "Title\nHistory\nFirst line.\nSecond line.")
