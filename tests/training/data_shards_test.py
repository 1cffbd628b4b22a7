"""Tests of data shards and the multi-process start-up checks (1 process)."""

import gin
import numpy as np
import pytest

from sutra_jax import distributed
from sutra_jax.errors import ConfigError
from sutra_jax.training import data_shards
from sutra_jax.training.phases import PhaseConfig
from tests.training.training_testlib import synthetic_batch


def _phase(batch_size=8):
  return PhaseConfig(name="test", mixture="synthetic", num_steps=2,
                     batch_size=batch_size, sequence_length=8)


class _ShardedData:
  """Shard s of n yields rows [s * B/n, (s+1) * B/n) of one global stream."""

  def __init__(self):
    self.calls = []

  def __call__(self, phase, table, shard, num_shards, skip):
    del table
    self.calls.append((shard, num_shards, skip))
    rows = phase.batch_size // num_shards
    index = skip
    while True:
      full = synthetic_batch(index, phase.batch_size, phase.sequence_length)
      yield {k: v[shard * rows:(shard + 1) * rows] for k, v in full.items()}
      index += 1


def test_one_process_reads_every_shard_in_order():
  gin.parse_config("data_shard_count.num_shards = 4")
  data = _ShardedData()
  batches = data_shards.open_local_batches(data, _phase(), None,
                                           skip_batches=3)
  first = next(batches)
  assert data.calls == [(0, 4, 3), (1, 4, 3), (2, 4, 3), (3, 4, 3)]
  expected = synthetic_batch(3, 8, 8)
  for name, value in expected.items():
    np.testing.assert_array_equal(first[name], value, err_msg=name)


def test_default_is_one_shard_per_process():
  assert distributed.data_shard_count() == 1
  assert distributed.local_data_shards(8) == ([0], 1)


@pytest.mark.parametrize("binding,fragment", [
    ("data_shard_count.num_shards = -1", "must be 0"),
    ("data_shard_count.num_shards = 3", "does not divide into 3 data shards"),
])
def test_bad_shard_counts(binding, fragment):
  gin.parse_config(binding)
  with pytest.raises(ConfigError, match=fragment):
    distributed.local_data_shards(8)


def test_initialize_needs_all_three_settings():
  with pytest.raises(ConfigError, match="set all three or none"):
    distributed.initialize(coordinator_address="127.0.0.1:1234")
  with pytest.raises(ConfigError, match="is not in"):
    distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
  with pytest.raises(ConfigError, match="takes no"):
    distributed.initialize("127.0.0.1:1234", auto=True)


def test_initialize_without_settings_is_single_process():
  distributed.initialize()
  assert distributed.make_mesh().devices.size == 8


def test_dcn_shape_must_match_slices():
  gin.parse_config("dcn_mesh_shape.data = 2")
  with pytest.raises(ConfigError, match="1 slices|from 1"):
    distributed.make_mesh()
