"""Tests of the sutra-tokenizer command line, run as a subprocess."""

import os
import pathlib
import subprocess
import sys

import sentencepiece as spm

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args, timeout=120):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
      [sys.executable, "-m", "sutra_jax.cli.tokenizer", *args],
      capture_output=True, text=True, cwd=REPO_ROOT, env=env,
      timeout=timeout, check=False)


def _assert_one_error_line(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ")
  for fragment in fragments:
    assert fragment in lines[0]


def test_missing_directory(tmp_path):
  missing = str(tmp_path / "nowhere")
  result = _run("train", "--input_dir", missing, "--vocab_size", "500",
                "--output", str(tmp_path / "spm"))
  _assert_one_error_line(result,
                         f"error: data directory not found: '{missing}'",
                         "--input_dir", "--demo_corpus")


def test_unknown_language_in_flag(tmp_path):
  result = _run("train", "--demo_corpus", "--languages", "hi,xx",
                "--vocab_size", "500", "--output", str(tmp_path / "spm"))
  _assert_one_error_line(result, "'xx'", "--languages")


def test_unknown_language_file_name(tmp_path):
  (tmp_path / "klingon.txt").write_text("nuqneH\n", encoding="utf-8")
  result = _run("train", "--input_dir", str(tmp_path), "--vocab_size", "500",
                "--output", str(tmp_path / "spm"))
  _assert_one_error_line(result, "'klingon'", "klingon.txt")


def test_empty_corpus(tmp_path):
  (tmp_path / "hi.txt").write_text("\n\n", encoding="utf-8")
  result = _run("train", "--input_dir", str(tmp_path), "--vocab_size", "500",
                "--output", str(tmp_path / "spm"))
  _assert_one_error_line(result, "no text found")


def test_unknown_command(tmp_path):
  result = _run("fit", "--demo_corpus", "--output", str(tmp_path / "spm"))
  _assert_one_error_line(result, "got fit", "train or report")


def test_train_from_directory(tmp_path):
  data = tmp_path / "data"
  (data / "hi").mkdir(parents=True)
  (data / "en.txt").write_text(
      "\n".join(f"sentence number {i} about the weather" for i in range(200)),
      encoding="utf-8")
  (data / "hi" / "part1.txt").write_text(
      "\n".join(f"मौसम के बारे में वाक्य {i}" for i in range(200)),
      encoding="utf-8")
  prefix = tmp_path / "out" / "spm"
  result = _run("train", "--input_dir", str(data), "--vocab_size", "300",
                "--model_type", "bpe", "--temperature", "2",
                "--output", str(prefix))
  assert result.returncode == 0, result.stderr
  assert f"wrote {prefix}.model" in result.stdout
  processor = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
  assert processor.get_piece_size() == 300
  assert processor.decode(processor.encode("मौसम weather")) == "मौसम weather"

  report = _run("report", "--input_dir", str(data), "--model",
                f"{prefix}.model")
  assert report.returncode == 0, report.stderr
  rows = dict(line.split("\t") for line in report.stdout.strip().splitlines())
  assert set(rows) == {"language", "en", "hi"}
  assert float(rows["en"]) > 0
