"""Training metrics: per-interval summaries, log lines, TensorBoard, JSONL.

The train step returns device arrays every step. `MetricsAccumulator` keeps
them until the end of a logging interval, then fetches them in one transfer
(so the loop does not wait for the device every step) and reduces them to an
`IntervalSummary`. `MetricsWriter` writes the summary three ways:

  * one absl log line;
  * TensorBoard scalars (tensorboardX) under `learning/`, `moe/`, `perf/`
    and `lang/<code>/loss`;
  * one JSON line in `RUN_DIR/metrics.jsonl`.
"""

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import numpy as np
import tensorboardX

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"


@dataclasses.dataclass(frozen=True)
class IntervalSummary:
  """Metrics of one logging interval.

  Attributes:
    step: the step reached at the end of the interval.
    interval_steps: steps in the interval.
    loss: mean training objective (cross-entropy + weighted auxiliary
      losses) over the interval's steps.
    cross_entropy: mean cross-entropy over the interval's steps.
    load_balancing_loss: mean load-balancing loss of the concept core.
    router_z_loss: mean router z-loss of the concept core.
    learning_rate: learning rate of the interval's last step.
    grad_norm: mean global norm of the trainable gradients.
    tokens_per_second: batch positions (B * L, padding included) per second
      of wall time.
    seconds_per_step: wall time of the interval / `interval_steps`. The
      wall time includes data loading and the blocking part of checkpoint
      saves, but not compilation, which happens before the first step.
    per_language_loss: cross-entropy of each language over all weighted
      tokens of the interval (token-weighted, not a mean of step means).
      Languages without weighted tokens in the interval are left out.
  """

  step: int
  interval_steps: int
  loss: float
  cross_entropy: float
  load_balancing_loss: float
  router_z_loss: float
  learning_rate: float
  grad_norm: float
  tokens_per_second: float
  seconds_per_step: float
  per_language_loss: dict[str, float]

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class MetricsAccumulator:
  """Collects the step metrics of one logging interval."""

  def __init__(self, language_codes: Sequence[str], tokens_per_step: int):
    """Starts an empty interval.

    Args:
      language_codes: codes of the language table, in id order.
      tokens_per_step: global batch size * sequence length.
    """
    self._codes = tuple(language_codes)
    self._tokens_per_step = tokens_per_step
    self._steps: list[Mapping[str, jax.Array]] = []
    self._start = time.perf_counter()

  def __len__(self) -> int:
    return len(self._steps)

  def add(self, metrics: Mapping[str, jax.Array]) -> None:
    """Keeps one step's metrics without transferring them from the device."""
    self._steps.append(metrics)

  def summarize(self, step: int) -> IntervalSummary:
    """Fetches the interval's metrics, reduces them and starts a new interval.

    Args:
      step: the step reached after the last added metrics.
    """
    if not self._steps:
      raise ValueError("summarize() needs at least one step's metrics")
    fetched = jax.device_get(self._steps)
    elapsed = time.perf_counter() - self._start
    count = len(fetched)

    def mean(name):
      return float(np.mean([m[name] for m in fetched]))

    loss_sum = np.sum([m["language_loss_sum"] for m in fetched], axis=0)
    weight_sum = np.sum([m["language_weight_sum"] for m in fetched], axis=0)
    per_language = {
        code: float(loss_sum[i] / weight_sum[i])
        for i, code in enumerate(self._codes) if weight_sum[i] > 0
    }
    summary = IntervalSummary(
        step=step,
        interval_steps=count,
        loss=mean("loss"),
        cross_entropy=mean("cross_entropy"),
        load_balancing_loss=mean("load_balancing_loss"),
        router_z_loss=mean("router_z_loss"),
        learning_rate=float(fetched[-1]["learning_rate"]),
        grad_norm=mean("grad_norm"),
        tokens_per_second=count * self._tokens_per_step / elapsed,
        seconds_per_step=elapsed / count,
        per_language_loss=per_language)
    self._steps = []
    self._start = time.perf_counter()
    return summary


def format_line(summary: IntervalSummary, num_steps: int) -> str:
  """Formats the one-line log record of an interval."""
  return (f"step {summary.step}/{num_steps}  loss {summary.loss:.4f}  "
          f"cross_entropy {summary.cross_entropy:.4f}  "
          f"load_balancing {summary.load_balancing_loss:.4f}  "
          f"router_z {summary.router_z_loss:.4f}  "
          f"lr {summary.learning_rate:.3e}  "
          f"grad_norm {summary.grad_norm:.3f}  "
          f"tokens/s {summary.tokens_per_second:,.0f}  "
          f"s/step {summary.seconds_per_step:.3f}")


class MetricsWriter:
  """Writes interval summaries to the log, TensorBoard and metrics.jsonl.

  Only process 0 writes files; every process logs.
  """

  def __init__(self, run_dir: str, num_steps: int, *, resume_step: int = 0):
    """Opens the writers of `run_dir`.

    Args:
      run_dir: the run directory.
      num_steps: the phase's step count, shown in the log line.
      resume_step: the step the run resumes from. Records of metrics.jsonl
        after it come from a run that stopped before its next checkpoint.
        They are dropped because the resumed run logs those steps again.
    """
    self._num_steps = num_steps
    self._is_writer = jax.process_index() == 0
    self._jsonl_path = os.path.join(run_dir, METRICS_FILE)
    self._tensorboard = None
    if self._is_writer:
      truncate_metrics(self._jsonl_path, resume_step)
      self._tensorboard = tensorboardX.SummaryWriter(
          os.path.join(run_dir, TENSORBOARD_SUBDIR))

  def write(self, summary: IntervalSummary) -> None:
    logging.info("%s", format_line(summary, self._num_steps))
    if not self._is_writer:
      return
    scalars = {
        "learning/loss": summary.loss,
        "learning/cross_entropy": summary.cross_entropy,
        "learning/learning_rate": summary.learning_rate,
        "learning/grad_norm": summary.grad_norm,
        "moe/load_balancing_loss": summary.load_balancing_loss,
        "moe/router_z_loss": summary.router_z_loss,
        "perf/tokens_per_second": summary.tokens_per_second,
        "perf/seconds_per_step": summary.seconds_per_step,
    }
    for code, loss in summary.per_language_loss.items():
      scalars[f"lang/{code}/loss"] = loss
    for tag, value in scalars.items():
      self._tensorboard.add_scalar(tag, value, summary.step)
    self._tensorboard.flush()
    with open(self._jsonl_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(summary.to_json()) + "\n")

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """Returns the records of `run_dir/metrics.jsonl`, oldest first."""
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the records of `path` whose step is after `last_step`."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line)["step"] <= last_step]
  if len(kept) == len(lines):
    return
  logging.info("Dropping %d records after step %d from %s",
               len(lines) - len(kept), last_step, path)
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(temporary, path)
