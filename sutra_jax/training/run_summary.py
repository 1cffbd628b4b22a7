"""The summary that the trainer logs once, before the first step.

It lists the parameter counts of each top-level module of `SutraModel`,
total and active per token. Then come the mesh shape, the number of
parameter arrays that use each `PartitionSpec` and the model FLOPs per
token.

A parameter's active share is the fraction of it that one token uses. It is
k / E for the expert weights of the core (`core/.../moe/gate|up|down`) and
1 / G for the language blocks, of which a token uses one of G language
groups. Everything else counts fully, the embedding table and the router
included.
"""

import collections
import math
import re
from typing import Any, Mapping

from absl import logging
import jax

from sutra_jax.models import flops
from sutra_jax.models.config import ModelConfig
from sutra_jax.training import optimizers

_EXPERT_WEIGHT = re.compile(r"^core/.*/moe/(gate|up|down)$")
_LANGUAGE_BLOCK = re.compile(r"^(encoder|decoder)/")


def active_share(path: str, config: ModelConfig) -> float:
  """Returns the fraction of the parameter at `path` that one token uses."""
  if _EXPERT_WEIGHT.match(path):
    return config.experts_per_token / config.num_experts
  if _LANGUAGE_BLOCK.match(path):
    return 1 / config.num_language_groups
  return 1.0


def parameter_counts(params: Mapping[str, Any],
                     config: ModelConfig) -> dict[str, tuple[int, float]]:
  """Counts parameters by top-level module.

  Args:
    params: nested dict of arrays or `jax.ShapeDtypeStruct`s, the layout of
      `nnx.to_pure_dict`.
    config: the model's hyperparameters.

  Returns:
    {module: (total, active per token)}, in the order of first appearance,
    with a final "total" entry. Active counts are fractional when k / E or
    1 / G does not divide a weight evenly.
  """
  counts: dict[str, list[float]] = {}
  for path, leaf in optimizers.flatten_params(params).items():
    size = math.prod(leaf.shape)
    entry = counts.setdefault(path.split("/")[0], [0, 0.0])
    entry[0] += size
    entry[1] += size * active_share(path, config)
  result = {name: (int(total), active)
            for name, (total, active) in counts.items()}
  result["total"] = (sum(t for t, _ in result.values()),
                     sum(a for _, a in result.values()))
  return result


def sharding_summary(param_shardings: Mapping[str, Any]) -> dict[str, int]:
  """Counts the parameters that use each distinct `PartitionSpec`.

  Args:
    param_shardings: nested dict of `NamedSharding`s shaped like the params.

  Returns:
    {str(spec): number of parameter arrays}, most common first.
  """
  specs = collections.Counter(
      str(sharding.spec)
      for sharding in optimizers.flatten_params(param_shardings).values())
  return dict(specs.most_common())


def log_start_summary(config: ModelConfig, params: Mapping[str, Any],
                      param_shardings: Mapping[str, Any],
                      mesh: jax.sharding.Mesh, seq_len: int) -> None:
  """Logs parameter counts, mesh, shardings and FLOPs per token (absl INFO)."""
  lines = ["Model summary (active = parameters one token uses):"]
  for name, (total, active) in parameter_counts(params, config).items():
    lines.append(f"  {name:<12} {total:>15,} total  {active:>17,.0f} active")
  lines.append(f"Mesh: {dict(mesh.shape)} over {mesh.size} devices")
  lines.append("Parameter shardings (PartitionSpec: arrays):")
  for spec, count in sharding_summary(param_shardings).items():
    lines.append(f"  {spec}: {count}")
  lines.append(f"Model FLOPs per token at sequence length {seq_len}: "
               f"{flops.flops_per_token(config, seq_len):,} "
               "(forward and backward)")
  logging.info("%s", "\n".join(lines))
