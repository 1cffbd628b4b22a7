"""Tests of the sutra-tokenizer command line, run as a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
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


def test_fertility_json_and_chart(tmp_path, small_model, shared_data):
  chart = tmp_path / "ratios.png"
  reference = shared_data / "reference_tokenizers" / "o200k_base.tiktoken"
  result = _run("fertility", "--model", small_model, "--reference",
                str(reference), "--parallel_dir",
                str(shared_data / "ntrex128_dev_subset"), "--json",
                "--chart", str(chart))
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert set(report) == {"languages", "references"}
  assert len(report["languages"]) == 35
  assert set(report["references"]) == {"o200k_base"}
  for code, metrics in report["languages"].items():
    assert set(metrics) == {"tokens_per_word", "tokens_per_character",
                            "ratio_to_english"}, code
  assert report["languages"]["eng"]["ratio_to_english"] == 1.0
  # The SOURCE.md of the reference tokenizers gives 1.67 for Hindi.
  assert report["references"]["o200k_base"]["hin"][
      "ratio_to_english"] == pytest.approx(1.67, abs=0.005)
  assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_into_reference(tmp_path, small_model, shared_data):
  base = shared_data / "reference_tokenizers" / "mistral_7b_v0.1.tokenizer.model"
  output = tmp_path / "merged"
  result = _run("merge", "--base", str(base), "--model", small_model,
                "--output", str(output))
  assert result.returncode == 0, result.stderr
  base_sp = spm.SentencePieceProcessor(model_file=str(base))
  merged = spm.SentencePieceProcessor(model_file=f"{output}.model")
  id_map = json.loads((tmp_path / "merged.id_map.json").read_text())
  assert id_map["base_vocab_size"] == 32000
  assert merged.get_piece_size() == 32000 + id_map["new_pieces"]
  assert id_map["new_pieces"] > 0
  assert all(merged.id_to_piece(i) == base_sp.id_to_piece(i)
             for i in range(32000))
  assert f"wrote {output}.model (32000 base pieces" in result.stdout


def test_merge_needs_flags(tmp_path):
  result = _run("merge", "--model", "x.model", "--output", str(tmp_path))
  _assert_one_error_line(result, "merge needs --base")
