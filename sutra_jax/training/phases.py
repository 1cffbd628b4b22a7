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
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sutra_jax.errors import CheckpointError, ConfigError
from sutra_jax.training import checkpoints
from sutra_jax.training import growth
from sutra_jax.training import losses as losses_lib
from sutra_jax.training import optimizers

PyTree = Any

# Initialisation methods of a newly declared parameter.
#   fresh:  the model's initialiser, as in a fresh run with the phase's seed.
#   zeros:  all zeros, for example for a new gate that must start closed.
#   extend: the checkpoint's tensor fills the leading rows of axis 0 and the
#           remaining rows keep the model's initialiser. This grows the
#           vocabulary ([V, D] embeddings) or adds language groups ([G, ...]
#           language-block weights) while keeping the trained rows.
#   pieces: for `embed/embedding` [V, D] and `lm_head/kernel` [D, V] after a
#           tokenizer merge. The trained entries stay. Each new piece starts
#           as the mean of the entries of the pieces that the old tokenizer
#           (`PhaseConfig.previous_vocabulary`) splits its text into (see
#           `growth.piece_sources`).
# New language groups need no entry here: `PhaseConfig.new_language_groups`
# grows every language-block weight (see `growth.plan_groups`).
# NOTE: `extend` grows axis 0 only, so it cannot grow `lm_head/kernel` [D, V];
# use `pieces` or `fresh` for it.
INIT_METHODS = ("fresh", "zeros", "extend", "pieces")

# Parameters with a leading language-group axis [G, ...].
LANGUAGE_BLOCKS = re.compile(r"^(encoder|decoder)/")


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
    new_language_groups: `{group: source}` for language groups that this
      phase adds after the groups of `init_from`; source is a trained group
      whose weights the new group copies (for example `{'gu': 'hi'}`), or
      'mean' for the mean of the trained groups. Gin may bind a dict or a
      list of pairs.
    previous_vocabulary: the SentencePiece model of `init_from`, when this
      phase's vocabulary extends it (a tokenizer merge); parameters declared
      'pieces' in `new_parameters` need it.
    losses: the weights of the loss terms; bind its fields as
      `LossConfig.<field>` (see `sutra_jax.training.losses`).
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
  new_language_groups: tuple[tuple[str, str], ...] = ()
  previous_vocabulary: str | None = None
  losses: losses_lib.LossConfig = dataclasses.field(
      default_factory=losses_lib.LossConfig)

  def __post_init__(self):
    # Gin passes lists and dicts, so convert them to keep the config hashable.
    object.__setattr__(self, "trainable", _as_patterns(self.trainable))
    object.__setattr__(self, "new_parameters",
                       _as_pairs(self.new_parameters))
    object.__setattr__(self, "new_language_groups", growth.as_pairs(
        self.new_language_groups, "PhaseConfig.new_language_groups"))
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
  uses_pieces = any(how == "pieces" for _, how in phase.new_parameters)
  if uses_pieces and not phase.previous_vocabulary:
    raise ConfigError(
        "PhaseConfig.new_parameters declares 'pieces', which needs "
        "PhaseConfig.previous_vocabulary: set it to the SentencePiece model "
        "of the init_from run")


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
                  source: str,
                  groups: growth.GroupGrowth | None = None) -> HandOffPlan:
  """Decides, strictly, which parameters are restored and which initialised.

  A parameter that matches a `new_parameters` pattern is initialised as
  declared, even when the checkpoint has it, and the first matching pattern
  wins. `extend` needs the parameter in the checkpoint with at most as many
  rows, and `pieces` needs it there too. With `groups`, a language-block
  parameter whose first axis grows from the checkpoint's group count to the
  model's is initialised as 'groups'. Every other parameter must be in the
  checkpoint with the same shape.

  Args:
    new_shapes: `{path: shape}` of the new model.
    saved_shapes: `{path: shape}` of the checkpoint.
    new_parameters: (pattern, how) pairs of the phase.
    source: the checkpoint, for error messages.
    groups: the new language groups of the phase, if any.

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
    elif how == "pieces":
      if saved is None:
        raise CheckpointError(
            f"{path} is declared 'pieces' in PhaseConfig.new_parameters but "
            f"is not in {source}; declare it 'fresh' instead")
      initialised[path] = how
    elif how is None and _grows_groups(path, shape, saved, groups):
      initialised[path] = "groups"
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
        f"{_first(mismatched)}. Use the model config of that run, declare "
        "new language groups in PhaseConfig.new_language_groups, or declare "
        "the parameters in PhaseConfig.new_parameters with 'extend' (more "
        "rows), 'pieces' (a merged vocabulary) or 'fresh'")
  unused = tuple(p for p in saved_shapes if p not in new_shapes)
  return HandOffPlan(restored=tuple(restored), initialised=initialised,
                     unused=unused)


def _grows_groups(path: str, shape, saved,
                  groups: growth.GroupGrowth | None) -> bool:
  """Checks whether `path` is a language-block weight that gains new groups."""
  if groups is None or saved is None or not LANGUAGE_BLOCKS.search(path):
    return False
  return (len(saved) == len(shape) and tuple(saved[1:]) == tuple(shape[1:])
          and saved[0] == groups.old_count and
          shape[0] == groups.old_count + len(groups.sources))


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


@dataclasses.dataclass(frozen=True)
class Growth:
  """The additions of a hand-off to the previous phase's model.

  Attributes:
    group_names: the new model's language group names, in id order.
    new_language_groups: `PhaseConfig.new_language_groups`.
    previous_vocabulary: the SentencePiece model of the previous phase, for
      parameters declared 'pieces'.
    vocabulary: this phase's SentencePiece model, which extends
      `previous_vocabulary`.
  """

  group_names: tuple[str, ...] = ()
  new_language_groups: tuple[tuple[str, str], ...] = ()
  previous_vocabulary: str | None = None
  vocabulary: str | None = None


def growth_of(phase: PhaseConfig, group_names: Sequence[str]) -> Growth:
  """Returns the `Growth` of a phase whose language groups are `group_names`.

  The phase's vocabulary is the SentencePiece model of its mixture's
  `targets` feature, read only when a parameter is declared 'pieces'.
  """
  vocabulary = None
  if any(how == "pieces" for _, how in phase.new_parameters):
    vocabulary = _mixture_vocabulary_file(phase.mixture)
  return Growth(group_names=tuple(group_names),
                new_language_groups=phase.new_language_groups,
                previous_vocabulary=phase.previous_vocabulary,
                vocabulary=vocabulary)


def _mixture_vocabulary_file(mixture: str | None) -> str | None:
  import seqio  # pylint: disable=g-import-not-at-top

  try:
    provider = seqio.get_mixture_or_task(mixture)
  except (ValueError, TypeError):
    return None
  vocabulary = provider.output_features["targets"].vocabulary
  return getattr(vocabulary, "sentencepiece_model_file", None)


def restore_previous_phase(params: PyTree, init_from: str,
                           new_parameters: Sequence[tuple[str, str]],
                           mesh: Mesh,
                           grown: Growth = Growth()) -> PyTree:
  """Replaces freshly initialised parameters by those of the previous phase.

  Args:
    params: the new model's parameters, freshly initialised and sharded.
      Parameters declared 'fresh' keep these values.
    init_from: run directory of the previous phase.
    new_parameters: (pattern, how) pairs of the phase.
    mesh: the device mesh.
    grown: new language groups and the vocabularies of a merge.

  Returns:
    The parameters with the same structure and shardings.

  Raises:
    CheckpointError: no finished checkpoint in `init_from`, or parameters
      that are neither in it nor declared new (see `plan_hand_off`).
    ConfigError: invalid new language groups or vocabularies.
  """
  step = final_step(init_from)
  source = str(checkpoints.checkpoint_dir(init_from) / str(step))
  saved = checkpoints.param_metadata(init_from, step)
  flat = optimizers.flatten_params(params)
  groups = growth.plan_groups(grown.group_names, grown.new_language_groups)
  plan = plan_hand_off({p: x.shape for p, x in flat.items()},
                       {p: x.shape for p, x in saved.items()},
                       new_parameters, source, groups)
  if groups is not None and "groups" not in plan.initialised.values():
    raise CheckpointError(
        f"PhaseConfig.new_language_groups declares "
        f"{[g for g, _ in grown.new_language_groups]}, but no language-block "
        f"weight in {source} has {groups.old_count} groups; remove the "
        "declaration or point init_from at the run without those groups")
  pieces = None
  if "pieces" in plan.initialised.values():
    if not grown.vocabulary:
      raise ConfigError("parameters declared 'pieces' need the phase's "
                        "SentencePiece vocabulary; train from a seqio mixture "
                        "with a SentencePiece vocabulary")
    pieces = growth.piece_sources(grown.previous_vocabulary,
                                  grown.vocabulary)

  targets = {p: jax.ShapeDtypeStruct(flat[p].shape, flat[p].dtype,
                                     sharding=flat[p].sharding)
             for p in plan.restored}
  replicated = NamedSharding(mesh, PartitionSpec())
  for path, how in plan.initialised.items():
    if how in ("extend", "pieces", "groups"):
      targets[path] = jax.ShapeDtypeStruct(saved[path].shape,
                                           flat[path].dtype,
                                           sharding=replicated)
  loaded = checkpoints.restore_params(init_from, step, targets)

  for path in plan.restored:
    flat[path] = loaded[path]
  details = {}
  for path, how in plan.initialised.items():
    if how == "groups":
      value = growth.grow_groups(np.asarray(loaded[path]), groups)
      details[path] = "; ".join(groups.description)
    elif how == "pieces":
      value = growth.grow_vocabulary(np.asarray(loaded[path]),
                                     np.asarray(flat[path]), pieces)
      details[path] = growth.describe_sources(pieces)
    else:
      flat[path] = _initialise(flat[path], how, loaded.get(path))
      continue
    flat[path] = jax.device_put(value.astype(flat[path].dtype),
                                flat[path].sharding)
  _log_plan(plan, source, flat, details)
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


def _log_plan(plan: HandOffPlan, source: str, flat: Mapping[str, Any],
              details: Mapping[str, str]) -> None:
  by_module: dict[str, int] = {}
  for path in plan.restored:
    module = path.split("/", 1)[0]
    by_module[module] = by_module.get(module, 0) + 1
  summary = ", ".join(f"{m}: {n}" for m, n in by_module.items())
  logging.info("Restored %d parameters from %s (%s)", len(plan.restored),
               source, summary or "none")
  for path, how in plan.initialised.items():
    detail = f" ({details[path]})" if path in details else ""
    logging.info("Initialised %s %s: %s%s", path, tuple(flat[path].shape),
                 how, detail)
  if plan.unused:
    logging.warning("%d parameters of %s are not in the model and were not "
                    "restored: %s", len(plan.unused), source,
                    _first(list(plan.unused)))
