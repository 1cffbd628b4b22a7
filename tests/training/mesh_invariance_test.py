"""One train step's losses and gradients do not depend on the mesh.

The loss, the load-balancing loss, the router z-loss and every gradient of
one step are computed on five meshes over the 8 host devices and compared
with one device. Padding added to a batch changes none of the losses.
"""

import dataclasses
import functools

from flax import nnx
import jax
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel
from sutra_jax.training import train_step as train_step_lib
from tests.training.training_testlib import NUM_LANGUAGES, VOCAB_SIZE, synthetic_batch

# rtol is float32's reordering error; atol covers gradients that are
# near zero, whose relative error is not meaningful.
TOL = dict(rtol=1e-5, atol=1e-6)

CONFIG = ModelConfig(
    vocab_size=VOCAB_SIZE, d_model=16, num_heads=4, num_kv_heads=2,
    head_dim=4, mlp_dim=16, expert_mlp_dim=8, num_experts=8,
    experts_per_token=2, num_encoder_layers=1, num_core_layers=2,
    num_decoder_layers=1, num_language_groups=2, language_group_ids=(0, 1, 1))

MESHES = {
    "1x1": None,
    "data=8": dict(data=8),
    "data=2,expert=4": dict(data=2, expert=4),
    "expert=8": dict(expert=8),
    "data=2,expert=2,tensor=2": dict(data=2, expert=2, tensor=2),
}
LOSSES = ("loss", "cross_entropy", "load_balancing_loss", "router_z_loss")


@functools.lru_cache(maxsize=None)
def _host_params(config):
  model = SutraModel(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, jax.device_get(nnx.to_pure_dict(params))


def _loss_and_grads(config, mesh_shape, batch):
  """Runs the trainer's loss and its gradient on a mesh."""
  graphdef, host_params = _host_params(config)
  if mesh_shape is None:
    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  else:
    mesh = partitioning.make_mesh(**mesh_shape)
  abstract = nnx.state(nnx.eval_shape(lambda: SutraModel(
      config, rngs=nnx.Rngs(0))), nnx.Param)
  shardings = nnx.to_pure_dict(partitioning.state_shardings(mesh, abstract))
  params = jax.device_put(host_params, shardings)
  batch_sharding = partitioning.batch_sharding(
      mesh, batch_size=batch["decoder_input_tokens"].shape[0])
  device_batch = train_step_lib.device_batch(batch, batch_sharding)

  def objective(params, batch):
    return train_step_lib.compute_loss(
        params, graphdef, batch, train_step_lib.LossWeights(),
        NUM_LANGUAGES)

  grad_fn = jax.jit(jax.grad(objective, has_aux=True))
  with jax.set_mesh(mesh):
    grads, metrics = grad_fn(params, device_batch)
  return jax.device_get(grads), {k: float(metrics[k]) for k in LOSSES}


@pytest.mark.slow
@pytest.mark.parametrize("dispatch,grouped_matmul", [
    ("dropless", "auto"), ("expert_parallel", "auto"),
    # The TPU kernels' rule, interpreted, inside shard_map.
    ("expert_parallel", "megablox")])
def test_losses_and_gradients_are_mesh_invariant(dispatch, grouped_matmul):
  config = dataclasses.replace(CONFIG, moe_dispatch=dispatch,
                               grouped_matmul=grouped_matmul)
  batch = synthetic_batch(0, 8, 16)
  expected_grads, expected = _loss_and_grads(config, None, batch)

  for name, shape in list(MESHES.items())[1:]:
    grads, losses = _loss_and_grads(config, shape, batch)
    for key in LOSSES:
      np.testing.assert_allclose(losses[key], expected[key], **TOL,
                                 err_msg=f"{name}: {key}")
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads),
                                 jax.tree.leaves(expected_grads)):
      np.testing.assert_allclose(
          got, want, **TOL,
          err_msg=f"{name}: {jax.tree_util.keystr(path)}")


def _pad(batch, rows, length):
  """Adds padding positions to every row and all-padding rows."""
  padded = {}
  for key, value in batch.items():
    b, l = value.shape
    out = np.zeros((b + rows, l + length), value.dtype)
    out[:b, :l] = value
    padded[key] = out
  return padded


def test_padding_changes_no_loss():
  batch = synthetic_batch(1, 4, 16)
  _, expected = _loss_and_grads(CONFIG, None, batch)

  _, losses = _loss_and_grads(CONFIG, dict(data=8), _pad(batch, 4, 8))

  for key in LOSSES:
    np.testing.assert_allclose(losses[key], expected[key], **TOL,
                               err_msg=key)
