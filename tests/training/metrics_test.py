"""Tests for interval summaries, TensorBoard scalars and metrics.jsonl."""

import json
import os

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from sutra_jax.training import metrics as metrics_lib


def _step_metrics(loss, language_loss, language_weight):
  return {
      "loss": np.float32(loss),
      "cross_entropy": np.float32(loss - 0.5),
      "load_balancing_loss": np.float32(1.0),
      "router_z_loss": np.float32(2.0),
      "learning_rate": np.float32(loss / 100),
      "grad_norm": np.float32(3.0),
      "language_loss_sum": np.asarray(language_loss, np.float32),
      "language_weight_sum": np.asarray(language_weight, np.float32),
  }


def _read_scalars(folder) -> dict[str, list[float]]:
  """Reads the scalars of the event files in `folder` with tf.data."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = [os.path.join(folder, name) for name in os.listdir(folder)]
  scalars = {}
  for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
    for value in event_pb2.Event.FromString(record).summary.value:
      scalars.setdefault(value.tag, []).append(value.simple_value)
  return scalars


def test_summary_means_and_token_weighted_language_loss():
  interval = metrics_lib.MetricsAccumulator(("en", "hi", "ta"),
                                            tokens_per_step=64)
  interval.add(_step_metrics(4.0, [8.0, 3.0, 0.0], [4.0, 1.0, 0.0]))
  interval.add(_step_metrics(2.0, [2.0, 0.0, 0.0], [4.0, 0.0, 0.0]))

  summary = interval.summarize(step=10)

  assert summary.step == 10
  assert summary.interval_steps == 2
  assert summary.loss == pytest.approx(3.0)
  assert summary.cross_entropy == pytest.approx(2.5)
  assert summary.learning_rate == pytest.approx(0.02)
  # en: (8 + 2) / (4 + 4); ta had no tokens and is left out.
  assert summary.per_language_loss == pytest.approx({"en": 1.25, "hi": 3.0})
  assert summary.tokens_per_second > 0
  assert len(interval) == 0


def test_writer_writes_line_scalars_and_jsonl(tmp_path, caplog):
  interval = metrics_lib.MetricsAccumulator(("en", "hi"), tokens_per_step=8)
  interval.add(_step_metrics(4.0, [8.0, 3.0], [4.0, 1.0]))
  writer = metrics_lib.MetricsWriter(str(tmp_path), num_steps=20)

  with caplog.at_level("INFO"):
    writer.write(interval.summarize(step=5))
  writer.close()

  assert "step 5/20  loss 4.0000" in caplog.text
  records = metrics_lib.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [5]
  assert records[0]["per_language_loss"] == {"en": 2.0, "hi": 3.0}
  scalars = _read_scalars(
      os.path.join(tmp_path, metrics_lib.TENSORBOARD_SUBDIR))
  assert {"learning/loss", "learning/learning_rate",
          "moe/load_balancing_loss", "moe/router_z_loss",
          "perf/tokens_per_second", "perf/seconds_per_step",
          "lang/en/loss", "lang/hi/loss"} <= set(scalars)
  assert scalars["lang/hi/loss"] == pytest.approx([3.0])


def test_resume_drops_records_after_checkpoint(tmp_path):
  path = tmp_path / metrics_lib.METRICS_FILE
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                          for s in (2, 4, 6)))

  metrics_lib.MetricsWriter(str(tmp_path), num_steps=10,
                            resume_step=4).close()

  assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))] == [
      2, 4]
