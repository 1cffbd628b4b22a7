"""Orbax checkpoints of the train state, with resume and params-only restore.

A run directory keeps its checkpoints in `RUN_DIR/checkpoints/STEP/`, one
folder per saved step, each with four items:

  params     the model parameters (PyTree handler, so that a later phase can
             restore a subset of them);
  opt_state  the optax state (standard handler);
  rng        {"key_data": the base PRNG key data, uint32[2]} (standard
             handler, which takes trees rather than single arrays);
  progress   JSON: step, batches consumed by the data iterator, phase name
             and the phase's num_steps.

Restores take abstract arrays (`jax.ShapeDtypeStruct` with a sharding) as
targets, so a checkpoint written on one mesh loads onto another.
"""

import dataclasses
import os
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from sutra_jax.errors import CheckpointError
from sutra_jax.training import optimizers
from sutra_jax.training.train_step import TrainState

PyTree = Any

CHECKPOINT_SUBDIR = "checkpoints"
_ITEMS = ("params", "opt_state", "rng", "progress")


@dataclasses.dataclass(frozen=True)
class Progress:
  """Position of a run, stored as JSON next to the arrays.

  Attributes:
    step: optimizer steps taken in the phase.
    batches_consumed: batches drawn from the data iterator. One per step
      today, stored separately so that gradient accumulation can change it.
    phase: the phase name, for humans reading the checkpoint.
    num_steps: the phase's target step count when the checkpoint was saved.
  """

  step: int
  batches_consumed: int
  phase: str = ""
  num_steps: int = 0


# Exceptions that orbax and tensorstore raise for a damaged or mismatched
# checkpoint:
# ValueError for shape and read errors (tensorstore's OUT_OF_RANGE included,
# and JSONDecodeError), KeyError and TypeError for a missing or different
# tree, OSError for missing files, RuntimeError from the async reader.
_READ_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)
# Exceptions of a failed write, such as ENOSPC (disk full) or EFBIG: OSError
# from Python file writes, ValueError and RuntimeError from tensorstore and
# the background thread of an asynchronous save.
_WRITE_ERRORS = (OSError, ValueError, RuntimeError)


def checkpoint_dir(run_dir: str | os.PathLike) -> epath.Path:
  """Returns the folder that contains the step folders of `run_dir`.

  The path is absolute because orbax rejects relative checkpoint paths.
  Cloud paths such as `gs://bucket/run` are kept as they are.
  """
  run_dir = os.fspath(run_dir)
  if "://" not in run_dir:
    run_dir = os.path.abspath(run_dir)
  return epath.Path(run_dir) / CHECKPOINT_SUBDIR


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  return {
      "params": ocp.PyTreeCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "rng": ocp.StandardCheckpointHandler(),
      "progress": ocp.JsonCheckpointHandler(),
  }


def _read_only_manager(run_dir: str | os.PathLike) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(run_dir),
      # Orbax warns about every option that read_only overrides, so these
      # are set to the values it would force.
      options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0),
      item_handlers=_item_handlers())


class Checkpointer:
  """Saves and restores the train state of one run directory.

  Saves are asynchronous: `save` returns after the arrays are copied off the
  devices and writes them in a background thread. Call `wait` before reading
  the files and `close` at the end of the run.
  """

  def __init__(self, run_dir: str | os.PathLike, *, save_every: int,
               keep: int | None):
    """Opens (and creates) `run_dir/checkpoints`.

    Args:
      run_dir: the run directory.
      save_every: `save` writes only at multiples of this step count, unless
        forced.
      keep: checkpoints to keep, newest first; None keeps all.
    """
    self.directory = checkpoint_dir(run_dir)
    self.save_every = save_every
    # The step of the latest asynchronous save, for errors found later.
    self._pending_step: int | None = None
    # `save` decides itself which steps are due, because orbax's default
    # policy also saves the first step passed to it.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers=_item_handlers())

  def latest_step(self) -> int | None:
    """Returns the newest saved step, or None for an empty run."""
    return self._manager.latest_step()

  def save(self, state: TrainState, progress: Progress, *,
           force: bool = False) -> bool:
    """Saves `state` at `progress.step` if that step is due (or `force`).

    Returns:
      Whether a save started. A step that is already saved is not saved again.
    """
    due = force or progress.step % self.save_every == 0
    if not due or self.latest_step() == progress.step:
      return False
    args = ocp.args.Composite(
        params=ocp.args.PyTreeSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        rng=ocp.args.StandardSave({"key_data": state.rng}),
        progress=ocp.args.JsonSave(dataclasses.asdict(progress)))
    try:
      started = self._manager.save(progress.step, args=args, force=True)
    except _WRITE_ERRORS as e:
      raise self._save_error(progress.step, e) from None
    if started:
      self._pending_step = progress.step
      logging.info("Saving checkpoint of step %d to %s", progress.step,
                   self.directory)
    return started

  def restore(self, step: int,
              target: TrainState) -> tuple[TrainState, Progress]:
    """Restores the train state of `step` onto the shardings of `target`.

    Args:
      step: a saved step.
      target: a `TrainState` of `jax.ShapeDtypeStruct`s with shardings.

    Returns:
      The restored state and its progress record.

    Raises:
      CheckpointError: the checkpoint does not match `target`, for example
        because the model or the trainable patterns changed.
    """
    args = ocp.args.Composite(
        params=ocp.args.PyTreeRestore(
            item=target.params,
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                target.params)),
        opt_state=ocp.args.StandardRestore(target.opt_state),
        rng=ocp.args.StandardRestore({"key_data": target.rng}),
        progress=ocp.args.JsonRestore())
    try:
      restored = self._manager.restore(step, args=args)
    except _READ_ERRORS as e:
      raise CheckpointError(
          f"cannot resume from {self.directory / str(step)}: {_first_line(e)};"
          " if the model, the trainable patterns or the optimizer differ from "
          "the run that wrote it, use a new run_dir; if its files are "
          "damaged, delete that step folder to resume from an earlier "
          "step") from None
    for name in ("params", "opt_state"):
      _check_complete(restored[name], getattr(target, name),
                      self.directory / str(step), name)
    progress = Progress(**restored["progress"])
    state = TrainState(
        step=jax.device_put(progress.step, target.step.sharding),
        params=restored["params"],
        opt_state=restored["opt_state"],
        rng=restored["rng"]["key_data"])
    logging.info("Restored checkpoint of step %d from %s", step,
                 self.directory)
    return state, progress

  def wait(self) -> None:
    """Blocks until the pending asynchronous save is on disk.

    Raises:
      CheckpointError: the save failed, for example on a full disk.
    """
    try:
      self._manager.wait_until_finished()
    except _WRITE_ERRORS as e:
      self._drain()
      raise self._save_error(self._pending_step, e) from None

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    try:
      self._manager.close()
    except _WRITE_ERRORS as e:
      raise self._save_error(self._pending_step, e) from None

  def _drain(self) -> None:
    """Lets the other writer threads of a failed save end before exit."""
    try:
      self._manager.close()
    except _WRITE_ERRORS:
      # Further errors of the same failed save; the first one is reported.
      pass

  def _save_error(self, step: int | None, error: Exception) -> CheckpointError:
    # Orbax writes into a temporary folder and renames it when complete, so
    # a failed save leaves no step folder and older steps stay intact.
    return CheckpointError(
        f"cannot save the checkpoint of step {step} to {self.directory}: "
        f"{_first_line(error)}; free disk space or choose another --run_dir,"
        " then re-run the command to resume from the newest saved step")

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _check_complete(restored: PyTree, target: PyTree, path: epath.Path,
                    item: str) -> None:
  """Raises CheckpointError unless `restored` has every leaf of `target`.

  Orbax 0.12.8 returns None, without an error, for a target leaf that the
  checkpoint lacks, for example an AdamW moment of a parameter that was
  frozen when the checkpoint was written.
  """
  restored_paths = {optimizers.path_name(p) for p, _ in
                    jax.tree_util.tree_flatten_with_path(restored)[0]}
  missing = [optimizers.path_name(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(target)[0]
             if optimizers.path_name(p) not in restored_paths]
  if missing:
    raise CheckpointError(
        f"cannot resume from {path}: its {item} lacks {len(missing)} entries "
        f"of the current run, such as {missing[0]}; the model or the "
        "trainable patterns changed since it was written. Use a new run_dir,"
        " or restore the gin config of that run from its config.gin")


def _first_line(error: Exception, limit: int = 300) -> str:
  """Returns the first line of `error`, cut to `limit` characters.

  Tensorstore appends its whole JSON spec to the line, which is dropped.
  """
  text = str(error).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  line = line.split(" [tensorstore_spec=", 1)[0]
  return line if len(line) <= limit else line[:limit - 3] + "..."


def latest_step(run_dir: str | os.PathLike) -> int | None:
  """Returns the newest saved step of `run_dir`, or None if it has none."""
  if not checkpoint_dir(run_dir).is_dir():
    return None
  manager = _read_only_manager(run_dir)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _unreadable(run_dir, step, error: Exception) -> CheckpointError:
  path = checkpoint_dir(run_dir) / str(step)
  return CheckpointError(
      f"checkpoint {path} is unreadable ({_first_line(error)}); delete that "
      "step folder to use an earlier step, or pass another run directory")


def read_progress(run_dir: str | os.PathLike, step: int) -> Progress:
  """Returns the progress record saved with `step` in `run_dir`.

  Raises:
    CheckpointError: the record is missing or damaged.
  """
  manager = _read_only_manager(run_dir)
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return Progress(**restored["progress"])
  except _READ_ERRORS as e:
    raise _unreadable(run_dir, step, e) from None
  finally:
    manager.close()


def param_metadata(run_dir: str | os.PathLike,
                   step: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Returns `{path: shape and dtype}` of the parameters saved at `step`."""
  manager = _read_only_manager(run_dir)
  try:
    metadata = manager.item_metadata(step)["params"]
  except _READ_ERRORS as e:
    raise _unreadable(run_dir, step, e) from None
  finally:
    manager.close()
  if metadata is None:
    raise _unreadable(run_dir, step, ValueError("no parameter metadata"))
  tree = getattr(metadata, "tree", metadata)
  leaves, _ = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
  return {
      "/".join(str(k.key) for k in path): jax.ShapeDtypeStruct(
          tuple(leaf.shape), leaf.dtype)
      for path, leaf in leaves
  }


def restore_params(run_dir: str | os.PathLike, step: int,
                   targets: Mapping[str, jax.ShapeDtypeStruct]
                   ) -> dict[str, jax.Array]:
  """Restores the listed parameters of `step`, and nothing else.

  Args:
    run_dir: the run directory that saved the checkpoint.
    step: a saved step.
    targets: `{path: jax.ShapeDtypeStruct with a sharding}` for each
      parameter to read. Saved parameters that are not listed stay on disk.

  Returns:
    `{path: array}` on the shardings of `targets`.
  """
  nested = _nest(targets)
  manager = _read_only_manager(run_dir)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeRestore(
            item=nested,
            restore_args=ocp.checkpoint_utils.construct_restore_args(nested),
            partial_restore=True)))
  except _READ_ERRORS as e:
    raise _unreadable(run_dir, step, e) from None
  finally:
    manager.close()
  leaves, _ = jax.tree_util.tree_flatten_with_path(restored["params"])
  return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Turns `{'a/b': x}` into `{'a': {'b': x}}`."""
  nested: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, name = path.split("/")
    node = nested
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = value
  return nested
