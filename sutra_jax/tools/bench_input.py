"""Throughput of the input pipeline against the train step it feeds.

`input_throughput` reads packed batches of the demo corpus mixture through
`sutra_jax.data.pipeline` (tokenization, mixing, packing, batching) and
times them, then times the trainer's train step on one of those batches.
Both rates count B x L token positions per batch, so `ratio` says how many
times faster the pipeline produces batches than the step consumes them.
Training is input-bound when the ratio is below 1; a margin of 20 leaves
room for slower hosts, larger corpora and noisy neighbours.
"""

import os
import statistics
import tempfile
import time
from typing import Any

from absl import logging
import jax

from sutra_jax import languages
from sutra_jax import partitioning
from sutra_jax.data import corpus
from sutra_jax.data import mixtures
from sutra_jax.data import pipeline
from sutra_jax.errors import ConfigError
from sutra_jax.models.config import ModelConfig
from sutra_jax.tokenizer import train as tokenizer_train
from sutra_jax.tools import bench
from sutra_jax.training import train_step as train_step_lib

# Batches read before timing: they fill the shuffle buffers.
WARMUP_BATCHES = 10


def demo_vocabulary(vocab_size: int, folder: str) -> str:
  """Trains a SentencePiece model of `vocab_size` pieces on the demo corpus."""
  texts = corpus.demo_texts_by_language("train")
  return tokenizer_train.train_sentencepiece(
      texts, os.path.join(folder, "bench"), vocab_size,
      character_coverage=0.9995)


def _time_input(mixture: str, table: languages.LanguageTable,
                batch_size: int, sequence_length: int,
                batches: int) -> float:
  """Returns the seconds per batch of the pipeline after its warm-up."""
  ds = pipeline.get_dataset(
      mixture, split="train", sequence_length=sequence_length,
      batch_size=batch_size, language_table=table, shuffle=True, seed=0,
      repeat=True)
  iterator = pipeline.as_numpy_batches(ds)
  for _ in range(WARMUP_BATCHES):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return (time.perf_counter() - start) / batches


def _time_train_step(model_config: ModelConfig, table: languages.LanguageTable,
                     batch: dict, batch_size: int, steps: int,
                     repeats: int) -> float:
  """Returns the median seconds per train step on `batch`."""
  mesh = partitioning.make_mesh()
  rules = partitioning.axis_rules()
  # NOTE: reuses the state set-up and timing loop of `bench.language_mix`.
  graphdef, optimizer, shardings, state = bench.initial_state(
      model_config, mesh, rules, num_steps=1 + steps * repeats)
  batch_sharding = partitioning.batch_sharding(mesh, rules,
                                               batch_size=batch_size)
  step_fn = train_step_lib.make_train_step(
      graphdef, optimizer, mesh=mesh, state_shardings=shardings,
      batch_sharding=batch_sharding,
      loss_weights=train_step_lib.LossWeights(), num_languages=len(table))
  device_batch = train_step_lib.device_batch(batch, batch_sharding)
  timings = []
  with jax.set_mesh(mesh):
    state, _ = bench._time_steps(step_fn, state, device_batch, 1)  # pylint: disable=protected-access
    for _ in range(repeats):
      state, seconds = bench._time_steps(step_fn, state, device_batch, steps)  # pylint: disable=protected-access
      timings.append(seconds)
  return statistics.median(timings)


def input_throughput(model_config: ModelConfig,
                     table: languages.LanguageTable, *, batch_size: int,
                     sequence_length: int, steps: int, repeats: int,
                     input_batches: int = 50,
                     vocabulary: str | None = None) -> dict[str, Any]:
  """Measures pipeline and train-step tokens per second.

  Args:
    model_config: the model of the train step.
    table: its language table; the mixture uses the demo languages in it.
    batch_size: B.
    sequence_length: L.
    steps: timed train steps per measurement.
    repeats: measurements of the train step and of the pipeline; the
      medians are reported.
    input_batches: timed pipeline batches per measurement.
    vocabulary: a SentencePiece model with at most `model_config.vocab_size`
      pieces; by default one of exactly that size is trained on the demo
      corpus.

  Returns:
    `tokens_per_second` (pipeline), `train_tokens_per_second`, `ratio`
    (pipeline / train) and the run's context.

  Raises:
    ConfigError: invalid sizes, or no demo language in `table`.
  """
  for name, value in (("batch_size", batch_size), ("steps", steps),
                      ("repeats", repeats), ("input_batches", input_batches),
                      ("sequence_length", sequence_length)):
    if value <= 0:
      raise ConfigError(f"invalid {name} {value}: expected a positive "
                        "integer")
  codes = [c for c in table.codes if c in languages.DEMO_LANGUAGES]
  if not codes:
    raise ConfigError("the language table has no demo language, so the "
                      "demo mixture is empty; bind language_table.languages "
                      "to demo languages")
  with tempfile.TemporaryDirectory() as folder:
    vocabulary = vocabulary or demo_vocabulary(model_config.vocab_size,
                                               folder)
    mixture = mixtures.phase_mixture(
        "bench_input", vocabulary, chat_languages=codes,
        lexicon_languages=[c for c in codes
                           if c in corpus.lexicon_languages() and c != "en"],
        language_table=table)
    input_seconds = statistics.median(
        _time_input(mixture, table, batch_size, sequence_length,
                    input_batches) for _ in range(repeats))
    batch = next(pipeline.as_numpy_batches(pipeline.get_dataset(
        mixture, split="train", sequence_length=sequence_length,
        batch_size=batch_size, language_table=table, shuffle=True, seed=0,
        repeat=True)))
  logging.info("Pipeline: %.4f s per batch", input_seconds)
  step_seconds = _time_train_step(model_config, table, batch, batch_size,
                                  steps, repeats)
  logging.info("Train step: %.4f s per batch", step_seconds)
  tokens = batch_size * sequence_length
  return {
      "tokens_per_second": tokens / input_seconds,
      "train_tokens_per_second": tokens / step_seconds,
      "ratio": step_seconds / input_seconds,
      "batch_size": batch_size,
      "sequence_length": sequence_length,
      "steps": steps,
      "repeats": repeats,
      "input_batches": input_batches,
      **bench.machine_context(),
  }
