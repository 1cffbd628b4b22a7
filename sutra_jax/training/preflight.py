"""Checks of a training run that must fail before anything compiles.

Each check raises a `UserError` subclass whose message names the bad value
and the fix, so a mistake costs seconds rather than a pod allocation.
"""

import math

from jax.sharding import Mesh

from sutra_jax.errors import CheckpointError, ConfigError
from sutra_jax.training import checkpoints

# Path of the token embedding, [V, D], in the parameter tree.
EMBEDDING_PATH = "embed/embedding"


def data_parallel_axes(mesh: Mesh, rules) -> tuple[str, ...]:
  """Returns the mesh axes that the 'batch' rule splits the batch over."""
  for name, axes in rules:
    if name == "batch":
      if axes is None:
        return ()
      return (axes,) if isinstance(axes, str) else tuple(axes)
  return ()


def check_batch_divides(batch_size: int, mesh: Mesh, rules) -> None:
  """Raises ConfigError unless the data-parallel devices split the batch.

  `partitioning.batch_sharding` leaves out mesh axes that do not divide the
  batch, which would silently replicate the work on those axes.
  """
  axes = [a for a in data_parallel_axes(mesh, rules) if mesh.shape[a] > 1]
  size = math.prod(mesh.shape[a] for a in axes)
  if batch_size % size:
    shape = " x ".join(f"{a} {mesh.shape[a]}" for a in axes)
    raise ConfigError(
        f"PhaseConfig.batch_size = {batch_size} does not divide among the "
        f"{size} data-parallel devices of the mesh ({shape}); use a "
        f"multiple of {size}, or change the make_mesh sizes")


def check_vocab_matches(run_dir: str, step: int, vocab_size: int,
                        source: str) -> None:
  """Raises CheckpointError if the checkpoint's embedding has other rows.

  Args:
    run_dir: the run directory being resumed.
    step: the checkpoint step.
    vocab_size: the vocabulary size of the current configuration.
    source: where `vocab_size` comes from, for the message.
  """
  saved = checkpoints.param_metadata(run_dir, step).get(EMBEDDING_PATH)
  if saved is None or saved.shape[0] == vocab_size:
    return
  raise CheckpointError(
      f"the vocabulary of {source} has {vocab_size} pieces but the "
      f"checkpoint {checkpoints.checkpoint_dir(run_dir) / str(step)} has "
      f"{saved.shape[0]} embedding rows; use the tokenizer that run was "
      "trained with (see its config.gin), or a new --run_dir")


def check_experts_divide(model_config, mesh: Mesh) -> None:
  """Raises ConfigError unless the `expert` axis splits the experts evenly.

  The expert-parallel dispatch gives each device of the `expert` axis
  num_experts / size experts, so the size must divide num_experts.
  """
  size = mesh.shape.get("expert", 1)
  if model_config.moe_dispatch != "expert_parallel" or size == 1:
    return
  if model_config.num_experts % size:
    raise ConfigError(
        f"ModelConfig.num_experts = {model_config.num_experts} cannot be "
        f"split over the {size} devices of the 'expert' mesh axis; choose "
        "make_mesh.expert among the divisors of num_experts")
