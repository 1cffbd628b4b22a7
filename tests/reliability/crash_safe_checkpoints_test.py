"""Checkpoints survive SIGKILL at random moments during asynchronous saves.

Each child process (see `checkpoint_writer`) restores the newest checkpoint
with the trainer's `Checkpointer`, checks every value, and then saves
continuously until the test kills it. Children are forked from a
forkserver that has imported JAX and orbax once, so a restart costs about a
second rather than a fresh interpreter's import time.
"""

import multiprocessing
import os
import random
import time

from tests.reliability import checkpoint_writer
from tests.reliability.conftest import saved_steps

KILLS = 20
# Starting at 95 makes the steps cross 99 -> 100, where the text order of
# the folder names ("99" > "100") and the numeric order differ.
FIRST_STEP = 95


def _temporary_folders(run_dir) -> list[str]:
  folder = os.path.join(run_dir, "checkpoints")
  return [n for n in os.listdir(folder) if not n.isdigit()]


def test_sigkill_during_saves_never_leaves_a_partial_newest_step(tmp_path):
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([checkpoint_writer.__name__])
  reports = context.Queue()
  run_dir = str(tmp_path / "run")
  rng = random.Random(0)
  restored, killed_mid_save = [], 0

  for _ in range(KILLS + 1):
    child = context.Process(target=checkpoint_writer.run,
                            args=(run_dir, FIRST_STEP, reports))
    child.start()
    try:
      latest, values_ok = reports.get(timeout=300)
      assert values_ok, f"step {latest} restored with wrong values"
      if restored:
        # The newest complete step is never lost, and a temporary folder
        # is never taken for a step.
        assert latest == newest_at_kill, (latest, newest_at_kill, names)
      restored.append(latest)
      time.sleep(rng.uniform(0.05, 0.6))
    finally:
      child.kill()  # SIGKILL
      child.join()
    names = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    newest_at_kill = max(saved_steps(run_dir), default=None)
    killed_mid_save += bool(_temporary_folders(run_dir))

  steps = [s for s in restored if s is not None]
  assert restored[0] is None and len(steps) == KILLS
  assert steps == sorted(steps)
  assert steps[-1] >= 100, "the steps never crossed 99 -> 100"
  # Most kills land during a save; require a few to prove the test does.
  assert killed_mid_save >= 3, killed_mid_save
