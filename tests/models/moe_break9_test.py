"""Failing tests for bugs found by probing the MoE dispatch, its config and
`sutra-bench train`. Each one is a strict xfail until its bug is fixed.
"""

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


@pytest.mark.xfail(strict=True, reason="capacity_factor=inf passes "
                   "validation, then math.ceil raises OverflowError")
def test_infinite_capacity_factor_is_a_config_error():
  with pytest.raises(ConfigError, match="capacity_factor"):
    dataclasses.replace(CONFIG, capacity_factor=float("inf"))


@pytest.mark.xfail(strict=True, reason="expert_buffer_factor=inf passes "
                   "validation, then math.ceil raises OverflowError")
def test_infinite_expert_buffer_factor_is_a_config_error():
  with pytest.raises(ConfigError, match="expert_buffer_factor"):
    dataclasses.replace(CONFIG, expert_buffer_factor=float("inf"))


@pytest.mark.xfail(strict=True, reason="a string capacity_factor (a quoted "
                   "gin value) raises TypeError from the > comparison")
def test_string_capacity_factor_is_a_config_error():
  with pytest.raises(ConfigError, match="capacity_factor"):
    dataclasses.replace(CONFIG, capacity_factor="1.25")


@pytest.mark.xfail(strict=True, reason="expert_capacity is not capped at N, "
                   "so a large factor overflows (and a moderate one "
                   "allocates factor * N * k / E slots per expert)")
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


@pytest.mark.xfail(strict=True, reason="`sutra-bench train` never parses "
                   "--gin_file/--gin_bindings, so a bad binding is ignored "
                   "and no mesh binding can give --dispatch=expert_parallel "
                   "an expert axis")
def test_bench_train_parses_gin_bindings(monkeypatch):
  def must_not_run(*args, **kwargs):
    raise AssertionError("the benchmark ran with an unparsed gin binding")
  monkeypatch.setattr(bench_train, "train_benchmark", must_not_run)
  with flagsaver.flagsaver():
    flags.FLAGS(["sutra-bench", "--steps=1",
                 "--gin_bindings=NoSuchConfigurable.value = 1"])
    with pytest.raises(ConfigError, match="NoSuchConfigurable"):
      bench_cli.main(["sutra-bench", "train"])
