"""End-to-end tests of sutra-eval mmlu/xcopa/perplexity and sutra-decode.

A module fixture trains a tiny concept-phase run for a few steps. The tests
run the command-line tools on it in subprocesses, as a user would.
"""

import json
import os
import subprocess
import sys

import pytest

from sutra_jax.data import corpus
from sutra_jax.data import tasks
from sutra_jax.tokenizer import train as tokenizer_train


def _environment():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # One CPU device, as a user runs the tools.
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(module, *arguments, stdin=None, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *arguments],
                        input=stdin, capture_output=True, text=True,
                        timeout=timeout, env=_environment(), check=False)


def _error_lines(result):
  return [line for line in result.stderr.splitlines()
          if line.startswith("error: ")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A concept-phase run of 4 steps of the tiny model."""
  root = tmp_path_factory.mktemp("run")
  texts = {code: lines[:60] for code, lines in
           corpus.demo_texts_by_language("train").items()}
  vocabulary = tokenizer_train.train_sentencepiece(
      texts, str(root / "spm"), 1000, character_coverage=0.98)
  run = root / "concept"
  result = _run(
      "sutra_jax.cli.train", f"--run_dir={run}", "--gin_file=runs/demo.gin",
      "--gin_file=phases/concept.gin",
      f"--gin_bindings=VOCABULARY = '{vocabulary}'",
      "--gin_bindings=PhaseConfig.num_steps = 4",
      "--gin_bindings=PhaseConfig.batch_size = 2",
      "--gin_bindings=PhaseConfig.sequence_length = 32",
      "--gin_bindings=PhaseConfig.checkpoint_every = 4",
      "--gin_bindings=OptimizerConfig.warmup_steps = 1")
  assert result.returncode == 0, result.stderr[-3000:]
  return str(run), vocabulary


@pytest.mark.slow
def test_mmlu_json_report(run_dir, shared_data):
  result = _run("sutra_jax.cli.eval", "mmlu",
                f"--data_dir={shared_data / 'mmlu_en'}",
                f"--checkpoint_dir={run_dir[0]}", "--num_shots=1",
                "--max_questions=1", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert (report["benchmark"], report["split"], report["step"]) == (
      "mmlu", "val", 4)
  assert report["per_language"]["en"]["count"] == 57
  assert len(report["per_subject"]) == 57
  assert 0.0 <= report["macro_average"] <= 1.0
  assert report["parallel"]["agreement"] is None


@pytest.mark.slow
def test_xcopa_table(run_dir, shared_data):
  result = _run("sutra_jax.cli.eval", "xcopa",
                f"--data_dir={shared_data / 'xcopa_val'}",
                f"--checkpoint_dir={run_dir[0]}", "--max_questions=4")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[2].startswith("language  accuracy (%)  questions")
  rows = {line.split()[0]: line.split() for line in lines[3:14]}
  assert sorted(rows) == ["et", "ht", "id", "it", "qu", "sw", "ta", "th",
                          "tr", "vi", "zh"]
  assert all(row[2] == "4" for row in rows.values())
  # Languages outside the demo table are scored with the English blocks.
  assert rows["sw"][3] == "en"
  assert "of 4 parallel questions" in lines[-1]


@pytest.mark.slow
def test_perplexity_on_named_task(run_dir):
  vocabulary = tasks.sentencepiece_vocabulary(run_dir[1])
  name = tasks.task_name(tasks.CHAT, "ja", vocabulary)
  result = _run("sutra_jax.cli.eval", "perplexity",
                f"--checkpoint_dir={run_dir[0]}", f"--task={name}",
                "--task_module=sutra_jax.data.tasks", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert report["data"] == f"{name}:validation"
  assert list(report["per_language"]) == ["ja"]
  assert report["per_language"]["ja"]["perplexity"] > 1.0


@pytest.mark.slow
def test_chat_reads_piped_turns(run_dir):
  result = _run("sutra_jax.cli.decode", f"--checkpoint_dir={run_dir[0]}",
                "--output_language=en", "--chat", "--max_new_tokens=3",
                stdin="Hello\n\n/reset\nHow are you?\n/exit\nnot read\n")
  assert result.returncode == 0, result.stderr[-3000:]
  # Two answers, each followed by an empty line; no "> " prompts in a pipe.
  blocks = result.stdout.split("\n\n")
  assert len(blocks) == 3, result.stdout
  assert blocks[-1] == "", result.stdout
  assert "> " not in result.stdout


@pytest.mark.slow
def test_decode_with_sampling_and_stop(run_dir):
  result = _run("sutra_jax.cli.decode", f"--checkpoint_dir={run_dir[0]}",
                "--prompt=Hello", "--output_language=en",
                "--prompt_language=hi", "--temperature=0.7", "--top_k=5",
                "--top_p=0.9", "--stop=.", "--max_new_tokens=5")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "." not in result.stdout


def test_wrong_answer_letter_gives_one_line(tmp_path):
  folder = tmp_path / "mmlu_en" / "val"
  folder.mkdir(parents=True)
  (folder / "law_val.csv").write_text("Q1,a,b,c,d,A\nQ2,a,b,c,d,F\n",
                                      encoding="utf-8")
  result = _run("sutra_jax.cli.eval", "mmlu",
                f"--data_dir={tmp_path / 'mmlu_en'}",
                f"--checkpoint_dir={tmp_path / 'no_run'}", timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  errors = _error_lines(result)
  assert errors == [
      f"error: {folder / 'law_val.csv'} row 2: invalid answer 'F': expected "
      "one of A, B, C, D; fix the row"]


@pytest.mark.parametrize("arguments,expected", [
    (["sutra_jax.cli.eval", "xcopa", "--checkpoint_dir=x"],
     "--data_dir is required by xcopa"),
    (["sutra_jax.cli.decode", "--checkpoint_dir=x", "--output_language=en",
      "--chat", "--prompt=hi"], "--chat reads the messages from standard"),
    (["sutra_jax.cli.decode", "--checkpoint_dir=x", "--output_language=en",
      "--prompt=hi", "--top_p=0"], "invalid top_p 0.0"),
])
def test_bad_flags_give_one_line(arguments, expected):
  result = _run(*arguments, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = _error_lines(result)
  assert len(errors) == 1, result.stderr[-3000:]
  assert expected in errors[0]


@pytest.mark.parametrize("folder,expected", [
    ("missing", "retrieval directory not found: '{tmp}/missing'"),
    ("empty", "no documents with text in retrieval directory '{tmp}/empty'"),
])
def test_bad_retrieval_dir_gives_one_line(tmp_path, folder, expected):
  (tmp_path / "empty").mkdir()
  result = _run("sutra_jax.cli.decode", f"--checkpoint_dir={tmp_path}/run",
                "--output_language=en", "--prompt=hi",
                f"--retrieval_dir={tmp_path / folder}",
                f"--retrieval_cache_dir={tmp_path / 'cache'}", timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = _error_lines(result)
  assert len(errors) == 1, result.stderr[-3000:]
  assert expected.format(tmp=tmp_path) in errors[0]
