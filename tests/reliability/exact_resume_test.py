"""A run killed with SIGKILL resumes to the same bits as an unbroken run.

Both runs go through `python -m sutra_jax.cli.train` and the seqio pipeline,
so the test covers the data position (batches skipped on resume), the PRNG
key and the optimizer state as the trainer stores them.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.reliability.conftest import (assert_trees_bit_identical,
                                        environment, read_checkpoint,
                                        saved_steps, train_command)

HALF = 20  # N: the killed run has saved step N when it is killed.
BINDINGS = (f"PhaseConfig.num_steps = {2 * HALF}",
            "PhaseConfig.checkpoint_every = 4",
            "PhaseConfig.keep_checkpoints = None",
            "PhaseConfig.log_every = 1")
# Fields of metrics.jsonl that depend on the numbers only, not on timing.
CURVE_FIELDS = ("step", "loss", "cross_entropy", "load_balancing_loss",
                "router_z_loss", "learning_rate", "grad_norm",
                "per_language_loss", "expert_load")


def _curve(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return [{k: r[k] for k in CURVE_FIELDS} for r in records]


def _train(run_dir, vocabulary):
  return subprocess.run(train_command(run_dir, vocabulary, *BINDINGS),
                        env=environment(), capture_output=True, text=True,
                        timeout=900)


def _train_until_killed(run_dir, vocabulary) -> None:
  """Starts a run and kills it with SIGKILL once step HALF is saved."""
  process = subprocess.Popen(train_command(run_dir, vocabulary, *BINDINGS),
                             env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  try:
    while HALF not in saved_steps(run_dir):
      assert process.poll() is None, "the run exited before step N was saved"
      assert time.monotonic() < deadline, "step N not saved in 10 minutes"
      time.sleep(0.02)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path, vocabulary_path):
  whole_dir, split_dir = str(tmp_path / "whole"), str(tmp_path / "split")
  whole = _train(whole_dir, vocabulary_path)
  assert whole.returncode == 0, whole.stderr[-3000:]

  _train_until_killed(split_dir, vocabulary_path)
  killed_at = max(saved_steps(split_dir))
  assert HALF <= killed_at < 2 * HALF, "the run finished before the kill"
  resumed = _train(split_dir, vocabulary_path)

  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming phase concept at step {killed_at}" in resumed.stderr
  assert _curve(split_dir) == _curve(whole_dir)
  assert [r["step"] for r in _curve(split_dir)] == list(
      range(1, 2 * HALF + 1))
  assert_trees_bit_identical(read_checkpoint(split_dir, 2 * HALF),
                             read_checkpoint(whole_dir, 2 * HALF))
