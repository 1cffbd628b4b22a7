"""Tests of SutraFeatureConverter against hand-computed rows."""

import numpy as np
import pytest
import tensorflow as tf

from sutra_jax.data.feature_converter import packing_efficiency
from sutra_jax.data.feature_converter import SutraFeatureConverter
from sutra_jax.data.feature_converter import truncate_pair
from sutra_jax.languages import LanguageTable

# No language has id 0 in these examples, so a 0 in a language stream can
# only be padding.
TABLE = LanguageTable(codes=("mr", "hi", "en", "ta"),
                      group_of=("hi", "hi", "en", "ta"))
HI, EN, TA = 1, 2, 3
LENGTH = 16

_SIGNATURE = {
    "inputs": tf.TensorSpec([None], tf.int32),
    "targets": tf.TensorSpec([None], tf.int32),
    "inputs_language": tf.TensorSpec([], tf.string),
    "targets_language": tf.TensorSpec([], tf.string),
}


def _dataset(examples):
  return tf.data.Dataset.from_generator(lambda: iter(examples),
                                        output_signature=_SIGNATURE)


def _example(inputs, targets, inputs_language, targets_language):
  return {
      "inputs": np.array(inputs, np.int32),
      "targets": np.array(targets, np.int32),
      "inputs_language": inputs_language,
      "targets_language": targets_language,
  }


# Two monolingual examples (Hindi, English) and one English -> Tamil
# translation. 1 is EOS.
EXAMPLES = [
    _example([], [5, 6, 1], "hi", "hi"),
    _example([], [7, 8, 9, 1], "en", "en"),
    _example([10, 11, 1], [12, 13, 1], "en", "ta"),
]


def _convert(examples, pack=True, length=LENGTH):
  converter = SutraFeatureConverter(TABLE, pack=pack)
  ds = converter(_dataset(examples), {"inputs": length, "targets": length})
  return list(ds.as_numpy_iterator())


def test_packed_row_matches_hand_computed():
  rows = _convert(EXAMPLES)
  assert len(rows) == 1
  row = rows[0]

  # Segment:              1 1 1   2 2 2 2   3 3 3 3 3 3   padding
  expected = {
      "decoder_target_tokens": [5, 6, 1, 7, 8, 9, 1, 10, 11, 1, 12, 13, 1,
                                0, 0, 0],
      "decoder_input_tokens": [0, 5, 6, 0, 7, 8, 9, 0, 10, 11, 1, 12, 13,
                               0, 0, 0],
      "decoder_segment_ids": [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
                              0, 0, 0],
      "decoder_positions": [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5,
                            0, 0, 0],
      "decoder_loss_weights": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1,
                               0, 0, 0],
      # Position 10 reads the source EOS and predicts the first target
      # token: source language in the encoder stream, target language in
      # the decoder stream.
      "encoder_language_ids": [HI, HI, HI, EN, EN, EN, EN, EN, EN, EN, EN,
                               TA, TA, 0, 0, 0],
      "decoder_language_ids": [HI, HI, HI, EN, EN, EN, EN, EN, EN, EN, TA,
                               TA, TA, 0, 0, 0],
      # Without `example_kind`, an example with inputs is a translation.
      "decoder_example_kinds": [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1,
                                0, 0, 0],
      "decoder_pair_ids": [0] * 16,
  }
  assert set(row) == set(expected)
  for name, values in expected.items():
    np.testing.assert_array_equal(row[name], values, err_msg=name)
  assert row["decoder_loss_weights"].dtype == np.float32
  assert row["encoder_language_ids"].dtype == np.int32


def test_language_switch_positions():
  row = _convert(EXAMPLES)[0]
  translation = row["decoder_segment_ids"] == 3
  decoder = row["decoder_language_ids"][translation]
  encoder = row["encoder_language_ids"][translation]
  assert list(decoder).index(TA) == 3
  assert list(encoder).index(TA) == 4


def test_unpacked_rows_have_one_segment():
  rows = _convert(EXAMPLES, pack=False, length=8)
  assert len(rows) == 3
  translation = rows[2]
  np.testing.assert_array_equal(translation["decoder_target_tokens"],
                                [10, 11, 1, 12, 13, 1, 0, 0])
  np.testing.assert_array_equal(translation["decoder_input_tokens"],
                                [0, 10, 11, 1, 12, 13, 0, 0])
  np.testing.assert_array_equal(translation["decoder_segment_ids"],
                                [1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(translation["decoder_positions"],
                                [0, 1, 2, 3, 4, 5, 0, 0])
  np.testing.assert_array_equal(translation["decoder_loss_weights"],
                                [0, 0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(translation["encoder_language_ids"],
                                [EN, EN, EN, EN, TA, TA, 0, 0])
  np.testing.assert_array_equal(translation["decoder_language_ids"],
                                [EN, EN, EN, TA, TA, TA, 0, 0])


def test_long_example_truncated_aligned():
  # 3 + 5 tokens in 5: the source keeps max(5 - 5, 5 // 2) = 2 tokens and
  # the target 3, and both end with EOS.
  rows = _convert([_example([10, 11, 1], [12, 13, 14, 15, 1], "en", "ta")],
                  pack=True, length=5)
  row = rows[0]
  np.testing.assert_array_equal(row["decoder_target_tokens"],
                                [10, 1, 12, 13, 1])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(row["decoder_language_ids"],
                                [EN, EN, TA, TA, TA])
  np.testing.assert_array_equal(row["encoder_language_ids"],
                                [EN, EN, EN, TA, TA])


@pytest.mark.parametrize("pack", [True, False])
def test_truncated_examples_end_with_eos(pack):
  # Each feature fits in LENGTH (the task trims it and appends EOS), but the
  # translation's two sides together do not.
  long_text = list(range(3, 3 + LENGTH - 1)) + [1]
  rows = _convert([_example([], long_text, "hi", "hi"),
                   _example([], [5, 1], "en", "en"),
                   _example(list(range(3, 17)) + [1], [7, 8, 1], "en", "ta")],
                  pack=pack, length=LENGTH)
  for row in rows:
    tokens = row["decoder_target_tokens"]
    segments = row["decoder_segment_ids"]
    for segment in set(segments[segments > 0].tolist()):
      assert tokens[segments == segment][-1] == 1, (segment, tokens)
  first = rows[0]["decoder_target_tokens"]
  np.testing.assert_array_equal(first, list(range(3, 3 + LENGTH - 1)) + [1])
  translation = rows[-1]["decoder_target_tokens"]
  # 15 + 3 tokens in 16: the source keeps 13 (16 - 3), the target all 3.
  np.testing.assert_array_equal(
      translation[translation > 0][-4:], [1, 7, 8, 1])


@pytest.mark.parametrize("inputs, targets, length, expected", [
    (4, 4, 8, (4, 4)),
    (0, 20, 8, (0, 8)),
    (20, 3, 8, (5, 3)),
    (20, 20, 8, (4, 4)),
    (3, 20, 8, (3, 5)),
])
def test_truncate_pair_lengths(inputs, targets, length, expected):
  kept = truncate_pair(tf.range(1, inputs + 1), tf.range(1, targets + 1),
                       length)
  assert tuple(int(tf.size(k)) for k in kept) == expected
  for original, side in zip((inputs, targets), kept):
    if int(tf.size(side)):
      assert int(side[-1]) == original


def test_packing_efficiency():
  assert packing_efficiency([[1, 1, 2, 0], [1, 0, 0, 0]]) == 0.5
  rows = _convert(EXAMPLES)
  expected = np.mean(rows[0]["decoder_segment_ids"] > 0)
  assert packing_efficiency(rows[0]["decoder_segment_ids"]) == expected


def test_unknown_language_fails():
  with pytest.raises(tf.errors.InvalidArgumentError, match="LanguageTable"):
    _convert([_example([], [5, 1], "xx", "xx")])


def test_missing_language_feature_raises():
  ds = tf.data.Dataset.from_tensors({
      "inputs": tf.constant([], tf.int32),
      "targets": tf.constant([5, 1], tf.int32),
  })
  converter = SutraFeatureConverter(TABLE)
  with pytest.raises(ValueError, match="inputs_language"):
    converter(ds, {"inputs": 4, "targets": 4})


_KIND_SIGNATURE = {**_SIGNATURE,
                   "example_kind": tf.TensorSpec([], tf.string)}


def _convert_kinds(examples, length=LENGTH):
  converter = SutraFeatureConverter(TABLE, pack=True)
  ds = tf.data.Dataset.from_generator(lambda: iter(examples),
                                      output_signature=_KIND_SIGNATURE)
  return list(converter(ds, {"inputs": length, "targets": length})
              .as_numpy_iterator())


def test_parallel_pair_becomes_two_segments():
  examples = [
      {**_example([], [5, 6, 1], "hi", "hi"), "example_kind": "text"},
      {**_example([10, 11, 1], [12, 13, 14, 1], "en", "ta"),
       "example_kind": "parallel"},
      {**_example([7, 1], [8, 1], "en", "hi"), "example_kind": "translation"},
  ]
  row = _convert_kinds(examples, length=18)[0]

  # Segment:   1 1 1   2 2 2   3 3 3 3   4 4 4 4   padding
  expected = {
      "decoder_target_tokens": [5, 6, 1, 10, 11, 1, 12, 13, 14, 1, 7, 1, 8,
                                1, 0, 0, 0, 0],
      "decoder_input_tokens": [0, 5, 6, 0, 10, 11, 0, 12, 13, 14, 0, 7, 1,
                               8, 0, 0, 0, 0],
      "decoder_segment_ids": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 0, 0,
                              0, 0],
      "decoder_positions": [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 0, 0,
                            0, 0],
      "decoder_loss_weights": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0,
                               0, 0, 0],
      "encoder_language_ids": [HI, HI, HI, EN, EN, EN, TA, TA, TA, TA, EN,
                               EN, EN, HI, 0, 0, 0, 0],
      "decoder_language_ids": [HI, HI, HI, EN, EN, EN, TA, TA, TA, TA, EN,
                               EN, HI, HI, 0, 0, 0, 0],
      "decoder_example_kinds": [0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 0,
                                0, 0, 0],
      # Both sentences of the pair carry the segment id of the first.
      "decoder_pair_ids": [0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,
                           0, 0],
  }
  for name, values in expected.items():
    np.testing.assert_array_equal(row[name], values, err_msg=name)


def test_unknown_example_kind_fails():
  with pytest.raises(tf.errors.InvalidArgumentError, match="example_kind"):
    _convert_kinds([{**_example([], [5, 1], "hi", "hi"),
                     "example_kind": "poem"}])
