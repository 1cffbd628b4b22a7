"""Tests of the language-mix benchmark of the train step."""

import numpy as np
import pytest

from sutra_jax import gin_utils
from sutra_jax import languages
from sutra_jax.errors import ConfigError
from sutra_jax.models.config import make_model_config
from sutra_jax.tools import bench


def _batches(batch_size=4, sequence_length=64):
  table = languages.language_table()
  single, mixed = bench.synthetic_batches(table, batch_size, sequence_length,
                                          vocab_size=100)
  return table, single, mixed


def test_batches_have_equal_token_counts():
  _, single, mixed = _batches()
  assert single.keys() == mixed.keys()
  for name in single:
    assert single[name].shape == mixed[name].shape == (4, 64), name
  assert np.sum(single["decoder_loss_weights"]) == 4 * 64
  assert np.sum(mixed["decoder_loss_weights"]) == 4 * 64
  assert np.count_nonzero(single["decoder_segment_ids"]) == 4 * 64
  assert np.count_nonzero(mixed["decoder_segment_ids"]) == 4 * 64
  np.testing.assert_array_equal(single["decoder_input_tokens"],
                                mixed["decoder_input_tokens"])


def test_single_batch_has_one_language():
  table, single, _ = _batches()
  assert set(np.unique(single["encoder_language_ids"])) == {table.id("en")}
  np.testing.assert_array_equal(single["encoder_language_ids"],
                                single["decoder_language_ids"])


def test_mixed_rows_have_eight_groups():
  table, _, mixed = _batches()
  group_ids = np.asarray(table.group_ids)
  ids = mixed["encoder_language_ids"]
  np.testing.assert_array_equal(ids, mixed["decoder_language_ids"])
  for row in range(ids.shape[0]):
    assert len(np.unique(ids[row])) == 8, row
    assert len(np.unique(group_ids[ids[row]])) == 8, row


def test_mixed_segments_have_one_language_each():
  _, _, mixed = _batches()
  ids = mixed["encoder_language_ids"]
  segments = mixed["decoder_segment_ids"]
  for row in range(ids.shape[0]):
    for segment in np.unique(segments[row]):
      assert len(np.unique(ids[row][segments[row] == segment])) == 1
  # The language of a segment moves by one language from row to row.
  assert ids[0, 0] != ids[1, 0]


def test_batches_reject_bad_length():
  table = languages.language_table()
  with pytest.raises(ConfigError, match="multiple of 8"):
    bench.synthetic_batches(table, 2, 60, vocab_size=100)


def test_mixed_languages_needs_eight_groups():
  table = languages.language_table(languages=("en", "de", "fr"))
  with pytest.raises(ConfigError, match="has 3 language groups"):
    bench.mixed_languages(table)


@pytest.mark.slow  # About 50 s on 2 CPU cores, mostly compilation.
def test_language_mix_reports_positive_times():
  gin_utils.parse_config(["models/tiny.gin"], [])
  table = languages.language_table()
  report = bench.language_mix(make_model_config(table), table, batch_size=8,
                              sequence_length=16, steps=1, repeats=1)
  for name in ("single_language_step_seconds", "mixed_language_step_seconds",
               "ratio"):
    assert report[name] > 0, name
  assert report["batch_size"] == 8
  assert report["sequence_length"] == 16
  assert len(report["mixed_languages"]) == 8
  assert report["device"]
  assert report["date"]
