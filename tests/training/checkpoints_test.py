"""Tests for saving, resuming and partially restoring checkpoints."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from sutra_jax import partitioning
from sutra_jax.errors import CheckpointError
from sutra_jax.training import checkpoints
from sutra_jax.training import optimizers
from sutra_jax.training.train_step import TrainState


def _params():
  rng = np.random.default_rng(0)
  return {
      "embed": {"embedding": rng.normal(size=(16, 8)).astype(np.float32)},
      "core": {"layers": {0: {"w": rng.normal(size=(8, 8)).astype(
          np.float32)}}},
      "final_norm": {"scale": np.ones(8, np.float32)},
      "lm_head": {"kernel": rng.normal(size=(8, 16)).astype(np.float32)},
  }


def _shardings(mesh, axis):
  """Shards every parameter's first axis over the mesh axis `axis`."""
  return jax.tree.map(lambda _: NamedSharding(mesh, P(axis)), _params())


def _state(mesh):
  """A state after one optimizer step, with a frozen `core`."""
  optimizer = optimizers.make_optimizer(
      optimizers.OptimizerConfig(warmup_steps=0, decay_steps=10), _params(),
      trainable=(r"^embed/", r"^lm_head/"), num_steps=10)
  params = jax.device_put(_params(), _shardings(mesh, "data"))
  opt_state = optimizer.tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = optimizer.tx.update(grads, opt_state, params)
  params = optimizers.apply_updates(params, updates, optimizer.trainable)
  replicated = NamedSharding(mesh, P())
  return TrainState(
      step=jax.device_put(np.int32(1), replicated), params=params,
      opt_state=opt_state,
      rng=jax.device_put(jax.random.key_data(jax.random.key(3)),
                         replicated)), optimizer


def _abstract(state, param_shardings, mesh):
  """The restore target: shapes of `state` on `param_shardings`."""
  replicated = NamedSharding(mesh, P())
  as_target = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return TrainState(
      step=jax.ShapeDtypeStruct((), np.int32, sharding=replicated),
      params=jax.tree.map(as_target, state.params, param_shardings),
      opt_state=jax.tree.map(lambda x: as_target(x, replicated),
                             state.opt_state),
      rng=jax.ShapeDtypeStruct((2,), np.uint32, sharding=replicated))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_and_progress(tmp_path):
  mesh = partitioning.make_mesh()
  state, _ = _state(mesh)
  progress = checkpoints.Progress(step=4, batches_consumed=4, phase="test",
                                  num_steps=10)
  with checkpoints.Checkpointer(tmp_path, save_every=2, keep=2) as saver:
    assert saver.save(state, progress)

  with checkpoints.Checkpointer(tmp_path, save_every=2, keep=2) as loader:
    assert loader.latest_step() == 4
    restored, restored_progress = loader.restore(
        4, _abstract(state, _shardings(mesh, "data"), mesh))

  assert restored_progress == progress
  assert int(restored.step) == 4
  _assert_trees_equal(restored.params, state.params)
  _assert_trees_equal(restored.opt_state, state.opt_state)
  _assert_trees_equal(restored.rng, state.rng)


def test_restore_onto_another_mesh(tmp_path):
  state, _ = _state(partitioning.make_mesh())
  with checkpoints.Checkpointer(tmp_path, save_every=1, keep=1) as saver:
    saver.save(state, checkpoints.Progress(step=1, batches_consumed=1))

  other = partitioning.make_mesh(data=2, fsdp=4)
  with checkpoints.Checkpointer(tmp_path, save_every=1, keep=1) as loader:
    restored, _ = loader.restore(
        1, _abstract(state, _shardings(other, "fsdp"), other))

  _assert_trees_equal(restored.params, state.params)
  embedding = restored.params["embed"]["embedding"]
  assert embedding.sharding.mesh.shape["fsdp"] == 4
  assert embedding.sharding.spec == P("fsdp")


def test_save_only_at_due_steps_and_keeps_newest(tmp_path):
  state, _ = _state(partitioning.make_mesh())
  with checkpoints.Checkpointer(tmp_path, save_every=2, keep=2) as saver:
    started = [saver.save(state, checkpoints.Progress(step, step))
               for step in (1, 2, 3, 4, 5, 6)]
    saver.save(state, checkpoints.Progress(7, 7), force=True)
    saver.wait()

  assert started == [False, True, False, True, False, True]
  assert sorted(int(p.name) for p in checkpoints.checkpoint_dir(
      tmp_path).iterdir() if p.name.isdigit()) == [6, 7]
  assert checkpoints.latest_step(tmp_path) == 7


def test_restore_with_other_optimizer_raises(tmp_path):
  mesh = partitioning.make_mesh()
  state, _ = _state(mesh)
  with checkpoints.Checkpointer(tmp_path, save_every=1, keep=1) as saver:
    saver.save(state, checkpoints.Progress(step=1, batches_consumed=1))
  # Training everything gives AdamW moments for `core` too.
  optimizer = optimizers.make_optimizer(
      optimizers.OptimizerConfig(warmup_steps=0, decay_steps=10), _params(),
      trainable=(".*",), num_steps=10)
  target = _abstract(state, _shardings(mesh, "data"), mesh).replace(
      opt_state=jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                         sharding=NamedSharding(mesh, P())),
          jax.eval_shape(optimizer.tx.init, _params())))

  with checkpoints.Checkpointer(tmp_path, save_every=1, keep=1) as loader:
    with pytest.raises(CheckpointError, match="cannot resume"):
      loader.restore(1, target)


def test_restore_params_reads_only_listed(tmp_path):
  mesh = partitioning.make_mesh()
  state, _ = _state(mesh)
  with checkpoints.Checkpointer(tmp_path, save_every=1, keep=1) as saver:
    saver.save(state, checkpoints.Progress(step=1, batches_consumed=1))

  metadata = checkpoints.param_metadata(tmp_path, 1)
  target = NamedSharding(mesh, P(None, "data"))
  restored = checkpoints.restore_params(tmp_path, 1, {
      "core/layers/0/w": jax.ShapeDtypeStruct((8, 8), jnp.float32,
                                              sharding=target)})

  assert sorted(metadata) == ["core/layers/0/w", "embed/embedding",
                              "final_norm/scale", "lm_head/kernel"]
  assert metadata["embed/embedding"].shape == (16, 8)
  assert list(restored) == ["core/layers/0/w"]
  np.testing.assert_array_equal(restored["core/layers/0/w"],
                                state.params["core"]["layers"][0]["w"])
  assert restored["core/layers/0/w"].sharding.spec == P(None, "data")


def test_relative_run_dir_is_saved(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  state, _ = _state(partitioning.make_mesh())

  with checkpoints.Checkpointer("relative/run", save_every=1,
                                keep=1) as saver:
    saver.save(state, checkpoints.Progress(step=1, batches_consumed=1))

  assert checkpoints.latest_step("relative/run") == 1
  assert (tmp_path / "relative" / "run" / "checkpoints" / "1").is_dir()
