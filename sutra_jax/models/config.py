"""The model's hyperparameters.

`ModelConfig` is bound in gin (see gin_configs/models/*.gin). The language
group fields come from the `LanguageTable`, so callers build the config with
`make_model_config(table)` rather than binding those two fields by hand.
"""

import dataclasses
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
# Layer counts may be zero: a model without language blocks is a plain
# Mixtral-style decoder.
_LAYER_FIELDS = ("num_encoder_layers", "num_core_layers",
                 "num_decoder_layers")


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
    remat: recompute each layer's activations in the backward pass
      (`nnx.remat`), trading compute for memory.
    grouped_matmul: implementation of the grouped matmuls of the language
      blocks and experts: 'ragged_dot', 'tiled', or 'auto' (tiled on CPU,
      where jax 0.10.2 lowers ragged_dot to one dense matmul per group).
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
  remat: bool = False
  grouped_matmul: str = "auto"

  def __post_init__(self):
    # Gin passes lists for tuple-valued bindings, so convert them to keep the
    # config hashable.
    object.__setattr__(self, "language_group_ids",
                       tuple(self.language_group_ids))
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
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"invalid ModelConfig.{name} = {value!r}: expected a "
                        "positive integer. Fix the gin binding")
  for name in _LAYER_FIELDS:
    value = getattr(config, name)
    if not isinstance(value, int) or value < 0:
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
  if not config.rope_theta > 0 or not config.norm_eps > 0:
    raise ConfigError(
        f"invalid ModelConfig.rope_theta = {config.rope_theta!r} or norm_eps "
        f"= {config.norm_eps!r}: both must be positive numbers")
  _validate_groups(config)


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
