"""End to end: adding a language is one gin change plus a phase-2 run."""

import dataclasses
import logging

import gin
import numpy as np
import pytest

from sutra_jax.training import trainer
from sutra_jax.training.optimizers import OptimizerConfig
from tests.training.trainer_test import PHASE, _final_params
from tests.training.training_testlib import TINY_BINDINGS, SyntheticData


@pytest.mark.slow
def test_new_language_starts_from_its_relative(tmp_path, caplog):
  gin.parse_config(TINY_BINDINGS)
  concept_dir = str(tmp_path / "concept")
  trainer.train(concept_dir, dataclasses.replace(PHASE, num_steps=2),
                dataset_fn=SyntheticData())

  # The gin change: Gujarati joins the table with its own group, which
  # starts from the Hindi blocks.
  gin.parse_config("language_table.languages = ['en', 'hi', 'mr', 'gu']")
  language = dataclasses.replace(
      PHASE, name="language", num_steps=2, init_from=concept_dir,
      trainable=(r"^encoder/", r"^decoder/"),
      new_language_groups={"gu": "hi"},
      # Without weight decay, the Gujarati rows, which the synthetic data
      # never routes to, get no update and must stay equal to Hindi's
      # phase-1 rows.
      optimizer=OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=1,
                                decay_steps=6, weight_decay=0.0))
  language_dir = str(tmp_path / "language")
  with caplog.at_level(logging.INFO):
    trainer.train(language_dir, language, dataset_fn=SyntheticData(seed=1))

  before = _final_params(concept_dir)
  after = _final_params(language_dir)
  blocks = [p for p in before if p.startswith(("encoder/", "decoder/"))]
  assert blocks
  for path in blocks:
    assert before[path].shape[0] == 2 and after[path].shape[0] == 3, path
    np.testing.assert_array_equal(after[path][2], before[path][1],
                                  err_msg=path)
    assert not np.array_equal(after[path][1], before[path][1]), path
  for path in before:
    if path.startswith("core/"):
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
  assert "group 'gu' (row 2) = copy of group 'hi' (row 1)" in caplog.text
