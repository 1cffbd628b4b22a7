"""Training metrics: per-interval summaries, log lines, TensorBoard, JSONL.

The train step returns device arrays every step. `MetricsAccumulator` keeps
them until the end of a logging interval, then fetches them in one transfer
(so the loop does not wait for the device every step) and reduces them to an
`IntervalSummary`. `MetricsWriter` writes the summary three ways:

  * one absl log line;
  * TensorBoard scalars (tensorboardX) under `learning/`, `moe/`, `perf/`
    and `lang/<code>/loss`, and one expert-load heatmap image per core layer
    (`moe/expert_load_by_language/layer_<i>`, see
    `heatmaps.expert_load_heatmap`);
  * one JSON line in `RUN_DIR/metrics.jsonl`.

MoE scalars, all averaged over the interval's steps. A load is the fraction
of a layer's routed token slots (k per real token) that an expert receives,
so a perfectly balanced layer gives every expert 1 / E:

  moe/layer_<i>/max_load   load of the busiest expert of core layer i
  moe/layer_<i>/min_load   load of the idlest expert; 0 means a dead expert
  moe/layer_<i>/load_cv    coefficient of variation (std / mean) of the E
                           loads; 0 is perfect balance, sqrt(E - 1) is all
                           slots on one expert
  moe/layer_<i>/load_balancing_loss
                           the load-balancing loss of core layer i
  moe/dropped_tokens       fraction of token slots dropped by dispatch
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

from sutra_jax.training import heatmaps

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
HEATMAP_TAG = "moe/expert_load_by_language"


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
    tokens_per_second_per_device: `tokens_per_second` / number of devices.
    model_flops_per_second_per_device: `tokens_per_second_per_device` *
      model FLOPs per token (`sutra_jax.models.flops.flops_per_token`); 0
      when the accumulator was given no FLOPs count.
    mfu: model FLOPs utilisation, `model_flops_per_second_per_device` /
      the device's peak FLOP/s; None when the peak is not configured.
    seconds_per_step: wall time of the interval / `interval_steps`. The
      wall time includes data loading and the blocking part of checkpoint
      saves, but not compilation, which happens before the first step.
    per_language_loss: cross-entropy of each language over all weighted
      tokens of the interval (token-weighted, not a mean of step means).
      Languages without weighted tokens in the interval are left out.
    expert_load: [num_core_layers][E] expert loads (fractions of routed
      slots) averaged over the interval's steps.
    dropped_tokens: fraction of the real tokens' routed copies that
      dispatch dropped, averaged over the interval's steps; always 0.0 for
      the dropless dispatch (`ModelConfig.moe_dispatch`).
    layer_load_balancing_loss: [num_core_layers] load-balancing loss of
      each core layer, averaged over the interval's steps.
    language_expert_counts: routed slots summed over the interval, per
      language code, as [num_core_layers][E]. Languages with no real tokens
      in the interval are left out. Not written to metrics.jsonl.
    loss_terms: the loss terms of `sutra_jax.training.losses` over the
      interval: `next_token` and `translation` are token-weighted over the
      tokens each scores, `consistency` (when the phase weights it) is the
      mean over steps. Terms without tokens in the interval are left out.
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
  tokens_per_second_per_device: float = 0.0
  model_flops_per_second_per_device: float = 0.0
  mfu: float | None = None
  expert_load: list[list[float]] = dataclasses.field(default_factory=list)
  dropped_tokens: float = 0.0
  layer_load_balancing_loss: list[float] = dataclasses.field(
      default_factory=list)
  language_expert_counts: dict[str, list[list[float]]] = dataclasses.field(
      default_factory=dict)
  loss_terms: dict[str, float] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    del record["language_expert_counts"]
    return record


class MetricsAccumulator:
  """Collects the step metrics of one logging interval."""

  def __init__(self, language_codes: Sequence[str], tokens_per_step: int, *,
               num_devices: int = 1, flops_per_token: float = 0.0,
               peak_flops_per_device: float | None = None):
    """Starts an empty interval.

    Args:
      language_codes: codes of the language table, in id order.
      tokens_per_step: global batch size * sequence length.
      num_devices: devices that share the global batch.
      flops_per_token: model FLOPs per token, for FLOP/s and MFU.
      peak_flops_per_device: peak FLOP/s of one device; None leaves MFU out.
    """
    self._codes = tuple(language_codes)
    self._tokens_per_step = tokens_per_step
    self._num_devices = num_devices
    self._flops_per_token = flops_per_token
    self._peak_flops = peak_flops_per_device
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
    tokens_per_second = count * self._tokens_per_step / elapsed
    per_device = tokens_per_second / self._num_devices
    flops_per_second = per_device * self._flops_per_token
    summary = IntervalSummary(
        step=step,
        interval_steps=count,
        loss=mean("loss"),
        cross_entropy=mean("cross_entropy"),
        load_balancing_loss=mean("load_balancing_loss"),
        router_z_loss=mean("router_z_loss"),
        learning_rate=float(fetched[-1]["learning_rate"]),
        grad_norm=mean("grad_norm"),
        tokens_per_second=tokens_per_second,
        seconds_per_step=elapsed / count,
        per_language_loss=per_language,
        tokens_per_second_per_device=per_device,
        model_flops_per_second_per_device=flops_per_second,
        mfu=(flops_per_second / self._peak_flops
             if self._peak_flops and self._flops_per_token else None),
        loss_terms=_loss_terms(fetched),
        **self._expert_metrics(fetched))
    self._steps = []
    self._start = time.perf_counter()
    return summary

  def _expert_metrics(self, fetched) -> dict[str, Any]:
    """Reduces the steps' expert loads, or returns {} if they carry none."""
    if "expert_load" not in fetched[0]:
      return {}
    load = np.mean([m["expert_load"] for m in fetched], axis=0)
    counts = np.sum([m["language_expert_counts"] for m in fetched], axis=0)
    by_language = {
        code: counts[i].tolist()
        for i, code in enumerate(self._codes) if counts[i].sum() > 0
    }
    reduced = {"expert_load": load.tolist(),
               "language_expert_counts": by_language}
    if "dropped_fraction" in fetched[0]:
      reduced["dropped_tokens"] = float(
          np.mean([m["dropped_fraction"] for m in fetched]))
      reduced["layer_load_balancing_loss"] = np.mean(
          [m["layer_load_balancing_loss"] for m in fetched], axis=0).tolist()
    return reduced


def _loss_terms(fetched: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Reduces the steps' loss terms; see `IntervalSummary.loss_terms`."""
  terms = {}
  for name in ("next_token", "translation"):
    if f"{name}_loss" not in fetched[0]:
      continue
    tokens = np.asarray([m[f"{name}_tokens"] for m in fetched], np.float64)
    if tokens.sum() > 0:
      losses = np.asarray([m[f"{name}_loss"] for m in fetched], np.float64)
      terms[name] = float(np.sum(losses * tokens) / tokens.sum())
  if "consistency_loss" in fetched[0]:
    terms["consistency"] = float(np.mean(
        [m["consistency_loss"] for m in fetched]))
  return terms


def load_statistics(load: Sequence[float]) -> dict[str, float]:
  """Returns the max, min and coefficient of variation of one layer's loads."""
  load = np.asarray(load, np.float64)
  mean = load.mean()
  return {"max_load": float(load.max()),
          "min_load": float(load.min()),
          "load_cv": float(load.std() / mean) if mean > 0 else 0.0}


def format_line(summary: IntervalSummary, num_steps: int) -> str:
  """Formats the one-line log record of an interval."""
  return (f"step {summary.step}/{num_steps}  loss {summary.loss:.4f}  "
          f"cross_entropy {summary.cross_entropy:.4f}  "
          f"load_balancing {summary.load_balancing_loss:.4f}  "
          f"router_z {summary.router_z_loss:.4f}  "
          f"lr {summary.learning_rate:.3e}  "
          f"grad_norm {summary.grad_norm:.3f}  "
          f"tokens/s/device {summary.tokens_per_second_per_device:,.0f}  "
          f"TFLOP/s/device "
          f"{summary.model_flops_per_second_per_device / 1e12:.3f}  "
          + (f"MFU {summary.mfu:.1%}  " if summary.mfu is not None else "") +
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
        "moe/dropped_tokens": summary.dropped_tokens,
        "perf/tokens_per_second": summary.tokens_per_second,
        "perf/tokens_per_second_per_device":
            summary.tokens_per_second_per_device,
        "perf/model_flops_per_second_per_device":
            summary.model_flops_per_second_per_device,
        "perf/seconds_per_step": summary.seconds_per_step,
    }
    if summary.mfu is not None:
      scalars["perf/mfu"] = summary.mfu
    for layer, load in enumerate(summary.expert_load):
      for name, value in load_statistics(load).items():
        scalars[f"moe/layer_{layer}/{name}"] = value
    for layer, value in enumerate(summary.layer_load_balancing_loss):
      scalars[f"moe/layer_{layer}/load_balancing_loss"] = value
    for code, loss in summary.per_language_loss.items():
      scalars[f"lang/{code}/loss"] = loss
    for name, loss in summary.loss_terms.items():
      scalars[f"learning/{name}_loss"] = loss
    for tag, value in scalars.items():
      self._tensorboard.add_scalar(tag, value, summary.step)
    self._write_heatmaps(summary)
    self._tensorboard.flush()
    with open(self._jsonl_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(summary.to_json()) + "\n")

  def _write_heatmaps(self, summary: IntervalSummary) -> None:
    """Writes one expert-load heatmap per core layer, rows in table order."""
    codes = list(summary.language_expert_counts)
    if not codes:
      return
    counts = np.asarray([summary.language_expert_counts[c] for c in codes])
    for layer in range(counts.shape[1]):
      image = heatmaps.expert_load_heatmap(counts[:, layer])
      self._tensorboard.add_image(f"{HEATMAP_TAG}/layer_{layer}", image,
                                  summary.step, dataformats="HWC")
    # An image has no axis labels, so the row order is logged as text.
    self._tensorboard.add_text(f"{HEATMAP_TAG}/rows", ", ".join(codes),
                               summary.step)

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
