"""Train steps compiled for TPU: `ragged_all_to_all` and the megablox kernels.

XLA:CPU cannot run `jax.lax.ragged_all_to_all`, and the megablox kernels
are compiled with Mosaic only for TPU, so both are checked by compiling a
whole train step ahead of time for a TPU topology with `libtpu` (the `[tpu]`
extra) on this CPU host. The tests skip where `libtpu` is not installed.
"""

import dataclasses

from flax import nnx
import jax
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel
from sutra_jax.training import optimizers
from sutra_jax.training import train_step as train_step_lib

CONFIG = ModelConfig(
    vocab_size=256, d_model=64, num_heads=4, num_kv_heads=2, head_dim=16,
    mlp_dim=128, expert_mlp_dim=128, num_experts=8, experts_per_token=2,
    num_encoder_layers=0, num_core_layers=2, num_decoder_layers=0,
    moe_dispatch="expert_parallel", expert_exchange="ragged_all_to_all",
    grouped_matmul="ragged_dot")


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def _compile_train_step(config, mesh):
  """Lowers and compiles the train step of `config` on `mesh`, abstractly."""
  abstract_model = nnx.eval_shape(lambda: SutraModel(config,
                                                     rngs=nnx.Rngs(0)))
  graphdef, param_state = nnx.split(abstract_model, nnx.Param)
  params = nnx.to_pure_dict(param_state)
  param_shardings = nnx.to_pure_dict(
      partitioning.state_shardings(mesh, param_state))
  optimizer = optimizers.make_optimizer(
      optimizers.OptimizerConfig(warmup_steps=1), params,
      trainable=optimizers.TRAIN_EVERYTHING, num_steps=10)
  opt_state = jax.eval_shape(optimizer.tx.init, params)
  shardings = train_step_lib.train_state_shardings(mesh, param_shardings,
                                                   opt_state)
  state = _abstract(
      train_step_lib.TrainState(
          step=jax.ShapeDtypeStruct((), np.int32), params=params,
          opt_state=opt_state, rng=jax.ShapeDtypeStruct((2,), np.uint32)),
      shardings)
  batch_sharding = partitioning.batch_sharding(mesh, batch_size=8)
  batch = {name: jax.ShapeDtypeStruct(
      (8, 32), np.float32 if name == "decoder_loss_weights" else np.int32,
      sharding=batch_sharding) for name in train_step_lib.BATCH_FEATURES}
  step = train_step_lib.make_train_step(
      graphdef, optimizer, mesh=mesh, state_shardings=shardings,
      batch_sharding=batch_sharding,
      loss_weights=train_step_lib.LossWeights(), num_languages=1)
  with jax.set_mesh(mesh):
    lowered = step.lower(state, batch)
  return lowered, lowered.compile()


def test_ragged_exchange_compiles_for_tpu(tpu_devices):
  mesh = partitioning.make_mesh(data=1, expert=4, devices=tpu_devices)

  lowered, compiled = _compile_train_step(CONFIG, mesh)

  assert "ragged_all_to_all" in lowered.as_text()
  assert "ragged-all-to-all" in compiled.as_text()
  assert compiled.memory_analysis().argument_size_in_bytes > 0
  assert compiled.cost_analysis()["flops"] > 0


def test_megablox_kernels_compile_inside_shard_map(tpu_devices):
  # Dropless dispatch over 4 data shards and two language groups: both the
  # experts and the language blocks run their grouped matmuls in
  # `jax.shard_map`, where the kernels need the nested unchecked region.
  config = dataclasses.replace(
      CONFIG, moe_dispatch="dropless", grouped_matmul="megablox",
      num_encoder_layers=1, num_decoder_layers=1, num_language_groups=2,
      language_group_ids=(0, 1))
  mesh = partitioning.make_mesh(data=4, devices=tpu_devices)

  _, compiled = _compile_train_step(config, mesh)

  text = compiled.as_text()
  assert "jit(gmm)/pallas_call" in text
  assert "jit(tgmm)/pallas_call" in text
  assert "ragged-dot" not in text


def test_unknown_exchange_is_rejected():
  with pytest.raises(Exception, match="expert_exchange"):
    dataclasses.replace(CONFIG, expert_exchange="ragged")
