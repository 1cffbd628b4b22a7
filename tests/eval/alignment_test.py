"""Tests of cross-lingual retrieval through the concept core."""

import os
import pathlib
import subprocess
import sys

from flax import nnx
import numpy as np
import pytest

from sutra_jax import gin_utils
from sutra_jax import languages
from sutra_jax.errors import DataError
from sutra_jax.eval import alignment
from sutra_jax.models.config import make_model_config
from sutra_jax.models.sutra import SutraModel


def _reference_accuracy(queries, keys):
  """Top-1 retrieval accuracy computed one query at a time."""
  correct = 0
  for i, query in enumerate(queries):
    scores = [np.dot(query, key) / (np.linalg.norm(query) *
                                    np.linalg.norm(key)) for key in keys]
    correct += int(np.argmax(scores) == i)
  return correct / len(queries)


def test_retrieval_matches_reference():
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(20, 8))
  queries = keys + rng.normal(scale=1.0, size=keys.shape)
  expected = _reference_accuracy(queries, keys)
  assert 0 < expected < 1
  assert alignment.retrieval_accuracy(queries, keys) == pytest.approx(
      expected, abs=1e-12)
  assert alignment.retrieval_accuracy(keys, queries) == pytest.approx(
      _reference_accuracy(keys, queries), abs=1e-12)


def test_retrieval_half_correct():
  keys = np.eye(4)
  # Queries 0 and 1 point at their own keys. Queries 2 and 3 point at key 0.
  queries = np.array([[2.0, 0, 0, 0], [0, 1, 0, 0],
                      [1, 0, 0.5, 0], [1, 0, 0, 0.5]])
  assert alignment.retrieval_accuracy(queries, keys) == 0.5
  assert _reference_accuracy(queries, keys) == 0.5


def test_retrieval_ignores_scale():
  rng = np.random.default_rng(1)
  keys = rng.normal(size=(10, 4))
  assert alignment.retrieval_accuracy(3.0 * keys, keys) == 1.0


def test_mean_pool_ignores_padding():
  hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]],
                    np.float32)
  mask = np.array([[1, 1, 0]])
  np.testing.assert_allclose(alignment.mean_pool(hidden, mask), [[2.0, 3.0]])


@pytest.fixture
def tiny_model():
  gin_utils.parse_config(["models/tiny.gin"], [])
  table = languages.language_table()
  return SutraModel(make_model_config(table), rngs=nnx.Rngs(0)), table


def test_embedding_independent_of_padding(tiny_model):
  model, table = tiny_model
  sentence = [5, 17, 300, 42, 9]
  # Alone, the sentence is padded to 16 tokens. Next to a 20-token sentence
  # it is padded to 32.
  alone = alignment.embed_token_ids(model, [sentence], table.id("hi"),
                                    batch_size=2)
  padded = alignment.embed_token_ids(model, [sentence, list(range(1, 21))],
                                     table.id("hi"), batch_size=2)
  difference = np.linalg.norm(alone[0] - padded[0]) / np.linalg.norm(alone[0])
  assert difference < 1e-5
  assert np.linalg.norm(padded[0]) == pytest.approx(1.0, rel=1e-5)


def test_embedding_keeps_input_order(tiny_model):
  model, table = tiny_model
  sentences = [list(range(1, 30)), [7, 8], list(range(3, 12))]
  together = alignment.embed_token_ids(model, sentences, table.id("en"),
                                       batch_size=2)
  for i, sentence in enumerate(sentences):
    alone = alignment.embed_token_ids(model, [sentence], table.id("en"),
                                      batch_size=2)
    np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("file_code, expected", [
    ("hin", "hi"), ("eng", "en"), ("eng-IN", "en"), ("zho-CN", "zh"),
    ("zho-TW", "zh-Hant"), ("zho_Hant", "zh-Hant"), ("zho_Hans", "zh"),
    ("srp-Latn", "sr-Latn"), ("arb", "arb"), ("hi", "hi"),
    ("zh-Hant", "zh-Hant"), ("qqq", None)])
def test_normalize_code(file_code, expected):
  assert alignment.normalize_code(file_code) == expected


def _write(path: pathlib.Path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_find_ntrex_layout(tmp_path):
  text = tmp_path / "text"
  lines = ["one", "two"]
  for name in ("newstest2019-src.eng.first2.txt",
               "newstest2019-ref.hin.first2.txt",
               "newstest2019-ref.zho-TW.first2.txt",
               "newstest2019-ref.eng-IN.first2.txt",
               "newstest2019-ref.qqq.first2.txt"):
    _write(text / name, lines)
  (tmp_path / "SOURCE.md").write_text("about the data")
  files = alignment.find_parallel_files(str(tmp_path))
  assert files.english == str(text / "newstest2019-src.eng.first2.txt")
  assert sorted(files.others) == ["hi", "zh-Hant"]
  assert files.others["hi"] == str(text / "newstest2019-ref.hin.first2.txt")
  assert files.num_lines == 2


def test_find_code_layout(tmp_path):
  for code in ("en", "hi", "zh-Hant", "de"):
    _write(tmp_path / f"{code}.txt", ["a", "b", "c"])
  files = alignment.find_parallel_files(str(tmp_path))
  assert files.english == str(tmp_path / "en.txt")
  assert sorted(files.others) == ["de", "hi", "zh-Hant"]
  assert files.num_lines == 3


def test_keep_known_languages(tmp_path):
  for code in ("en", "hi", "de"):
    _write(tmp_path / f"{code}.txt", ["a"])
  files = alignment.find_parallel_files(str(tmp_path))
  table = languages.language_table(languages=("en", "hi"))
  assert sorted(alignment.keep_known_languages(files, table).others) == ["hi"]


def test_find_rejects_different_line_counts(tmp_path):
  _write(tmp_path / "en.txt", ["a", "b", "c"])
  _write(tmp_path / "hi.txt", ["a", "b"])
  with pytest.raises(DataError, match=r"hi.txt has 2 lines .* has 3"):
    alignment.find_parallel_files(str(tmp_path))


def _run_eval(arguments):
  return subprocess.run(
      [sys.executable, "-m", "sutra_jax.cli.eval", "alignment"] + arguments,
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)


def _error_cases(tmp: pathlib.Path):
  _write(tmp / "no_english" / "hi.txt", ["a"])
  _write(tmp / "uneven" / "en.txt", ["a", "b", "c"])
  _write(tmp / "uneven" / "de.txt", ["a", "b"])
  return {
      "missing": (tmp / "missing",
                  f"error: parallel directory not found: '{tmp}/missing'"),
      "no_english": (tmp / "no_english", "error: no English file in"),
      "uneven": (tmp / "uneven",
                 f"error: {tmp}/uneven/de.txt has 2 lines but the English "
                 f"file {tmp}/uneven/en.txt has 3"),
  }


@pytest.mark.parametrize("case", ["missing", "no_english", "uneven"])
def test_bad_parallel_dir_gives_one_line(case, tmp_path):
  parallel_dir, expected = _error_cases(tmp_path)[case]
  result = _run_eval([f"--parallel_dir={parallel_dir}",
                      f"--checkpoint_dir={tmp_path}"])
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  error_lines = [l for l in result.stderr.splitlines()
                 if l.startswith("error:")]
  assert len(error_lines) == 1, result.stderr
  assert error_lines[0].startswith(expected), error_lines[0]
