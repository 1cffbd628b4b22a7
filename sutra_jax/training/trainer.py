"""The training loop of one phase: build, restore or initialise, train, save.

A run directory contains one phase:

  RUN_DIR/config.gin       the operative gin config, written before training
  RUN_DIR/checkpoints/     orbax checkpoints (see `checkpoints`)
  RUN_DIR/metrics.jsonl    one JSON record per logging interval
  RUN_DIR/tensorboard/     TensorBoard event files

`train` resumes from the newest checkpoint of the run directory when there
is one, so re-running an interrupted command continues it, and re-running a
finished one returns at once.
"""

import dataclasses
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from absl import logging
from flax import nnx
import jax
import numpy as np

from sutra_jax import distributed
from sutra_jax import gin_utils
from sutra_jax import languages
from sutra_jax import partitioning
from sutra_jax import progress as progress_lib
from sutra_jax.errors import ConfigError, DataError
from sutra_jax.models import flops
from sutra_jax.models.config import ModelConfig, make_model_config
from sutra_jax.models.sutra import SutraModel
from sutra_jax.training import checkpoints
from sutra_jax.training import data_shards
from sutra_jax.training import guard
from sutra_jax.training import metrics as metrics_lib
from sutra_jax.training import optimizers
from sutra_jax.training import phases
from sutra_jax.training import preemption
from sutra_jax.training import preflight
from sutra_jax.training import run_summary
from sutra_jax.training import train_step as train_step_lib
from sutra_jax.training.train_step import TrainState

PyTree = Any
Batch = Mapping[str, np.ndarray]
# (phase, language table, shard index, shard count, batches to skip) ->
# batches of this process after the skipped ones, each feature of shape
# [batch_size / shard count, sequence_length].
DatasetFn = Callable[
    [phases.PhaseConfig, languages.LanguageTable, int, int, int],
    Iterable[Batch]]

CONFIG_FILE = "config.gin"


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """The outcome of `train`.

  Losses are read back from metrics.jsonl, so they cover every call that
  trained this run directory, not only the last one.

  Attributes:
    run_dir: the run directory.
    steps: the step the run reached: the phase's num_steps, or an earlier
      step where a SIGTERM stopped it (see `preemption`).
    steps_run: steps this call took; 0 when the run was already finished.
    first_loss: mean objective of the first logging interval of the run.
    final_loss: mean objective of the last logging interval of the run.
    per_language_loss: cross-entropy per language code over the weighted
      tokens of the last logging interval.
  """

  run_dir: str
  steps: int
  steps_run: int
  first_loss: float | None
  final_loss: float | None
  per_language_loss: dict[str, float]


def train(run_dir: str, phase: phases.PhaseConfig | None = None, *,
          dataset_fn: DatasetFn | None = None) -> TrainResult:
  """Trains one phase to `phase.num_steps`, resuming when possible.

  Args:
    run_dir: the run directory; created if missing.
    phase: the phase; None builds the gin-bound `PhaseConfig`.
    dataset_fn: source of training batches; None reads `phase.mixture`
      through `sutra_jax.data.pipeline.get_dataset`.

  Returns:
    Steps and losses of the run.

  Raises:
    ConfigError: invalid configuration, or an unwritable run directory.
    CheckpointError: a checkpoint that does not fit the model (resume or
      hand-off).
    DataError: the data ran out or is malformed.
  """
  phase = phase or phases.phase_from_gin()
  table = languages.language_table()
  guard_config = guard.NonFiniteGuardConfig()
  mesh = distributed.make_mesh()
  rules = partitioning.axis_rules()
  preflight.check_batch_divides(phase.batch_size, mesh, rules)
  prepare_run_dir(run_dir)
  done = checkpoints.latest_step(run_dir)
  if done is not None:
    _check_same_phase(run_dir, done, phase)
  if done is not None and done >= phase.num_steps:
    logging.info("Phase %s in %s is already at step %d of %d; nothing to do",
                 phase.name, run_dir, done, phase.num_steps)
    return _result(run_dir, done, steps_run=0)

  if done is None and phase.init_from:
    # Checked before anything compiles; the hand-off itself runs later.
    phases.final_step(phase.init_from)
  if not phase.init_from and tuple(phase.trainable) != (".*",):
    logging.warning(
        "Phase %s freezes every parameter outside %s but starts from random "
        "weights because PhaseConfig.init_from is not set, so the frozen "
        "parameters stay random", phase.name, list(phase.trainable))
  consumed = (checkpoints.read_progress(run_dir, done).batches_consumed
              if done is not None else 0)

  model_config = model_config_for_phase(
      table, phase, vocab_from_mixture=dataset_fn is None)
  preflight.check_experts_divide(model_config, mesh)
  if done is not None:
    preflight.check_vocab_matches(run_dir, done, model_config.vocab_size,
                                  f"PhaseConfig.mixture {phase.mixture!r}")
  batches = _open_dataset(phase, table, dataset_fn, consumed)
  setup = _Setup.build(phase, model_config, mesh, rules)
  checkpointer = checkpoints.Checkpointer(run_dir,
                                          save_every=phase.checkpoint_every,
                                          keep=phase.keep_checkpoints)
  try:
    return _train_loop(run_dir, phase, table, setup, checkpointer, batches,
                       guard.NonFiniteGuard(guard_config, table.codes))
  finally:
    checkpointer.close()


def _check_same_phase(run_dir: str, step: int,
                      phase: phases.PhaseConfig) -> None:
  """Raises ConfigError if `run_dir` contains another phase's checkpoints."""
  saved = checkpoints.read_progress(run_dir, step).phase
  if saved and saved != phase.name:
    raise ConfigError(
        f"run directory {run_dir!r} contains checkpoints of phase {saved!r}, "
        f"not {phase.name!r}; give each phase its own --run_dir")


def prepare_run_dir(run_dir: str) -> None:
  """Creates `run_dir` and checks that it is writable.

  Raises:
    ConfigError: the folder cannot be created or written.
  """
  if not run_dir:
    raise ConfigError("the run directory is empty; pass --run_dir=DIR")
  try:
    os.makedirs(run_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=run_dir):
      pass
  except OSError as e:
    raise ConfigError(f"run directory {run_dir!r} is not writable "
                      f"({e.strerror or e}); choose another --run_dir or fix "
                      "its permissions") from None


def write_operative_config(run_dir: str) -> None:
  """Writes the gin config used so far to `run_dir/config.gin`, atomically."""
  if jax.process_index() != 0:
    return
  path = os.path.join(run_dir, CONFIG_FILE)
  with tempfile.NamedTemporaryFile("w", dir=run_dir, delete=False,
                                   suffix=".tmp", encoding="utf-8") as f:
    f.write(gin_utils.operative_config())
  os.replace(f.name, path)
  logging.info("Wrote the operative gin config to %s", path)


@dataclasses.dataclass(frozen=True)
class _Setup:
  """Model, optimizer and shardings of a phase, built without any arrays."""

  phase: phases.PhaseConfig
  model_config: ModelConfig
  mesh: jax.sharding.Mesh
  rules: Any
  graphdef: nnx.GraphDef
  optimizer: optimizers.Optimizer
  shardings: TrainState
  abstract_state: TrainState
  batch_sharding: jax.sharding.NamedSharding

  @classmethod
  def build(cls, phase: phases.PhaseConfig, model_config: ModelConfig,
            mesh: jax.sharding.Mesh, rules) -> "_Setup":
    abstract_model = nnx.eval_shape(
        lambda: SutraModel(model_config, rngs=nnx.Rngs(phase.seed)))
    graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param,
                                                ...)
    if jax.tree.leaves(rest):
      # NOTE: the train state carries parameters only. A model with other
      # variables (batch statistics, stored RNG streams) needs them added.
      raise NotImplementedError(
          "the model has non-parameter variables, which the trainer does not "
          f"carry: {rest}")
    param_shardings = nnx.to_pure_dict(
        partitioning.state_shardings(mesh, abstract_params, rules))
    params = nnx.to_pure_dict(abstract_params)
    optimizer = optimizers.make_optimizer(
        phase.optimizer, params, trainable=phase.trainable,
        num_steps=phase.num_steps)
    abstract_opt_state = jax.eval_shape(optimizer.tx.init, params)
    shardings = train_step_lib.train_state_shardings(mesh, param_shardings,
                                                     abstract_opt_state)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                   opt_state=abstract_opt_state,
                   rng=jax.ShapeDtypeStruct((2,), np.uint32)),
        shardings)
    return cls(phase=phase, model_config=model_config, mesh=mesh,
               rules=rules, graphdef=graphdef, optimizer=optimizer,
               shardings=shardings, abstract_state=abstract_state,
               batch_sharding=partitioning.batch_sharding(
                   mesh, rules, batch_size=phase.batch_size))

  def initial_state(self) -> TrainState:
    """Initialises the state of step 0, from `init_from` if it is set."""
    phase = self.phase
    model = partitioning.create_sharded_model(self.model_config, self.mesh,
                                              phase.seed, self.rules)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if phase.init_from:
      params = phases.restore_previous_phase(
          params, phase.init_from, phase.new_parameters, self.mesh,
          phases.growth_of(phase, languages.language_table().group_names))
    elif phase.new_parameters:
      logging.warning("PhaseConfig.new_parameters is ignored because "
                      "init_from is not set: every parameter starts fresh")
    opt_state = jax.jit(self.optimizer.tx.init,
                        out_shardings=self.shardings.opt_state)(params)
    rng = jax.random.key_data(jax.random.key(phase.seed))
    return TrainState(
        step=jax.device_put(np.int32(0), self.shardings.step),
        params=params, opt_state=opt_state,
        rng=jax.device_put(rng, self.shardings.rng))

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (self.phase.batch_size, self.phase.sequence_length)
    return {
        name: jax.ShapeDtypeStruct(
            shape, np.float32 if name == "decoder_loss_weights" else np.int32,
            sharding=self.batch_sharding)
        for name in train_step_lib.BATCH_FEATURES
    }


def compile_train_step(phase: phases.PhaseConfig, model_config: ModelConfig,
                       mesh: jax.sharding.Mesh,
                       table: languages.LanguageTable):
  """Compiles the phase's train step on `mesh` from shapes alone.

  Nothing is allocated, so `mesh` may consist of abstract devices, as for
  ahead-of-time compilation for a TPU topology (`sutra_jax.tools.aot`).

  Returns:
    (the setup, whose `abstract_state` and `abstract_batch()` are the
    step's inputs; the compiled step).
  """
  setup = _Setup.build(phase, model_config, mesh, partitioning.axis_rules())
  return setup, _compile(setup, setup.abstract_state, table)


def _open_dataset(phase: phases.PhaseConfig, table: languages.LanguageTable,
                  dataset_fn: DatasetFn | None,
                  skip_batches: int) -> Iterator[Batch]:
  """Opens this process's share of the phase's batches after `skip_batches`."""
  num_processes = jax.process_count()
  if phase.batch_size % num_processes:
    raise ConfigError(
        f"PhaseConfig.batch_size = {phase.batch_size} does not divide among "
        f"{num_processes} processes; use a multiple of {num_processes}")
  if skip_batches:
    logging.info("Skipping the %d batches consumed before the checkpoint",
                 skip_batches)
  if dataset_fn is None:
    if phase.mixture is None:
      raise ConfigError("PhaseConfig.mixture is not set; bind the seqio "
                        "mixture or task to train on")
    dataset_fn = _seqio_dataset
  return data_shards.open_local_batches(dataset_fn, phase, table,
                                        skip_batches)


def _seqio_dataset(phase: phases.PhaseConfig,
                   table: languages.LanguageTable, shard_index: int,
                   num_shards: int, skip_batches: int):
  """Reads `phase.mixture` through `sutra_jax.data.pipeline.get_dataset`."""
  # Imported here because the data pipeline imports TensorFlow, which runs
  # with synthetic batches do not need.
  import seqio  # pylint: disable=g-import-not-at-top
  from sutra_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  shard_info = (seqio.ShardInfo(index=shard_index, num_shards=num_shards)
                if num_shards > 1 else None)
  # NOTE: tf.data reads and packs the skipped examples again, so resuming
  # late in a long phase takes time proportional to the step.
  return pipeline.get_dataset(
      phase.mixture, split="train", sequence_length=phase.sequence_length,
      batch_size=phase.batch_size // num_shards, language_table=table,
      shuffle=True, seed=phase.seed, repeat=True, shard_info=shard_info,
      pack=True, skip_batches=skip_batches)


def model_config_for_phase(table: languages.LanguageTable,
                           phase: phases.PhaseConfig, *,
                           vocab_from_mixture: bool = True) -> ModelConfig:
  """Builds the model config of a phase.

  The embedding needs one row per piece of the vocabulary that the data is
  tokenized with, so with `vocab_from_mixture` `ModelConfig.vocab_size` is
  taken from the vocabulary of `phase.mixture`, overriding any gin binding.

  Args:
    table: the language table, which sets the language groups.
    phase: the phase, whose mixture gives the vocabulary.
    vocab_from_mixture: False keeps the gin-bound vocab_size, for data that
      does not come from a seqio mixture.

  Raises:
    ConfigError: an invalid or incomplete ModelConfig, or an unknown mixture.
  """
  if not vocab_from_mixture:
    return make_model_config(table)
  if phase.mixture is None:
    raise ConfigError("PhaseConfig.mixture is not set; bind the seqio "
                      "mixture or task to train on")
  import seqio  # pylint: disable=g-import-not-at-top

  try:
    provider = seqio.get_mixture_or_task(phase.mixture)
  except ValueError:
    raise ConfigError(f"unknown seqio task or mixture {phase.mixture!r} in "
                      "PhaseConfig.mixture; register it first, for example "
                      "with @phase_mixture()") from None
  vocab_size = provider.output_features["targets"].vocabulary.vocab_size
  logging.info("ModelConfig.vocab_size = %d, the size of the vocabulary of "
               "%s", vocab_size, phase.mixture)
  return make_model_config(table, vocab_size=vocab_size)


def _train_loop(run_dir: str, phase: phases.PhaseConfig,
                table: languages.LanguageTable, setup: _Setup,
                checkpointer: checkpoints.Checkpointer,
                batches: Iterator[Batch],
                nan_guard: guard.NonFiniteGuard) -> TrainResult:
  latest = checkpointer.latest_step()
  if latest is None:
    state = setup.initial_state()
    progress = checkpoints.Progress(step=0, batches_consumed=0,
                                    phase=phase.name,
                                    num_steps=phase.num_steps)
  else:
    state, progress = checkpointer.restore(latest, setup.abstract_state)
    logging.info("Resuming phase %s at step %d", phase.name, progress.step)
  start_step = progress.step
  # Written only once the state is restored or handed off, so a run that
  # fails to resume keeps the config.gin that matches its checkpoints.
  write_operative_config(run_dir)

  run_summary.log_start_summary(
      setup.model_config, setup.abstract_state.params,
      setup.shardings.params, setup.mesh, phase.sequence_length)
  step_fn = _compile(setup, state, table)
  writer = metrics_lib.MetricsWriter(run_dir, phase.num_steps,
                                     resume_step=start_step)
  interval = metrics_lib.MetricsAccumulator(
      table.codes, phase.batch_size * phase.sequence_length,
      num_devices=setup.mesh.size,
      flops_per_token=flops.flops_per_token(setup.model_config,
                                            phase.sequence_length),
      peak_flops_per_device=flops.peak_flops_per_device())
  consumed = progress.batches_consumed
  step = start_step
  bar = _progress_bar(phase, start_step)
  try:
    with preemption.PreemptionWatcher() as watcher:
      for step in range(start_step + 1, phase.num_steps + 1):
        batch = _next_batch(batches, phase, consumed)
        consumed += 1
        state, step_metrics = step_fn(
            state, train_step_lib.device_batch(batch, setup.batch_sharding))
        interval.add(step_metrics)
        nan_guard.add(step, step_metrics)
        stop = watcher.should_stop(step)
        log_due = (step % phase.log_every == 0 or step == phase.num_steps or
                   (stop and len(interval)))
        if log_due:
          summary = interval.summarize(step)
          writer.write(summary)
          bar.set_postfix(loss=f"{summary.loss:.4f}")
        bar.update()
        if (log_due or nan_guard.due() or
            step % phase.checkpoint_every == 0):
          if nan_guard.check() == guard.RESTORE:
            state = guard.roll_back(checkpointer, setup.abstract_state, step,
                                    nan_guard)
        progress = checkpoints.Progress(step=step, batches_consumed=consumed,
                                        phase=phase.name,
                                        num_steps=phase.num_steps)
        final = stop or step == phase.num_steps
        if not nan_guard.last_step_skipped or final:
          # A skipped step's state equals the last good one, but a run of
          # skips can mean broken weights, which must not replace the
          # checkpoint a rollback would restore.
          checkpointer.save(state, progress, force=final)
        if stop:
          logging.warning("Preempted: saved step %d of %d; run the same "
                          "command again to resume", step, phase.num_steps)
          break
    checkpointer.wait()
  finally:
    bar.close()
    writer.close()
  distributed.barrier("metrics_written")
  return _result(run_dir, step, steps_run=step - start_step)


def _progress_bar(phase: phases.PhaseConfig,
                  start_step: int) -> progress_lib.ProgressBar:
  """Opens the step bar, drawn on a terminal for CPU runs on process 0.

  A CPU step takes long enough for a bar to help between log lines. On
  accelerators the log lines come often, and pod workers write to files.
  """
  return progress_lib.ProgressBar(
      phase.num_steps, initial=start_step, desc=f"phase {phase.name}",
      unit="step",
      enabled=jax.process_index() == 0 and jax.default_backend() == "cpu")


def _compile(setup: _Setup, state: TrainState,
             table: languages.LanguageTable) -> Callable:
  """Compiles the train step ahead of time, so step timings exclude it."""
  step_fn = train_step_lib.make_train_step(
      setup.graphdef, setup.optimizer, mesh=setup.mesh,
      state_shardings=setup.shardings, batch_sharding=setup.batch_sharding,
      loss_weights=train_step_lib.LossWeights(
          load_balancing=setup.phase.load_balancing_loss_weight,
          router_z=setup.phase.router_z_loss_weight,
          terms=setup.phase.losses),
      num_languages=len(table))
  start = time.perf_counter()
  with jax.set_mesh(setup.mesh):
    compiled = step_fn.lower(state, setup.abstract_batch()).compile()
  logging.info("Compiled the train step in %.1f s", time.perf_counter() -
               start)
  return compiled


def _next_batch(iterator: Iterator[Batch], phase: phases.PhaseConfig,
                consumed: int) -> Batch:
  try:
    return next(iterator)
  except StopIteration:
    raise DataError(
        f"the data of phase {phase.name} ran out after {consumed} batches; "
        "use a repeating mixture or lower PhaseConfig.num_steps") from None


def _result(run_dir: str, steps: int, steps_run: int) -> TrainResult:
  records = metrics_lib.read_metrics(run_dir)
  return TrainResult(
      run_dir=run_dir,
      steps=steps,
      steps_run=steps_run,
      first_loss=records[0]["loss"] if records else None,
      final_loss=records[-1]["loss"] if records else None,
      per_language_loss=records[-1]["per_language_loss"] if records else {})
