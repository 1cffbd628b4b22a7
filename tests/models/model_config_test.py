"""Tests for ModelConfig validation and the model gin files."""

from flax import nnx
import gin
import pytest

from sutra_jax import gin_utils
from sutra_jax import languages
from sutra_jax.errors import ConfigError
from sutra_jax.models import config as config_lib
from sutra_jax.models.sutra import SutraModel

SIZES = dict(
    vocab_size=32, d_model=16, num_heads=4, num_kv_heads=2, head_dim=4,
    mlp_dim=8, expert_mlp_dim=8, num_experts=4, experts_per_token=2,
    num_encoder_layers=1, num_core_layers=1, num_decoder_layers=1)

MODEL_GIN = gin_utils.GIN_CONFIG_DIR / "models"


@pytest.mark.parametrize("change, message", [
    (dict(d_model=0), "ModelConfig.d_model = 0: expected a positive integer"),
    (dict(vocab_size=-3), "ModelConfig.vocab_size = -3"),
    (dict(num_core_layers=-1), "num_core_layers = -1: expected an integer >= 0"),
    (dict(num_kv_heads=3), "num_kv_heads = 3: it must divide num_heads = 4"),
    (dict(experts_per_token=5), "experts_per_token = 5: it must be <= "
     "num_experts = 4"),
    (dict(head_dim=5), "head_dim = 5: the rotary embedding"),
    (dict(dtype="float16"), "dtype = 'float16': expected one of"),
    (dict(language_group_ids=(0, 2), num_language_groups=2),
     "language_group_ids: 2 is not a group id in \\[0, 2\\)"),
    (dict(rope_theta=0.0), "rope_theta = 0.0"),
])
def test_invalid_fields_raise_config_error(change, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.ModelConfig(**{**SIZES, **change})


def test_valid_config_has_dtypes():
  config = config_lib.ModelConfig(**SIZES, dtype="bfloat16")

  assert config.activation_dtype.name == "bfloat16"
  assert config.weight_dtype.name == "float32"


def test_make_model_config_fills_language_groups():
  table = languages.language_table(languages=("en", "hi", "mr", "ta"),
                                   groups={"mr": "hi"})

  config = config_lib.make_model_config(table, **SIZES)

  assert config.num_language_groups == 3
  assert config.language_group_ids == (0, 1, 1, 2)


def test_make_model_config_names_missing_fields():
  table = languages.language_table(languages=("en",))
  partial = {k: v for k, v in SIZES.items() if k != "d_model"}

  with pytest.raises(ConfigError, match="ModelConfig is missing d_model"):
    config_lib.make_model_config(table, **partial)


def test_make_model_config_rejects_group_overrides():
  table = languages.language_table(languages=("en",))

  with pytest.raises(ConfigError, match="num_language_groups from the "
                     "language table"):
    config_lib.make_model_config(table, num_language_groups=2, **SIZES)


@pytest.mark.parametrize("name", ["tiny", "small", "sutra_8x7b"])
def test_gin_file_builds_a_config(name):
  gin.parse_config_file(str(MODEL_GIN / f"{name}.gin"))

  config = config_lib.make_model_config(languages.language_table())

  assert config.num_language_groups == len(languages.DEMO_LANGUAGES)
  assert config.num_experts == 8
  assert config.experts_per_token == 2


def test_vocab_size_macro_can_be_overridden():
  gin.parse_config_file(str(MODEL_GIN / "tiny.gin"))
  gin.parse_config("VOCAB_SIZE = 5000")

  config = config_lib.make_model_config(languages.language_table())

  assert config.vocab_size == 5000


def test_tiny_gin_model_builds_abstractly():
  gin.parse_config_file(str(MODEL_GIN / "tiny.gin"))
  config = config_lib.make_model_config(languages.language_table())

  model = nnx.eval_shape(lambda: SutraModel(config, rngs=nnx.Rngs(0)))

  assert model.embed.embedding.shape == (2048, 128)


def _param_counts(config):
  """Counts parameters per top-level path without allocating them."""
  abstract = nnx.eval_shape(lambda: SutraModel(config, rngs=nnx.Rngs(0)))
  counts = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    counts[path[0]] = counts.get(path[0], 0) + var.get_value().size
  return counts


def test_sutra_8x7b_core_is_mixtral_sized():
  gin.parse_config_file(str(MODEL_GIN / "sutra_8x7b.gin"))
  table = languages.language_table(languages=("en", "hi", "mr"),
                                   groups={"mr": "hi"})
  config = config_lib.make_model_config(table)

  counts = _param_counts(config)

  mixtral = sum(counts[k] for k in ("embed", "core", "final_norm", "lm_head"))
  assert 46.0e9 < mixtral < 47.0e9, mixtral
  d, f, kv = 4096, 14336, 8 * 128
  block = 2 * d + 2 * d * d + 2 * d * kv + 3 * d * f
  assert counts["encoder"] == 2 * block
  assert counts["decoder"] == 2 * block
  assert config.num_language_groups == 2
