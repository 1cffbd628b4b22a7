"""Training phases and the strict hand-off of weights between them.

A phase (concept learning, language learning, language alignment) is one
`PhaseConfig`, bound in a gin file under gin_configs/phases/. A phase that
continues an earlier one sets `init_from` to that phase's run directory.
Its parameters are then restored from the earlier phase's final checkpoint,
and every parameter of the new model must be either restored or declared in
`new_parameters` together with how it is initialised. Anything else raises
`CheckpointError`, so a renamed or forgotten parameter never starts from
random values unnoticed.
"""

import dataclasses
import re
from typing import Any, Mapping, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sutra_jax.errors import CheckpointError, ConfigError
from sutra_jax.training import checkpoints
from sutra_jax.training import optimizers

PyTree = Any

# Initialisation methods of a newly declared parameter.
#   fresh:  the model's initialiser, as in a fresh run with the phase's seed.
#   zeros:  all zeros, for example for a new gate that must start closed.
#   extend: the checkpoint's tensor fills the leading rows of axis 0 and the
#           remaining rows keep the model's initialiser. This grows the
#           vocabulary ([V, D] embeddings) or adds language groups ([G, ...]
#           language-block weights) while keeping the trained rows.
# NOTE: `extend` grows axis 0 only, so it cannot grow `lm_head/kernel` [D, V].
# TODO: initialise a new language group from a named relative group, and new
# vocabulary rows from the mean embedding of their pieces under the old
# tokenizer.
INIT_METHODS = ("fresh", "zeros", "extend")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PhaseConfig:
  """One training phase.

  Attributes:
    name: the phase name, used in logs and checkpoints.
    mixture: the seqio mixture or task to train on.
    num_steps: optimizer steps of the phase.
    batch_size: global batch size, in packed sequences.
    sequence_length: tokens per packed sequence.
    optimizer: AdamW and learning-rate schedule settings; bind its fields
      as `OptimizerConfig.<field>`.
    trainable: regular expressions over parameter paths (`re.search`) of
      the parameters that train; the rest are frozen. ('.*',) trains all.
    init_from: run directory of the previous phase, whose final checkpoint
      provides the starting parameters; None starts from random values.
    new_parameters: `{pattern: how}` for parameters this phase adds on top
      of `init_from`; `how` is one of `INIT_METHODS`. Gin may bind a dict or
      a list of (pattern, how) pairs.
    load_balancing_loss_weight: weight of the core's load-balancing loss.
      0.01 is the Switch Transformer value.
    router_z_loss_weight: weight of the core's router z-loss. 0.001 is the
      ST-MoE value.
    checkpoint_every: steps between checkpoints; the last step is always
      saved.
    keep_checkpoints: checkpoints kept, newest first; None keeps all.
    log_every: steps per logging interval.
    seed: seed of the parameter initialisers and of data shuffling.
  """

  name: str = "phase"
  mixture: str | None = None
  num_steps: int = 1000
  batch_size: int = 8
  sequence_length: int = 512
  optimizer: optimizers.OptimizerConfig = dataclasses.field(
      default_factory=optimizers.OptimizerConfig)
  trainable: tuple[str, ...] = optimizers.TRAIN_EVERYTHING
  init_from: str | None = None
  new_parameters: tuple[tuple[str, str], ...] = ()
  load_balancing_loss_weight: float = 0.01
  router_z_loss_weight: float = 0.001
  checkpoint_every: int = 1000
  keep_checkpoints: int | None = 3
  log_every: int = 50
  seed: int = 0

  def __post_init__(self):
    # Gin passes lists and dicts, so convert them to keep the config hashable.
    object.__setattr__(self, "trainable", _as_patterns(self.trainable))
    object.__setattr__(self, "new_parameters",
                       _as_pairs(self.new_parameters))
    _validate_phase(self)


def _as_patterns(value) -> tuple[str, ...]:
  if isinstance(value, str):
    raise ConfigError(f"invalid PhaseConfig.trainable = {value!r}: expected "
                      f"a tuple of regular expressions, such as ({value!r},)")
  return tuple(value)


def _as_pairs(value) -> tuple[tuple[str, str], ...]:
  items = value.items() if isinstance(value, Mapping) else value
  pairs = []
  for item in items:
    if isinstance(item, str) or len(item) != 2:
      raise ConfigError(
          f"invalid entry {item!r} in PhaseConfig.new_parameters: expected "
          "{pattern: how} or a list of (pattern, how) pairs")
    pairs.append((item[0], item[1]))
  return tuple(pairs)


def _validate_phase(phase: PhaseConfig) -> None:
  """Raises ConfigError naming the first invalid field and its fix."""
  for name in ("num_steps", "batch_size", "sequence_length",
               "checkpoint_every", "log_every"):
    value = getattr(phase, name)
    if not _is_int(value) or value <= 0:
      raise ConfigError(f"invalid PhaseConfig.{name} = {value!r}: expected a "
                        "positive integer")
  if phase.keep_checkpoints is not None and (
      not _is_int(phase.keep_checkpoints) or phase.keep_checkpoints <= 0):
    raise ConfigError(
        f"invalid PhaseConfig.keep_checkpoints = {phase.keep_checkpoints!r}:"
        " expected a positive integer, or None to keep every checkpoint")
  for name in ("load_balancing_loss_weight", "router_z_loss_weight"):
    value = getattr(phase, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (
        value < 0):
      raise ConfigError(f"invalid PhaseConfig.{name} = {value!r}: expected a "
                        "number >= 0")
  if not _is_int(phase.seed):
    raise ConfigError(f"invalid PhaseConfig.seed = {phase.seed!r}: expected "
                      "an integer")
  if not isinstance(phase.name, str) or not phase.name:
    raise ConfigError(f"invalid PhaseConfig.name = {phase.name!r}: expected "
                      "a non-empty string")
  if phase.mixture is not None and (not isinstance(phase.mixture, str) or
                                    not phase.mixture):
    raise ConfigError(f"invalid PhaseConfig.mixture = {phase.mixture!r}: "
                      "expected the name of a seqio mixture or task")
  if phase.init_from is not None and not isinstance(phase.init_from, str):
    raise ConfigError(f"invalid PhaseConfig.init_from = {phase.init_from!r}:"
                      " expected the run directory of the previous phase")
  for pattern, how in phase.new_parameters:
    _compile(pattern, "PhaseConfig.new_parameters")
    if how not in INIT_METHODS:
      raise ConfigError(
          f"invalid initialisation {how!r} for {pattern!r} in "
          f"PhaseConfig.new_parameters: use one of {', '.join(INIT_METHODS)}")
  for pattern in phase.trainable:
    _compile(pattern, "PhaseConfig.trainable")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _compile(pattern: str, where: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except (re.error, TypeError) as e:
    raise ConfigError(f"invalid regular expression {pattern!r} in {where}: "
                      f"{e}") from None


def phase_from_gin() -> PhaseConfig:
  """Builds the gin-bound `PhaseConfig`.

  Raises:
    ConfigError: a gin macro that the phase uses is not bound, or a field is
      invalid.
  """
  try:
    return PhaseConfig()
  except TypeError as e:
    macro = re.search(r"in scope '([^']+)'", str(e))
    if macro and "macro" in str(e):
      name = macro.group(1)
      raise ConfigError(
          f"gin macro {name} is not set; bind it, for example "
          f"--gin_bindings=\"{name} = '/path/to/previous/run'\"") from None
    raise ConfigError(f"invalid PhaseConfig: {str(e).splitlines()[0]}; fix "
                      "the gin bindings") from None


# ---------------------------------------------------------------------------
# Hand-off.


@dataclasses.dataclass(frozen=True)
class HandOffPlan:
  """The source of each parameter of the new model.

  Attributes:
    restored: paths read from the checkpoint as they are.
    initialised: `{path: how}` for declared new parameters.
    unused: checkpoint paths that the new model does not have.
  """

  restored: tuple[str, ...]
  initialised: dict[str, str]
  unused: tuple[str, ...]


def plan_hand_off(new_shapes: Mapping[str, tuple[int, ...]],
                  saved_shapes: Mapping[str, tuple[int, ...]],
                  new_parameters: Sequence[tuple[str, str]],
                  source: str) -> HandOffPlan:
  """Decides, strictly, which parameters are restored and which initialised.

  A parameter that matches a `new_parameters` pattern is initialised as
  declared, even when the checkpoint has it, and the first matching pattern
  wins. `extend` needs the parameter in the checkpoint with at most as many
  rows. Every other parameter must be in the checkpoint with the same shape.

  Args:
    new_shapes: `{path: shape}` of the new model.
    saved_shapes: `{path: shape}` of the checkpoint.
    new_parameters: (pattern, how) pairs of the phase.
    source: the checkpoint, for error messages.

  Raises:
    ConfigError: a `new_parameters` pattern matches no parameter.
    CheckpointError: parameters are missing from the checkpoint or have
      other shapes there, and no pattern declares them.
  """
  compiled = [(_compile(p, "PhaseConfig.new_parameters"), how)
              for p, how in new_parameters]
  for pattern, _ in compiled:
    if not any(pattern.search(path) for path in new_shapes):
      raise ConfigError(
          f"pattern {pattern.pattern!r} in PhaseConfig.new_parameters matches"
          " no parameter of the model; fix or remove it")
  restored, initialised, missing, mismatched = [], {}, [], []
  for path, shape in new_shapes.items():
    how = next((h for p, h in compiled if p.search(path)), None)
    saved = saved_shapes.get(path)
    if how == "extend":
      _check_extendable(path, shape, saved, source)
      initialised[path] = how
    elif how is not None:
      initialised[path] = how
    elif saved is None:
      missing.append(path)
    elif tuple(saved) != tuple(shape):
      mismatched.append(f"{path} (checkpoint {tuple(saved)}, model "
                        f"{tuple(shape)})")
    else:
      restored.append(path)
  if missing:
    raise CheckpointError(
        f"{len(missing)} parameters of the model are not in {source}: "
        f"{_first(missing)}. Declare them in PhaseConfig.new_parameters, for "
        f"example {{'{re.escape(missing[0])}': 'fresh'}}, or point "
        "PhaseConfig.init_from at the run that trained them")
  if mismatched:
    raise CheckpointError(
        f"{len(mismatched)} parameters have another shape in {source}: "
        f"{_first(mismatched)}. Use the model config of that run, or declare "
        "them in PhaseConfig.new_parameters with 'extend' (more rows) or "
        "'fresh'")
  unused = tuple(p for p in saved_shapes if p not in new_shapes)
  return HandOffPlan(restored=tuple(restored), initialised=initialised,
                     unused=unused)


def _check_extendable(path, shape, saved, source) -> None:
  if saved is None:
    raise CheckpointError(
        f"{path} is declared 'extend' in PhaseConfig.new_parameters but is "
        f"not in {source}; declare it 'fresh' instead")
  if (len(saved) != len(shape) or tuple(saved[1:]) != tuple(shape[1:]) or
      saved[0] > shape[0]):
    raise CheckpointError(
        f"{path} cannot be extended from shape {tuple(saved)} in {source} to "
        f"{tuple(shape)}: 'extend' only adds rows along the first axis; "
        "declare it 'fresh' instead")


def _first(items: Sequence[str], count: int = 5) -> str:
  shown = ", ".join(items[:count])
  return shown + (f" and {len(items) - count} more" if len(items) > count
                  else "")


def restore_previous_phase(params: PyTree, init_from: str,
                           new_parameters: Sequence[tuple[str, str]],
                           mesh: Mesh) -> PyTree:
  """Replaces freshly initialised parameters by those of the previous phase.

  Args:
    params: the new model's parameters, freshly initialised and sharded.
      Parameters declared 'fresh' keep these values.
    init_from: run directory of the previous phase.
    new_parameters: (pattern, how) pairs of the phase.
    mesh: the device mesh.

  Returns:
    The parameters with the same structure and shardings.

  Raises:
    CheckpointError: no finished checkpoint in `init_from`, or parameters
      that are neither in it nor declared new (see `plan_hand_off`).
  """
  step = final_step(init_from)
  source = str(checkpoints.checkpoint_dir(init_from) / str(step))
  saved = checkpoints.param_metadata(init_from, step)
  flat = optimizers.flatten_params(params)
  plan = plan_hand_off({p: x.shape for p, x in flat.items()},
                       {p: x.shape for p, x in saved.items()},
                       new_parameters, source)

  targets = {p: jax.ShapeDtypeStruct(flat[p].shape, flat[p].dtype,
                                     sharding=flat[p].sharding)
             for p in plan.restored}
  replicated = NamedSharding(mesh, PartitionSpec())
  for path, how in plan.initialised.items():
    if how == "extend":
      targets[path] = jax.ShapeDtypeStruct(saved[path].shape,
                                           flat[path].dtype,
                                           sharding=replicated)
  loaded = checkpoints.restore_params(init_from, step, targets)

  for path in plan.restored:
    flat[path] = loaded[path]
  for path, how in plan.initialised.items():
    flat[path] = _initialise(flat[path], how, loaded.get(path))
  _log_plan(plan, source, flat)
  return optimizers.unflatten_like(params, flat)


def final_step(init_from: str) -> int:
  """Returns the last step of the finished phase in run directory `init_from`.

  Raises:
    CheckpointError: the directory has no checkpoint, or its phase stopped
      before its num_steps.
  """
  step = checkpoints.latest_step(init_from)
  if step is None:
    raise CheckpointError(
        f"PhaseConfig.init_from = {init_from!r} has no checkpoint in "
        f"{checkpoints.checkpoint_dir(init_from)}; run the previous phase "
        "first, or fix the path")
  progress = checkpoints.read_progress(init_from, step)
  if progress.num_steps and step < progress.num_steps:
    raise CheckpointError(
        f"the previous phase in {init_from} stopped at step {step} of "
        f"{progress.num_steps}; re-run it with the same run_dir to finish it "
        "before starting this phase")
  return step


def _initialise(fresh: jax.Array, how: str,
                saved: jax.Array | None) -> jax.Array:
  if how == "fresh":
    return fresh
  if how == "zeros":
    return jax.jit(jnp.zeros_like, out_shardings=fresh.sharding)(fresh)
  # extend: copy the saved rows over the leading rows of the fresh tensor.
  rows = saved.shape[0]
  return jax.jit(lambda f, s: f.at[:rows].set(s.astype(f.dtype)),
                 out_shardings=fresh.sharding)(fresh, saved)


def _log_plan(plan: HandOffPlan, source: str, flat: Mapping[str, Any]) -> None:
  by_module: dict[str, int] = {}
  for path in plan.restored:
    module = path.split("/", 1)[0]
    by_module[module] = by_module.get(module, 0) + 1
  summary = ", ".join(f"{m}: {n}" for m, n in by_module.items())
  logging.info("Restored %d parameters from %s (%s)", len(plan.restored),
               source, summary or "none")
  for path, how in plan.initialised.items():
    logging.info("Initialised %s %s: %s", path, tuple(flat[path].shape), how)
  if plan.unused:
    logging.warning("%d parameters of %s are not in the model and were not "
                    "restored: %s", len(plan.unused), source,
                    _first(list(plan.unused)))
