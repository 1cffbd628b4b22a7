"""Tests of the non-finite guard: in the jitted step, on the host, in a run."""

import dataclasses
import logging

import gin
import jax
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.errors import ConfigError, DivergenceError
from sutra_jax.training import checkpoints
from sutra_jax.training import guard
from sutra_jax.training import metrics as metrics_lib
from sutra_jax.training import train_step as train_step_lib
from sutra_jax.training import trainer
from sutra_jax.training.optimizers import OptimizerConfig
from sutra_jax.training.phases import PhaseConfig
from tests.training import train_step_test
from tests.training.training_testlib import (NUM_LANGUAGES, TINY_BINDINGS,
                                             SyntheticData, synthetic_batch)


def _bits(tree):
  """Flattens a pytree to a list of raw uint8 views, for exact comparison."""
  return [np.asarray(x).reshape(-1).view(np.uint8).copy()
          for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_bit_identical(a, b):
  for x, y in zip(_bits(a), _bits(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _nan_weights(batch):
  batch = dict(batch)
  batch["decoder_loss_weights"] = np.full_like(batch["decoder_loss_weights"],
                                               np.nan)
  return batch


def test_non_finite_step_keeps_params_and_optimizer_state():
  mesh = partitioning.make_mesh(data=4, fsdp=2)
  _, graphdef, optimizer, shardings, state = train_step_test._setup(mesh)  # pylint: disable=protected-access
  batch_sharding = partitioning.batch_sharding(mesh, batch_size=8)
  step = train_step_lib.make_train_step(
      graphdef, optimizer, mesh=mesh, state_shardings=shardings,
      batch_sharding=batch_sharding,
      loss_weights=train_step_lib.LossWeights(),
      num_languages=NUM_LANGUAGES)
  good = train_step_lib.device_batch(synthetic_batch(0, 8, 32),
                                     batch_sharding)
  bad = train_step_lib.device_batch(_nan_weights(synthetic_batch(0, 8, 32)),
                                    batch_sharding)
  # One good step first, so that the AdamW moments are not all zero.
  state, metrics = step(state, good)
  assert int(metrics["skipped"]) == 0

  # A NaN batch: NaN loss weights.
  before = jax.device_get((state.params, state.opt_state))
  state, metrics = step(state, bad)
  assert int(metrics["skipped"]) == 1
  assert not np.isfinite(float(metrics["grad_norm"]))
  assert int(state.step) == 2
  _assert_bit_identical((state.params, state.opt_state), before)

  # A NaN parameter, with a good batch.
  params = jax.tree.map(np.array, jax.device_get(state.params))
  params["final_norm"]["scale"][0] = np.nan
  state = state.replace(params=jax.device_put(params, shardings.params))
  before = jax.device_get((state.params, state.opt_state))
  state, metrics = step(state, good)
  assert int(metrics["skipped"]) == 1
  assert not np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 3
  _assert_bit_identical((state.params, state.opt_state), before)


def _metrics(skipped, weights=(1.0, 0.0, 2.0)):
  return {"skipped": np.int32(skipped),
          "loss": np.float32(np.nan if skipped else 1.0),
          "grad_norm": np.float32(1.0),
          "language_weight_sum": np.asarray(weights, np.float32)}


def _run_guard(nan_guard, flags, start=1):
  """Feeds one step per flag, checking as the trainer does every 3 steps."""
  actions = []
  for step, flag in enumerate(flags, start):
    nan_guard.add(step, _metrics(flag))
    if step % 3 == 0 or nan_guard.due():
      actions.append((step, nan_guard.check()))
  return actions


def test_guard_logs_skips_with_step_and_languages(caplog):
  nan_guard = guard.NonFiniteGuard(
      guard.NonFiniteGuardConfig(max_consecutive_skips=4),
      ["en", "hi", "mr"])
  with caplog.at_level(logging.WARNING):
    actions = _run_guard(nan_guard, [0, 1, 0, 1, 1, 1])
    assert nan_guard.last_step_skipped
    nan_guard.add(7, _metrics(0))
    assert nan_guard.check() is None
  assert [a for _, a in actions] == [None, None]
  assert nan_guard.skipped_steps == 4
  assert not nan_guard.last_step_skipped
  skipped = [r.getMessage() for r in caplog.records]
  assert len(skipped) == 4
  assert skipped[0].startswith("Skipped step 2: loss nan")
  assert "batch languages: en, mr;" in skipped[0]


def test_guard_stops_after_k_consecutive_skips():
  nan_guard = guard.NonFiniteGuard(
      guard.NonFiniteGuardConfig(max_consecutive_skips=4,
                                 on_divergence="stop"), ["en", "hi", "mr"])
  # The run of four spans two checks and is followed by a good step.
  with pytest.raises(DivergenceError,
                     match=r"last 4 steps up to step 6 .*'stop'"):
    _run_guard(nan_guard, [0, 0, 1, 1, 1, 1, 0, 0, 0])


def test_guard_restores_until_the_rollbacks_are_used_up():
  nan_guard = guard.NonFiniteGuard(
      guard.NonFiniteGuardConfig(max_consecutive_skips=2, max_restores=2),
      ["en"])
  actions = _run_guard(nan_guard, [1, 1, 0, 1, 1, 0])
  assert (2, guard.RESTORE) in actions and (5, guard.RESTORE) in actions
  with pytest.raises(DivergenceError, match="2 rollbacks did not help"):
    _run_guard(nan_guard, [1, 1], start=7)


@pytest.mark.parametrize("binding,message", [
    ({"max_consecutive_skips": 0}, "max_consecutive_skips = 0"),
    ({"on_divergence": "retry"}, "use one of stop, restore"),
])
def test_guard_config_is_validated(binding, message):
  with pytest.raises(ConfigError, match=message):
    guard.NonFiniteGuardConfig(**binding)


class _PoisonedData(SyntheticData):
  """Synthetic batches whose loss weights are NaN for the listed indices."""

  def __init__(self, poisoned):
    super().__init__()
    self.poisoned = set(poisoned)

  def __call__(self, phase, table, shard_index, num_shards, skip_batches):
    batches = super().__call__(phase, table, shard_index, num_shards,
                               skip_batches)

    def poisoned():
      for index, batch in enumerate(batches, skip_batches):
        yield _nan_weights(batch) if index in self.poisoned else batch

    return poisoned()


PHASE = PhaseConfig(
    name="guard", mixture="synthetic", num_steps=8, batch_size=8,
    sequence_length=16, checkpoint_every=2, keep_checkpoints=None,
    log_every=2, optimizer=OptimizerConfig(peak_learning_rate=1e-2,
                                           warmup_steps=1))


def test_trainer_rolls_back_after_k_nan_batches(tmp_path, caplog):
  gin.parse_config([TINY_BINDINGS,
                    "NonFiniteGuardConfig.max_consecutive_skips = 2"])
  run_dir = str(tmp_path / "run")
  # Batches 3 and 4 feed steps 4 and 5. The check at step 4 sees one skip
  # and holds back that step's checkpoint; the check at step 6 sees the
  # second and rolls back to step 2.
  with caplog.at_level(logging.WARNING):
    result = trainer.train(run_dir, PHASE, dataset_fn=_PoisonedData({3, 4}))

  assert result.steps == 8
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert any(w.startswith("Skipped step 4:") for w in warnings), warnings
  assert any(w.startswith("Skipped step 5:") for w in warnings), warnings
  assert any("back to the checkpoint of step 2; continuing from step 6" in w
             for w in warnings), warnings
  # Step 4 was skipped, so its checkpoint was not written.
  saved = sorted(int(p.name) for p in checkpoints.checkpoint_dir(
      run_dir).iterdir() if p.name.isdigit())
  assert saved == [2, 6, 8]
  records = metrics_lib.read_metrics(run_dir)
  assert np.isfinite(records[-1]["loss"])


@pytest.mark.slow
def test_trainer_stops_with_a_clear_error(tmp_path):
  gin.parse_config([TINY_BINDINGS,
                    "NonFiniteGuardConfig.max_consecutive_skips = 2",
                    "NonFiniteGuardConfig.on_divergence = 'stop'"])
  phase = dataclasses.replace(PHASE, num_steps=4)
  with pytest.raises(DivergenceError, match="up to step 3"):
    trainer.train(str(tmp_path / "run"), phase,
                  dataset_fn=_PoisonedData({1, 2}))
