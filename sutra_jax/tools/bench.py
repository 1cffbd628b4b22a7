"""Timing of the full train step on batches with different language mixes.

The language blocks route each token to its language group's weights with a
grouped matmul (`sutra_jax.models.grouped`). A batch that mixes eight
languages should cost about as much as a batch of one language, and
`language_mix` measures that ratio on two synthetic batches that differ only
in their language ids.

Shapes: B batch, L sequence length, S packed segments per row.
"""

import datetime
import platform
import statistics
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import numpy as np

from sutra_jax import languages
from sutra_jax import partitioning
from sutra_jax.errors import ConfigError
from sutra_jax.models.config import ModelConfig
from sutra_jax.training import optimizers
from sutra_jax.training import train_step as train_step_lib

# Languages, each in its own group, of the mixed batch.
NUM_MIXED_LANGUAGES = 8


def mixed_languages(table: languages.LanguageTable,
                    count: int = NUM_MIXED_LANGUAGES) -> tuple[str, ...]:
  """Returns the first `count` languages of `table` that have distinct groups.

  Raises:
    ConfigError: the table has fewer than `count` language groups.
  """
  chosen = {}
  for code, group in zip(table.codes, table.group_of):
    chosen.setdefault(group, code)
  if len(chosen) < count:
    raise ConfigError(
        f"the language table has {len(chosen)} language groups, but the "
        f"mixed batch needs {count}; bind language_table.languages to at "
        f"least {count} languages in different groups")
  return tuple(chosen.values())[:count]


def synthetic_batches(table: languages.LanguageTable, batch_size: int,
                      sequence_length: int, vocab_size: int, seed: int = 0,
                      num_segments: int = NUM_MIXED_LANGUAGES
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Builds a one-language batch and a mixed-language batch of equal size.

  Each row packs `num_segments` segments of L / S tokens, with no padding.
  Both batches have the same tokens, segments and positions. In the
  single-language batch every token is in the table's first language. In the
  mixed batch segment s of row b is in language (b + s) mod S of
  `mixed_languages(table, S)`, so every row contains S languages of S groups.

  Args:
    table: the model's language table.
    batch_size: B.
    sequence_length: L, a multiple of `num_segments`.
    vocab_size: token ids are drawn uniformly from [1, vocab_size).
    seed: seed of the token draw.
    num_segments: S, which is also the number of languages in the mix.

  Returns:
    (single, mixed), dicts of the `train_step.BATCH_FEATURES` as [B, L]
    NumPy arrays.

  Raises:
    ConfigError: L is not a multiple of S, or the table has fewer than S
      language groups.
  """
  if sequence_length % num_segments:
    raise ConfigError(
        f"invalid sequence length {sequence_length}: it must be a multiple "
        f"of {num_segments}, the number of packed segments per row")
  codes = mixed_languages(table, num_segments)
  shape = (batch_size, sequence_length)
  segment_length = sequence_length // num_segments
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab_size, size=(batch_size, sequence_length + 1),
                        dtype=np.int32)
  segment_index = np.broadcast_to(
      np.arange(sequence_length, dtype=np.int32) // segment_length, shape)
  positions = np.broadcast_to(
      np.arange(sequence_length, dtype=np.int32) % segment_length, shape)
  common = {
      "decoder_input_tokens": tokens[:, :-1],
      "decoder_target_tokens": tokens[:, 1:],
      "decoder_loss_weights": np.ones(shape, np.float32),
      "decoder_segment_ids": (segment_index + 1).astype(np.int32),
      "decoder_positions": positions.astype(np.int32),
  }
  single_ids = np.full(shape, table.id(codes[0]), np.int32)
  code_ids = np.asarray(table.ids(codes), np.int32)
  row = np.arange(batch_size, dtype=np.int32)[:, None]
  mixed_ids = code_ids[(row + segment_index) % num_segments]
  single = dict(common, encoder_language_ids=single_ids,
                decoder_language_ids=single_ids)
  mixed = dict(common, encoder_language_ids=mixed_ids,
               decoder_language_ids=mixed_ids)
  return single, mixed


def initial_state(model_config: ModelConfig, mesh, rules,
                   num_steps: int):
  """Returns (graphdef, optimizer, state shardings, state) for a new model."""
  model = partitioning.create_sharded_model(model_config, mesh, 0, rules)
  graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError("the model has non-parameter variables, which "
                              "the train state does not carry")
  params = nnx.to_pure_dict(param_state)
  config = optimizers.OptimizerConfig()
  # The schedule's decay must end after its warm-up. The learning rate does
  # not change the cost of a step, so any valid schedule will do.
  optimizer = optimizers.make_optimizer(
      config, params, trainable=optimizers.TRAIN_EVERYTHING,
      num_steps=config.warmup_steps + num_steps)
  shardings = train_step_lib.train_state_shardings(
      mesh, jax.tree.map(lambda x: x.sharding, params),
      jax.eval_shape(optimizer.tx.init, params))
  opt_state = jax.jit(optimizer.tx.init,
                      out_shardings=shardings.opt_state)(params)
  state = train_step_lib.TrainState(
      step=jax.device_put(np.int32(0), shardings.step), params=params,
      opt_state=opt_state,
      rng=jax.device_put(jax.random.key_data(jax.random.key(0)),
                         shardings.rng))
  return graphdef, optimizer, shardings, state


def _time_steps(step_fn, state, batch, steps: int):
  """Runs `steps` train steps; returns (new state, mean seconds per step)."""
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def language_mix(model_config: ModelConfig, table: languages.LanguageTable,
                 *, batch_size: int, sequence_length: int, steps: int,
                 repeats: int) -> dict[str, Any]:
  """Times the train step on a one-language and an 8-language batch.

  The step is the trainer's: forward, backward and AdamW update, jitted with
  `train_step.make_train_step` on a mesh of all local devices. Both batches
  have the same shape, so one compilation serves both. After one warm-up
  step on each batch, the two batches are timed alternately, `steps` steps
  at a time, `repeats` times, and the median of each is reported.

  Args:
    model_config: the model to build, with random parameters.
    table: its language table.
    batch_size: B.
    sequence_length: L, a multiple of 8.
    steps: timed steps per measurement.
    repeats: measurements per batch.

  Returns:
    `single_language_step_seconds`, `mixed_language_step_seconds`, `ratio`
    (mixed / single) and the run's context: batch, length, steps, repeats,
    languages of the mix, devices and date.

  Raises:
    ConfigError: invalid sizes, or fewer than 8 language groups.
  """
  for name, value in (("batch_size", batch_size), ("steps", steps),
                      ("repeats", repeats)):
    if value <= 0:
      raise ConfigError(f"invalid {name} {value}: expected a positive "
                        "integer")
  single, mixed = synthetic_batches(table, batch_size, sequence_length,
                                    model_config.vocab_size)
  mesh = partitioning.make_mesh()
  rules = partitioning.axis_rules()
  graphdef, optimizer, shardings, state = initial_state(
      model_config, mesh, rules, num_steps=2 + 2 * steps * repeats)
  batch_sharding = partitioning.batch_sharding(mesh, rules,
                                               batch_size=batch_size)
  step_fn = train_step_lib.make_train_step(
      graphdef, optimizer, mesh=mesh, state_shardings=shardings,
      batch_sharding=batch_sharding,
      loss_weights=train_step_lib.LossWeights(), num_languages=len(table))
  batches = {name: train_step_lib.device_batch(b, batch_sharding)
             for name, b in (("single", single), ("mixed", mixed))}

  timings = {"single": [], "mixed": []}
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    for name in ("single", "mixed"):
      state, _ = _time_steps(step_fn, state, batches[name], 1)
    logging.info("Compiled and warmed up the train step in %.1f s",
                 time.perf_counter() - start)
    for repeat in range(repeats):
      # Alternating which batch goes first spreads slow drift of the
      # machine's speed evenly over both.
      order = ("single", "mixed") if repeat % 2 == 0 else ("mixed", "single")
      for name in order:
        state, seconds = _time_steps(step_fn, state, batches[name], steps)
        timings[name].append(seconds)
        logging.info("repeat %d, %s: %.4f s per step", repeat, name, seconds)

  single_seconds = statistics.median(timings["single"])
  mixed_seconds = statistics.median(timings["mixed"])
  return {
      "single_language_step_seconds": single_seconds,
      "mixed_language_step_seconds": mixed_seconds,
      "ratio": mixed_seconds / single_seconds,
      "batch_size": batch_size,
      "sequence_length": sequence_length,
      "steps": steps,
      "repeats": repeats,
      "mixed_languages": list(mixed_languages(table)),
      **machine_context(),
  }


def machine_context() -> dict[str, str]:
  """Devices, CPU and date of a measurement."""
  devices = jax.devices()
  return {
      "device": f"{len(devices)} x {devices[0].device_kind}",
      "platform": f"{platform.machine()} {platform.processor()}".strip(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
