"""Skipping train steps whose loss or gradient norm is not finite.

Inside the jitted step (`train_step.train_step`), `step_is_finite` decides
whether the update is applied; a skipped step leaves the parameters and the
optimizer state unchanged and reports `skipped = 1` in its metrics. The
decision is taken on the device, so a skip costs no host round trip.

On the host, `NonFiniteGuard` keeps the metrics of recent steps and reads
them only when `check` is called: at logging steps, before checkpoint saves,
and whenever K steps are pending, so the loop waits for the device at most
once per min(K, log_every) steps. It logs each skipped step with the
languages of its batch, and after K consecutive skips it either stops the
run with `DivergenceError` or asks the trainer to roll back to the newest
checkpoint (`NonFiniteGuardConfig.on_divergence`).
"""

import dataclasses
from typing import Any, Mapping, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax.errors import ConfigError, DivergenceError

ACTIONS = ("stop", "restore")
RESTORE = "restore"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NonFiniteGuardConfig:
  """What the trainer does about steps with a non-finite loss or gradient.

  Attributes:
    max_consecutive_skips: K, the consecutive skipped steps after which the
      run is considered diverged. A single bad batch is skipped silently
      apart from a warning; K in a row usually mean broken weights.
    on_divergence: 'stop' ends the run with a clear error; 'restore' rolls
      the parameters and optimizer state back to the newest checkpoint and
      continues with the next batches (the batches in between are not
      replayed, since the same weights on the same batches would diverge
      again).
    max_restores: rollbacks allowed in one call of `trainer.train` before
      the run stops anyway.
  """

  max_consecutive_skips: int = 10
  on_divergence: str = "restore"
  max_restores: int = 3

  def __post_init__(self):
    for name in ("max_consecutive_skips", "max_restores"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"invalid NonFiniteGuardConfig.{name} = "
                          f"{value!r}: expected a positive integer")
    if self.on_divergence not in ACTIONS:
      raise ConfigError(
          f"invalid NonFiniteGuardConfig.on_divergence = "
          f"{self.on_divergence!r}: use one of {', '.join(ACTIONS)}")


def step_is_finite(loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
  """Returns a bool [] that is True when the step's update may be applied."""
  return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


@dataclasses.dataclass
class _Pending:
  step: int
  metrics: Mapping[str, jax.Array]


class NonFiniteGuard:
  """Counts skipped steps on the host and decides when a run has diverged."""

  def __init__(self, config: NonFiniteGuardConfig,
               language_codes: Sequence[str]):
    self.config = config
    self._codes = tuple(language_codes)
    self._pending: list[_Pending] = []
    self.skipped_steps = 0
    self.consecutive = 0
    self.restores = 0
    # Length of the run of skips that caused the latest rollback.
    self.diverged_run = 0

  def add(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Keeps the device metrics of `step` without reading them."""
    self._pending.append(_Pending(step, {
        name: metrics[name] for name in
        ("skipped", "loss", "grad_norm", "language_weight_sum")}))

  def due(self) -> bool:
    """Whether K steps are pending, so that a divergence is not missed."""
    return len(self._pending) >= self.config.max_consecutive_skips

  def check(self) -> str | None:
    """Reads the pending steps, logs the skipped ones and applies the policy.

    Returns:
      `RESTORE` when the trainer must roll back to the newest checkpoint,
      else None.

    Raises:
      DivergenceError: K consecutive steps were skipped and the policy is
        'stop', or the rollbacks are used up.
    """
    if not self._pending:
      return None
    fetched = jax.device_get([p.metrics for p in self._pending])
    steps = [p.step for p in self._pending]
    self._pending = []
    diverged_at = None
    for step, metrics in zip(steps, fetched):
      if not metrics["skipped"]:
        self.consecutive = 0
        continue
      self.skipped_steps += 1
      self.consecutive += 1
      logging.warning(
          "Skipped step %d: loss %s or gradient norm %s is not finite; batch "
          "languages: %s; %d steps skipped so far, %d in a row", step,
          metrics["loss"], metrics["grad_norm"],
          self._languages(metrics["language_weight_sum"]),
          self.skipped_steps, self.consecutive)
      if self.consecutive >= self.config.max_consecutive_skips:
        # K in a row count even when later steps of the window were finite.
        diverged_at = diverged_at or (step, self.consecutive)
    if diverged_at is None:
      return None
    return self._diverged(*diverged_at)

  @property
  def last_step_skipped(self) -> bool:
    """Whether the newest step read by `check` was skipped."""
    return self.consecutive > 0

  def _diverged(self, step: int, count: int) -> str:
    if self.config.on_divergence == RESTORE and (
        self.restores < self.config.max_restores):
      self.restores += 1
      self.diverged_run = count
      self.consecutive = 0
      return RESTORE
    reason = (f"{self.restores} rollbacks did not help"
              if self.config.on_divergence == RESTORE else
              "NonFiniteGuardConfig.on_divergence = 'stop'")
    raise DivergenceError(self.message(step, reason, count))

  def message(self, step: int, reason: str, count: int) -> str:
    """The one-line error of a diverged run."""
    return (f"training diverged: the last {count} steps up to "
            f"step {step} had a non-finite loss or gradient norm ({reason});"
            " lower OptimizerConfig.peak_learning_rate or raise "
            "OptimizerConfig.warmup_steps, and check the data of the "
            "languages named in the warnings above")

  def _languages(self, weight_sum: np.ndarray) -> str:
    codes = [code for code, weight in zip(self._codes, weight_sum)
             if weight > 0]
    return ", ".join(codes) or "none"


def roll_back(checkpointer, abstract_state, step: int,
              nan_guard: NonFiniteGuard):
  """Restores the newest checkpoint's state and relabels it as `step`.

  Args:
    checkpointer: the run's `checkpoints.Checkpointer`.
    abstract_state: the `TrainState` of abstract arrays to restore onto.
    step: the step the loop has reached; the run continues from it.
    nan_guard: the guard, for the error message.

  Returns:
    The restored `TrainState`, with `step` set to `step`.

  Raises:
    DivergenceError: there is no checkpoint yet.
  """
  checkpointer.wait()
  latest = checkpointer.latest_step()
  if latest is None:
    raise DivergenceError(nan_guard.message(
        step, "there is no checkpoint to restore yet",
        nan_guard.diverged_run))
  state, _ = checkpointer.restore(latest, abstract_state)
  logging.warning("Rolled the parameters and optimizer state back to the "
                  "checkpoint of step %d; continuing from step %d with the "
                  "next batches", latest, step)
  return state.replace(step=jax.device_put(np.int32(step),
                                           abstract_state.step.sharding))
