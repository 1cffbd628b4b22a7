"""The model's hyperparameters.

`ModelConfig` is bound in gin (see gin_configs/models/*.gin). The language
group fields come from the `LanguageTable`, so callers build the config with
`make_model_config(table)` rather than binding those two fields by hand.
"""

import dataclasses
import math
import re

import gin
import jax.numpy as jnp

from sutra_jax.errors import ConfigError
from sutra_jax.languages import LanguageTable
from sutra_jax.models import grouped

# Activation and parameter dtypes that the layers support, by gin name.
DTYPES = ("float32", "bfloat16")

# Fields that must be positive integers.
_POSITIVE_FIELDS = ("vocab_size", "d_model", "num_heads", "num_kv_heads",
                    "head_dim", "mlp_dim", "expert_mlp_dim", "num_experts",
                    "experts_per_token", "num_language_groups")
# Fields that may be zero. Layer counts: a model without language blocks is
# a plain Mixtral-style decoder. attention_query_chunk: 0 turns blocks off.
_LAYER_FIELDS = ("num_encoder_layers", "num_core_layers",
                 "num_decoder_layers", "attention_query_chunk")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and numerics of a `SutraModel`.

  Attributes:
    vocab_size: rows of the shared embedding and columns of the output head.
    d_model: width of the residual stream (D).
    num_heads: query heads of every attention layer.
    num_kv_heads: key and value heads (grouped-query attention). Must divide
      `num_heads`.
    head_dim: width of one attention head.
    mlp_dim: hidden width of the SwiGLU MLP in the language blocks.
    expert_mlp_dim: hidden width of each SwiGLU expert in the concept core.
    num_experts: experts per core MoE layer (E).
    experts_per_token: experts each token is routed to (top-k).
    num_encoder_layers: language encoder blocks before the core.
    num_core_layers: attention + MoE layers of the concept core.
    num_decoder_layers: language decoder blocks after the core.
    rope_theta: base wavelength of the rotary position embedding.
    norm_eps: epsilon added to the mean square in RMSNorm.
    dtype: activation and matmul dtype, 'float32' or 'bfloat16'. Router,
      normalisation, softmax and logits always run in float32.
    param_dtype: storage dtype of the parameters.
    num_language_groups: language groups, the leading axis (G) of every
      language block weight. Filled by `make_model_config`.
    language_group_ids: the group id of each language id. Filled by
      `make_model_config`.
    tie_embeddings: compute the logits with the transposed input embedding
      instead of a separate `lm_head`.
    remat: rematerialisation policy of every encoder, core and decoder
      layer, trading compute for memory: 'none' (keep all activations),
      'full' (recompute everything from the layer's input), 'save_dots'
      (keep the projection outputs) or 'save_all_dots' (keep every matmul
      output). True and False mean 'full' and 'none'.
    core_mlp: feed-forward layer of the concept core: 'moe' (the mixture
      of experts) or 'dense' (one SwiGLU MLP of width `expert_mlp_dim`, for
      dense baselines; the router and experts are then absent).
    moe_dispatch: how tokens reach their experts: 'dropless', 'capacity'
      or 'expert_parallel'; see `sutra_jax.models.moe`.
    capacity_factor: slots per expert of the 'capacity' dispatch, as a
      multiple of the even share N * k / E of the N tokens' routed slots.
    expert_exchange: the collective of the 'expert_parallel' dispatch:
      'all_to_all' (padded buffers, runs everywhere) or 'ragged_all_to_all'
      (exact sizes; TPU and GPU only, XLA:CPU cannot run it).
    expert_buffer_factor: rows that one device can send to one other
      device in the 'all_to_all' exchange, as a multiple of the even share
      N_local * k / num_expert_shards. None sizes the buffer so that it
      cannot overflow (N_local * k rows), which costs num_expert_shards
      times the expert compute of an even share.
    scan_core_layers: whether the concept core's layers run as one
      `lax.scan` over their stacked parameters (`ConceptCore._scan`), so
      that the compiler keeps one layer's gathered weights at a time. Meant
      for large sharded models. The parameters keep their per-layer layout.
    attention_query_chunk: queries per block of memory-efficient attention
      (`layers.chunked_attention`) in every layer, or 0 to attend with all
      queries at once. Long sequences need it, because full attention keeps
      [B, H, L, L] float32 scores per layer.
    grouped_matmul: implementation of the grouped matmuls of the language
      blocks and experts: 'ragged_dot', 'megablox', 'tiled', or 'auto'.
      'auto' picks tiled on CPU, where jax 0.10.2 lowers ragged_dot to one
      dense matmul per group, megablox on TPU, where ragged_dot's weight
      gradient costs one dense matmul per group, and ragged_dot elsewhere.
  """

  vocab_size: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  expert_mlp_dim: int
  num_experts: int
  experts_per_token: int
  num_encoder_layers: int
  num_core_layers: int
  num_decoder_layers: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"
  num_language_groups: int = 1
  language_group_ids: tuple[int, ...] = (0,)
  tie_embeddings: bool = False
  remat: str = "none"
  grouped_matmul: str = "auto"
  attention_query_chunk: int = 0
  scan_core_layers: bool = False
  core_mlp: str = "moe"
  moe_dispatch: str = "dropless"
  capacity_factor: float = 1.25
  expert_exchange: str = "all_to_all"
  expert_buffer_factor: float | None = None

  def __post_init__(self):
    # Gin passes lists for tuple-valued bindings, so convert them to keep the
    # config hashable.
    object.__setattr__(self, "language_group_ids",
                       tuple(self.language_group_ids))
    if isinstance(self.remat, bool):
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    _validate(self)

  @property
  def activation_dtype(self) -> jnp.dtype:
    """`dtype` as a NumPy dtype."""
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    """`param_dtype` as a NumPy dtype."""
    return jnp.dtype(self.param_dtype)

  @property
  def num_languages(self) -> int:
    return len(self.language_group_ids)


def _validate(config: ModelConfig) -> None:
  """Raises ConfigError naming the first invalid field and its fix."""
  for name in _POSITIVE_FIELDS:
    value = getattr(config, name)
    if not _is_int(value) or value <= 0:
      raise ConfigError(f"invalid ModelConfig.{name} = {value!r}: expected a "
                        "positive integer. Fix the gin binding")
  for name in _LAYER_FIELDS:
    value = getattr(config, name)
    if not _is_int(value) or value < 0:
      raise ConfigError(f"invalid ModelConfig.{name} = {value!r}: expected "
                        "an integer >= 0. Fix the gin binding")
  if config.num_heads % config.num_kv_heads:
    raise ConfigError(
        f"invalid ModelConfig.num_kv_heads = {config.num_kv_heads}: it must "
        f"divide num_heads = {config.num_heads}. Choose a divisor of num_heads")
  if config.head_dim % 2:
    raise ConfigError(
        f"invalid ModelConfig.head_dim = {config.head_dim}: the rotary "
        "embedding rotates feature pairs, so use an even head_dim")
  if config.experts_per_token > config.num_experts:
    raise ConfigError(
        f"invalid ModelConfig.experts_per_token = {config.experts_per_token}: "
        f"it must be <= num_experts = {config.num_experts}. Lower it or add "
        "experts")
  for name in ("dtype", "param_dtype"):
    value = getattr(config, name)
    if value not in DTYPES:
      raise ConfigError(f"invalid ModelConfig.{name} = {value!r}: expected "
                        f"one of {', '.join(DTYPES)}")
  if config.grouped_matmul not in grouped.IMPLEMENTATIONS:
    raise ConfigError(
        f"invalid ModelConfig.grouped_matmul = {config.grouped_matmul!r}: "
        f"expected one of {', '.join(grouped.IMPLEMENTATIONS)}")
  _validate_choices(config)
  if not config.rope_theta > 0 or not config.norm_eps > 0:
    raise ConfigError(
        f"invalid ModelConfig.rope_theta = {config.rope_theta!r} or norm_eps "
        f"= {config.norm_eps!r}: both must be positive numbers")
  _validate_groups(config)


def _is_int(value) -> bool:
  # bool is a subclass of int, but True is no layer count.
  return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


# Allowed values of the string-valued fields.
CHOICES = {
    "remat": ("none", "full", "save_dots", "save_all_dots"),
    "core_mlp": ("moe", "dense"),
    "moe_dispatch": ("dropless", "capacity", "expert_parallel"),
    "expert_exchange": ("all_to_all", "ragged_all_to_all"),
}


def _validate_choices(config: ModelConfig) -> None:
  for name, allowed in CHOICES.items():
    value = getattr(config, name)
    if value not in allowed:
      raise ConfigError(f"invalid ModelConfig.{name} = {value!r}: expected "
                        f"one of {', '.join(allowed)}")
  if not _is_positive_number(config.capacity_factor):
    raise ConfigError(
        f"invalid ModelConfig.capacity_factor = {config.capacity_factor!r}: "
        "expected a finite positive number such as 1.25")
  factor = config.expert_buffer_factor
  if factor is not None and not _is_positive_number(factor):
    raise ConfigError(
        f"invalid ModelConfig.expert_buffer_factor = {factor!r}: expected a "
        "finite positive number, or None for a buffer that cannot overflow")


def _validate_groups(config: ModelConfig) -> None:
  ids = config.language_group_ids
  if not ids:
    raise ConfigError("ModelConfig.language_group_ids is empty: build the "
                      "config with make_model_config(language_table)")
  bad = [g for g in ids
         if not isinstance(g, int) or not 0 <= g < config.num_language_groups]
  if bad:
    raise ConfigError(
        f"invalid ModelConfig.language_group_ids: {bad[0]!r} is not a group "
        f"id in [0, {config.num_language_groups}). Build the config with "
        "make_model_config(language_table)")


def make_model_config(table: LanguageTable, **overrides) -> ModelConfig:
  """Builds the gin-configured `ModelConfig` for the languages of `table`.

  Args:
    table: the model's language table. It sets `num_language_groups` and
      `language_group_ids`.
    **overrides: `ModelConfig` fields that take precedence over gin, such as
      `vocab_size` taken from the tokenizer.

  Returns:
    The validated config.

  Raises:
    ConfigError: a required field is bound neither in gin nor in
      `overrides`, or a field is invalid.
  """
  for name in ("num_language_groups", "language_group_ids"):
    if name in overrides:
      raise ConfigError(f"make_model_config sets {name} from the language "
                        "table: remove it from the overrides")
  overrides = dict(overrides, num_language_groups=table.num_groups,
                   language_group_ids=table.group_ids)
  try:
    return ModelConfig(**overrides)
  except TypeError as e:
    # Gin lists the unbound fields as "... for arguments: ['a', 'b']".
    found = re.search(r"for arguments: \[([^\]]*)\]", str(e))
    missing = found.group(1).replace("'", "") if found else str(e)
    raise ConfigError(
        f"ModelConfig is missing {missing}: include a gin_configs/models/*.gin "
        "file or bind the fields with --gin_bindings") from None
