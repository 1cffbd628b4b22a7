"""Tests for the loss and the jitted train step, against NumPy references."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from sutra_jax import partitioning
from sutra_jax.models.config import ModelConfig
from sutra_jax.models.sutra import SutraModel
from sutra_jax.training import optimizers
from sutra_jax.training import train_step as train_step_lib
from sutra_jax.training.train_step import TrainState
from tests.training.training_testlib import NUM_LANGUAGES, VOCAB_SIZE, synthetic_batch

TOL = dict(rtol=1e-5, atol=1e-5)

CONFIG = ModelConfig(
    vocab_size=VOCAB_SIZE, d_model=16, num_heads=2, num_kv_heads=1,
    head_dim=8, mlp_dim=32, expert_mlp_dim=16, num_experts=4,
    experts_per_token=2, num_encoder_layers=1, num_core_layers=1,
    num_decoder_layers=1, num_language_groups=2, language_group_ids=(0, 1, 1))


def _log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _reference_losses(logits, batch):
  """Cross-entropy and per-language sums with explicit NumPy loops."""
  log_probs = _log_softmax(np.asarray(logits, np.float64))
  targets = batch["decoder_target_tokens"]
  weights = batch["decoder_loss_weights"]
  languages = batch["decoder_language_ids"]
  loss_sum = np.zeros(NUM_LANGUAGES)
  weight_sum = np.zeros(NUM_LANGUAGES)
  for b in range(targets.shape[0]):
    for t in range(targets.shape[1]):
      token_loss = -log_probs[b, t, targets[b, t]] * weights[b, t]
      loss_sum[languages[b, t]] += token_loss
      weight_sum[languages[b, t]] += weights[b, t]
  return loss_sum.sum() / weight_sum.sum(), loss_sum, weight_sum


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(1)
  batch = synthetic_batch(0, 4, 12)
  logits = rng.normal(size=(4, 12, VOCAB_SIZE)).astype(np.float32)

  got = train_step_lib.cross_entropy(
      jnp.asarray(logits), batch["decoder_target_tokens"],
      batch["decoder_loss_weights"], batch["decoder_language_ids"],
      NUM_LANGUAGES)

  loss, loss_sum, weight_sum = _reference_losses(logits, batch)
  np.testing.assert_allclose(got["cross_entropy"], loss, **TOL)
  np.testing.assert_allclose(got["language_loss_sum"], loss_sum, **TOL)
  np.testing.assert_allclose(got["language_weight_sum"], weight_sum, **TOL)
  np.testing.assert_allclose(got["weight_sum"], weight_sum.sum(), **TOL)


def test_cross_entropy_of_all_padding_is_zero():
  got = train_step_lib.cross_entropy(
      jnp.ones((2, 3, 5)), jnp.zeros((2, 3), jnp.int32),
      jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), 1)

  assert float(got["cross_entropy"]) == 0.0


def _setup(mesh):
  model = partitioning.create_sharded_model(CONFIG, mesh, 0)
  graphdef, params_state = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params_state)
  param_shardings = nnx.to_pure_dict(
      partitioning.state_shardings(mesh, params_state))
  optimizer = optimizers.make_optimizer(
      optimizers.OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=1),
      params, trainable=(".*",), num_steps=10)
  shardings = train_step_lib.train_state_shardings(
      mesh, param_shardings, jax.eval_shape(optimizer.tx.init, params))
  state = TrainState(
      step=jax.device_put(np.int32(0), shardings.step), params=params,
      opt_state=jax.jit(optimizer.tx.init,
                        out_shardings=shardings.opt_state)(params),
      rng=jax.device_put(jax.random.key_data(jax.random.key(0)),
                         shardings.rng))
  return model, graphdef, optimizer, shardings, state


def test_train_step_loss_matches_numpy():
  mesh = partitioning.make_mesh(data=4, fsdp=2)
  model, graphdef, optimizer, shardings, state = _setup(mesh)
  batch = synthetic_batch(0, 8, 32)
  # The reference runs first: the step donates the arrays the model shares.
  output = nnx.jit(train_step_lib.run_model)(
      model, jax.tree.map(jnp.asarray, batch))
  reference, loss_sum, weight_sum = _reference_losses(output.logits, batch)
  load_balancing = float(output.aux["load_balancing_loss"])
  router_z = float(output.aux["router_z_loss"])
  weights = train_step_lib.LossWeights(load_balancing=0.01, router_z=0.001)
  batch_sharding = partitioning.batch_sharding(mesh, batch_size=8)
  step = train_step_lib.make_train_step(
      graphdef, optimizer, mesh=mesh, state_shardings=shardings,
      batch_sharding=batch_sharding, loss_weights=weights,
      num_languages=NUM_LANGUAGES)

  new_state, metrics = step(state,
                            train_step_lib.device_batch(batch, batch_sharding))

  np.testing.assert_allclose(metrics["cross_entropy"], reference, **TOL)
  np.testing.assert_allclose(
      metrics["loss"], reference + 0.01 * load_balancing + 0.001 * router_z,
      **TOL)
  np.testing.assert_allclose(metrics["load_balancing_loss"], load_balancing,
                             **TOL)
  np.testing.assert_allclose(metrics["language_loss_sum"], loss_sum, **TOL)
  np.testing.assert_allclose(metrics["language_weight_sum"], weight_sum,
                             **TOL)
  assert int(new_state.step) == 1
  # Step 0 of a 1-step warm-up has learning rate 0.
  assert float(metrics["learning_rate"]) == 0.0
  assert float(metrics["grad_norm"]) > 0


def test_opt_state_follows_param_shardings():
  mesh = partitioning.make_mesh(data=4, fsdp=2)
  abstract = nnx.eval_shape(lambda: SutraModel(CONFIG, rngs=nnx.Rngs(0)))
  params_state = nnx.state(abstract, nnx.Param)
  params = nnx.to_pure_dict(params_state)
  param_shardings = nnx.to_pure_dict(
      partitioning.state_shardings(mesh, params_state))
  optimizer = optimizers.make_optimizer(
      optimizers.OptimizerConfig(), params, trainable=(r"^embed/",
                                                       r"^core/"),
      num_steps=200)

  shardings = train_step_lib.train_state_shardings(
      mesh, param_shardings, jax.eval_shape(optimizer.tx.init, params))

  flat_params = optimizers.flatten_params(param_shardings)
  flat_state = optimizers.flatten_params(shardings.opt_state)
  embed_moment = [s for p, s in flat_state.items()
                  if p.endswith("/mu/embed/embedding")]
  assert embed_moment == [flat_params["embed/embedding"]]
  assert flat_params["embed/embedding"].spec != jax.sharding.PartitionSpec()
  counts = [s for p, s in flat_state.items() if p.endswith("count")]
  assert counts and all(s.spec == jax.sharding.PartitionSpec()
                        for s in counts)
