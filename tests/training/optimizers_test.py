"""Tests for the optimizer: schedule, trainable masks and decay masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax.errors import ConfigError
from sutra_jax.training import optimizers
from sutra_jax.training.optimizers import OptimizerConfig


def _params():
  """A parameter tree with the path layout of SutraModel."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
      "embed": {"embedding": normal(8, 4)},
      "encoder": {"layers": {0: {"attention_norm": normal(2, 4),
                                 "up": normal(2, 4, 6)}}},
      "core": {"layers": {0: {"mlp_norm": {"scale": normal(4)},
                              "moe": {"router": {"kernel": normal(4, 3)},
                                      "bias": normal(3)}}}},
      "lm_head": {"kernel": normal(4, 8)},
  }


def _bits(x):
  return np.asarray(x).view(np.uint32)


def test_schedule_matches_formula():
  config = OptimizerConfig(peak_learning_rate=2e-3, warmup_steps=10,
                           decay_steps=50, end_learning_rate_fraction=0.1)
  schedule = optimizers.learning_rate_schedule(config, num_steps=80)
  peak, end = 2e-3, 2e-4

  def expected(step):
    if step < 10:
      return peak * step / 10
    if step <= 50:
      return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (step - 10) /
                                                      40))
    return end

  for step in (0, 1, 5, 10, 11, 30, 49, 50, 70):
    np.testing.assert_allclose(float(schedule(step)), expected(step),
                               rtol=1e-5, err_msg=f"step {step}")


def test_schedule_decays_over_phase_by_default():
  config = OptimizerConfig(peak_learning_rate=1.0, warmup_steps=2,
                           end_learning_rate_fraction=0.0)
  schedule = optimizers.learning_rate_schedule(config, num_steps=12)

  np.testing.assert_allclose(float(schedule(7)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(12)), 0.0, atol=1e-7)


def test_schedule_rejects_decay_before_warmup():
  config = OptimizerConfig(warmup_steps=20)
  with pytest.raises(ConfigError, match="decay_steps = 10"):
    optimizers.learning_rate_schedule(config, num_steps=10)


@pytest.mark.parametrize("field,value", [
    ("peak_learning_rate", 0.0),
    ("peak_learning_rate", -1e-3),
    ("warmup_steps", -1),
    ("b2", 1.0),
    ("weight_decay", -0.1),
    ("grad_clip_norm", 0.0),
    ("end_learning_rate_fraction", 1.5),
])
def test_config_rejects_invalid_value(field, value):
  with pytest.raises(ConfigError, match=f"{field} = {value!r}"):
    OptimizerConfig(**{field: value})


def test_frozen_parameter_is_bit_identical():
  params = _params()
  # -0.0 + 0.0 is +0.0, so adding a zero update would change these bits.
  params["core"]["layers"][0]["moe"]["router"]["kernel"] = (
      params["core"]["layers"][0]["moe"]["router"]["kernel"].at[0, 0].set(
          -0.0))
  optimizer = optimizers.make_optimizer(
      OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=1),
      params, trainable=(r"^encoder/", r"^lm_head/"), num_steps=10)
  opt_state = optimizer.tx.init(params)

  @jax.jit
  def step(params, opt_state, key):
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
    updates, opt_state = optimizer.tx.update(grads, opt_state, params)
    return optimizers.apply_updates(params, updates, optimizer.trainable), (
        opt_state)

  new = params
  for i in range(5):
    new, opt_state = step(new, opt_state, jax.random.key(i))

  flat_old = optimizers.flatten_params(params)
  flat_new = optimizers.flatten_params(new)
  for path in flat_old:
    changed = not np.array_equal(_bits(flat_old[path]), _bits(flat_new[path]))
    trains = path.startswith(("encoder/", "lm_head/"))
    assert changed == trains, path


def test_frozen_parameter_has_no_optimizer_state():
  params = _params()
  optimizer = optimizers.make_optimizer(
      OptimizerConfig(), params, trainable=(r"^encoder/",), num_steps=200)
  opt_state = optimizer.tx.init(params)

  state_paths = [optimizers.path_name(path) for path, _ in
                 jax.tree_util.tree_flatten_with_path(opt_state)[0]]
  moment_paths = [p for p in state_paths if "/mu/" in p or "/nu/" in p]

  # One first and one second moment per trainable parameter, none else.
  assert len(moment_paths) == 2 * 2
  assert all("/encoder/" in p for p in moment_paths)


def test_decay_mask_by_path():
  params = _params()
  optimizer = optimizers.make_optimizer(
      OptimizerConfig(), params, trainable=(".*",), num_steps=200)

  decay = optimizers.flatten_params(optimizer.decay)
  assert decay == {
      "core/layers/0/mlp_norm/scale": False,
      "core/layers/0/moe/bias": True,
      "core/layers/0/moe/router/kernel": True,
      "embed/embedding": False,
      "encoder/layers/0/attention_norm": False,
      "encoder/layers/0/up": True,
      "lm_head/kernel": True,
  }


def test_decay_applies_only_where_masked():
  params = _params()
  config = OptimizerConfig(peak_learning_rate=0.5, warmup_steps=0,
                           decay_steps=10, weight_decay=0.1,
                           grad_clip_norm=None)
  optimizer = optimizers.make_optimizer(config, params, trainable=(".*",),
                                        num_steps=10)
  zeros = jax.tree.map(jnp.zeros_like, params)

  updates, _ = optimizer.tx.update(zeros, optimizer.tx.init(params), params)

  flat_params = optimizers.flatten_params(params)
  flat_updates = optimizers.flatten_params(updates)
  decay = optimizers.flatten_params(optimizer.decay)
  for path, update in flat_updates.items():
    # With zero gradients AdamW's update is -lr * weight_decay * p.
    expected = -0.5 * 0.1 * flat_params[path] if decay[path] else 0.0
    np.testing.assert_allclose(update, expected, rtol=1e-6, atol=1e-7,
                               err_msg=path)


def test_trainable_pattern_matching_nothing_raises():
  with pytest.raises(ConfigError, match=r"'\^encoderr/'.*matches no"):
    optimizers.trainable_mask(_params(), (r"^encoder/", r"^encoderr/"))


def test_empty_trainable_raises():
  with pytest.raises(ConfigError, match="freeze every parameter"):
    optimizers.trainable_mask(_params(), ())


def test_trainable_selecting_all_needs_wildcard():
  patterns = (r"^embed/", r"^encoder/", r"^core/", r"^lm_head/")
  with pytest.raises(ConfigError, match=r"selects every parameter.*'\.\*'"):
    optimizers.trainable_mask(_params(), patterns)

  mask = optimizers.trainable_mask(_params(), (".*",))
  assert all(jax.tree.leaves(mask))


def test_invalid_regular_expression_raises():
  with pytest.raises(ConfigError, match=r"invalid regular expression '\('"):
    optimizers.trainable_mask(_params(), ("(",))


def test_no_decay_pattern_matching_nothing_raises():
  config = OptimizerConfig(no_decay_patterns=("bias_typo$",))
  with pytest.raises(ConfigError, match="'bias_typo\\$'.*no_decay_patterns"):
    optimizers.make_optimizer(config, _params(), trainable=(".*",),
                              num_steps=200)
