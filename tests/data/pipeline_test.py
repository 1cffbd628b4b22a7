"""Tests of the batched input pipeline."""

import numpy as np
import pytest
import seqio

from sutra_jax import languages
from sutra_jax.data import corpus
from sutra_jax.data import mixtures
from sutra_jax.data import pipeline
from sutra_jax.data import tasks
from sutra_jax.errors import ConfigError

TABLE = languages.language_table()
LENGTH = 48
BATCH = 4
FEATURES = {
    "decoder_target_tokens": np.int32,
    "decoder_input_tokens": np.int32,
    "decoder_loss_weights": np.float32,
    "decoder_segment_ids": np.int32,
    "decoder_positions": np.int32,
    "encoder_language_ids": np.int32,
    "decoder_language_ids": np.int32,
    "decoder_example_kinds": np.int32,
    "decoder_pair_ids": np.int32,
}


@pytest.fixture(scope="module")
def mixture(model_path):
  # Small languages keep the shuffle buffers, and so the tests, fast.
  return mixtures.phase_mixture("test_pipeline", model_path,
                                chat_languages=["th", "ur"],
                                lexicon_languages=["id"],
                                language_table=TABLE)


@pytest.fixture(scope="module")
def chat_task(vocabulary):
  return tasks.register_demo_tasks(vocabulary, ["th"],
                                   kinds=(tasks.CHAT,))[tasks.CHAT][0]


def _batches(name, count=None, **overrides):
  args = dict(split="train", sequence_length=LENGTH, batch_size=BATCH,
              language_table=TABLE, shuffle=True, seed=7, repeat=True)
  args.update(overrides)
  ds = pipeline.get_dataset(name, **args)
  if count is not None:
    ds = ds.take(count)
  return list(pipeline.as_numpy_batches(ds))


def _assert_same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    for name in FEATURES:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_batch_shapes_and_types(mixture):
  batch, = _batches(mixture, count=1)
  assert set(batch) == set(FEATURES)
  for name, dtype in FEATURES.items():
    assert batch[name].shape == (BATCH, LENGTH), name
    assert batch[name].dtype == dtype, name


def test_same_seed_same_batches(mixture):
  _assert_same(_batches(mixture, count=4), _batches(mixture, count=4))


def test_other_seed_other_batches(mixture):
  first = _batches(mixture, count=2)
  other = _batches(mixture, count=2, seed=8)
  assert any(not np.array_equal(a["decoder_target_tokens"],
                                b["decoder_target_tokens"])
             for a, b in zip(first, other))


def test_skip_batches_resumes_position(mixture):
  full = _batches(mixture, count=5)
  resumed = _batches(mixture, count=3, skip_batches=2)
  _assert_same(full[2:], resumed)


def test_single_pass_pads_final_batch(chat_task):
  batches = _batches(chat_task, split="validation", repeat=False,
                     shuffle=False, pack=False)
  rows = np.concatenate([b["decoder_segment_ids"] for b in batches])
  real_rows = int((rows.max(axis=1) > 0).sum())
  assert real_rows == len(corpus.conversations("th", "validation"))
  assert len(rows) == len(batches) * BATCH
  padding = rows.max(axis=1) == 0
  weights = np.concatenate([b["decoder_loss_weights"] for b in batches])
  assert not weights[padding].any()


def test_shards_are_disjoint(vocabulary):
  name = tasks.register_demo_tasks(vocabulary, ["hi"],
                                   kinds=(tasks.CHAT,))[tasks.CHAT][0]

  def shard_rows(index):
    batches = _batches(name, split="validation", repeat=False, shuffle=False,
                       pack=False,
                       shard_info=seqio.ShardInfo(index=index, num_shards=2))
    rows = np.concatenate([b["decoder_target_tokens"] for b in batches])
    return {tuple(row) for row in rows if row.any()}

  first, second = shard_rows(0), shard_rows(1)
  assert first
  assert second
  assert not first & second
  assert len(first) + len(second) == len(corpus.conversations("hi",
                                                              "validation"))


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0),
    ("batch_size", -2),
    ("batch_size", 2.5),
    ("sequence_length", 0),
    ("sequence_length", True),
    ("skip_batches", -1),
])
def test_invalid_sizes_raise(mixture, field, value):
  with pytest.raises(ConfigError, match=f"invalid {field} {value!r}"):
    _batches(mixture, **{field: value})


def test_unknown_name_raises():
  with pytest.raises(ConfigError, match="'no_such_mixture'"):
    _batches("no_such_mixture")


def test_unknown_split_raises(mixture):
  with pytest.raises(ConfigError, match="'test'"):
    _batches(mixture, split="test")


def test_task_language_outside_table_raises(mixture):
  table = languages.language_table(languages=["en", "th", "ur"])
  with pytest.raises(ConfigError, match="'id'"):
    _batches(mixture, language_table=table)
