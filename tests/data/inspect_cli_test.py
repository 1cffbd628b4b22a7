"""Tests of `sutra-data inspect` on a file-source mixture."""

import json
import os
import subprocess
import sys

import pytest

from sutra_jax.data import mixtures


def _run(tmp_path, model_path, *extra):
  data = tmp_path / "data"
  data.mkdir(exist_ok=True)
  (data / "hi.txt").write_text("".join(f"नमस्ते {i}\n" for i in range(40)))
  (data / "ta.txt").write_text("".join(f"வணக்கம் {i}\n" for i in range(5)))
  bindings = [
      "PhaseConfig.mixture = @source_mixture()",
      "PhaseConfig.batch_size = 4",
      "PhaseConfig.sequence_length = 32",
      "source_mixture.name = 'files'",
      f"source_mixture.vocabulary = '{model_path}'",
      f"source_mixture.sources = [{{'kind': 'text', 'name': 'f', "
      f"'path': '{data}'}}]",
  ]
  command = [sys.executable, "-m", "sutra_jax.cli.data", "inspect",
             "--batches=3", *extra] + [f"--gin_bindings={b}" for b in bindings]
  return subprocess.run(command, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_inspect_json(tmp_path, model_path):
  result = _run(tmp_path, model_path, "--mixture=files", "--json")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)

  rates = {task.split(".")[0]: row["rate"]
           for task, row in report["tasks"].items()}
  exponent = 1 / mixtures.DEFAULT_TEMPERATURE
  assert rates["f_ta"] == pytest.approx(
      5**exponent / (5**exponent + 40**exponent), rel=1e-6)
  examples = {task.split(".")[0]: row["examples"]
              for task, row in report["tasks"].items()}
  assert examples == {"f_hi": 40, "f_ta": 5}

  sample = report["sample"]
  assert (sample["batches"], sample["batch_size"],
          sample["sequence_length"]) == (3, 4, 32)
  assert set(sample["tokens_per_language"]) == {"hi", "ta"}
  assert sum(sample["tokens_per_language"].values()) == sample["tokens"]
  assert sample["packing_efficiency"] == pytest.approx(
      sample["tokens"] / (3 * 4 * 32))


@pytest.mark.slow
def test_inspect_table_and_unknown_name(tmp_path, model_path):
  table = _run(tmp_path, model_path, "--mixture=files")
  assert table.returncode == 0, table.stderr[-2000:]
  assert "packing efficiency" in table.stdout
  assert "f_ta.vocab_" in table.stdout

  unknown = _run(tmp_path, model_path, "--mixture=other")
  assert unknown.returncode == 2
  errors = [l for l in unknown.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1
  assert "unknown mixture 'other'" in errors[0]
