"""Loading a trained model from a run directory for evaluation and decoding.

A run directory is what `sutra-train` writes: `config.gin` (the operative gin
config) and `checkpoints/<step>/`. The model, language table and vocabulary
are rebuilt from the gin config, and the parameters of one step are restored
onto the shardings of the current mesh.
"""

import dataclasses
import os

from absl import logging
from flax import nnx
import gin
import jax
import seqio

from sutra_jax import gin_utils
from sutra_jax import languages
from sutra_jax import partitioning
from sutra_jax.errors import CheckpointError
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel
from sutra_jax.training import checkpoints
from sutra_jax.training import optimizers
from sutra_jax.training import phases
from sutra_jax.training import trainer


@dataclasses.dataclass
class LoadedRun:
  """A restored model with what is needed to feed it.

  Attributes:
    run_dir: the run directory.
    step: the restored checkpoint step.
    model: the model with restored parameters, sharded on `mesh`.
    model_config: its config.
    language_table: the run's languages.
    vocabulary: the run's SentencePiece vocabulary.
    phase: the run's phase config.
    mesh: the device mesh the parameters live on.
  """

  run_dir: str
  step: int
  model: SutraModel
  model_config: ModelConfig
  language_table: languages.LanguageTable
  vocabulary: seqio.Vocabulary
  phase: phases.PhaseConfig
  mesh: jax.sharding.Mesh


def check_run_dir(run_dir: str) -> str:
  """Returns the path of the run's config.gin after checking the directory.

  Raises:
    CheckpointError: the directory or its config.gin is missing.
  """
  if not os.path.isdir(run_dir):
    raise CheckpointError(
        f"checkpoint directory not found: {run_dir!r}; pass the --run_dir "
        "of a sutra-train run")
  config_path = os.path.join(run_dir, "config.gin")
  if not os.path.isfile(config_path):
    raise CheckpointError(
        f"{run_dir!r} has no config.gin, so it is not a sutra-train run "
        "directory; pass the --run_dir of a sutra-train run")
  return config_path


def _choose_step(run_dir: str, step: int | None) -> int:
  latest = checkpoints.latest_step(run_dir)
  if latest is None:
    raise CheckpointError(
        f"no valid checkpoint step in {checkpoints.checkpoint_dir(run_dir)};"
        " train the run first or pass another --checkpoint_dir")
  if step is None:
    return latest
  if not checkpoints.checkpoint_dir(run_dir).joinpath(str(step)).is_dir():
    raise CheckpointError(
        f"step {step} is not saved in {checkpoints.checkpoint_dir(run_dir)};"
        f" the newest step is {latest}")
  return step


def load_run(run_dir: str, step: int | None = None) -> LoadedRun:
  """Restores the model of `run_dir` at `step` (default: the newest step).

  This clears and re-parses the global gin config from the run's
  config.gin, so call it before binding anything else.

  Raises:
    CheckpointError: a missing directory, config or step, or parameters that
      do not match the configured model.
  """
  config_path = check_run_dir(run_dir)
  step = _choose_step(run_dir, step)
  gin.clear_config()
  gin_utils.parse_config([config_path], [], finalize=False)
  table = languages.language_table()
  phase = phases.phase_from_gin()
  model_config = trainer.model_config_for_phase(table, phase)

  mesh = partitioning.make_mesh()
  rules = partitioning.axis_rules()
  model = partitioning.create_sharded_model(model_config, mesh, phase.seed,
                                            rules)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = optimizers.flatten_params(params)
  saved = checkpoints.param_metadata(run_dir, step)
  mismatched = [p for p, x in flat.items()
                if p not in saved or tuple(saved[p].shape) != x.shape]
  if mismatched:
    raise CheckpointError(
        f"checkpoint {run_dir} step {step} does not match the model of its "
        f"config.gin (first mismatched parameter: {mismatched[0]}); the "
        "checkpoint or config.gin was changed after training")
  targets = {p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
             for p, x in flat.items()}
  restored = checkpoints.restore_params(run_dir, step, targets)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, optimizers.unflatten_like(params, restored))
  nnx.update(model, state)
  logging.info("Restored %s at step %d", run_dir, step)

  vocabulary = seqio.get_mixture_or_task(phase.mixture).output_features[
      "targets"].vocabulary
  return LoadedRun(run_dir=run_dir, step=step, model=model,
                   model_config=model_config, language_table=table,
                   vocabulary=vocabulary, phase=phase, mesh=mesh)
