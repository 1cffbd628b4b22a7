"""Tests of the MoE and throughput telemetry that training writes.

`test_training_writes_telemetry` runs `trainer.train` on the tiny model and
reads the TensorBoard event files back with TensorFlow's event reader. It
took 60 s on a busy 2-core CPU. The model-level check is marked slow because
initialising the model alone took 25 s there.
"""

import os

import gin
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax import languages
from sutra_jax.models import moe
from sutra_jax.models.config import make_model_config
from sutra_jax.models.sutra import SutraModel
from sutra_jax.training import heatmaps
from sutra_jax.training import metrics as metrics_lib
from sutra_jax.training import train_step as train_step_lib
from sutra_jax.training import trainer
from sutra_jax.training.optimizers import OptimizerConfig
from sutra_jax.training.phases import PhaseConfig
from tests.training.training_testlib import (NUM_LANGUAGES, TINY_BINDINGS,
                                             SyntheticData, synthetic_batch)

NUM_EXPERTS = 4  # ModelConfig.num_experts in TINY_BINDINGS.


def _read_events(folder) -> tuple[dict[str, list[float]], dict[str, bytes]]:
  """Returns the scalars and the last PNG of each image tag in `folder`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  scalars, images = {}, {}
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField("image"):
          images[value.tag] = value.image.encoded_image_string
        elif value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append(value.simple_value)
  return scalars, images


def test_training_writes_telemetry(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gin.parse_config(TINY_BINDINGS)
  phase = PhaseConfig(
      name="telemetry", mixture="synthetic", num_steps=2, batch_size=8,
      sequence_length=32, checkpoint_every=2, keep_checkpoints=1,
      log_every=1, optimizer=OptimizerConfig(warmup_steps=1))
  run_dir = str(tmp_path / "run")

  trainer.train(run_dir, phase, dataset_fn=SyntheticData())

  scalars, images = _read_events(
      os.path.join(run_dir, metrics_lib.TENSORBOARD_SUBDIR))
  for tag in ("learning/loss", "learning/learning_rate",
              "perf/tokens_per_second", "perf/tokens_per_second_per_device",
              "perf/model_flops_per_second_per_device",
              "moe/load_balancing_loss", "moe/dropped_tokens",
              "moe/layer_0/max_load", "moe/layer_0/min_load",
              "moe/layer_0/load_cv"):
    assert len(scalars.get(tag, [])) == 2, tag
  assert "perf/mfu" not in scalars
  assert scalars["moe/dropped_tokens"] == [0.0, 0.0]
  for max_load, min_load in zip(scalars["moe/layer_0/max_load"],
                                scalars["moe/layer_0/min_load"]):
    assert min_load <= 1 / NUM_EXPERTS <= max_load

  # The two synthetic batches use all three languages.
  codes = ("en", "hi", "mr")
  for code in codes:
    assert f"lang/{code}/loss" in scalars
  tag = f"{metrics_lib.HEATMAP_TAG}/layer_0"
  assert tag in images
  image = tf.io.decode_png(images[tag]).numpy()
  cell = heatmaps.HEATMAP_CELL_PIXELS
  assert image.shape == (len(codes) * cell, NUM_EXPERTS * cell, 3)

  record = metrics_lib.read_metrics(run_dir)[-1]
  assert np.sum(record["expert_load"], axis=-1) == pytest.approx([1.0])
  assert record["mfu"] is None


def test_language_counts_match_token_loop():
  rng = np.random.default_rng(0)
  layers, batch, length, k = 2, 3, 5, 2
  experts = np.stack([
      np.stack([rng.choice(NUM_EXPERTS, k, replace=False)
                for _ in range(batch * length)])
      for _ in range(layers)]).astype(np.int32)  # [layers, B * L, k]
  mask = (rng.random(batch * length) > 0.2).astype(np.float32)
  language_ids = rng.integers(0, NUM_LANGUAGES, (batch, length))
  slot_counts = jnp.stack([
      moe.expert_slot_counts(experts[i], mask, NUM_EXPERTS).reshape(
          batch, length, NUM_EXPERTS) for i in range(layers)])

  counts = train_step_lib.expert_counts_by_language(
      slot_counts, jnp.asarray(language_ids), NUM_LANGUAGES)

  expected = np.zeros((NUM_LANGUAGES, layers, NUM_EXPERTS))
  for layer in range(layers):
    for token in range(batch * length):
      if not mask[token]:
        continue
      language = language_ids.reshape(-1)[token]
      for expert in experts[layer, token]:
        expected[language, layer, expert] += 1
  np.testing.assert_array_equal(np.asarray(counts), expected)


@pytest.mark.slow
def test_language_counts_agree_with_expert_load():
  gin.parse_config(TINY_BINDINGS)
  config = make_model_config(languages.language_table())
  model = SutraModel(config, rngs=nnx.Rngs(0))
  batch = {name: jnp.asarray(value)
           for name, value in synthetic_batch(0, 4, 16).items()}
  graphdef, params = nnx.split(model, nnx.Param)

  # Jitted, because running the model op by op is slower than compiling it.
  loss_fn = jax.jit(lambda p, b: train_step_lib.compute_loss(
      p, graphdef, b, train_step_lib.LossWeights(), NUM_LANGUAGES))
  _, metrics = loss_fn(nnx.to_pure_dict(params), batch)

  counts = np.asarray(metrics["language_expert_counts"])
  real = np.asarray(batch["decoder_segment_ids"]) > 0
  ids = np.asarray(batch["encoder_language_ids"])[real]
  k = config.experts_per_token
  for language in range(NUM_LANGUAGES):
    np.testing.assert_allclose(counts[language].sum(axis=-1),
                               k * np.sum(ids == language), rtol=1e-6)
  load = counts.sum(axis=0) / counts.sum(axis=(0, 2))[:, None]
  np.testing.assert_allclose(load, metrics["expert_load"], rtol=1e-5)
