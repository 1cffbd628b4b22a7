"""Multi-process training on 127.0.0.1: equal losses, resume, SIGTERM.

Each test starts real `sutra-train` processes through the launcher, which
join one JAX job over a coordinator on a free loopback port and reduce with
gloo. They read the real concept mixture, tokenized by a SentencePiece model
trained here, and save orbax checkpoints from every process. Every run
compiles the model in each process, about a minute of CPU time per run on
two cores, so the tests are marked slow.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sutra_jax.data import corpus
from sutra_jax.launch import local_multihost
from sutra_jax.tokenizer import train as tokenizer_train
from sutra_jax.training import checkpoints

# A core of one MoE layer at width 32, four languages, a global batch of 8
# rows read as 2 data shards, a log line per step.
_LANGUAGES = "['en', 'es', 'fr', 'de']"
_TINY_RUN = [
    "--gin_file=models/tiny.gin",
    "--gin_file=phases/concept.gin",
    "--gin_bindings=ModelConfig.d_model = 32",
    "--gin_bindings=ModelConfig.num_heads = 2",
    "--gin_bindings=ModelConfig.num_kv_heads = 1",
    "--gin_bindings=ModelConfig.head_dim = 16",
    "--gin_bindings=ModelConfig.mlp_dim = 32",
    "--gin_bindings=ModelConfig.expert_mlp_dim = 32",
    "--gin_bindings=ModelConfig.num_core_layers = 1",
    f"--gin_bindings=language_table.languages = {_LANGUAGES}",
    f"--gin_bindings=phase_mixture.chat_languages = {_LANGUAGES}",
    "--gin_bindings=PhaseConfig.batch_size = 8",
    "--gin_bindings=PhaseConfig.sequence_length = 32",
    "--gin_bindings=PhaseConfig.log_every = 1",
    "--gin_bindings=OptimizerConfig.warmup_steps = 1",
    "--gin_bindings=data_shard_count.num_shards = 2",
]


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory) -> str:
  texts = corpus.demo_texts_by_language("train")
  prefix = tmp_path_factory.mktemp("spm") / "spm"
  return tokenizer_train.train_sentencepiece(
      output_prefix=str(prefix),
      texts_by_language={code: lines[:60] for code, lines in texts.items()},
      vocab_size=1000, character_coverage=0.98)


def _args(vocabulary, run_dir, num_steps, checkpoint_every=2):
  return [*_TINY_RUN, f"--gin_bindings=VOCABULARY = '{vocabulary}'",
          f"--gin_bindings=PhaseConfig.num_steps = {num_steps}",
          f"--gin_bindings=PhaseConfig.checkpoint_every = {checkpoint_every}",
          f"--run_dir={run_dir}"]


def _launch(processes, devices, args):
  out = io.StringIO()
  status = local_multihost.run(local_multihost.DEFAULT_MODULE, args,
                               num_processes=processes,
                               devices_per_process=devices, out=out)
  assert status == 0, out.getvalue()[-4000:]
  return out.getvalue()


def _results(output):
  """The JSON result line of each process, by process index."""
  found = {}
  for line in output.splitlines():
    match = re.match(r"\[p(\d+)\] (\{.*\})$", line)
    if match:
      found[int(match.group(1))] = json.loads(match.group(2))
  return found


def _losses(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: (r["loss"], r["grad_norm"]) for r in records}


@pytest.mark.slow
def test_two_processes_match_one_and_resume(vocabulary, tmp_path):
  multi = str(tmp_path / "multi")
  single = str(tmp_path / "single")

  first = _results(_launch(2, 4, _args(vocabulary, multi, num_steps=2)))
  assert checkpoints.latest_step(multi) == 2
  resumed = _results(_launch(2, 4, _args(vocabulary, multi, num_steps=4)))
  reference = _results(_launch(1, 8, _args(vocabulary, single, num_steps=4)))

  assert sorted(first) == sorted(resumed) == [0, 1]
  assert [first[p]["steps_run"] for p in (0, 1)] == [2, 2]
  assert [resumed[p]["steps_run"] for p in (0, 1)] == [2, 2]
  assert resumed[0] == resumed[1]
  assert reference[0]["steps"] == 4
  assert checkpoints.read_progress(multi, 4).batches_consumed == 4
  multi_losses, single_losses = _losses(multi), _losses(single)
  assert sorted(multi_losses) == sorted(single_losses) == [1, 2, 3, 4]
  # Same mesh size (8 devices), same data shards, same order of batches: the
  # only difference is that gloo sums across processes where one process
  # sums in memory, which may reorder a float32 reduction (~1e-7 relative).
  np.testing.assert_allclose(
      [multi_losses[s] for s in range(1, 5)],
      [single_losses[s] for s in range(1, 5)], rtol=1e-5)
  # Steps 3 and 4 came after the restart, so the data resumed where the
  # checkpoint left it: the losses differ from step to step.
  assert len({multi_losses[s][0] for s in range(1, 5)}) == 4


def _wait_for_step(run_dir, process, deadline):
  path = os.path.join(run_dir, "metrics.jsonl")
  while time.monotonic() < deadline:
    assert process.poll() is None, "the job ended before its first step"
    if os.path.exists(path) and os.path.getsize(path):
      return
    time.sleep(0.2)
  raise AssertionError("no step was logged in time")


def _pids(launcher_lines):
  pids = {}
  for line in launcher_lines:
    match = re.match(r"\[launch\] process (\d+): pid (\d+)", line)
    if match:
      pids[int(match.group(1))] = int(match.group(2))
  return pids


@pytest.mark.slow
def test_sigterm_saves_agreed_step_and_resumes(vocabulary, tmp_path):
  run_dir = str(tmp_path / "run")
  env = local_multihost.process_environment()
  # Far more steps and a checkpoint interval beyond them, so only the
  # preemption can save.
  command = [sys.executable, "-m", "sutra_jax.launch.local_multihost",
             "--num_processes=2", "--devices_per_process=4", "--",
             *_args(vocabulary, run_dir, num_steps=500,
                    checkpoint_every=1000)]
  log_path = tmp_path / "job.log"
  with open(log_path, "w", encoding="utf-8") as log:
    job = subprocess.Popen(command, env=env, stdout=log,
                           stderr=subprocess.STDOUT, text=True)
  try:
    _wait_for_step(run_dir, job, time.monotonic() + 600)
    pids = _pids(log_path.read_text().splitlines())
    assert sorted(pids) == [0, 1]
    # Only process 1 is told; process 0 must stop at the same step.
    os.kill(pids[1], signal.SIGTERM)
    job.wait(timeout=600)
  finally:
    if job.poll() is None:
      job.kill()
      job.wait()
  output = log_path.read_text()

  assert job.returncode == 0, output[-4000:]
  results = _results(output)
  assert sorted(results) == [0, 1], output[-4000:]
  stopped = results[0]["steps"]
  assert results[1]["steps"] == stopped
  assert 1 <= stopped < 500
  assert checkpoints.latest_step(run_dir) == stopped
  assert checkpoints.read_progress(run_dir, stopped).batches_consumed == (
      stopped)

  resumed = _results(_launch(2, 4, _args(vocabulary, run_dir,
                                         num_steps=stopped + 1)))
  assert [resumed[p]["steps_run"] for p in (0, 1)] == [1, 1]
  assert checkpoints.latest_step(run_dir) == stopped + 1
  assert sorted(_losses(run_dir))[-1] == stopped + 1
