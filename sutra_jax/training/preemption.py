"""Stopping at a step boundary on SIGTERM, with every process agreeing.

Preemptible and maintenance-bound TPU VMs get SIGTERM some time before they
stop. The trainer then saves at the next step boundary and exits 0, so a
restart resumes there. In a multi-process job each process may see the
signal at a different step, or only one of them may see it. The processes
therefore agree on the step through JAX's preemption sync manager, which
`jax.distributed.initialize` starts and which catches SIGTERM itself. It
picks one step that all processes reach. A single process needs no agreement and
catches the signal in Python.
"""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Tells the training loop whether to stop after the current step.

  Use as a context manager around the loop, which calls `should_stop(step)`
  once per step with the same step numbers on every process.
  """

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._signalled = threading.Event()
    self._previous = None

  def __enter__(self) -> "PreemptionWatcher":
    if not self._multi_process:
      # signal.signal works only in the main thread; elsewhere (a test
      # harness thread, say) the run is not preemptible.
      if threading.current_thread() is threading.main_thread():
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_signal(self, signum, frame) -> None:
    del frame
    logging.warning("Received signal %d; stopping after the current step",
                    signum)
    self._signalled.set()

  def should_stop(self, step: int) -> bool:
    """Returns True on every process at the same step after a SIGTERM.

    Args:
      step: the step just finished; must increase between calls.
    """
    if self._multi_process:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._signalled.is_set()
