"""Converts task examples into packed decoder-only model features.

Every example becomes one decoder sequence: its `inputs` tokens (the source
side of a translation, empty for monolingual text) followed by its `targets`
tokens. With packing several sequences share one row of length L.

A sequence longer than L is truncated so that each side keeps its last token,
the EOS: the source keeps at most max(L - m, L // 2) tokens for m target
tokens, the target gets the rest, and the last kept token of a cut side is
replaced by that side's EOS.

Model features, all of shape [L] per example:

* `decoder_target_tokens` (int32): the tokens, 0 on padding.
* `decoder_input_tokens` (int32): the targets shifted right by one within each
  packed segment, with 0 (BOS) at the first position of a segment.
* `decoder_loss_weights` (float32): 1 on `targets` tokens, 0 on `inputs`
  tokens and padding.
* `decoder_segment_ids` (int32): 1, 2, ... for the packed examples, 0 on
  padding.
* `decoder_positions` (int32): the position within the segment, from 0.
* `decoder_language_ids` (int32): the language id of the token that position
  t predicts, which is the language of `decoder_target_tokens[t]`.
* `encoder_language_ids` (int32): the language id of the input token at
  position t, which is the language of `decoder_input_tokens[t]`. The BOS at
  a segment start takes the language of the segment's first token.

Both language-id features are 0 on padding. For a translation example with
source tokens s_0 .. s_{n-1} (ending with EOS) and target tokens t_0 .. t_{m-1}:

    position t              0    1   ...  n-1      n      n+1  ...
    decoder_input_tokens    BOS  s_0 ...  s_{n-2}  s_{n-1}  t_0  ...
    decoder_target_tokens   s_0  s_1 ...  s_{n-1}  t_0      t_1  ...
    encoder_language_ids    src  src ...  src      src      tgt  ...
    decoder_language_ids    src  src ...  src      tgt      tgt  ...
    decoder_loss_weights    0    0   ...  0        1        1    ...

The decoder stream switches to the target language at position n, one
position before the encoder stream, because position n reads the last source
token and predicts the first target token.

Two more features say which loss term scores each token (see
`sutra_jax.training.losses`):

* `decoder_example_kinds` (int32): the `example_kinds` value of the token's
  example: TEXT (also on padding), TRANSLATION or PARALLEL.
* `decoder_pair_ids` (int32): for a parallel pair, the segment id of its
  first sentence, on the tokens of both sentences; 0 elsewhere.

An example's kind comes from its optional string feature `example_kind`
('text', 'translation' or 'parallel'). Without it, an example with `inputs`
is a translation and one without is text. A parallel example does not
become one segment: its `inputs` sentence and its `targets` sentence become
two consecutive segments, each with its own positions from 0, a BOS at its
start and loss on every token. The sentences of a pair therefore never
attend to each other, and the concept-consistency loss compares their
pooled core states.
"""

from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from sutra_jax.data import example_kinds
from sutra_jax.languages import LanguageTable

_Spec = seqio.FeatureConverter.FeatureSpec

# Packing in seqio measures each feature by its count of non-zero values, so
# the per-token language and loss features travel shifted by one to stay
# non-zero, and are shifted back after packing.
_LANGUAGE_PLUS_ONE = "token_language_plus_one"
_ROLE_PLUS_ONE = "token_role_plus_one"

# The role of a token in its example, carried as `_ROLE_PLUS_ONE`.
_TEXT = 0                # scored text
_TRANSLATION_SOURCE = 1  # unscored source side (or prefix of a text example)
_TRANSLATION_TARGET = 2  # scored target side
_PAIR_FIRST = 3          # first sentence of a parallel pair
_PAIR_SECOND = 4         # second sentence of a parallel pair


def _cut_keeping_last(tokens: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
  """Returns the first `keep` tokens, ending with the original last token."""
  size = tf.size(tokens)
  return tf.cond(
      keep >= size, lambda: tokens,
      lambda: tf.cond(keep > 0,
                      lambda: tf.concat([tokens[:keep - 1], tokens[-1:]], 0),
                      lambda: tokens[:0]))


def truncate_pair(inputs: tf.Tensor, targets: tf.Tensor,
                  length: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Cuts [n] inputs and [m] targets to n' + m' <= length, keeping EOS.

  When n + m > length, the inputs keep min(n, max(length - m, length // 2))
  tokens and the targets the rest, and each cut side ends with its original
  last token (the EOS that the task appended).
  """
  num_inputs = tf.size(inputs)
  num_targets = tf.size(targets)
  keep_inputs = tf.where(
      num_inputs + num_targets > length,
      tf.minimum(num_inputs, tf.maximum(length - num_targets, length // 2)),
      num_inputs)
  keep_targets = tf.minimum(num_targets, length - keep_inputs)
  return (_cut_keeping_last(inputs, keep_inputs),
          _cut_keeping_last(targets, keep_targets))


def packing_efficiency(segment_ids) -> float:
  """Returns the fraction of non-padding tokens of [..., L] segment ids."""
  segment_ids = np.asarray(segment_ids)
  return float((segment_ids > 0).mean()) if segment_ids.size else 0.0


class SutraFeatureConverter(seqio.FeatureConverter):
  """Packs `inputs` + `targets` into decoder features with language ids.

  The task dataset needs the int32 features `inputs` and `targets` and the
  string scalars `inputs_language` and `targets_language`, which must be codes
  of `language_table`. The model length is the `targets` entry of
  `task_feature_lengths`. The `inputs` entry only bounds the source side, and
  a concatenated example longer than the model length is cut by
  `truncate_pair`, so that both sides keep their EOS.

  Unlike seqio's own converters, this one emits `decoder_segment_ids` and
  `decoder_positions` without packing too (one segment per row), so the model
  receives the same features either way.
  """

  TASK_FEATURES = {
      "inputs": _Spec(dtype=tf.int32),
      "targets": _Spec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "decoder_target_tokens": _Spec(dtype=tf.int32),
      "decoder_input_tokens": _Spec(dtype=tf.int32),
      "decoder_loss_weights": _Spec(dtype=tf.float32),
      "decoder_segment_ids": _Spec(dtype=tf.int32),
      "decoder_positions": _Spec(dtype=tf.int32),
      "encoder_language_ids": _Spec(dtype=tf.int32),
      "decoder_language_ids": _Spec(dtype=tf.int32),
      "decoder_example_kinds": _Spec(dtype=tf.int32),
      "decoder_pair_ids": _Spec(dtype=tf.int32),
  }
  # Segment ids and positions are in MODEL_FEATURES, so nothing is added here.
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, language_table: LanguageTable, pack: bool = True,
               **kwargs):
    """Initializes the converter.

    Args:
      language_table: maps the language codes of the examples to ids.
      pack: pack several examples into one row.
      **kwargs: other `seqio.FeatureConverter` arguments.
    """
    super().__init__(pack=pack, **kwargs)
    self._language_table = language_table

  @property
  def language_table(self) -> LanguageTable:
    return self._language_table

  def _language_lookup(self) -> tf.lookup.StaticHashTable:
    codes = list(self._language_table.codes)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(codes, dtype=tf.string),
            tf.range(len(codes), dtype=tf.int32)),
        default_value=-1)

  def _check_language_features(self, ds: tf.data.Dataset) -> None:
    for key in ("inputs_language", "targets_language"):
      spec = ds.element_spec.get(key)
      if spec is None or spec.dtype != tf.string or spec.shape.rank != 0:
        raise ValueError(
            f"SutraFeatureConverter needs a string scalar feature {key!r}; "
            f"the dataset has {spec}. Register the task with "
            "sutra_jax.data.tasks or add the feature in a preprocessor")

  def _example_kind(self, example) -> tf.Tensor:
    """Returns the example's `example_kinds` value as an int32 scalar."""
    if "example_kind" not in example:
      return tf.where(tf.size(example["inputs"]) > 0,
                      example_kinds.TRANSLATION, example_kinds.TEXT)
    names = tf.constant(list(example_kinds.NAMES))
    matches = tf.equal(names, example["example_kind"])
    with tf.control_dependencies([
        tf.debugging.assert_equal(
            tf.reduce_any(matches), True,
            message="unknown example_kind; use one of "
            f"{', '.join(example_kinds.NAMES)}"),
    ]):
      values = tf.constant(list(example_kinds.NAMES.values()))
      return tf.reduce_sum(tf.where(matches, values, 0))

  def _concatenate(self, example, lookup, length: int):
    """Joins inputs and targets and adds the per-token helper features."""
    inputs, targets = truncate_pair(example["inputs"], example["targets"],
                                    length)
    source_id = lookup.lookup(example["inputs_language"])
    target_id = lookup.lookup(example["targets_language"])
    kind = self._example_kind(example)
    is_pair = tf.equal(kind, example_kinds.PARALLEL)
    source_role = tf.where(is_pair, _PAIR_FIRST, _TRANSLATION_SOURCE)
    target_role = tf.where(
        is_pair, _PAIR_SECOND,
        tf.where(tf.equal(kind, example_kinds.TRANSLATION),
                 _TRANSLATION_TARGET, _TEXT))
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(
            tf.stack([source_id, target_id]),
            message="an example's language code is not in the LanguageTable; "
            "add it to language_table.languages"),
    ]):
      num_inputs = tf.size(inputs)
      num_targets = tf.size(targets)
      return {
          "targets": tf.concat([inputs, targets], axis=0),
          _LANGUAGE_PLUS_ONE: tf.concat(
              [tf.fill([num_inputs], source_id + 1),
               tf.fill([num_targets], target_id + 1)], axis=0),
          _ROLE_PLUS_ONE: tf.concat(
              [tf.fill([num_inputs], source_role + 1),
               tf.fill([num_targets], target_role + 1)], axis=0),
      }

  @staticmethod
  def _split_pairs(role, segment_ids, positions):
    """Makes the two sentences of each parallel pair separate segments.

    Args:
      role: [L] int32 role of each token, 0 on padding.
      segment_ids: [L] segment ids from packing, one per example.
      positions: [L] positions within those segments.

    Returns:
      (segment_ids, positions, pair_ids), each [L] int32.
    """
    is_token = segment_ids > 0
    length = tf.size(segment_ids)
    # Tokens of each example's first sentence; the second starts after them.
    first_count = tf.math.unsorted_segment_sum(
        tf.cast(tf.equal(role, _PAIR_FIRST), tf.int32), segment_ids,
        num_segments=length + 1)
    first_here = tf.gather(first_count, segment_ids)
    is_second = tf.equal(role, _PAIR_SECOND)
    boundary = is_second & tf.equal(positions, first_here) & (first_here > 0)
    new_segments = tf.where(
        is_token, segment_ids + tf.cumsum(tf.cast(boundary, tf.int32)), 0)
    new_positions = tf.where(is_second, positions - first_here, positions)
    pair_ids = tf.where(
        tf.equal(role, _PAIR_FIRST), new_segments,
        tf.where(is_second, new_segments - 1, 0))
    return new_segments, new_positions, pair_ids

  def _convert_example(self, packed: Mapping[str, tf.Tensor]):
    """Builds the model features of one packed or padded row."""
    targets = packed["targets"]
    if self.pack:
      segment_ids = packed["targets_segment_ids"]
      positions = packed["targets_positions"]
    else:
      segment_ids = tf.cast(tf.not_equal(targets, 0), tf.int32)
      positions = tf.range(tf.size(targets), dtype=tf.int32) * segment_ids
    is_token = segment_ids > 0
    role = tf.where(is_token, packed[_ROLE_PLUS_ONE] - 1, 0)
    segment_ids, positions, pair_ids = self._split_pairs(role, segment_ids,
                                                         positions)

    decoder_language = tf.where(is_token, packed[_LANGUAGE_PLUS_ONE] - 1, 0)
    # The shifted stream has 0 at each segment start; there the input is BOS,
    # which takes the language of the segment's first target token.
    shifted_language = seqio.utils.make_autoregressive_inputs(
        decoder_language, sequence_id=segment_ids)
    is_segment_start = tf.logical_and(is_token, tf.equal(positions, 0))
    encoder_language = tf.where(is_segment_start, decoder_language,
                                shifted_language)
    loss_weights = tf.cast(
        is_token & tf.not_equal(role, _TRANSLATION_SOURCE), tf.int32)
    kinds = tf.where(
        role >= _PAIR_FIRST, example_kinds.PARALLEL,
        tf.where((role == _TRANSLATION_SOURCE) | (role == _TRANSLATION_TARGET),
                 example_kinds.TRANSLATION, example_kinds.TEXT))

    return {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
            targets, sequence_id=segment_ids, bos_id=self.bos_id),
        "decoder_loss_weights": tf.cast(loss_weights, tf.float32),
        "decoder_segment_ids": segment_ids,
        "decoder_positions": positions,
        "encoder_language_ids": encoder_language,
        "decoder_language_ids": decoder_language,
        "decoder_example_kinds": tf.where(is_token, kinds, 0),
        "decoder_pair_ids": pair_ids,
    }

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    self._check_language_features(ds)
    lookup = self._language_lookup()
    length = task_feature_lengths["targets"]
    ds = ds.map(lambda ex: self._concatenate(ex, lookup, length),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {
        "targets": length,
        _LANGUAGE_PLUS_ONE: length,
        _ROLE_PLUS_ONE: length,
    })
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = task_feature_lengths["targets"]
    return {name: length for name in self.MODEL_FEATURES}
