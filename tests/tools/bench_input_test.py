"""Tests of the input-throughput benchmark, on the tiny model."""

import gin
import pytest

from sutra_jax import languages
from sutra_jax.data import corpus
from sutra_jax.errors import ConfigError
from sutra_jax.models.config import make_model_config
from sutra_jax.tokenizer import train
from sutra_jax.tools import bench_input
from tests.training.training_testlib import TINY_BINDINGS


@pytest.fixture
def tiny(tmp_path):
  gin.parse_config([TINY_BINDINGS, "ModelConfig.vocab_size = 600"])
  table = languages.language_table()
  texts = {code: lines[:40] for code, lines in
           corpus.demo_texts_by_language("train").items() if code in table}
  vocabulary = train.train_sentencepiece(texts, str(tmp_path / "spm"), 600,
                                         character_coverage=0.9995)
  return make_model_config(table), table, vocabulary


@pytest.mark.slow
def test_report_fields_and_ratio(tiny):
  model_config, table, vocabulary = tiny
  report = bench_input.input_throughput(
      model_config, table, batch_size=8, sequence_length=32, steps=1,
      repeats=1, input_batches=3, vocabulary=vocabulary)
  assert report["tokens_per_second"] > 0
  assert report["train_tokens_per_second"] > 0
  assert report["ratio"] == pytest.approx(
      report["tokens_per_second"] / report["train_tokens_per_second"])
  assert (report["batch_size"], report["sequence_length"]) == (8, 32)


def test_invalid_sizes_raise(tiny):
  model_config, table, vocabulary = tiny
  with pytest.raises(ConfigError, match="invalid input_batches 0"):
    bench_input.input_throughput(
        model_config, table, batch_size=8, sequence_length=32, steps=1,
        repeats=1, input_batches=0, vocabulary=vocabulary)
