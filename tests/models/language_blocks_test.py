"""Tests for the language-routed encoder and decoder blocks."""

import dataclasses

from flax import nnx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.models import language_blocks
from sutra_jax.models.config import ModelConfig

TOL = dict(rtol=1e-5, atol=1e-5)

# Four languages in three groups: languages 1 and 3 share group 1.
CONFIG = ModelConfig(
    vocab_size=32, d_model=16, num_heads=4, num_kv_heads=2, head_dim=4,
    mlp_dim=20, expert_mlp_dim=8, num_experts=2, experts_per_token=1,
    num_encoder_layers=1, num_core_layers=0, num_decoder_layers=0,
    num_language_groups=3, language_group_ids=(0, 1, 2, 1))


def _weights(block):
  return {name: np.asarray(getattr(block, name)[...], np.float64)
          for name in ("attention_norm", "query", "key", "value", "out",
                       "mlp_norm", "gate", "up", "down")}


def _norm(x, scale, eps):
  return x / np.sqrt(np.mean(x**2) + eps) * scale


def _rotate(x, position, theta):
  half = x.shape[-1] // 2
  pairs = (x[..., :half] + 1j * x[..., half:]) * np.exp(
      1j * position * theta**(-np.arange(half) / half))
  return np.concatenate([pairs.real, pairs.imag], axis=-1)


def _block_reference(block, x, groups, segment_ids, positions):
  """Applies each token's group weights one token at a time, in float64."""
  w, eps, theta = _weights(block), block.norm_eps, block.rope_theta
  x = np.asarray(x, np.float64).copy()
  batch, length, _ = x.shape
  num_heads, num_kv = w["query"].shape[2], w["key"].shape[2]
  for b in range(batch):
    q, k, v = [], [], []
    for t in range(length):
      g = groups[b, t]
      h = _norm(x[b, t], w["attention_norm"][g], eps)
      q.append(_rotate(np.einsum("d,dhk->hk", h, w["query"][g]),
                       positions[b, t], theta))
      k.append(_rotate(np.einsum("d,dhk->hk", h, w["key"][g]),
                       positions[b, t], theta))
      v.append(np.einsum("d,dhk->hk", h, w["value"][g]))
    seg = segment_ids[b]
    updates = np.zeros_like(x[b])
    for t in range(length):
      keys = [s for s in range(t + 1) if seg[s] == seg[t] and seg[s]]
      if not keys:
        continue  # Padding: the test ignores its output.
      heads = np.zeros((num_heads, q[0].shape[-1]))
      for head in range(num_heads):
        kv = head // (num_heads // num_kv)
        scores = np.array([q[t][head] @ k[s][kv] for s in keys])
        scores /= np.sqrt(heads.shape[-1])
        probs = np.exp(scores - scores.max())
        values = np.array([v[s][kv] for s in keys])
        heads[head] = probs / probs.sum() @ values
      updates[t] = np.einsum("hk,hkd->d", heads, w["out"][groups[b, t]])
    x[b] += updates
    for t in range(length):
      g = groups[b, t]
      h = _norm(x[b, t], w["mlp_norm"][g], eps)
      gate, up = h @ w["gate"][g], h @ w["up"][g]
      x[b, t] += (gate / (1 + np.exp(-gate)) * up) @ w["down"][g]
  return x


def _apply_stack(stack, x, language_ids, segment_ids, positions):
  return stack(x, language_ids, segment_ids, positions)


_run_stack = nnx.jit(_apply_stack)


@pytest.fixture
def make_stack(random_module):
  """Returns `f(seed, config)`: a LanguageStack with random parameters.

  The norm scales differ per group, so the tests see which group's norm
  each token used.
  """
  def make(seed=0, config=CONFIG):
    return random_module(lambda: language_blocks.LanguageStack(
        config, config.num_encoder_layers, rngs=nnx.Rngs(0)), seed)
  return make


def test_block_matches_per_token_group_loop(make_stack):
  stack = make_stack()
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 6, 16)).astype(np.float32)
  # Languages mix within rows, and group 2 (language 2) appears once.
  language_ids = np.array([[0, 1, 3, 0, 2, 1], [3, 3, 0, 1, 1, 0]])
  segment_ids = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 0]])
  positions = np.array([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 0]])

  out = _run_stack(stack, jnp.asarray(x), jnp.asarray(language_ids),
                   jnp.asarray(segment_ids), jnp.asarray(positions))

  groups = np.asarray(CONFIG.language_group_ids)[language_ids]
  expected = _block_reference(stack.layers[0], x, groups, segment_ids,
                              positions)
  real = segment_ids != 0
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], **TOL)


def test_empty_group_gets_zero_gradient(make_stack):
  stack = make_stack(seed=2)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 4, 16)),
                  jnp.float32)
  # No token of group 2 (language 2).
  language_ids = jnp.array([[0, 1, 3, 0]])
  ones = jnp.ones((1, 4), jnp.int32)

  def loss(stack):
    return jnp.sum(stack(x, language_ids, ones, jnp.arange(4)[None])**2)

  grads = nnx.jit(nnx.grad(loss))(stack)

  for name in ("query", "out", "gate", "down", "attention_norm"):
    grad = np.asarray(getattr(grads.layers[0], name)[...])
    assert np.all(grad[2] == 0), name
    assert np.any(grad[0] != 0), name
    assert np.any(grad[1] != 0), name


def test_languages_of_one_group_share_weights(make_stack):
  stack = make_stack(seed=4)
  x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 3, 16)),
                  jnp.float32)
  ones = jnp.ones((1, 3), jnp.int32)
  positions = jnp.arange(3)[None]

  as_language_1 = _run_stack(stack, x, jnp.full((1, 3), 1), ones, positions)
  as_language_3 = _run_stack(stack, x, jnp.full((1, 3), 3), ones, positions)
  as_language_2 = _run_stack(stack, x, jnp.full((1, 3), 2), ones, positions)

  np.testing.assert_array_equal(as_language_1, as_language_3)
  assert float(jnp.max(jnp.abs(as_language_1 - as_language_2))) > 1e-3


def test_routing_maps_languages_to_groups(make_stack):
  stack = make_stack()

  routing = stack.routing(jnp.array([[3, 0], [2, 1]]))

  np.testing.assert_array_equal(routing.group_ids, [1, 0, 2, 1])
  np.testing.assert_array_equal(routing.group_sizes, [1, 2, 1])


def test_stack_shares_one_routing_across_layers(make_stack, monkeypatch):
  stack = make_stack(config=dataclasses.replace(CONFIG, num_encoder_layers=2))
  calls = []
  original = language_blocks.grouped.make_routing
  monkeypatch.setattr(language_blocks.grouped, "make_routing",
                      lambda *a: calls.append(1) or original(*a))

  # Tracing is enough to count the calls, so nothing is compiled.
  nnx.eval_shape(_apply_stack, stack, jnp.zeros((1, 3, 16)),
                 jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), jnp.int32),
                 jnp.arange(3)[None])

  assert len(calls) == 1


def test_remat_gives_same_output(make_stack):
  config = dataclasses.replace(CONFIG, remat=True)
  plain, remat = make_stack(seed=6), make_stack(seed=6, config=config)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((1, 4, 16)),
                  jnp.float32)
  args = (jnp.array([[0, 1, 2, 3]]), jnp.ones((1, 4), jnp.int32),
          jnp.arange(4)[None])

  np.testing.assert_allclose(_run_stack(remat, x, *args),
                             _run_stack(plain, x, *args), **TOL)


def _shard_map_inputs(jaxpr):
  """Returns the input avals of the first shard_map in `jaxpr`, nested too."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "shard_map":
      return [v.aval for v in eqn.invars]
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found = _shard_map_inputs(sub)
      if found:
        return found
  return None


def test_sharded_stack_gathers_bfloat16_weights(make_stack):
  # Every device gathers all groups' matrices, so they cross the shard_map
  # boundary in bfloat16. The norm scales stay float32.
  config = dataclasses.replace(CONFIG, dtype="bfloat16")
  stack = make_stack(seed=8, config=config)
  graphdef, state = nnx.split(stack)
  x = jnp.asarray(np.random.default_rng(9).standard_normal((8, 4, 16)),
                  jnp.bfloat16)
  args = (jnp.asarray(np.arange(32).reshape(8, 4) % 4),
          jnp.ones((8, 4), jnp.int32), jnp.tile(jnp.arange(4), (8, 1)))

  def apply(state, x, *args):
    return nnx.merge(graphdef, state)(x, *args)

  with jax.set_mesh(partitioning.make_mesh(data=8)):
    jaxpr = jax.make_jaxpr(apply)(state, x, *args)
    sharded = jax.jit(apply)(state, x, *args)
  unsharded = jax.jit(apply)(state, x, *args)

  inputs = _shard_map_inputs(jaxpr.jaxpr)
  # The per-group parameters are the inputs whose first axis is the 3 groups.
  matrices = [a for a in inputs if a.ndim >= 3 and a.shape[0] == 3]
  norms = [a for a in inputs if a.ndim == 2 and a.shape[0] == 3]
  assert len(matrices) == 7
  assert all(a.dtype == jnp.bfloat16 for a in matrices)
  assert len(norms) == 2
  assert all(a.dtype == jnp.float32 for a in norms)
  np.testing.assert_array_equal(np.asarray(sharded, np.float32),
                                np.asarray(unsharded, np.float32))


def _psum_axes(jaxpr):
  """Returns the mesh axes of every psum in `jaxpr`, nested ones included."""
  axes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name.startswith("psum"):
      axes.update(eqn.params["axes"])
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      axes |= _psum_axes(sub)
  return axes


def test_tensor_parallel_stack_matches_unsharded(make_stack):
  # 4 heads, 2 KV heads and an MLP width of 20 split over tensor = 2.
  stack = make_stack(seed=10)
  graphdef, state = nnx.split(stack)
  x = jnp.asarray(np.random.default_rng(11).standard_normal((4, 4, 16)),
                  jnp.float32)
  args = (jnp.asarray(np.arange(16).reshape(4, 4) % 4),
          jnp.ones((4, 4), jnp.int32), jnp.tile(jnp.arange(4), (4, 1)))

  upstream = jnp.asarray(
      np.random.default_rng(12).standard_normal((4, 4, 16)), jnp.float32)

  def loss(state, x, *args):
    return jnp.sum(nnx.merge(graphdef, state)(x, *args) * upstream)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  with jax.set_mesh(partitioning.make_mesh(data=4, tensor=2)):
    jaxpr = jax.make_jaxpr(grad)(state, x, *args)
    sharded_loss, sharded_grads = grad(state, x, *args)
  unsharded_loss, unsharded_grads = grad(state, x, *args)

  assert "tensor" in _psum_axes(jaxpr.jaxpr)
  np.testing.assert_allclose(sharded_loss, unsharded_loss, **TOL)
  for got, want in zip(jax.tree.leaves(sharded_grads),
                       jax.tree.leaves(unsharded_grads)):
    np.testing.assert_allclose(got, want, **TOL)
