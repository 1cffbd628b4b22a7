"""The batched input pipeline that training and evaluation read.

`get_dataset` turns a registered seqio task or mixture into batches of the
features of `sutra_jax.data.feature_converter.SutraFeatureConverter`, each of
shape [B, L] (B batch size, L sequence length).

The batches are a pure function of the arguments: with the same seed, two
calls give identical batches. A resumed run restores its data position by
skipping the batches it already consumed (`skip_batches`, or `Dataset.skip`
on the result). tf.data still reads and packs the skipped examples, so the
skip costs time proportional to its length.
"""

from typing import Iterator

import numpy as np
import seqio
import tensorflow as tf

from sutra_jax import languages
from sutra_jax.data import sources
from sutra_jax.data import tasks
from sutra_jax.data.feature_converter import SutraFeatureConverter
from sutra_jax.errors import ConfigError


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(f"invalid {name} {value!r}: expected an integer")
  if value < minimum:
    raise ConfigError(f"invalid {name} {value}: expected an integer of at "
                      f"least {minimum}")


def _provider(name: str) -> seqio.Task | seqio.Mixture:
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ConfigError(f"unknown seqio task or mixture {name!r}: "
                      f"{str(e).strip()}; register it first, for example "
                      "with sutra_jax.data.mixtures.phase_mixture") from None


def _check_task_languages(provider, table: languages.LanguageTable) -> None:
  """Checks the languages of the demo and source tasks of `provider`."""
  task_list = (provider.tasks if isinstance(provider, seqio.Mixture)
               else [provider])
  for task in task_list:
    info = tasks.task_info(task.name) or sources.source_task(task.name)
    if info is not None:
      languages.check_codes([info.inputs_language, info.targets_language],
                            table, f"the languages of task {task.name!r}")


def _pad_batch(batch: dict[str, tf.Tensor],
               batch_size: int) -> dict[str, tf.Tensor]:
  """Pads a short final batch with all-zero rows, which are padding."""
  padded = {}
  for name, value in batch.items():
    rows = batch_size - tf.shape(value)[0]
    value = tf.pad(value, [[0, rows], [0, 0]])
    value.set_shape([batch_size, value.shape[1]])
    padded[name] = value
  return padded


def get_dataset(
    mixture_or_task_name: str,
    *,
    split: str,
    sequence_length: int,
    batch_size: int,
    language_table: languages.LanguageTable,
    shuffle: bool,
    seed: int | None,
    repeat: bool,
    shard_info: seqio.ShardInfo | None = None,
    pack: bool = True,
    skip_batches: int = 0,
) -> tf.data.Dataset:
  """Builds the batched model-feature dataset of a task or mixture.

  Args:
    mixture_or_task_name: a registered seqio task or mixture.
    split: the split to read, such as `train` or `validation`.
    sequence_length: L, the tokens per row. A translation example is its
      source and target tokens together, cut to L.
    batch_size: B, rows per batch (per host when `shard_info` is set).
    language_table: maps language codes to the language ids of the batch.
    shuffle: shuffle the examples of each task.
    seed: seeds shuffling and mixture sampling. None makes them vary between
      calls.
    repeat: repeat every task without end, for training. Without it each task
      is read once, and a short final batch is padded with all-padding rows
      so that every batch has B rows.
    shard_info: this host's shard; hosts read disjoint examples.
    pack: pack several examples into each row.
    skip_batches: batches to skip at the start, to resume a run.

  Returns:
    A dataset of dicts of [B, L] tensors: int32 `decoder_target_tokens`,
    `decoder_input_tokens`, `decoder_segment_ids`, `decoder_positions`,
    `encoder_language_ids`, `decoder_language_ids`,
    `decoder_example_kinds`, `decoder_pair_ids` and float32
    `decoder_loss_weights`.

  Raises:
    ConfigError: an invalid size, an unknown task, mixture or split, or a
      task language missing from `language_table`.
  """
  _check_positive_int("sequence_length", sequence_length)
  _check_positive_int("batch_size", batch_size)
  _check_positive_int("skip_batches", skip_batches, minimum=0)
  if seed is not None:
    _check_positive_int("seed", seed, minimum=0)
  provider = _provider(mixture_or_task_name)
  if split not in provider.splits:
    raise ConfigError(f"unknown split {split!r} for {mixture_or_task_name!r}:"
                      f" it has {', '.join(sorted(provider.splits))}")
  _check_task_languages(provider, language_table)

  converter = SutraFeatureConverter(language_table, pack=pack)
  ds = seqio.get_dataset(
      provider,
      task_feature_lengths={"inputs": sequence_length,
                            "targets": sequence_length},
      feature_converter=converter,
      dataset_split=split,
      shuffle=shuffle,
      num_epochs=None if repeat else 1,
      shard_info=shard_info,
      seed=seed,
      verbose=False,
  )
  if repeat:
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    ds = ds.batch(batch_size).map(lambda b: _pad_batch(b, batch_size))
  if skip_batches:
    ds = ds.skip(skip_batches)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def as_numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over a dataset from `get_dataset` as dicts of NumPy arrays."""
  return ds.as_numpy_iterator()
