"""Device meshes, logical axis rules and parameter shardings.

Every parameter names its dimensions with logical axes such as 'embed',
'mlp' and 'experts' (see `sutra_jax.models.layers.make_param`). Rules map
each logical axis to mesh axes, and `state_shardings` turns a model state into a
tree of `NamedSharding`s that `jax.jit` can take as in/out shardings.

Mesh axes:
  data:   pure data parallelism, with parameters replicated across it.
  fsdp:   data parallelism with parameters sharded along 'embed' (ZeRO-3).
  expert: expert parallelism for the MoE weights. The batch is also split
          across it, so it does data-parallel work outside the MoE.
  tensor: tensor parallelism over heads, MLP width and vocabulary.
"""

import math
from typing import Sequence

import gin
import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from sutra_jax.errors import ConfigError
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# (logical axis, mesh axes) pairs. A logical axis may be listed more than
# once, and the first entry whose mesh axes are unused in the same array and
# divide the dimension wins. Unlisted logical axes are replicated.
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("experts", "expert"),
    # Language groups stay whole: a batch of mixed languages needs all groups
    # on every device that processes its tokens.
    ("language_groups", None),
    ("norm", None),
)


@gin.configurable
def axis_rules(rules: LogicalRules = DEFAULT_RULES) -> tuple:
  """Returns the logical axis rules that gin binds (default `DEFAULT_RULES`).

  Args:
    rules: (logical axis, mesh axes) pairs, where mesh axes is one mesh axis
      name, a list or tuple of them, or None to replicate. See
      `DEFAULT_RULES` for how the first fitting entry is chosen.
  """
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in rules)


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, expert: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ('data', 'fsdp', 'expert', 'tensor') mesh.

  Args:
    data: size of the 'data' axis, or -1 for all devices left over by the
      other axes.
    fsdp: size of the 'fsdp' axis.
    expert: size of the 'expert' axis.
    tensor: size of the 'tensor' axis.
    devices: devices to use, all of `jax.devices()` by default.

  Returns:
    A mesh with `AxisType.Auto` axes, so `jax.jit` propagates shardings.

  Raises:
    ConfigError: the sizes are not positive or their product is not the
      number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, expert, tensor]
  fixed = math.prod(s for s in shape if s != -1)
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"invalid mesh shape {dict(zip(MESH_AXES, shape))}: "
                      "use positive sizes, with at most one -1")
  if -1 in shape:
    if len(devices) % fixed:
      raise ConfigError(
          f"mesh shape {dict(zip(MESH_AXES, shape))} does not divide the "
          f"{len(devices)} devices because the fixed axes multiply to {fixed}: "
          "choose sizes whose product divides the device count")
    shape[shape.index(-1)] = len(devices) // fixed
  if math.prod(shape) != len(devices):
    raise ConfigError(
        f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
        f"devices but {len(devices)} are available: set one axis to -1 or "
        "make the sizes multiply to the device count")
  return jax.make_mesh(tuple(shape), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_to_mesh_spec(names: Sequence[str | None], shape: Sequence[int],
                         mesh: Mesh,
                         rules: LogicalRules = DEFAULT_RULES) -> PartitionSpec:
  """Maps logical axis names of an array to a `PartitionSpec` on `mesh`.

  Mesh axes of size 1 are left out. A dimension that the mesh axes of its
  rule do not divide keeps the longest prefix of them that does, possibly
  none, so odd sizes (2 KV heads on 4 tensor devices) are replicated rather
  than rejected.

  Args:
    names: one logical axis name (or None) per dimension.
    shape: the array shape.
    mesh: the device mesh.
    rules: (logical axis, mesh axes) pairs.

  Returns:
    The spec, one entry per dimension.
  """
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    axes = _choose_axes(name, size, mesh, rules, used)
    used.update(axes)
    if not axes:
      spec.append(None)
    elif len(axes) == 1:
      spec.append(axes[0])
    else:
      spec.append(axes)
  return PartitionSpec(*spec)


def _choose_axes(name, size, mesh, rules, used) -> tuple[str, ...]:
  for logical, mesh_axes in rules:
    if logical != name or mesh_axes is None:
      continue
    if isinstance(mesh_axes, str):
      mesh_axes = (mesh_axes,)
    axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
    if any(a in used for a in axes):
      continue
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes = axes[:-1]
    return axes
  return ()


def state_shardings(mesh: Mesh, state, rules: LogicalRules = DEFAULT_RULES):
  """Computes the sharding of every variable of a model state.

  Args:
    mesh: the device mesh.
    state: an `nnx.State` of concrete or abstract (`nnx.eval_shape`)
      variables.
    rules: (logical axis, mesh axes) pairs.

  Returns:
    A tree of the same structure as `state` whose variables hold
    `NamedSharding`s, usable as `jax.jit` in/out shardings. Variables without
    logical axis names are replicated.
  """

  def sharding_of(leaf):
    if not isinstance(leaf, nnx.Variable):
      return NamedSharding(mesh, PartitionSpec())
    names = leaf.get_metadata().get("out_sharding")
    shape = leaf.get_value().shape
    spec = (logical_to_mesh_spec(names, shape, mesh, rules)
            if names else PartitionSpec())
    return leaf.replace(NamedSharding(mesh, spec))

  return jax.tree.map(sharding_of, state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES,
                   batch_size: int | None = None) -> NamedSharding:
  """Returns the sharding of [B, L] inputs: batch split, length whole.

  Args:
    mesh: the device mesh.
    rules: (logical axis, mesh axes) pairs, of which the 'batch' rule applies.
    batch_size: the global batch size B. When given, mesh axes that do not
      divide it are dropped, as in `logical_to_mesh_spec`.
  """
  # Without a batch size, use the device count, which every product of mesh
  # axis sizes divides, so no axis is dropped.
  size = mesh.devices.size if batch_size is None else batch_size
  spec = logical_to_mesh_spec(("batch", "length"), (size, 1), mesh, rules)
  return NamedSharding(mesh, spec)


def create_sharded_model(config: ModelConfig, mesh: Mesh, rngs_seed: int = 0,
                         rules: LogicalRules = DEFAULT_RULES) -> SutraModel:
  """Initialises a `SutraModel` directly into its shardings on `mesh`.

  The model is first traced abstractly (`nnx.eval_shape`), so no full copy
  of the parameters is ever materialised on one device. Then one jitted
  initialiser writes each parameter straight into its `NamedSharding`.

  Args:
    config: the `ModelConfig`.
    mesh: the device mesh.
    rngs_seed: seed of the parameter initialisers, as in
      `SutraModel(config, rngs=nnx.Rngs(rngs_seed))`.
    rules: (logical axis, mesh axes) pairs.

  Returns:
    The model, with every parameter sharded on `mesh`.
  """
  def build():
    return SutraModel(config, rngs=nnx.Rngs(rngs_seed))

  graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(mesh, abstract_state, rules)
  state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)

