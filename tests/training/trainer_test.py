"""End-to-end tests of `trainer.train` with the real tiny model.

The batches are synthetic (`training_testlib.SyntheticData`), so these tests
cover the loop, resumption and the phase hand-off without the data pipeline.
Each `train` call compiles the model's initialiser and the train step, about
10-15 s on an idle 2-core CPU. The resume test (two calls, about 25 s) stays
in the fast set so that it covers the loop. The others are marked slow.
"""

import dataclasses
import logging
import os

import gin
import jax
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.errors import CheckpointError
from sutra_jax.errors import ConfigError
from sutra_jax.training import checkpoints
from sutra_jax.training import metrics as metrics_lib
from sutra_jax.training import trainer
from sutra_jax.training.optimizers import OptimizerConfig
from sutra_jax.training.phases import PhaseConfig
from tests.training.training_testlib import TINY_BINDINGS, SyntheticData

PHASE = PhaseConfig(
    name="test", mixture="synthetic", num_steps=4, batch_size=8,
    sequence_length=32, checkpoint_every=2, keep_checkpoints=2, log_every=2,
    optimizer=OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=1,
                              decay_steps=6))


def _parse(*extra):
  gin.parse_config([TINY_BINDINGS, *extra])


def _final_params(run_dir) -> dict[str, np.ndarray]:
  """Reads every parameter of the newest checkpoint of `run_dir`."""
  step = checkpoints.latest_step(run_dir)
  replicated = jax.sharding.NamedSharding(partitioning.make_mesh(),
                                          jax.sharding.PartitionSpec())
  targets = {
      path: jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=replicated)
      for path, meta in checkpoints.param_metadata(run_dir, step).items()
  }
  return {path: np.asarray(value) for path, value in
          checkpoints.restore_params(run_dir, step, targets).items()}


def test_resume_continues_from_checkpoint(tmp_path):
  _parse()
  run_dir = str(tmp_path / "run")
  first = trainer.train(run_dir, PHASE, dataset_fn=SyntheticData())

  data = SyntheticData()
  longer = dataclasses.replace(PHASE, num_steps=6)
  resumed = trainer.train(run_dir, longer, dataset_fn=data)

  assert first.steps == 4
  assert first.steps_run == 4
  assert resumed.steps == 6
  assert resumed.steps_run == 2
  assert data.skipped == [4]
  assert checkpoints.latest_step(run_dir) == 6
  assert checkpoints.read_progress(run_dir, 6).batches_consumed == 6
  records = metrics_lib.read_metrics(run_dir)
  assert [r["step"] for r in records] == [2, 4, 6]
  assert all(np.isfinite(r["loss"]) for r in records)
  assert resumed.first_loss == first.first_loss
  assert resumed.final_loss == records[-1]["loss"]
  assert set(resumed.per_language_loss) <= {"en", "hi", "mr"}
  assert os.path.exists(os.path.join(run_dir, trainer.CONFIG_FILE))

  # A finished phase is not trained again and reads no data.
  unused = SyntheticData()
  again = trainer.train(run_dir, longer, dataset_fn=unused)
  assert again.steps_run == 0
  assert again.steps == 6
  assert unused.skipped == []


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(tmp_path):
  _parse()
  longer = dataclasses.replace(PHASE, num_steps=6)
  split_dir = str(tmp_path / "split")
  trainer.train(split_dir, PHASE, dataset_fn=SyntheticData())
  trainer.train(split_dir, longer, dataset_fn=SyntheticData())
  whole_dir = str(tmp_path / "whole")
  trainer.train(whole_dir, longer, dataset_fn=SyntheticData())

  split = metrics_lib.read_metrics(split_dir)[-1]
  whole = metrics_lib.read_metrics(whole_dir)[-1]
  assert split["step"] == whole["step"] == 6
  np.testing.assert_allclose(split["loss"], whole["loss"], rtol=1e-5)
  split_params = _final_params(split_dir)
  for path, value in _final_params(whole_dir).items():
    np.testing.assert_allclose(split_params[path], value, rtol=1e-5,
                               atol=1e-6, err_msg=path)


@pytest.mark.slow
def test_language_phase_keeps_core_bit_identical(tmp_path):
  _parse()
  concept_dir = str(tmp_path / "concept")
  trainer.train(concept_dir, dataclasses.replace(PHASE, num_steps=2),
                dataset_fn=SyntheticData())
  language = dataclasses.replace(
      PHASE, name="language", num_steps=2, init_from=concept_dir,
      trainable=(r"^encoder/", r"^decoder/"))
  language_dir = str(tmp_path / "language")
  trainer.train(language_dir, language, dataset_fn=SyntheticData(seed=1))

  before = _final_params(concept_dir)
  after = _final_params(language_dir)
  assert sorted(before) == sorted(after)
  core = [p for p in before if p.startswith("core/")]
  assert core
  for path in before:
    identical = np.array_equal(before[path].view(np.uint32),
                               after[path].view(np.uint32))
    trains = path.startswith(("encoder/", "decoder/"))
    assert identical != trains, path


@pytest.mark.slow
def test_hand_off_of_new_output_head(tmp_path, caplog):
  _parse("ModelConfig.tie_embeddings = True")
  tied_dir = str(tmp_path / "tied")
  trainer.train(tied_dir, dataclasses.replace(PHASE, num_steps=1),
                dataset_fn=SyntheticData())
  gin.bind_parameter("ModelConfig.tie_embeddings", False)
  untied = dataclasses.replace(PHASE, name="untied", num_steps=1,
                               init_from=tied_dir)

  with pytest.raises(CheckpointError, match="lm_head/kernel"):
    trainer.train(str(tmp_path / "undeclared"), untied,
                  dataset_fn=SyntheticData())

  declared = dataclasses.replace(untied,
                                 new_parameters={r"^lm_head/": "fresh"})
  with caplog.at_level(logging.INFO):
    result = trainer.train(str(tmp_path / "declared"), declared,
                           dataset_fn=SyntheticData())
  assert result.steps == 1
  assert "Initialised lm_head/kernel (16, 64): fresh" in caplog.text


@pytest.mark.slow
def test_failed_resume_keeps_config_and_phase_is_checked(tmp_path):
  _parse()
  run_dir = str(tmp_path / "run")
  trainer.train(run_dir, dataclasses.replace(PHASE, num_steps=2),
                dataset_fn=SyntheticData())
  config_path = os.path.join(run_dir, "config.gin")
  with open(config_path, encoding="utf-8") as f:
    original = f.read()

  # Another model size cannot resume these checkpoints.
  gin.bind_parameter("ModelConfig.d_model", 48)
  with pytest.raises(CheckpointError, match="cannot resume"):
    trainer.train(run_dir, PHASE, dataset_fn=SyntheticData())
  with open(config_path, encoding="utf-8") as f:
    assert f.read() == original

  # Another phase may not reuse the run directory.
  other = dataclasses.replace(PHASE, name="other", num_steps=2)
  with pytest.raises(ConfigError, match="checkpoints of phase 'test'"):
    trainer.train(run_dir, other, dataset_fn=SyntheticData())


def test_damaged_progress_record_is_reported(tmp_path):
  _parse()
  run_dir = str(tmp_path / "run")
  trainer.train(run_dir, dataclasses.replace(PHASE, num_steps=2),
                dataset_fn=SyntheticData())
  progress_dir = os.path.join(run_dir, "checkpoints", "2", "progress")
  for name in os.listdir(progress_dir):
    with open(os.path.join(progress_dir, name), "w", encoding="utf-8") as f:
      f.write("{not json")

  with pytest.raises(CheckpointError, match="is unreadable"):
    trainer.train(run_dir, PHASE, dataset_fn=SyntheticData())
