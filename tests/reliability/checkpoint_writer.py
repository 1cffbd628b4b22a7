"""A process that restores the newest checkpoint, then saves without pause.

`run` is the target of the crash-safety test's child processes: it opens the
trainer's `checkpoints.Checkpointer`, restores and verifies the newest step,
reports it, and then saves one small `TrainState` per step, each save
starting as soon as the previous asynchronous one is written. The parent
kills it with SIGKILL at random moments, so most kills land during a save.

Every array of step s holds values derived from s (`expected_state`), so a
restore that mixes files of two steps, or reads a half-written one, fails
the comparison.
"""

import itertools

import jax
import numpy as np

from sutra_jax.training import checkpoints
from sutra_jax.training.train_step import TrainState

# 4 arrays of 128 x 256 float32 (128 KiB each): a save takes a few
# milliseconds of file writing, long enough to be killed in the middle.
SHAPE = (128, 256)
KEEP = 3


def expected_state(step: int) -> dict:
  """The NumPy contents of the state saved at `step`."""
  values = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
  return {
      "step": np.int32(step),
      "params": {"w": values + step, "b": values[0] * step},
      "opt_state": {"mu": values - step, "nu": values * step,
                    "count": np.int32(step)},
      "rng": np.asarray([step, 2 * step], np.uint32),
  }


def _device_state(step: int) -> TrainState:
  return TrainState(**jax.tree.map(jax.numpy.asarray, expected_state(step)))


def _abstract_state() -> TrainState:
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      _device_state(0))


def _restore_newest(checkpointer) -> tuple[int | None, bool]:
  """Restores the newest step; returns it and whether its values are right."""
  latest = checkpointer.latest_step()
  if latest is None:
    return None, True
  state, progress = checkpointer.restore(latest, _abstract_state())
  got = jax.tree.map(np.asarray, jax.device_get(
      {"step": state.step, "params": state.params,
       "opt_state": state.opt_state, "rng": state.rng}))
  want = expected_state(latest)
  same = progress.batches_consumed == latest and all(
      a.dtype == b.dtype and np.array_equal(a, b) for a, b in
      zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))
  return latest, same


def run(run_dir: str, first_step: int, reports) -> None:
  """Restores, reports (step, values_ok) on `reports`, then saves forever."""
  checkpointer = checkpoints.Checkpointer(run_dir, save_every=1, keep=KEEP)
  latest, same = _restore_newest(checkpointer)
  reports.put((latest, same))
  start = first_step if latest is None else latest + 1
  for step in itertools.count(start):
    progress = checkpoints.Progress(step=step, batches_consumed=step,
                                    phase="crash", num_steps=10**9)
    checkpointer.save(_device_state(step), progress, force=True)
