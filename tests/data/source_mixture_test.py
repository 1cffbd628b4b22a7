"""Tests of source mixtures: rates, small tasks, shards and resumption."""

import gin
import numpy as np
import pytest
import seqio

from sutra_jax import languages
from sutra_jax.data import mixtures
from sutra_jax.data import pipeline
from sutra_jax.errors import ConfigError

TABLE = languages.language_table()
SMALL, LARGE = 10, 10_000


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """`ta.txt` with 10 lines and `hi.txt` with 10,000, all distinct."""
  folder = tmp_path_factory.mktemp("corpus")
  (folder / "ta.txt").write_text(
      "".join(f"ta {i}\n" for i in range(SMALL)), encoding="utf-8")
  (folder / "hi.txt").write_text(
      "".join(f"hi {i}\n" for i in range(LARGE)), encoding="utf-8")
  return str(folder)


@pytest.fixture(scope="module")
def mixture(corpus_dir, model_path):
  return mixtures.source_mixture(
      "test_sources", model_path,
      [{"kind": "text", "name": "files", "path": corpus_dir}],
      language_table=TABLE)


def test_rates_follow_temperature_formula(mixture):
  rates = {name.split(".")[0]: rate for name, rate in
           seqio.get_mixture_or_task(mixture).rate_per_task_name.items()}
  exponent = 1 / mixtures.DEFAULT_TEMPERATURE
  expected_small = SMALL**exponent / (SMALL**exponent + LARGE**exponent)
  assert rates["files_ta"] == pytest.approx(expected_small, rel=1e-6)
  assert rates["files_hi"] == pytest.approx(1 - expected_small, rel=1e-6)


def test_overrides_and_unknown_override(corpus_dir, model_path):
  spec = [{"kind": "text", "name": "files", "path": corpus_dir}]
  name = mixtures.source_mixture("test_override", model_path, spec,
                                rate_overrides={"files_ta": 0.25},
                                language_table=TABLE)
  rates = {n.split(".")[0]: r for n, r in
           seqio.get_mixture_or_task(name).rate_per_task_name.items()}
  assert rates == pytest.approx({"files_hi": 0.75, "files_ta": 0.25})
  with pytest.raises(ConfigError, match="names 'files_xx'"):
    mixtures.source_mixture("test_override", model_path, spec,
                           rate_overrides={"files_xx": 0.1},
                           language_table=TABLE)


def test_small_task_repeats_instead_of_ending(mixture):
  ds = pipeline.get_dataset(mixture, split="train", sequence_length=8,
                            batch_size=16, language_table=TABLE, shuffle=True,
                            seed=0, repeat=True, pack=False)
  tamil = TABLE.id("ta")
  small_rows, small_per_batch = [], []
  for batch in pipeline.as_numpy_batches(ds.take(40)):
    is_small = batch["decoder_language_ids"][:, 0] == tamil
    small_rows.extend(map(tuple, batch["decoder_target_tokens"][is_small]))
    small_per_batch.append(int(is_small.sum()))
  # 640 rows at rate 0.11 hold about 72 Tamil rows, so each of the 10
  # examples is read about 7 times, and the last batches still have some.
  assert len(small_rows) > 3 * SMALL
  assert len(set(small_rows)) == SMALL
  assert sum(small_per_batch[-10:]) > 0


@pytest.mark.parametrize("num_shards", [2, 4])
def test_mixture_shards_are_disjoint_and_cover(tmp_path, model_path,
                                               num_shards):
  (tmp_path / "ta.txt").write_text("".join(f"ta {i}\n" for i in range(13)))
  (tmp_path / "hi.txt").write_text("".join(f"hi {i}\n" for i in range(29)))
  name = mixtures.source_mixture(
      f"test_shards_{num_shards}", model_path,
      [{"kind": "text", "name": "shards", "path": str(tmp_path)}],
      language_table=TABLE)
  seen = []
  for index in range(num_shards):
    ds = pipeline.get_dataset(
        name, split="train", sequence_length=8, batch_size=4,
        language_table=TABLE, shuffle=True, seed=3, repeat=False, pack=False,
        shard_info=seqio.ShardInfo(index=index, num_shards=num_shards))
    rows = np.concatenate([b["decoder_target_tokens"]
                           for b in pipeline.as_numpy_batches(ds)])
    shard = [tuple(row) for row in rows if row.any()]
    assert shard, index
    seen.extend(shard)
  assert len(seen) == 13 + 29
  assert len(set(seen)) == len(seen)


def test_resume_sees_the_same_batches(mixture):
  args = dict(split="train", sequence_length=32, batch_size=4,
              language_table=TABLE, shuffle=True, seed=5, repeat=True,
              shard_info=seqio.ShardInfo(index=1, num_shards=2))
  whole = list(pipeline.as_numpy_batches(
      pipeline.get_dataset(mixture, **args).take(7)))
  resumed = list(pipeline.as_numpy_batches(
      pipeline.get_dataset(mixture, skip_batches=4, **args).take(3)))
  for a, b in zip(whole[4:], resumed, strict=True):
    for feature in a:
      np.testing.assert_array_equal(a[feature], b[feature], err_msg=feature)


def test_source_mixture_from_gin(corpus_dir, model_path):
  gin.parse_config(f"""
      source_mixture.name = 'test_gin'
      source_mixture.vocabulary = '{model_path}'
      source_mixture.sources = [
          {{'kind': 'text', 'name': 'g', 'path': '{corpus_dir}',
            'languages': ['ta']}}]
      source_mixture.temperature = 1.0
  """)
  name = mixtures.source_mixture(language_table=TABLE)
  assert [n.split(".")[0] for n in
          seqio.get_mixture_or_task(name).rate_per_task_name] == ["g_ta"]
