"""A resumed training run reads exactly the batches of an uninterrupted one.

The trainer stores the number of consumed batches with each checkpoint and
skips them when it resumes. This test runs the real seqio pipeline over a
file-source mixture and records the batches the trainer takes.
"""

import dataclasses

import gin
import numpy as np
import pytest

from sutra_jax import languages
from sutra_jax.data import mixtures
from sutra_jax.training import trainer
from sutra_jax.training.optimizers import OptimizerConfig
from sutra_jax.training.phases import PhaseConfig
from tests.training.training_testlib import TINY_BINDINGS


class RecordingData:
  """A `trainer.DatasetFn` over the real pipeline that records each batch."""

  def __init__(self):
    self.calls = []  # The batches taken after each call, in order.

  def __call__(self, phase, table, shard_index, num_shards, skip_batches):
    ds = trainer._seqio_dataset(phase, table, shard_index, num_shards,  # pylint: disable=protected-access
                                skip_batches)
    taken = []
    self.calls.append(taken)
    for batch in ds.as_numpy_iterator():
      taken.append(batch["decoder_target_tokens"])
      yield batch


@pytest.mark.slow
def test_resumed_run_reads_same_batches(tmp_path, model_path):
  gin.parse_config([TINY_BINDINGS, "ModelConfig.vocab_size = 1000"])
  table = languages.language_table()
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "hi.txt").write_text(
      "".join(f"hi line {i}\n" for i in range(300)))
  (tmp_path / "data" / "mr.txt").write_text(
      "".join(f"mr line {i}\n" for i in range(30)))
  mixture = mixtures.source_mixture(
      "test_resume", model_path,
      [{"kind": "text", "name": "r", "path": str(tmp_path / "data")}],
      language_table=table)
  phase = PhaseConfig(
      name="resume", mixture=mixture, num_steps=2, batch_size=8,
      sequence_length=32, checkpoint_every=2, log_every=2,
      optimizer=OptimizerConfig(warmup_steps=1, decay_steps=4))
  longer = dataclasses.replace(phase, num_steps=4)

  split = RecordingData()
  trainer.train(str(tmp_path / "split"), phase, dataset_fn=split)
  trainer.train(str(tmp_path / "split"), longer, dataset_fn=split)
  whole = RecordingData()
  trainer.train(str(tmp_path / "whole"), longer, dataset_fn=whole)

  first, resumed = split.calls
  [uninterrupted] = whole.calls
  assert len(first) == 2
  assert len(resumed) == 2
  assert len(uninterrupted) == 4
  for index, (a, b) in enumerate(zip(first + resumed, uninterrupted)):
    np.testing.assert_array_equal(a, b, err_msg=f"batch {index}")
  assert not np.array_equal(uninterrupted[1], uninterrupted[2])
