"""Tests that `sutra-train` rejects bad input with one line and exit code 2.

Each case runs the entry point in a subprocess and must fail before any
compilation, with a single "error: ..." line on stderr and no traceback.
"""

import os
import subprocess
import sys

import pytest

_TINY = [
    "--gin_bindings=ModelConfig.vocab_size = 64",
    "--gin_bindings=PhaseConfig.mixture = 'unused'",
]


def _run(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
      [sys.executable, "-m", "sutra_jax.cli.train", *args],
      capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def _error_lines(result):
  return [line for line in result.stderr.splitlines()
          if line.startswith("error: ")]


@pytest.mark.parametrize("case,args,expected", [
    ("unknown language",
     ["--gin_bindings=language_table.languages = ['en', 'xx']"],
     "unknown language code 'xx'"),
    ("missing gin file", ["--gin_file=phases/no_such_phase.gin"],
     "gin file not found: 'phases/no_such_phase.gin'"),
    ("unknown binding", ["--gin_bindings=PhaseConfig.num_stepz = 3"],
     "num_stepz"),
    ("negative steps", ["--gin_bindings=PhaseConfig.num_steps = -5"],
     "PhaseConfig.num_steps = -5"),
    ("unwritable run dir", ["--run_dir=blocker/run"],
     "run directory 'blocker/run' is not writable"),
    ("missing run dir", ["--run_dir="], "--run_dir is required"),
    ("unset macro", ["--gin_file=phases/language.gin",
                     "--gin_bindings=VOCABULARY = 'spm.model'"],
     "CONCEPT_RUN_DIR"),
])
def test_bad_input_exits_with_one_line(tmp_path, case, args, expected):
  # A file where the run directory's parent should be makes it unwritable,
  # also for root, which ignores permission bits.
  (tmp_path / "blocker").write_text("")
  run_dir = [] if any(a.startswith("--run_dir") for a in args) else [
      f"--run_dir={tmp_path / 'run'}"]

  result = _run([*_TINY, *run_dir, *args], tmp_path)

  assert result.returncode == 2, (case, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, case
  errors = _error_lines(result)
  assert len(errors) == 1, (case, result.stderr[-2000:])
  # The error is the last line: nothing, such as gin's "In call to
  # configurable" context, continues it.
  assert result.stderr.rstrip().splitlines()[-1] == errors[0], case
  assert expected in errors[0], (case, errors[0])
  assert not (tmp_path / "run" / "checkpoints").exists(), case


def test_missing_previous_phase_exits_with_one_line(tmp_path):
  result = _run([*_TINY, f"--run_dir={tmp_path / 'run'}",
                 f"--gin_bindings=PhaseConfig.init_from = "
                 f"'{tmp_path / 'no_such_run'}'"], tmp_path)

  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = _error_lines(result)
  assert len(errors) == 1, result.stderr[-2000:]
  assert "has no checkpoint" in errors[0]
  assert "run the previous phase first" in errors[0]
