"""Tests for the router, the auxiliary losses and the MoE layer."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax.models import moe
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.moe import dropless
from sutra_jax.models.moe.experts import ExpertWeights

TOL = dict(rtol=1e-5, atol=1e-5)

CONFIG = ModelConfig(
    vocab_size=32, d_model=12, num_heads=2, num_kv_heads=1, head_dim=4,
    mlp_dim=16, expert_mlp_dim=10, num_experts=8, experts_per_token=2,
    num_encoder_layers=0, num_core_layers=1, num_decoder_layers=0)


def _softmax(logits):
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def _top2_reference(logits):
  """Returns (experts [N, 2], weights [N, 2]) by sorting each row."""
  probs = _softmax(logits.astype(np.float64))
  experts = np.argsort(-probs, axis=-1)[:, :2]
  chosen = np.take_along_axis(probs, experts, axis=-1)
  return experts, chosen / chosen.sum(axis=-1, keepdims=True)


def _expert_reference(module, token, expert):
  gate = token @ np.asarray(module.gate[...], np.float64)[expert]
  up = token @ np.asarray(module.up[...], np.float64)[expert]
  hidden = gate / (1 + np.exp(-gate)) * up
  return hidden @ np.asarray(module.down[...], np.float64)[expert]


def _random_logits(seed, n=9, e=8):
  return np.random.default_rng(seed).standard_normal((n, e)).astype(
      np.float32) * 2


def test_top2_weights_are_renormalised_softmax():
  logits = _random_logits(0)

  router = moe.route_top_k(jnp.asarray(logits), k=2)

  experts, weights = _top2_reference(logits)
  np.testing.assert_array_equal(router.experts, experts)
  np.testing.assert_allclose(router.weights, weights, **TOL)
  np.testing.assert_allclose(jnp.sum(router.weights, axis=-1), 1.0, **TOL)
  np.testing.assert_allclose(router.probs, _softmax(logits), **TOL)


def test_expert_load_counts_real_token_slots():
  experts = jnp.array([[0, 1], [1, 2], [1, 0], [3, 2]])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])

  load = moe.expert_load(experts, mask, num_experts=4)

  np.testing.assert_allclose(load, [2 / 6, 3 / 6, 1 / 6, 0.0], **TOL)


def test_aux_losses_match_numpy_and_ignore_padding():
  logits = _random_logits(1)
  mask = np.array([1, 1, 0, 1, 1, 0, 0, 1, 1], np.float32)
  router = moe.route_top_k(jnp.asarray(logits), k=2)

  balance = moe.load_balancing_loss(router, jnp.asarray(mask))
  z_loss = moe.router_z_loss(jnp.asarray(logits), jnp.asarray(mask))

  real = mask.astype(bool)
  probs = _softmax(logits.astype(np.float64))[real]
  experts, _ = _top2_reference(logits[real])
  fraction = np.bincount(experts.ravel(), minlength=8) / experts.size
  expected_balance = 8 * np.sum(fraction * probs.mean(axis=0))
  log_z = np.log(np.exp(logits[real].astype(np.float64)).sum(axis=-1))
  np.testing.assert_allclose(balance, expected_balance, **TOL)
  np.testing.assert_allclose(z_loss, np.mean(log_z**2), **TOL)

  # Any logits at the padding positions leave both losses unchanged.
  noisy = logits.copy()
  noisy[~real] = 50 * _random_logits(2)[~real]
  noisy_router = moe.route_top_k(jnp.asarray(noisy), k=2)
  np.testing.assert_allclose(
      moe.load_balancing_loss(noisy_router, jnp.asarray(mask)), balance,
      **TOL)
  np.testing.assert_allclose(
      moe.router_z_loss(jnp.asarray(noisy), jnp.asarray(mask)), z_loss, **TOL)


def test_balance_loss_is_one_for_uniform_routing():
  # Every p_e is 1/8, and each expert gets one of the 4 * 2 slots.
  router = moe.RouterOutput(
      logits=jnp.zeros((4, 8)), probs=jnp.full((4, 8), 1 / 8),
      weights=jnp.full((4, 2), 0.5),
      experts=jnp.array([[0, 1], [2, 3], [4, 5], [6, 7]]))

  np.testing.assert_allclose(
      moe.load_balancing_loss(router, jnp.ones(4)), 1.0, **TOL)


def test_all_padding_gives_zero_losses():
  logits = jnp.asarray(_random_logits(3))
  router = moe.route_top_k(logits, k=2)
  mask = jnp.zeros(logits.shape[0])

  assert float(moe.load_balancing_loss(router, mask)) == 0.0
  assert float(moe.router_z_loss(logits, mask)) == 0.0


def test_moe_output_matches_per_token_loop():
  module = moe.MoE(CONFIG, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 5, 12)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], np.float32)

  out, aux = nnx.jit(lambda m, x, t: m(x, t))(module, jnp.asarray(x),
                                                jnp.asarray(mask))

  tokens = x.reshape(10, 12).astype(np.float64)
  logits = tokens @ np.asarray(module.router.kernel[...], np.float64)
  experts, weights = _top2_reference(logits)
  expected = np.zeros_like(tokens)
  # Padding tokens are dispatched nowhere, so their output stays zero.
  for n in np.flatnonzero(mask.ravel()):
    for j in range(2):
      expected[n] += weights[n, j] * _expert_reference(module, tokens[n],
                                                       experts[n, j])
  np.testing.assert_allclose(out.reshape(10, 12), expected, **TOL)

  real = mask.ravel().astype(bool)
  load = np.bincount(experts[real].ravel(), minlength=8) / (2 * real.sum())
  np.testing.assert_allclose(aux["expert_load"], load, **TOL)
  assert aux["load_balancing_loss"].shape == ()
  assert aux["router_z_loss"].shape == ()


def test_dispatch_is_dropless_when_routing_is_skewed():
  module = moe.MoE(CONFIG, rngs=nnx.Rngs(1))
  tokens = np.random.default_rng(5).standard_normal((6, 12)).astype(
      np.float32)
  # Every token picks experts 3 and 5, and the other six experts get nothing.
  experts = jnp.tile(jnp.array([[3, 5]], jnp.int32), (6, 1))
  weights = jnp.tile(jnp.array([[0.75, 0.25]], jnp.float32), (6, 1))
  expert_weights = ExpertWeights(module.gate[...], module.up[...],
                                 module.down[...])

  result = jax.jit(lambda t: dropless.dispatch(
      t, experts, weights, expert_weights, num_experts=8))(
          jnp.asarray(tokens))

  for n in range(6):
    token = tokens[n].astype(np.float64)
    expected = (0.75 * _expert_reference(module, token, 3) +
                0.25 * _expert_reference(module, token, 5))
    np.testing.assert_allclose(result.output[n], expected, **TOL)
  assert float(result.dropped_slots) == 0.0


def test_balance_loss_grows_as_routing_collapses():
  # Logits pull harder and harder towards expert 0; the loss is exactly 1
  # at zero pull (uniform probabilities) and rises towards E / k * k = 8 *
  # (1 * 1/2 + 0 * 1/2) = 4 when every token sends half its slots to expert
  # 0 with probability 1.
  noise = _random_logits(6, n=64)
  mask = jnp.ones(64)
  losses = []
  for pull in (0.0, 1.0, 2.0, 4.0, 8.0, 32.0):
    logits = 0.01 * noise * (pull > 0) + pull * np.eye(8)[0]
    router = moe.route_top_k(jnp.asarray(logits, jnp.float32), k=2)
    losses.append(float(moe.load_balancing_loss(router, mask)))

  assert losses[0] == 1.0
  assert all(b > a for a, b in zip(losses, losses[1:])), losses
  np.testing.assert_allclose(losses[-1], 4.0, rtol=1e-4)
