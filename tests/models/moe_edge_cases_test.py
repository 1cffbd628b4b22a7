"""Edge cases of the MoE config, the capacity size and `sutra-bench train`."""

import dataclasses

from absl import flags
from absl.testing import flagsaver
from flax import nnx
import jax
import numpy as np
import pytest

from sutra_jax.cli import bench as bench_cli
from sutra_jax.errors import ConfigError
from sutra_jax.models import moe
from sutra_jax.models.config import ModelConfig
from sutra_jax.tools import bench_train

CONFIG = ModelConfig(
    vocab_size=32, d_model=16, num_heads=2, num_kv_heads=1, head_dim=4,
    mlp_dim=16, expert_mlp_dim=12, num_experts=8, experts_per_token=2,
    num_encoder_layers=0, num_core_layers=1, num_decoder_layers=0)


def test_infinite_capacity_factor_is_a_config_error():
  with pytest.raises(ConfigError, match="capacity_factor"):
    dataclasses.replace(CONFIG, capacity_factor=float("inf"))


def test_infinite_expert_buffer_factor_is_a_config_error():
  with pytest.raises(ConfigError, match="expert_buffer_factor"):
    dataclasses.replace(CONFIG, expert_buffer_factor=float("inf"))


def test_string_capacity_factor_is_a_config_error():
  with pytest.raises(ConfigError, match="capacity_factor"):
    dataclasses.replace(CONFIG, capacity_factor="1.25")


def test_huge_capacity_factor_computes_like_dropless():
  # An expert receives at most N copies (top-k picks distinct experts), so
  # any factor >= E / k keeps every copy and must match dropless.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, CONFIG.d_model)).astype(np.float32)
  mask = np.ones((2, 4), np.float32)
  module = moe.MoE(CONFIG, rngs=nnx.Rngs(0))
  want, _ = module(x, mask)
  graphdef, state = nnx.split(module)
  capped = dataclasses.replace(CONFIG, moe_dispatch="capacity",
                               capacity_factor=1e300)
  graphdef = nnx.split(nnx.eval_shape(lambda: moe.MoE(
      capped, rngs=nnx.Rngs(0))))[0]
  got, aux = jax.jit(lambda s: nnx.merge(graphdef, s)(x, mask))(state)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert float(aux["dropped_slots"]) == 0


def test_bench_train_parses_gin_bindings(monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError("the benchmark ran with an unparsed gin binding")
  monkeypatch.setattr(bench_train, "train_benchmark", must_not_run)
  with flagsaver.flagsaver():
    flags.FLAGS(["sutra-bench", "--steps=1",
                 "--gin_bindings=NoSuchConfigurable.value = 1"])
    with pytest.raises(ConfigError, match="NoSuchConfigurable"):
      bench_cli.main(["sutra-bench", "train"])


@pytest.mark.parametrize("field", ["num_experts", "experts_per_token",
                                   "num_core_layers"])
def test_bool_is_no_integer_field(field):
  with pytest.raises(ConfigError, match=field):
    dataclasses.replace(CONFIG, **{field: True})


def test_expert_axis_must_divide_experts():
  from sutra_jax import partitioning  # pylint: disable=g-import-not-at-top
  from sutra_jax.training import preflight  # pylint: disable=g-import-not-at-top

  config = dataclasses.replace(CONFIG, num_experts=6,
                               moe_dispatch="expert_parallel")
  mesh = partitioning.make_mesh(data=2, expert=4)

  with pytest.raises(ConfigError, match="num_experts = 6"):
    preflight.check_experts_divide(config, mesh)
  preflight.check_experts_divide(
      dataclasses.replace(config, moe_dispatch="dropless"), mesh)
