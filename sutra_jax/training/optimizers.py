"""AdamW with a warm-up + cosine schedule, trainable masks and decay masks.

Parameters are addressed by their path: the '/'-joined keys of the nnx state,
for example `core/layers/0/moe/router/kernel`. A phase selects what trains
with regular expressions over these paths (`re.search`, so anchor with `^`
where a prefix is meant). Frozen parameters get `optax.set_to_zero()` through
`optax.partition` (the current name of `optax.multi_transform`), so they carry
no optimizer state, receive no update and no weight decay.

Weight decay applies to every trainable parameter except those matched by
`OptimizerConfig.no_decay_patterns`. By default these are the RMSNorm scales
(`.../attention_norm/scale` in the core, `.../attention_norm` for the
per-group scales of the language blocks, and `final_norm/scale`). Decaying a
scale pulls the normalised activations towards zero. The token embedding
table is excluded too, because rows of rare tokens get few gradient updates
and would shrink towards zero between them. The output head and all other
matrices are decayed. The choice is made by path, never by `ndim`.
"""

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

from sutra_jax.errors import ConfigError

PyTree = Any

# Labels of the two parameter partitions in `optax.partition`.
TRAINABLE = "trainable"
FROZEN = "frozen"

# A trainable pattern that selects every path on purpose.
TRAIN_EVERYTHING = (".*",)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW hyperparameters and the learning-rate schedule of one phase.

  Attributes:
    peak_learning_rate: learning rate at the end of the warm-up. Must be > 0.
    warmup_steps: steps of linear warm-up from 0 to the peak.
    decay_steps: step at which the cosine decay reaches its end value,
      counted from the start of the phase and including the warm-up. None
      means the phase's `num_steps`.
    end_learning_rate_fraction: final learning rate as a fraction of the
      peak, in [0, 1]. 0.1 follows the common LLaMA/Mixtral recipe.
    b1: AdamW first-moment decay.
    b2: AdamW second-moment decay. 0.95 rather than 0.999 keeps the second
      moment responsive to the loss spikes of large MoE models.
    eps: AdamW denominator epsilon.
    weight_decay: decoupled weight decay coefficient (multiplied by the
      learning rate, as in `optax.adamw`).
    grad_clip_norm: maximum global norm of the trainable gradients, or None
      for no clipping.
    no_decay_patterns: regular expressions over parameter paths that are
      excluded from weight decay. Each must match at least one parameter.
  """

  peak_learning_rate: float = 3e-4
  warmup_steps: int = 100
  decay_steps: int | None = None
  end_learning_rate_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip_norm: float | None = 1.0
  no_decay_patterns: tuple[str, ...] = (r"norm(/scale)?$", r"^embed/")

  def __post_init__(self):
    # Gin passes lists for tuple-valued bindings, so convert them to keep the
    # config hashable.
    object.__setattr__(self, "no_decay_patterns",
                       tuple(self.no_decay_patterns))
    _validate_config(self)


def _validate_config(config: OptimizerConfig) -> None:
  """Raises ConfigError naming the first invalid field and its fix."""
  if not _is_number(config.peak_learning_rate) or (
      not config.peak_learning_rate > 0):
    raise ConfigError(
        "invalid OptimizerConfig.peak_learning_rate = "
        f"{config.peak_learning_rate!r}: expected a number > 0")
  if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
    raise ConfigError(
        f"invalid OptimizerConfig.warmup_steps = {config.warmup_steps!r}: "
        "expected an integer >= 0")
  if config.decay_steps is not None and (
      not isinstance(config.decay_steps, int) or config.decay_steps <= 0):
    raise ConfigError(
        f"invalid OptimizerConfig.decay_steps = {config.decay_steps!r}: "
        "expected a positive integer, or None for the phase's num_steps")
  if not _is_number(config.end_learning_rate_fraction) or not (
      0 <= config.end_learning_rate_fraction <= 1):
    raise ConfigError(
        "invalid OptimizerConfig.end_learning_rate_fraction = "
        f"{config.end_learning_rate_fraction!r}: expected a number in [0, 1]")
  for name in ("b1", "b2"):
    value = getattr(config, name)
    if not _is_number(value) or not 0 <= value < 1:
      raise ConfigError(f"invalid OptimizerConfig.{name} = {value!r}: "
                        "expected a number in [0, 1)")
  if not _is_number(config.eps) or not config.eps > 0:
    raise ConfigError(f"invalid OptimizerConfig.eps = {config.eps!r}: "
                      "expected a number > 0")
  if not _is_number(config.weight_decay) or config.weight_decay < 0:
    raise ConfigError(
        f"invalid OptimizerConfig.weight_decay = {config.weight_decay!r}: "
        "expected a number >= 0")
  if config.grad_clip_norm is not None and (
      not _is_number(config.grad_clip_norm) or not config.grad_clip_norm > 0):
    raise ConfigError(
        f"invalid OptimizerConfig.grad_clip_norm = {config.grad_clip_norm!r}:"
        " expected a number > 0, or None for no clipping")
  _compile_patterns(config.no_decay_patterns,
                    "OptimizerConfig.no_decay_patterns")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# Parameter paths.


def _key_name(key) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_name(key_path: Sequence[Any]) -> str:
  """Joins a JAX key path into a parameter path such as `core/layers/0/w`."""
  return "/".join(_key_name(k) for k in key_path)


def flatten_params(params: PyTree) -> dict[str, Any]:
  """Returns `{path: leaf}` for a nested dict of parameters, in tree order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {path_name(path): leaf for path, leaf in leaves}


def unflatten_like(params: PyTree, flat: Mapping[str, Any]) -> PyTree:
  """Builds a tree shaped like `params` with the leaves of `flat` by path."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree_util.tree_unflatten(
      treedef, [flat[path_name(path)] for path, _ in leaves])


def map_paths(fn: Callable[[str], Any], params: PyTree) -> PyTree:
  """Returns a tree shaped like `params` whose leaves are `fn(path)`."""
  return jax.tree_util.tree_map_with_path(lambda p, _: fn(path_name(p)),
                                          params)


def _compile_patterns(patterns: Iterable[str], where: str) -> list[re.Pattern]:
  if isinstance(patterns, str):
    raise ConfigError(f"invalid {where} = {patterns!r}: expected a tuple of "
                      f"regular expressions, for example ({patterns!r},)")
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except (re.error, TypeError) as e:
      raise ConfigError(f"invalid regular expression {pattern!r} in {where}: "
                        f"{e}") from None
  return compiled


def match_paths(paths: Sequence[str], patterns: Sequence[str],
                where: str) -> set[str]:
  """Returns the paths that any pattern selects.

  Raises:
    ConfigError: a pattern is not a valid regular expression or selects no
      path. The message names the pattern and the gin parameter `where`.
  """
  selected = set()
  for pattern in _compile_patterns(patterns, where):
    hits = {p for p in paths if pattern.search(p)}
    if not hits:
      examples = ", ".join(list(paths)[:4])
      raise ConfigError(
          f"pattern {pattern.pattern!r} in {where} matches no parameter; "
          f"parameter paths look like {examples}")
    selected |= hits
  return selected


def trainable_mask(params: PyTree, trainable: Sequence[str],
                   where: str = "PhaseConfig.trainable") -> PyTree:
  """Returns a tree of bools shaped like `params`: True where it trains.

  Args:
    params: the parameter tree.
    trainable: regular expressions over parameter paths.
    where: the gin parameter the patterns came from, for error messages.

  Raises:
    ConfigError: a pattern selects nothing; the patterns select no parameter
      (the phase would freeze everything); or they select every parameter
      without saying so with `trainable=('.*',)`.
  """
  paths = list(flatten_params(params))
  if not trainable:
    raise ConfigError(f"{where} is empty, so the phase would freeze every "
                      "parameter; list the patterns of the parameters to "
                      "train, or ('.*',) for all of them")
  selected = match_paths(paths, trainable, where)
  if len(selected) == len(paths) and not _selects_all_by_design(trainable):
    raise ConfigError(
        f"{where} = {tuple(trainable)!r} selects every parameter, so nothing "
        "is frozen; write ('.*',) to train everything, or narrow the "
        "patterns")
  return map_paths(lambda path: path in selected, params)


def _selects_all_by_design(patterns: Sequence[str]) -> bool:
  return any(p in (".*", "^.*", "^.*$", ".*$", "") for p in patterns)


def decay_mask(params: PyTree, no_decay_patterns: Sequence[str]) -> PyTree:
  """Returns a tree of bools shaped like `params`: True where decay applies.

  Raises:
    ConfigError: a pattern selects no parameter.
  """
  paths = list(flatten_params(params))
  excluded = match_paths(paths, no_decay_patterns,
                         "OptimizerConfig.no_decay_patterns")
  return map_paths(lambda path: path not in excluded, params)


# ---------------------------------------------------------------------------
# Schedule and optimizer.


def learning_rate_schedule(config: OptimizerConfig,
                           num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine decay to the end value.

  With `w = warmup_steps`, `d = decay_steps` (or `num_steps`), `p` the peak
  and `e = p * end_learning_rate_fraction`, the rate at step `s` is
  `p * s / w` for `s < w`, `e + (p - e) * (1 + cos(pi * (s - w) / (d - w))) /
  2` for `w <= s <= d`, and `e` after `d`.

  Raises:
    ConfigError: the decay ends before the warm-up does.
  """
  decay_steps = config.decay_steps or num_steps
  if decay_steps <= config.warmup_steps:
    raise ConfigError(
        f"OptimizerConfig.decay_steps = {decay_steps} (None means the phase's"
        f" num_steps) must exceed warmup_steps = {config.warmup_steps}; "
        "shorten the warm-up or lengthen the decay")
  peak = config.peak_learning_rate
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=config.warmup_steps,
      decay_steps=decay_steps,
      end_value=peak * config.end_learning_rate_fraction)


class Optimizer(NamedTuple):
  """The gradient transformation and the masks it was built with.

  Attributes:
    tx: `optax.partition` of AdamW (trainable) and `set_to_zero` (frozen).
    trainable: tree of bools shaped like the parameters.
    decay: tree of bools, True where weight decay applies (trainable only).
    schedule: learning rate as a function of the phase step.
  """

  tx: optax.GradientTransformation
  trainable: PyTree
  decay: PyTree
  schedule: optax.Schedule


def make_optimizer(config: OptimizerConfig, params: PyTree, *,
                   trainable: Sequence[str], num_steps: int) -> Optimizer:
  """Builds the phase's optimizer for a parameter tree.

  Args:
    config: AdamW and schedule settings.
    params: the parameter tree (arrays or `jax.ShapeDtypeStruct`s).
    trainable: regular expressions over parameter paths that train.
    num_steps: steps of the phase, the default end of the cosine decay.

  Returns:
    The optimizer with its masks.

  Raises:
    ConfigError: invalid patterns (see `trainable_mask`, `decay_mask`) or a
      schedule whose decay ends before its warm-up.
  """
  train = trainable_mask(params, trainable)
  decay = jax.tree.map(lambda t, d: t and d, train,
                       decay_mask(params, config.no_decay_patterns))
  schedule = learning_rate_schedule(config, num_steps)
  adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay, mask=decay)
  if config.grad_clip_norm is not None:
    # Clipping inside the trainable partition measures the global norm over
    # trainable gradients only; frozen gradients are zero anyway.
    adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                        adamw)
  labels = jax.tree.map(lambda t: TRAINABLE if t else FROZEN, train)
  tx = optax.partition({TRAINABLE: adamw, FROZEN: optax.set_to_zero()},
                       labels)
  return Optimizer(tx=tx, trainable=train, decay=decay, schedule=schedule)


def apply_updates(params: PyTree, updates: PyTree,
                  trainable: PyTree) -> PyTree:
  """Adds `updates` to the trainable parameters and returns frozen ones as is.

  `optax.apply_updates` would add a zero to frozen parameters, which turns a
  stored -0.0 into +0.0. Skipping them keeps frozen parameters bit-identical.
  """
  return jax.tree.map(
      lambda p, u, t: (p + u.astype(p.dtype)) if t else p,
      params, updates, trainable)


def global_norm(tree: PyTree, mask: PyTree) -> jax.Array:
  """L2 norm over the leaves of `tree` where `mask` is True."""
  squares = [jnp.sum(jnp.square(x.astype(jnp.float32)))
             for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask))
             if m]
  return jnp.sqrt(sum(squares)) if squares else jnp.zeros((), jnp.float32)
