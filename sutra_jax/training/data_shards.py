"""This process's rows of each global batch, read shard by shard.

See `sutra_jax.distributed.data_shard_count` for why the shard count, and
not the process count, fixes the batches.
"""

from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from sutra_jax import distributed

Batch = Mapping[str, np.ndarray]


def open_local_batches(dataset_fn: Callable[..., Iterable[Batch]], phase,
                       table, skip_batches: int) -> Iterator[Batch]:
  """Opens the shards of this process and joins their rows per step.

  Args:
    dataset_fn: `(phase, table, shard index, shard count, skip) -> batches`
      of [batch_size / shard count, L] rows (a `trainer.DatasetFn`).
    phase: the `PhaseConfig`.
    table: the `LanguageTable`.
    skip_batches: batches of each shard to skip, to resume a run.

  Returns:
    An iterator of [batch_size / processes, L] batches: the sub-batches of
    this process's shards, concatenated in shard order.
  """
  shards, num_shards = distributed.local_data_shards(phase.batch_size)
  iterators = [_as_iterator(dataset_fn(phase, table, shard, num_shards,
                                       skip_batches)) for shard in shards]
  if len(iterators) == 1:
    return iterators[0]
  return _joined(iterators)


def _as_iterator(batches: Any) -> Iterator[Batch]:
  if hasattr(batches, "as_numpy_iterator"):
    return batches.as_numpy_iterator()
  return iter(batches)


def _joined(iterators: list[Iterator[Batch]]) -> Iterator[Batch]:
  # zip stops at the shortest shard, so the trainer reports the data as
  # exhausted as soon as any shard is.
  for parts in zip(*iterators):
    yield {name: np.concatenate([part[name] for part in parts])
           for name in parts[0]}
