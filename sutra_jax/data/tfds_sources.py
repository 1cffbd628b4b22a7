"""seqio data sources over TensorFlow Datasets, read offline.

`TfdsTextSource` reads one text feature of a TFDS dataset, such as
`wiki40b/hi` (feature `text`) or the `hi` split of `c4/multilingual`.
`TfdsParallelSource` reads two features of a translation dataset, such as
`pt` and `en` of `ted_hrlr_translate/pt_to_en`. Both emit `{"inputs",
"targets"}` string examples like the file sources.

Nothing is downloaded unless `download=True`: a dataset that is not prepared
in `data_dir` raises `DataError` with the `tfds build` command that prepares
it. Sharding (`seqio.ShardInfo`) reads one of `tfds.even_splits`, so each
shard reads a disjoint, contiguous part of the split and only its files.
"""

import re
from typing import Mapping

from absl import logging
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from sutra_jax.errors import ConfigError
from sutra_jax.errors import DataError

# Wiki-40B marks article, section and paragraph starts with lines of their
# own and joins the lines of a paragraph with `_NEWLINE_`.
_WIKI40B_MARKER = r"_START_(ARTICLE|SECTION|PARAGRAPH)_\n"
_WIKI40B_NEWLINE = "_NEWLINE_"
CLEANERS = ("none", "wiki40b")


def _prepare_hint(name: str, data_dir: str | None) -> str:
  where = f" --data_dir={data_dir}" if data_dir else ""
  return (f"prepare it with `tfds build {name}{where}` (on a pod, once, into "
          "a shared bucket), or set download=True in the source spec")


def load_builder(name: str, data_dir: str | None,
                 download: bool) -> tfds.core.DatasetBuilder:
  """Returns the builder of a TFDS dataset, checking that its data exists.

  Args:
    name: `dataset[/config][:version]`, such as `wiki40b/hi:1.3.0`.
    data_dir: the TFDS data folder; None uses TFDS's default
      (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    download: download and prepare the dataset when it is missing.

  Raises:
    DataError: an unknown dataset or config, or data that is not prepared
      and `download` is false.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as e:  # Includes DatasetNotFoundError.
    first_line = str(e).strip().splitlines()[0]
    raise DataError(f"unknown TFDS dataset {name!r}: {first_line}; check "
                    "the name with `tfds build --help` or the TFDS "
                    "catalogue") from None
  if download:
    logging.info("Downloading and preparing TFDS dataset %s", name)
    builder.download_and_prepare()
  return builder


def open_split(builder: tfds.core.DatasetBuilder, name: str, split: str,
               data_dir: str | None, **kwargs) -> tf.data.Dataset:
  """Calls `builder.as_dataset`, turning missing data into a DataError."""
  try:
    return builder.as_dataset(split=split, **kwargs)
  except AssertionError:
    # TFDS asserts that the data folder exists before reading anything.
    raise DataError(f"TFDS dataset {name!r} is not prepared in "
                    f"{data_dir or tfds.core.constants.DATA_DIR}; "
                    f"{_prepare_hint(name, data_dir)}") from None
  except ValueError as e:
    raise DataError(f"cannot read split {split!r} of TFDS dataset {name!r}: "
                    f"{str(e).strip().splitlines()[0]}") from None


def clean_wiki40b(text: tf.Tensor) -> tf.Tensor:
  """Turns Wiki-40B markup into plain text (string tensor in and out)."""
  text = tf.strings.regex_replace(text, _WIKI40B_MARKER, "")
  text = tf.strings.regex_replace(text, _WIKI40B_NEWLINE, "\n")
  return tf.strings.strip(text)


class _TfdsSource(seqio.DataSource):
  """Reads splits of one TFDS dataset and maps them to inputs/targets."""

  def __init__(self, name: str, splits: Mapping[str, str],
               data_dir: str | None = None, download: bool = False,
               num_examples: Mapping[str, int] | None = None):
    """Initializes the source and checks that the data can be read.

    Args:
      name: `dataset[/config][:version]`.
      splits: TFDS split by seqio split name, such as `{"train": "hi",
        "validation": "hi-validation"}` for `c4/multilingual`.
      data_dir: the TFDS data folder; None uses TFDS's default.
      download: download and prepare the dataset when it is missing.
      num_examples: examples by seqio split, for datasets whose metadata has
        no counts; by default they come from the dataset info.

    Raises:
      DataError: see `load_builder`; or a split that cannot be opened.
    """
    self._name = name
    self._data_dir = data_dir
    self._split_map = dict(splits)
    self._builder = load_builder(name, data_dir, download)
    counts = {}
    for split, tfds_split in self._split_map.items():
      open_split(self._builder, name, tfds_split, data_dir)  # Fails early.
      counts[split] = (num_examples or {}).get(split)
      if counts[split] is None:
        counts[split] = self._info_count(tfds_split)
    super().__init__(splits=tuple(self._split_map), caching_permitted=True,
                     num_input_examples=counts)

  def _info_count(self, tfds_split: str) -> int | None:
    try:
      count = self._builder.info.splits[tfds_split].num_examples
    except (KeyError, ValueError):
      return None
    return count or None

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str):
    return [f"{self._name}:{self._split_map[split]}"]

  def _read(self, split: str, shuffle: bool, seed: int | None,
            shard_info: seqio.ShardInfo | None) -> tf.data.Dataset:
    if split not in self._split_map:
      raise ConfigError(f"unknown split {split!r} of TFDS source "
                        f"{self._name!r}: it has "
                        f"{', '.join(self._split_map)}")
    tfds_split = self._split_map[split]
    if shard_info and shard_info.num_shards > 1:
      tfds_split = tfds.even_splits(
          tfds_split, n=shard_info.num_shards)[shard_info.index]
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    return open_split(self._builder, self._name, tfds_split, self._data_dir,
                      shuffle_files=shuffle and seed is not None,
                      read_config=read_config)

  def __str__(self):
    return f"{type(self).__name__}({self._name})"


class TfdsTextSource(_TfdsSource):
  """Monolingual text: one string feature of each example becomes targets."""

  def __init__(self, name: str, splits: Mapping[str, str], *,
               text_feature: str = "text", cleaner: str = "none", **kwargs):
    """Initializes the source.

    Args:
      name: see `_TfdsSource`.
      splits: see `_TfdsSource`.
      text_feature: the feature with the text.
      cleaner: `wiki40b` removes Wiki-40B's markup; `none` keeps the text.
      **kwargs: `data_dir`, `download`, `num_examples` of `_TfdsSource`.
    """
    if cleaner not in CLEANERS:
      raise ConfigError(f"unknown cleaner {cleaner!r}: use one of "
                        f"{', '.join(CLEANERS)}")
    super().__init__(name, splits, **kwargs)
    self._text_feature = text_feature
    self._cleaner = cleaner
    _check_features(self._builder, name, [text_feature])

  def get_dataset(self, split="train", shuffle=True, seed=None,
                  shard_info=None, *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    feature = self._text_feature
    clean = self._cleaner == "wiki40b"

    def convert(example):
      text = example[feature]
      return {"inputs": tf.constant(""),
              "targets": clean_wiki40b(text) if clean else text}

    return self._read(split, shuffle, seed, shard_info).map(
        convert, num_parallel_calls=tf.data.AUTOTUNE)


class TfdsParallelSource(_TfdsSource):
  """Translation pairs: a source feature becomes inputs, a target targets."""

  def __init__(self, name: str, splits: Mapping[str, str], *,
               source_feature: str, target_feature: str, **kwargs):
    """Initializes the source.

    Args:
      name: see `_TfdsSource`.
      splits: see `_TfdsSource`.
      source_feature: the feature with the source text, such as `pt`.
      target_feature: the feature with the target text, such as `en`.
      **kwargs: `data_dir`, `download`, `num_examples` of `_TfdsSource`.
    """
    super().__init__(name, splits, **kwargs)
    self._source_feature = source_feature
    self._target_feature = target_feature
    _check_features(self._builder, name, [source_feature, target_feature])

  def get_dataset(self, split="train", shuffle=True, seed=None,
                  shard_info=None, *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    source, target = self._source_feature, self._target_feature
    return self._read(split, shuffle, seed, shard_info).map(
        lambda ex: {"inputs": ex[source], "targets": ex[target]},
        num_parallel_calls=tf.data.AUTOTUNE)


def _check_features(builder: tfds.core.DatasetBuilder, name: str,
                    features: list[str]) -> None:
  available = list(builder.info.features.keys())
  for feature in features:
    if feature not in available:
      raise ConfigError(f"TFDS dataset {name!r} has no feature {feature!r}; "
                        f"it has {', '.join(available)}")


def format_name(template: str, **values: str) -> str:
  """Fills `{language}`-style fields of a dataset or split name."""
  try:
    return template.format(**values)
  except (KeyError, IndexError) as e:
    raise ConfigError(f"unknown field {e} in {template!r}: use "
                      f"{', '.join('{' + k + '}' for k in values)}") from None

