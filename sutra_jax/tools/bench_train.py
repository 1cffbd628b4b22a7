"""Train-step throughput and MFU of the concept core at fixed presets.

A preset fixes the model and batch shapes of a comparison. The two
`maxtext_tiny_*` presets use the shapes of the tiny MaxText runs that
docs/benchmarks.md compares against: d_model 256, 4 layers, 4 query and 2
key/value heads of 64, an MLP (or each expert) of width 512, a vocabulary of
8192, 8 sequences of 256 tokens per step, and AdamW with gradient clipping
at 1.0. The core runs alone, without language blocks.

`train_benchmark` times the full train step (forward, backward, AdamW
update), jitted as the trainer jits it, on synthetic tokens, and reports
the median step time, tokens/s, model FLOPs per token and MFU. The peak of
the MFU is measured in the same process with a large `jnp.dot`, because no
data-sheet peak exists for a CPU.

`moe_overhead` times the dense and the MoE preset in one process and
compares their seconds per model FLOP.
"""

import dataclasses
import resource
import statistics
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax import partitioning
from sutra_jax.errors import ConfigError
from sutra_jax.models import flops
from sutra_jax.models.config import ModelConfig
from sutra_jax.tools import bench
from sutra_jax.training import train_step as train_step_lib

_CORE = dict(
    vocab_size=8192, d_model=256, num_heads=4, num_kv_heads=2, head_dim=64,
    mlp_dim=512, expert_mlp_dim=512, num_experts=8, experts_per_token=2,
    num_encoder_layers=0, num_core_layers=4, num_decoder_layers=0,
    num_language_groups=1, language_group_ids=(0,))


@dataclasses.dataclass(frozen=True)
class Preset:
  """Shapes of one benchmark.

  Attributes:
    name: the preset's name.
    model: `ModelConfig` fields.
    batch_size: sequences per step.
    sequence_length: tokens per sequence.
  """

  name: str
  model: dict[str, Any]
  batch_size: int = 8
  sequence_length: int = 256


PRESETS = {
    "maxtext_tiny_dense": Preset("maxtext_tiny_dense",
                                 dict(_CORE, core_mlp="dense")),
    "maxtext_tiny_moe": Preset("maxtext_tiny_moe", dict(_CORE, core_mlp="moe")),
}


def get_preset(name: str) -> Preset:
  """Returns the preset called `name`.

  Raises:
    ConfigError: no such preset.
  """
  if name not in PRESETS:
    raise ConfigError(f"unknown preset {name!r}: use one of "
                      f"{', '.join(PRESETS)}")
  return PRESETS[name]


def model_config(preset: Preset, **overrides) -> ModelConfig:
  """Builds the preset's `ModelConfig`, with `overrides` taking precedence."""
  return ModelConfig(**dict(preset.model, **overrides))


def measure_matmul_peak(size: int = 2048, dtype: str = "float32",
                        repeats: int = 10) -> float:
  """Measures the FLOP/s of a jitted [size, size] @ [size, size] matmul.

  Args:
    size: the square matrix size. 2048 is where the anchor's CPU peaks.
    dtype: the matmul input dtype.
    repeats: timed calls; the fastest is kept, which estimates the peak
      rather than the average of a shared machine.

  Returns:
    2 * size**3 / the fastest call's seconds.
  """
  key = jax.random.key(0)
  a = jax.random.normal(key, (size, size), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.fold_in(key, 1), (size, size),
                        jnp.dtype(dtype))
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def synthetic_batch(preset: Preset, vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Returns one batch of unpacked random token rows in language 0."""
  shape = (preset.batch_size, preset.sequence_length)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab_size, size=(shape[0], shape[1] + 1),
                        dtype=np.int32)
  zeros = np.zeros(shape, np.int32)
  return {
      "decoder_input_tokens": tokens[:, :-1],
      "decoder_target_tokens": tokens[:, 1:],
      "decoder_loss_weights": np.ones(shape, np.float32),
      "decoder_segment_ids": np.ones(shape, np.int32),
      "decoder_positions": np.broadcast_to(
          np.arange(shape[1], dtype=np.int32), shape).copy(),
      "encoder_language_ids": zeros,
      "decoder_language_ids": zeros,
  }


def time_train_step(config: ModelConfig, preset: Preset, *, steps: int,
                    warmup_steps: int = 2) -> dict[str, Any]:
  """Times `steps` train steps, one at a time, after `warmup_steps`.

  Args:
    config: the model.
    preset: the batch shapes.
    steps: timed steps.
    warmup_steps: untimed steps first; the first one compiles.

  Returns:
    `step_seconds` (each timed step), the gin-bound `mesh` shape,
    `step_seconds_median`, `compile_seconds` and the final `loss`.
  """
  mesh = partitioning.make_mesh()
  rules = partitioning.axis_rules()
  graphdef, optimizer, shardings, state = bench.initial_state(
      config, mesh, rules, num_steps=warmup_steps + steps)
  batch_sharding = partitioning.batch_sharding(
      mesh, rules, batch_size=preset.batch_size)
  step_fn = train_step_lib.make_train_step(
      graphdef, optimizer, mesh=mesh, state_shardings=shardings,
      batch_sharding=batch_sharding,
      loss_weights=train_step_lib.LossWeights(), num_languages=1)
  batch = train_step_lib.device_batch(
      synthetic_batch(preset, config.vocab_size), batch_sharding)
  seconds = []
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    for _ in range(warmup_steps):
      state, metrics = step_fn(state, batch)
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start
    for _ in range(steps):
      start = time.perf_counter()
      state, metrics = step_fn(state, batch)
      jax.block_until_ready(state)
      seconds.append(time.perf_counter() - start)
  logging.info("%s: compile + %d warm-up steps %.1f s, median step %.4f s",
               preset.name, warmup_steps, compile_seconds,
               statistics.median(seconds))
  return {"step_seconds": seconds,
          "mesh": dict(mesh.shape),
          "step_seconds_median": statistics.median(seconds),
          "compile_seconds": compile_seconds,
          "loss": float(metrics["loss"])}


def train_benchmark(preset_name: str, *, steps: int = 10,
                    peak_flops_per_second: float | None = None,
                    **overrides) -> dict[str, Any]:
  """Times one preset and reports throughput and MFU.

  Args:
    preset_name: a key of `PRESETS`.
    steps: timed steps; the median is reported.
    peak_flops_per_second: the MFU denominator. None measures it here with
      `measure_matmul_peak` in the model's dtype.
    **overrides: `ModelConfig` fields, such as `moe_dispatch` or `dtype`.

  Returns:
    The report fields (`preset`, `tokens_per_step`,
    `step_seconds_median`, `tokens_per_second`, `model_flops_per_token`,
    `mfu`, `peak_flops_per_second`) and the run's context.
  """
  if steps <= 0:
    raise ConfigError(f"invalid steps {steps}: expected a positive integer")
  preset = get_preset(preset_name)
  config = model_config(preset, **overrides)
  if peak_flops_per_second is None:
    peak_flops_per_second = measure_matmul_peak(dtype=config.dtype)
  timing = time_train_step(config, preset, steps=steps)
  tokens_per_step = preset.batch_size * preset.sequence_length
  flops_per_token = flops.flops_per_token(config, preset.sequence_length)
  tokens_per_second = tokens_per_step / timing["step_seconds_median"]
  return {
      "preset": preset.name,
      "tokens_per_step": tokens_per_step,
      "step_seconds_median": timing["step_seconds_median"],
      "tokens_per_second": tokens_per_second,
      "model_flops_per_token": flops_per_token,
      "mfu": tokens_per_second * flops_per_token / peak_flops_per_second,
      "peak_flops_per_second": peak_flops_per_second,
      "core_mlp": config.core_mlp,
      "moe_dispatch": config.moe_dispatch if config.core_mlp == "moe" else None,
      "dtype": config.dtype,
      "remat": config.remat,
      "mesh": timing["mesh"],
      "steps": steps,
      "compile_seconds": timing["compile_seconds"],
      "final_loss": timing["loss"],
      "peak_rss_bytes": peak_rss_bytes(),
      **bench.machine_context(),
  }


def moe_overhead(*, steps: int = 10, **overrides) -> dict[str, Any]:
  """Compares the seconds per model FLOP of the MoE and dense presets.

  Both run in this process with the same overrides, dense first.

  Returns:
    `dense_seconds_per_flop`, `moe_seconds_per_flop`, `overhead` (their
    ratio) and both presets' full reports under `dense` and `moe`.
  """
  peak = measure_matmul_peak(dtype=overrides.get("dtype", "float32"))
  reports = {}
  for key, name in (("dense", "maxtext_tiny_dense"),
                    ("moe", "maxtext_tiny_moe")):
    reports[key] = train_benchmark(name, steps=steps,
                                   peak_flops_per_second=peak, **overrides)
  per_flop = {
      key: r["step_seconds_median"] / (r["tokens_per_step"] *
                                       r["model_flops_per_token"])
      for key, r in reports.items()
  }
  return {"dense_seconds_per_flop": per_flop["dense"],
          "moe_seconds_per_flop": per_flop["moe"],
          "overhead": per_flop["moe"] / per_flop["dense"],
          **reports}


def peak_rss_bytes() -> int:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
