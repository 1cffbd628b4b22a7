"""Each MoE dispatch strategy against a per-token NumPy loop.

The reference routes every token with NumPy (float64 softmax, top-2,
renormalised weights), applies its experts one at a time and sums them with
the weights. Capacity and buffer drops are replayed in the order that the
strategies document.
"""

import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.models import moe
from sutra_jax.models.config import ModelConfig

TOL = dict(rtol=1e-5, atol=1e-5)
NUM_EXPERTS = 8

CONFIG = ModelConfig(
    vocab_size=32, d_model=16, num_heads=2, num_kv_heads=1, head_dim=4,
    mlp_dim=16, expert_mlp_dim=12, num_experts=NUM_EXPERTS,
    experts_per_token=2, num_encoder_layers=0, num_core_layers=1,
    num_decoder_layers=0)


@pytest.fixture(scope="module")
def params():
  module = moe.MoE(CONFIG, rngs=nnx.Rngs(0))
  return nnx.state(module)


def _module(params, **overrides):
  config = dataclasses.replace(CONFIG, **overrides)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: moe.MoE(config,
                                                         rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, params)


def _inputs(seed, batch=4, length=6, padding=True):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, length, CONFIG.d_model)).astype(np.float32)
  mask = np.ones((batch, length), np.float32)
  if padding:
    mask[1, 4:] = 0
    mask[3, 1:] = 0
  return x, mask


def _route(params, tokens):
  kernel = np.asarray(params["router"]["kernel"][...], np.float64)
  logits = tokens @ kernel
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  experts = np.argsort(-probs, axis=-1, kind="stable")[:, :2]
  chosen = np.take_along_axis(probs, experts, -1)
  return experts, chosen / chosen.sum(-1, keepdims=True)


def _expert(params, token, e):
  weight = lambda name: np.asarray(params[name][...], np.float64)[e]
  gate, up = token @ weight("gate"), token @ weight("up")
  return (gate / (1 + np.exp(-gate)) * up) @ weight("down")


def _reference(params, x, mask, kept=None):
  """Returns the [N, D] output; `kept[n, j]` False drops copy (n, j)."""
  tokens = x.reshape(-1, x.shape[-1]).astype(np.float64)
  experts, weights = _route(params, tokens)
  out = np.zeros_like(tokens)
  for n in np.flatnonzero(mask.ravel()):
    for j in range(2):
      if kept is None or kept[n, j]:
        out[n] += weights[n, j] * _expert(params, tokens[n], experts[n, j])
  return out


def _capacity_kept(params, x, mask, capacity):
  """Replays the capacity rule: first choices first, then token order."""
  experts, _ = _route(params, x.reshape(-1, x.shape[-1]).astype(np.float64))
  used = np.zeros(NUM_EXPERTS, int)
  kept = np.zeros(experts.shape, bool)
  for j in range(2):
    for n in np.flatnonzero(mask.ravel()):
      if used[experts[n, j]] < capacity:
        used[experts[n, j]] += 1
        kept[n, j] = True
  return kept


def _run(module, x, mask, mesh=None):
  call = nnx.jit(lambda m, x, t: m(x, t))
  if mesh is None:
    return call(module, jnp.asarray(x), jnp.asarray(mask))
  with jax.set_mesh(mesh):
    return call(module, jnp.asarray(x), jnp.asarray(mask))


@pytest.mark.parametrize("overrides", [
    dict(moe_dispatch="dropless", grouped_matmul="tiled"),
    dict(moe_dispatch="dropless", grouped_matmul="ragged_dot"),
    dict(moe_dispatch="dropless", grouped_matmul="megablox"),
    # 12 slots per expert hold every copy of the 20 real tokens.
    dict(moe_dispatch="capacity", capacity_factor=4.0),
], ids=["dropless-tiled", "dropless-ragged", "dropless-megablox",
         "capacity-no-drops"])
def test_strategy_matches_per_token_loop(params, overrides):
  x, mask = _inputs(0)

  out, aux = _run(_module(params, **overrides), x, mask)

  np.testing.assert_allclose(out.reshape(-1, CONFIG.d_model),
                             _reference(params, x, mask), **TOL)
  assert float(aux["dropped_slots"]) == 0.0


@pytest.mark.parametrize("factor", [0.5, 1.0])
def test_capacity_drops_exactly_the_reference_copies(params, factor):
  x, mask = _inputs(1, padding=False)
  num_tokens = mask.size
  capacity = max(1, math.ceil(factor * num_tokens * 2 / NUM_EXPERTS))
  kept = _capacity_kept(params, x, mask, capacity)
  assert not kept.all(), "the test needs some drops"

  out, aux = _run(_module(params, moe_dispatch="capacity",
                          capacity_factor=factor), x, mask)

  np.testing.assert_allclose(out.reshape(-1, CONFIG.d_model),
                             _reference(params, x, mask, kept), **TOL)
  assert float(aux["dropped_slots"]) == (~kept).sum()


def test_capacity_fits_single_token(params):
  x, mask = _inputs(2, batch=1, length=1, padding=False)

  out, aux = _run(_module(params, moe_dispatch="capacity",
                          capacity_factor=0.01), x, mask)

  np.testing.assert_allclose(out.reshape(-1, CONFIG.d_model),
                             _reference(params, x, mask), **TOL)
  assert float(aux["dropped_slots"]) == 0.0


EXPERT_MESHES = {
    "expert=8": dict(expert=8),
    "data=2,expert=4": dict(data=2, expert=4),
    "data=2,expert=2,tensor=2": dict(data=2, expert=2, tensor=2),
}


@pytest.mark.parametrize("mesh_shape", EXPERT_MESHES.values(),
                         ids=EXPERT_MESHES.keys())
@pytest.mark.parametrize("length", [6, 5], ids=["even", "padded-rows"])
def test_expert_parallel_matches_per_token_loop(params, mesh_shape, length):
  # 4 x 5 = 20 tokens do not split over 8 devices, which exercises the
  # padding of the token rows.
  x, mask = _inputs(3, length=length)
  mesh = partitioning.make_mesh(**mesh_shape)

  out, aux = _run(_module(params, moe_dispatch="expert_parallel"), x, mask,
                  mesh)

  np.testing.assert_allclose(out.reshape(-1, CONFIG.d_model),
                             _reference(params, x, mask), **TOL)
  assert float(aux["dropped_slots"]) == 0.0


def _buffer_kept(params, x, mask, num_devices, num_shards, factor):
  """Replays the all_to_all buffer rule per device, in copy order."""
  tokens = x.reshape(-1, x.shape[-1]).astype(np.float64)
  experts, _ = _route(params, tokens)
  real = mask.ravel().astype(bool)
  per_device = tokens.shape[0] // num_devices
  rows = math.ceil(factor * per_device * 2 / num_shards)
  kept = np.zeros(experts.shape, bool)
  for device in range(num_devices):
    used = np.zeros(num_shards, int)
    for n in range(device * per_device, (device + 1) * per_device):
      for j in range(2):
        destination = experts[n, j] // (NUM_EXPERTS // num_shards)
        if real[n] and used[destination] < rows:
          used[destination] += 1
          kept[n, j] = True
  return kept


def test_expert_parallel_buffer_drops_are_counted(params):
  x, mask = _inputs(4, batch=8, length=4, padding=False)
  mesh = partitioning.make_mesh(expert=8)
  kept = _buffer_kept(params, x, mask, num_devices=8, num_shards=8,
                      factor=2.0)
  assert not kept.all(), "the test needs some drops"

  out, aux = _run(_module(params, moe_dispatch="expert_parallel",
                          expert_buffer_factor=2.0), x, mask, mesh)

  np.testing.assert_allclose(out.reshape(-1, CONFIG.d_model),
                             _reference(params, x, mask, kept), **TOL)
  assert float(aux["dropped_slots"]) == (~kept).sum()


def test_expert_parallel_gradients_match_dropless(params):
  x, mask = _inputs(5)
  mesh = partitioning.make_mesh(data=2, expert=2, tensor=2)

  def grads(module, mesh):
    def loss(m, x):
      out, aux = m(x, jnp.asarray(mask))
      return jnp.sum(jnp.sin(out)) + aux["load_balancing_loss"]
    fn = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    if mesh is None:
      return fn(module, jnp.asarray(x))
    with jax.set_mesh(mesh):
      return fn(module, jnp.asarray(x))

  expected = grads(_module(params, moe_dispatch="dropless"), None)
  got = grads(_module(params, moe_dispatch="expert_parallel"), mesh)

  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, **TOL)
