"""End-to-end tests of the demo: a full run, and resuming after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# A few steps per phase with small batches, so the three phases take about a
# minute on two cores. Checkpoints every 4 steps give the kill a target.
SMALL_RUN = [
    "--gin_bindings=PhaseConfig.num_steps = 12",
    "--gin_bindings=PhaseConfig.batch_size = 4",
    "--gin_bindings=PhaseConfig.sequence_length = 32",
    "--gin_bindings=PhaseConfig.checkpoint_every = 4",
    "--gin_bindings=OptimizerConfig.warmup_steps = 2",
    "--max_new_tokens=4",
    "--min_new_tokens=2",
]


def _demo_command(run_dir, log_every, *extra):
  return [sys.executable, "-m", "sutra_jax.demo", f"--run_dir={run_dir}",
          *SMALL_RUN, f"--gin_bindings=PhaseConfig.log_every = {log_every}",
          *extra]


# Runs the demo with every IPv4/IPv6 connection and name lookup refused, and
# writes each attempt to stderr, so that the test can assert there were none.
# Unix sockets (local IPC) stay allowed.
_NO_NETWORK = """
import runpy, socket, sys

def _refuse(*args, **kwargs):
  sys.stderr.write(f"NETWORK ATTEMPT {args!r}\\n")
  raise OSError("network disabled by the test")

_connect = socket.socket.connect
def _connect_local_only(self, address):
  if self.family in (socket.AF_INET, socket.AF_INET6):
    return _refuse(self, address)
  return _connect(self, address)

socket.socket.connect = _connect_local_only
socket.socket.connect_ex = _connect_local_only
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
sys.argv[0] = "sutra_jax.demo"
runpy.run_module("sutra_jax.demo", run_name="__main__")
"""


def _environment():
  env = dict(os.environ)
  # One CPU device, as `make demo` runs.
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _saved_steps(phase_dir):
  folder = os.path.join(phase_dir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


@pytest.mark.slow
def test_demo_resumes_interrupted_phase(tmp_path):
  run_dir = str(tmp_path / "demo")
  concept_dir = os.path.join(run_dir, "concept")
  first = subprocess.Popen(_demo_command(run_dir, 2), env=_environment(),
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 600
  try:
    while not _saved_steps(concept_dir) and time.monotonic() < deadline:
      assert first.poll() is None, "the demo exited before its first save"
      time.sleep(0.2)
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  saved = _saved_steps(concept_dir)
  assert saved, "no checkpoint within 10 minutes"
  assert max(saved) < 12

  second = subprocess.run(_demo_command(run_dir, 2), env=_environment(),
                          capture_output=True, text=True, timeout=900)

  assert second.returncode == 0, second.stderr[-3000:]
  resumed_at = max(saved)
  assert f"Resuming phase concept at step {resumed_at}" in second.stderr
  with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert [p["name"] for p in report["phases"]] == [
      "concept", "language", "alignment"]
  assert all(p["steps"] == 12 for p in report["phases"])
  with open(os.path.join(concept_dir, "metrics.jsonl"),
            encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [2, 4, 6, 8, 10, 12]


@pytest.mark.slow
def test_demo_report_schema_offline(tmp_path):
  run_dir = str(tmp_path / "demo")
  # One logging interval per phase, and the demo's 8 x 64 batches, so the
  # per-language losses of the report cover every language the phase drew.
  command = _demo_command(run_dir, 12,
                          "--gin_bindings=PhaseConfig.batch_size = 8",
                          "--gin_bindings=PhaseConfig.sequence_length = 64")
  # The same demo arguments, with the network disabled in the process.
  command = [sys.executable, "-c", _NO_NETWORK, *command[3:]]
  result = subprocess.run(command, env=_environment(), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "NETWORK ATTEMPT" not in result.stderr

  with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert set(report) == {"phases", "eval", "samples", "tokenizer"}
  for phase in report["phases"]:
    assert set(phase) == {"name", "steps", "first_loss", "final_loss",
                          "per_language_loss"}
  # With one logging interval per phase, first and final loss are the same
  # interval, so the loss drop is checked on the full demo instead.
  for phase in report["phases"]:
    assert phase["final_loss"] == phase["first_loss"]
  assert len(report["phases"][1]["per_language_loss"]) >= 20
  perplexity = report["eval"]["per_language_perplexity"]
  assert len(perplexity) == 28
  assert all(value > 1 for value in perplexity.values())
  assert {s["language"] for s in report["samples"]} >= {"ko", "hi", "en"}
  assert report["tokenizer"]["vocab_size"] == 8000
  assert set(report["tokenizer"]["tokens_per_word"]) == set(perplexity)
  assert "held-out perplexity" in result.stdout
